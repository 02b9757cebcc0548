"""FULLY_CONNECTED and BATCH_MATMUL, bit-exact with TFLite Micro's reference kernels.

int8: TFLite Micro accumulates ``Σ (w − zp_w)·(x − zp_x)`` in int32 (the per-channel FC
kernel ignores ``zp_w``), adds the int32 bias and requantizes. Here the offsets are
applied to the operands, which are converted to float32 or float64, and the products are
summed by a BLAS matmul. **Exactness:** every product is an integer and every partial
sum, whatever order BLAS uses, is bounded by ``B = Σ_k |w'_k|·max|x'|`` (computed in
``prepare`` from the actual constant weights, or ``K·255·255`` when both operands are
activations); float32 is used only when ``B < 2^24`` and float64 otherwise
(``B < 2^53`` for any realistic depth), so the float result is the exact integer
accumulator. int32 wrap-around of the C accumulator is reproduced when ``B + |bias|``
could exceed int32 (see :mod:`core_requant`).

float32: the C kernels add ``x·w`` into a float total one ``k`` at a time, then add the
bias and clamp; that sequence of float32 roundings is reproduced with one vectorised
multiply-add per ``k``.

FULLY_CONNECTED flattens its input as TFLite Micro does: the number of rows is the
output's element count over its last dimension, each row being ``accum_depth``
consecutive input values (so ``keep_num_dims`` only changes the output tensor's shape,
which comes from the IR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import BatchMatMulAttrs, FullyConnectedAttrs, Op
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    check_arity,
    check_dtype,
    clamp_float,
    const_data,
    f32,
    float_activation_range,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    runtime_shape,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_conv import tiled_matmul
from tinytrain.sim.kernels.core_requant import Requantizer, make_requantizer

F32_EXACT = 2**24
F64_EXACT = 2**53


# --------------------------------------------------------------------- FULLY_CONNECTED


@dataclass(frozen=True, eq=False)
class FullyConnectedParams:
    is_int8: bool
    accum: int
    out_c: int
    out_shape: tuple[int, ...]
    w_t: np.ndarray  # (accum, out) in the matmul dtype (int8: weights minus their offset)
    in_zp: int
    requant: Requantizer | None
    f_bias: np.ndarray | None
    f_lo: np.float32
    f_hi: np.float32


def prepare_fully_connected(op: Op, inputs: Inputs, outputs: Outputs) -> FullyConnectedParams:
    check_arity(op, inputs, outputs, (2, 3), optional=(2,))
    if not isinstance(op.attrs, FullyConnectedAttrs):
        raise graph_error(op, "attributes must be FullyConnectedAttrs")
    a = op.attrs
    inp, filt, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    bias = inputs[2] if len(inputs) == 3 else None
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise unsupported(op, f"output type {out.dtype.value} differs from input type {inp.dtype.value}")
    if len(filt.shape) != 2:
        raise unsupported(op, f"weights {filt.name!r} must have rank 2, have shape {list(filt.shape)}")
    if len(out.shape) < 1:
        raise graph_error(op, "output must have rank >= 1")
    out_c, accum = filt.shape
    if out_c == 0 or accum == 0:
        raise graph_error(op, f"weights {filt.name!r} are empty ({list(filt.shape)})")
    if out.shape[-1] != out_c:
        raise graph_error(op, f"output depth {out.shape[-1]} does not match the {out_c} weight rows")
    rows = math.prod(out.shape[:-1])
    if inp.size != rows * accum:
        raise graph_error(
            op, f"input {list(inp.shape)} does not flatten into {rows} rows of {accum} (output {list(out.shape)})"
        )
    wd = const_data(op, filt, "weights")
    if inp.dtype is DType.FLOAT32:
        check_dtype(op, filt, (DType.FLOAT32,), "weights")
        f_bias = None
        if bias is not None:
            check_dtype(op, bias, (DType.FLOAT32,), "bias")
            bd = const_data(op, bias, "bias")
            if bd.size != out_c:
                raise graph_error(op, f"bias {bias.name!r} has {bd.size} values for {out_c} outputs")
            f_bias = bd.reshape(-1).astype(np.float32)
        lo, hi = float_activation_range(op, a.activation)
        w_t = np.ascontiguousarray(wd.astype(np.float32).T)
        return FullyConnectedParams(False, accum, out_c, tuple(out.shape), w_t, 0, None, f_bias, lo, hi)

    check_dtype(op, filt, (DType.INT8,), "weights")
    in_scale, in_zp = per_tensor_qparams(op, inp, "input")
    out_scale, out_zp = per_tensor_qparams(op, out, "output")
    fq = filt.quant
    if fq is None:
        raise unsupported(op, f"weights {filt.name!r} have no quantization parameters")
    b = [0] * out_c
    if bias is not None:
        check_dtype(op, bias, (DType.INT32,), "bias")
        bd = const_data(op, bias, "bias")
        if bd.size != out_c:
            raise graph_error(op, f"bias {bias.name!r} has {bd.size} values for {out_c} outputs")
        b = [int(v) for v in bd.reshape(-1)]
    w64 = wd.astype(np.int64)
    if len(fq.scale) > 1:
        if len(fq.scale) != out_c or fq.axis is None or not (0 <= fq.axis < 2) or filt.shape[fq.axis] != out_c:
            raise graph_error(op, f"weights {filt.name!r} per-channel scales do not match the {out_c} outputs")
        mults, shifts = zip(*(quantize_multiplier(in_scale * float(s) / out_scale) for s in fq.scale), strict=True)
    else:
        f_scale, f_zp = float(fq.scale[0]), int(fq.zero_point[0])
        w64 = w64 - f_zp
        if bias is not None:
            # TFLite's GetQuantizedConvolutionMultipler: the bias scale must match in·w within 2% of out.
            b_scale = float(bias.quant.scale[0]) if bias.quant is not None else 0.0
            if abs(in_scale * f_scale - b_scale) / out_scale > 0.02:
                raise unsupported(op, f"bias scale {b_scale} does not match input scale × weight scale")
        q, s = quantize_multiplier(float(f32(in_scale) * f32(f_scale)) / out_scale)
        mults, shifts = (q,), (s,)
    x_max = max(abs(INT8_MIN - in_zp), abs(INT8_MAX - in_zp))
    bound = int(np.abs(w64).sum(axis=1).max(initial=0)) * x_max
    if bound >= F64_EXACT:  # pragma: no cover - needs > 2^37 weights
        raise unsupported(op, "accumulation depth too large for an exact simulation")
    mm = np.float32 if bound < F32_EXACT else np.float64
    q_lo, q_hi = quantized_activation_range(op, a.activation, out_scale, out_zp)
    rq = make_requantizer(list(mults), list(shifts), out_zp, q_lo, q_hi, bound, b)
    w_t = np.ascontiguousarray(w64.T.astype(mm))
    lo, hi = float_activation_range(op, a.activation)
    return FullyConnectedParams(True, accum, out_c, tuple(out.shape), w_t, in_zp, rq, None, lo, hi)


def run_fully_connected(p: FullyConnectedParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_fc_s8 in firmware_templates/runtime/src/tt_fc.c (int8 path)."""
    x = args[0]
    assert x is not None
    rows = x.size // p.accum
    x2 = x.reshape(rows, p.accum)
    shape = runtime_shape(p.out_shape, rows * p.out_c)
    if p.is_int8:
        xf = x2.astype(p.w_t.dtype)
        if p.in_zp:
            xf -= p.w_t.dtype.type(p.in_zp)
        assert p.requant is not None
        return (p.requant.apply(tiled_matmul(xf, p.w_t)).reshape(shape),)
    xf = x2.astype(np.float32, copy=False)
    total = np.zeros((rows, p.out_c), dtype=np.float32)
    for k in range(p.accum):
        total += xf[:, k : k + 1] * p.w_t[k]
    total += p.f_bias if p.f_bias is not None else np.float32(0.0)
    total = clamp_float(total, p.f_lo, p.f_hi)
    return (total.reshape(shape),)


