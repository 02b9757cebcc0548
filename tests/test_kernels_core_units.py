"""Unit tests of the core kernels on hand-built IR ops (no converter, no TFLite Micro).

The oracles here are direct loop-level transcriptions of TFLite Micro's integer
formulas built on :mod:`tinytrain.sim.fixedpoint`, plus batch/per-sample consistency
and the error contract of ``prepare``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinytrain.errors import GraphError, TinytrainError, UnsupportedOpError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import (
    ConcatenationAttrs,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    FullyConnectedAttrs,
    GatherAttrs,
    NoAttrs,
    Op,
    OpKind,
    Padding,
    ReduceAttrs,
    ReshapeAttrs,
    SqueezeAttrs,
    StridedSliceAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.fixedpoint import (
    multiply_by_quantized_multiplier,
    quantize_multiplier,
    quantize_multipliers,
    wrap_int32,
)
from tinytrain.sim.kernels.core import KERNELS
from tinytrain.sim.kernels.core_requant import make_requantizer


def act(name: str, shape: Sequence[int], scale: float = 0.05, zp: int = 0, dtype: DType = DType.INT8) -> Tensor:
    quant = Quantization.per_tensor(scale, zp) if dtype is DType.INT8 else None
    return Tensor(name, tuple(shape), dtype, TensorKind.ACTIVATION, quant)


def const(name: str, data: np.ndarray, quant: Quantization | None = None) -> Tensor:
    return Tensor(name, tuple(data.shape), DType.from_numpy(data.dtype), TensorKind.CONSTANT, quant, data)


def op_of(kind: OpKind, ins: Sequence[Tensor | None], outs: Sequence[Tensor], attrs: object = NoAttrs()) -> Op:
    return Op(kind, tuple(t.name if t else None for t in ins), tuple(t.name for t in outs), attrs, index=7)  # type: ignore[arg-type]


def run_op(kind: OpKind, ins: Sequence[Tensor | None], outs: Sequence[Tensor], attrs: object, args: list) -> np.ndarray:
    spec = KERNELS[kind]
    op = op_of(kind, ins, outs, attrs)
    params = spec.prepare(op, tuple(ins), tuple(outs))
    full = [t.data if (t is not None and t.data is not None) else a for t, a in zip(ins, args, strict=True)]
    return spec.run(params, full)[0]


def clamp8(v: np.ndarray, lo: int = -128, hi: int = 127) -> np.ndarray:
    return np.clip(v, lo, hi).astype(np.int8)


# ------------------------------------------------------------------ requantization


@settings(max_examples=200, deadline=None)
@given(
    st.floats(min_value=1e-9, max_value=200.0),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-128, 127),
    st.sampled_from([100, 2**16, 2**24, 2**31 - 1]),
    st.integers(0, 2**32 - 1),
)
def test_requantizer_matches_reference(scale: float, bias: int, zp: int, bound: int, seed: int) -> None:
    q, s = quantize_multiplier(scale)
    if -s > 31:
        return
    rng = np.random.default_rng(seed)
    rq = make_requantizer([q], [s], zp, -128, 127, bound, [bias])
    acc = rng.integers(-bound, bound + 1, 300).astype(np.int64)
    r = max(-s, 0)
    if r > 0:  # exact ties of the final rounding, both signs
        t = rng.integers(-(2**12), 2**12, 50) * (1 << r) + (1 << (r - 1))
        acc[:50] = np.clip(((t.astype(object) << 31) // q) if q else 0, -bound, bound).astype(np.int64)
    want = clamp8(multiply_by_quantized_multiplier(wrap_int32(acc + bias), q, s) + zp)
    assert np.array_equal(rq.apply(acc.copy().reshape(-1, 1)).reshape(-1), want)


def test_requantizer_per_channel_mixed_shifts() -> None:
    rng = np.random.default_rng(3)
    scales = [1e-4, 0.3, 1.0, 7.5, 0.49999]
    qs, ss = zip(*(quantize_multiplier(s) for s in scales), strict=True)
    bias = [int(b) for b in rng.integers(-5000, 5000, 5)]
    rq = make_requantizer(list(qs), list(ss), -3, -100, 90, 2**20, bias)
    acc = rng.integers(-(2**20), 2**20, (400, 5)).astype(np.int64)
    acc[:, 2] = rng.integers(-300, 300, 400)
    want = clamp8(multiply_by_quantized_multiplier(acc + np.array(bias), np.array(qs), np.array(ss)) - 3, -100, 90)
    assert np.array_equal(rq.apply(acc.astype(np.float64)), want)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-12, max_value=300.0), min_size=1, max_size=12),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-128, 127),
    st.sampled_from([100, 2**16, 2**24, 2**31 - 1]),
    st.integers(0, 2**32 - 1),
)
def test_requantizer_per_channel_matches_reference(
    scales: list[float], bias_hi: int, zp: int, bound: int, seed: int
) -> None:
    """Per-channel shifts and biases up to int32 (the vectorised bound checks pick each
    evaluation path; every path must give the reference bytes)."""
    pairs = [quantize_multiplier(s) for s in scales]
    if any(-s > 31 or s > 31 for _, s in pairs):
        return
    qs, ss = (np.array(v, np.int64) for v in zip(*pairs, strict=True))
    vq, vs = quantize_multipliers(np.array(scales))
    assert np.array_equal(vq, qs) and np.array_equal(vs, ss)
    rng = np.random.default_rng(seed)
    bias = rng.integers(-abs(bias_hi) - 1, abs(bias_hi) + 1, len(scales)).astype(np.int64)
    rq = make_requantizer(qs, ss, zp, -128, 127, bound, bias)
    acc = rng.integers(-bound, bound + 1, (50, len(scales))).astype(np.int64)
    want = clamp8(multiply_by_quantized_multiplier(wrap_int32(acc + bias), qs, ss) + zp)
    assert np.array_equal(rq.apply(acc), want)


# -------------------------------------------------------------- convolution oracles


def _conv_reference(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    stride: int,
    pad: tuple[int, int],
    dil: int,
    in_zp: int,
    mult: Sequence[int],
    shift: Sequence[int],
    out_zp: int,
    out_hw: tuple[int, int],
    depthwise: int = 0,
) -> np.ndarray:
    """TFLite Micro's ConvPerChannel / DepthwiseConvPerChannel, one output at a time."""
    n, h, wd, _cin = x.shape
    cout = w.shape[3] if depthwise else w.shape[0]
    kh, kw = w.shape[1], w.shape[2]
    out = np.zeros((n, *out_hw, cout), np.int8)
    for bi in range(n):
        for oy in range(out_hw[0]):
            for ox in range(out_hw[1]):
                for oc in range(cout):
                    acc = 0
                    for ky in range(kh):
                        for kx in range(kw):
                            iy, ix = oy * stride - pad[0] + ky * dil, ox * stride - pad[1] + kx * dil
                            if not (0 <= iy < h and 0 <= ix < wd):
                                continue
                            if depthwise:
                                acc += int(w[0, ky, kx, oc]) * (int(x[bi, iy, ix, oc // depthwise]) - in_zp)
                            else:
                                acc += int(
                                    np.dot(w[oc, ky, kx].astype(np.int64), x[bi, iy, ix].astype(np.int64) - in_zp)
                                )
                    v = multiply_by_quantized_multiplier(np.array([acc + int(b[oc])]), mult[oc], shift[oc])[0]
                    out[bi, oy, ox, oc] = np.clip(v + out_zp, -128, 127)
    return out


@pytest.mark.parametrize("depthwise", [0, 3])
def test_conv_and_depthwise_match_loop_reference(depthwise: int) -> None:
    rng = np.random.default_rng(depthwise)
    n, h, w_, cin, k = 3, 7, 6, 2, 3
    cout = cin * depthwise if depthwise else 5
    wshape = (1, k, k, cout) if depthwise else (cout, k, k, cin)
    w = rng.integers(-127, 128, wshape).astype(np.int8)
    b = rng.integers(-3000, 3000, cout).astype(np.int32)
    f_scales = tuple(float(s) for s in rng.uniform(0.001, 0.02, cout))
    axis = 3 if depthwise else 0
    filt = const("w", w, Quantization(f_scales, (0,) * cout, axis))
    bias = const("b", b, Quantization(tuple(0.1 * s for s in f_scales), (0,) * cout, 0))
    x_t = act("x", (1, h, w_, cin), 0.1, -9)
    out_hw = (4, 3)  # SAME, stride 2, dilation 1
    out_t = act("y", (1, *out_hw, cout), 0.35, 4)
    kind = OpKind.DEPTHWISE_CONV_2D if depthwise else OpKind.CONV_2D
    attrs = (
        DepthwiseConv2DAttrs(2, 2, depth_multiplier=depthwise, padding=Padding.SAME)
        if depthwise
        else Conv2DAttrs(2, 2, padding=Padding.SAME)
    )
    x = rng.integers(-128, 128, (n, h, w_, cin)).astype(np.int8)
    got = run_op(kind, (x_t, filt, bias), (out_t,), attrs, [x, None, None])
    mult, shift = zip(*(quantize_multiplier(0.1 * s / 0.35) for s in f_scales), strict=True)
    pad = ((out_hw[0] - 1) * 2 + k - h) // 2, ((out_hw[1] - 1) * 2 + k - w_) // 2
    want = _conv_reference(x, w, b, 2, pad, 1, -9, mult, shift, 4, out_hw, depthwise)
    assert np.array_equal(got, want)
    one = np.concatenate(
        [run_op(kind, (x_t, filt, bias), (out_t,), attrs, [x[i : i + 1], None, None]) for i in range(n)]
    )
    assert np.array_equal(got, one)


def test_fully_connected_wraps_int32_and_uses_float64_when_needed() -> None:
    """A deep FC whose accumulator + bias overflows int32, as the C code wraps it."""
    rng = np.random.default_rng(9)
    depth = 70_000
    w = np.where(rng.random((2, depth)) < 0.5, -127, 127).astype(np.int8)
    x = (np.sign(w[0]) * 127).astype(np.int8)[None, :]  # row 0 sums to ~1.1e9
    bias = np.array([2**31 - 2**28, -5], np.int32)
    in_t, out_t = act("x", (1, depth), 0.02, 0), act("y", (1, 2), 50.0, 0)
    w_t = const("w", w, Quantization.per_tensor(0.01, 0))
    b_t = const("b", bias, Quantization.per_tensor(0.0002, 0))
    got = run_op(OpKind.FULLY_CONNECTED, (in_t, w_t, b_t), (out_t,), FullyConnectedAttrs(), [x, None, None])
    acc = w.astype(np.int64) @ x[0].astype(np.int64) + bias
    q, s = quantize_multiplier(float(np.float32(0.02) * np.float32(0.01)) / 50.0)
    want = clamp8(multiply_by_quantized_multiplier(wrap_int32(acc), q, s))[None, :]
    assert acc[0] > 2**31 - 1  # the case really wraps
    assert np.array_equal(got, want)


# ----------------------------------------------------------------- shape-only ops


def test_squeeze_expand_dims_and_batched_reshape() -> None:
    x = np.arange(-12, 12, dtype=np.int8).reshape(2, 1, 3, 4)
    a, b = act("a", (1, 1, 3, 4)), act("b", (1, 3, 4))
    y = run_op(OpKind.SQUEEZE, (a,), (b,), SqueezeAttrs((1,)), [x])
    assert y.shape == (2, 3, 4) and np.array_equal(y, x[:, 0])
    axis = const("ax", np.array([-1], np.int32))
    c = act("c", (1, 3, 4, 1))
    z = run_op(OpKind.EXPAND_DIMS, (b, axis), (c,), NoAttrs(), [y, None])
    assert z.shape == (2, 3, 4, 1) and np.array_equal(z[..., 0], y)
    d = act("d", (1, 12))
    r = run_op(OpKind.RESHAPE, (c,), (d,), ReshapeAttrs((1, 12)), [z])
    assert np.array_equal(r, x.reshape(2, 12))


def test_float_relu_keeps_negative_zero_and_nan_like_c() -> None:
    a, b = act("a", (1, 4), dtype=DType.FLOAT32), act("b", (1, 4), dtype=DType.FLOAT32)
    x = np.array([[-0.0, np.nan, -2.0, 3.0]], np.float32)
    y = run_op(OpKind.RELU, (a,), (b,), NoAttrs(), [x])
    assert np.signbit(y[0, 0]) and np.isnan(y[0, 1]) and y[0, 2] == 0.0 and y[0, 3] == 3.0


def test_gather_rejects_out_of_range_runtime_indices() -> None:
    data = const("p", np.arange(12, dtype=np.int8).reshape(4, 3), Quantization.per_tensor(0.1, 0))
    idx = Tensor("i", (1, 2), DType.INT32, TensorKind.INPUT)
    out = act("o", (1, 2, 3), 0.1, 0)
    ok = run_op(OpKind.GATHER, (data, idx), (out,), GatherAttrs(0), [None, np.array([[3, 0]], np.int32)])
    assert np.array_equal(ok, np.array([[[9, 10, 11], [0, 1, 2]]], np.int8))
    with pytest.raises(UsageError, match="op #7"):
        run_op(OpKind.GATHER, (data, idx), (out,), GatherAttrs(0), [None, np.array([[4, 0]], np.int32)])


# ------------------------------------------------------------ the prepare contract


def _bad_ops() -> list[tuple[str, OpKind, tuple[Tensor | None, ...], tuple[Tensor, ...], object, type[TinytrainError]]]:
    w = const("w", np.ones((4, 3, 3, 2), np.int8), Quantization.per_tensor(0.01, 0))
    x = act("x", (1, 8, 8, 2))
    perm = const("perm", np.array([0, 0, 1, 2], np.int32))
    axes = const("axes", np.array([5], np.int32))
    ss = [const(n, np.array(v, np.int32)) for n, v in (("b", [0, 0, 0, 0]), ("e", [1, 8, 8, 2]), ("s", [1, 1, 1, 1]))]
    fc_w = const("fw", np.ones((3, 10), np.int8), Quantization.per_tensor(0.01, 0))
    return [
        ("conv output size", OpKind.CONV_2D, (x, w, None), (act("y", (1, 5, 8, 4)),), Conv2DAttrs(1, 1), GraphError),
        (
            "conv depth",
            OpKind.CONV_2D,
            (act("x3", (1, 8, 8, 3)), w, None),
            (act("y", (1, 8, 8, 4)),),
            Conv2DAttrs(1, 1),
            GraphError,
        ),
        (
            "conv rank",
            OpKind.CONV_2D,
            (act("x1", (8, 2)), w, None),
            (act("y", (1, 8, 8, 4)),),
            Conv2DAttrs(1, 1),
            GraphError,
        ),
        ("conv zero stride", OpKind.CONV_2D, (x, w, None), (act("y", (1, 8, 8, 4)),), Conv2DAttrs(0, 1), GraphError),
        (
            "conv int16",
            OpKind.CONV_2D,
            (act("x16", (1, 8, 8, 2), dtype=DType.INT16), w, None),
            (act("y", (1, 8, 8, 4)),),
            Conv2DAttrs(1, 1),
            UnsupportedOpError,
        ),
        ("conv attrs", OpKind.CONV_2D, (x, w, None), (act("y", (1, 8, 8, 4)),), NoAttrs(), GraphError),
        ("conv arity", OpKind.CONV_2D, (x,), (act("y", (1, 8, 8, 4)),), Conv2DAttrs(1, 1), GraphError),
        (
            "dw multiplier",
            OpKind.DEPTHWISE_CONV_2D,
            (x, const("dw", np.ones((1, 3, 3, 4), np.int8), Quantization.per_tensor(0.01, 0)), None),
            (act("y", (1, 8, 8, 4)),),
            DepthwiseConv2DAttrs(1, 1, depth_multiplier=3),
            GraphError,
        ),
        (
            "fc flatten",
            OpKind.FULLY_CONNECTED,
            (act("xf", (1, 7)), fc_w, None),
            (act("y", (1, 3)),),
            FullyConnectedAttrs(),
            GraphError,
        ),
        ("transpose perm", OpKind.TRANSPOSE, (x, perm), (act("y", (1, 8, 8, 2)),), NoAttrs(), GraphError),
        ("mean axis", OpKind.MEAN, (x, axes), (act("y", (1, 8, 8, 2)),), ReduceAttrs(True), GraphError),
        (
            "concat quant",
            OpKind.CONCATENATION,
            (x, act("x2", (1, 8, 8, 2), 0.07)),
            (act("y", (1, 8, 8, 4)),),
            ConcatenationAttrs(3),
            UnsupportedOpError,
        ),
        (
            "concat shape",
            OpKind.CONCATENATION,
            (x, act("x2", (1, 8, 7, 2))),
            (act("y", (1, 8, 8, 4)),),
            ConcatenationAttrs(3),
            GraphError,
        ),
        (
            "ellipsis",
            OpKind.STRIDED_SLICE,
            (x, *ss),
            (act("y", (1, 8, 8, 2)),),
            StridedSliceAttrs(ellipsis_mask=1),
            UnsupportedOpError,
        ),
        ("slice shape", OpKind.STRIDED_SLICE, (x, *ss), (act("y", (1, 8, 8, 3)),), StridedSliceAttrs(), GraphError),
        ("reshape size", OpKind.RESHAPE, (x,), (act("y", (1, 100)),), ReshapeAttrs((1, 100)), GraphError),
        ("add broadcast", OpKind.ADD, (x, act("x5", (1, 8, 5, 2))), (act("y", (1, 8, 8, 2)),), NoAttrs(), GraphError),
    ]


@pytest.mark.parametrize("case", _bad_ops(), ids=lambda c: c[0])
def test_prepare_rejects_inconsistent_ops(case: tuple) -> None:
    _, kind, ins, outs, attrs, err = case
    op = op_of(kind, ins, outs, attrs)
    with pytest.raises(err, match="op #7"):
        KERNELS[kind].prepare(op, ins, outs)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(0, 9), min_size=4, max_size=4),
    st.lists(st.integers(0, 9), min_size=4, max_size=4),
    st.lists(st.integers(0, 9), min_size=4, max_size=4),
    st.integers(-3, 4),
    st.sampled_from(sorted(KERNELS, key=lambda k: k.value)),
)
def test_prepare_never_leaks_python_errors(
    in_shape: list[int], w_shape: list[int], out_shape: list[int], stride: int, kind: OpKind
) -> None:
    """Random (mostly inconsistent) shapes: prepare succeeds or raises a TinytrainError."""
    w = const("w", np.ones(w_shape, np.int8), Quantization.per_tensor(0.01, 0))
    ints = const("k", np.full((4,), stride, np.int32))
    attrs_by_kind = {
        OpKind.CONV_2D: Conv2DAttrs(stride, stride),
        OpKind.DEPTHWISE_CONV_2D: DepthwiseConv2DAttrs(stride, stride),
        OpKind.FULLY_CONNECTED: FullyConnectedAttrs(),
        OpKind.MEAN: ReduceAttrs(False),
        OpKind.SUM: ReduceAttrs(True),
        OpKind.CONCATENATION: ConcatenationAttrs(stride),
        OpKind.GATHER: GatherAttrs(stride),
        OpKind.STRIDED_SLICE: StridedSliceAttrs(shrink_axis_mask=max(stride, 0)),
        OpKind.SQUEEZE: SqueezeAttrs((stride,)),
        OpKind.RESHAPE: ReshapeAttrs(tuple(out_shape)),
    }
    x, y = act("x", in_shape), act("y", out_shape)
    for ins in ((x, w), (x, w, ints), (x, ints, ints, ints), (x,), (x, ints)):
        op = op_of(kind, ins, (y,), attrs_by_kind.get(kind, NoAttrs()))
        with contextlib.suppress(TinytrainError):
            KERNELS[kind].prepare(op, ins, (y,))


# ---------------------------------------------------------------------- batch safety


def test_batch_safety_of_axis0_ops() -> None:
    x = act("x", (1, 4, 6))
    cases = [
        (OpKind.RESHAPE, (x,), act("y", (4, 6)), ReshapeAttrs((4, 6)), False),
        (OpKind.RESHAPE, (x,), act("y", (1, 24)), ReshapeAttrs((1, 24)), True),
        (OpKind.TRANSPOSE, (x, const("p", np.array([1, 0, 2], np.int32))), act("y", (4, 1, 6)), NoAttrs(), False),
        (OpKind.TRANSPOSE, (x, const("p", np.array([0, 2, 1], np.int32))), act("y", (1, 6, 4)), NoAttrs(), True),
        (OpKind.MEAN, (x, const("a", np.array([0], np.int32))), act("y", (4, 6)), ReduceAttrs(False), False),
        (OpKind.MEAN, (x, const("a", np.array([-1], np.int32))), act("y", (1, 4)), ReduceAttrs(False), True),
        (OpKind.CONCATENATION, (x, x), act("y", (2, 4, 6)), ConcatenationAttrs(0), False),
        (OpKind.CONCATENATION, (x, x), act("y", (1, 8, 6)), ConcatenationAttrs(-2), True),
        (OpKind.GATHER, (x, const("i", np.array([0], np.int32))), act("y", (1, 4, 6)), GatherAttrs(0), False),
        (OpKind.GATHER, (x, const("i", np.array([3, 1], np.int32))), act("y", (1, 2, 6)), GatherAttrs(1), True),
        (
            OpKind.FULLY_CONNECTED,
            (x, const("w", np.ones((3, 6), np.int8), Quantization.per_tensor(0.1, 0))),
            act("y", (4, 3)),
            FullyConnectedAttrs(),
            False,
        ),
        (
            OpKind.FULLY_CONNECTED,
            (x, const("w", np.ones((3, 6), np.int8), Quantization.per_tensor(0.1, 0))),
            act("y", (1, 4, 3)),
            FullyConnectedAttrs(keep_num_dims=True),
            True,
        ),
    ]
    for kind, ins, out, attrs, safe in cases:
        op = op_of(kind, ins, (out,), attrs)
        KERNELS[kind].prepare(op, ins, (out,))  # the op itself is valid
        assert KERNELS[kind].batch_safe(op, ins, (out,)) is safe, (kind, out.shape)
