"""Row-streamed fused backward of "1×1 expansion CONV_2D E → DEPTHWISE_CONV_2D D".

In the unfused backward, D's input gradient (= the gradient of E's output) exists as a
whole int16 tensor between D's step and E's step. Here it never does: D's input-gradient
int32 sums are recomputed row by row (a depthwise input row depends on at most
``⌈kh/sh⌉`` rows of D's output gradient, which exists whole), in up to three passes:

1. the global ``max |acc_D|`` over all rows; that fixes D's normalization shift ``r_D``
   and exponent exactly as :func:`~tinytrain.train.kernels.gradient.normalize` fixes them;
2. per row: ``acc_D`` again, normalized with ``r_D``, masked with E's clamp mask (this is
   E's masked output gradient row ``g_E``); E's bias gradient (int64 per channel) and
   weight gradient (int64 per weight) accumulate; when E's input gradient is needed, its
   int32 sums for the row (a 1×1 convolution is row-local) and their global maximum;
3. (only for E's input gradient) per row: everything again, then E's input-gradient row
   normalized with the global shift ``r_E``, written to the output.

Same global maxima ⇒ same shifts and exponents ⇒ the bytes of running D's and then E's
unfused :func:`~tinytrain.train.grad_rules.run_backward` (``docs/numerics.md``,
"Training"). D's own bias/weight gradients only read D's masked output gradient and
D's saved input channels: they are computed by the unfused kernels.

The numpy code is the C kernel's twin: an explicit loop over rows, vectorised inside a
row; products are summed exactly (int64 or float64 with every partial sum below 2^53).

Scratch (bytes), with D's input (= E's output) ``H × W × C``, E's input ``Cin`` channels,
E's trained weight channels ``n_E`` and kernel ``kh_E × kw_E``::

    scratch_bytes = 4·W·C                      one row of D's input-gradient int32 sums
                                               (E's normalized, masked int16 row overwrites it)
                  + 4·W·Cin    if E's input gradient is needed (one row of its int32 sums)
                  + 8·C        if E's bias trains (its int64 bias gradient)
                  + 8·C·kh_E·kw_E·n_E  if E's weights train (its whole int64 weight gradient:
                                       accumulated over rows, not one output channel at a time)

D's parameter gradients keep their unfused buffers. The updates (D's, then E's, in that
order as unfused) must run after the last pass: passes 2 and 3 read the old ``w_D`` and ``w_E``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.sim.fixedpoint import rounding_divide_by_pot, wrap_int32
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.train.grad_rules import BackwardParams, BackwardResult, Saved
from tinytrain.train.kernels import linear_bwd
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, bit_length, max_abs
from tinytrain.train.kernels.linear_bwd import Q15_BITS, LinearBwdParams
from tinytrain.train.kernels.mask import apply_mask, mask_nbytes

ACC_BYTES = 4  # int32 sum
PARAM_GRAD_BYTES = 8  # int64 bias / weight gradient


@dataclass(frozen=True, eq=False)
class FusedExpandDwParams:
    """Compile-time params of the fused backward of E (expansion) → D (depthwise)."""

    e: BackwardParams
    d: BackwardParams
    height: int  # H, W, C: D's input = E's output
    width: int
    channels: int
    e_input_grad: bool  # E's input gradient is computed (pass 3 runs)
    scratch_bytes: int

    @property
    def kd(self) -> LinearBwdParams:
        return linear_kernel(self.d)

    @property
    def ke(self) -> LinearBwdParams:
        return linear_kernel(self.e)


def linear_kernel(bp: BackwardParams) -> LinearBwdParams:
    """The kernel params of a convolution's backward (:class:`LinearBwdParams`)."""
    k: LinearBwdParams = bp.kernel
    return k


def is_unit_pointwise(g: Geometry) -> bool:
    """Whether ``g`` is a 1×1, stride-1, unpadded convolution's geometry."""
    return (g.kh, g.kw, g.sh, g.sw, g.pad_top, g.pad_left, g.pad_bottom, g.pad_right) == (1, 1, 1, 1, 0, 0, 0, 0)