def fully_connected_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    inp = inputs[0]
    out = outputs[0] if outputs else None
    if inp is None or out is None:
        return False
    return len(inp.shape) >= 2 and len(out.shape) >= 2 and inp.shape[0] == 1 and out.shape[0] == 1


# ------------------------------------------------------------------------- BATCH_MATMUL


@dataclass(frozen=True, eq=False)
class BatchMatMulParams:
    is_int8: bool
    adj_x: bool
    adj_y: bool
    mm: type
    lhs_zp: int
    rhs_zp: int
    requant: Requantizer | None
    rank: int
    out_shape: tuple[int, ...]


def _bmm_expected_shape(op: Op, lhs: Sequence[int], rhs: Sequence[int], adj_x: bool, adj_y: bool) -> tuple[int, ...]:
    rank = max(len(lhs), len(rhs))
    el = (1,) * (rank - len(lhs)) + tuple(lhs)
    er = (1,) * (rank - len(rhs)) + tuple(rhs)
    batch = []
    for dl, dr in zip(el[:-2], er[:-2], strict=True):
        if dl != dr and dl != 1 and dr != 1:
            raise graph_error(op, f"batch dimensions of {list(lhs)} and {list(rhs)} do not broadcast")
        batch.append(dr if dl == 1 else dl)
    k_l = el[-2] if adj_x else el[-1]
    k_r = er[-1] if adj_y else er[-2]
    if k_l != k_r:
        raise graph_error(op, f"accumulation depths differ: {list(lhs)} (adj_x={adj_x}) × {list(rhs)} (adj_y={adj_y})")
    rows = el[-1] if adj_x else el[-2]
    cols = er[-2] if adj_y else er[-1]
    return (*batch, rows, cols)


