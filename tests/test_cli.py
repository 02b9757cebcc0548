"""The command line: inspect, infer, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tinytrain.frontends.tflite import load_tflite
from tinytrain.testing.tflm import run_tflm


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytrain", *args], capture_output=True, text=True, timeout=300)


def test_inspect_json(small_cnn: Path) -> None:
    r = _cli("inspect", str(small_cnn), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["num_ops"] == 5 and info["op_histogram"]["CONV_2D"] == 1
    # conv 8x8x8 outputs x 3x3x3 + depthwise 8x8x8 x 3x3 + dense 8x4
    assert info["macs"] == 8 * 8 * 8 * 27 + 8 * 8 * 8 * 9 + 8 * 4
    # naive peak: the input (768 B) and the conv output (512 B) are live together
    assert info["peak_activation_bytes"] == 16 * 16 * 3 + 8 * 8 * 8
    assert info["parameters"] > 0 and info["inputs"][0]["shape"] == [1, 16, 16, 3]


def test_inspect_table(small_cnn: Path) -> None:
    r = _cli("inspect", str(small_cnn), "--ir")
    assert r.returncode == 0, r.stderr
    assert "DEPTHWISE_CONV_2D" in r.stdout and "naive peak" in r.stdout and "graph " in r.stdout


def test_infer_int8_and_float_io_equal_tflm(small_cnn: Path, small_cnn_float_io: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for model, x in (
        (small_cnn, rng.integers(-128, 128, (6, 16, 16, 3), dtype=np.int8)),
        (small_cnn_float_io, rng.uniform(-1, 1, (6, 16, 16, 3)).astype(np.float32)),
    ):
        xp, yp = tmp_path / "x.npy", tmp_path / "y.npy"
        np.save(xp, x)
        r = _cli("infer", str(model), "--input", str(xp), "--output", str(yp), "--quiet")
        assert r.returncode == 0, r.stderr
        y = np.load(yp)
        ref = run_tflm(model.read_bytes(), [x])[0]
        assert y.dtype == ref.dtype and y.shape == (6, 4)
        assert np.array_equal(y, ref)


def test_errors_are_one_line_with_status_2(
    tmp_path: Path, small_cnn: Path, float_model: Path, unsupported_op_model: Path
) -> None:
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(small_cnn.read_bytes()[:200])
    bad_x = tmp_path / "bad.npy"
    np.save(bad_x, np.zeros((2, 5, 5, 3), np.int8))
    cases = [
        (("inspect", str(corrupt)), "corrupt"),
        (("inspect", str(float_model)), "float"),
        (("inspect", str(unsupported_op_model)), "ABS"),
        (("infer", str(small_cnn), "--input", str(bad_x), "--output", str(tmp_path / "y.npy")), "shape"),
    ]
    for args, word in cases:
        r = _cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tinytrain: error:") and word in lines[0], r.stderr
    r = _cli("--debug", "inspect", str(corrupt))
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_reader_output_is_deterministic(small_cnn: Path) -> None:
    from tinytrain.ir.dump import dump

    assert dump(load_tflite(small_cnn)) == dump(load_tflite(small_cnn.read_bytes()))


def test_convert_command(tmp_path: Path) -> None:
    """`tinytrain convert` turns a saved Keras model into an int8 .tflite that infer runs."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(5)(x))
    path = tmp_path / "m.keras"
    model.save(path)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).uniform(-1, 1, (16, 12, 12, 3)).astype(np.float32))
    out = tmp_path / "m.tflite"
    r = _cli("convert", str(path), "--calibration", str(calib), "-o", str(out))
    assert r.returncode == 0, r.stderr
    graph = load_tflite(out)
    assert graph.tensor(graph.inputs[0]).dtype.value == "int8"
    x = np.random.default_rng(1).integers(-128, 128, (3, 12, 12, 3), dtype=np.int8)
    xp, yp = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xp, x)
    assert _cli("infer", str(out), "--input", str(xp), "--output", str(yp), "--quiet").returncode == 0
    assert np.array_equal(np.load(yp), run_tflm(out.read_bytes(), [x])[0])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 7, 7, 3), np.float32))
    r = _cli("convert", str(path), "--calibration", str(bad), "-o", str(tmp_path / "bad.tflite"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
