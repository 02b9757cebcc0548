"""Backward of the linear layers: CONV_2D, DEPTHWISE_CONV_2D (multiplier 1), FULLY_CONNECTED.

With ``y_real[o] ≈ s_in · s_w[o] · acc[o]`` and the (masked) output gradient ``(g_y, e_y)``
(``docs/numerics.md``, "Linear layers"):

* **input gradient** ``dL/dx[i] = Σ_o s_w[o] · w_q[o, i] · dL/dy[o]``. The per-channel
  scales become Q15 factors ``μ[o] = round(2^15 · s_w[o] / 2^k)`` with
  ``k = ⌈log2 max s_w⌉`` (compile time). ``g'[o] = RoundingDivideByPOT(g_y[o] · μ[o], 15 + d)``
  where ``d`` (the compile-time *bit budget*) drops just enough bits that
  ``fan_out · 128 · 2^(14 − d) < 2^31``: the int32 sum ``acc[i] = Σ w_q[o, i] · g'[o]``
  (transposed convolution / per-channel correlation / ``wᵀ g'``) can never overflow.
  Then ``(g_x, e_x) = normalize(acc, e_y + k + d)``. ``fan_out`` counts the products
  that reach one input element: ``cout·⌈kh/sh⌉·⌈kw/sw⌉`` (conv), ``⌈kh/sh⌉·⌈kw/sw⌉``
  (depthwise), ``cout`` (fully connected).
* **bias gradient** ``B[o] = Σ_pos g_y[pos, o]`` (int64); real gradient ``B · 2^e_y``.
* **weight gradient** for a subset of input channels (depthwise: of channels)
  ``G[o, ky, kx, j] = Σ_pos g_y[pos, o] · (x_q[pos + tap, c_j] − z_x)`` (int64), padded
  taps contributing 0; real gradient ``G · s_in · 2^e_y``. Only the subset channels of
  ``x`` (``x_sub = x[..., channels]``) are read.

Layouts are the IR's: weights OHWI (conv), 1HWC (depthwise), [out, in] (fully
connected); activations NHWC with a batch of 1; a fully connected input is read as
``(rows, in)`` like TFLite does. The weight-gradient slice has the layout of
``w[..., channels]`` (``w[:, channels]`` for fully connected).

Exactness of the numpy arithmetic: the products are summed with float64 matmuls; every
partial sum is an integer below 2^53 in magnitude (input gradient: below 2^31 by the bit
budget; weight gradient: ``|g|·|x − z| < 2^22`` per product, fewer than 2^31 positions),
so the float64 results are the exact integer sums a C loop computes in int32/int64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Conv2DAttrs, DepthwiseConv2DAttrs, FullyConnectedAttrs, Op, OpKind
from tinytrain.sim.fixedpoint import rounding_divide_by_pot, wrap_int32
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import (
    check_arity,
    check_dtype,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    round_half_away,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_conv import Geometry, channel_qparams, im2col, window_geometry
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, normalize

Q15_BITS = 15
ACC_LIMIT = 2**31  # |int32 accumulator| must stay below this
WEIGHT_BOUND = 128  # |w_q| ≤ 128 for any int8 weight


@dataclass(frozen=True, eq=False)
class LinearBwdParams:
    kind: OpKind
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    out_channels: int  # cout (depthwise: C)
    in_channels: int  # cin (depthwise: C)
    geom: Geometry | None  # None for fully connected
    mu: np.ndarray  # int64 [cout], Q15 factors s_w[o] / 2^k
    k: int
    drop: int  # bit budget d: extra right shift of g' so the int32 sum cannot overflow
    in_zp: int
    clamp: tuple[int, int]  # (act_min, act_max) of the int8 output (for the clamp mask)


# ------------------------------------------------------------------ compile time


def q15_scales(w_scales: Sequence[float]) -> tuple[np.ndarray, int]:
    """``(μ, k)``: ``k = ⌈log2 max s_w⌉``, ``μ[o] = round(2^15 · s_w[o] / 2^k)`` (half away)."""
    top = max(float(s) for s in w_scales)
    mant, exp = math.frexp(top)  # top = mant · 2^exp, mant in [0.5, 1)
    k = exp - 1 if mant == 0.5 else exp
    mu = [round_half_away(math.ldexp(float(s), Q15_BITS - k)) for s in w_scales]
    return np.asarray(mu, dtype=np.int64), k


def fan_out(kind: OpKind, geom: Geometry | None, out_channels: int) -> int:
    """Largest number of products ``w · g'`` summed into one input-gradient element."""
    if geom is None:
        return out_channels
    taps = -(-geom.kh // geom.sh) * -(-geom.kw // geom.sw)
    return taps if kind is OpKind.DEPTHWISE_CONV_2D else out_channels * taps


def grad_bit_budget(fan: int) -> int:
    """Bits ``d`` to drop from ``g'`` (``|g'| ≤ 2^(14−d)``) so that ``fan · 128 · |g'| < 2^31``;
    −1 when even one bit is too many."""
    budget = (ACC_LIMIT - 1) // (fan * WEIGHT_BOUND)
    bits = min(GRAD_BITS, budget.bit_length() - 1)
    return GRAD_BITS - bits if bits >= 0 else -1


def make_linear_backward(
    kind: OpKind,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    w_scales: Sequence[float],
    in_zp: int,
    geom: Geometry | None = None,
    clamp: tuple[int, int] = (-128, 127),
) -> LinearBwdParams:
    """Backward params from shapes and quantization (any explicit, possibly asymmetric,
    padding through ``geom``). ``prepare_linear_backward`` derives them from an op."""
    if kind is OpKind.FULLY_CONNECTED:
        cout, cin = w_shape
    elif kind is OpKind.CONV_2D:
        cout, cin = w_shape[0], w_shape[3]
    else:
        cout = cin = w_shape[3]
    if geom is None and kind is not OpKind.FULLY_CONNECTED:
        raise UsageError(f"{kind.value} backward needs a geometry")
    if len(w_scales) != cout:
        raise UsageError(f"{len(w_scales)} weight scales for {cout} output channels")
    mu, k = q15_scales(w_scales)
    drop = grad_bit_budget(fan_out(kind, geom, cout))
    if drop < 0:
        raise UsageError(f"{kind.value}: fan-out too large for an int32 input-gradient sum")
    return LinearBwdParams(kind, in_shape, out_shape, w_shape, cout, cin, geom, mu, k, drop, in_zp, clamp)


def prepare_linear_backward(op: Op, inputs: Inputs, outputs: Outputs) -> LinearBwdParams:
    """Validates a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op for training and
    returns its backward params."""
    check_arity(op, inputs, outputs, (2, 3), optional=(2,))
    x, w, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    for t, role in ((x, "input"), (w, "weights"), (y, "output")):
        check_dtype(op, t, (DType.INT8,), role)
    s_in, z_in = per_tensor_qparams(op, x, "input")
    s_out, z_out = per_tensor_qparams(op, y, "output")
    del s_in
    if w.quant is None or any(z != 0 for z in w.quant.zero_point):
        raise unsupported(op, f"weights {w.name!r} must be symmetrically quantized (zero point 0) to be trained")
    geom: Geometry | None = None
    attrs = op.attrs
    if isinstance(attrs, Conv2DAttrs | DepthwiseConv2DAttrs):
        if len(x.shape) != 4 or len(y.shape) != 4 or len(w.shape) != 4:
            raise graph_error(op, "convolution tensors must have rank 4")
        if (attrs.dilation_h, attrs.dilation_w) != (1, 1):
            raise unsupported(op, "training a dilated convolution is not supported")
        if op.kind is OpKind.CONV_2D and w.shape[3] != x.shape[3]:
            raise unsupported(op, "training a grouped convolution is not supported")
        if op.kind is OpKind.DEPTHWISE_CONV_2D and w.shape[3] != x.shape[3]:
            raise unsupported(op, "training a depthwise convolution with a depth multiplier is not supported")
        geom = window_geometry(
            op,
            attrs.padding,
            (x.shape[1], x.shape[2]),
            (w.shape[1], w.shape[2]),
            (attrs.stride_h, attrs.stride_w),
            (1, 1),
            (y.shape[1], y.shape[2]),
        )
    elif not isinstance(attrs, FullyConnectedAttrs):
        raise unsupported(op, "no linear backward for this op")
    elif len(w.shape) != 2 or x.size % w.shape[1] != 0:
        raise graph_error(op, f"weights {list(w.shape)} do not match input {list(x.shape)}")
    cout = w.shape[-1] if op.kind is OpKind.DEPTHWISE_CONV_2D else w.shape[0]
    scales = channel_qparams(op, w, cout)
    clamp = quantized_activation_range(op, attrs.activation, s_out, z_out)
    try:
        return make_linear_backward(op.kind, x.shape, y.shape, w.shape, scales, z_in, geom, clamp)
    except UsageError as err:
        raise unsupported(op, str(err)) from None


# ------------------------------------------------------------------ run time


def _channels(channels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(channels, dtype=np.int64).reshape(-1)
    if c.size and (c.min() < 0 or c.max() >= n or np.unique(c).size != c.size):
        raise UsageError(f"channel subset must hold distinct indices in [0, {n}), got {c.tolist()}")
    return c


def _rows(a: np.ndarray, width: int) -> np.ndarray:
    return a.reshape(-1, width)


def select_input_channels(p: LinearBwdParams, x: np.ndarray, channels: Sequence[int] | np.ndarray) -> np.ndarray:
    """What the forward pass saves for the weight gradient: ``x[..., channels]``
    (fully connected: the columns of ``x`` read as ``(rows, in)``).

    C twin: tt_linear_save_input_s8 in firmware_templates/runtime/src/tt_linear_bwd.c."""
    c = _channels(channels, p.in_channels)
    if p.kind is OpKind.FULLY_CONNECTED:
        return np.ascontiguousarray(_rows(x, p.in_channels)[:, c])
    return np.ascontiguousarray(x[..., c])


def _scaled_grad(p: LinearBwdParams, g_y: Grad) -> np.ndarray:
    """``g' = RoundingDivideByPOT(g_y · μ, 15 + d)``, per output channel (last axis)."""
    return rounding_divide_by_pot(g_y.g.astype(np.int64) * p.mu, Q15_BITS + p.drop)


def _tap(a: np.ndarray, g: Geometry, ky: int, kx: int) -> np.ndarray:
    """The (out_h, out_w, C) strided view of a padded (H, W, C) array under tap (ky, kx)."""
    y0, x0 = ky * g.dh, kx * g.dw
    return a[y0 : y0 + (g.out_h - 1) * g.sh + 1 : g.sh, x0 : x0 + (g.out_w - 1) * g.sw + 1 : g.sw]


def input_grad(p: LinearBwdParams, w_q: np.ndarray, g_y: Grad) -> Grad:
    """``dL/dx`` from the current int8 weights ``w_q`` and the masked output gradient.

    C twin: tt_linear_bwd_input_s16 in firmware_templates/runtime/src/tt_linear_bwd.c."""
    gp = _scaled_grad(p, g_y)
    w = np.asarray(w_q)
    if p.kind is OpKind.FULLY_CONNECTED:
        acc = _rows(gp, p.out_channels).astype(np.float64) @ w.astype(np.float64)
        return normalize(wrap_int32(acc.astype(np.int64)).reshape(p.in_shape), g_y.e + p.k + p.drop)
    g = p.geom
    assert g is not None
    _, h, wd, c = p.in_shape
    hp, wp = g.pad_top + h + g.pad_bottom, g.pad_left + wd + g.pad_right
    acc_p = np.zeros((hp, wp, c), dtype=np.float64 if p.kind is OpKind.CONV_2D else np.int64)
    g2 = gp.reshape(g.out_h, g.out_w, p.out_channels)
    if p.kind is OpKind.CONV_2D:
        g2 = g2.astype(np.float64)
        wf = w.astype(np.float64)
    for ky in range(g.kh):
        for kx in range(g.kw):
            if p.kind is OpKind.CONV_2D:
                _tap(acc_p, g, ky, kx)[...] += g2 @ wf[:, ky, kx, :]
            else:
                _tap(acc_p, g, ky, kx)[...] += g2 * w[0, ky, kx, :].astype(np.int64)
    acc = acc_p[g.pad_top : g.pad_top + h, g.pad_left : g.pad_left + wd].astype(np.int64)
    return normalize(wrap_int32(acc).reshape(p.in_shape), g_y.e + p.k + p.drop)


def bias_grad(p: LinearBwdParams, g_y: Grad) -> np.ndarray:
    """``B[o] = Σ_pos g_y[pos, o]`` (int64, real gradient ``B · 2^e_y``).

    C twin: tt_linear_bwd_bias_s16 in firmware_templates/runtime/src/tt_linear_bwd.c."""
    return _rows(g_y.g, p.out_channels).sum(axis=0, dtype=np.int64)


def weight_grad(p: LinearBwdParams, g_y: Grad, x_sub: np.ndarray, channels: Sequence[int] | np.ndarray) -> np.ndarray:
    """``G`` for the input channels ``channels`` (int64, layout of ``w[..., channels]``;
    real gradient ``G · s_in · 2^e_y``). ``x_sub`` is :func:`select_input_channels`'s.

    C twin: tt_linear_bwd_weight_row_s16 (one row per call) in firmware_templates/runtime/src/tt_linear_bwd.c."""
    c = _channels(channels, p.in_channels)
    n = c.size
    xs = np.asarray(x_sub).astype(np.int64) - p.in_zp
    if p.kind is OpKind.FULLY_CONNECTED:
        g2 = _rows(g_y.g, p.out_channels).astype(np.float64)
        return (g2.T @ xs.reshape(-1, n).astype(np.float64)).astype(np.int64)
    g = p.geom
    assert g is not None
    xp = np.pad(
        xs.reshape(1, *p.in_shape[1:3], n), ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0))
    )
    if p.kind is OpKind.CONV_2D:
        patches = im2col(xp.astype(np.float64), g)
        g2 = g_y.g.reshape(-1, p.out_channels).astype(np.float64)
        return (g2.T @ patches).astype(np.int64).reshape(p.out_channels, g.kh, g.kw, n)
    gs = g_y.g.reshape(g.out_h, g.out_w, p.out_channels)[:, :, c].astype(np.int64)
    out = np.empty((1, g.kh, g.kw, n), dtype=np.int64)
    for ky in range(g.kh):
        for kx in range(g.kw):
            out[0, ky, kx] = (gs * _tap(xp[0], g, ky, kx)).sum(axis=(0, 1))
    return out
