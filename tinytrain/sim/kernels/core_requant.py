"""Fast, exact int32 -> int8 requantization (TFLite's double-rounding MultiplyByQuantizedMultiplier).

TFLite Micro computes, per output value,
``clamp(RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(x << left, q), right) + zp)``
with ``x`` the int32 accumulator (plus bias). The two roundings fold into one integer
expression that numpy evaluates in a few in-place int64 passes:

* ``SaturatingRoundingDoublingHighMul(a, q)`` rounds ``a·q / 2^31`` half towards +inf
  (the nudge ``1 - 2^30`` for negative products turns C's truncating division into a
  floor), i.e. it is ``t = floor((a·q + 2^30) / 2^31)`` (its only saturating case,
  ``a = q = INT32_MIN``, cannot happen: ``q`` is never negative here).
* ``RoundingDivideByPOT(t, r)`` for ``r > 0`` rounds half away from zero:
  ``floor((t + 2^(r-1) - [t < 0]) / 2^r)``; for ``r = 0`` it is ``t``.
* Nested floor divisions by positive integers compose, so with ``y = a·q + 2^30`` and
  ``n = [y < 0]`` (which is ``[t < 0]``):
  ``result = floor((y + 2^(30+r) - n·2^31) / 2^(31+r))``. numpy computes ``n·2^31`` from
  the sign bit (``(y >> 63) & -2^31``). A constant bias ``b`` folds into ``y`` as
  ``+ b·q``, the output zero point into the numerator as ``+ zp·2^(31+r)``, and
  per-channel shifts become one scalar shift by scaling channel ``c``'s terms by
  ``2^(R_max − R_c)`` (floors are unchanged by scaling numerator and divisor alike) —
  each only when the int64 bound check allows it.

All magnitudes are bounded in ``prepare`` (Python ints) so that no int64 intermediate can
overflow; when a bound is not met (huge bias or accumulator that could wrap int32 in C,
left shifts), the general path reproduces the int32 wrap explicitly first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.sim.fixedpoint import wrap_int32

_I64_SAFE = 2**63 - 1
_CHUNK = 1 << 15  # values per pass, so that the int64 scratch stays in cache


@dataclass(frozen=True, eq=False)
class Requantizer:
    """Maps int accumulators (channels on the last axis) to clamped integers.

    ``apply(acc)`` returns ``clamp(MBQM(acc + bias, q, shift) + zp, lo, hi)`` as ``out_dtype``.
    The numerator is built as ``y = acc·q + add1`` (SRDHM nudge, folded bias), then
    ``y += (y >> 63) & neg_mask`` (the ``-2^31`` for a negative SRDHM result, on channels
    with a right shift), ``y += add2`` (RDBP half, folded zero point) and ``y >>= rshift``.
    """

    q: np.ndarray | int
    add1: np.ndarray | int
    neg_mask: np.ndarray | int
    add2: np.ndarray | int
    rshift: np.ndarray | int
    has_neg: bool
    zp_after: int
    lo: int
    hi: int
    out_dtype: np.dtype
    # general path (bias not folded, explicit int32 wrap, left shifts)
    general: bool
    bias: np.ndarray | None
    wrap_acc: bool
    left_mul: np.ndarray | int
    has_left: bool

    def apply(self, acc: np.ndarray) -> np.ndarray:
        """``acc``: integer array (any int dtype, or an exactly integral float array)."""
        shape = acc.shape
        channels = shape[-1] if acc.ndim else 1
        flat = acc.reshape(-1, channels)
        out = np.empty(flat.shape, dtype=self.out_dtype)
        rows = max(1, _CHUNK // max(channels, 1))
        buf = np.empty((min(rows, flat.shape[0]), channels), dtype=np.int64)
        tmp = np.empty_like(buf) if self.has_neg else buf
        for r0 in range(0, flat.shape[0], rows):
            part = flat[r0 : r0 + rows]
            n = part.shape[0]
            y = buf[:n]
            if self.general:
                np.copyto(y, part, casting="unsafe")
                if self.bias is not None:
                    y += self.bias
                if self.wrap_acc:
                    y[...] = wrap_int32(y)
                if self.has_left:
                    y *= self.left_mul
                    y[...] = wrap_int32(y)
                y *= self.q
            else:
                np.multiply(part, self.q, out=y, dtype=np.int64, casting="unsafe")
            y += self.add1
            if self.has_neg:
                s = tmp[:n]
                np.right_shift(y, 63, out=s)
                s &= self.neg_mask
                y += s
            y += self.add2
            y >>= self.rshift
            if self.zp_after:
                y += self.zp_after
            np.clip(y, self.lo, self.hi, out=out[r0 : r0 + n], casting="unsafe")
        return out.reshape(shape)


def _compact(values: np.ndarray) -> np.ndarray | int:
    if values.size and bool((values == values[0]).all()):
        return int(values[0])
    return np.ascontiguousarray(values, dtype=np.int64)


def _per_channel(values: Sequence[int] | np.ndarray, n: int, what: str) -> np.ndarray:
    """One or ``n`` integers as an int64 array of ``n``."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        arr = np.asarray([int(v) for v in np.ravel(values)], dtype=np.int64)
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size not in (1, n):
        raise ValueError(f"{arr.size} {what} for {n} channels")
    return np.full(n, arr[0], np.int64) if arr.size == 1 else arr


