"""Fixed-point primitives of TFLite Micro's reference kernels, vectorised in numpy.

These are the double-rounding variants (TFLite Micro's default build, and the
arithmetic tinytrain's C runtime implements): ``QuantizeMultiplier``,
``SaturatingRoundingDoublingHighMul``, ``RoundingDivideByPOT`` and
``MultiplyByQuantizedMultiplier``. All array functions take and return int64
arrays holding int32 values, so intermediate products never overflow in numpy;
int32 wrap-around that the C code would show is reproduced explicitly.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def _round_half_away(x: float) -> int:
    """C's ``std::round``: halves away from zero."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ≈ q · 2^(shift−31)``, q in [2^30, 2^31).

    Returns ``(q, shift)``; shift > 0 is a left shift.
    """
    if real_multiplier == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real_multiplier)
    q_fixed = _round_half_away(mantissa * float(1 << 31))
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift = 0
        q_fixed = 0
    return int(q_fixed), int(shift)


def quantize_multipliers(reals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`quantize_multiplier` over an array (the same bytes: ``frexp`` and the
    half-away rounding of ``mantissa·2^31`` are exact in float64). Returns int64 arrays."""
    r = np.asarray(reals, dtype=np.float64)
    mantissa, shift = np.frexp(r)
    scaled = mantissa * float(1 << 31)
    q = (np.floor(np.abs(scaled) + 0.5) * np.sign(scaled)).astype(np.int64)
    shift = shift.astype(np.int64)
    top = q == (1 << 31)
    q = np.where(top, q // 2, q)
    shift = np.where(top, shift + 1, shift)
    small = (shift < -31) | (r == 0.0)
    return np.where(small, 0, q), np.where(small, 0, shift)


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to the int32 range (kept as int64)."""
    return ((x.astype(np.int64) + 2**31) & 0xFFFFFFFF) - 2**31


def saturating_rounding_doubling_high_mul(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values (int64 arrays)."""
    a = np.asarray(a, dtype=np.int64)
    b_arr = np.asarray(b, dtype=np.int64)
    ab = a * b_arr
    nudge = np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    total = ab + nudge
    # C integer division truncates toward zero.
    q = np.where(total >= 0, total >> 31, -((-total) >> 31))
    overflow = (a == INT32_MIN) & (b_arr == INT32_MIN)
    return np.where(overflow, np.int64(INT32_MAX), q)


def rounding_divide_by_pot(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT``: x / 2^exponent, rounding half away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return (x >> e) + (remainder > threshold).astype(np.int64)


def multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, int32 q, int shift)``, double rounding.

    ``multiplier`` and ``shift`` broadcast against ``x`` (per-channel along the last axis
    when given as 1-D arrays of the channel count).
    """
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    left = np.maximum(s, 0)
    right = np.maximum(-s, 0)
    shifted = wrap_int32(x * (np.int64(1) << left))
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, multiplier), right)


def multiply_by_quantized_multiplier_int64(
    x: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier(int64 x, int32 q, int shift)`` (int16 paths)."""
    x = np.asarray(x, dtype=np.int64)
    q = np.asarray(multiplier, dtype=np.int64)
    reduced = np.where(q < 0x7FFF0000, (q + (1 << 15)) >> 16, np.int64(0x7FFF))
    total_shift = 15 - np.asarray(shift, dtype=np.int64)
    y = x * reduced + (np.int64(1) << (total_shift - 1))
    return wrap_int32(y >> total_shift)
