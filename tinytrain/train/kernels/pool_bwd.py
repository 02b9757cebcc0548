"""Backward of MEAN (any non-batch axes) and AVERAGE_POOL_2D (global or windowed).

An average of ``n`` values passes ``dL/dy / n`` to each of them. ``1/n`` becomes a Q15
factor ``μ = round(2^(15+k) / n)`` with ``k = ⌊log2 n_min⌋`` (``n_min``: the smallest
window count, so ``μ ≤ 2^15``), fixed at compile time (one per output position for a
windowed pool, whose border windows count only the taps inside the image, as the
forward kernel does). Then ``g'[w] = RoundingDivideByPOT(g_y[w] · μ[w], 15)``, the
input accumulator sums ``g'`` over the windows that contain each input element (at most
``kh·kw`` terms of ``|g'| ≤ 2^14``: int32-safe) and ``(g_x, e_x) = normalize(acc, e_y − k)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, Op, Pool2DAttrs, ReduceAttrs
from tinytrain.sim.fixedpoint import rounding_divide_by_pot
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import (
    check_arity,
    check_dtype,
    const_int_vector,
    graph_error,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_conv import Geometry, window_geometry
from tinytrain.train.kernels.gradient import Grad, normalize

Q15_BITS = 15
MAX_WINDOW = 1 << 16  # kh·kw·2^14 must stay below 2^31


@dataclass(frozen=True, eq=False)
class PoolBwdParams:
    in_shape: tuple[int, ...]
    keep_shape: tuple[int, ...]  # output shape with the reduced axes kept as 1 (MEAN); NHWC (pool)
    geom: Geometry | None  # None for MEAN
    mu: np.ndarray  # int64 Q15 factors 2^k / count: shape () for MEAN, (out_h, out_w, 1) for a pool
    k: int


def reciprocal_q15(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """``(μ, k)``: ``k = ⌊log2 min count⌋``, ``μ = round(2^(15+k) / count)`` (half away, exact)."""
    c = np.asarray(counts, dtype=np.int64)
    k = int(c.min()).bit_length() - 1
    num = np.int64(1) << np.int64(Q15_BITS + k + 1)
    return (num + c) // (2 * c), k


def prepare_mean_backward(op: Op, inputs: Inputs, outputs: Outputs) -> PoolBwdParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, ReduceAttrs):
        raise graph_error(op, "attributes must be ReduceAttrs")
    x, axes_t, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_dtype(op, x, (DType.INT8,), "input")
    rank = len(x.shape)
    axes = {a + rank if a < 0 else a for a in const_int_vector(op, axes_t, "axis")}
    if not axes or any(not 1 <= a < rank for a in axes):
        raise unsupported(op, f"training needs a MEAN over non-batch axes, got {sorted(axes)}")
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    if y.size != int(np.prod(keep)):
        raise graph_error(op, f"output shape {list(y.shape)} does not hold the mean of {list(x.shape)}")
    n = int(np.prod([x.shape[a] for a in axes]))
    if n == 0:
        raise unsupported(op, "MEAN over an empty axis")
    mu, k = reciprocal_q15(np.asarray([n]))
    return PoolBwdParams(x.shape, keep, None, mu.reshape(()), k)


def _window_counts(g: Geometry, h: int, w: int) -> np.ndarray:
    """Taps of each window inside the image, (out_h, out_w, 1)."""

    def per_axis(size: int, out: int, stride: int, k: int, pad: int) -> np.ndarray:
        origin = np.arange(out) * stride - pad
        return np.minimum(k, size - origin) - np.maximum(0, -origin)

    ch = per_axis(h, g.out_h, g.sh, g.kh, g.pad_top)
    cw = per_axis(w, g.out_w, g.sw, g.kw, g.pad_left)
    return (ch[:, None] * cw[None, :])[:, :, None].astype(np.int64)


def prepare_avg_pool_backward(op: Op, inputs: Inputs, outputs: Outputs) -> PoolBwdParams:
    check_arity(op, inputs, outputs, (1,))
    if not isinstance(op.attrs, Pool2DAttrs):
        raise graph_error(op, "attributes must be Pool2DAttrs")
    a = op.attrs
    x, y = tensor_at(op, inputs, 0), outputs[0]
    check_dtype(op, x, (DType.INT8,), "input")
    if len(x.shape) != 4 or len(y.shape) != 4:
        raise graph_error(op, "AVERAGE_POOL_2D tensors must have rank 4")
    if a.activation is not Activation.NONE:
        raise unsupported(op, f"training through a fused {a.activation.value} of a pool is not supported")
    if a.filter_h * a.filter_w > MAX_WINDOW:
        raise unsupported(op, f"pool window {a.filter_h}x{a.filter_w} too large for an int32 gradient sum")
    _, h, w, _ = x.shape
    geom = window_geometry(
        op, a.padding, (h, w), (a.filter_h, a.filter_w), (a.stride_h, a.stride_w), (1, 1), (y.shape[1], y.shape[2])
    )
    counts = _window_counts(geom, h, w)
    if int(counts.min()) <= 0:
        raise unsupported(op, "a pooling window lies entirely in the padding")
    mu, k = reciprocal_q15(counts)
    return PoolBwdParams(x.shape, y.shape, geom, mu, k)


def pool_input_grad(p: PoolBwdParams, g_y: Grad) -> Grad:
    """``dL/dx`` of a MEAN or AVERAGE_POOL_2D from its output gradient.

    C twin: tt_mean_bwd_s16 / tt_avgpool_bwd_s16 in firmware_templates/runtime/src/tt_pool_bwd.c."""
    gp = rounding_divide_by_pot(g_y.g.astype(np.int64).reshape(p.keep_shape) * p.mu, Q15_BITS)
    g = p.geom
    if g is None:
        return normalize(np.broadcast_to(gp, p.in_shape), g_y.e - p.k)
    _, h, w, c = p.in_shape
    acc = np.zeros((g.pad_top + h + g.pad_bottom, g.pad_left + w + g.pad_right, c), dtype=np.int64)
    g3 = gp.reshape(g.out_h, g.out_w, c)
    for ky in range(g.kh):
        for kx in range(g.kw):
            acc[ky : ky + (g.out_h - 1) * g.sh + 1 : g.sh, kx : kx + (g.out_w - 1) * g.sw + 1 : g.sw] += g3
    inner = acc[g.pad_top : g.pad_top + h, g.pad_left : g.pad_left + w]
    return normalize(inner.reshape(p.in_shape), g_y.e - p.k)
