"""CONV_2D and DEPTHWISE_CONV_2D, bit-exact with TFLite Micro's reference kernels.

int8 path (``ConvPerChannel`` / ``DepthwiseConvPerChannel``): TFLite Micro accumulates
``Σ w·(x − zp_in)`` over the taps inside the image in int32, adds the int32 bias and
requantizes per output channel. Here:

* The input is padded with ``zp_in`` (so padded taps contribute ``w·0``) and the zero
  point is folded into the bias: ``Σ w·(x − zp) = Σ w·x − zp·Σ w``, where ``Σ w`` runs
  over every tap of the filter. ``bias_eff = bias − zp·Σ w`` is precomputed per channel.
* ``Σ w·x`` is computed with a float BLAS matmul (im2col; 1×1 convolutions are a plain
  reshape) or, for depthwise, a sum of ``kh·kw`` shifted strided views. **Exactness:**
  every product ``w·x`` is an integer with ``|w·x| ≤ 128·128``, and every partial sum,
  in whatever order BLAS adds, is bounded by ``B_c = 128·Σ_k |w[c, k]|``. Integers of
  magnitude below 2^24 (float32) or 2^53 (float64) are exact, and so are sums of such
  integers whose result stays below that bound. ``prepare`` computes ``max_c B_c`` from
  the actual weights and picks float32 when it is below 2^24, float64 otherwise
  (always below 2^53 for any real filter). The float result is therefore the exact
  integer accumulator, converted to int64 for the fixed-point requantization.
* int32 wrap-around of the C accumulator is reproduced whenever ``B_c + |bias_eff|``
  could exceed int32 (see :mod:`core_requant`).
* The filter zero point is ignored, as TFLite Micro's int8 kernels do.
* Speed: the work is split in blocks of about ``BLOCK`` output values (matmul tiles of
  at most 2^18 multiply-adds, see :func:`tiled_matmul`), so that the float accumulators
  and the int64 requantization scratch stay in cache. Tiling cannot change the result:
  every partial sum is exact.

float32 path (``reference_ops::Conv`` / ``DepthwiseConv``): the C code adds the products
one tap at a time into a float ``total`` (order: filter row, filter column, input
channel), then adds the bias and clamps. The same sequence of float32 roundings is
reproduced with one vectorised multiply-add per tap (numpy float32 ``a*b`` then ``+`` is
the same IEEE operation sequence as the C code without FMA contraction). Taps outside
the image read the padded value 0.0, which adds ``±0`` — a no-op on a total that starts
at +0.0 and can never become −0.0 by rounding to nearest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Conv2DAttrs, DepthwiseConv2DAttrs, Op, Padding
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.fixedpoint import quantize_multipliers
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    check_arity,
    check_dtype,
    check_rank,
    clamp_float,
    const_data,
    float_activation_range,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_requant import Requantizer, make_requantizer

F32_EXACT = 2**24
BLOCK = 1 << 15  # output values per block (keeps the scratch arrays in cache)
MATMUL_MNK = 1 << 18  # OpenBLAS runs a gemm single-threaded up to this m·n·k
MIN_ROWS = 16
F64_EXACT = 2**53


@dataclass(frozen=True)
class Geometry:
    """Spatial geometry of a 2-D window op (TFLite's ``ComputePaddingHeightWidth``)."""

    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pad_top: int
    pad_left: int
    pad_bottom: int
    pad_right: int
    out_h: int
    out_w: int


def out_size(padding: Padding, size: int, k: int, stride: int, dilation: int) -> int:
    eff = (k - 1) * dilation + 1
    if padding is Padding.SAME:
        return (size + stride - 1) // stride
    v = size + stride - eff
    return v // stride if v >= 0 else -1


MAX_WINDOW_SPAN = 1 << 16  # dilated kernel extent (rows or columns) a window may span


def window_geometry(
    op: Op,
    padding: Padding,
    in_hw: tuple[int, int],
    k_hw: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> Geometry:
    """Validates the output size against TFLite's formula and returns the padding."""
    for name, v in (("stride", stride), ("dilation", dilation), ("filter size", k_hw)):
        if min(v) <= 0:
            raise graph_error(op, f"{name} must be positive, got {list(v)}")
    pads: list[tuple[int, int]] = []
    for size, k, s, d, o in zip(in_hw, k_hw, stride, dilation, out_hw, strict=True):
        expect = out_size(padding, size, k, s, d)
        if expect != o or o <= 0:
            raise graph_error(
                op,
                f"output spatial size {list(out_hw)} does not match input {list(in_hw)} with {padding.value} padding",
            )
        eff = (k - 1) * d + 1
        if eff > MAX_WINDOW_SPAN:
            # The padded input would hold more than 2^16 rows or columns (a corrupt dilation).
            raise unsupported(op, f"the dilated window spans {eff} positions, above the supported {MAX_WINDOW_SPAN}")
        total = max((o - 1) * s + eff - size, 0)
        before = total // 2
        needed = (o - 1) * s + eff  # rows read from the padded input
        pads.append((before, max(needed - size - before, 0)))
    return Geometry(
        kh=k_hw[0],
        kw=k_hw[1],
        sh=stride[0],
        sw=stride[1],
        dh=dilation[0],
        dw=dilation[1],
        pad_top=pads[0][0],
        pad_bottom=pads[0][1],
        pad_left=pads[1][0],
        pad_right=pads[1][1],
        out_h=out_hw[0],
        out_w=out_hw[1],
    )


def pad_input(x: np.ndarray, g: Geometry, value: float | int | np.floating) -> np.ndarray:
    if g.pad_top == g.pad_bottom == g.pad_left == g.pad_right == 0:
        return x
    return np.pad(
        x,
        ((0, 0), (g.pad_top, g.pad_bottom), (g.pad_left, g.pad_right), (0, 0)),
        mode="constant",
        constant_values=value,
    )


def tap_view(xp: np.ndarray, g: Geometry, ky: int, kx: int) -> np.ndarray:
    """The (N, out_h, out_w, C) strided view of padded input ``xp`` read by tap (ky, kx)."""
    y0 = ky * g.dh
    x0 = kx * g.dw
    return xp[:, y0 : y0 + (g.out_h - 1) * g.sh + 1 : g.sh, x0 : x0 + (g.out_w - 1) * g.sw + 1 : g.sw, :]


def im2col(xp: np.ndarray, g: Geometry, y0: int = 0, y1: int = -1) -> np.ndarray:
    """Patches of output rows ``y0:y1`` of padded input ``xp``: (N·rows·out_w, kh·kw·C),
    in (ky, kx, c) order (a view when the convolution is 1×1 with stride 1)."""
    y1 = g.out_h if y1 < 0 else y1
    n, _, _, c = xp.shape
    rows = y1 - y0
    base = xp[:, y0 * g.sh :]
    if g.kh == g.kw == 1:
        v = base[:, : (rows - 1) * g.sh + 1 : g.sh, : (g.out_w - 1) * g.sw + 1 : g.sw, :]
        return v.reshape(n * rows * g.out_w, c)
    s0, s1, s2, s3 = base.strides
    view = np.lib.stride_tricks.as_strided(
        base,
        shape=(n, rows, g.out_w, g.kh, g.kw, c),
        strides=(s0, s1 * g.sh, s2 * g.sw, s1 * g.dh, s2 * g.dw, s3),
        writeable=False,
    )
    return view.reshape(n * rows * g.out_w, g.kh * g.kw * c)


def channel_qparams(op: Op, filt: Tensor, channels: int) -> tuple[float, ...]:
    """Filter scales broadcast to ``channels`` (TFLite: one scale, or one per channel)."""
    q = filt.quant
    if q is None:
        raise unsupported(op, f"filter {filt.name!r} has no quantization parameters")
    if len(q.scale) == 1:
        return (float(q.scale[0]),) * channels
    if len(q.scale) != channels:
        raise graph_error(op, f"filter {filt.name!r} has {len(q.scale)} scales for {channels} output channels")
    if q.axis is None or not (0 <= q.axis < len(filt.shape)) or filt.shape[q.axis] != channels:
        raise graph_error(op, f"filter {filt.name!r} is quantized along an axis that is not the output channels")
    return tuple(float(s) for s in q.scale)


def conv_requantizer(
    op: Op,
    inp: Tensor,
    filt: Tensor,
    bias: Tensor | None,
    out: Tensor,
    activation_lo_hi: tuple[int, int],
    channels: int,
    w_sum: np.ndarray,
    acc_bound: int,
) -> Requantizer:
    """Per-channel requantizer with the input zero point folded into the bias."""
    in_scale, in_zp = per_tensor_qparams(op, inp, "input")
    out_scale, out_zp = per_tensor_qparams(op, out, "output")
    f_scales = channel_qparams(op, filt, channels)
    mults, shifts = quantize_multipliers(in_scale * np.asarray(f_scales, np.float64) / out_scale)
    b = np.zeros(channels, np.int64)
    if bias is not None:
        check_dtype(op, bias, (DType.INT32,), "bias")
        bd = const_data(op, bias, "bias")
        if bd.size != channels:
            raise graph_error(op, f"bias {bias.name!r} has {bd.size} values for {channels} output channels")
        b = bd.reshape(-1).astype(np.int64)
    b_eff = b - in_zp * np.asarray(w_sum, np.int64)
    lo, hi = activation_lo_hi
    return make_requantizer(mults, shifts, out_zp, lo, hi, acc_bound, b_eff)


def check_conv_dtypes(op: Op, inp: Tensor, filt: Tensor, bias: Tensor | None, out: Tensor) -> bool:
    """Returns True for the int8 path, False for float32."""
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise unsupported(op, f"output type {out.dtype.value} differs from input type {inp.dtype.value}")
    if inp.dtype is DType.FLOAT32:
        check_dtype(op, filt, (DType.FLOAT32,), "filter")
        if bias is not None:
            check_dtype(op, bias, (DType.FLOAT32,), "bias")
        return False
    check_dtype(op, filt, (DType.INT8,), "filter")
    _, zp = per_tensor_qparams(op, inp, "input")
    if not INT8_MIN <= zp <= INT8_MAX:
        raise unsupported(op, f"input zero point {zp} outside the int8 range")
    return True


def float_bias(op: Op, bias: Tensor | None, channels: int) -> np.ndarray | None:
    if bias is None:
        return None
    bd = const_data(op, bias, "bias")
    if bd.size != channels:
        raise graph_error(op, f"bias {bias.name!r} has {bd.size} values for {channels} output channels")
    return bd.reshape(-1).astype(np.float32)


# ----------------------------------------------------------------------------- CONV_2D


@dataclass(frozen=True, eq=False)
class ConvParams:
    geom: Geometry
    is_int8: bool
    groups: int
    w_t: tuple[np.ndarray, ...]  # per group: (kh·kw·cin_g, cout_g) in the matmul dtype
    pad_value: int
    requant: Requantizer | None
    f_bias: np.ndarray | None
    f_lo: np.float32
    f_hi: np.float32
    out_c: int


def _conv_tensors(
    op: Op, inputs: Sequence[Tensor | None], outputs: Sequence[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, bool]:
    """Validated (input, filter, output, bias, is_int8) of a CONV_2D / DEPTHWISE_CONV_2D."""
    check_arity(op, inputs, outputs, (2, 3), optional=(2,))
    inp, filt, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    bias = inputs[2] if len(inputs) == 3 else None
    for t, role in ((inp, "input"), (filt, "filter"), (out, "output")):
        check_rank(op, t, (4,), role)
    return inp, filt, out, bias, check_conv_dtypes(op, inp, filt, bias, out)


def prepare_conv(op: Op, inputs: Sequence[Tensor | None], outputs: Sequence[Tensor]) -> ConvParams:
    if not isinstance(op.attrs, Conv2DAttrs):
        raise graph_error(op, "attributes must be Conv2DAttrs")
    a = op.attrs
    inp, filt, out, bias, is_int8 = _conv_tensors(op, inputs, outputs)
    n, h, w, cin = inp.shape
    cout, kh, kw, fcin = filt.shape
    if out.shape[0] != n or out.shape[3] != cout:
        raise graph_error(op, f"output shape {list(out.shape)} does not match input {list(inp.shape)} / filter")
    if fcin <= 0 or cin % fcin != 0:
        raise graph_error(op, f"input depth {cin} is not a multiple of the filter depth {fcin}")
    groups = cin // fcin
    if cout % groups != 0:
        raise graph_error(op, f"{cout} output channels cannot be split in {groups} groups")
    geom = window_geometry(
        op,
        a.padding,
        (h, w),
        (kh, kw),
        (a.stride_h, a.stride_w),
        (a.dilation_h, a.dilation_w),
        (out.shape[1], out.shape[2]),
    )
    wd = const_data(op, filt, "filter")
    cg = cout // groups
    if is_int8:
        w64 = wd.astype(np.int64).reshape(cout, kh * kw * fcin)
        bound = int(np.abs(w64).sum(axis=1).max(initial=0)) * 128
        mm = np.float32 if bound < F32_EXACT else np.float64
        if bound >= F64_EXACT:  # pragma: no cover - needs > 2^38 taps
            raise unsupported(op, "accumulation depth too large for an exact simulation")
        w_t = tuple(np.ascontiguousarray(w64[g * cg : (g + 1) * cg].T.astype(mm)) for g in range(groups))
        out_scale, out_zp = per_tensor_qparams(op, out, "output")
        act = quantized_activation_range(op, a.activation, out_scale, out_zp)
        rq = conv_requantizer(op, inp, filt, bias, out, act, cout, w64.sum(axis=1), bound)
        _, in_zp = per_tensor_qparams(op, inp, "input")
        lo, hi = float_activation_range(op, a.activation)
        return ConvParams(geom, True, groups, w_t, in_zp, rq, None, lo, hi, cout)
    wf = wd.astype(np.float32).reshape(cout, kh * kw * fcin)
    w_t = tuple(np.ascontiguousarray(wf[g * cg : (g + 1) * cg].T) for g in range(groups))
    lo, hi = float_activation_range(op, a.activation)
    return ConvParams(geom, False, groups, w_t, 0, None, float_bias(op, bias, cout), lo, hi, cout)


def _group_patches(p: ConvParams, patches: np.ndarray, g: int) -> np.ndarray:
    if p.groups == 1:
        return patches
    k_taps = p.geom.kh * p.geom.kw
    m = patches.shape[0]
    cin_g = p.w_t[0].shape[0] // k_taps
    return patches.reshape(m, k_taps, -1)[:, :, g * cin_g : (g + 1) * cin_g].reshape(m, k_taps * cin_g)


def _position_blocks(n: int, out_h: int, out_w: int, positions: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, y0, y1) blocks of about ``positions`` output positions."""
    per_sample = out_h * out_w
    if per_sample <= positions:
        nb = max(1, positions // max(per_sample, 1))
        return [(i, min(i + nb, n), 0, out_h) for i in range(0, n, nb)]
    rb = max(1, positions // max(out_w, 1))
    return [(i, i + 1, y, min(y + rb, out_h)) for i in range(n) for y in range(0, out_h, rb)]


def tiled_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in tiles of at most ``MATMUL_MNK`` multiply-adds.

    OpenBLAS only spawns threads above m·n·k = 2^18; tiles below that run single-threaded
    and cache-resident, which is faster here than threaded calls (thread hand-offs are
    expensive on a busy 2-core machine) and keeps the simulator's speed independent of
    the BLAS thread setting. Results are exact whatever the tiling (integer sums).
    """
    m, k = a.shape
    n = b.shape[1]
    if m * k * n <= MATMUL_MNK or k * MIN_ROWS > MATMUL_MNK:
        return a @ b
    cols = n if k * n * MIN_ROWS <= MATMUL_MNK else max(1, MATMUL_MNK // (k * MIN_ROWS))
    rows = max(MIN_ROWS, MATMUL_MNK // (k * cols))
    out = np.empty((m, n), dtype=np.result_type(a, b))
    for c0 in range(0, n, cols):
        bc = b if cols >= n else np.ascontiguousarray(b[:, c0 : c0 + cols])
        for r0 in range(0, m, rows):
            out[r0 : r0 + rows, c0 : c0 + cols] = a[r0 : r0 + rows] @ bc
    return out


def run_conv(p: ConvParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_conv_s8 in firmware_templates/runtime/src/tt_conv.c (int8 path)."""
    x = args[0]
    assert x is not None
    n = x.shape[0]
    g = p.geom
    if p.is_int8 and p.groups == 1:
        assert p.requant is not None
        w_t = p.w_t[0]
        xp = pad_input(x, g, p.pad_value).astype(w_t.dtype)
        out = np.empty((n, g.out_h, g.out_w, p.out_c), dtype=np.int8)
        for n0, n1, y0, y1 in _position_blocks(n, g.out_h, g.out_w, max(BLOCK // p.out_c, MIN_ROWS)):
            acc = tiled_matmul(im2col(xp[n0:n1], g, y0, y1), w_t)
            out[n0:n1, y0:y1] = p.requant.apply(acc).reshape(n1 - n0, y1 - y0, g.out_w, p.out_c)
        return (out,)
    if p.is_int8:
        mm = p.w_t[0].dtype
        xp = pad_input(x, g, p.pad_value).astype(mm)
        patches = im2col(xp, g)
        acc = np.concatenate([tiled_matmul(_group_patches(p, patches, i), p.w_t[i]) for i in range(p.groups)], axis=1)
        assert p.requant is not None
        y = p.requant.apply(acc)
        return (y.reshape(n, g.out_h, g.out_w, p.out_c),)
    xp = pad_input(x.astype(np.float32, copy=False), g, 0.0)
    patches = im2col(xp, g)
    outs = []
    for i in range(p.groups):
        pg = _group_patches(p, patches, i)
        wt = p.w_t[i]
        total = np.zeros((pg.shape[0], wt.shape[1]), dtype=np.float32)
        for k in range(wt.shape[0]):
            total += pg[:, k : k + 1] * wt[k]
        outs.append(total)
    total = outs[0] if p.groups == 1 else np.concatenate(outs, axis=1)
    total += p.f_bias if p.f_bias is not None else np.float32(0.0)
    total = clamp_float(total, p.f_lo, p.f_hi)
    return (total.reshape(n, g.out_h, g.out_w, p.out_c),)


# --------------------------------------------------------------------- DEPTHWISE_CONV_2D


@dataclass(frozen=True, eq=False)
class DepthwiseParams:
    geom: Geometry
    is_int8: bool
    mult: int
    taps: np.ndarray  # (kh, kw, C·M) in the accumulation dtype
    pad_value: int
    requant: Requantizer | None
    f_bias: np.ndarray | None
    f_lo: np.float32
    f_hi: np.float32


def prepare_depthwise(op: Op, inputs: Sequence[Tensor | None], outputs: Sequence[Tensor]) -> DepthwiseParams:
    if not isinstance(op.attrs, DepthwiseConv2DAttrs):
        raise graph_error(op, "attributes must be DepthwiseConv2DAttrs")
    a = op.attrs
    inp, filt, out, bias, is_int8 = _conv_tensors(op, inputs, outputs)
    n, h, w, cin = inp.shape
    one, kh, kw, cout = filt.shape
    if one != 1:
        raise graph_error(op, f"filter {filt.name!r} must have shape [1, kh, kw, C·M], has {list(filt.shape)}")
    if out.shape[0] != n or out.shape[3] != cout:
        raise graph_error(op, f"output shape {list(out.shape)} does not match input {list(inp.shape)} / filter")
    if cin <= 0 or cout % cin != 0:
        raise graph_error(op, f"{cout} output channels is not a multiple of the input depth {cin}")
    mult = cout // cin
    if a.depth_multiplier != mult:
        # TFLite Micro derives the multiplier from the shapes; a contradicting attribute is a corrupt model.
        raise graph_error(op, f"depth_multiplier {a.depth_multiplier} contradicts the shapes (expected {mult})")
    geom = window_geometry(
        op,
        a.padding,
        (h, w),
        (kh, kw),
        (a.stride_h, a.stride_w),
        (a.dilation_h, a.dilation_w),
        (out.shape[1], out.shape[2]),
    )
    wd = const_data(op, filt, "filter").reshape(kh, kw, cout)
    if is_int8:
        w64 = wd.astype(np.int64)
        bound = int(np.abs(w64).sum(axis=(0, 1)).max(initial=0)) * 128
        acc_t = np.float32 if bound < F32_EXACT else np.float64
        out_scale, out_zp = per_tensor_qparams(op, out, "output")
        act = quantized_activation_range(op, a.activation, out_scale, out_zp)
        rq = conv_requantizer(op, inp, filt, bias, out, act, cout, w64.sum(axis=(0, 1)), bound)
        _, in_zp = per_tensor_qparams(op, inp, "input")
        lo, hi = float_activation_range(op, a.activation)
        return DepthwiseParams(geom, True, mult, w64.astype(acc_t), in_zp, rq, None, lo, hi)
    lo, hi = float_activation_range(op, a.activation)
    return DepthwiseParams(geom, False, mult, wd.astype(np.float32), 0, None, float_bias(op, bias, cout), lo, hi)


def _blocks(n: int, rows: int, row_size: int) -> list[tuple[int, int, int, int]]:
    """(n0, n1, y0, y1) blocks of about ``BLOCK`` output values (whole samples when small)."""
    per_sample = rows * row_size
    if per_sample <= BLOCK:
        nb = max(1, BLOCK // max(per_sample, 1))
        return [(i, min(i + nb, n), 0, rows) for i in range(0, n, nb)]
    rb = max(1, BLOCK // max(row_size, 1))
    return [(i, i + 1, y, min(y + rb, rows)) for i in range(n) for y in range(0, rows, rb)]


def run_depthwise(p: DepthwiseParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_depthwise_conv_s8 in firmware_templates/runtime/src/tt_conv.c (int8 path)."""
    x = args[0]
    assert x is not None
    g = p.geom
    acc_t = p.taps.dtype
    xp = pad_input(x, g, p.pad_value if p.is_int8 else 0.0).astype(acc_t, copy=False)
    if p.mult > 1:
        xp = np.repeat(xp, p.mult, axis=3)
    n, c = xp.shape[0], xp.shape[3]
    out = np.empty((n, g.out_h, g.out_w, c), dtype=np.int8 if p.is_int8 else np.float32)
    span_w = (g.out_w - 1) * g.sw + 1
    for n0, n1, y0, y1 in _blocks(n, g.out_h, g.out_w * c):
        total = np.empty((n1 - n0, y1 - y0, g.out_w, c), dtype=acc_t)
        tmp = np.empty_like(total)
        first = True
        for ky in range(g.kh):
            r0 = y0 * g.sh + ky * g.dh
            rows = xp[n0:n1, r0 : r0 + (y1 - y0 - 1) * g.sh + 1 : g.sh]
            for kx in range(g.kw):
                v = rows[:, :, kx * g.dw : kx * g.dw + span_w : g.sw, :]
                if first:
                    np.multiply(v, p.taps[ky, kx], out=total)
                    if not p.is_int8:
                        # C starts from +0.0: 0.0 + x turns a -0.0 product into +0.0.
                        total += acc_t.type(0.0)
                    first = False
                else:
                    np.multiply(v, p.taps[ky, kx], out=tmp)
                    total += tmp
        if p.is_int8:
            assert p.requant is not None
            out[n0:n1, y0:y1] = p.requant.apply(total)
        else:
            total += p.f_bias if p.f_bias is not None else np.float32(0.0)
            out[n0:n1, y0:y1] = clamp_float(total, p.f_lo, p.f_hi)
    return (out,)


CONV_2D = KernelSpec(prepare=prepare_conv, run=run_conv)
DEPTHWISE_CONV_2D = KernelSpec(prepare=prepare_depthwise, run=run_depthwise)