def own_param_grads(bp: BackwardParams, g_y: Grad, saved: Saved) -> tuple[Grad, BackwardResult]:
    """The unfused parameter gradients of ``bp`` (a convolution) from its whole output gradient
    ``g_y``: (``g_y`` masked by the saved clamp mask, the result without input gradients)."""
    k = linear_kernel(bp)
    g_m = apply_mask(g_y, saved.mask) if bp.clamp is not None and saved.mask is not None else g_y
    wg = None
    if bp.request.weight_channels:
        assert saved.x_sub is not None
        wg = linear_bwd.weight_grad(k, g_m, saved.x_sub, bp.request.weight_channels)
    bg = linear_bwd.bias_grad(k, g_m) if bp.request.bias else None
    return g_m, BackwardResult({}, wg, bg, g_y.e)


def fused_scratch_bytes(
    width: int,
    channels: int,
    e_in_channels: int,
    e_input_grad: bool,
    e_bias: bool,
    e_weight_taps: int,
    e_weight_channels: int,
) -> int:
    """The scratch formula of the module docstring (``e_weight_taps = kh_E·kw_E``).

    C twin: tt_fused_ed_scratch_bytes in firmware_templates/runtime/src/tt_fused_bwd.c.
    """
    n = ACC_BYTES * width * channels
    if e_input_grad:
        n += ACC_BYTES * width * e_in_channels
    if e_bias:
        n += PARAM_GRAD_BYTES * channels
    n += PARAM_GRAD_BYTES * channels * e_weight_taps * e_weight_channels
    return n


def prepare_fused_expand_dw_backward(e: BackwardParams, d: BackwardParams) -> FusedExpandDwParams:
    """Validates the pair (E = the CONV_2D whose output is D's input, D = the
    DEPTHWISE_CONV_2D, both as :func:`~tinytrain.train.grad_rules.prepare_backward` made
    them, possibly with a PAD folded into D's geometry) and returns the fused params.
    That D's input tensor is E's output and has no other reader is the caller's check."""
    if d.op.kind is not OpKind.DEPTHWISE_CONV_2D:
        raise UsageError(f"{d.op.describe()}: the fused expansion backward needs a DEPTHWISE_CONV_2D")
    if e.op.kind is not OpKind.CONV_2D:
        raise UsageError(f"{e.op.describe()}: the fused expansion backward needs a CONV_2D producer")
    if 0 not in d.request.input_grads:
        raise UsageError(f"{d.op.describe()}: its input gradient is not needed, there is nothing to fuse")
    kd: LinearBwdParams = d.kernel
    ke: LinearBwdParams = e.kernel
    if kd.geom is None or ke.geom is None:
        raise UsageError(f"{d.op.describe()}: convolution backward params without a geometry")
    if tuple(kd.in_shape) != tuple(ke.out_shape) or len(kd.in_shape) != 4 or kd.in_shape[0] != 1:
        raise UsageError(
            f"{d.op.describe()}: input {list(kd.in_shape)} is not the output {list(ke.out_shape)} of {e.op.describe()}"
        )
    e_in = 0 in e.request.input_grads
    if not e_in and not e.request.bias and not e.request.weight_channels:
        raise UsageError(f"{e.op.describe()}: its backward computes nothing")
    g = ke.geom
    if e_in and not is_unit_pointwise(g):
        raise UsageError(f"{e.op.describe()}: a row-streamed input gradient needs a 1×1, stride-1, unpadded conv")
    _, h, w, c = kd.in_shape
    scratch = fused_scratch_bytes(
        w, c, ke.in_channels, e_in, e.request.bias, g.kh * g.kw, len(e.request.weight_channels)
    )
    return FusedExpandDwParams(e, d, h, w, c, e_in, scratch)


# ------------------------------------------------------------------ row helpers


