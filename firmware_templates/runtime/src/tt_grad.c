/*
 * Gradient normalization and the gradient sum (see tt_grad.h).
 */
#include "tt_grad.h"

/* The argument checks of tt_normalize_s32 and tt_normalize_s64. */
static tt_status normalize_check(const void *acc, int32_t n, int32_t e_acc, int32_t bits, const int16_t *g,
                                 const int32_t *e) {
    if (n < 0 || bits < 1 || bits > TT_GRAD_BITS || e == NULL || (n > 0 && (acc == NULL || g == NULL))) {
        return TT_ERR_ARG;
    }
    if (!tt_grad_exp_ok(e_acc)) {
        return TT_ERR_RANGE;
    }
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.gradient.normalize (int32 accumulators). */
tt_status tt_normalize_s32(const int32_t *acc, int32_t n, int32_t e_acc, int32_t bits, int16_t *g, int32_t *e) {
    const tt_status st = normalize_check(acc, n, e_acc, bits, g, e);
    if (st != TT_OK) {
        return st;
    }
    uint32_t m = 0u;
    for (int32_t i = 0; i < n; ++i) {
        uint32_t a = tt_abs_u32(acc[i]);
        m = a > m ? a : m;
    }
    int32_t r = tt_grad_shift_u32(m, bits);
    for (int32_t i = 0; i < n; ++i) {
        g[i] = tt_grad_scale32(acc[i], r);
    }
    *e = e_acc + r;
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.gradient.normalize (int64 accumulators). */
tt_status tt_normalize_s64(const int64_t *acc, int32_t n, int32_t e_acc, int32_t bits, int16_t *g, int32_t *e) {
    const tt_status st = normalize_check(acc, n, e_acc, bits, g, e);
    if (st != TT_OK) {
        return st;
    }
    uint64_t m = 0u;
    for (int32_t i = 0; i < n; ++i) {
        uint64_t a = tt_abs_u64(acc[i]);
        m = a > m ? a : m;
    }
    int32_t r = tt_grad_shift_u64(m, bits);
    for (int32_t i = 0; i < n; ++i) {
        g[i] = tt_grad_scale64(acc[i], r);
    }
    *e = e_acc + r;
    return TT_OK;
}

/* acc of add_grads for one element: hi * 2^16 + the aligned lo term. */
static inline int64_t add_grads_acc(int16_t hi, int16_t lo, int32_t d) {
    int64_t t_lo;
    if (d >= TT_GRAD_SUM_GUARD_BITS) {
        int32_t s = d - TT_GRAD_SUM_GUARD_BITS;
        t_lo = tt_grad_rdbpot64((int64_t)lo, s < 62 ? s : 62);
    } else {
        t_lo = (int64_t)lo * ((int64_t)1 << (TT_GRAD_SUM_GUARD_BITS - d));
    }
    return (int64_t)hi * ((int64_t)1 << TT_GRAD_SUM_GUARD_BITS) + t_lo;
}

/* Twin of tinytrain.train.executor.add_grads. */
tt_status tt_add_grads_s16(const int16_t *a, int32_t e_a, const int16_t *b, int32_t e_b, int32_t n, int16_t *out,
                           int32_t *e_out) {
    if (n < 0 || e_out == NULL || (n > 0 && (a == NULL || b == NULL || out == NULL))) {
        return TT_ERR_ARG;
    }
    if (!tt_grad_exp_ok(e_a) || !tt_grad_exp_ok(e_b)) {
        return TT_ERR_RANGE;
    }
    const int16_t *hi = e_a >= e_b ? a : b;
    const int16_t *lo = e_a >= e_b ? b : a;
    int32_t e_hi = e_a >= e_b ? e_a : e_b;
    int32_t e_lo = e_a >= e_b ? e_b : e_a;
    int64_t d64 = (int64_t)e_hi - (int64_t)e_lo;
    int32_t d = d64 > 100 ? 100 : (int32_t)d64; /* any d >= 80 gives the same terms */
    uint64_t m = 0u;
    for (int32_t i = 0; i < n; ++i) {
        uint64_t v = tt_abs_u64(add_grads_acc(hi[i], lo[i], d));
        m = v > m ? v : m;
    }
    int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    for (int32_t i = 0; i < n; ++i) {
        int64_t acc = add_grads_acc(hi[i], lo[i], d);
        out[i] = tt_grad_scale64(acc, r);
    }
    *e_out = e_hi - TT_GRAD_SUM_GUARD_BITS + r;
    return TT_OK;
}
