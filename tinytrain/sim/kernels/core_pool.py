"""AVERAGE_POOL_2D and MAX_POOL_2D, bit-exact with TFLite Micro's reference kernels.

TFLite Micro's pooling visits only the window taps inside the image. Here the input is
padded with a neutral value (0 for sums, the type's lowest value for maxima) and the
``kh·kw`` shifted strided views are combined, vectorised over batch, positions and
channels. int8 average pooling divides the exact integer window sum by the number of
valid taps (precomputed per output position) with TFLite's rounding
(``(sum ± count/2) / count``, C division truncating towards zero). The float32 average
adds the taps in the C loop order (row, column) one float32 addition at a time, then
divides by ``float(count)``; the float32 maximum reproduces ``std::max`` (NaN handling
included) with ``where(total < v, v, total)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op, OpKind, Pool2DAttrs
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    FLOAT32_MAX,
    check_arity,
    check_dtype,
    check_rank,
    clamp_float,
    float_activation_range,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_conv import Geometry, pad_input, tap_view, window_geometry


@dataclass(frozen=True, eq=False)
class PoolParams:
    geom: Geometry
    is_avg: bool
    is_int8: bool
    count: np.ndarray  # (out_h, out_w, 1) valid taps per window
    q_lo: int
    q_hi: int
    f_lo: np.float32
    f_hi: np.float32


def _valid_counts(g: Geometry, h: int, w: int) -> np.ndarray:
    def axis_counts(size: int, out: int, stride: int, k: int, pad: int) -> np.ndarray:
        origin = np.arange(out) * stride - pad
        start = np.maximum(0, -origin)
        end = np.minimum(k, size - origin)
        return np.maximum(end - start, 0)

    ch = axis_counts(h, g.out_h, g.sh, g.kh, g.pad_top)
    cw = axis_counts(w, g.out_w, g.sw, g.kw, g.pad_left)
    return (ch[:, None] * cw[None, :])[:, :, None].astype(np.int32)


def prepare_pool(op: Op, inputs: Inputs, outputs: Outputs) -> PoolParams:
    check_arity(op, inputs, outputs, (1,))
    if not isinstance(op.attrs, Pool2DAttrs):
        raise graph_error(op, "attributes must be Pool2DAttrs")
    a = op.attrs
    inp, out = tensor_at(op, inputs, 0), outputs[0]
    check_rank(op, inp, (4,), "input")
    check_rank(op, out, (4,), "output")
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise unsupported(op, "input and output must have the same type")
    n, h, w, c = inp.shape
    if out.shape[0] != n or out.shape[3] != c:
        raise graph_error(op, f"output shape {list(out.shape)} does not match input {list(inp.shape)}")
    geom = window_geometry(
        op, a.padding, (h, w), (a.filter_h, a.filter_w), (a.stride_h, a.stride_w), (1, 1), (out.shape[1], out.shape[2])
    )
    count = _valid_counts(geom, h, w)
    is_avg = op.kind is OpKind.AVERAGE_POOL_2D
    if is_avg and int(count.min(initial=1)) == 0:
        raise unsupported(op, "a pooling window lies entirely in the padding")
    f_lo, f_hi = float_activation_range(op, a.activation)
    q_lo, q_hi = -128, 127
    if inp.dtype is DType.INT8:
        s_in, z_in = per_tensor_qparams(op, inp, "input")
        s_out, z_out = per_tensor_qparams(op, out, "output")
        if abs(float(np.float32(s_in) - np.float32(s_out))) > 1.0e-6 or z_in != z_out:
            raise unsupported(op, "input and output quantization must be equal")
        q_lo, q_hi = quantized_activation_range(op, a.activation, s_out, z_out)
    return PoolParams(geom, is_avg, inp.dtype is DType.INT8, count, q_lo, q_hi, f_lo, f_hi)


def run_pool(p: PoolParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_avg_pool_s8 / tt_max_pool_s8 in firmware_templates/runtime/src/tt_pool.c (int8 path)."""
    x = args[0]
    assert x is not None
    g = p.geom
    taps = [(ky, kx) for ky in range(g.kh) for kx in range(g.kw)]
    if p.is_int8:
        if p.is_avg:
            xp = pad_input(x, g, 0).astype(np.int32)
            acc = tap_view(xp, g, 0, 0).copy()
            for ky, kx in taps[1:]:
                acc += tap_view(xp, g, ky, kx)
            half = p.count // 2
            pos = (acc + half) // p.count
            neg = -((half - acc) // p.count)
            y = np.where(acc > 0, pos, neg)
        else:
            xp = pad_input(x, g, -128)
            y = tap_view(xp, g, 0, 0).copy()
            for ky, kx in taps[1:]:
                np.maximum(y, tap_view(xp, g, ky, kx), out=y)
        return (np.clip(y, p.q_lo, p.q_hi).astype(np.int8),)
    xf = x.astype(np.float32, copy=False)
    if p.is_avg:
        xp = pad_input(xf, g, 0.0)
        total = np.zeros(tap_view(xp, g, 0, 0).shape, dtype=np.float32)
        for ky, kx in taps:
            total += tap_view(xp, g, ky, kx)
        total /= p.count.astype(np.float32)
    else:
        lowest = np.float32(-FLOAT32_MAX)
        xp = pad_input(xf, g, lowest)
        total = np.full(tap_view(xp, g, 0, 0).shape, lowest, dtype=np.float32)
        for ky, kx in taps:
            v = tap_view(xp, g, ky, kx)
            total = np.where(total < v, v, total)
    total = clamp_float(total, p.f_lo, p.f_hi)
    return (total,)


AVERAGE_POOL_2D = KernelSpec(prepare=prepare_pool, run=run_pool)
MAX_POOL_2D = AVERAGE_POOL_2D
