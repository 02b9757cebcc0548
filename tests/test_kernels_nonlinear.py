"""Nonlinear / conversion kernels vs TFLite Micro on converter-made single-op models.

Each model is converted once per session (full int8 with the TFLite converter), read
with the .tflite frontend, run by the simulator and by TFLite Micro, and the outputs
must match byte for byte. Elementwise ops are swept over all 256 int8 values; the
calibration data (scale, offset) is varied so the input scales and zero points vary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from tinytrain.frontends.keras_convert import convert_tf_function  # noqa: E402
from tinytrain.frontends.tflite import load_tflite  # noqa: E402
from tinytrain.ir.ops import OpKind  # noqa: E402
from tinytrain.sim.forward import Simulator  # noqa: E402
from tinytrain.testing.tflm import run_tflm  # noqa: E402

ALL_INT8 = np.arange(-128, 128, dtype=np.int8)
# (std, mean) of the calibration data: input scales from ~1e-3 to ~1, varied zero points
CALIBRATIONS = ((0.03, 0.0), (0.4, 0.3), (2.0, -1.5), (9.0, 6.0), (40.0, 0.0))


def _calibration(shape: tuple[int, ...], std: float, mean: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((24, *shape)) * std + mean).astype(np.float32)


def _convert(fn: Callable[..., Any], shape: tuple[int, ...], std: float, mean: float, int8_io: bool = True) -> bytes:
    return convert_tf_function(fn, [shape], _calibration(shape, std, mean), int8_io=int8_io)


def _assert_bit_exact(model: bytes, inputs: Sequence[np.ndarray]) -> None:
    graph = load_tflite(model)
    want = run_tflm(model, inputs)
    got = Simulator(graph).run(inputs)
    assert len(got) == len(want)
    for k, (w, g) in enumerate(zip(want, got, strict=True)):
        assert g.dtype == w.dtype and g.shape == w.shape, f"output {k}: {g.dtype}{g.shape} vs {w.dtype}{w.shape}"
        same = w.view(np.uint8) == g.view(np.uint8)
        assert same.all(), f"output {k}: {int((~same).sum())} bytes differ from TFLite Micro"


def _kinds(model: bytes) -> list[OpKind]:
    return [op.kind for op in load_tflite(model).ops]


# --------------------------------------------------------------------------- LOGISTIC, TANH, HARD_SWISH


def _activations(x: Any) -> Any:
    return tf.math.sigmoid(x), tf.math.tanh(x), x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


@pytest.fixture(scope="session")
def activation_models() -> list[bytes]:
    return [_convert(_activations, (1, 256), std, mean) for std, mean in CALIBRATIONS]


@pytest.mark.parametrize("which", range(len(CALIBRATIONS)))
def test_int8_activations_all_values(activation_models: list[bytes], which: int) -> None:
    model = activation_models[which]
    assert sorted(k.value for k in _kinds(model)) == ["HARD_SWISH", "LOGISTIC", "TANH"]
    rng = np.random.default_rng(which)
    x = np.concatenate([ALL_INT8[None, :], rng.integers(-128, 128, (3, 256), dtype=np.int8)])
    _assert_bit_exact(model, [x])


# --------------------------------------------------------------------------- SOFTMAX, LOG_SOFTMAX


def _softmaxes(x: Any) -> Any:
    return tf.nn.softmax(x), tf.nn.log_softmax(x)


@pytest.fixture(scope="session")
def softmax_models() -> list[bytes]:
    return [_convert(_softmaxes, (1, 3, 10), std, mean) for std, mean in CALIBRATIONS]


def _softmax_inputs(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """``n`` samples of ``shape`` (the model input shape without its batch axis of 1)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (n, *shape), dtype=np.int8)
    x[0] = 127  # all equal (maximum)
    x[1] = -128  # all equal (minimum)
    x[2] = -128
    x[2, ..., 0] = 127  # one-hot extremes
    x[3] = np.clip(x[3] // 8 + 90, -128, 127)  # narrow spread near the top
    x[4] = (np.arange(shape[-1]) * 3 % 256 - 128).astype(np.int8)  # ramp
    return x


@pytest.mark.parametrize("which", range(len(CALIBRATIONS)))
def test_int8_softmax_and_log_softmax(softmax_models: list[bytes], which: int) -> None:
    model = softmax_models[which]
    assert sorted(k.value for k in _kinds(model)) == ["LOG_SOFTMAX", "SOFTMAX"]
    _assert_bit_exact(model, [_softmax_inputs(64, (3, 10), which)])


@pytest.fixture(scope="session")
def wide_softmax_model() -> bytes:
    return _convert(lambda x: tf.nn.softmax(x), (1, 300), 3.0, 0.0)


def test_int8_softmax_wide_rows(wide_softmax_model: bytes) -> None:
    assert _kinds(wide_softmax_model) == [OpKind.SOFTMAX]
    _assert_bit_exact(wide_softmax_model, [_softmax_inputs(16, (300,), 7)])


# --------------------------------------------------------------------------- RSQRT


@pytest.fixture(scope="session")
def rsqrt_models() -> list[bytes]:
    # positive calibration data (rsqrt is only defined for x > 0)
    return [
        convert_tf_function(lambda x: tf.math.rsqrt(x), [(1, 256)], np.abs(_calibration((1, 256), std, 0.0)) + lo)
        for std, lo in ((0.05, 0.001), (1.0, 0.1), (20.0, 2.0))
    ]


@pytest.mark.parametrize("which", range(3))
def test_int8_rsqrt_all_valid_values(rsqrt_models: list[bytes], which: int) -> None:
    model = rsqrt_models[which]
    graph = load_tflite(model)
    assert [op.kind for op in graph.ops] == [OpKind.RSQRT]
    zero_point = graph.tensor(graph.inputs[0]).zero_point
    x = np.maximum(ALL_INT8, zero_point).astype(np.int8)  # TFLM rejects values below the zero point
    _assert_bit_exact(model, [x[None, :]])


# --------------------------------------------------------------------------- QUANTIZE, DEQUANTIZE


@pytest.fixture(scope="session")
def float_io_models() -> list[bytes]:
    return [
        _convert(lambda x: tf.math.sigmoid(x), (1, 512), std, mean, int8_io=False) for std, mean in CALIBRATIONS[1:4]
    ]


@pytest.mark.parametrize("which", range(3))
def test_quantize_dequantize_float_io(float_io_models: list[bytes], which: int) -> None:
    model = float_io_models[which]
    graph = load_tflite(model)
    assert [op.kind for op in graph.ops] == [OpKind.QUANTIZE, OpKind.LOGISTIC, OpKind.DEQUANTIZE]
    scale = graph.tensor(graph.ops[0].outputs[0]).scale
    rng = np.random.default_rng(which)
    x = (rng.standard_normal((6, 512)) * scale * 60).astype(np.float32)
    # exact halves (ties of roundf), values beyond the int8 range, signed zeros
    x[0, :300] = ((np.arange(300) - 150 + 0.5) * np.float32(scale)).astype(np.float32)
    x[1, :8] = np.array([0.0, -0.0, 1e-30, -1e-30, 1e6, -1e6, scale * 127.5, -scale * 128.5], np.float32)
    _assert_bit_exact(model, [x])
