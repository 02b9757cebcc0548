/*
 * The tiny-ViT backward kernels (see tt_vit.h). Every normalizing kernel runs two passes over
 * the same accumulators: pass 0 finds max |acc| (the normalize shift r), pass 1 writes
 * tt_grad_scale64(acc, r). Accumulators are int64 and exact for any int16 gradient within the
 * documented sizes, so the bytes equal the numpy twins' (which normalize exact integers).
 */
#include "tt_vit.h"

#include "tt_fixedpoint.h"
#include "tt_grad.h"

#define K_LIMIT 4096 /* legal |k| of a Q15 scale exponent */

static int zp_ok(int32_t zp) {
    return zp >= TT_INT8_MIN && zp <= TT_INT8_MAX;
}

static int mu_ok(int32_t mu) {
    return mu >= 0 && mu <= 32768;
}

static int k_ok(int32_t k) {
    return k >= -K_LIMIT && k <= K_LIMIT;
}

/* int16 two's-complement wrap of -g (numpy: (-g).astype(int16)). */
static inline int16_t neg16(int16_t g) {
    return g == TT_INT16_MIN ? (int16_t)TT_INT16_MIN : (int16_t)(-g);
}

/* Full odometer over all TT_VIT_MAX_RANK axes with two offset streams. */
typedef struct {
    int32_t idx[TT_VIT_MAX_RANK];
    int32_t off[2];
} walk6;

static void walk6_init(walk6 *w) {
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        w->idx[d] = 0;
    }
    w->off[0] = w->off[1] = 0;
}

static int walk6_next(walk6 *w, const int32_t *dims, const int32_t *s0, const int32_t *s1) {
    for (int32_t d = TT_VIT_MAX_RANK - 1; d >= 0; --d) {
        w->off[0] += s0[d];
        w->off[1] += s1[d];
        if (++w->idx[d] < dims[d]) {
            return 1;
        }
        w->idx[d] = 0;
        w->off[0] -= s0[d] * dims[d];
        w->off[1] -= s1[d] * dims[d];
    }
    return 0;
}

static void contiguous_strides(const int32_t *dims, int32_t *strides) {
    int32_t s = 1;
    for (int32_t d = TT_VIT_MAX_RANK - 1; d >= 0; --d) {
        strides[d] = s;
        s *= dims[d];
    }
}

static int64_t exp_sum(int32_t e, int32_t a, int32_t b) {
    return (int64_t)e + (int64_t)a + (int64_t)b;
}

/* The normalize exponent of an accumulator; TT_ERR_RANGE when it leaves the legal range. */
static tt_status set_exp(int64_t e, int32_t *e_x) {
    if (e < -TT_GRAD_EXP_LIMIT || e > TT_GRAD_EXP_LIMIT) {
        return TT_ERR_RANGE;
    }
    *e_x = (int32_t)e;
    return TT_OK;
}

/* -------------------------------------------------------------------- broadcast reduce */

/*
 * The shared walk of MUL / SUB: for every element of input `which` (its dims: out_dims where its
 * stride is non-zero, else 1), acc = sum over its broadcast copies of g * (other - zp) (other
 * NULL: of g), times mul. pass 0: returns max |acc| in *m; pass 1: writes g_x with shift r.
 */
typedef struct {
    int32_t in_dims[TT_VIT_MAX_RANK], copy_dims[TT_VIT_MAX_RANK];
    int32_t g_in[TT_VIT_MAX_RANK], g_copy[TT_VIT_MAX_RANK]; /* g strides along the walks */
    int32_t o_in[TT_VIT_MAX_RANK], o_copy[TT_VIT_MAX_RANK]; /* other's strides along the walks */
} reduce_walk;

static void reduce_walk_init(reduce_walk *rw, const int32_t *out_dims, const int32_t *in_strides,
                             const int32_t *other_strides) {
    int32_t gs[TT_VIT_MAX_RANK];
    contiguous_strides(out_dims, gs);
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        const int kept = in_strides[d] != 0;
        rw->in_dims[d] = kept ? out_dims[d] : 1;
        rw->copy_dims[d] = kept ? 1 : out_dims[d];
        rw->g_in[d] = kept ? gs[d] : 0;
        rw->g_copy[d] = kept ? 0 : gs[d];
        rw->o_in[d] = kept ? other_strides[d] : 0;
        rw->o_copy[d] = kept ? 0 : other_strides[d];
    }
}

