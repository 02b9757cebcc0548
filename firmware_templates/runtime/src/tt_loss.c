/*
 * Softmax cross-entropy gradient of int8 logits (tt_loss.h). The softmax is written here
 * from gemmlowp's / TFLite's documented fixed-point semantics; each static helper is the
 * twin of the function of the same name in tinytrain/sim/kernels/nl_fixedpoint.py.
 */
#include "tt_loss.h"

#include "tt_fixedpoint.h"
#include "tt_grad.h"

#define SCALED_DIFF_INTEGER_BITS 5
#define ACCUMULATION_INTEGER_BITS 12
#define PROB_BITS 16
#define PROB_ZERO_POINT (-32768)

static inline int32_t fp_add(int32_t a, int32_t b) {
    return tt_wrap32((int64_t)a + (int64_t)b);
}

static inline int32_t fp_sub(int32_t a, int32_t b) {
    return tt_wrap32((int64_t)a - (int64_t)b);
}

/* saturating_rounding_multiply_by_pot with a constant exponent */
static inline int32_t fp_srmpot(int32_t x, int32_t e) {
    if (e < 0) {
        return tt_rdbpot32(x, -e);
    }
    if (e == 0) {
        return x;
    }
    int32_t threshold = (int32_t)(((uint32_t)1 << (31 - e)) - 1u);
    if (x > threshold) {
        return TT_INT32_MAX;
    }
    if (x < -threshold) {
        return TT_INT32_MIN;
    }
    return x * ((int32_t)1 << e);
}

static inline int32_t fp_rescale(int32_t x, int32_t src_integer_bits, int32_t dst_integer_bits) {
    return fp_srmpot(x, src_integer_bits - dst_integer_bits);
}

static inline int32_t fp_rounding_half_sum(int32_t a, int32_t b) {
    int64_t total = (int64_t)a + (int64_t)b;
    int64_t sign = total >= 0 ? 1 : -1;
    return (int32_t)((total + sign) / 2); /* C division truncates toward zero */
}

static int32_t exp_on_interval_between_negative_one_quarter_and_0_excl(int32_t a) {
    const int32_t constant_term = 1895147668; /* exp(-1/8), Q0.31 */
    const int32_t one_third = 715827883;      /* 1/3, Q0.31 */
    int32_t x = fp_add(a, (int32_t)1 << 28);
    int32_t x2 = tt_srdhm(x, x);
    int32_t x3 = tt_srdhm(x2, x);
    int32_t x4 = tt_srdhm(x2, x2);
    int32_t x4_over_4 = tt_rdbpot32(x4, 2);
    int32_t poly = tt_rdbpot32(fp_add(tt_srdhm(fp_add(x4_over_4, x3), one_third), x2), 1);
    return fp_add(constant_term, tt_srdhm(constant_term, fp_add(x, poly)));
}

/* exp_on_negative_values for 5 integer bits (Q5.26 in, Q0.31 out) */
static int32_t exp_on_negative_values_q5(int32_t a) {
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t fractional_bits = 31 - SCALED_DIFF_INTEGER_BITS;
    const int32_t one_quarter = (int32_t)1 << (fractional_bits - 2);
    int32_t a_mod_quarter_minus_one_quarter =
        fp_sub((int32_t)((uint32_t)a & (uint32_t)(one_quarter - 1)), one_quarter);
    int32_t result = exp_on_interval_between_negative_one_quarter_and_0_excl(
        fp_rescale(a_mod_quarter_minus_one_quarter, SCALED_DIFF_INTEGER_BITS, 0));
    uint32_t remainder = (uint32_t)fp_sub(a_mod_quarter_minus_one_quarter, a);
    for (int32_t k = 0; k < 7; ++k) { /* exponents -2 .. 4, all below the 5 integer bits */
        if (remainder & ((uint32_t)1 << (fractional_bits - 2 + k))) {
            result = tt_srdhm(result, barrel[k]);
        }
    }
    return a == 0 ? TT_INT32_MAX : result;
}

/* one_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out) */
static int32_t one_over_one_plus_x_for_x_in_0_1(int32_t a) {
    const int32_t c48_over_17 = 1515870810;      /* Q2.29 */
    const int32_t c_neg32_over_17 = -1010580540; /* Q2.29 */
    const int32_t one_q2 = (int32_t)1 << 29;
    int32_t half_denominator = fp_rounding_half_sum(a, TT_INT32_MAX);
    int32_t x = fp_add(c48_over_17, tt_srdhm(half_denominator, c_neg32_over_17));
    for (int32_t i = 0; i < 3; ++i) {
        int32_t half_denominator_times_x = tt_srdhm(half_denominator, x);
        int32_t one_minus = fp_sub(one_q2, half_denominator_times_x);
        x = fp_add(x, fp_rescale(tt_srdhm(x, one_minus), 4, 2));
    }
    return fp_rescale(x, 1, 0);
}

