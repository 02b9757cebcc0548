"""Nonlinear / conversion kernels vs TFLite Micro on hand-built single-op graphs.

The graphs are written to .tflite with tinytrain's writer so that quantization
parameters the converter never produces (random scales and zero points, int8 -> int16
softmax, every requantize type pair, float32 HARD_SWISH / RSQRT) are covered. Outputs
must match TFLite Micro byte for byte. Also covers the error paths.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import MappingProxyType

import numpy as np
import pytest

from tinytrain.errors import GraphError, UnsupportedOpError, UsageError
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import NoAttrs, Op, OpAttrs, OpKind, SoftmaxAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels.nonlinear import KERNELS
from tinytrain.testing.tflm import run_tflm

ALL_INT8 = np.arange(-128, 128, dtype=np.int8)
QParams = tuple[float, int] | None


def _tensor(name: str, shape: tuple[int, ...], dtype: DType, kind: TensorKind, q: QParams) -> Tensor:
    quant = None if q is None else Quantization.per_tensor(float(np.float32(q[0])), q[1])
    return Tensor(name, shape, dtype, kind, quant)


def _unary(
    kind: OpKind,
    shape: tuple[int, ...],
    din: DType,
    dout: DType,
    qin: QParams,
    qout: QParams,
    attrs: OpAttrs = NoAttrs(),  # noqa: B008
) -> Graph:
    x = _tensor("x", shape, din, TensorKind.INPUT, qin)
    y = _tensor("y", shape, dout, TensorKind.ACTIVATION, qout)
    return Graph("g", (x, y), (Op(kind, ("x",), ("y",), attrs, 0),), ("x",), ("y",))


def _assert_bit_exact(graph: Graph, x: np.ndarray, label: str = "") -> None:
    want = run_tflm(write_tflite(graph), [x])[0]
    got = Simulator(graph).run([x])[0]
    assert got.dtype == want.dtype and got.shape == want.shape, label
    same = want.view(np.uint8) == got.view(np.uint8)
    assert same.all(), f"{label}: {int((~same).sum())} bytes differ from TFLite Micro"


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.float32(10 ** rng.uniform(lo, hi)))


def _configs(seed: int, n: int, lo: float = -4.0, hi: float = 0.7) -> Iterator[tuple[float, int, float, int]]:
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield (
            _log_uniform(rng, lo, hi),
            int(rng.integers(-128, 128)),
            _log_uniform(rng, lo, hi),
            int(rng.integers(-128, 128)),
        )


# --------------------------------------------------------------------------- int8 elementwise sweeps


def test_logistic_random_quantization_all_values() -> None:
    for s_in, z_in, s_out, _ in _configs(1, 25):
        graph = _unary(OpKind.LOGISTIC, (1, 256), DType.INT8, DType.INT8, (s_in, z_in), (s_out, -128))
        _assert_bit_exact(graph, ALL_INT8[None], f"LOGISTIC in=({s_in}, {z_in})")


def test_tanh_random_quantization_all_values() -> None:
    for s_in, z_in, s_out, z_out in _configs(2, 25):
        graph = _unary(OpKind.TANH, (1, 256), DType.INT8, DType.INT8, (s_in, z_in), (s_out, z_out))
        _assert_bit_exact(graph, ALL_INT8[None], f"TANH in=({s_in}, {z_in})")


def test_hard_swish_random_quantization_all_values() -> None:
    rng = np.random.default_rng(3)
    for s_in, z_in, _, z_out in _configs(3, 30, lo=-4.5, hi=1.0):
        # TFLM needs in_scale / (128 * out_scale) < 1: the output scale at least ~in/128
        s_out = float(np.float32(s_in * 10 ** rng.uniform(-2.0, 0.5)))
        graph = _unary(OpKind.HARD_SWISH, (1, 256), DType.INT8, DType.INT8, (s_in, z_in), (s_out, z_out))
        _assert_bit_exact(graph, ALL_INT8[None], f"HARD_SWISH in=({s_in}, {z_in}) out=({s_out}, {z_out})")


def test_rsqrt_random_quantization_all_valid_values() -> None:
    for s_in, z_in, s_out, z_out in _configs(4, 25, lo=-4.0, hi=1.0):
        graph = _unary(OpKind.RSQRT, (1, 256), DType.INT8, DType.INT8, (s_in, z_in), (s_out, z_out))
        x = np.maximum(ALL_INT8, z_in).astype(np.int8)[None]
        _assert_bit_exact(graph, x, f"RSQRT in=({s_in}, {z_in}) out=({s_out}, {z_out})")


# --------------------------------------------------------------------------- float elementwise

SPECIAL_FLOATS = np.array(
    [np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, -1e-45, 1e-38, 3.0, -3.0, 6.0, -6.0, 1e30, -1e30, 3e9, -3e9],
    dtype=np.float32,
)


@pytest.mark.parametrize("kind", [OpKind.HARD_SWISH, OpKind.RSQRT])
def test_float_hard_swish_and_rsqrt(kind: OpKind) -> None:
    rng = np.random.default_rng(5)
    x = np.concatenate([SPECIAL_FLOATS, (rng.standard_normal(4080) * 5).astype(np.float32)]).reshape(2, 2048)
    graph = _unary(kind, (1, 2048), DType.FLOAT32, DType.FLOAT32, None, None)
    _assert_bit_exact(graph, x, kind.value)


# --------------------------------------------------------------------------- softmax sweeps


def _rows(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.integers(-128, 128, (n, *shape), dtype=np.int8)
    x[0] = 127
    x[1] = -128
    x[1, ..., 0] = 127
    x[2] = np.clip(x[2] // 16 + 100, -128, 127)
    return x


@pytest.mark.parametrize("out_dtype", [DType.INT8, DType.INT16])
def test_softmax_random_scales_betas_depths(out_dtype: DType) -> None:
    rng = np.random.default_rng(6 if out_dtype is DType.INT8 else 7)
    qout = (1 / 256, -128) if out_dtype is DType.INT8 else (1 / 65536, -32768)
    for _ in range(25):
        s_in, z_in = _log_uniform(rng, -3.5, 1.5), int(rng.integers(-128, 128))
        beta = float(np.float32(rng.choice([1.0, 0.25, 2.0, rng.uniform(0.1, 5.0)])))
        depth = int(rng.choice([1, 2, 5, 16, 100, 511]))
        graph = _unary(OpKind.SOFTMAX, (1, 2, depth), DType.INT8, out_dtype, (s_in, z_in), qout, SoftmaxAttrs(beta))
        _assert_bit_exact(graph, _rows(rng, 6, (2, depth)), f"SOFTMAX in={s_in} beta={beta} depth={depth}")


def test_log_softmax_random_scales_depths() -> None:
    rng = np.random.default_rng(8)
    for _ in range(25):
        s_in, z_in = _log_uniform(rng, -3.5, 1.5), int(rng.integers(-128, 128))
        depth = int(rng.choice([1, 2, 5, 16, 100, 1000]))
        graph = _unary(OpKind.LOG_SOFTMAX, (1, 2, depth), DType.INT8, DType.INT8, (s_in, z_in), (16 / 256, 127))
        _assert_bit_exact(graph, _rows(rng, 6, (2, depth)), f"LOG_SOFTMAX in={s_in} depth={depth}")


def test_softmax_rank2_and_rank4() -> None:
    rng = np.random.default_rng(9)
    for shape in [(1, 7), (1, 2, 3, 5)]:
        graph = _unary(OpKind.SOFTMAX, shape, DType.INT8, DType.INT8, (0.1, 3), (1 / 256, -128), SoftmaxAttrs(1.0))
        _assert_bit_exact(graph, _rows(rng, 5, shape[1:]), f"SOFTMAX {shape}")


# --------------------------------------------------------------------------- QUANTIZE / DEQUANTIZE


@pytest.mark.parametrize("out_dtype", [DType.INT8, DType.INT16])
def test_quantize_float_random_scales(out_dtype: DType) -> None:
    rng = np.random.default_rng(10)
    info = np.iinfo(out_dtype.np)
    for _ in range(12):
        scale = _log_uniform(rng, -4.0, 1.0)
        zero_point = int(rng.integers(-128, 128)) * (1 if out_dtype is DType.INT8 else 200)
        zero_point = int(np.clip(zero_point, info.min, info.max))
        graph = _unary(OpKind.QUANTIZE, (1, 1024), DType.FLOAT32, out_dtype, None, (scale, zero_point))
        s32 = np.float32(scale)
        x = (rng.standard_normal((3, 1024)) * s32 * rng.choice([10.0, 200.0, 50000.0])).astype(np.float32)
        x[0, :600] = ((np.arange(600) - 300 + 0.5) * s32).astype(np.float32)  # ties
        x[1, : SPECIAL_FLOATS.size] = SPECIAL_FLOATS
        _assert_bit_exact(graph, x, f"QUANTIZE float->{out_dtype.value} ({scale}, {zero_point})")


REQUANTIZE_PAIRS = [
    (DType.INT8, DType.INT8),
    (DType.INT8, DType.UINT8),
    (DType.UINT8, DType.INT8),
    (DType.INT8, DType.INT16),
    (DType.INT8, DType.INT32),
    (DType.INT16, DType.INT8),
    (DType.INT16, DType.INT16),
    (DType.INT16, DType.INT32),
    (DType.INT32, DType.INT8),
    (DType.INT32, DType.INT16),
]


def _zero_point(rng: np.random.Generator, dtype: DType) -> int:
    if dtype is DType.INT8:
        return int(rng.integers(-128, 128))
    if dtype is DType.UINT8:
        return int(rng.integers(0, 256))
    return 0 if rng.uniform() < 0.5 else int(rng.integers(-300, 300))


@pytest.mark.parametrize(("din", "dout"), REQUANTIZE_PAIRS, ids=lambda d: d.value)
def test_requantize_random_scales(din: DType, dout: DType) -> None:
    rng = np.random.default_rng(11)
    info = np.iinfo(din.np)
    for _ in range(6):
        qin = (_log_uniform(rng, -4.0, 0.5), _zero_point(rng, din))
        qout = (_log_uniform(rng, -4.0, 0.5), _zero_point(rng, dout))
        if rng.uniform() < 0.2:
            qout = (qin[0], qout[1])  # same scale (the XOR fast path for int8 <-> uint8)
        graph = _unary(OpKind.QUANTIZE, (1, 512), din, dout, qin, qout)
        if din.itemsize == 1:
            x = np.resize(np.arange(info.min, info.max + 1), (2, 512)).astype(din.np)
        else:
            lo, hi = (info.min, info.max) if din is DType.INT16 else (-(2**20), 2**20)
            x = rng.integers(lo, hi + 1, (2, 512)).astype(din.np)
        _assert_bit_exact(graph, x, f"QUANTIZE {din.value}->{dout.value} {qin} {qout}")


@pytest.mark.parametrize("din", [DType.INT8, DType.UINT8, DType.INT16], ids=lambda d: d.value)
def test_dequantize_random_scales(din: DType) -> None:
    rng = np.random.default_rng(12)
    info = np.iinfo(din.np)
    for _ in range(8):
        q = (_log_uniform(rng, -6.0, 2.0), 0 if din is DType.INT16 else _zero_point(rng, din))
        graph = _unary(OpKind.DEQUANTIZE, (1, 256), din, DType.FLOAT32, q, None)
        if din.itemsize == 1:
            x = np.arange(info.min, info.max + 1).astype(din.np)[None]
        else:
            x = rng.integers(info.min, info.max + 1, (3, 256)).astype(din.np)
        _assert_bit_exact(graph, x, f"DEQUANTIZE {din.value} {q}")


# --------------------------------------------------------------------------- errors and contract


def test_kernel_table() -> None:
    assert isinstance(KERNELS, MappingProxyType)
    assert set(KERNELS) == {
        OpKind.SOFTMAX, OpKind.LOG_SOFTMAX, OpKind.LOGISTIC, OpKind.TANH,
        OpKind.HARD_SWISH, OpKind.RSQRT, OpKind.QUANTIZE, OpKind.DEQUANTIZE,
    }  # fmt: skip


def _prepare(graph: Graph) -> object:
    op = graph.ops[0]
    return KERNELS[op.kind].prepare(op, graph.op_inputs(op), graph.op_outputs(op))


@pytest.mark.parametrize(
    ("kind", "attrs"),
    [
        (OpKind.SOFTMAX, SoftmaxAttrs(1.0)),
        (OpKind.LOG_SOFTMAX, NoAttrs()),
        (OpKind.LOGISTIC, NoAttrs()),
        (OpKind.TANH, NoAttrs()),
    ],
)
def test_float_transcendental_ops_are_rejected(kind: OpKind, attrs: OpAttrs) -> None:
    graph = _unary(kind, (1, 8), DType.FLOAT32, DType.FLOAT32, None, None, attrs)
    with pytest.raises(UnsupportedOpError, match=rf"op #0 {kind.value}.*float32"):
        _prepare(graph)


@pytest.mark.parametrize(
    ("kind", "din", "dout", "qout", "attrs"),
    [
        (OpKind.SOFTMAX, DType.INT8, DType.INT8, (1 / 256, 0), SoftmaxAttrs(1.0)),
        (OpKind.SOFTMAX, DType.INT8, DType.INT8, (1 / 255, -128), SoftmaxAttrs(1.0)),
        (OpKind.SOFTMAX, DType.INT8, DType.INT16, (1 / 65536, 0), SoftmaxAttrs(1.0)),
        (OpKind.SOFTMAX, DType.INT16, DType.INT16, (1 / 32768, 0), SoftmaxAttrs(1.0)),
        (OpKind.LOG_SOFTMAX, DType.INT8, DType.INT8, (1 / 16, 0), NoAttrs()),
        (OpKind.LOGISTIC, DType.INT8, DType.INT8, (1 / 256, 0), NoAttrs()),
        (OpKind.LOGISTIC, DType.INT16, DType.INT16, (1 / 32768, 0), NoAttrs()),
        (OpKind.HARD_SWISH, DType.INT8, DType.INT8, (1e-6, 0), NoAttrs()),
        (OpKind.QUANTIZE, DType.FLOAT32, DType.UINT8, (0.1, 0), NoAttrs()),
        (OpKind.DEQUANTIZE, DType.INT32, DType.FLOAT32, None, NoAttrs()),
    ],
)
def test_unsupported_configurations(kind: OpKind, din: DType, dout: DType, qout: QParams, attrs: OpAttrs) -> None:
    qin = None if din is DType.FLOAT32 else (0.05, 0)
    graph = _unary(kind, (1, 8), din, dout, qin, qout, attrs)
    with pytest.raises(UnsupportedOpError, match=rf"op #0 {kind.value} \(tensors: x, y\)"):
        _prepare(graph)


@pytest.mark.parametrize(
    ("kind", "qin", "qout"),
    [
        (OpKind.RSQRT, (1.0, 0), (1e6, 0)),  # right shift beyond 31 bits
        (OpKind.RSQRT, (1e-12, 0), (1e-12, 0)),  # left shift beyond 31 bits
        (OpKind.QUANTIZE, (1.0, 0), (3e-10, 0)),
        (OpKind.HARD_SWISH, (3e7, 0), (1e6, 0)),
        (OpKind.LOGISTIC, (2e-9, 0), (1 / 256, -128)),
        (OpKind.TANH, (1e30, 0), (1 / 128, 0)),
        (OpKind.LOG_SOFTMAX, (1e-9, 0), (16 / 256, 127)),
    ],
)
def test_scales_with_undefined_tflm_behaviour_are_rejected(kind: OpKind, qin: QParams, qout: QParams) -> None:
    graph = _unary(kind, (1, 8), DType.INT8, DType.INT8, qin, qout)
    with pytest.raises(UnsupportedOpError, match=rf"op #0 {kind.value}"):
        _prepare(graph)


def test_softmax_too_small_input_scale_is_rejected() -> None:
    graph = _unary(OpKind.SOFTMAX, (1, 8), DType.INT8, DType.INT8, (1e-9, 0), (1 / 256, -128), SoftmaxAttrs(1.0))
    with pytest.raises(UnsupportedOpError, match="too small"):
        _prepare(graph)


def test_softmax_sum_overflow_raises_at_run_time() -> None:
    # 1000 equal values: the Q12.19 sum needs more than 8 bits over unit, TFLM aborts
    graph = _unary(OpKind.SOFTMAX, (1, 1000), DType.INT8, DType.INT8, (0.01, 0), (1 / 256, -128), SoftmaxAttrs(1.0))
    sim = Simulator(graph)
    ok = np.random.default_rng(0).integers(-128, 128, (1, 1000)).astype(np.int8)
    ok[0, 0] = 127
    ok[0, 1:] = -128
    sim.run([ok])
    with pytest.raises(UnsupportedOpError, match="op #0 SOFTMAX"):
        sim.run([np.zeros((1, 1000), np.int8)])


def test_log_softmax_sum_wrap_raises_at_run_time() -> None:
    graph = _unary(OpKind.LOG_SOFTMAX, (1, 4096), DType.INT8, DType.INT8, (1.0, 0), (16 / 256, 127))
    with pytest.raises(UnsupportedOpError, match="op #0 LOG_SOFTMAX"):
        Simulator(graph).run([np.zeros((1, 4096), np.int8)])


def test_rsqrt_below_zero_point_is_a_usage_error() -> None:
    graph = _unary(OpKind.RSQRT, (1, 4), DType.INT8, DType.INT8, (0.1, 10), (0.1, 0))
    sim = Simulator(graph)
    assert sim.run([np.array([[10, 11, 12, 127]], np.int8)])[0].shape == (1, 4)
    with pytest.raises(UsageError, match="op #0 RSQRT"):
        sim.run([np.array([[10, 11, 9, 127]], np.int8)])


def test_shape_mismatch_and_missing_quantization_are_graph_errors() -> None:
    x = _tensor("x", (1, 8), DType.INT8, TensorKind.INPUT, (0.1, 0))
    y = _tensor("y", (1, 9), DType.INT8, TensorKind.ACTIVATION, (1 / 256, -128))
    op = Op(OpKind.LOGISTIC, ("x",), ("y",), NoAttrs(), 3)
    with pytest.raises(GraphError, match="op #3 LOGISTIC"):
        KERNELS[OpKind.LOGISTIC].prepare(op, (x,), (y,))
    y = _tensor("y", (1, 8), DType.INT8, TensorKind.ACTIVATION, None)
    with pytest.raises(GraphError, match=r"op #3 LOGISTIC.*no quantization"):
        KERNELS[OpKind.LOGISTIC].prepare(op, (x,), (y,))


def test_per_channel_activation_is_rejected() -> None:
    x = Tensor("x", (1, 2), DType.INT8, TensorKind.INPUT, Quantization((0.1, 0.2), (0, 0), 1))
    y = _tensor("y", (1, 2), DType.FLOAT32, TensorKind.ACTIVATION, None)
    op = Op(OpKind.DEQUANTIZE, ("x",), ("y",), NoAttrs(), 0)
    with pytest.raises(UnsupportedOpError, match="per channel"):
        KERNELS[OpKind.DEQUANTIZE].prepare(op, (x,), (y,))


def test_softmax_batch_safety_depends_on_rank() -> None:
    for shape, safe in [((1, 5), True), ((5,), False)]:
        graph = _unary(OpKind.SOFTMAX, shape, DType.INT8, DType.INT8, (0.1, 0), (1 / 256, -128), SoftmaxAttrs(1.0))
        op = graph.ops[0]
        assert KERNELS[OpKind.SOFTMAX].batch_safe(op, graph.op_inputs(op), graph.op_outputs(op)) is safe
    graph = _unary(OpKind.TANH, (5,), DType.INT8, DType.INT8, (0.1, 0), (1 / 128, 0))
    op = graph.ops[0]
    assert KERNELS[OpKind.TANH].batch_safe(op, graph.op_inputs(op), graph.op_outputs(op))


def test_batched_run_equals_per_sample_run() -> None:
    graph = _unary(OpKind.SOFTMAX, (1, 3, 6), DType.INT8, DType.INT8, (0.07, 5), (1 / 256, -128), SoftmaxAttrs(1.0))
    op = graph.ops[0]
    params = _prepare(graph)
    x = np.random.default_rng(13).integers(-128, 128, (9, 3, 6)).astype(np.int8)
    batched = KERNELS[op.kind].run(params, [x])[0]
    single = np.concatenate([KERNELS[op.kind].run(params, [x[i : i + 1]])[0] for i in range(9)])
    assert np.array_equal(batched, single)