/* The sum over one element's broadcast copies from g + gb and other + ob: the copy walk over
 * the outer axes (outer: copy_dims with the last axis 1; none when `walk` is 0) and a tight
 * loop over the last axis (n copies, strides gs / os). */
static int64_t reduce_copies(const reduce_walk *rw, const int32_t *outer, int32_t walk, const int16_t *g,
                             const int8_t *other, int32_t zp, int32_t gb, int32_t ob) {
    const int32_t n = rw->copy_dims[TT_VIT_MAX_RANK - 1];
    const int32_t gs = rw->g_copy[TT_VIT_MAX_RANK - 1];
    const int32_t os = rw->o_copy[TT_VIT_MAX_RANK - 1];
    int64_t acc = 0;
    walk6 wc;
    walk6_init(&wc);
    do {
        const int16_t *gp = g + gb + wc.off[0];
        if (other != NULL) {
            const int8_t *op = other + ob + wc.off[1];
            for (int32_t c = 0; c < n; ++c) {
                acc += (int64_t)((int32_t)gp[c * gs] * ((int32_t)op[c * os] - zp)); /* |.| < 2^23 */
            }
        } else {
            for (int32_t c = 0; c < n; ++c) {
                acc += gp[c * gs];
            }
        }
    } while (walk && walk6_next(&wc, outer, rw->g_copy, rw->o_copy));
    return acc;
}

static void reduce_pass(const reduce_walk *rw, const int16_t *g, const int8_t *other, int32_t zp, int64_t mul,
                        int32_t pass, uint64_t *m, int32_t r, int16_t *g_x) {
    /* both walks with their last axis peeled into a loop (the same element and copy order) */
    int32_t in_outer[TT_VIT_MAX_RANK], copy_outer[TT_VIT_MAX_RANK];
    int32_t copy_walk = 0;
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        in_outer[d] = d == TT_VIT_MAX_RANK - 1 ? 1 : rw->in_dims[d];
        copy_outer[d] = d == TT_VIT_MAX_RANK - 1 ? 1 : rw->copy_dims[d];
        copy_walk |= copy_outer[d] > 1;
    }
    const int32_t n_in = rw->in_dims[TT_VIT_MAX_RANK - 1];
    const int32_t gi = rw->g_in[TT_VIT_MAX_RANK - 1];
    const int32_t oi = rw->o_in[TT_VIT_MAX_RANK - 1];
    walk6 wi;
    walk6_init(&wi);
    int16_t *dst = g_x;
    uint64_t mx = 0u;
    do {
        for (int32_t i = 0; i < n_in; ++i) {
            const int64_t acc = reduce_copies(rw, copy_outer, copy_walk, g, other, zp, wi.off[0] + i * gi,
                                              wi.off[1] + i * oi) * mul;
            if (pass == 0) {
                const uint64_t a = tt_abs_u64(acc);
                mx = a > mx ? a : mx;
            } else {
                *dst++ = tt_grad_scale64(acc, r);
            }
        }
    } while (walk6_next(&wi, in_outer, rw->g_in, rw->o_in));
    if (pass == 0) {
        *m = mx;
    }
}

/* Two passes of reduce_pass and the exponent. */
static tt_status reduce_normalize(const reduce_walk *rw, const int16_t *g_y, const int8_t *other, int32_t zp,
                                  int64_t mul, int64_t e_acc, int16_t *g_x, int32_t *e_x) {
    uint64_t m = 0u;
    reduce_pass(rw, g_y, other, zp, mul, 0, &m, 0, g_x);
    const int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    const tt_status st = set_exp(e_acc + r, e_x);
    if (st != TT_OK) {
        return st;
    }
    reduce_pass(rw, g_y, other, zp, mul, 1, NULL, r, g_x);
    return TT_OK;
}

/* Broadcast strides are element strides >= 0 over dims (0: a broadcast axis). */
static int strides_ok(const int32_t *strides) {
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        if (strides[d] < 0) {
            return 0;
        }
    }
    return 1;
}

