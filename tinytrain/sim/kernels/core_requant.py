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

from collections.abc import Sequence
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
    A shift above 31 either way is rejected by the caller (TFLite's behaviour is undefined).
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
    if max(lefts) > 31:
        raise ValueError("left shift above 31")
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
    folded = [a + (zero_point << (31 + r)) for a, r in zip(base, rights, strict=True)]
    bound = x_bound * qmax + (1 << 31)
    fold_zp = bound + max(abs(a) for a in folded) < _I64_SAFE
    if not fold_zp and bound + max(abs(a) for a in base) >= _I64_SAFE:  # pragma: no cover - guarded by fast
        raise ValueError("requantization constants overflow int64")
    q_l = list(qs)
    add1 = [(1 << 30) + b * q for b, q in zip(biases, qs, strict=True)]
    mask = [-(1 << 31) if r > 0 else 0 for r in rights]
    add2 = [((1 << (30 + r)) if r > 0 else 0) + ((zero_point << (31 + r)) if fold_zp else 0) for r in rights]
    rsh = [31 + r for r in rights]
    # A per-channel right shift costs a broadcast pass; scaling every term of channel c by
    # 2^(R_max - R_c) gives the same floor with one scalar shift, when int64 has room.
    k = [max(rsh) - r for r in rsh]
    scaled_bound = (bound + max(abs(a) + abs(b) for a, b in zip(add1, add2, strict=True))) << max(k)
    if max(k) > 0 and scaled_bound < _I64_SAFE:
        q_l = [v << kc for v, kc in zip(q_l, k, strict=True)]
        add1 = [v << kc for v, kc in zip(add1, k, strict=True)]
        mask = [v << kc for v, kc in zip(mask, k, strict=True)]
        add2 = [v << kc for v, kc in zip(add2, k, strict=True)]
        rsh = [max(rsh)] * n
    return Requantizer(
        q=_compact(q_l),
        add1=_compact(add1),
        neg_mask=_compact(mask),
        add2=_compact(add2),
        rshift=_compact(rsh),
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
