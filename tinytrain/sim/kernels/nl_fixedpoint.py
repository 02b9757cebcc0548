"""gemmlowp / TFLite fixed-point helpers used by the nonlinear kernels, vectorised in numpy.

Every array function takes and returns int64 arrays that hold int32 (or, for the
``*16`` helpers, int16) values, so products never overflow in numpy. Where the C
code wraps around (gemmlowp's plain ``Add``/``Sub``/``Neg`` on int32) the wrap is
reproduced with :func:`wrap_int32`; where it saturates, so do these functions.

A ``FixedPoint<int32_t, IB>`` value is represented by its raw int32 integer; the
number of integer bits ``IB`` is passed explicitly where it matters.

The scalar helpers at the end reproduce the double-precision parameter
computations of TFLite's ``quantization_util.cc`` (Python floats are C doubles).
"""

from __future__ import annotations

import math

import numpy as np

from tinytrain.sim.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
    wrap_int32,
)

INT16_MIN = -(2**15)
INT16_MAX = 2**15 - 1

__all__ = [
    "INT16_MAX",
    "INT16_MIN",
    "INT32_MAX",
    "INT32_MIN",
    "add",
    "calculate_input_radius",
    "count_leading_zeros_u32",
    "exp_on_negative_values",
    "get_inv_sqrt_quantized_multiplier_exp",
    "get_reciprocal",
    "log_x_for_x_greater_than_or_equal_to_1",
    "logistic",
    "mul",
    "multiply_by_quantized_multiplier_greater_than_one",
    "multiply_by_quantized_multiplier_smaller_than_one_exp",
    "neg",
    "one_minus_x_over_one_plus_x_for_x_in_0_1",
    "one_over_one_plus_x_for_x_in_0_1",
    "preprocess_log_softmax_scaling_exp",
    "preprocess_softmax_scaling",
    "rescale",
    "round_half_away",
    "rounding_divide_by_pot",
    "rounding_divide_by_pot16",
    "rounding_half_sum",
    "saturating_add",
    "saturating_doubling_high_mul16",
    "saturating_left_shift16",
    "saturating_rounding_doubling_high_mul",
    "saturating_rounding_doubling_high_mul16",
    "saturating_rounding_multiply_by_pot",
    "saturating_sub",
    "sub",
    "tanh",
    "wrap_int16",
    "wrap_int32",
]


def round_half_away(x: float) -> int:
    """C's ``std::round`` on a double: halves away from zero."""
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # exact in doubles, unlike floor(a + 0.5)
        r += 1
    return int(r) * (1 if x >= 0 else -1)


