/*
 * Fixed-point primitives of TFLite Micro's reference kernels (double rounding), the
 * twins of tinytrain/sim/fixedpoint.py. Written here from their documented semantics.
 */
#ifndef TT_FIXEDPOINT_H
#define TT_FIXEDPOINT_H

#include "tt_common.h"

/* gemmlowp SaturatingRoundingDoublingHighMul (numpy: saturating_rounding_doubling_high_mul). */
static inline int32_t tt_srdhm(int32_t a, int32_t b) {
    if (a == TT_INT32_MIN && b == TT_INT32_MIN) {
        return TT_INT32_MAX;
    }
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? ((int64_t)1 << 30) : (1 - ((int64_t)1 << 30));
    int64_t total = ab + nudge;
    /* C division truncates toward zero, as the numpy twin spells out. */
    return (int32_t)(total / ((int64_t)1 << 31));
}

/* gemmlowp RoundingDivideByPOT: x / 2^e rounding half away from zero, 0 <= e <= 31
 * (numpy: rounding_divide_by_pot). */
static inline int32_t tt_rdbpot32(int32_t x, int e) {
    int32_t mask = (int32_t)(((uint32_t)1 << e) - 1u);
    int32_t remainder = x & mask;
    int32_t threshold = tt_asr32(mask, 1) + (x < 0 ? 1 : 0);
    return tt_asr32(x, e) + (remainder > threshold ? 1 : 0);
}

/* The same rounding on int64 values, 0 <= e <= 62 (numpy: rounding_divide_by_pot on
 * int64 arrays, as the training kernels use it). */
static inline int64_t tt_rdbpot64(int64_t x, int e) {
    int64_t mask = (int64_t)(((uint64_t)1 << e) - 1u);
    int64_t remainder = x & mask;
    int64_t threshold = tt_asr64(mask, 1) + (x < 0 ? 1 : 0);
    return tt_asr64(x, e) + (remainder > threshold ? 1 : 0);
}

/* TFLite MultiplyByQuantizedMultiplier(int32 x, int32 q, int shift), shift > 0 = left
 * (numpy: multiply_by_quantized_multiplier). */
static inline int32_t tt_mbqm(int32_t x, int32_t q, int shift) {
    int left = shift > 0 ? shift : 0;
    int right = shift > 0 ? 0 : -shift;
    int32_t shifted = tt_wrap32((int64_t)x * ((int64_t)1 << left));
    return tt_rdbpot32(tt_srdhm(shifted, q), right);
}

#endif /* TT_FIXEDPOINT_H */
