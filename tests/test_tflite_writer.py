"""The .tflite writer: IR → flatbuffer that TFLite Micro runs and the reader reads back."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinytrain.errors import GraphError
from tinytrain.frontends.tflite import load_tflite
from tinytrain.frontends.tflite_schema import builtin_code, schema
from tinytrain.frontends.tflite_writer import BUFFER_ALIGNMENT, write_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Conv2DAttrs, NoAttrs, Op, OpKind, Padding, ReshapeAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.testing.tflm import run_tflm


def _many_ops_model() -> bytes:
    """A converter-made full-int8 model with many op kinds."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(11)
    inp = keras.Input((12, 12, 3), batch_size=1)
    x = keras.layers.ZeroPadding2D(((1, 0), (0, 1)))(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="valid", activation="relu6")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.Add()([x, y])
    a = keras.layers.AveragePooling2D(2)(x)
    m = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Concatenate()([a, m])
    x = keras.layers.Conv2D(6, 1)(x)
    g = keras.layers.GlobalAveragePooling2D()(x)
    f = keras.layers.Reshape((-1,))(x)
    x = keras.layers.Concatenate()([g, keras.layers.Dense(5)(f)])
    x = keras.layers.Dense(7)(x)
    x = keras.layers.Softmax()(x)
    model = keras.Model(inp, x)

    def rep() -> Iterator[list[np.ndarray]]:
        rng = np.random.default_rng(0)
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return bytes(conv.convert())


