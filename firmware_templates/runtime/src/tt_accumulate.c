/* Gradient accumulators and momentum buffers; see tt_accumulate.h. */
#include "tt_accumulate.h"

#include "tt_fixedpoint.h"
#include "tt_internal.h"

#define MAX_RDBP 62
#define Q15_SHIFT 15

int32_t tt_acc_mantissa_bytes(int32_t bits) {
    if (bits < 2 || bits > TT_ACC_BITS) {
        return 0;
    }
    return bits <= 6 ? 1 : (bits <= 14 ? 2 : 4);
}

/* Index of element t of row r in the parameter layout. */
static int64_t elem_index(const tt_acc_params *p, int32_t row, int32_t t) {
    return p->row_major ? (int64_t)row * p->row_len + t : (int64_t)row + (int64_t)t * p->rows;
}

static int64_t m_get(int32_t bytes, const void *m, int64_t i) {
    if (bytes == 1) {
        return ((const int8_t *)m)[i];
    }
    if (bytes == 2) {
        return ((const int16_t *)m)[i];
    }
    return ((const int32_t *)m)[i];
}

/* Stores a mantissa (|v| <= 2^bits, so it fits its storage type). */
static void m_set(int32_t bytes, void *m, int64_t i, int64_t v) {
    if (bytes == 1) {
        ((int8_t *)m)[i] = (int8_t)v;
    } else if (bytes == 2) {
        ((int16_t *)m)[i] = (int16_t)v;
    } else {
        ((int32_t *)m)[i] = (int32_t)v;
    }
}

/* One element of norm(): a · 2^-r (exact) for r < 0, RoundingDivideByPOT(a, r) for r >= 0. */
static int64_t norm_value(int64_t a, int r) {
    return r < 0 ? a * ((int64_t)1 << -r) : tt_rdbpot64(a, r);
}

static int valid_params(const tt_acc_params *p) {
    return p != NULL && p->rows >= 0 && p->row_len >= 0 && tt_acc_mantissa_bytes(p->bits) != 0;
}

static int valid_state(const tt_acc_params *p, const tt_acc_state *s) {
    return s != NULL && s->n != NULL && (p->rows == 0 || (s->e != NULL && (p->row_len == 0 || s->m != NULL)));
}

static int valid_src(const tt_grad_row *g, int32_t n) {
    if (g == NULL || (n > 0 && g->data == NULL)) {
        return 0;
    }
    return g->elem_bytes == 1 || g->elem_bytes == 2 || g->elem_bytes == 4 || g->elem_bytes == 8;
}

/* Row `row` of s <- s + g · 2^e_g (numpy: accumulate._norm_rows of G, then _sum_rows). */
static void add_row(const tt_acc_params *p, const tt_acc_state *s, int32_t row, const tt_grad_row *g, int64_t e_g) {
    const int32_t n = p->row_len;
    const int bits = (int)p->bits;
    const int32_t bytes = tt_acc_mantissa_bytes(p->bits);
    uint64_t top = 0;
    for (int32_t t = 0; t < n; ++t) {
        uint64_t a = tt_abs_u64(tt_grad_row_at(g, t));
        top = a > top ? a : top;
    }
    if (top == 0u) {
        return; /* an all-zero gradient row leaves the state row unchanged */
    }
    const int r_g = tt_bitlen_u64(top) - bits;
    const int64_t e_new_g = e_g + r_g;
    int zero_state = 1;
    for (int32_t t = 0; t < n && zero_state; ++t) {
        zero_state = m_get(bytes, s->m, elem_index(p, row, t)) == 0;
    }
    if (zero_state) { /* the state row is replaced by the normalized gradient row */
        for (int32_t t = 0; t < n; ++t) {
            m_set(bytes, s->m, elem_index(p, row, t), norm_value(tt_grad_row_at(g, t), r_g));
        }
        s->e[row] = tt_wrap32(e_new_g);
        return;
    }
    const int64_t e_s = (int64_t)s->e[row];
    const int state_hi = e_s >= e_new_g;
    const int64_t e_hi = state_hi ? e_s : e_new_g;
    const int64_t d = state_hi ? e_s - e_new_g : e_new_g - e_s;
    /* Two passes over the row: the max of the aligned sums, then the normalized sums. */
    uint64_t top_sum = 0;
    for (int pass = 0; pass < 2; ++pass) {
        const int r = top_sum == 0u ? 0 : tt_bitlen_u64(top_sum) - bits;
        for (int32_t t = 0; t < n; ++t) {
            const int64_t i = elem_index(p, row, t);
            const int64_t ms = m_get(bytes, s->m, i);
            const int64_t mg = norm_value(tt_grad_row_at(g, t), r_g);
            const int64_t hi = state_hi ? ms : mg;
            const int64_t lo = state_hi ? mg : ms;
            int64_t t_lo;
            if (d <= TT_ACC_GUARD_BITS) {
                t_lo = lo * ((int64_t)1 << (TT_ACC_GUARD_BITS - d));
            } else {
                t_lo = tt_rdbpot64(lo, d - TT_ACC_GUARD_BITS < MAX_RDBP ? (int)(d - TT_ACC_GUARD_BITS) : MAX_RDBP);
            }
            const int64_t acc = hi * ((int64_t)1 << TT_ACC_GUARD_BITS) + t_lo;
            if (pass == 0) {
                uint64_t a = tt_abs_u64(acc);
                top_sum = a > top_sum ? a : top_sum;
            } else {
                m_set(bytes, s->m, i, norm_value(acc, r));
            }
        }
        if (pass == 1) {
            s->e[row] = tt_wrap32(e_hi - TT_ACC_GUARD_BITS + r);
        }
    }
}

