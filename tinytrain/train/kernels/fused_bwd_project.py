"""Row-streamed fused backward of "1×1 projection P ← DEPTHWISE D ← 1×1 expansion E".

An inverted-residual block runs E (expansion) → D (depthwise) → P (projection). The
fused E→D backward (:mod:`tinytrain.train.kernels.fused_bwd`) never holds D's input
gradient; this kernel puts P's backward in front of it, so D's *output* gradient (the
largest tensor of a MobileNetV2 block's backward, e.g. 32×32×48 int16 = 96 KB) never
exists either. P is a 1×1, stride-1, unpadded CONV_2D whose input is D's output (its
only reader): row ``oy`` of P's input-gradient int32 sums is P's scaled output-gradient
row ``oy`` times ``W_P`` (row-local), so a row of D's output gradient can be recomputed
whenever the fused E→D kernel reads it. The passes:

0. per D output row ``oy``: P's input-gradient sums, for their global ``max |acc_P|``;
   that fixes P's normalization shift ``r_P`` and D's output-gradient exponent
   ``e_D = e_P + k_P + d_P + r_P`` exactly as ``normalize`` fixes them;
1. the fused E→D kernel's pass 1 (the maximum of D's input-gradient sums), its rows of
   D's output gradient being P's sums normalized with ``r_P``; each row, masked with D's
   clamp mask, also adds to D's bias gradient (int64 per channel) and weight gradient
   (int64 per weight);
2. and 3. the fused E→D kernel's passes 2 and 3 on the same recomputed rows.

Same global maxima ⇒ same shifts and exponents ⇒ the bytes of running P's, D's and E's
unfused :func:`~tinytrain.train.grad_rules.run_backward` one after the other
(``docs/numerics.md``, "Training"). P's own bias/weight gradients read only P's masked
output gradient (whole: it is small) and the saved channels of D's output: they are
computed by the unfused kernels. The updates (P's, D's, E's, the unfused order) run
after the last pass: every pass reads the old ``w_P``, ``w_D`` and ``w_E``.

The rows of D's output gradient live in a **ring** of ``R`` int16 rows. A sweep over D's
input rows reads output rows in non-decreasing windows of at most ``R_w`` rows
(:func:`~tinytrain.train.kernels.fused_bwd.dw_reads`: ``⌈kh_D/sh_D⌉`` for a plain
geometry), so with ``R = R_w`` every row is computed once per sweep, in order, into slot
``oy mod R``. With ``R = 1`` (``ring=False``: less scratch, up to ``kh_D`` times the
MACs; :func:`~tinytrain.train.build.build_training_program` uses the ring) a row is
recomputed at every read. P's input-gradient sum of one element,
``Σ_o g'_P[x, o] · W_P[o, c]`` with ``g'_P = RoundingDivideByPOT(g_P · μ_P, 15 + d_P)``
(after P's clamp mask), is computed whole and normalized straight into its int16 slot
(no int32 row). The numpy code is the C kernel's twin: explicit loops over rows,
vectorised inside a row, exact integer sums (int64, or float64 with every partial sum
below 2^53).

Scratch (bytes), with D's output ``H_o × W_o × C`` and kernel ``kh_D × kw_D``, D's
trained weight channels ``n_D``, on top of the fused E→D kernel's scratch ``S_ED``
(:func:`~tinytrain.train.kernels.fused_bwd.fused_scratch_bytes`)::

    scratch_bytes = S_ED
                  + 2·R·W_o·C              the ring of R int16 rows of D's output gradient
                  + 8·C      if D's bias trains (its int64 bias gradient)
                  + 8·kh_D·kw_D·n_D  if D's weights train (its whole int64 weight gradient,
                                     accumulated over rows)

Rows of P's sums computed per run (``p_rows``, each ``W_o·C·Cout_P`` MACs), with ``s``
sweeps (3 when E's input gradient is needed, else 2) and ``L`` the last row a sweep
reads (``H_o − 1`` for a plain geometry): ``H_o + (H_o if D trains else L + 1) +
(s − 1)·(L + 1)`` with the ring, ``H_o + (H_o if D trains) + s·reads`` without.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.sim.fixedpoint import rounding_divide_by_pot, wrap_int32
from tinytrain.train.grad_rules import BackwardParams, BackwardResult, Saved
from tinytrain.train.kernels.fused_bwd import (
    PARAM_GRAD_BYTES,
    DwRows,
    FusedExpandDwParams,
    check_fused_inputs,
    dw_reads,
    grad_shift,
    is_unit_pointwise,
    linear_kernel,
    norm_row,
    own_param_grads,
    stream_expand_backward,
    tap_columns,
)
from tinytrain.train.kernels.gradient import Grad, max_abs
from tinytrain.train.kernels.linear_bwd import Q15_BITS, LinearBwdParams
from tinytrain.train.kernels.mask import mask_nbytes

GRAD_BYTES = 2  # int16 gradient mantissa


@dataclass(frozen=True, eq=False)
class FusedProjectParams:
    """Compile-time params of the fused backward of P (projection) → D → E."""

    p: BackwardParams
    inner: FusedExpandDwParams  # D and E
    out_h: int  # H_o, W_o, C: D's output = P's input
    out_w: int
    channels: int
    ring_rows: int  # R: the window (each row computed once per sweep) or 1 (recomputed per read)
    p_rows: int  # rows of P's input-gradient sums computed per run (the MAC count's factor)
    scratch_bytes: int

    @property
    def kp(self) -> LinearBwdParams:
        return linear_kernel(self.p)


def project_scratch_bytes(
    inner_scratch: int,
    ring_rows: int,
    out_w: int,
    channels: int,
    d_bias: bool,
    d_weight_taps: int,
    d_weight_channels: int,
) -> int:
    """The scratch formula of the module docstring (``d_weight_taps = kh_D·kw_D``)."""
    n = inner_scratch + GRAD_BYTES * ring_rows * out_w * channels
    if d_bias:
        n += PARAM_GRAD_BYTES * channels
    n += PARAM_GRAD_BYTES * d_weight_taps * d_weight_channels
    return n


def prepare_fused_project_backward(
    p: BackwardParams, inner: FusedExpandDwParams, ring: bool = True
) -> FusedProjectParams:
    """Validates P (the CONV_2D reading D's output, as ``prepare_backward`` made it) in
    front of the fused E→D params; ``ring``: hold a window of rows of D's output gradient
    (fewer MACs) rather than one. That D's output has P as its only reader is the
    caller's check."""
    if p.op.kind is not OpKind.CONV_2D:
        raise UsageError(f"{p.op.describe()}: the fused projection backward needs a CONV_2D")
    if 0 not in p.request.input_grads:
        raise UsageError(f"{p.op.describe()}: its input gradient is not needed, there is nothing to fuse")
    kp: LinearBwdParams = p.kernel
    kd = inner.kd
    g = kp.geom
    assert g is not None and kd.geom is not None
    if not is_unit_pointwise(g):
        raise UsageError(f"{p.op.describe()}: a row-streamed projection backward needs a 1×1, stride-1, unpadded conv")
    if tuple(kp.in_shape) != tuple(kd.out_shape):
        raise UsageError(
            f"{p.op.describe()}: input {list(kp.in_shape)} is not the output {list(kd.out_shape)} "
            f"of {inner.d.op.describe()}"
        )
    _, h_o, w_o, c = kd.out_shape
    d_trains = inner.d.request.bias or bool(inner.d.request.weight_channels)
    sweeps = 3 if inner.e_input_grad else 2
    reads = dw_reads(kd.geom, inner.height)
    ring_rows = max(1, reads.window) if ring else 1
    if ring_rows > 1:
        p_rows = h_o + (h_o if d_trains else reads.last + 1) + (sweeps - 1) * (reads.last + 1)
    else:
        p_rows = h_o + (h_o if d_trains else 0) + sweeps * reads.reads
    scratch = project_scratch_bytes(
        inner.scratch_bytes,
        ring_rows,
        w_o,
        c,
        inner.d.request.bias,
        kd.geom.kh * kd.geom.kw,
        len(inner.d.request.weight_channels),
    )
    return FusedProjectParams(p, inner, h_o, w_o, c, ring_rows, p_rows, scratch)


class _ProjectRows:
    """The rows of D's output gradient from P's input-gradient sums, through the ring
    (the C kernel's row source; :class:`~tinytrain.train.kernels.fused_bwd.SweepHooks`).
    ``on_row(oy, row)`` sees every row the first sweep computes (ring mode); ``computed``
    counts the rows of sums."""

    def __init__(self, fp: FusedProjectParams, g_pm: Grad, w_p: np.ndarray) -> None:
        kp = fp.kp
        self.fp = fp
        self.kp = kp
        self.g = g_pm.g.reshape(fp.out_h, fp.out_w, kp.out_channels)
        self.w = np.asarray(w_p).reshape(kp.out_channels, kp.in_channels).astype(np.float64)
        self.ring = np.zeros((fp.ring_rows, fp.out_w, fp.channels), dtype=np.int16)
        self.next = 0  # ring mode: rows 0 … next − 1 have been computed in this sweep
        self.r = 0  # r_P, set after pass 0
        self.computed = 0
        self.on_row: Callable[[int, np.ndarray], None] | None = None

    def sums(self, oy: int) -> np.ndarray:
        """P's input-gradient int32 sums of row ``oy`` (``W_o × C``)."""
        self.computed += 1
        gp = rounding_divide_by_pot(self.g[oy].astype(np.int64) * self.kp.mu, Q15_BITS + self.kp.drop)
        return wrap_int32((gp.astype(np.float64) @ self.w).astype(np.int64))

    def _fill(self, oy: int) -> None:
        row = norm_row(self.sums(oy), self.r)
        self.ring[oy % self.fp.ring_rows] = row
        if self.on_row is not None:
            self.on_row(oy, row)

    def d_row(self, oy: int) -> np.ndarray:
        """Row ``oy`` of D's output gradient (int16, before D's clamp mask)."""
        n = self.fp.ring_rows
        if n == 1:
            self._fill(oy)
            return self.ring[0]
        while self.next <= oy:
            self._fill(self.next)
            self.next += 1
        if oy <= self.next - 1 - n:
            raise UsageError(f"{self.fp.p.op.describe()}: row {oy} left the ring of {n} rows")  # not reached
        return self.ring[oy % n]

    def begin(self, k: int) -> None:
        self.next = 0

    def end(self, k: int) -> None:
        if self.on_row is not None and self.fp.ring_rows > 1:
            while self.next < self.fp.out_h:  # rows no input row reads still add to D's gradients
                self._fill(self.next)
                self.next += 1
        self.on_row = None


def _dw_weight_grad_row(kd: LinearBwdParams, oy: int, g_row: np.ndarray, xs: np.ndarray, acc: np.ndarray) -> None:
    """Adds D's masked output-gradient row ``oy`` (``W_o × C``) to its weight gradient
    ``acc`` (``kh × kw × n``); ``xs``: the saved channels minus the zero point
    (``H × W × n``), ``channels``' columns of ``g_row`` already selected."""
    g = kd.geom
    assert g is not None
    for ky, kx, lo, hi, cols in tap_columns(g, oy, xs):
        acc[ky, kx] += (g_row[lo:hi] * cols).sum(axis=0)


def run_fused_project_backward(
    fp: FusedProjectParams,
    g_p: Grad,
    saved_p: Saved,
    saved_d: Saved,
    saved_e: Saved,
    w_p: np.ndarray,
    w_d: np.ndarray,
    w_e: np.ndarray | None,
) -> tuple[Grad | None, BackwardResult, BackwardResult, BackwardResult]:
    """``(E's input gradient | None, P's result, D's result, E's result)``, byte-identical
    to ``run_backward`` of P (on ``g_p``, P's output gradient before P's clamp mask), of D
    (on P's input gradient) and of E (on D's input gradient). P's and D's results have no
    input gradient (neither ever exists); E's holds E's input gradient when requested.

    C twin: tt_fused_pde_bwd_s16 in firmware_templates/runtime/src/tt_fused_pde_bwd.c.
    """
    inner, kp = fp.inner, fp.kp
    kd = inner.kd
    if g_p.shape != tuple(kp.out_shape):
        raise UsageError(f"{fp.p.op.describe()}: output gradient {list(g_p.shape)} != {list(kp.out_shape)}")
    n_out = int(np.prod(kp.out_shape))
    if fp.p.clamp is not None and (saved_p.mask is None or saved_p.mask.size != mask_nbytes(n_out)):
        raise UsageError(f"{fp.p.op.describe()}: the backward needs the clamp mask saved in the forward pass")
    if fp.p.request.weight_channels and saved_p.x_sub is None:
        raise UsageError(
            f"{fp.p.op.describe()}: the weight gradient needs the input channels saved in the forward pass"
        )
    check_fused_inputs(inner, saved_d, saved_e, w_e)

    # P's own parameter gradients: the unfused kernels on P's (whole) masked output gradient.
    g_pm, res_p = own_param_grads(fp.p, g_p, saved_p)

    prow = _ProjectRows(fp, g_pm, w_p)
    rows = DwRows(inner, prow.d_row, saved_d, saved_e, w_d)

    # Pass 0: the global maximum of P's input-gradient sums.
    m_p = 0
    for oy in range(fp.out_h):
        m_p = max(m_p, max_abs(prow.sums(oy)))
    prow.r = grad_shift(m_p)
    e_d = g_p.e + kp.k + kp.drop + prow.r  # exponent of D's output gradient

    # D's parameter gradients, one masked output row at a time: in pass 1 with the ring,
    # else in a loop of their own before it.
    req_d = inner.d.request
    bg_d = np.zeros(fp.channels, dtype=np.int64) if req_d.bias else None
    wg_d = None
    xs = None
    sel = np.asarray(req_d.weight_channels, dtype=np.int64)
    if req_d.weight_channels:
        assert saved_d.x_sub is not None and kd.geom is not None
        xs = np.asarray(saved_d.x_sub).reshape(kd.in_shape[1], kd.in_shape[2], sel.size).astype(np.int64) - kd.in_zp
        wg_d = np.zeros((1, kd.geom.kh, kd.geom.kw, sel.size), dtype=np.int64)

    def d_params(oy: int, row: np.ndarray) -> None:
        g_row = rows.mask_d_row(oy, row)
        if bg_d is not None:
            bg_d[...] += g_row.sum(axis=0, dtype=np.int64)
        if wg_d is not None and xs is not None:
            _dw_weight_grad_row(kd, oy, g_row[:, sel], xs, wg_d[0])

    if bg_d is not None or wg_d is not None:
        if fp.ring_rows > 1:
            prow.on_row = d_params
        else:
            for oy in range(fp.out_h):
                d_params(oy, prow.d_row(oy))

    # Passes 1 to 3: the fused E→D kernel on the recomputed rows.
    g_in, res_e = stream_expand_backward(inner, rows, e_d, saved_e, w_e, hooks=prow)
    res_d = BackwardResult({}, wg_d, bg_d, e_d)
    if prow.computed != fp.p_rows:
        raise UsageError(f"{fp.p.op.describe()}: {prow.computed} rows computed, {fp.p_rows} planned")  # not reached
    return g_in, res_p, res_d, res_e
