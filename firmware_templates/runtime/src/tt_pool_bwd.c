/*
 * Backward of MEAN and AVERAGE_POOL_2D (tt_pool_bwd.h).
 */
#include "tt_pool_bwd.h"

#include "tt_fixedpoint.h"
#include "tt_grad.h"
#include "tt_internal.h"

#define Q15_BITS 15

static inline int64_t scaled(int32_t g, int32_t mu) {
    return (int64_t)tt_rdbpot32(g * mu, Q15_BITS); /* |g * mu| <= 2^30 */
}

/* One pass of the MEAN backward: every input element reads g'[its output element]. */
static uint64_t mean_pass(const tt_mean_bwd_params *p, const int32_t *ostr, const int16_t *g_y, int16_t *g_x,
                          int32_t r, int32_t write) {
    const int32_t *d = p->in_dims;
    uint64_t m = 0u;
    int32_t q = 0;
    for (int32_t i0 = 0; i0 < d[0]; ++i0)
        for (int32_t i1 = 0; i1 < d[1]; ++i1)
            for (int32_t i2 = 0; i2 < d[2]; ++i2)
                for (int32_t i3 = 0; i3 < d[3]; ++i3)
                    for (int32_t i4 = 0; i4 < d[4]; ++i4)
                        for (int32_t i5 = 0; i5 < d[5]; ++i5) {
                            int32_t o = i0 * ostr[0] + i1 * ostr[1] + i2 * ostr[2] + i3 * ostr[3] + i4 * ostr[4] +
                                        i5 * ostr[5];
                            int64_t acc = scaled(g_y[o], p->mu);
                            tt_grad_pass_elem(acc, r, write, &g_x[q], &m);
                            ++q;
                        }
    return m;
}

/* Twin of tinytrain.train.kernels.pool_bwd.pool_input_grad (MEAN). */
tt_status tt_mean_bwd_s16(const tt_mean_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                          int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || p->mu < 0 || p->mu > ((int32_t)1 << Q15_BITS)) {
        return TT_ERR_ARG;
    }
    int32_t istr[TT_BWD_MAX_RANK], ostr[TT_BWD_MAX_RANK];
    if (!tt_bwd_strides(p->in_dims, istr) || !tt_bwd_strides(p->keep_dims, ostr)) {
        return TT_ERR_SHAPE;
    }
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        if (p->keep_dims[a] == 1 && p->in_dims[a] != 1) {
            ostr[a] = 0; /* a reduced axis */
        } else if (p->keep_dims[a] != p->in_dims[a]) {
            return TT_ERR_SHAPE;
        }
    }
    if (!tt_grad_exp_ok(e_y) || p->k < 0 || p->k > 31) {
        return TT_ERR_RANGE;
    }
    uint64_t m = mean_pass(p, ostr, g_y, g_x, 0, 0);
    int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    (void)mean_pass(p, ostr, g_y, g_x, r, 1);
    *e_x = e_y - p->k + r;
    return TT_OK;
}

/* Output positions (inclusive [*lo, *hi]) whose window covers padded coordinate q. */
static void covering(int32_t q, int32_t k, int32_t s, int32_t out, int32_t *lo, int32_t *hi) {
    int32_t first = q - k + 1 <= 0 ? 0 : (q - k + s) / s;
    int32_t last = q / s;
    *lo = first;
    *hi = last < out - 1 ? last : out - 1;
}

static uint64_t avgpool_pass(const tt_avgpool_bwd_params *p, const int16_t *g_y, int16_t *g_x, int32_t r,
                             int32_t write) {
    const int32_t c = p->c;
    uint64_t m = 0u;
    for (int32_t iy = 0; iy < p->in_h; ++iy) {
        int32_t oy0, oy1;
        covering(iy + p->pad_top, p->kh, p->sh, p->out_h, &oy0, &oy1);
        for (int32_t ix = 0; ix < p->in_w; ++ix) {
            int32_t ox0, ox1;
            covering(ix + p->pad_left, p->kw, p->sw, p->out_w, &ox0, &ox1);
            int16_t *gx = g_x + (iy * p->in_w + ix) * c;
            for (int32_t ch = 0; ch < c; ++ch) {
                int64_t acc = 0;
                for (int32_t oy = oy0; oy <= oy1; ++oy) {
                    for (int32_t ox = ox0; ox <= ox1; ++ox) {
                        int32_t w = oy * p->out_w + ox;
                        acc += scaled(g_y[w * c + ch], p->mu[w]);
                    }
                }
                tt_grad_pass_elem(acc, r, write, &gx[ch], &m);
            }
        }
    }
    return m;
}

/* Twin of tinytrain.train.kernels.pool_bwd.pool_input_grad (AVERAGE_POOL_2D). */
tt_status tt_avgpool_bwd_s16(const tt_avgpool_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                             int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || p->mu == NULL) {
        return TT_ERR_ARG;
    }
    if (p->in_h < 1 || p->in_w < 1 || p->c < 1 || p->out_h < 1 || p->out_w < 1 || p->kh < 1 || p->kw < 1 ||
        p->sh < 1 || p->sw < 1 || p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0) {
        return TT_ERR_ARG;
    }
    if ((int64_t)p->in_h * p->in_w * p->c > TT_INT32_MAX || (int64_t)p->out_h * p->out_w * p->c > TT_INT32_MAX ||
        (int64_t)(p->out_h - 1) * p->sh + p->kh > (int64_t)p->pad_top + p->in_h + p->pad_bottom ||
        (int64_t)(p->out_w - 1) * p->sw + p->kw > (int64_t)p->pad_left + p->in_w + p->pad_right) {
        return TT_ERR_SHAPE;
    }
    for (int32_t w = 0; w < p->out_h * p->out_w; ++w) {
        if (p->mu[w] < 0 || p->mu[w] > ((int32_t)1 << Q15_BITS)) {
            return TT_ERR_ARG;
        }
    }
    if (!tt_grad_exp_ok(e_y) || p->k < 0 || p->k > 31) {
        return TT_ERR_RANGE;
    }
    uint64_t m = avgpool_pass(p, g_y, g_x, 0, 0);
    int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    (void)avgpool_pass(p, g_y, g_x, r, 1);
    *e_x = e_y - p->k + r;
    return TT_OK;
}