def _nonlinear_model() -> bytes:
    """A converter-made int8 model with float32 input/output and elementwise/shape ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 4), batch_size=1)
    x = keras.layers.Conv2D(6, 1)(inp)
    a = keras.layers.LeakyReLU(negative_slope=0.2)(x)
    b = keras.layers.Activation("sigmoid")(x)
    c = keras.layers.Activation("tanh")(x)
    d = keras.layers.Activation("hard_swish")(x)
    x = keras.layers.Multiply()([a, b])
    x = keras.layers.Subtract()([x, c])
    x = keras.layers.Add()([x, d])
    x = keras.layers.Lambda(lambda t: tf.image.resize(t, (16, 16), method="nearest"))(x)
    x = keras.layers.Permute((2, 1, 3))(x)
    x = keras.layers.Lambda(lambda t: t[:, 1:9:2, :, :3])(x)
    x = keras.layers.Reshape((4, -1))(x)
    x = keras.layers.Dense(5)(x)
    x = keras.layers.Softmax()(x)
    model = keras.Model(inp, x)

    def rep() -> Iterator[list[np.ndarray]]:
        rng = np.random.default_rng(0)
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, 8, 8, 4)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(conv.convert())


@pytest.fixture(scope="session")
def nonlinear_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("writer") / "nonlinear.tflite"
    path.write_bytes(_nonlinear_model())
    return path


@pytest.fixture(scope="session")
def many_ops_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("writer") / "many_ops.tflite"
    path.write_bytes(_many_ops_model())
    return path


def _f32(v: float) -> float:
    """Scales of the IR are float32 values (as in a .tflite file)."""
    return float(np.float32(v))


def _conv_graph(rng: np.random.Generator) -> Graph:
    w = rng.integers(-127, 128, (4, 3, 3, 2), dtype=np.int8)
    b = rng.integers(-2000, 2000, (4,), dtype=np.int32)
    ws = tuple(_f32(v) for v in (0.011, 0.02, 0.015, 0.031))
    x_scale = _f32(0.05)
    return Graph(
        "conv",
        (
            Tensor("x", (1, 9, 9, 2), DType.INT8, TensorKind.INPUT, Quantization.per_tensor(x_scale, 3)),
            Tensor("w", (4, 3, 3, 2), DType.INT8, TensorKind.CONSTANT, Quantization(ws, (0,) * 4, 0), w),
            Tensor("b", (4,), DType.INT32, TensorKind.CONSTANT,
                   Quantization(tuple(_f32(x_scale * s) for s in ws), (0,) * 4, 0), b),
            Tensor("y", (1, 5, 5, 4), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(_f32(0.6), -5)),
            Tensor("shape", (2,), DType.INT32, TensorKind.CONSTANT, None, np.array([1, 100], np.int32)),
            Tensor("z", (1, 100), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(_f32(0.6), -5)),
        ),
        (
            Op(OpKind.CONV_2D, ("x", "w", "b"), ("y",), Conv2DAttrs(2, 2, padding=Padding.SAME), 0),
            Op(OpKind.RESHAPE, ("y", "shape"), ("z",), ReshapeAttrs((1, 100)), 1),
        ),
        ("x",),
        ("z",),
    )


def _assert_same_graph(a: Graph, b: Graph) -> None:
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    for ta, tb in zip(a.tensors, b.tensors, strict=True):
        assert ta == tb, ta.name  # name, shape, dtype, kind, quantization
        if ta.data is None:
            assert tb.data is None
        else:
            assert tb.data is not None and np.array_equal(ta.data, tb.data), ta.name
    assert a.ops == b.ops
    assert a.inputs == b.inputs and a.outputs == b.outputs


def test_hand_built_graph_round_trips_through_the_reader() -> None:
    g = _conv_graph(np.random.default_rng(0))
    back = load_tflite(write_tflite(g))
    assert back.name == g.name
    _assert_same_graph(g, back)


def test_hand_built_graph_runs_in_tflm_like_a_numpy_conv() -> None:
    from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier

    rng = np.random.default_rng(1)
    g = _conv_graph(rng)
    x = rng.integers(-128, 128, (5, 9, 9, 2), dtype=np.int8)
    (y,) = run_tflm(write_tflite(g), [x])
    # Independent numpy reference of TFLite's int8 per-channel conv (SAME, stride 2: pad 1 / 1 here).
    w, b = g.tensor("w").data, g.tensor("b").data
    assert w is not None and b is not None
    xp = np.pad(x.astype(np.int64) - 3, ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(1, 2))[:, ::2, ::2]  # n,5,5,c,3,3
    acc = np.einsum("nhwcij,oijc->nhwo", win, w.astype(np.int64)) + b
    ws = g.tensor("w").quant.scale  # type: ignore[union-attr]
    mults = [quantize_multiplier(float(np.float32(0.05)) * float(np.float32(s)) / float(np.float32(0.6))) for s in ws]
    q = np.array([m for m, _ in mults])
    sh = np.array([s for _, s in mults])
    ref = np.clip(multiply_by_quantized_multiplier(acc, q, sh) - 5, -128, 127).astype(np.int8)
    assert np.array_equal(y, ref.reshape(5, 100))
    assert np.mean((ref > -128) & (ref < 127)) > 0.2  # not just saturated values


def test_file_layout() -> None:
    g = _conv_graph(np.random.default_rng(2))
    data = write_tflite(g)
    assert data[4:8] == b"TFL3"
    s = schema()
    model = s.ModelT.InitFromPackedBuf(data, 0)
    assert model.version == 3
    assert model.buffers[0].data is None
    assert len(model.subgraphs) == 1
    codes = {(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes}
    assert codes == {(builtin_code(k), min(builtin_code(k), 127)) for k in (OpKind.CONV_2D, OpKind.RESHAPE)}
    tensors = model.subgraphs[0].tensors
    by_name = {t.name.decode(): t for t in tensors}
    assert by_name["x"].buffer == 0 and by_name["y"].buffer == 0
    assert list(by_name["w"].quantization.scale) == [float(np.float32(v)) for v in (0.011, 0.02, 0.015, 0.031)]
    assert by_name["w"].quantization.quantizedDimension == 0
    # Constant data: little-endian and aligned in the file.
    raw = s.Model.GetRootAs(data, 0)
    base = np.frombuffer(data, np.uint8)
    for name in ("w", "b", "shape"):
        buf = raw.Buffers(by_name[name].buffer).DataAsNumpy()
        offset = buf.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        assert offset % BUFFER_ALIGNMENT == 0, name
        t = g.tensor(name)
        assert t.data is not None
        assert buf.tobytes() == t.data.astype(t.dtype.np.newbyteorder("<")).tobytes()


def test_rejects_graphs_it_cannot_express() -> None:
    g = _conv_graph(np.random.default_rng(3))
    bad_attrs = g.with_changes(ops=(Op(OpKind.CONV_2D, ("x", "w", "b"), ("y",), NoAttrs(), 0), g.ops[1]))
    with pytest.raises(GraphError, match="CONV_2D"):
        write_tflite(bad_attrs)
    w = g.tensor("w")
    no_data = Tensor(w.name, w.shape, w.dtype, TensorKind.CONSTANT, w.quant)
    with pytest.raises(GraphError, match="without data"):
        write_tflite(g.with_changes(tensors=tuple(no_data if t.name == "w" else t for t in g.tensors)))
    with pytest.raises(GraphError, match="graph output"):
        write_tflite(g.with_changes(outputs=("nope",)))


_MANY_OPS = frozenset({OpKind.PAD, OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.ADD, OpKind.AVERAGE_POOL_2D,
                       OpKind.MAX_POOL_2D, OpKind.CONCATENATION, OpKind.MEAN, OpKind.RESHAPE, OpKind.FULLY_CONNECTED,
                       OpKind.SOFTMAX})
_NONLINEAR_OPS = frozenset({OpKind.QUANTIZE, OpKind.LOGISTIC, OpKind.TANH, OpKind.HARD_SWISH, OpKind.LEAKY_RELU,
                            OpKind.MUL, OpKind.SUB, OpKind.RESIZE_NEAREST_NEIGHBOR, OpKind.TRANSPOSE,
                            OpKind.STRIDED_SLICE, OpKind.DEQUANTIZE})


@pytest.mark.parametrize("which", ["many_ops_model", "nonlinear_model"])
def test_converter_model_round_trip_runs_identically_in_tflm(which: str, request: pytest.FixtureRequest) -> None:
    original = request.getfixturevalue(which).read_bytes()
    graph = load_tflite(original)
    kinds = {op.kind for op in graph.ops}
    assert (_MANY_OPS if which == "many_ops_model" else _NONLINEAR_OPS) <= kinds
    written = write_tflite(graph)
    rng = np.random.default_rng(4)
    shape = (24, *graph.tensor(graph.inputs[0]).shape[1:])
    x: np.ndarray
    if graph.tensor(graph.inputs[0]).dtype is DType.FLOAT32:
        x = rng.uniform(-1.2, 1.2, shape).astype(np.float32)
    else:
        x = rng.integers(-128, 128, shape, dtype=np.int8)
    (want,) = run_tflm(original, [x])
    (got,) = run_tflm(written, [x])
    assert np.array_equal(want, got)
    assert len(set(map(bytes, got))) > 1  # the outputs depend on the input
    # Reading the written file gives the same graph, and writing is then a fixed point.
    again = load_tflite(written)
    _assert_same_graph(graph.with_changes(name=again.name), again)
    assert write_tflite(again) == write_tflite(graph.with_changes(name=again.name))