#define MAX_COPIES ((int64_t)1 << 22) /* products summed into one int64 gradient accumulator */

/* Output elements per element of an input with these strides (0: broadcast axis). */
static int64_t broadcast_copies(const int32_t *out_dims, const int32_t *strides) {
    int64_t c = 1;
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        c *= strides[d] == 0 ? out_dims[d] : 1;
    }
    return c;
}

/* ---------------------------------------------------------------------------------- MUL */

/* C twin of tinytrain.train.kernels.norm_bwd.mul_input_grads (one input per call). */
tt_status tt_mul_bwd_s16(const tt_mul_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y,
                         const int8_t *other, int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || other == NULL || g_x == NULL || e_x == NULL || which < 0 || which > 1 ||
        (p->square && which != 0)) {
        return TT_ERR_ARG;
    }
    const int32_t j = p->square ? 0 : 1 - which;
    if (!zp_ok(p->zp[j]) || !mu_ok(p->mu[j]) || !k_ok(p->k[j]) || !strides_ok(p->in_strides[0]) ||
        !strides_ok(p->in_strides[1])) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    /* the int64 sum stays exact for any int16 g: copies * 2^15 * 255 * 2^15 < 2^61 */
    if (broadcast_copies(p->out_dims, p->in_strides[which]) > MAX_COPIES) {
        return TT_ERR_SHAPE;
    }
    reduce_walk rw;
    reduce_walk_init(&rw, p->out_dims, p->in_strides[which], p->in_strides[j]);
    const int64_t e_acc = exp_sum(e_y, p->k[j], -15) + (p->square ? 1 : 0);
    return reduce_normalize(&rw, g_y, other, p->zp[j], p->mu[j], e_acc, g_x, e_x);
}

/* ---------------------------------------------------------------------------------- SUB */

/* C twin of tinytrain.train.kernels.norm_bwd.sub_input_grads (one input per call). */
tt_status tt_sub_bwd_s16(const tt_sub_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                         int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || which < 0 || which > 1 ||
        !strides_ok(p->in_strides[which])) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    if (p->same_shape[which]) {
        for (int32_t i = 0; i < size; ++i) {
            g_x[i] = which == 0 ? g_y[i] : neg16(g_y[i]);
        }
        *e_x = e_y;
        return TT_OK;
    }
    reduce_walk rw;
    reduce_walk_init(&rw, p->out_dims, p->in_strides[which], p->in_strides[which]);
    return reduce_normalize(&rw, g_y, NULL, 0, which == 0 ? 1 : -1, e_y, g_x, e_x);
}

/* --------------------------------------------------------------------------------- MEAN */

/* C twin of tinytrain.train.kernels.norm_bwd.mean_input_grads. */
tt_status tt_mean_last_bwd_s16(const tt_mean_last_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                               int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || p->mu < 1 || p->mu > 32768 || p->k < 0 ||
        p->k > 31 || !strides_ok(p->g_strides)) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->in_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    const int32_t zero[TT_VIT_MAX_RANK] = {0};
    walk6 w;
    if (p->mu == 32768) { /* n = 2^k: copy, exponent - k */
        walk6_init(&w);
        int16_t *dst = g_x;
        do {
            *dst++ = g_y[w.off[0]];
        } while (walk6_next(&w, p->in_dims, p->g_strides, zero));
        return set_exp((int64_t)e_y - p->k, e_x);
    }
    /* max |g * mu| = max |g| * mu over the values read */
    uint32_t m = 0u;
    walk6_init(&w);
    do {
        const uint32_t a = tt_abs_u32((int32_t)g_y[w.off[0]] * p->mu);
        m = a > m ? a : m;
    } while (walk6_next(&w, p->in_dims, p->g_strides, zero));
    const int32_t r = tt_grad_shift_u32(m, TT_GRAD_BITS);
    const tt_status st = set_exp(exp_sum(e_y, -p->k, -15) + r, e_x);
    if (st != TT_OK) {
        return st;
    }
    walk6_init(&w);
    int16_t *dst = g_x;
    do {
        *dst++ = tt_grad_scale32((int32_t)g_y[w.off[0]] * p->mu, r);
    } while (walk6_next(&w, p->in_dims, p->g_strides, zero));
    return TT_OK;
}

