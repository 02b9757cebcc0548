"""Integer gradient accumulation over ``B`` samples and SGD momentum (integer only).

An accumulator holds, for one trained parameter tensor (a weight slice ``w[..., channels]``
or a bias), the running *sum* of per-sample gradients ``Σ_k G_k · 2^e_k`` (``G_k`` the int64
gradient of :mod:`.linear_bwd`, ``e_k`` its exponent, different per sample) as a
block-floating-point value with **one exponent per row**, a row being one output channel
(the axis along which the gradient is produced and consumed, see :data:`WEIGHT_ROW_AXIS`):

* ``m``: mantissas, layout of the parameter slice, ``|m| ≤ 2^bits`` (``bits`` ≤ 30, stored
  as int32; int16 when ``bits ≤ 14``; int8 when ``bits ≤ 6``);
* ``e``: int32 ``[rows]``, the real value of row ``o`` is ``m[o, ·] · 2^e[o]``;
* ``n``: int32, the number of samples added.

Arithmetic (``RDBP`` = RoundingDivideByPOT, halves away from zero; ``bitlen(0) = 0``;
all intermediate values fit int64):

* ``norm(a, e_a)`` of one row (int64): ``t = max|a|``; zero row → ``(0, e_a)``; else
  ``r = bitlen(t) − bits``, ``a << −r`` (exact) when ``r < 0``, ``RDBP(a, r)`` when ``r > 0``,
  exponent ``e_a + r``. Afterwards ``|m| ≤ 2^bits``.
* ``acc_add(G, e)`` (``|G| < 2^62``), per row: ``(g, e_g) = norm(G, e)``; an all-zero row
  of ``g`` leaves the row unchanged, an all-zero state row is replaced by ``(g, e_g)``;
  otherwise, with ``hi`` the term of larger exponent (the state on ties), ``d = e_hi − e_lo``
  and ``GUARD = 30``: ``acc = m_hi · 2^30 + t_lo``, ``t_lo = m_lo · 2^(30 − d)`` if
  ``d ≤ 30`` else ``RDBP(m_lo, min(d − 30, 62))``; ``|acc| ≤ 2^(bits + 31) ≤ 2^61``; then
  ``(m, e) = norm(acc, e_hi − 30)``. ``n ← n + 1``.
  Error of one add, per element: at most ``2^(e_g − 1)`` when ``G`` was rounded
  (``bitlen(max_row|G|) > bits``), plus ``2^(e_hi − 31)`` when ``d > 30``, plus
  ``2^(e_new − 1)`` when the sum was rounded; the sum is exact when every row of
  every ``G`` fits ``bits`` bits, the exponents differ by at most 30 and no sum needs
  more than ``bits`` bits.
* ``acc_result(B)`` (mean, ``1 ≤ B ≤ 2^16``): ``k = ⌊log2 B⌋``, ``μ_B = round(2^(30 + k) / B)``
  (compile time, ``2^29 < μ_B ≤ 2^30``; exactly ``2^30`` when ``B = 2^k``, so the mean of a
  power-of-two batch is an exact exponent shift), gradient ``m · μ_B`` (int64, ``≤ 2^60``,
  no rounding), exponent ``e − 30 − k`` per row. Relative error of the mean ≤ ``2^-30``
  (none for a power of two).
* The SGD step of the mean is the ordinary update (``docs/numerics.md``, "Update") with
  the int64 gradient ``m · μ_B`` and, as ``e_y``, the row's exponent: the update already
  works row by row (per output channel), see :func:`update_weights_rows` and
  :func:`update_bias_rows`. For the bias, ``row`` = one element (its own exponent).
* Momentum (:func:`mom_step`, ``v ← μ·v + g``, ``μ`` in Q15, 0.9 → 29491): per row,
  ``(t, e_t) = norm(v.m · μ_q, v.e − 15)``, then ``t`` plays the state's role in
  ``acc_add`` with ``g``. The update uses ``(v.m, v.e)`` as gradient and exponent
  (:func:`acc_value`).

Memory per trained parameter: the mantissa (4 bytes for ``bits`` 15..30, 2 bytes for
7..14, 1 byte for ≤ 6); plus 4 bytes (int32 exponent) per row (output channel; per
element for a bias) and 4 bytes (count) per tensor. No scratch buffer: in C one row of
``G`` is produced, normalized and added at a time (two passes over the row: max, then
sum), which is why the exponent is per row (a per-tensor exponent would need all of
``G`` before the first element can be aligned). Momentum costs the same again per
parameter (its ``n`` is unused). The state never overflows: mantissas stay ``≤ 2^bits``
after every add and the exponents only move with the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.sim.fixedpoint import rounding_divide_by_pot
from tinytrain.train.kernels.update import UpdateParams, update_bias, update_weights

ACC_BITS = 30  # default mantissa bits of the accumulator (int32 storage)
GUARD_BITS = 30  # alignment guard bits of a two-term sum
MEAN_FRAC_BITS = 30  # Q30 reciprocal of the batch size
MAX_BATCH = 1 << 16
MAX_GRAD = 1 << 62  # |G| must stay below this (bit lengths are taken over 63 bits)
MOMENTUM_Q15_0_9 = 29491  # round(0.9 · 2^15)
Q15_SHIFT = 15
MAX_RDBP = 62

# Row (output-channel) axis of the weight-gradient slice w[..., channels] per op kind; a bias uses axis 0.
WEIGHT_ROW_AXIS: MappingProxyType[OpKind, int] = MappingProxyType(
    {OpKind.CONV_2D: 0, OpKind.FULLY_CONNECTED: 0, OpKind.DEPTHWISE_CONV_2D: -1}
)


@dataclass(frozen=True)
class GradAccumulator:
    """Compile-time parameters of one accumulator (or momentum buffer)."""

    shape: tuple[int, ...]  # the parameter slice's shape (layout of the gradient)
    row_axis: int = 0  # the output-channel axis (one exponent per index along it)
    bits: int = ACC_BITS

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= ACC_BITS:
            raise UsageError(f"accumulator bits must be in [2, {ACC_BITS}], got {self.bits}")
        if not self.shape or not -len(self.shape) <= self.row_axis < len(self.shape):
            raise UsageError(f"row axis {self.row_axis} out of range for a gradient of shape {list(self.shape)}")

    @property
    def rows(self) -> int:
        return self.shape[self.row_axis]

    @property
    def dtype(self) -> type[np.signedinteger]:
        return np.int8 if self.bits <= 6 else np.int16 if self.bits <= 14 else np.int32

    @property
    def state_bytes(self) -> int:
        """Bytes of state: mantissas, one int32 exponent per row, one int32 count."""
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize + 4 * self.rows + 4


def weight_accumulator(kind: OpKind, shape: Sequence[int], bits: int = ACC_BITS) -> GradAccumulator:
    """Accumulator of a weight-gradient slice of a linear op (rows = output channels)."""
    if kind not in WEIGHT_ROW_AXIS:
        raise UsageError(f"{kind.value} has no trainable weights")
    return GradAccumulator(tuple(int(s) for s in shape), WEIGHT_ROW_AXIS[kind], bits)


def bias_accumulator(cout: int, bits: int = ACC_BITS) -> GradAccumulator:
    """Accumulator of a bias gradient (one exponent per element)."""
    return GradAccumulator((int(cout),), 0, bits)


@dataclass(frozen=True, eq=False)
class AccState:
    """Real value of row ``o``: ``m[o-th row] · 2^e[o]``; ``n`` samples added so far."""

    m: np.ndarray  # params.dtype, params.shape
    e: np.ndarray  # int32 [rows]
    n: int


def acc_init(p: GradAccumulator) -> AccState:
    """An empty accumulator (all mantissas 0, exponents 0, count 0).

    C twin: tt_acc_init in firmware_templates/runtime/src/tt_accumulate.c.
    """
    return AccState(np.zeros(p.shape, dtype=p.dtype), np.zeros(p.rows, dtype=np.int32), 0)


# ------------------------------------------------------------------------ row helpers


def _to_rows(p: GradAccumulator, a: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(a, dtype=np.int64), p.row_axis, 0).reshape(p.rows, -1)


def _from_rows(p: GradAccumulator, rows: np.ndarray, dtype: type[np.signedinteger]) -> np.ndarray:
    moved = np.moveaxis(np.zeros(p.shape, dtype=np.int8), p.row_axis, 0).shape
    return np.moveaxis(rows.reshape(moved), 0, p.row_axis).astype(dtype)


def _bitlen(t: np.ndarray) -> np.ndarray:
    """Bit length of each non-negative int64 (0 for 0)."""
    return ((t[:, None] >> np.arange(63, dtype=np.int64)) > 0).sum(axis=1).astype(np.int64)


def _norm_rows(a: np.ndarray, e: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``norm`` of every row of int64 ``a`` [rows, K] with exponents ``e`` [rows]."""
    top = np.abs(a).max(axis=1, initial=0)
    r = np.where(top == 0, 0, _bitlen(top) - bits)
    left = np.maximum(-r, 0)[:, None]
    right = np.maximum(r, 0)[:, None]
    m = np.where(r[:, None] < 0, a << left, rounding_divide_by_pot(a, right))
    return m, e.astype(np.int64) + r


