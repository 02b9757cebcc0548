"""Core kernels against TFLite Micro on converter-made models (int8 and float32).

Each case is a small TF function with several outputs (one per op variant); the
converter turns it into a .tflite model, which runs in the simulator (N samples at
once) and in TFLite Micro (one sample at a time). Every output must match byte for byte.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir.graph import Graph
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm

Case = tuple[Callable[..., list[Any]], list[tuple[int, ...]], tuple[str, ...]]


def _cases() -> dict[str, Case]:
    import tensorflow as tf

    rng = np.random.default_rng(0)

    def w(*shape: int) -> Any:
        return tf.constant(rng.normal(0, 0.3, shape).astype(np.float32))

    def conv(x: Any) -> list[Any]:
        return [
            tf.nn.relu6(tf.nn.conv2d(x, w(3, 3, 4, 6), 2, "SAME") + w(6)),
            tf.nn.conv2d(x, w(3, 3, 4, 5), 1, "VALID", dilations=2),
            tf.nn.relu(tf.nn.conv2d(x, w(1, 1, 4, 7), 1, "SAME")),
            tf.nn.conv2d(x, w(5, 5, 4, 3), 3, "SAME") + w(3),
            tf.nn.depthwise_conv2d(x, w(3, 3, 4, 2), [1, 2, 2, 1], "SAME") + w(8),
            tf.nn.relu6(tf.nn.depthwise_conv2d(x, w(3, 3, 4, 1), [1, 1, 1, 1], "VALID", dilations=[2, 2])),
            tf.nn.depthwise_conv2d(x, w(5, 5, 4, 1), [1, 1, 1, 1], "SAME"),
            tf.nn.conv2d(x, w(3, 3, 2, 6), 1, "SAME") + w(6),  # grouped (2 groups)
        ]

    def fc(x: Any) -> list[Any]:
        flat = tf.reshape(x, [1, -1])
        return [tf.matmul(flat, w(48, 10)) + w(10), tf.nn.relu(tf.matmul(flat, w(48, 5)))]

    def binary(a: Any, b: Any) -> list[Any]:
        return [
            a + b,
            a - b,
            a * b,
            tf.math.squared_difference(a, b),
            tf.nn.relu(a + b),
            a + w(1, 1, 1, 8),
            a * w(8),
            tf.nn.relu6(a - w(1, 4, 1, 1)),
        ]

    def broadcast(a: Any, b: Any) -> list[Any]:
        return [a + b, a - b, a * b, tf.math.squared_difference(a, b)]

    def unary(x: Any) -> list[Any]:
        return [tf.nn.relu(x), tf.nn.relu6(x * 3.0), tf.nn.leaky_relu(x, 0.2), tf.nn.leaky_relu(x, -0.3)]

    def reduce_pool(x: Any) -> list[Any]:
        return [
            tf.reduce_mean(x, [1, 2], keepdims=True),
            tf.reduce_mean(x, [3]),
            tf.reduce_sum(x, [1], keepdims=True),
            tf.reduce_mean(x, [1]),
            tf.reduce_sum(x, [1, 2, 3]),
            tf.nn.avg_pool2d(x, 3, 2, "SAME"),
            tf.nn.max_pool2d(x, 2, 2, "VALID"),
            tf.nn.avg_pool2d(x, 2, 1, "VALID"),
            tf.nn.max_pool2d(x, 3, 2, "SAME"),
        ]

    def shapes(x: Any) -> list[Any]:
        return [
            tf.pad(x, [[0, 0], [1, 2], [0, 1], [0, 0]]),
            tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=0.5),
            tf.reshape(x, [1, 8, 32]) * 2.0,
            tf.transpose(x, [0, 3, 1, 2]) * 2.0,
            tf.concat([x, tf.nn.relu(x)], axis=3),
            tf.expand_dims(tf.reduce_mean(x, 3), 3),
        ]

    def index(x: Any) -> list[Any]:
        return [
            tf.image.resize(x, [7, 5], method="nearest"),
            tf.compat.v1.image.resize_nearest_neighbor(x, [9, 13], align_corners=True),
            tf.compat.v1.image.resize_nearest_neighbor(x, [5, 11]),
            x[:, 1:7:2, ::-1, 2:],
            x[:, 3, :, 1:5],
            x[:, -3:, 1:, :],
            tf.slice(x, [0, 1, 2, 0], [1, 5, -1, 4]),
            tf.gather(x, [3, 0, 2], axis=3),
            tf.gather(x, [[1, 2], [0, 7]], axis=1),
        ]

    return {
        "conv": (conv, [(1, 12, 12, 4)], ("CONV_2D", "DEPTHWISE_CONV_2D")),
        "fc": (fc, [(1, 4, 4, 3)], ("FULLY_CONNECTED",)),
        "bmm": (
            lambda a, b: [tf.matmul(a, b, transpose_b=True), tf.matmul(a, a, transpose_a=True)],
            [(1, 6, 8), (1, 5, 8)],
            ("BATCH_MATMUL",),
        ),
        "bmm4d": (lambda a, b: [tf.matmul(a, b)], [(1, 2, 6, 8), (1, 2, 8, 5)], ("BATCH_MATMUL",)),
        "bmm_broadcast": (
            lambda a, b: [tf.matmul(a, b)],
            [(1, 3, 1, 6, 8), (1, 1, 4, 8, 5)],
            ("BATCH_MATMUL",),
        ),
        "binary": (binary, [(1, 4, 4, 8), (1, 4, 4, 8)], ("ADD", "SUB", "MUL", "SQUARED_DIFFERENCE")),
        "broadcast": (broadcast, [(1, 4, 4, 8), (1, 1, 4, 1)], ("ADD", "SUB", "MUL", "SQUARED_DIFFERENCE")),
        "unary": (unary, [(1, 4, 4, 8)], ("RELU", "LEAKY_RELU")),
        "reduce_pool": (reduce_pool, [(1, 8, 8, 6)], ("MEAN", "SUM", "AVERAGE_POOL_2D", "MAX_POOL_2D")),
        "shapes": (shapes, [(1, 4, 8, 8)], ("PAD", "PADV2", "RESHAPE", "TRANSPOSE", "CONCATENATION")),
        "index": (index, [(1, 8, 8, 6)], ("RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "SLICE", "GATHER")),
        "batch_axis": (
            lambda x: [tf.transpose(x, [1, 0, 2]) * 2.0, tf.reduce_mean(x, [0, 2]), tf.concat([x, x * 0.5], 0)],
            [(1, 4, 8)],
            ("RESHAPE", "MEAN", "CONCATENATION"),
        ),
    }


CASE_NAMES = (
    "conv",
    "fc",
    "bmm",
    "bmm4d",
    "bmm_broadcast",
    "binary",
    "broadcast",
    "unary",
    "reduce_pool",
    "shapes",
    "index",
    "batch_axis",
)
NOT_BATCH_SAFE = frozenset({"batch_axis"})


@pytest.fixture(scope="session")
def core_cases() -> dict[str, Case]:
    return _cases()


@pytest.fixture(scope="session")
def int8_models(core_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tinytrain.frontends.keras_convert import convert_tf_function

    out: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("core_int8")
    for name, (fn, shapes, _) in core_cases.items():
        calib = [
            [np.random.default_rng(100 * i + j).normal(0, 1, s).astype(np.float32) for j, s in enumerate(shapes)]
            for i in range(8)
        ]
        path = folder / f"{name}.tflite"
        path.write_bytes(convert_tf_function(fn, shapes, calib))
        out[name] = path
    return out


@pytest.fixture(scope="session")
def float_models(core_cases: dict[str, Case], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import tensorflow as tf

    out: dict[str, Path] = {}
    folder = tmp_path_factory.mktemp("core_float")
    for name, (fn, shapes, _) in core_cases.items():
        f = tf.function(fn, input_signature=[tf.TensorSpec(s, tf.float32) for s in shapes])
        conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
        path = folder / f"{name}.tflite"
        path.write_bytes(conv.convert())
        out[name] = path
    return out


def _load_float(path: Path, monkeypatch: pytest.MonkeyPatch) -> Graph:
    """Reads a float model (the reader refuses those for the CLI; the kernels support them)."""
    del monkeypatch
    return load_tflite(path, allow_float=True)


def _compare(
    graph: Graph, model: bytes, xs: Sequence[np.ndarray], expected_ops: tuple[str, ...], batch_safe: bool = True
) -> None:
    kinds = {op.kind.value for op in graph.ops}
    assert set(expected_ops) <= kinds, f"converter did not produce {set(expected_ops) - kinds}"
    sim = Simulator(graph)
    assert sim.batch_safe is batch_safe
    got = sim.run(list(xs))
    want = run_tflm(model, list(xs))
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == b.dtype and a.shape == b.shape, (i, a.dtype, a.shape, b.dtype, b.shape)
        assert np.array_equal(a, b), f"output {i} differs in {(a != b).sum()} of {a.size} values"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_int8_ops_match_tflm(name: str, core_cases: dict[str, Case], int8_models: dict[str, Path]) -> None:
    from tinytrain.frontends.tflite import load_tflite

    _, shapes, expected = core_cases[name]
    model = int8_models[name].read_bytes()
    xs = [np.random.default_rng(5 + j).integers(-128, 128, (5, *s[1:])).astype(np.int8) for j, s in enumerate(shapes)]
    _compare(load_tflite(model), model, xs, expected, name not in NOT_BATCH_SAFE)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_float_ops_match_tflm(
    name: str, core_cases: dict[str, Case], float_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shapes, expected = core_cases[name]
    path = float_models[name]
    xs = [np.random.default_rng(5 + j).normal(0, 2, (3, *s[1:])).astype(np.float32) for j, s in enumerate(shapes)]
    _compare(_load_float(path, monkeypatch), path.read_bytes(), xs, expected, name not in NOT_BATCH_SAFE)


def test_small_cnn_matches_tflm(small_cnn: Path) -> None:
    from tinytrain.frontends.tflite import load_tflite

    model = small_cnn.read_bytes()
    graph = load_tflite(model)
    xs = np.random.default_rng(11).integers(-128, 128, (7, *graph.tensor(graph.inputs[0]).shape[1:])).astype(np.int8)
    got = Simulator(graph).run([xs])
    want = run_tflm(model, [xs])
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def _keras_int8(model: Any, shape: tuple[int, ...], **flags: bool) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]

    def rep() -> Any:
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.normal(0, 1, shape).astype(np.float32)]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    for k, v in flags.items():
        setattr(conv, k, v)
    return bytes(conv.convert())


@pytest.fixture(scope="session")
def per_tensor_models() -> list[tuple[bytes, tuple[int, ...]]]:
    """Per-tensor weight quantization (converter flags), depth multiplier 2, FC on rank-3 input."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((10, 10, 3), batch_size=1)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, strides=2)(x)
    conv_model = keras.Model(inp, x)
    inp2 = keras.Input((5, 12), batch_size=1)
    dense_model = keras.Model(
        inp2, [keras.layers.Dense(7)(inp2), keras.layers.Dense(4, use_bias=False)(keras.layers.Flatten()(inp2))]
    )
    flags = {"_experimental_disable_per_channel": True}
    return [
        (_keras_int8(conv_model, (1, 10, 10, 3), **flags), (1, 10, 10, 3)),
        (_keras_int8(dense_model, (1, 5, 12)), (1, 5, 12)),
        (
            _keras_int8(
                dense_model, (1, 5, 12), _experimental_disable_per_channel_quantization_for_dense_layers=True, **flags
            ),
            (1, 5, 12),
        ),
    ]


