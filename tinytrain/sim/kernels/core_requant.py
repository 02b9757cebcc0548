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
* Nested floor divisions by positive integers compose, so with ``n = [a·q < -2^30]``
  (which is ``[t < 0]``): ``result = floor((a·q + 2^30 + 2^(30+r) - n·2^31) / 2^(31+r))``.
  The output zero point folds into the same numerator (``+ zp·2^(31+r)``) when the bound
  check shows no int64 overflow, and a constant bias ``b`` folds in as ``+ b·q``
  (with threshold ``a·q < -2^30 - b·q``).

All magnitudes are bounded in ``prepare`` (Python ints) so that no int64 intermediate can
overflow; when a bound is not met (huge bias or accumulator that could wrap int32 in C,
left shifts), the general path reproduces the int32 wrap explicitly first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.sim.fixedpoint import wrap_int32

_I64_SAFE = 2**63 - 1


@dataclass(frozen=True, eq=False)
class Requantizer:
    """Maps int accumulators (channels on the last axis) to clamped integers.

    ``apply(acc)`` returns ``clamp(MBQM(acc + bias, q, shift) + zp, lo, hi)`` as ``out_dtype``.
    """

    q: np.ndarray | int
    add: np.ndarray | int
    thr: np.ndarray | int
    sub: np.ndarray | int
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
        """``acc``: integer array (any int dtype, or an exactly integral float array).

        An int64 ``acc`` is overwritten (callers pass a scratch array).
        """
        if acc.dtype != np.int64:
            acc = acc.astype(np.int64)
        if self.general:
            if self.bias is not None:
                acc += self.bias
            if self.wrap_acc:
                acc = wrap_int32(acc)
            if self.has_left:
                acc = wrap_int32(acc * self.left_mul)
        ab = np.multiply(acc, self.q, out=acc)
        if self.has_neg:
            neg = ab < self.thr
            ab += self.add
            np.subtract(ab, self.sub, out=ab, where=neg)
        else:
            ab += self.add
        ab >>= self.rshift
        if self.zp_after:
            ab += self.zp_after
        np.clip(ab, self.lo, self.hi, out=ab)
        return ab.astype(self.out_dtype)


def _compact(values: Sequence[int]) -> np.ndarray | int:
    if len(set(values)) == 1:
        return int(values[0])
    return np.asarray(values, dtype=np.int64)


def make_requantizer(
    multipliers: Sequence[int],
    shifts: Sequence[int],
    zero_point: int,
    lo: int,
    hi: int,
    acc_bound: int,
    bias: Sequence[int] | None = None,
    out_dtype: type = np.int8,
) -> Requantizer:
    """Builds a requantizer.

    ``multipliers``/``shifts`` are TFLite's ``(q, shift)`` pairs (shift > 0 = left shift),
    one per channel (last axis) or a single pair; ``bias`` likewise (added to the
    accumulator as int32). ``acc_bound`` bounds ``|acc|`` before the bias.
    A right shift above 31 is rejected by the caller (TFLite's behaviour is undefined).
    """
    n = max(len(multipliers), len(bias) if bias is not None else 1)
    qs = [int(multipliers[i if len(multipliers) > 1 else 0]) for i in range(n)]
    ss = [int(shifts[i if len(shifts) > 1 else 0]) for i in range(n)]
    bs = [int(bias[i if len(bias) > 1 else 0]) for i in range(n)] if bias is not None else [0] * n
    if any(q < 0 for q in qs):
        raise ValueError("requantizer multipliers must be >= 0")
    lefts = [max(s, 0) for s in ss]
    rights = [max(-s, 0) for s in ss]
    if max(rights) > 31:
        raise ValueError("right shift above 31")
    max_b = max(abs(b) for b in bs)
    qmax = max(qs)
    fast = max(lefts) == 0 and acc_bound + max_b <= 2**31 - 1
    if fast:
        x_bound = acc_bound
        biases = bs
    else:
        x_bound = 2**31
        biases = [0] * n
    base = [(1 << 30) + ((1 << (30 + r)) if r > 0 else 0) + b * q for r, b, q in zip(rights, biases, qs, strict=True)]
    thr = [-(1 << 30) - b * q for b, q in zip(biases, qs, strict=True)]
    folded = [a + (zero_point << (31 + r)) for a, r in zip(base, rights, strict=True)]
    bound = x_bound * qmax + (1 << 31)
    fold_zp = bound + max(abs(a) for a in folded) < _I64_SAFE
    if not fold_zp and bound + max(abs(a) for a in base) >= _I64_SAFE:  # pragma: no cover - guarded by fast
        raise ValueError("requantization constants overflow int64")
    return Requantizer(
        q=_compact(qs),
        add=_compact(folded if fold_zp else base),
        thr=_compact(thr),
        sub=_compact([(1 << 31) if r > 0 else 0 for r in rights]),
        rshift=_compact([31 + r for r in rights]),
        has_neg=any(r > 0 for r in rights),
        zp_after=0 if fold_zp else zero_point,
        lo=lo,
        hi=hi,
        out_dtype=np.dtype(out_dtype),
        general=not fast,
        bias=None if (fast or bias is None or max_b == 0) else np.asarray(bs, dtype=np.int64),
        wrap_acc=(not fast) and acc_bound + max_b > 2**31 - 1,
        left_mul=_compact([1 << lft for lft in lefts]),
        has_left=max(lefts) > 0,
    )
