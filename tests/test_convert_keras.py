"""The Keras → int8 .tflite converter path: outputs, options, calibration files, clean errors."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tinytrain.errors import ModelFormatError, NotQuantizedError, UsageError
from tinytrain.frontends.keras_convert import (
    convert_keras,
    convert_tf_function,
    float_op_names,
    load_calibration,
    model_op_names,
)
from tinytrain.frontends.tflite_schema import schema
from tinytrain.models import keras_mlp, mlp_calibration

INT8, FLOAT32 = 9, 0  # TensorType codes


def _io_types(model: bytes) -> tuple[list[int], list[int]]:
    sg = schema().Model.GetRootAs(model, 0).Subgraphs(0)
    ins = [sg.Tensors(sg.Inputs(i)).Type() for i in range(sg.InputsLength())]
    outs = [sg.Tensors(sg.Outputs(i)).Type() for i in range(sg.OutputsLength())]
    return ins, outs


def _one_line(exc: pytest.ExceptionInfo[Any]) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, repr(text)
    return text


@pytest.fixture(scope="session")
def mlp_model() -> Any:
    return keras_mlp()


@pytest.fixture(scope="session")
def mlp_int8(mlp_model: Any) -> bytes:
    return convert_keras(mlp_model, mlp_calibration())


@pytest.fixture(scope="session")
def mlp_keras_file(mlp_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "mlp.keras"
    mlp_model.save(path)
    return path


def test_int8_io_model(mlp_int8: bytes) -> None:
    assert mlp_int8[4:8] == b"TFL3"
    assert model_op_names(mlp_int8) == ("FULLY_CONNECTED", "FULLY_CONNECTED", "TANH", "FULLY_CONNECTED", "SOFTMAX")
    assert float_op_names(mlp_int8) == ()
    assert _io_types(mlp_int8) == ([INT8], [INT8])


def test_float_io_model(mlp_model: Any) -> None:
    model = convert_keras(mlp_model, mlp_calibration(), int8_io=False)
    ops = model_op_names(model)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert ops[1:-1] == ("FULLY_CONNECTED", "FULLY_CONNECTED", "TANH", "FULLY_CONNECTED", "SOFTMAX")
    assert float_op_names(model) == ()
    assert _io_types(model) == ([FLOAT32], [FLOAT32])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras' own model.save
def test_path_and_calibration_file_give_the_same_model(mlp_int8: bytes, mlp_keras_file: Path, tmp_path: Path) -> None:
    npy = tmp_path / "calib.npy"
    np.save(npy, mlp_calibration())
    assert convert_keras(mlp_keras_file, npy) == mlp_int8
    npz = tmp_path / "calib.npz"
    np.savez(npz, labels=np.zeros(3), x=mlp_calibration())
    assert convert_keras(str(mlp_keras_file), str(npz)) == mlp_int8


def test_load_calibration(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(4, 6)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "b.npz", data)
    for name in ("a.npy", "b.npz"):
        got = load_calibration(tmp_path / name)
        assert got.dtype == np.float32 and np.array_equal(got, data)
    np.savez(tmp_path / "two.npz", p=data, q=data)
    with pytest.raises(UsageError) as exc:
        load_calibration(tmp_path / "two.npz")
    assert "'x'" in _one_line(exc)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    for bad in ("missing.npy", "bad.npy", "b.txt"):
        if bad == "b.txt":
            (tmp_path / bad).write_text("1 2 3")
        with pytest.raises(UsageError) as exc:
            load_calibration(tmp_path / bad)
        _one_line(exc)


def test_calibration_errors(mlp_model: Any) -> None:
    good = mlp_calibration()
    cases: list[tuple[Any, str]] = [
        (good[:, :10], "(10,)"),
        (np.zeros((0, 64), np.float32), "no samples"),
        ([], "no samples"),
        (np.full((4, 64), np.nan, np.float32), "NaN"),
        (np.array(["a"] * 64).reshape(1, 64), "not numeric"),
        (12, "calibration must be"),
    ]
    for calib, words in cases:
        with pytest.raises(UsageError) as exc:
            convert_keras(mlp_model, calib)
        assert words in _one_line(exc)


def test_model_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        convert_keras(tmp_path / "absent.keras", np.zeros((1, 4)))
    assert "not found" in _one_line(exc)
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(UsageError) as exc:
        convert_keras(tmp_path / "model.onnx", np.zeros((1, 4)))
    assert ".keras" in _one_line(exc)
    with pytest.raises(UsageError):
        convert_keras(object(), np.zeros((1, 4)))
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ModelFormatError) as bad:
        convert_keras(corrupt, np.zeros((1, 4)))
    assert "corrupt.keras" in _one_line(bad)
    empty_zip = tmp_path / "empty.keras"
    with zipfile.ZipFile(empty_zip, "w"):
        pass
    with pytest.raises(ModelFormatError) as empty:
        convert_keras(empty_zip, np.zeros((1, 4)))
    _one_line(empty)


def test_dynamic_spatial_input_is_refused() -> None:
    import keras

    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inp)))
    with pytest.raises(UsageError) as exc:
        convert_keras(model, np.zeros((2, 8, 8, 3), np.float32))
    assert "dynamic" in _one_line(exc)


def test_float_ops_left_by_the_converter_are_refused() -> None:
    import keras

    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(4)(keras.ops.sin(keras.layers.Dense(6)(inp))))
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 8)).astype(np.float32)
    with pytest.raises(NotQuantizedError) as exc:
        convert_keras(model, calib)
    assert "SIN" in _one_line(exc)
    mixed = convert_keras(model, calib, allow_float_ops=True)
    assert "SIN" in float_op_names(mixed)


def test_dynamic_batch_model_converts_with_static_shapes() -> None:
    """A model built without a batch size (Flatten/Reshape) becomes plain RESHAPEs."""
    import keras

    inp = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3)(inp)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Reshape((4, 12))(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    calib = np.random.default_rng(1).uniform(-1, 1, (8, 6, 6, 2)).astype(np.float32)
    assert model_op_names(convert_keras(model, calib)) == ("CONV_2D", "RESHAPE", "FULLY_CONNECTED")


def test_multi_input_model() -> None:
    import keras

    a, b = keras.Input((4,), name="a"), keras.Input((6,), name="b")
    model = keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Concatenate()([a, b])))
    rng = np.random.default_rng(2)
    samples = [(rng.normal(size=4), rng.normal(size=(1, 6))) for _ in range(8)]
    converted = convert_keras(model, samples)
    assert set(model_op_names(converted)) == {"CONCATENATION", "FULLY_CONNECTED"}
    assert _io_types(converted) == ([INT8, INT8], [INT8])
    with pytest.raises(UsageError) as exc:
        convert_keras(model, np.zeros((8, 4), np.float32))
    assert "2 inputs" in _one_line(exc)
    with pytest.raises(UsageError) as exc:
        convert_keras(model, [(np.zeros(4),)])
    assert "1 arrays for 2 model inputs" in _one_line(exc)


def test_tf_function_mixed_io_types() -> None:
    calib = np.random.default_rng(3).uniform(-1, 1, (8, 1, 6)).astype(np.float32)
    model = convert_tf_function(lambda x: x * 2.0 + 1.0, [(1, 6)], calib, input_types=(False, True))
    assert _io_types(model) == ([FLOAT32], [INT8])
    assert float_op_names(model) == ()


def test_conversion_is_silent(mlp_model: Any, capfd: pytest.CaptureFixture[str]) -> None:
    capfd.readouterr()
    convert_keras(mlp_model, mlp_calibration()[:8])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_op_listing_rejects_non_tflite() -> None:
    with pytest.raises(ModelFormatError):
        model_op_names(b"\x00" * 16)


def test_package_imports_without_tensorflow() -> None:
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "import tinytrain.frontends.keras_convert, tinytrain.models, tinytrain.testing.zoo\n"
        "import tinytrain.testing.opmodels\n"
        "print(len(tinytrain.testing.opmodels.OP_MODELS))\n"
        "from tinytrain.errors import UsageError\n"
        "try:\n"
        "    tinytrain.frontends.keras_convert.convert_keras('m.keras', [[0.0]])\n"
        "except UsageError as e:\n"
        "    print(e)\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.strip().splitlines()
    assert int(count) > 30
    assert "needs TensorFlow" in message