def _sum_rows(
    ms: np.ndarray, es: np.ndarray, mg: np.ndarray, eg: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise sum of two normalized terms (state ``ms·2^es`` and new ``mg·2^eg``)."""
    zs = ~np.any(ms != 0, axis=1)
    zg = ~np.any(mg != 0, axis=1)
    s_hi = (es >= eg)[:, None]
    m_hi, m_lo = np.where(s_hi, ms, mg), np.where(s_hi, mg, ms)
    e_hi = np.maximum(es, eg)
    d = (e_hi - np.minimum(es, eg))[:, None]
    t_lo = np.where(
        d <= GUARD_BITS,
        m_lo << np.clip(GUARD_BITS - d, 0, GUARD_BITS),
        rounding_divide_by_pot(m_lo, np.clip(d - GUARD_BITS, 0, MAX_RDBP)),
    )
    m, e = _norm_rows((m_hi << np.int64(GUARD_BITS)) + t_lo, e_hi - GUARD_BITS, bits)
    m = np.where(zg[:, None], ms, np.where(zs[:, None], mg, m))
    e = np.where(zg, es, np.where(zs, eg, e))
    return m, e


def _check_grad(p: GradAccumulator, grad: np.ndarray) -> np.ndarray:
    g = np.asarray(grad)
    if g.shape != p.shape:
        raise UsageError(f"gradient of shape {list(g.shape)} for an accumulator of shape {list(p.shape)}")
    if g.dtype.kind not in "iu":
        raise UsageError(f"gradients must be integers, got {g.dtype}")
    g = g.astype(np.int64)
    if g.size and (int(g.max()) >= MAX_GRAD or int(g.min()) <= -MAX_GRAD):
        raise UsageError("gradient magnitude must stay below 2^62")
    return g


def _state(p: GradAccumulator, m: np.ndarray, e: np.ndarray, n: int) -> AccState:
    return AccState(_from_rows(p, m, p.dtype), e.astype(np.int32), n)


# ------------------------------------------------------------------------ accumulation


def acc_add(p: GradAccumulator, s: AccState, grad: np.ndarray, e: int | np.ndarray) -> AccState:
    """``s + grad · 2^e`` (``e``: one exponent, or one per row); a new state, ``n + 1``.

    C twin: tt_acc_add_s64 / tt_acc_add_row_s64 in firmware_templates/runtime/src/tt_accumulate.c.
    """
    g = _to_rows(p, _check_grad(p, grad))
    eg = np.broadcast_to(np.asarray(e, dtype=np.int64), (p.rows,))
    mg, eg = _norm_rows(g, eg, p.bits)
    m, e_new = _sum_rows(_to_rows(p, s.m), s.e.astype(np.int64), mg, eg, p.bits)
    return _state(p, m, e_new, s.n + 1)


def mean_multiplier(batch: int) -> tuple[int, int]:
    """``(μ_B, k)``: ``k = ⌊log2 B⌋``, ``μ_B = round(2^(30 + k) / B)`` (integer rounding, halves up).

    C twin: tt_acc_mean in firmware_templates/runtime/src/tt_accumulate.c.
    """
    if not 1 <= batch <= MAX_BATCH:
        raise UsageError(f"batch size must be in [1, {MAX_BATCH}], got {batch}")
    k = batch.bit_length() - 1
    return ((1 << (MEAN_FRAC_BITS + k)) + batch // 2) // batch, k


def acc_result(p: GradAccumulator, s: AccState, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean gradient ``(int64 m · μ_B in the parameter layout, int64 exponents [rows])``."""
    mu, k = mean_multiplier(batch)
    return s.m.astype(np.int64) * np.int64(mu), s.e.astype(np.int64) - (MEAN_FRAC_BITS + k)


def acc_value(s: AccState) -> tuple[np.ndarray, np.ndarray]:
    """The state itself as ``(int64 mantissas, int64 exponents [rows])`` (momentum's ``v``)."""
    return s.m.astype(np.int64), s.e.astype(np.int64)


def mom_step(p: GradAccumulator, v: AccState, grad: np.ndarray, e: int | np.ndarray, mu_q15: int) -> AccState:
    """Momentum ``v ← μ·v + grad · 2^e`` with ``μ = mu_q15 / 2^15`` (``0 ≤ mu_q15 ≤ 2^15``).

    C twin: tt_mom_step_s64 / tt_mom_step_acc in firmware_templates/runtime/src/tt_accumulate.c.
    """
    if not 0 <= mu_q15 <= 1 << Q15_SHIFT:
        raise UsageError(f"momentum must be a Q15 value in [0, 32768], got {mu_q15}")
    t, et = _norm_rows(_to_rows(p, v.m) * np.int64(mu_q15), v.e.astype(np.int64) - Q15_SHIFT, p.bits)
    scaled = _state(p, t, et, v.n)
    return acc_add(p, scaled, grad, e)


# ------------------------------------------------------------------------ update with per-row exponents


def update_weights_rows(
    up: UpdateParams,
    w: np.ndarray,
    grad: np.ndarray,
    e_rows: np.ndarray,
    channels: Sequence[int],
    lr: tuple[int, int],
    c_t: int,
    state: np.ndarray,
) -> np.ndarray:
    """:func:`update_weights` with one exponent per output channel (row): row ``o`` gets
    exactly the update ``update_weights`` computes for it with ``e_y = e_rows[o]``; the
    PRNG draws are consumed in the same order (row by row).

    C twin: tt_acc_update_weights_s8 in firmware_templates/runtime/src/tt_accumulate.c.
    """
    e_rows = np.asarray(e_rows, dtype=np.int64).reshape(-1)
    out = np.array(w, dtype=np.int8, copy=True)
    if up.kind is OpKind.DEPTHWISE_CONV_2D:
        if e_rows.size != len(channels):
            raise UsageError(f"{e_rows.size} exponents for {len(channels)} updated channels")
        for j, c in enumerate(channels):
            out = update_weights(up, out, grad[..., j : j + 1], int(e_rows[j]), [c], lr, c_t, state)
        return out
    if e_rows.size != w.shape[0]:
        raise UsageError(f"{e_rows.size} exponents for {w.shape[0]} output channels")
    for o in range(w.shape[0]):
        row_p = replace(up, w_mult=up.w_mult[o : o + 1], w_shift=up.w_shift[o : o + 1])
        out[o : o + 1] = update_weights(
            row_p, out[o : o + 1], grad[o : o + 1], int(e_rows[o]), channels, lr, c_t, state
        )
    return out


def update_bias_rows(
    up: UpdateParams, b: np.ndarray, grad: np.ndarray, e_rows: np.ndarray, lr: tuple[int, int], c_t: int
) -> np.ndarray:
    """:func:`update_bias` with one exponent per element.

    C twin: tt_acc_update_bias_s32 in firmware_templates/runtime/src/tt_accumulate.c.
    """
    e_rows = np.asarray(e_rows, dtype=np.int64).reshape(-1)
    flat = np.asarray(b, dtype=np.int32).reshape(-1)
    g = np.asarray(grad, dtype=np.int64).reshape(-1)
    if not e_rows.size == flat.size == g.size:
        raise UsageError(f"bias of {flat.size}, gradient of {g.size} and {e_rows.size} exponents")
    out = flat.copy()
    for o in range(flat.size):
        row_p = replace(up, b_mult=up.b_mult[o : o + 1], b_shift=up.b_shift[o : o + 1])
        out[o : o + 1] = update_bias(row_p, flat[o : o + 1], g[o : o + 1], int(e_rows[o]), lr, c_t)
    return out.reshape(np.shape(b))