def _i64(x: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def _c_div(x: np.ndarray, d: int) -> np.ndarray:
    """C integer division (truncation toward zero) by a positive constant."""
    return np.where(x >= 0, x // d, -((-x) // d))


# --------------------------------------------------------------------------- int32 basics


def add(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``Add`` on int32 (wraps around, as the C code does in practice)."""
    return wrap_int32(_i64(a) + _i64(b))


def sub(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``Sub`` on int32 (wraps around)."""
    return wrap_int32(_i64(a) - _i64(b))


def neg(a: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``Neg`` on int32 (``-INT32_MIN`` wraps to ``INT32_MIN``)."""
    return wrap_int32(-_i64(a))


def saturating_add(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """TFLite ``SaturatingAddNonGemmlowp`` on int32."""
    return np.clip(_i64(a) + _i64(b), INT32_MIN, INT32_MAX)


def saturating_sub(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """TFLite ``SaturatingSub`` on int32."""
    return np.clip(_i64(a) - _i64(b), INT32_MIN, INT32_MAX)


def mul(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Fixed-point product (``operator*``): SaturatingRoundingDoublingHighMul."""
    return saturating_rounding_doubling_high_mul(_i64(a), _i64(b))


def rounding_half_sum(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``RoundingHalfSum`` on int32: (a + b ± 1) / 2, truncating division."""
    total = _i64(a) + _i64(b)
    sign = np.where(total >= 0, np.int64(1), np.int64(-1))
    return _c_div(total + sign, 2)


def saturating_rounding_multiply_by_pot(x: np.ndarray | int, exponent: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingMultiplyByPOT`` / TFLite ``...POTParam`` on int32.

    A positive exponent is a saturating left shift, a negative one a rounding right
    shift. ``exponent`` may be an array (TFLite's runtime-exponent variant, which is
    only ever called with exponents >= 0).
    """
    x = _i64(x)
    e = _i64(exponent)
    left = np.maximum(e, 0)
    right = np.maximum(-e, 0)
    threshold = (np.int64(1) << (31 - left)) - 1
    shifted = np.clip(x << left, INT32_MIN, INT32_MAX)
    shifted = np.where(x > threshold, np.int64(INT32_MAX), shifted)
    shifted = np.where(x < -threshold, np.int64(INT32_MIN), shifted)
    shifted = np.where(left == 0, x, shifted)
    return np.where(e < 0, rounding_divide_by_pot(x, right), shifted)


def rescale(x: np.ndarray | int, src_integer_bits: int, dst_integer_bits: int) -> np.ndarray:
    """gemmlowp ``Rescale<dst>(FixedPoint<int32, src>)``."""
    return saturating_rounding_multiply_by_pot(x, src_integer_bits - dst_integer_bits)


def count_leading_zeros_u32(x: np.ndarray | int) -> np.ndarray:
    """``CountLeadingZeros(uint32)`` of int32 values (reinterpreted as unsigned); 32 for 0."""
    u = _i64(x) & 0xFFFFFFFF
    _, exp = np.frexp(u.astype(np.float64))  # exact: u < 2^53
    return np.where(u == 0, np.int64(32), 32 - exp.astype(np.int64))


# --------------------------------------------------------------------------- exp / logistic / tanh

_EXP_CONSTANT_TERM = 1895147668  # exp(-1/8) in Q0.31
_ONE_THIRD = 715827883  # 1/3 in Q0.31
# (exponent, Q0.31 raw of exp(-2^exponent)) for gemmlowp's barrel shifter
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401), (4, 242))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    x = add(a, 1 << 28)
    x2 = mul(x, x)
    x3 = mul(x2, x)
    x4 = mul(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(add(mul(add(x4_over_4, x3), _ONE_THIRD), x2), 1)
    return add(_EXP_CONSTANT_TERM, mul(_EXP_CONSTANT_TERM, add(x, poly)))


def exp_on_negative_values(a: np.ndarray | int, integer_bits: int) -> np.ndarray:
    """gemmlowp ``exp_on_negative_values(FixedPoint<int32, IB>)`` -> Q0.31 raw."""
    a = _i64(a)
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_one_quarter = sub(a & (one_quarter - 1), one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        rescale(a_mod_quarter_minus_one_quarter, integer_bits, 0)
    )
    remainder = sub(a_mod_quarter_minus_one_quarter, a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = np.int64(1) << (fractional_bits + exponent)
            result = np.where((remainder & bit) != 0, mul(result, multiplier), result)
    if integer_bits > 5:
        clamp = -(1 << (36 - integer_bits))
        result = np.where(a < clamp, np.int64(0), result)
    return np.where(a == 0, np.int64(INT32_MAX), result)


_C48_OVER_17 = 1515870810  # Q2.29
_C_NEG32_OVER_17 = -1010580540  # Q2.29
_ONE_Q2 = 1 << 29


def _newton_reciprocal_q2(a: np.ndarray) -> np.ndarray:
    """Shared Newton-Raphson part of gemmlowp's 1/(1+x) and (1-x)/(1+x): returns Q2.29."""
    half_denominator = rounding_half_sum(a, INT32_MAX)
    x = add(_C48_OVER_17, mul(half_denominator, _C_NEG32_OVER_17))
    for _ in range(3):
        half_denominator_times_x = mul(half_denominator, x)
        one_minus = sub(_ONE_Q2, half_denominator_times_x)
        x = add(x, rescale(mul(x, one_minus), 4, 2))
    return x


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``one_over_one_plus_x_for_x_in_0_1`` (Q0.31 in and out)."""
    x = _newton_reciprocal_q2(_i64(a))
    return rescale(x, 1, 0)  # ExactMulByPot<-1> then Rescale<0>


def one_minus_x_over_one_plus_x_for_x_in_0_1(a: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``one_minus_x_over_one_plus_x_for_x_in_0_1`` (Q0.31 in and out)."""
    x = _newton_reciprocal_q2(_i64(a))
    return rescale(sub(x, _ONE_Q2), 2, 0)


def logistic(a: np.ndarray | int, integer_bits: int) -> np.ndarray:
    """gemmlowp ``logistic(FixedPoint<int32, IB>)`` -> Q0.31 raw."""
    a = _i64(a)
    positive = a > 0
    abs_input = np.where(positive, a, neg(a))
    if_positive = one_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(neg(abs_input), integer_bits))
    if_negative = sub(INT32_MAX, if_positive)
    result = np.where(positive, if_positive, if_negative)
    return np.where(a == 0, np.int64(1 << 30), result)


def tanh(a: np.ndarray | int, integer_bits: int) -> np.ndarray:
    """gemmlowp ``tanh(FixedPoint<int32, IB>)`` -> Q0.31 raw."""
    a = _i64(a)
    negative = a < 0
    n = np.where(negative, a, neg(a))
    t = one_minus_x_over_one_plus_x_for_x_in_0_1(exp_on_negative_values(n, integer_bits + 1))
    result = np.where(negative, neg(t), t)
    return np.where(a == 0, np.int64(0), result)


# --------------------------------------------------------------------------- reciprocal / log


def get_reciprocal(x: np.ndarray | int, x_integer_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``GetReciprocal``: returns (Q0.31 raw of the scaled reciprocal, num_bits_over_unit).

    ``x`` must be positive (the C code shifts by 32 for x == 0).
    """
    x = _i64(x)
    headroom_plus_one = count_leading_zeros_u32(x)
    num_bits_over_unit = x_integer_digits - headroom_plus_one
    shifted = ((x & 0xFFFFFFFF) << headroom_plus_one) & 0xFFFFFFFF
    shifted_sum_minus_one = wrap_int32(shifted - (1 << 31))
    return one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one), num_bits_over_unit


_LOG_2 = 1488522236
_SQRT_SQRT_HALF = 1805811301
_SQRT_HALF = 1518500250
_ONE_QUARTER = 536870912
_ALPHA_N = 117049297
_ALPHA_D = 127690142
_ALPHA_I = 1057819769
_ALPHA_F = 638450708


def log_x_for_x_greater_than_or_equal_to_1(
    x: np.ndarray | int, input_integer_bits: int, output_integer_bits: int
) -> np.ndarray:
    """TFLite ``log_x_for_x_greater_than_or_equal_to_1_impl<Out, In>`` -> Q(Out) raw."""
    z_a = _i64(x)
    accum_bits = output_integer_bits + 1
    shifted_quarter = rescale(_ONE_QUARTER, 0, accum_bits)

    z_a_headroom_plus_1 = count_leading_zeros_u32(z_a)
    r_a_tmp = saturating_rounding_multiply_by_pot(z_a, z_a_headroom_plus_1 - 1)
    r_a_raw = saturating_rounding_multiply_by_pot(mul(r_a_tmp, _SQRT_HALF), 1)
    z_a_pow_2_adj = saturating_add(
        saturating_rounding_multiply_by_pot(input_integer_bits - z_a_headroom_plus_1, 31 - accum_bits),
        shifted_quarter,
    )

    z_b = mul(z_a, _SQRT_HALF)
    z_b_headroom = count_leading_zeros_u32(z_b) - 1
    r_b_raw = saturating_rounding_multiply_by_pot(z_a, z_b_headroom)
    z_b_pow_2_adj = saturating_sub(
        saturating_rounding_multiply_by_pot(input_integer_bits - z_b_headroom, 31 - accum_bits),
        shifted_quarter,
    )

    r = np.minimum(r_a_raw, r_b_raw)
    z_pow_2_adj = np.maximum(z_a_pow_2_adj, z_b_pow_2_adj)

    p = rounding_half_sum(r, _SQRT_SQRT_HALF)
    q = sub(r, _SQRT_SQRT_HALF)
    q = add(q, q)

    common_sq = mul(q, q)
    num = add(mul(q, r), mul(mul(q, common_sq), _ALPHA_N))
    denom_minus_one_0 = add(mul(p, add(add(_ALPHA_I, q), mul(_ALPHA_D, common_sq))), mul(_ALPHA_F, q))
    recip_denom = one_over_one_plus_x_for_x_in_0_1(denom_minus_one_0)

    num_scaled = rescale(num, 0, accum_bits)
    return rescale(add(mul(z_pow_2_adj, _LOG_2), mul(num_scaled, recip_denom)), accum_bits, output_integer_bits)


def get_inv_sqrt_quantized_multiplier_exp(x: np.ndarray | int, reverse_shift: int) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``GetInvSqrtQuantizedMultiplierExp`` on int32 inputs >= 0.

    Returns ``(multiplier, shift)`` arrays (shift already multiplied by ``reverse_shift``).
    """
    x = _i64(x)
    small = x <= 1
    work = np.where(small, np.int64(2), x)
    shift = np.full(work.shape, 11, dtype=np.int64)
    while True:
        big = work >= (1 << 29)
        if not np.any(big):
            break
        work = np.where(big, _c_div(work, 4), work)
        shift = shift + big.astype(np.int64)
    max_left_shift_bits = count_leading_zeros_u32(work) - 1
    left_shift_bit_pairs = max_left_shift_bits // 2 - 1
    shift = shift - left_shift_bit_pairs
    work = work << (2 * left_shift_bit_pairs)
    # Newton-Raphson on Q3.28.
    fixed_input = work >> 1
    half_input = rounding_divide_by_pot(fixed_input, 1)
    half_three = (1 << 28) + (1 << 27)
    est = np.full(work.shape, 1 << 28, dtype=np.int64)
    for _ in range(5):
        est3 = rescale(mul(mul(est, est), est), 9, 3)
        est = rescale(sub(mul(half_three, est), mul(half_input, est3)), 6, 3)
    est = mul(est, _SQRT_HALF)
    negative = shift < 0
    est = np.where(negative, wrap_int32(est << np.maximum(-shift, 0)), est)
    shift = np.where(negative, np.int64(0), shift)
    est = np.where(small, np.int64(INT32_MAX), est)
    shift = np.where(small, np.int64(0), shift)
    return est, shift * reverse_shift


# --------------------------------------------------------------------------- multipliers


def multiply_by_quantized_multiplier_greater_than_one(
    x: np.ndarray | int, multiplier: int, left_shift: int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplierGreaterThanOne`` (double rounding)."""
    return saturating_rounding_doubling_high_mul(wrap_int32(_i64(x) * (1 << left_shift)), multiplier)


def multiply_by_quantized_multiplier_smaller_than_one_exp(
    x: np.ndarray | int, multiplier: int, left_shift: int
) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplierSmallerThanOneExp`` (double rounding)."""
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(_i64(x), multiplier), -left_shift)


# --------------------------------------------------------------------------- int16 helpers


def wrap_int16(x: np.ndarray | int) -> np.ndarray:
    """Two's-complement wrap to int16 (kept as int64)."""
    return ((_i64(x) + 2**15) & 0xFFFF) - 2**15


def saturating_rounding_doubling_high_mul16(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """gemmlowp ``SaturatingRoundingDoublingHighMul<int16_t>``."""
    a = _i64(a)
    b = _i64(b)
    ab = a * b
    nudge = np.where(ab >= 0, np.int64(1 << 14), np.int64(1 - (1 << 14)))
    result = wrap_int16(_c_div(ab + nudge, 1 << 15))
    return np.where((a == INT16_MIN) & (b == INT16_MIN), np.int64(INT16_MAX), result)


def saturating_doubling_high_mul16(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """TFLite's int16 ``SaturatingDoublingHighMul`` (truncating, like SQDMULH)."""
    a = _i64(a)
    b = _i64(b)
    result = wrap_int16(_c_div(a * b, 1 << 15))
    return np.where((a == INT16_MIN) & (b == INT16_MIN), np.int64(INT16_MAX), result)


def saturating_left_shift16(x: np.ndarray | int, amount: int) -> np.ndarray:
    """TFLite's int16 ``SaturatingLeftShift``."""
    return np.clip(_i64(x) * (1 << amount), INT16_MIN, INT16_MAX)


def rounding_divide_by_pot16(x: np.ndarray | int, exponent: int) -> np.ndarray:
    """gemmlowp ``RoundingDivideByPOT<int16_t>`` (mask computed in int16, as in C)."""
    x = _i64(x)
    mask = int(wrap_int16((1 << exponent) - 1))
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0).astype(np.int64)
    return wrap_int16((x >> exponent) + (remainder > threshold).astype(np.int64))


# --------------------------------------------------------------------------- scalar Prepare helpers


def preprocess_softmax_scaling(beta: float, input_scale: float, input_integer_bits: int) -> tuple[float, int, int]:
    """TFLite ``PreprocessSoftmaxScaling`` (double rounding build).

    Returns ``(real_multiplier, quantized_multiplier, left_shift)``. The caller must
    check ``real_multiplier > 1`` (TFLite aborts otherwise).
    """
    max_real_multiplier = float((1 << 31) - 1)
    real = min(beta * input_scale * float(1 << (31 - input_integer_bits)), max_real_multiplier)
    q, shift = quantize_multiplier(real)
    return real, q, shift


def preprocess_log_softmax_scaling_exp(
    beta: float, input_scale: float, input_integer_bits: int
) -> tuple[float, int, int, float, int, int]:
    """TFLite ``PreprocessLogSoftmaxScalingExp``.

    Returns ``(real_multiplier, multiplier, left_shift, real_reverse_divisor,
    reverse_divisor, reverse_left_shift)``; the caller checks the ranges TFLite
    asserts (``real_multiplier > 1``, ``0 < real_reverse_divisor < 1``).
    """
    real, q, left_shift = preprocess_softmax_scaling(beta, input_scale, input_integer_bits)
    # C: (1 << (31 - left_shift)) is an int; left_shift >= 1 whenever real > 1.
    numerator = _c_int32_shift_left_one(31 - left_shift)
    real_reverse = float(numerator) / float(q) if q != 0 else math.inf
    rq, rshift = quantize_multiplier(real_reverse) if math.isfinite(real_reverse) else (0, 0)
    return real, q, left_shift, real_reverse, rq, rshift


def _c_int32_shift_left_one(amount: int) -> int:
    """``1 << amount`` evaluated as a C int (wraps at bit 31)."""
    return int(wrap_int32(np.asarray(1 << amount, dtype=np.int64))) if 0 <= amount < 63 else 0


def calculate_input_radius(input_integer_bits: int, input_left_shift: int, total_signed_bits: int = 31) -> int:
    """TFLite ``CalculateInputRadius`` (float build): floor of a double."""
    max_input_rescaled = (
        1.0
        * ((1 << input_integer_bits) - 1)
        * float(1 << (total_signed_bits - input_integer_bits))
        / float(1 << input_left_shift)
    )
    return math.floor(max_input_rescaled)