/* -------------------------------------------------------------------------------- RSQRT */

static inline int64_t rsqrt_acc(const tt_rsqrt_bwd_params *p, int16_t g, int8_t y) {
    const int64_t u = (int64_t)y - p->out_zp;
    return -((int64_t)g * (u * u * u)) * p->mu;
}

/* C twin of tinytrain.train.kernels.norm_bwd.rsqrt_input_grads. */
tt_status tt_rsqrt_bwd_s16(const tt_rsqrt_bwd_params *p, const int16_t *g_y, int32_t e_y, const int8_t *y,
                           int16_t *g_x, int32_t *e_x) {
    if (p == NULL || e_x == NULL || p->size < 0 || !zp_ok(p->out_zp) || !mu_ok(p->mu) || !k_ok(p->k) ||
        (p->size > 0 && (g_y == NULL || y == NULL || g_x == NULL))) {
        return TT_ERR_ARG;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    uint64_t m = 0u;
    for (int32_t i = 0; i < p->size; ++i) {
        const uint64_t a = tt_abs_u64(rsqrt_acc(p, g_y[i], y[i]));
        m = a > m ? a : m;
    }
    const int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    const tt_status st = set_exp(exp_sum(e_y, p->k, -16) + r, e_x);
    if (st != TT_OK) {
        return st;
    }
    for (int32_t i = 0; i < p->size; ++i) {
        g_x[i] = tt_grad_scale64(rsqrt_acc(p, g_y[i], y[i]), r);
    }
    return TT_OK;
}

/* ------------------------------------------------------------------------------ SOFTMAX */

/* S = sum_j g_j (y_j - zp) of one row. */
static inline int64_t softmax_row_sum(const tt_softmax_bwd_params *p, const int16_t *g, const int8_t *y) {
    int64_t s = 0;
    for (int32_t j = 0; j < p->n; ++j) {
        s += (int64_t)g[j] * ((int64_t)y[j] - p->out_zp);
    }
    return s;
}

static inline int64_t softmax_acc(const tt_softmax_bwd_params *p, int16_t g, int8_t y, int64_t s) {
    const int64_t u = (int64_t)y - p->out_zp;
    const int64_t t = (int64_t)g * ((int64_t)1 << p->out_bits) - s;
    return u * t * p->beta_mu;
}

/* C twin of tinytrain.train.kernels.attn_bwd.softmax_input_grads. */
tt_status tt_softmax_bwd_s16(const tt_softmax_bwd_params *p, const int16_t *g_y, int32_t e_y, const int8_t *y,
                             int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || y == NULL || g_x == NULL || e_x == NULL || !zp_ok(p->out_zp) ||
        p->out_bits < 0 || p->out_bits > 15 || !mu_ok(p->beta_mu) || !k_ok(p->beta_k)) {
        return TT_ERR_ARG;
    }
    /* n < 2^16 keeps |u * t * mu| < 2^63 for any int16 g */
    if (p->rows < 0 || p->n < 1 || p->n > 65535 || (int64_t)p->rows * p->n > TT_INT32_MAX) {
        return TT_ERR_SHAPE;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    uint64_t m = 0u;
    for (int32_t r = 0; r < p->rows; ++r) {
        const int16_t *g = g_y + (int64_t)r * p->n;
        const int8_t *yr = y + (int64_t)r * p->n;
        const int64_t s = softmax_row_sum(p, g, yr);
        for (int32_t i = 0; i < p->n; ++i) {
            const uint64_t a = tt_abs_u64(softmax_acc(p, g[i], yr[i], s));
            m = a > m ? a : m;
        }
    }
    const int32_t sh = tt_grad_shift_u64(m, TT_GRAD_BITS);
    const tt_status st = set_exp(exp_sum(e_y, -2 * p->out_bits, p->beta_k) - 15 + sh, e_x);
    if (st != TT_OK) {
        return st;
    }
    for (int32_t r = 0; r < p->rows; ++r) {
        const int16_t *g = g_y + (int64_t)r * p->n;
        const int8_t *yr = y + (int64_t)r * p->n;
        int16_t *dst = g_x + (int64_t)r * p->n;
        const int64_t s = softmax_row_sum(p, g, yr); /* the row is read whole before it is overwritten */
        for (int32_t i = 0; i < p->n; ++i) {
            dst[i] = tt_grad_scale64(softmax_acc(p, g[i], yr[i], s), sh);
        }
    }
    return TT_OK;
}

/* ------------------------------------------------------------------------- BATCH_MATMUL */

/*
 * One element of the operand gradient: acc = sum over the batch copies (copy odometer over
 * cdims with the offsets of g and of the other operand) of the contraction.
 */
typedef struct {
    const tt_batch_matmul_bwd_params *p;
    int32_t which;
    int32_t cdims[TT_BMM_BATCH_RANK];   /* copies of the operand's batch element */
    int32_t g_batch[TT_BMM_BATCH_RANK]; /* g_y batch strides */
    const int16_t *g;
    const int8_t *other;
} bmm_bwd;

static int64_t bmm_acc(const bmm_bwd *c, const int32_t *bi, int32_t a, int32_t b) {
    const tt_batch_matmul_params *f = &c->p->fwd;
    const int32_t drop = c->p->drop[c->which];
    const int32_t *o_batch = c->which == 0 ? f->rhs_batch : f->lhs_batch;
    int64_t acc = 0;
    for (int32_t c0 = 0; c0 < c->cdims[0]; ++c0) {
        for (int32_t c1 = 0; c1 < c->cdims[1]; ++c1) {
            for (int32_t c2 = 0; c2 < c->cdims[2]; ++c2) {
                const int32_t ob[TT_BMM_BATCH_RANK] = {bi[0] + c0, bi[1] + c1, bi[2] + c2};
                const int16_t *g = c->g + ob[0] * c->g_batch[0] + ob[1] * c->g_batch[1] + ob[2] * c->g_batch[2];
                const int8_t *o = c->other + ob[0] * o_batch[0] + ob[1] * o_batch[1] + ob[2] * o_batch[2];
                if (c->which == 0) { /* a = m, b = k: sum_c g'[m][c] (R[k][c] - z) */
                    const int16_t *gm = g + a * f->cols;
                    const int8_t *rk = o + b * f->rhs_k;
                    for (int32_t n = 0; n < f->cols; ++n) {
                        acc += (int64_t)tt_rdbpot32(gm[n], drop) * ((int32_t)rk[n * f->rhs_c] - f->rhs_zp);
                    }
                } else { /* a = k, b = c: sum_m (L[m][k] - z) g'[m][c] */
                    const int8_t *lk = o + a * f->lhs_k;
                    for (int32_t m = 0; m < f->rows; ++m) {
                        acc += (int64_t)((int32_t)lk[m * f->lhs_m] - f->lhs_zp) *
                               tt_rdbpot32(g[m * f->cols + b], drop);
                    }
                }
            }
        }
    }
    return acc * c->p->mu[1 - c->which];
}

/* The fast path's bound: with one batch copy per element and at most BMM_FAST_MAX products in
 * a contraction, |g'| <= 2^15 and |operand - zp| <= 255 keep every partial sum below
 * 256 * 2^15 * 255 < 2^31, so an int32 sum equals bmm_acc's int64 one. */
#define BMM_FAST_MAX 256

static int32_t bmm_fast_ok(const bmm_bwd *c) {
    const tt_batch_matmul_params *f = &c->p->fwd;
    return c->cdims[0] == 1 && c->cdims[1] == 1 && c->cdims[2] == 1 && f->rows <= BMM_FAST_MAX &&
           f->cols <= BMM_FAST_MAX;
}

/* bmm_pass without batch copies: g' of one row (which = 0) or column (which = 1) of g is
 * rounded once into gp and each element's contraction is an int32 dot product (same sums as
 * bmm_acc, in the same order; see BMM_FAST_MAX). */
static void bmm_pass_fast(const bmm_bwd *c, int32_t pass, uint64_t *m, int32_t r, int16_t *g_x) {
    const tt_batch_matmul_params *f = &c->p->fwd;
    const int32_t drop = c->p->drop[c->which];
    const int64_t mu = c->p->mu[1 - c->which];
    const int32_t *batch = c->which == 0 ? f->lhs_batch : f->rhs_batch;
    const int32_t *o_batch = c->which == 0 ? f->rhs_batch : f->lhs_batch;
    const int32_t n_out = c->which == 0 ? f->rows : f->cols; /* rows (m) or columns (c) of g */
    const int32_t n_in = c->which == 0 ? f->cols : f->rows;  /* the contracted index */
    int32_t gp[BMM_FAST_MAX];
    uint64_t mx = 0u;
    int32_t bi[TT_BMM_BATCH_RANK];
    for (bi[0] = 0; bi[0] < f->batch[0]; ++bi[0]) {
        for (bi[1] = 0; bi[1] < f->batch[1]; ++bi[1]) {
            for (bi[2] = 0; bi[2] < f->batch[2]; ++bi[2]) {
                if ((batch[0] == 0 && bi[0] > 0) || (batch[1] == 0 && bi[1] > 0) || (batch[2] == 0 && bi[2] > 0)) {
                    continue; /* cdims == 1: the operand is not broadcast, so no batch index is skipped */
                }
                const int16_t *g = c->g + bi[0] * c->g_batch[0] + bi[1] * c->g_batch[1] + bi[2] * c->g_batch[2];
                const int8_t *o = c->other + bi[0] * o_batch[0] + bi[1] * o_batch[1] + bi[2] * o_batch[2];
                int16_t *dst = g_x + bi[0] * batch[0] + bi[1] * batch[1] + bi[2] * batch[2];
                for (int32_t v = 0; v < n_out; ++v) {
                    for (int32_t n = 0; n < n_in; ++n) { /* g'[m][n] (which 0) or g'[n][c] (which 1) */
                        const int16_t gv = c->which == 0 ? g[v * f->cols + n] : g[n * f->cols + v];
                        gp[n] = tt_rdbpot32(gv, drop);
                    }
                    const int32_t n_k = f->depth;
                    for (int32_t k = 0; k < n_k; ++k) {
                        int32_t acc32 = 0;
                        if (c->which == 0) { /* dL[m = v][k] = sum_n g'[m][n] (R[k][n] - z) */
                            const int8_t *rk = o + k * f->rhs_k;
                            for (int32_t n = 0; n < n_in; ++n) {
                                acc32 += gp[n] * ((int32_t)rk[n * f->rhs_c] - f->rhs_zp);
                            }
                        } else { /* dR[k][c = v] = sum_m (L[m][k] - z) g'[m][c] */
                            const int8_t *lk = o + k * f->lhs_k;
                            for (int32_t n = 0; n < n_in; ++n) {
                                acc32 += ((int32_t)lk[n * f->lhs_m] - f->lhs_zp) * gp[n];
                            }
                        }
                        const int64_t acc = (int64_t)acc32 * mu;
                        if (pass == 0) {
                            const uint64_t a = tt_abs_u64(acc);
                            mx = a > mx ? a : mx;
                        } else if (c->which == 0) {
                            dst[v * f->lhs_m + k * f->lhs_k] = tt_grad_scale64(acc, r);
                        } else {
                            dst[k * f->rhs_k + v * f->rhs_c] = tt_grad_scale64(acc, r);
                        }
                    }
                }
            }
        }
    }
    if (pass == 0) {
        *m = mx;
    }
}

/* pass 0: max |acc| into *m; pass 1: write g_x with shift r. */
static void bmm_pass(const bmm_bwd *c, int32_t pass, uint64_t *m, int32_t r, int16_t *g_x) {
    if (bmm_fast_ok(c)) {
        bmm_pass_fast(c, pass, m, r, g_x);
        return;
    }
    const tt_batch_matmul_params *f = &c->p->fwd;
    const int32_t *batch = c->which == 0 ? f->lhs_batch : f->rhs_batch;
    const int32_t na = c->which == 0 ? f->rows : f->depth;  /* first index of the element */
    const int32_t nb = c->which == 0 ? f->depth : f->cols;  /* second index */
    const int32_t sa = c->which == 0 ? f->lhs_m : f->rhs_k; /* their strides in the operand */
    const int32_t sb = c->which == 0 ? f->lhs_k : f->rhs_c;
    int32_t bdims[TT_BMM_BATCH_RANK];
    for (int32_t d = 0; d < TT_BMM_BATCH_RANK; ++d) {
        bdims[d] = batch[d] != 0 ? f->batch[d] : 1;
    }
    uint64_t mx = 0u;
    int32_t bi[TT_BMM_BATCH_RANK];
    for (bi[0] = 0; bi[0] < bdims[0]; ++bi[0]) {
        for (bi[1] = 0; bi[1] < bdims[1]; ++bi[1]) {
            for (bi[2] = 0; bi[2] < bdims[2]; ++bi[2]) {
                int16_t *dst = g_x + bi[0] * batch[0] + bi[1] * batch[1] + bi[2] * batch[2];
                for (int32_t a = 0; a < na; ++a) {
                    for (int32_t b = 0; b < nb; ++b) {
                        const int64_t acc = bmm_acc(c, bi, a, b);
                        if (pass == 0) {
                            const uint64_t v = tt_abs_u64(acc);
                            mx = v > mx ? v : mx;
                        } else {
                            dst[a * sa + b * sb] = tt_grad_scale64(acc, r);
                        }
                    }
                }
            }
        }
    }
    if (pass == 0) {
        *m = mx;
    }
}

/* C twin of tinytrain.train.kernels.attn_bwd.batch_matmul_input_grads (one operand per call). */
tt_status tt_batch_matmul_bwd_s16(const tt_batch_matmul_bwd_params *p, int32_t which, const int16_t *g_y,
                                  int32_t e_y, const int8_t *other, int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || other == NULL || g_x == NULL || e_x == NULL || which < 0 || which > 1) {
        return TT_ERR_ARG;
    }
    const tt_batch_matmul_params *f = &p->fwd;
    const int32_t j = 1 - which;
    if (!zp_ok(f->lhs_zp) || !zp_ok(f->rhs_zp) || !mu_ok(p->mu[j]) || !k_ok(p->k[j]) || p->drop[which] < 0 ||
        p->drop[which] > 14) {
        return TT_ERR_ARG;
    }
    if (f->rows < 1 || f->depth < 1 || f->cols < 1) {
        return TT_ERR_SHAPE;
    }
    for (int32_t d = 0; d < TT_BMM_BATCH_RANK; ++d) {
        if (f->batch[d] < 1 || f->lhs_batch[d] < 0 || f->rhs_batch[d] < 0) {
            return TT_ERR_SHAPE;
        }
    }
    /* products summed into one element: its batch copies times the other free dimension */
    int64_t fan = which == 0 ? f->cols : f->rows;
    for (int32_t d = 0; d < TT_BMM_BATCH_RANK; ++d) {
        fan *= (which == 0 ? f->lhs_batch[d] : f->rhs_batch[d]) == 0 ? f->batch[d] : 1;
    }
    if (fan > MAX_COPIES) {
        return TT_ERR_SHAPE;
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    bmm_bwd c;
    c.p = p;
    c.which = which;
    c.g = g_y;
    c.other = other;
    const int32_t *batch = which == 0 ? f->lhs_batch : f->rhs_batch;
    int32_t s = f->rows * f->cols;
    for (int32_t d = TT_BMM_BATCH_RANK - 1; d >= 0; --d) {
        c.g_batch[d] = s;
        s *= f->batch[d];
        c.cdims[d] = batch[d] != 0 ? 1 : f->batch[d];
    }
    uint64_t m = 0u;
    bmm_pass(&c, 0, &m, 0, g_x);
    const int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    const tt_status st = set_exp(exp_sum(e_y, p->drop[which], p->k[j]) - 15 + r, e_x);
    if (st != TT_OK) {
        return st;
    }
    bmm_pass(&c, 1, NULL, r, g_x);
    return TT_OK;
}

/* ----------------------------------------------------------------------- layout kernels */

/* C twin of tinytrain.train.kernels.layout_bwd.transpose_input_grads. */
tt_status tt_transpose_bwd_s16(const tt_transpose_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                               int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    const int32_t zero[TT_VIT_MAX_RANK] = {0};
    walk6 w;
    walk6_init(&w);
    int16_t *dst = g_x;
    do {
        *dst++ = g_y[p->offset + w.off[0]];
    } while (walk6_next(&w, p->out_dims, p->src_strides, zero));
    *e_x = e_y;
    return TT_OK;
}

/* C twin of tinytrain.train.kernels.layout_bwd.strided_slice_input_grads. */
tt_status tt_strided_slice_bwd_s16(const tt_strided_slice_params *p, int32_t in_size, const int16_t *g_y,
                                   int32_t e_y, int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || in_size < 1) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    for (int32_t i = 0; i < in_size; ++i) {
        g_x[i] = 0;
    }
    const int32_t zero[TT_VIT_MAX_RANK] = {0};
    walk6 w;
    walk6_init(&w);
    const int16_t *src = g_y;
    do {
        const int32_t at = p->offset + w.off[0];
        if (at < 0 || at >= in_size) {
            return TT_ERR_SHAPE;
        }
        g_x[at] = *src++;
    } while (walk6_next(&w, p->out_dims, p->src_strides, zero));
    *e_x = e_y;
    return TT_OK;
}

