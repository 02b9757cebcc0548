"""One tiny converter-made int8 model per supported op, for kernel-by-kernel oracle tests.

Each :class:`OpModelSpec` builds its model with a ``tf.function`` of TF ops and the
TFLite converter (:func:`tinytrain.frontends.keras_convert.convert_tf_function`), then
checks that the converter really emitted the expected op and nothing else but the
QUANTIZE/DEQUANTIZE of a float interface (and, for QUANTIZE/DEQUANTIZE themselves, the
one RESHAPE that carries them: a model of nothing but a (de)quantization is elided).
Every op reads non-constant inputs (model inputs), so the converter cannot fold it.
Shapes, calibration ranges (hence scales and zero points) and options vary per model.
Weights and calibration samples are seeded: a build is deterministic.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.errors import ModelFormatError
from tinytrain.frontends.keras_convert import tensorflow_version

# Bump when a recipe changes, so cached models are rebuilt.
RECIPE_VERSION = 1
_IO_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
_CALIBRATION_SAMPLES = 24


@dataclass(frozen=True)
class OpModelSpec:
    """A named single-op test model: ``build()`` returns verified ``.tflite`` bytes."""

    name: str
    expected_op: str
    build: Callable[[], bytes]
    carrier_ops: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Recipe:
    """What to convert: ``fn(tf, *inputs)`` over float inputs of the given shapes, each
    calibrated uniformly in its range; ``io`` = (int8 input, int8 output)."""

    fn: Callable[..., Any]
    shapes: tuple[tuple[int, ...], ...]
    ranges: tuple[tuple[float, float], ...]
    io: tuple[bool, bool] = (True, True)
    seed: int = 0


def check_ops(name: str, model: bytes, expected_op: str, carrier_ops: Sequence[str] = ()) -> tuple[str, ...]:
    """Checks that ``model`` holds ``expected_op`` and no op other than QUANTIZE,
    DEQUANTIZE and ``carrier_ops``; returns its op names."""
    from tinytrain.frontends.keras_convert import float_op_names, model_op_names

    ops = model_op_names(model)
    allowed = {expected_op, *_IO_OPS, *carrier_ops}
    unexpected = sorted({op for op in ops if op not in allowed})
    if expected_op not in ops or unexpected:
        raise ModelFormatError(
            f"op model {name!r}: expected {expected_op} (plus {sorted(allowed - {expected_op})}), "
            f"the converter emitted {list(ops)}"
        )
    floats = float_op_names(model)
    if floats:
        raise ModelFormatError(f"op model {name!r}: float32 ops left by the converter: {list(floats)}")
    return ops


def calibration_for(
    recipe_shapes: Sequence[Sequence[int]], ranges: Sequence[tuple[float, float]], seed: int
) -> list[tuple[np.ndarray, ...]]:
    """Seeded uniform samples per input; the first two samples hit the range ends, so
    the calibrated range is exactly the requested one."""
    rng = np.random.default_rng(seed)
    samples: list[tuple[np.ndarray, ...]] = []
    for k in range(_CALIBRATION_SAMPLES):
        parts = []
        for shape, (lo, hi) in zip(recipe_shapes, ranges, strict=True):
            x = rng.uniform(lo, hi, size=tuple(shape)).astype(np.float32)
            if k < 2:
                x.flat[0] = lo if k == 0 else hi
                x.flat[-1] = hi if k == 0 else lo
            parts.append(x)
        samples.append(tuple(parts))
    return samples


def _build(name: str, expected_op: str, carrier_ops: tuple[str, ...], recipe: _Recipe) -> bytes:
    from tinytrain.frontends.keras_convert import convert_tf_function

    samples = calibration_for(recipe.shapes, recipe.ranges, recipe.seed)

    def fn(*xs: Any) -> Any:
        import tensorflow as tf

        return recipe.fn(tf, *xs)

    model = convert_tf_function(fn, recipe.shapes, samples, input_types=recipe.io)
    check_ops(name, model, expected_op, carrier_ops)
    return model


def _spec(name: str, expected_op: str, recipe: _Recipe, carrier_ops: tuple[str, ...] = ()) -> OpModelSpec:
    build = functools.partial(_build, name, expected_op, carrier_ops, recipe)
    return OpModelSpec(name, expected_op, build, carrier_ops)


# ----------------------------------------------------------------------------- weights


def _weights(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
    """Seeded float32 weights, fan-in scaled, with a spread of per-channel magnitudes."""
    rng = np.random.default_rng(1000 + seed)
    fan_in = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    w = rng.normal(0.0, scale / np.sqrt(max(fan_in, 1)), size=shape)
    w *= rng.uniform(0.25, 1.75, size=shape[-1:])  # per-output-channel ranges differ
    return w.astype(np.float32)


def _bias(seed: int, n: int, scale: float = 0.3) -> np.ndarray:
    return np.random.default_rng(2000 + seed).normal(0.0, scale, size=n).astype(np.float32)


# ----------------------------------------------------------------------------- recipes
# Each recipe function takes the tf module first, then the model inputs.


def _conv2d(stride: int, padding: str, dilation: int, act: str, k: int, cout: int, seed: int) -> Callable[..., Any]:
    def fn(tf: Any, x: Any) -> Any:
        cin = int(x.shape[-1])
        w = _weights(seed, (k, k, cin, cout))
        y = tf.nn.conv2d(x, w, strides=stride, padding=padding, dilations=dilation) + _bias(seed, cout)
        return _activation(tf, y, act)

    return fn


def _depthwise(stride: int, padding: str, mult: int, act: str, k: int, seed: int) -> Callable[..., Any]:
    def fn(tf: Any, x: Any) -> Any:
        cin = int(x.shape[-1])
        w = _weights(seed, (k, k, cin, mult))
        y = tf.nn.depthwise_conv2d(x, w, strides=[1, stride, stride, 1], padding=padding)
        return _activation(tf, y + _bias(seed, cin * mult), act)

    return fn


def _dense(units: int, act: str, seed: int) -> Callable[..., Any]:
    def fn(tf: Any, x: Any) -> Any:
        w = _weights(seed, (int(x.shape[-1]), units))
        return _activation(tf, tf.matmul(x, w) + _bias(seed, units), act)

    return fn


def _activation(tf: Any, y: Any, act: str) -> Any:
    if act == "relu":
        return tf.nn.relu(y)
    if act == "relu6":
        return tf.nn.relu6(y)
    return y


def _hard_swish(tf: Any, x: Any) -> Any:
    return x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)


def _resize(size: tuple[int, int], align_corners: bool, half_pixel: bool) -> Callable[..., Any]:
    def fn(tf: Any, x: Any) -> Any:
        return tf.raw_ops.ResizeNearestNeighbor(
            images=x, size=list(size), align_corners=align_corners, half_pixel_centers=half_pixel
        )

    return fn


def _op_specs() -> tuple[OpModelSpec, ...]:
    R = _Recipe
    s = _spec
    return (
        # convolutions (per-channel weights, fused activations)
        s("conv2d_same", "CONV_2D", R(_conv2d(1, "SAME", 1, "", 3, 8, 1), ((1, 9, 9, 3),), ((-1.0, 1.0),))),
        s(
            "conv2d_valid_s2_relu",
            "CONV_2D",
            R(_conv2d(2, "VALID", 1, "relu", 3, 6, 2), ((1, 12, 10, 4),), ((-0.5, 2.5),)),
        ),
        s(
            "conv2d_dilated_relu6",
            "CONV_2D",
            R(_conv2d(1, "SAME", 2, "relu6", 3, 5, 3), ((1, 8, 8, 2),), ((-3.0, 1.0),)),
        ),
        s("conv2d_1x1", "CONV_2D", R(_conv2d(1, "VALID", 1, "", 1, 16, 4), ((1, 5, 5, 12),), ((0.0, 6.0),))),
        s(
            "depthwise_m1",
            "DEPTHWISE_CONV_2D",
            R(_depthwise(1, "SAME", 1, "", 3, 5), ((1, 10, 10, 8),), ((-1.0, 1.0),)),
        ),
        s(
            "depthwise_m1_s2_relu6",
            "DEPTHWISE_CONV_2D",
            R(_depthwise(2, "SAME", 1, "relu6", 3, 6), ((1, 11, 11, 6),), ((-2.0, 4.0),)),
        ),
        s(
            "depthwise_m2",
            "DEPTHWISE_CONV_2D",
            R(_depthwise(1, "VALID", 2, "", 3, 7), ((1, 9, 9, 4),), ((-0.25, 0.75),)),
        ),
        s(
            "depthwise_m2_s2_relu",
            "DEPTHWISE_CONV_2D",
            R(_depthwise(2, "VALID", 2, "relu", 5, 8), ((1, 13, 13, 3),), ((-1.5, 1.5),)),
        ),
        s("fully_connected", "FULLY_CONNECTED", R(_dense(10, "", 9), ((1, 24),), ((-1.0, 1.0),))),
        s("fully_connected_relu", "FULLY_CONNECTED", R(_dense(7, "relu", 10), ((1, 40),), ((-0.2, 3.0),))),
        s("fully_connected_3d", "FULLY_CONNECTED", R(_dense(12, "", 11), ((1, 5, 16),), ((-2.0, 2.0),))),
        # element-wise binary ops on two model inputs (with broadcasting)
        s("add", "ADD", R(lambda tf, a, b: a + b, ((1, 6, 6, 5), (1, 6, 6, 5)), ((-1.0, 1.0), (-3.0, 5.0)))),
        s(
            "add_broadcast_relu",
            "ADD",
            R(lambda tf, a, b: tf.nn.relu(a + b), ((1, 4, 6, 5), (1, 1, 1, 5)), ((-2.0, 2.0), (-0.5, 0.5))),
        ),
        s("mul", "MUL", R(lambda tf, a, b: a * b, ((1, 5, 7, 3), (1, 5, 7, 3)), ((-1.0, 1.0), (0.0, 4.0)))),
        s("mul_broadcast", "MUL", R(lambda tf, a, b: a * b, ((1, 5, 7, 3), (1, 1, 7, 1)), ((-6.0, 2.0), (-1.0, 1.0)))),
        s("sub", "SUB", R(lambda tf, a, b: a - b, ((1, 3, 4, 6), (1, 3, 4, 6)), ((-1.0, 3.0), (-2.0, 2.0)))),
        s("sub_broadcast", "SUB", R(lambda tf, a, b: a - b, ((1, 8, 12), (1, 8, 1)), ((-4.0, 4.0), (-1.0, 0.5)))),
        s(
            "squared_difference",
            "SQUARED_DIFFERENCE",
            R(lambda tf, a, b: tf.math.squared_difference(a, b), ((1, 6, 10), (1, 6, 10)), ((-1.0, 1.0), (-2.0, 1.0))),
        ),
        s(
            "squared_difference_broadcast",
            "SQUARED_DIFFERENCE",
            R(lambda tf, a, b: tf.math.squared_difference(a, b), ((1, 6, 10), (1, 6, 1)), ((-3.0, 3.0), (-1.0, 1.0))),
        ),
        s("rsqrt", "RSQRT", R(lambda tf, x: tf.math.rsqrt(x), ((1, 4, 9),), ((0.05, 4.0),))),
        s("rsqrt_wide", "RSQRT", R(lambda tf, x: tf.math.rsqrt(x), ((1, 30),), ((0.5, 40.0),))),
        # reductions and pooling
        s(
            "mean_hw_keepdims",
            "MEAN",
            R(lambda tf, x: tf.reduce_mean(x, axis=[1, 2], keepdims=True), ((1, 6, 6, 8),), ((-1.0, 3.0),)),
        ),
        s("mean_last", "MEAN", R(lambda tf, x: tf.reduce_mean(x, axis=-1), ((1, 4, 16),), ((-2.0, 2.0),))),
        s(
            "average_pool_valid",
            "AVERAGE_POOL_2D",
            R(lambda tf, x: tf.nn.avg_pool2d(x, 2, 2, "VALID"), ((1, 8, 8, 4),), ((-1.0, 1.0),)),
        ),
        s(
            "average_pool_same",
            "AVERAGE_POOL_2D",
            R(lambda tf, x: tf.nn.avg_pool2d(x, 3, 2, "SAME"), ((1, 7, 9, 3),), ((0.0, 5.0),)),
        ),
        s(
            "max_pool_valid",
            "MAX_POOL_2D",
            R(lambda tf, x: tf.nn.max_pool2d(x, 2, 2, "VALID"), ((1, 8, 6, 5),), ((-2.0, 1.0),)),
        ),
        s(
            "max_pool_same",
            "MAX_POOL_2D",
            R(lambda tf, x: tf.nn.max_pool2d(x, 3, 1, "SAME"), ((1, 5, 5, 2),), ((-1.0, 1.0),)),
        ),
        # data movement
        s("pad", "PAD", R(lambda tf, x: tf.pad(x, [[0, 0], [1, 2], [2, 1], [0, 0]]), ((1, 5, 5, 3),), ((-1.0, 2.0),))),
        s("pad_3d", "PAD", R(lambda tf, x: tf.pad(x, [[0, 0], [0, 3], [1, 0]]), ((1, 4, 6),), ((0.5, 3.0),))),
        s("reshape", "RESHAPE", R(lambda tf, x: tf.reshape(x, [1, 8, 6]), ((1, 4, 6, 2),), ((-1.0, 1.0),))),
        s("transpose", "TRANSPOSE", R(lambda tf, x: tf.transpose(x, [0, 2, 1, 3]), ((1, 3, 5, 4),), ((-1.0, 1.0),))),
        s("transpose_3d", "TRANSPOSE", R(lambda tf, x: tf.transpose(x, [0, 2, 1]), ((1, 6, 7),), ((-4.0, 2.0),))),
        s(
            "concatenation",
            "CONCATENATION",
            R(lambda tf, a, b: tf.concat([a, b], axis=3), ((1, 4, 4, 3), (1, 4, 4, 5)), ((-1.0, 1.0), (-2.0, 2.0))),
        ),
        s(
            "concatenation_3",
            "CONCATENATION",
            R(
                lambda tf, a, b, c: tf.concat([a, b, c], axis=1),
                ((1, 2, 8), (1, 3, 8), (1, 1, 8)),
                ((-1.0, 1.0), (0.0, 3.0), (-0.5, 0.5)),
            ),
        ),
        # nonlinear
        s("softmax", "SOFTMAX", R(lambda tf, x: tf.nn.softmax(x), ((1, 10),), ((-4.0, 4.0),))),
        s("softmax_3d", "SOFTMAX", R(lambda tf, x: tf.nn.softmax(x, axis=-1), ((1, 4, 16),), ((-8.0, 2.0),))),
        s("log_softmax", "LOG_SOFTMAX", R(lambda tf, x: tf.nn.log_softmax(x), ((1, 12),), ((-3.0, 3.0),))),
        s("hard_swish", "HARD_SWISH", R(_hard_swish, ((1, 6, 6, 4),), ((-5.0, 5.0),))),
        s("hard_swish_narrow", "HARD_SWISH", R(_hard_swish, ((1, 40),), ((-1.0, 2.0),))),
        s("logistic", "LOGISTIC", R(lambda tf, x: tf.math.sigmoid(x), ((1, 5, 8),), ((-6.0, 6.0),))),
        s("tanh", "TANH", R(lambda tf, x: tf.math.tanh(x), ((1, 5, 8),), ((-3.0, 2.0),))),
        s("relu", "RELU", R(lambda tf, x: tf.nn.relu(x), ((1, 6, 7),), ((-2.0, 2.0),))),
        s("relu6", "RELU6", R(lambda tf, x: tf.nn.relu6(x), ((1, 6, 7),), ((-3.0, 9.0),))),
        s("leaky_relu", "LEAKY_RELU", R(lambda tf, x: tf.nn.leaky_relu(x, alpha=0.2), ((1, 4, 10),), ((-3.0, 3.0),))),
        s(
            "leaky_relu_small",
            "LEAKY_RELU",
            R(lambda tf, x: tf.nn.leaky_relu(x, alpha=0.01), ((1, 4, 10),), ((-1.0, 5.0),)),
        ),
        s(
            "resize_nearest_half_pixel",
            "RESIZE_NEAREST_NEIGHBOR",
            R(_resize((8, 8), False, True), ((1, 4, 4, 3),), ((-1.0, 1.0),)),
        ),
        s(
            "resize_nearest_align_corners",
            "RESIZE_NEAREST_NEIGHBOR",
            R(_resize((7, 9), True, False), ((1, 4, 5, 2),), ((-2.0, 1.0),)),
        ),
        s(
            "resize_nearest_legacy",
            "RESIZE_NEAREST_NEIGHBOR",
            R(_resize((6, 10), False, False), ((1, 3, 5, 2),), ((0.0, 1.0),)),
        ),
        # slicing and gathering
        s("strided_slice", "STRIDED_SLICE", R(lambda tf, x: x[:, 1:7:2, ::2, 1:], ((1, 8, 7, 4),), ((-1.0, 1.0),))),
        s("strided_slice_shrink", "STRIDED_SLICE", R(lambda tf, x: x[:, 0], ((1, 5, 12),), ((-3.0, 1.0),))),
        s("strided_slice_negative", "STRIDED_SLICE", R(lambda tf, x: x[:, ::-1, -3:], ((1, 6, 8),), ((-1.0, 2.0),))),
        s("slice", "SLICE", R(lambda tf, x: tf.slice(x, [0, 1, 2, 0], [1, 3, 2, 4]), ((1, 5, 6, 4),), ((-1.0, 1.0),))),
        s("gather", "GATHER", R(lambda tf, x: tf.gather(x, [3, 0, 2, 2], axis=1), ((1, 5, 6),), ((-1.0, 1.0),))),
        s(
            "gather_last_axis",
            "GATHER",
            R(lambda tf, x: tf.gather(x, [1, 1, 0, 4, 3], axis=2), ((1, 3, 5),), ((0.0, 2.0),)),
        ),
        s(
            "batch_matmul",
            "BATCH_MATMUL",
            R(lambda tf, a, b: tf.matmul(a, b), ((1, 4, 6), (1, 6, 5)), ((-1.0, 1.0), (-2.0, 2.0))),
        ),
        s(
            "batch_matmul_adj_y_4d",
            "BATCH_MATMUL",
            R(
                lambda tf, a, b: tf.matmul(a, b, transpose_b=True),
                ((1, 2, 5, 8), (1, 2, 3, 8)),
                ((-1.0, 1.0), (-0.5, 1.5)),
            ),
        ),
        # interface (de)quantization, each carried by one RESHAPE
        s(
            "quantize",
            "QUANTIZE",
            R(lambda tf, x: tf.reshape(x, [1, 12, 2]), ((1, 4, 6),), ((-1.0, 2.0),), io=(False, True)),
            carrier_ops=("RESHAPE",),
        ),
        s(
            "dequantize",
            "DEQUANTIZE",
            R(lambda tf, x: tf.reshape(x, [1, 24]), ((1, 4, 6),), ((-3.0, 1.0),), io=(True, False)),
            carrier_ops=("RESHAPE",),
        ),
    )


OP_MODELS: tuple[OpModelSpec, ...] = _op_specs()


def cache_key(name: str) -> str:
    """File stem of a cached op model: name, recipe version and TF version."""
    return f"{name}-r{RECIPE_VERSION}-tf{tensorflow_version()}"


def build_all(cache_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, bytes]:
    """Builds (or reads from ``cache_dir``) every op model, or those named; name → bytes."""
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = set(names) if names is not None else None
    out: dict[str, bytes] = {}
    for spec in OP_MODELS:
        if wanted is not None and spec.name not in wanted:
            continue
        path = directory / f"{cache_key(spec.name)}.tflite"
        if path.is_file():
            out[spec.name] = path.read_bytes()
            continue
        model = spec.build()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(model)
        tmp.replace(path)
        out[spec.name] = model
    return out