static int32_t count_leading_zeros_u32(uint32_t u) {
    return 32 - tt_bitlen_u32(u);
}

/* The exponential of one logit difference, Q0.31. */
static inline int32_t softmax_exp(const tt_softmax_ce_params *p, int32_t diff) {
    int32_t shifted = tt_wrap32((int64_t)diff * ((int64_t)1 << p->input_left_shift));
    return exp_on_negative_values_q5(tt_srdhm(shifted, p->input_multiplier));
}

/* p - onehot(label) in units of 2^-16 from the int16 probability q; zero where the logit is
 * saturated and the gradient would push it further out (+127 pushed up, -128 pushed down). */
static inline int32_t ce_acc(int32_t q, int8_t logit, int32_t is_label) {
    const int32_t acc = q - PROB_ZERO_POINT - (is_label ? ((int32_t)1 << PROB_BITS) : 0);
    if ((logit == 127 && acc < 0) || (logit == -128 && acc > 0)) {
        return 0;
    }
    return acc;
}

/* Twin of tinytrain.train.kernels.loss.softmax_ce_grad. */
tt_status tt_softmax_ce_grad_s8(const tt_softmax_ce_params *p, const int8_t *logits, int32_t label, int16_t *g,
                                int32_t *e, int32_t *p_label, int32_t *predicted) {
    if (p == NULL || logits == NULL || g == NULL || e == NULL || p_label == NULL || predicted == NULL) {
        return TT_ERR_ARG;
    }
    const int32_t n = p->classes;
    if (n < 1 || n > TT_SOFTMAX_CE_MAX_CLASSES || p->input_multiplier <= 0 || p->input_left_shift < 0 ||
        p->input_left_shift > 31 || p->diff_min > 0) {
        return TT_ERR_ARG;
    }
    if (label < 0 || label >= n) {
        return TT_ERR_RANGE;
    }
    int32_t max_x = logits[0];
    int32_t arg = 0;
    for (int32_t i = 1; i < n; ++i) {
        if (logits[i] > max_x) {
            max_x = logits[i];
            arg = i;
        }
    }
    /* Sum of the exponentials in Q12.19 (wraps like the reference; cannot for <= 4095 classes). */
    int32_t total = 0;
    for (int32_t i = 0; i < n; ++i) {
        int32_t diff = (int32_t)logits[i] - max_x;
        if (diff >= p->diff_min) {
            total = fp_add(total, fp_rescale(softmax_exp(p, diff), 0, ACCUMULATION_INTEGER_BITS));
        }
    }
    if (total <= 0) {
        return TT_ERR_RANGE;
    }
    /* GetReciprocal */
    int32_t headroom_plus_one = count_leading_zeros_u32((uint32_t)total);
    int32_t bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom_plus_one;
    int32_t shifted_minus_one = tt_wrap32((int64_t)(((uint32_t)total << headroom_plus_one)) - ((int64_t)1 << 31));
    int32_t reciprocal = one_over_one_plus_x_for_x_in_0_1(shifted_minus_one);
    int32_t exponent = bits_over_unit + 31 - PROB_BITS;
    if (exponent < 0 || exponent > 31) {
        return TT_ERR_RANGE; /* TFLite Micro aborts */
    }
    /* Pass 1: the int16 probabilities p_q into g, and max |acc|. */
    uint32_t m = 0u;
    for (int32_t i = 0; i < n; ++i) {
        int32_t diff = (int32_t)logits[i] - max_x;
        int32_t q = PROB_ZERO_POINT;
        if (diff >= p->diff_min) {
            int64_t unsat = (int64_t)tt_rdbpot32(tt_srdhm(reciprocal, softmax_exp(p, diff)), exponent);
            q = (int32_t)tt_clamp64(unsat + PROB_ZERO_POINT, TT_INT16_MIN, TT_INT16_MAX);
        }
        g[i] = (int16_t)q;
        int32_t acc = ce_acc(q, logits[i], i == label);
        uint32_t a = tt_abs_u32(acc);
        m = a > m ? a : m;
    }
    *p_label = (int32_t)g[label] - PROB_ZERO_POINT;
    /* Pass 2: normalize acc in place. */
    int32_t r = tt_grad_shift_u32(m, TT_GRAD_BITS);
    for (int32_t i = 0; i < n; ++i) {
        int32_t acc = ce_acc(g[i], logits[i], i == label);
        g[i] = tt_grad_scale32(acc, r);
    }
    *e = -PROB_BITS + r;
    *predicted = arg;
    return TT_OK;
}