def col_range(g: Geometry, k: int, pad: int, stride: int, out_n: int, in_n: int) -> tuple[int, int, int]:
    """Output positions ``[lo, hi)`` whose tap ``k`` reads an input position inside
    ``[0, in_n)``, and the first such input position (``lo·stride + k − pad``)."""
    lo = max(0, -((k - pad) // stride))  # ⌈(pad − k) / stride⌉, ≥ 0
    hi = min(out_n, (in_n - 1 + pad - k) // stride + 1)
    return lo, hi, lo * stride + k - pad


def mask_row(packed: np.ndarray | None, start: int, n: int) -> np.ndarray | None:
    """Bits ``[start, start + n)`` of a packed row-major mask (C: read bit by bit)."""
    if packed is None:
        return None
    b0, b1 = start // 8, (start + n + 7) // 8
    bits = np.unpackbits(packed.reshape(-1)[b0:b1], bitorder="little")
    return bits[start - 8 * b0 : start - 8 * b0 + n].astype(bool)


def norm_row(acc: np.ndarray, r: int) -> np.ndarray:
    """One row of ``normalize`` with the tensor's global shift ``r`` (int16)."""
    if r < 0:
        a = acc << np.int64(-r)
    elif r > 0:
        a = rounding_divide_by_pot(acc, r)
    else:
        a = acc
    return a.astype(np.int16)


def grad_shift(m: int) -> int:
    """``normalize``'s shift for a global ``max|acc| = m`` (0 for an all-zero tensor)."""
    return bit_length(m) - GRAD_BITS if m else 0


@dataclass(frozen=True)
class DwReads:
    """How one sweep of :meth:`DwRows.acc_d_row` over D's input rows reads the rows of
    D's output gradient: ``reads`` row reads in all (the ``(iy, ky)`` pairs that hit an
    output row), at most ``window`` distinct rows for one input row, the last row read
    ``last`` (−1: none). Rows are read in non-decreasing windows as ``iy`` grows."""

    reads: int
    window: int
    last: int


def dw_reads(g: Geometry, in_h: int) -> DwReads:
    reads, window, last = 0, 0, -1
    for iy in range(in_h):
        ts = [iy + g.pad_top - ky for ky in range(g.kh)]
        hit = [t // g.sh for t in ts if t >= 0 and t % g.sh == 0 and t // g.sh < g.out_h]
        reads += len(hit)
        window = max(window, len(hit))
        last = max([last, *hit])
    return DwReads(reads, window, last)


class SweepHooks(Protocol):
    """Called by :func:`stream_expand_backward` around each of its sweeps ``k`` = 1, 2, 3
    over D's input rows (a row source that caches rows restarts there)."""

    def begin(self, k: int) -> None: ...

    def end(self, k: int) -> None: ...


class DwRows:
    """Row access to D's and E's backward state (the C kernel's pointers and loops).
    ``d_row(oy)`` gives row ``oy`` of D's output gradient (int16 ``out_w × C``, before
    D's clamp mask): a row of the whole tensor, or recomputed on demand."""

    def __init__(
        self,
        p: FusedExpandDwParams,
        d_row: Callable[[int], np.ndarray],
        saved_d: Saved,
        saved_e: Saved,
        w_d: np.ndarray,
    ) -> None:
        self.p = p
        kd = p.kd
        gd = kd.geom
        assert gd is not None
        self.gd = gd
        self.d_row = d_row
        self.mask_d = saved_d.mask if p.d.clamp is not None else None
        self.mask_e = saved_e.mask if p.e.clamp is not None else None
        self.w_d = np.asarray(w_d).reshape(gd.kh, gd.kw, p.channels).astype(np.int64)

    def mask_d_row(self, oy: int, row: np.ndarray) -> np.ndarray:
        """Row ``oy`` of D's output gradient (``row``) with D's clamp mask applied (int64 ``out_w × C``)."""
        n = self.gd.out_w * self.p.channels
        r = np.asarray(row).reshape(self.gd.out_w, self.p.channels).astype(np.int64)
        keep = mask_row(self.mask_d, oy * n, n)
        if keep is not None:
            r = np.where(keep.reshape(r.shape), r, 0)
        return r

    def masked_d_row(self, oy: int) -> np.ndarray:
        """Row ``oy`` of D's masked output gradient (int64 ``out_w × C``)."""
        return self.mask_d_row(oy, self.d_row(oy))

    def scaled_d_row(self, oy: int) -> np.ndarray:
        """``g'_D`` of output row ``oy``: masked, times μ, rounded down by ``15 + d``."""
        return rounding_divide_by_pot(self.masked_d_row(oy) * self.p.kd.mu, Q15_BITS + self.p.kd.drop)

    def acc_d_row(self, iy: int) -> np.ndarray:
        """D's input-gradient int32 sums of input row ``iy`` (``W × C``)."""
        p, g = self.p, self.gd
        acc = np.zeros((p.width, p.channels), dtype=np.int64)
        for ky in range(g.kh):
            t = iy + g.pad_top - ky
            if t < 0 or t % g.sh:
                continue
            oy = t // g.sh
            if oy >= g.out_h:
                continue
            gp = self.scaled_d_row(oy)
            for kx in range(g.kw):
                lo, hi, x0 = col_range(g, kx, g.pad_left, g.sw, g.out_w, p.width)
                if hi > lo:
                    acc[x0 : x0 + (hi - lo - 1) * g.sw + 1 : g.sw] += gp[lo:hi] * self.w_d[ky, kx]
        return wrap_int32(acc)

    def e_grad_row(self, iy: int, r_d: int) -> np.ndarray:
        """E's masked output gradient of row ``iy`` (int16 ``W × C``)."""
        p = self.p
        g = norm_row(self.acc_d_row(iy), r_d)
        n = p.width * p.channels
        keep = mask_row(self.mask_e, iy * n, n)
        if keep is not None:
            g = np.where(keep.reshape(g.shape), g, np.int16(0)).astype(np.int16)
        return g


def tap_columns(g: Geometry, oy: int, xs: np.ndarray) -> Iterator[tuple[int, int, int, int, np.ndarray]]:
    """The taps of output row ``oy`` inside the input ``xs`` (``H_in × W_in × ...``): for each,
    ``(ky, kx, lo, hi, cols)`` with the output columns ``[lo, hi)`` (non-empty) and the input
    columns ``cols`` they read (a strided view of ``xs``)."""
    h_in, w_in = xs.shape[0], xs.shape[1]
    for ky in range(g.kh):
        iy = oy * g.sh + ky - g.pad_top
        if not 0 <= iy < h_in:
            continue
        for kx in range(g.kw):
            lo, hi, x0 = col_range(g, kx, g.pad_left, g.sw, g.out_w, w_in)
            if hi > lo:
                yield ky, kx, lo, hi, xs[iy, x0 : x0 + (hi - lo - 1) * g.sw + 1 : g.sw]


def _conv_weight_grad_row(ke: LinearBwdParams, oy: int, g_row: np.ndarray, xs: np.ndarray, acc: np.ndarray) -> None:
    """Adds E's output row ``oy`` to its weight gradient ``acc`` (``cout × kh × kw × n``);
    ``xs``: the saved input channels minus the zero point (``H_in × W_in × n``)."""
    g = ke.geom
    assert g is not None
    gf = g_row.astype(np.float64)
    for ky, kx, lo, hi, cols in tap_columns(g, oy, xs):
        acc[:, ky, kx, :] += (gf[lo:hi].T @ cols.astype(np.float64)).astype(np.int64)


# ------------------------------------------------------------------ run time


def check_fused_inputs(p: FusedExpandDwParams, saved_d: Saved, saved_e: Saved, w_e: np.ndarray | None) -> None:
    """The run-time checks shared by the fused kernels (masks, weights, saved channels)."""
    for bp, s in ((p.d, saved_d), (p.e, saved_e)):
        if bp.clamp is not None and (s.mask is None or s.mask.size != mask_nbytes(int(np.prod(bp.kernel.out_shape)))):
            raise UsageError(f"{bp.op.describe()}: the backward needs the clamp mask saved in the forward pass")
    if p.e_input_grad and w_e is None:
        raise UsageError(f"{p.e.op.describe()}: the input gradient of a linear layer needs its current weights")
    if p.e.request.weight_channels and saved_e.x_sub is None:
        raise UsageError(f"{p.e.op.describe()}: the weight gradient needs the input channels saved in the forward pass")
    if p.d.request.weight_channels and saved_d.x_sub is None:
        raise UsageError(f"{p.d.op.describe()}: the weight gradient needs the input channels saved in the forward pass")


def stream_expand_backward(
    p: FusedExpandDwParams,
    rows: DwRows,
    e_d: int,
    saved_e: Saved,
    w_e: np.ndarray | None,
    hooks: SweepHooks | None = None,
) -> tuple[Grad | None, BackwardResult]:
    """Passes 1–3 of the module docstring: ``(E's input gradient | None, E's result)``
    from D's output-gradient rows (exponent ``e_d``)."""
    kd, ke = p.kd, p.ke
    h = p.height

    # Pass 1: the global maximum of D's input-gradient sums.
    if hooks is not None:
        hooks.begin(1)
    m_d = 0
    for iy in range(h):
        m_d = max(m_d, max_abs(rows.acc_d_row(iy)))
    if hooks is not None:
        hooks.end(1)
    r_d = grad_shift(m_d)
    e_e_out = e_d + kd.k + kd.drop + r_d  # exponent of E's output gradient

    # Pass 2: E's parameter gradients and the maximum of its input-gradient sums.
    cin = ke.in_channels
    w_e1 = None
    if p.e_input_grad:
        assert w_e is not None
        w_e1 = np.asarray(w_e).reshape(ke.out_channels, cin).astype(np.float64)
    bg_e = np.zeros(p.channels, dtype=np.int64) if p.e.request.bias else None
    wg_e = None
    xs = None
    if p.e.request.weight_channels:
        assert saved_e.x_sub is not None and ke.geom is not None
        n = len(p.e.request.weight_channels)
        xs = np.asarray(saved_e.x_sub).reshape(ke.in_shape[1], ke.in_shape[2], n).astype(np.int64) - ke.in_zp
        wg_e = np.zeros((ke.out_channels, ke.geom.kh, ke.geom.kw, n), dtype=np.int64)

    def acc_e_row(g_row: np.ndarray) -> np.ndarray:
        assert w_e1 is not None
        gp = rounding_divide_by_pot(g_row.astype(np.int64) * ke.mu, Q15_BITS + ke.drop)
        return wrap_int32((gp.astype(np.float64) @ w_e1).astype(np.int64))

    m_e = 0
    if hooks is not None:
        hooks.begin(2)
    for iy in range(h):
        g_row = rows.e_grad_row(iy, r_d)
        if bg_e is not None:
            bg_e += g_row.sum(axis=0, dtype=np.int64)
        if wg_e is not None and xs is not None:
            _conv_weight_grad_row(ke, iy, g_row, xs, wg_e)
        if p.e_input_grad:
            m_e = max(m_e, max_abs(acc_e_row(g_row)))
    if hooks is not None:
        hooks.end(2)
    res_e_grads: dict[int, Grad] = {}
    g_in: Grad | None = None

    # Pass 3: E's normalized input gradient, row by row.
    if p.e_input_grad:
        r_e = grad_shift(m_e)
        out = np.empty((h, p.width, cin), dtype=np.int16)
        if hooks is not None:
            hooks.begin(3)
        for iy in range(h):
            out[iy] = norm_row(acc_e_row(rows.e_grad_row(iy, r_d)), r_e)
        if hooks is not None:
            hooks.end(3)
        g_in = Grad(out.reshape(ke.in_shape), e_e_out + ke.k + ke.drop + r_e)
        res_e_grads[0] = g_in
    return g_in, BackwardResult(res_e_grads, wg_e, bg_e, e_e_out)


def run_fused_expand_dw_backward(
    p: FusedExpandDwParams,
    g_d: Grad,
    saved_d: Saved,
    saved_e: Saved,
    w_d: np.ndarray,
    w_e: np.ndarray | None,
) -> tuple[Grad | None, BackwardResult, BackwardResult]:
    """``(E's input gradient | None, D's result, E's result)``, byte-identical to
    ``run_backward(D, g_d, saved_d, w_d)`` followed by ``run_backward(E, <D's input
    gradient>, saved_e, w_e)``. ``g_d`` is D's output gradient *before* D's clamp mask
    (as ``run_backward`` takes it). D's result has no input gradient (it never exists);
    E's result holds E's input gradient under input 0 when requested.

    C twin: tt_fused_ed_bwd_s16 in firmware_templates/runtime/src/tt_fused_bwd.c.
    """
    kd = p.kd
    gd = kd.geom
    assert gd is not None
    if g_d.shape != tuple(kd.out_shape):
        raise UsageError(f"{p.d.op.describe()}: output gradient {list(g_d.shape)} != {list(kd.out_shape)}")
    check_fused_inputs(p, saved_d, saved_e, w_e)

    # D's own parameter gradients: the unfused kernels on D's masked output gradient.
    _, res_d = own_param_grads(p.d, g_d, saved_d)

    g_rows = g_d.g.reshape(gd.out_h, gd.out_w, p.channels)
    rows = DwRows(p, lambda oy: g_rows[oy], saved_d, saved_e, w_d)
    g_in, res_e = stream_expand_backward(p, rows, g_d.e, saved_e, w_e)
    return g_in, res_d, res_e