def _max_abs_plus(values: np.ndarray, rights: np.ndarray, term: Callable[[int], int]) -> int:
    """``max_c |values[c] + term(rights[c])|`` in exact Python ints, one group per distinct
    right shift, so that a per-channel term never passes through int64."""
    best = 0
    for r in np.unique(rights).tolist():
        grp = values[rights == r]
        t = term(int(r))
        best = max(best, abs(int(grp.max()) + t), abs(int(grp.min()) + t))
    return best


def make_requantizer(
    multipliers: Sequence[int] | np.ndarray,
    shifts: Sequence[int] | np.ndarray,
    zero_point: int,
    lo: int,
    hi: int,
    acc_bound: int,
    bias: Sequence[int] | np.ndarray | None = None,
    out_dtype: type = np.int8,
) -> Requantizer:
    """Builds a requantizer.

    ``multipliers``/``shifts`` are TFLite's ``(q, shift)`` pairs (shift > 0 = left shift),
    one per channel (last axis) or a single pair; ``bias`` likewise (added to the
    accumulator as int32). ``acc_bound`` bounds ``|acc|`` before the bias.
    A shift above 31 either way is rejected by the caller (TFLite's behaviour is undefined).

    Vectorised over channels (it is rebuilt every training step for a layer whose bias
    trains); every bound is checked in exact Python ints, per distinct shift where a term
    depends on it, so no int64 value below can overflow.
    """
    n = max(int(np.size(multipliers)), int(np.size(bias)) if bias is not None else 1)
    qs = _per_channel(multipliers, n, "multipliers")
    ss = _per_channel(shifts, n, "shifts")
    bs = _per_channel(bias, n, "biases") if bias is not None else np.zeros(n, np.int64)
    if bool((qs < 0).any()):
        raise ValueError("requantizer multipliers must be >= 0")
    lefts = np.maximum(ss, 0)
    rights = np.maximum(-ss, 0)
    if int(rights.max()) > 31:
        raise ValueError("right shift above 31")
    if int(lefts.max()) > 31:
        raise ValueError("left shift above 31")
    max_b = int(np.abs(bs).max())
    qmax = int(qs.max())
    fast = int(lefts.max()) == 0 and acc_bound + max_b <= 2**31 - 1
    x_bound = acc_bound if fast else 2**31
    bq = bs * qs if fast else np.zeros(n, np.int64)  # fast: |b| < 2^31, q < 2^31
    half = np.where(rights > 0, np.left_shift(np.int64(1), 30 + rights), np.int64(0))  # ≤ 2^61
    base = (1 << 30) + half + bq
    bound = x_bound * qmax + (1 << 31)
    fold_zp = bound + _max_abs_plus(base, rights, lambda r: zero_point << (31 + r)) < _I64_SAFE
    if not fold_zp and bound + _max_abs_plus(base, rights, lambda r: 0) >= _I64_SAFE:  # pragma: no cover
        raise ValueError("requantization constants overflow int64")

    def add2_of(r: int) -> int:
        return ((1 << (30 + r)) if r > 0 else 0) + ((zero_point << (31 + r)) if fold_zp else 0)

    add1 = (1 << 30) + bq
    mask = np.where(rights > 0, np.int64(-(1 << 31)), np.int64(0))
    # A per-channel right shift costs a broadcast pass; scaling every term of channel c by
    # 2^(R_max - R_c) gives the same floor with one scalar shift, when int64 has room.
    r_max = int(rights.max())
    worst = max(int(np.abs(add1[rights == r]).max()) + abs(add2_of(r)) for r in np.unique(rights).tolist())
    scale = r_max > int(rights.min()) and (bound + worst) << (r_max - int(rights.min())) < _I64_SAFE
    k = (r_max - rights) if scale else np.zeros(n, np.int64)
    add2 = np.zeros(n, np.int64)
    for r in np.unique(rights).tolist():
        add2[rights == r] = add2_of(r) << (r_max - r if scale else 0)
    return Requantizer(
        q=_compact(qs << k),
        add1=_compact(add1 << k),
        neg_mask=_compact(mask << k),
        add2=_compact(add2),
        rshift=_compact(np.full(n, 31 + r_max, np.int64) if scale else 31 + rights),
        has_neg=bool((rights > 0).any()),
        zp_after=0 if fold_zp else zero_point,
        lo=lo,
        hi=hi,
        out_dtype=np.dtype(out_dtype),
        general=not fast,
        bias=None if (fast or bias is None or max_b == 0) else bs,
        wrap_acc=(not fast) and acc_bound + max_b > 2**31 - 1,
        left_mul=_compact(np.left_shift(np.int64(1), lefts)),
        has_left=int(lefts.max()) > 0,
    )