/* Row `row` of v <- norm(v.m · mu_q15, v.e - 15), stored (numpy: the first line of mom_step). */
static void scale_row(const tt_acc_params *p, const tt_acc_state *v, int32_t row, int32_t mu_q15) {
    const int32_t n = p->row_len;
    const int32_t bytes = tt_acc_mantissa_bytes(p->bits);
    uint64_t top = 0;
    for (int32_t t = 0; t < n; ++t) {
        uint64_t a = tt_abs_u64(m_get(bytes, v->m, elem_index(p, row, t)) * (int64_t)mu_q15);
        top = a > top ? a : top;
    }
    const int r = top == 0u ? 0 : tt_bitlen_u64(top) - (int)p->bits;
    for (int32_t t = 0; t < n; ++t) {
        const int64_t i = elem_index(p, row, t);
        m_set(bytes, v->m, i, norm_value(m_get(bytes, v->m, i) * (int64_t)mu_q15, r));
    }
    v->e[row] = tt_wrap32((int64_t)v->e[row] - Q15_SHIFT + r);
}

/* The row source of row `row` of a state's mantissas times `scale`. */
static tt_grad_row state_row(const tt_acc_params *p, const tt_acc_state *s, int32_t row, int32_t scale) {
    tt_grad_row g;
    const int32_t bytes = tt_acc_mantissa_bytes(p->bits);
    g.data = (const int8_t *)s->m + elem_index(p, row, 0) * bytes;
    g.elem_bytes = bytes;
    g.stride = p->row_major ? 1 : p->rows;
    g.scale = scale;
    return g;
}

/* Twin of tinytrain/train/kernels/accumulate.py:acc_init. */
tt_status tt_acc_init(const tt_acc_params *p, const tt_acc_state *s) {
    if (!valid_params(p) || !valid_state(p, s)) {
        return TT_ERR_ARG;
    }
    const int32_t bytes = tt_acc_mantissa_bytes(p->bits);
    for (int32_t r = 0; r < p->rows; ++r) {
        for (int32_t t = 0; t < p->row_len; ++t) {
            m_set(bytes, s->m, elem_index(p, r, t), 0);
        }
        s->e[r] = 0;
    }
    *s->n = 0;
    return TT_OK;
}

tt_status tt_acc_add_row_src(const tt_acc_params *p, const tt_acc_state *s, int32_t row, const tt_grad_row *grad,
                             int64_t e) {
    if (!valid_params(p) || !valid_state(p, s) || row < 0 || row >= p->rows || !valid_src(grad, p->row_len)) {
        return TT_ERR_ARG;
    }
    add_row(p, s, row, grad, e);
    return TT_OK;
}

tt_status tt_acc_add_row_s64(const tt_acc_params *p, const tt_acc_state *s, int32_t row, const int64_t *grad,
                             int32_t e) {
    tt_grad_row g = {grad, 8, 1, 1};
    return tt_acc_add_row_src(p, s, row, &g, (int64_t)e);
}

tt_status tt_acc_commit(const tt_acc_state *s) {
    if (s == NULL || s->n == NULL) {
        return TT_ERR_ARG;
    }
    *s->n = tt_wrap32((int64_t)*s->n + 1);
    return TT_OK;
}

/* Row r of an int64 gradient in the parameter layout, as a row source. */
static tt_grad_row s64_row(const tt_acc_params *p, const int64_t *grad, int32_t r) {
    tt_grad_row g;
    g.data = grad + elem_index(p, r, 0);
    g.elem_bytes = 8;
    g.stride = p->row_major ? 1 : p->rows;
    g.scale = 1;
    return g;
}

/* Twin of tinytrain/train/kernels/accumulate.py:acc_add (one exponent for all rows). */
tt_status tt_acc_add_s64(const tt_acc_params *p, const tt_acc_state *s, const int64_t *grad, int32_t e) {
    if (!valid_params(p) || !valid_state(p, s) || (grad == NULL && p->rows > 0 && p->row_len > 0)) {
        return TT_ERR_ARG;
    }
    for (int32_t r = 0; r < p->rows; ++r) {
        const tt_grad_row g = s64_row(p, grad, r);
        add_row(p, s, r, &g, (int64_t)e);
    }
    return tt_acc_commit(s);
}