def test_per_tensor_weights_and_rank3_dense_match_tflm(per_tensor_models: list[tuple[bytes, tuple[int, ...]]]) -> None:
    from tinytrain.frontends.tflite import load_tflite

    per_tensor_seen = 0
    for model, shape in per_tensor_models:
        graph = load_tflite(model)
        for op in graph.ops:
            if op.kind.value in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                q = graph.tensor(op.inputs[1] or "").quant
                per_tensor_seen += q is not None and len(q.scale) == 1
        xs = np.random.default_rng(3).integers(-128, 128, (5, *shape[1:])).astype(np.int8)
        _compare(graph, model, [xs], ())
    assert per_tensor_seen >= 4  # conv, depthwise and both dense layers of the last model


@pytest.mark.slow
def test_mobilenetv2_matches_tflm(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keras MobileNetV2 (alpha 0.35, 96×96, random weights), end to end, batched."""
    import keras

    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.frontends.tflite import load_tflite

    keras.utils.set_random_seed(3)
    net = keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), alpha=0.35, weights=None, classes=10, classifier_activation=None
    )
    calib = np.random.default_rng(0).uniform(-1, 1, (8, 96, 96, 3)).astype(np.float32)
    model = convert_keras(net, calib)
    graph = load_tflite(model)
    assert sum(op.kind.value == "DEPTHWISE_CONV_2D" for op in graph.ops) == 17
    xs = np.random.default_rng(1).integers(-128, 128, (4, 96, 96, 3)).astype(np.int8)
    _compare(graph, model, [xs], ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "FULLY_CONNECTED"))