/* C twin of tinytrain.train.kernels.layout_bwd.concatenation_input_grads (one input). */
tt_status tt_concat_bwd_s16(const tt_concat_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                            int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL) {
        return TT_ERR_ARG;
    }
    if (p->outer < 0 || p->inner < 0 || p->in_len < 0 || p->offset < 0 || p->offset + p->in_len > p->out_len) {
        return TT_ERR_SHAPE;
    }
    const int32_t chunk = p->in_len * p->inner;
    for (int32_t q = 0; q < p->outer; ++q) {
        const int16_t *src = g_y + ((int64_t)q * p->out_len + p->offset) * p->inner;
        int16_t *dst = g_x + (int64_t)q * chunk;
        for (int32_t i = 0; i < chunk; ++i) {
            dst[i] = src[i];
        }
    }
    *e_x = e_y;
    return TT_OK;
}

/* ----------------------------------------------------------------------- TOKEN_SELECT */

/* C twin of tinytrain.train.kernels.token_bwd.token_select_input_grads. */
tt_status tt_token_select_bwd_s16(const tt_token_select_params *p, const int16_t *g_y, int32_t e_y,
                                  const uint8_t *idx, int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || idx == NULL || g_x == NULL || e_x == NULL) {
        return TT_ERR_ARG;
    }
    if (p->tokens < 2 || p->dim < 1 || p->kept < 1 || p->kept >= p->tokens) {
        return TT_ERR_SHAPE;
    }
    const int32_t d = p->dim;
    const int64_t size = (int64_t)p->tokens * d;
    for (int64_t i = 0; i < size; ++i) {
        g_x[i] = 0;
    }
    for (int32_t c = 0; c < d; ++c) {
        g_x[c] = g_y[c];
    }
    for (int32_t r = 0; r < p->kept; ++r) {
        if (idx[r] < 1 || idx[r] >= p->tokens) {
            return TT_ERR_SHAPE;
        }
        const int16_t *src = g_y + (int64_t)(1 + r) * d;
        int16_t *dst = g_x + (int64_t)idx[r] * d;
        for (int32_t c = 0; c < d; ++c) {
            dst[c] = src[c];
        }
    }
    *e_x = e_y;
    return TT_OK;
}

/* ------------------------------------------------------------------------ clamp masks */

/* C twin of tinytrain.train.kernels.mask.clamp_mask for the ViT rules' bounds. */
tt_status tt_vit_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask) {
    if (n < 0 || act_min < TT_INT8_MIN - 1 || act_min > TT_INT8_MAX || act_max < TT_INT8_MIN ||
        act_max > TT_INT8_MAX + 1 || (n > 0 && (y == NULL || mask == NULL))) {
        return TT_ERR_ARG;
    }
    for (int32_t j = 0; j < (n + 7) / 8; ++j) {
        mask[j] = 0;
    }
    for (int32_t i = 0; i < n; ++i) {
        const int32_t v = y[i];
        if (v > act_min && v < act_max) {
            mask[i >> 3] = (uint8_t)(mask[i >> 3] | (1u << (i & 7)));
        }
    }
    return TT_OK;
}