/* Twin of tinytrain/train/kernels/accumulate.py:mean_multiplier. */
tt_status tt_acc_mean(int32_t batch, int32_t *mu, int32_t *e_sub) {
    if (mu == NULL || e_sub == NULL || batch < 1 || batch > TT_ACC_MAX_BATCH) {
        return TT_ERR_ARG;
    }
    const int k = tt_bitlen_u64((uint64_t)batch) - 1;
    *mu = (int32_t)((((int64_t)1 << (TT_ACC_MEAN_FRAC_BITS + k)) + batch / 2) / batch);
    *e_sub = TT_ACC_MEAN_FRAC_BITS + k;
    return TT_OK;
}

tt_status tt_mom_step_row_s64(const tt_acc_params *p, const tt_acc_state *v, int32_t row, const int64_t *grad,
                              int32_t e, int32_t mu_q15) {
    if (!valid_params(p) || !valid_state(p, v) || row < 0 || row >= p->rows || mu_q15 < 0 ||
        mu_q15 > (1 << Q15_SHIFT) || (grad == NULL && p->row_len > 0)) {
        return TT_ERR_ARG;
    }
    tt_grad_row g = {grad, 8, 1, 1};
    scale_row(p, v, row, mu_q15);
    add_row(p, v, row, &g, (int64_t)e);
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/accumulate.py:mom_step (one exponent for all rows). */
tt_status tt_mom_step_s64(const tt_acc_params *p, const tt_acc_state *v, const int64_t *grad, int32_t e,
                          int32_t mu_q15) {
    if (!valid_params(p) || !valid_state(p, v) || mu_q15 < 0 || mu_q15 > (1 << Q15_SHIFT) ||
        (grad == NULL && p->rows > 0 && p->row_len > 0)) {
        return TT_ERR_ARG;
    }
    for (int32_t r = 0; r < p->rows; ++r) {
        const tt_grad_row g = s64_row(p, grad, r);
        scale_row(p, v, r, mu_q15);
        add_row(p, v, r, &g, (int64_t)e);
    }
    return tt_acc_commit(v);
}

/* Twin of accumulate.py:mom_step applied to accumulate.py:acc_result (per-row exponents). */
tt_status tt_mom_step_acc(const tt_acc_params *p, const tt_acc_state *v, const tt_acc_state *g, int32_t mu,
                          int32_t e_sub, int32_t mu_q15) {
    if (!valid_params(p) || !valid_state(p, v) || !valid_state(p, g) || mu_q15 < 0 || mu_q15 > (1 << Q15_SHIFT)) {
        return TT_ERR_ARG;
    }
    for (int32_t r = 0; r < p->rows; ++r) {
        tt_grad_row src = state_row(p, g, r, mu);
        scale_row(p, v, r, mu_q15);
        add_row(p, v, r, &src, (int64_t)g->e[r] - (int64_t)e_sub);
    }
    return tt_acc_commit(v);
}

/* Twin of tinytrain/train/kernels/accumulate.py:update_weights_rows (with the gradient of
 * acc_result or acc_value). */
tt_status tt_acc_update_weights_s8(const tt_acc_params *a, const tt_acc_state *s, int32_t mu, int32_t e_sub,
                                   const tt_update_params *u, const tt_sgd_step *step, int8_t *w_train,
                                   uint32_t *prng) {
    if (!valid_params(a) || !valid_state(a, s) || u == NULL || a->rows != u->rows || a->row_len != u->row_len ||
        (a->row_major != 0) == (u->depthwise != 0)) {
        return TT_ERR_ARG;
    }
    for (int32_t r = 0; r < a->rows; ++r) {
        tt_grad_row src = state_row(a, s, r, mu);
        tt_status st =
            tt_update_weight_row_src_s8(u, step, r, &src, (int64_t)s->e[r] - (int64_t)e_sub, w_train, prng);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/accumulate.py:update_bias_rows (with acc_result / acc_value). */
tt_status tt_acc_update_bias_s32(const tt_acc_params *a, const tt_acc_state *s, int32_t mu, int32_t e_sub,
                                 const tt_update_params *u, const tt_sgd_step *step, int32_t *bias) {
    if (!valid_params(a) || !valid_state(a, s) || u == NULL || a->rows != u->channels || a->row_len != 1) {
        return TT_ERR_ARG;
    }
    const int32_t bytes = tt_acc_mantissa_bytes(a->bits);
    for (int32_t o = 0; o < a->rows; ++o) {
        int64_t g = m_get(bytes, s->m, o) * (int64_t)mu;
        tt_status st = tt_update_bias_one_s32(u, step, o, g, (int64_t)s->e[o] - (int64_t)e_sub, bias);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
