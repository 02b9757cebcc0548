/*
 * Gradient tensors: an int16 mantissa array g and one int32 exponent e per tensor,
 * real gradient g * 2^e (docs/numerics.md, "Gradient tensors").
 *
 * Twins of tinytrain/train/kernels/gradient.py (normalize) and of add_grads in
 * tinytrain/train/executor.py (the sum of two gradients of one tensor).
 *
 * normalize(acc, e_acc, bits): m = max|acc|, r = bitlen(m) - bits (r = 0 when m = 0),
 * g = acc * 2^-r (exact) for r < 0, RoundingDivideByPOT(acc, r) for r > 0, e = e_acc + r.
 * The inline helpers below are its building blocks for kernels that normalize in two
 * passes (pass 1: the maximum magnitude of the sums; pass 2: recompute and write
 * tt_grad_scale32/64(sum, r)), so that no int32/int64 copy of a whole gradient exists.
 *
 * Exponents: every kernel accepts gradient exponents with |e| <= TT_GRAD_EXP_LIMIT
 * (2^30) and refuses others with TT_ERR_RANGE, so no exponent arithmetic can overflow.
 */
#ifndef TT_GRAD_H
#define TT_GRAD_H

#include "tt_common.h"
#include "tt_fixedpoint.h"

#define TT_GRAD_BITS 14                /* default mantissa bits: |g| <= 2^14 */
#define TT_GRAD_EXP_LIMIT ((int32_t)1 << 30) /* legal |exponent| of a gradient */
#define TT_GRAD_SUM_GUARD_BITS 16      /* add_grads: guard bits of the larger-exponent term */

/* Number of bits of m (0 for 0): numpy gradient.bit_length. */
static inline int32_t tt_bitlen_u32(uint32_t m) {
    int32_t n = 0;
    if (m >= 0x10000u) { m >>= 16; n += 16; }
    if (m >= 0x100u) { m >>= 8; n += 8; }
    if (m >= 0x10u) { m >>= 4; n += 4; }
    if (m >= 0x4u) { m >>= 2; n += 2; }
    if (m >= 0x2u) { m >>= 1; n += 1; }
    return n + (int32_t)m;
}

static inline int32_t tt_bitlen_u64(uint64_t m) {
    uint32_t hi = (uint32_t)(m >> 32);
    return hi != 0u ? 32 + tt_bitlen_u32(hi) : tt_bitlen_u32((uint32_t)m);
}

/* |x| as an unsigned value (defined for INT32_MIN / INT64_MIN). */
static inline uint32_t tt_abs_u32(int32_t x) {
    return x < 0 ? 0u - (uint32_t)x : (uint32_t)x;
}

static inline uint64_t tt_abs_u64(int64_t x) {
    return x < 0 ? (uint64_t)0 - (uint64_t)x : (uint64_t)x;
}

/* The normalization shift r for max|acc| = m (0 when m = 0). 1 <= bits <= 14. */
static inline int32_t tt_grad_shift_u32(uint32_t m, int32_t bits) {
    return m == 0u ? 0 : tt_bitlen_u32(m) - bits;
}

static inline int32_t tt_grad_shift_u64(uint64_t m, int32_t bits) {
    return m == 0u ? 0 : tt_bitlen_u64(m) - bits;
}

/* RoundingDivideByPOT of an int64 for 0 <= e <= 63 (numpy: rounding_divide_by_pot). */
static inline int64_t tt_grad_rdbpot64(int64_t x, int32_t e) {
    uint64_t mask = ((uint64_t)1 << e) - 1u;
    uint64_t remainder = (uint64_t)x & mask;
    uint64_t threshold = (mask >> 1) + (x < 0 ? 1u : 0u);
    return tt_asr64(x, e) + (remainder > threshold ? 1 : 0);
}

/* One element of normalize: acc (with |acc| <= m) at the shift r of m. */
static inline int16_t tt_grad_scale32(int32_t acc, int32_t r) {
    if (r < 0) {
        return (int16_t)(acc * ((int32_t)1 << -r));
    }
    return (int16_t)(r > 0 ? tt_rdbpot32(acc, r) : acc);
}

static inline int16_t tt_grad_scale64(int64_t acc, int32_t r) {
    if (r < 0) {
        return (int16_t)(acc * ((int64_t)1 << -r));
    }
    return (int16_t)(r > 0 ? tt_grad_rdbpot64(acc, r) : acc);
}

static inline int tt_grad_exp_ok(int32_t e) {
    return e >= -TT_GRAD_EXP_LIMIT && e <= TT_GRAD_EXP_LIMIT;
}

/*
 * normalize of an int32 accumulator (numpy: tinytrain.train.kernels.gradient.normalize).
 * acc[n] (any int32 values), real value acc * 2^e_acc; writes g[n] (|g| <= 2^bits) and
 * *e. 1 <= bits <= 14. g must not overlap acc.
 */
tt_status tt_normalize_s32(const int32_t *acc, int32_t n, int32_t e_acc, int32_t bits, int16_t *g, int32_t *e);

/* The same for an int64 accumulator (any int64 values). */
tt_status tt_normalize_s64(const int64_t *acc, int32_t n, int32_t e_acc, int32_t bits, int16_t *g, int32_t *e);

/*
 * Sum of two gradients of one tensor (numpy: tinytrain.train.executor.add_grads):
 * with hi the term of larger exponent (a on a tie) and d = e_hi - e_lo,
 * acc = g_hi * 2^16 + (d < 16 ? g_lo * 2^(16-d) : RoundingDivideByPOT(g_lo, d - 16)),
 * then normalize(acc, e_hi - 16). Two passes over n elements, no scratch; out may be
 * a or b (elementwise). Legal: d <= 79 (the numpy twin shifts int64 by d - 16 and is
 * only defined below 64; the C caps the shift at 62, which gives the same 0 there).
 */
tt_status tt_add_grads_s16(const int16_t *a, int32_t e_a, const int16_t *b, int32_t e_b, int32_t n, int16_t *out,
                           int32_t *e_out);

#endif /* TT_GRAD_H */