def prepare_batch_matmul(op: Op, inputs: Inputs, outputs: Outputs) -> BatchMatMulParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, BatchMatMulAttrs):
        raise graph_error(op, "attributes must be BatchMatMulAttrs")
    a = op.attrs
    lhs, rhs, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_dtype(op, lhs, (DType.INT8, DType.FLOAT32), "lhs")
    if rhs.dtype is not lhs.dtype or out.dtype is not lhs.dtype:
        raise unsupported(op, "lhs, rhs and output must have the same type")
    for t, role in ((lhs, "lhs"), (rhs, "rhs")):
        if not 2 <= len(t.shape) <= 5:
            raise unsupported(op, f"{role} {t.name!r} must have rank 2..5, has shape {list(t.shape)}")
    expect = _bmm_expected_shape(op, lhs.shape, rhs.shape, a.adj_x, a.adj_y)
    if tuple(out.shape) != expect:
        raise graph_error(op, f"output shape {list(out.shape)} differs from the expected {list(expect)}")
    k = lhs.shape[-2] if a.adj_x else lhs.shape[-1]
    if lhs.dtype is DType.FLOAT32:
        return BatchMatMulParams(False, a.adj_x, a.adj_y, np.float32, 0, 0, None, len(expect), expect)
    l_scale, l_zp = per_tensor_qparams(op, lhs, "lhs")
    r_scale, r_zp = per_tensor_qparams(op, rhs, "rhs")
    o_scale, o_zp = per_tensor_qparams(op, out, "output")
    lmax = max(abs(INT8_MIN - l_zp), abs(INT8_MAX - l_zp))
    if rhs.data is not None:
        r = rhs.data.astype(np.int64) - r_zp
        sums = np.abs(r).sum(axis=-1 if a.adj_y else -2)
        bound = int(sums.max(initial=0)) * lmax
    else:
        rmax = max(abs(INT8_MIN - r_zp), abs(INT8_MAX - r_zp))
        bound = k * lmax * rmax
    if bound >= F64_EXACT:  # pragma: no cover - needs > 2^37 products
        raise unsupported(op, "accumulation depth too large for an exact simulation")
    mm = np.float32 if bound < F32_EXACT else np.float64
    q, s = quantize_multiplier(float(f32(l_scale) * f32(r_scale)) / o_scale)
    rq = make_requantizer([q], [s], o_zp, INT8_MIN, INT8_MAX, bound)
    return BatchMatMulParams(True, a.adj_x, a.adj_y, mm, l_zp, r_zp, rq, len(expect), expect)


def run_batch_matmul(p: BatchMatMulParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_batch_matmul_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8)."""
    x, y = args[0], args[1]
    assert x is not None and y is not None
    xf: np.ndarray
    yf: np.ndarray
    if p.is_int8:
        xf = x.astype(p.mm)
        yf = y.astype(p.mm)
        if p.lhs_zp:
            xf -= p.mm(p.lhs_zp)
        if p.rhs_zp:
            yf -= p.mm(p.rhs_zp)
    else:
        xf = x.astype(np.float32, copy=False)
        yf = y.astype(np.float32, copy=False)
    if p.adj_x:
        xf = np.swapaxes(xf, -1, -2)
    if p.adj_y:
        yf = np.swapaxes(yf, -1, -2)
    if p.is_int8:
        assert p.requant is not None
        return (p.requant.apply(np.matmul(xf, yf)),)
    shape = (*np.broadcast_shapes(xf.shape[:-2], yf.shape[:-2]), xf.shape[-2], yf.shape[-1])
    total = np.zeros(shape, dtype=np.float32)
    for k in range(xf.shape[-1]):
        total += xf[..., :, k : k + 1] * yf[..., k : k + 1, :]
    return (total,)


def batch_matmul_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if len(inputs) != 2 or not outputs or inputs[0] is None or inputs[1] is None:
        return False
    lhs, rhs, out = inputs[0], inputs[1], outputs[0]
    if not out.shape or out.shape[0] != 1:
        return False
    adj_x = isinstance(op.attrs, BatchMatMulAttrs) and op.attrs.adj_x
    if len(out.shape) == 2:
        # rows of a 2-D product are independent: only lhs rows may carry the batch.
        return lhs.data is None and not adj_x and lhs.shape[0] == 1 and rhs.data is not None
    for t in (lhs, rhs):
        if t.data is None:
            if len(t.shape) != len(out.shape) or t.shape[0] != 1:
                return False
        elif len(t.shape) == len(out.shape) and t.shape[0] != 1:
            return False
    return True


FULLY_CONNECTED = KernelSpec(
    prepare=prepare_fully_connected, run=run_fully_connected, batch_safe=fully_connected_batch_safe
)
BATCH_MATMUL = KernelSpec(prepare=prepare_batch_matmul, run=run_batch_matmul, batch_safe=batch_matmul_batch_safe)
