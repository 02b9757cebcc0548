/*
 * Backward of CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED (tt_linear_bwd.h).
 */
#include "tt_linear_bwd.h"

#include "tt_fixedpoint.h"
#include "tt_grad.h"

#define Q15_BITS 15

static int32_t is_positive(int32_t v) {
    return v > 0;
}

/* Validates the shapes (O(1)); 1 when they are consistent. */
static int32_t geometry_ok(const tt_linear_bwd_params *p) {
    if (p == NULL || p->kind < TT_LINEAR_CONV || p->kind > TT_LINEAR_FC || p->mu == NULL) {
        return 0;
    }
    if (!is_positive(p->in_h) || !is_positive(p->in_w) || !is_positive(p->in_c) || !is_positive(p->out_h) ||
        !is_positive(p->out_w) || !is_positive(p->out_c) || !is_positive(p->kh) || !is_positive(p->kw) ||
        !is_positive(p->sh) || !is_positive(p->sw)) {
        return 0;
    }
    if (p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 || p->pad_right < 0 || p->drop < 0 ||
        p->drop > TT_GRAD_BITS || p->in_zp < TT_INT8_MIN || p->in_zp > TT_INT8_MAX) {
        return 0;
    }
    /* sizes and padded extents must fit int32 */
    const int64_t lim = TT_INT32_MAX;
    if ((int64_t)p->in_h * p->in_w * p->in_c > lim || (int64_t)p->out_h * p->out_w * p->out_c > lim ||
        (int64_t)p->out_c * p->kh * p->kw * p->in_c > lim || (int64_t)p->pad_top + p->in_h + p->pad_bottom > lim ||
        (int64_t)p->pad_left + p->in_w + p->pad_right > lim) {
        return 0;
    }
    /* every window lies inside the padded input */
    if ((int64_t)(p->out_h - 1) * p->sh + p->kh > (int64_t)p->pad_top + p->in_h + p->pad_bottom ||
        (int64_t)(p->out_w - 1) * p->sw + p->kw > (int64_t)p->pad_left + p->in_w + p->pad_right) {
        return 0;
    }
    if (p->kind == TT_LINEAR_DEPTHWISE && p->out_c != p->in_c) {
        return 0;
    }
    if (p->kind == TT_LINEAR_FC &&
        (p->in_w != 1 || p->out_w != 1 || p->in_h != p->out_h || p->kh != 1 || p->kw != 1 || p->sh != 1 ||
         p->sw != 1 || p->pad_top != 0 || p->pad_left != 0 || p->pad_bottom != 0 || p->pad_right != 0)) {
        return 0;
    }
    if (p->n_channels < 0 || p->n_channels > p->in_c || (p->n_channels > 0 && p->channels == NULL)) {
        return 0;
    }
    return 1;
}

/* Validates the tables mu, channels and slot as well (O(in_c + out_c)). */
static int32_t params_ok(const tt_linear_bwd_params *p) {
    if (!geometry_ok(p)) {
        return 0;
    }
    for (int32_t o = 0; o < p->out_c; ++o) {
        if (p->mu[o] < 0 || p->mu[o] > ((int32_t)1 << Q15_BITS)) {
            return 0;
        }
    }
    if (p->n_channels > 0) {
        if (p->slot == NULL) {
            return 0;
        }
        for (int32_t j = 0; j < p->n_channels; ++j) {
            int32_t c = p->channels[j];
            if (c < 0 || c >= p->in_c || p->slot[c] != j) {
                return 0;
            }
        }
        for (int32_t i = 0; i < p->in_c; ++i) {
            int32_t j = p->slot[i];
            if (j != -1 && (j < 0 || j >= p->n_channels || p->channels[j] != i)) {
                return 0;
            }
        }
    }
    return 1;
}

int32_t tt_linear_bwd_input_scratch_bytes(const tt_linear_bwd_params *p) {
    if (p == NULL) {
        return -1;
    }
    switch (p->kind) {
    case TT_LINEAR_CONV:
        return 4 * p->in_c;
    case TT_LINEAR_DEPTHWISE:
        return 0;
    case TT_LINEAR_FC:
        return 4 * p->out_c;
    default:
        return -1;
    }
}

int32_t tt_linear_bwd_weight_row_len(const tt_linear_bwd_params *p) {
    if (p == NULL) {
        return -1;
    }
    switch (p->kind) {
    case TT_LINEAR_CONV:
        return p->kh * p->kw * p->n_channels;
    case TT_LINEAR_DEPTHWISE:
        return p->kh * p->kw;
    case TT_LINEAR_FC:
        return p->n_channels;
    default:
        return -1;
    }
}

/* Output positions o (inclusive range [*lo, *hi]) whose window covers padded coordinate q. */
static void covering(int32_t q, int32_t k, int32_t s, int32_t out, int32_t *lo, int32_t *hi) {
    int32_t first = q - k + 1 <= 0 ? 0 : (q - k + s) / s;
    int32_t last = q / s;
    *lo = first;
    *hi = last < out - 1 ? last : out - 1;
}

/* g' = RoundingDivideByPOT(g_y * mu, 15 + drop); |g_y * mu| <= 2^30, |g'| <= 2^15, |w * g'| <= 2^22. */
static inline int32_t scaled_grad(int32_t g, int32_t mu, int32_t shift) {
    return tt_rdbpot32(g * mu, shift);
}

/*
 * Every input-gradient sum is accumulated in uint32 (wrap-around is defined) and read
 * back with tt_wrap32: for |g_y| <= 2^14 the bit budget keeps the exact sum below 2^31,
 * and for any int16 g_y the bytes still equal the numpy twin's, which wraps its exact
 * sum to int32 (wrap_int32).
 *
 * CONV_2D: one pass over the input pixels; with write == 0 returns max |acc|, otherwise
 * writes g_x = scale(acc, r). With w_sub the trained channels first add the flash
 * weight's product and then the difference to the current weight (partial sums may leave
 * the int32 range; the final sum is the current-weight sum mod 2^32).
 */
static uint32_t conv_input_pass(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                const int16_t *g_y, int16_t *g_x, int32_t r, int32_t write, uint32_t *acc) {
    const int32_t cin = p->in_c, cout = p->out_c, n = p->n_channels, kh = p->kh, kw = p->kw;
    const int32_t shift = Q15_BITS + p->drop;
    uint32_t m = 0u;
    for (int32_t iy = 0; iy < p->in_h; ++iy) {
        int32_t py = iy + p->pad_top;
        int32_t oy0, oy1;
        covering(py, kh, p->sh, p->out_h, &oy0, &oy1);
        for (int32_t ix = 0; ix < p->in_w; ++ix) {
            int32_t px = ix + p->pad_left;
            int32_t ox0, ox1;
            covering(px, kw, p->sw, p->out_w, &ox0, &ox1);
            for (int32_t i = 0; i < cin; ++i) {
                acc[i] = 0u;
            }
            for (int32_t oy = oy0; oy <= oy1; ++oy) {
                int32_t ky = py - oy * p->sh;
                for (int32_t ox = ox0; ox <= ox1; ++ox) {
                    int32_t kx = px - ox * p->sw;
                    const int16_t *gy = g_y + (oy * p->out_w + ox) * cout;
                    for (int32_t o = 0; o < cout; ++o) {
                        int32_t gp = scaled_grad(gy[o], p->mu[o], shift);
                        if (gp == 0) {
                            continue;
                        }
                        int32_t tap = (o * kh + ky) * kw + kx;
                        const int8_t *row = w + tap * cin;
                        for (int32_t i = 0; i < cin; ++i) {
                            acc[i] += (uint32_t)((int32_t)row[i] * gp);
                        }
                        if (w_sub != NULL) {
                            const int8_t *srow = w_sub + tap * n;
                            for (int32_t j = 0; j < n; ++j) {
                                int32_t c = p->channels[j];
                                acc[c] += (uint32_t)(((int32_t)srow[j] - (int32_t)row[c]) * gp);
                            }
                        }
                    }
                }
            }
            int16_t *gx = g_x + (iy * p->in_w + ix) * cin;
            for (int32_t i = 0; i < cin; ++i) {
                int32_t v = tt_wrap32((int64_t)acc[i]);
                if (write) {
                    gx[i] = tt_grad_scale32(v, r);
                } else {
                    uint32_t a = tt_abs_u32(v);
                    m = a > m ? a : m;
                }
            }
        }
    }
    return m;
}

/* DEPTHWISE_CONV_2D: per pixel and channel, one sum over the covering taps. */
static uint32_t dw_input_pass(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                              const int16_t *g_y, int16_t *g_x, int32_t r, int32_t write) {
    const int32_t ch = p->in_c, kw = p->kw;
    const int32_t shift = Q15_BITS + p->drop;
    uint32_t m = 0u;
    for (int32_t iy = 0; iy < p->in_h; ++iy) {
        int32_t py = iy + p->pad_top;
        int32_t oy0, oy1;
        covering(py, p->kh, p->sh, p->out_h, &oy0, &oy1);
        for (int32_t ix = 0; ix < p->in_w; ++ix) {
            int32_t px = ix + p->pad_left;
            int32_t ox0, ox1;
            covering(px, kw, p->sw, p->out_w, &ox0, &ox1);
            int16_t *gx = g_x + (iy * p->in_w + ix) * ch;
            for (int32_t c = 0; c < ch; ++c) {
                const int8_t *wc = w + c;
                int32_t ws = ch;
                if (w_sub != NULL && p->n_channels > 0 && p->slot[c] >= 0) {
                    wc = w_sub + p->slot[c];
                    ws = p->n_channels;
                }
                int32_t mu = p->mu[c];
                uint32_t sum = 0u;
                for (int32_t oy = oy0; oy <= oy1; ++oy) {
                    int32_t ky = py - oy * p->sh;
                    for (int32_t ox = ox0; ox <= ox1; ++ox) {
                        int32_t kx = px - ox * p->sw;
                        int32_t gv = g_y[(oy * p->out_w + ox) * ch + c];
                        if (gv != 0) {
                            sum += (uint32_t)((int32_t)wc[(ky * kw + kx) * ws] * scaled_grad(gv, mu, shift));
                        }
                    }
                }
                int32_t acc = tt_wrap32((int64_t)sum);
                if (write) {
                    gx[c] = tt_grad_scale32(acc, r);
                } else {
                    uint32_t a = tt_abs_u32(acc);
                    m = a > m ? a : m;
                }
            }
        }
    }
    return m;
}

/* FULLY_CONNECTED: per row, g' of the row in scratch, then one int32 sum per input. */
static uint32_t fc_input_pass(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                              const int16_t *g_y, int16_t *g_x, int32_t r, int32_t write, int32_t *gp) {
    const int32_t cin = p->in_c, cout = p->out_c;
    const int32_t shift = Q15_BITS + p->drop;
    uint32_t m = 0u;
    for (int32_t row = 0; row < p->in_h; ++row) {
        const int16_t *gy = g_y + row * cout;
        for (int32_t o = 0; o < cout; ++o) {
            gp[o] = scaled_grad(gy[o], p->mu[o], shift);
        }
        int16_t *gx = g_x + row * cin;
        for (int32_t i = 0; i < cin; ++i) {
            const int8_t *col = w + i;
            int32_t stride = cin;
            if (w_sub != NULL && p->n_channels > 0 && p->slot[i] >= 0) {
                col = w_sub + p->slot[i];
                stride = p->n_channels;
            }
            uint32_t sum = 0u;
            for (int32_t o = 0; o < cout; ++o) {
                sum += (uint32_t)((int32_t)col[o * stride] * gp[o]);
            }
            int32_t acc = tt_wrap32((int64_t)sum);
            if (write) {
                gx[i] = tt_grad_scale32(acc, r);
            } else {
                uint32_t a = tt_abs_u32(acc);
                m = a > m ? a : m;
            }
        }
    }
    return m;
}

static uint32_t input_pass(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub, const int16_t *g_y,
                           int16_t *g_x, int32_t r, int32_t write, void *scratch) {
    switch (p->kind) {
    case TT_LINEAR_CONV:
        return conv_input_pass(p, w, w_sub, g_y, g_x, r, write, (uint32_t *)scratch);
    case TT_LINEAR_DEPTHWISE:
        return dw_input_pass(p, w, w_sub, g_y, g_x, r, write);
    default:
        return fc_input_pass(p, w, w_sub, g_y, g_x, r, write, (int32_t *)scratch);
    }
}

/* Twin of tinytrain.train.kernels.linear_bwd.input_grad. */
tt_status tt_linear_bwd_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                  const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch) {
    if (!params_ok(p) || w == NULL || g_y == NULL || g_x == NULL || e_x == NULL ||
        (w_sub != NULL && p->n_channels == 0) || (tt_linear_bwd_input_scratch_bytes(p) > 0 && scratch == NULL)) {
        return TT_ERR_ARG;
    }
    if (!tt_grad_exp_ok(e_y) || p->k < -4096 || p->k > 4096) {
        return TT_ERR_RANGE;
    }
    uint32_t m = input_pass(p, w, w_sub, g_y, g_x, 0, 0, scratch);
    int32_t r = tt_grad_shift_u32(m, TT_GRAD_BITS);
    (void)input_pass(p, w, w_sub, g_y, g_x, r, 1, scratch);
    *e_x = e_y + p->k + p->drop + r;
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.linear_bwd.bias_grad. */
tt_status tt_linear_bwd_bias_s16(const tt_linear_bwd_params *p, const int16_t *g_y, int64_t *grad_b) {
    if (!geometry_ok(p) || g_y == NULL || grad_b == NULL) {
        return TT_ERR_ARG;
    }
    const int32_t cout = p->out_c;
    const int32_t positions = p->out_h * p->out_w;
    for (int32_t o = 0; o < cout; ++o) {
        grad_b[o] = 0;
    }
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int16_t *gy = g_y + pos * cout;
        for (int32_t o = 0; o < cout; ++o) {
            grad_b[o] += gy[o];
        }
    }
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.linear_bwd.weight_grad (one output channel / subset channel). */
tt_status tt_linear_bwd_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                       int32_t row, int64_t *grad_row) {
    if (!geometry_ok(p) || g_y == NULL || x_sub == NULL || grad_row == NULL || p->n_channels == 0) {
        return TT_ERR_ARG;
    }
    const int32_t dw = p->kind == TT_LINEAR_DEPTHWISE;
    if (row < 0 || row >= (dw ? p->n_channels : p->out_c)) {
        return TT_ERR_ARG;
    }
    const int32_t n = p->n_channels, cout = p->out_c, kh = p->kh, kw = p->kw, zp = p->in_zp;
    const int32_t gc = dw ? p->channels[row] : row; /* channel of g_y */
    if (gc < 0 || gc >= cout) {
        return TT_ERR_ARG;
    }
    const int32_t width = dw ? 1 : n;               /* values per tap */
    const int32_t x0 = dw ? row : 0;                /* first x_sub channel read */
    const int32_t len = kh * kw * width;
    for (int32_t t = 0; t < len; ++t) {
        grad_row[t] = 0;
    }
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            int32_t gv = g_y[(oy * p->out_w + ox) * cout + gc];
            if (gv == 0) {
                continue;
            }
            for (int32_t ky = 0; ky < kh; ++ky) {
                int32_t iy = oy * p->sh - p->pad_top + ky;
                if (iy < 0 || iy >= p->in_h) {
                    continue;
                }
                for (int32_t kx = 0; kx < kw; ++kx) {
                    int32_t ix = ox * p->sw - p->pad_left + kx;
                    if (ix < 0 || ix >= p->in_w) {
                        continue;
                    }
                    const int8_t *xr = x_sub + (iy * p->in_w + ix) * n + x0;
                    int64_t *gr = grad_row + (ky * kw + kx) * width;
                    for (int32_t j = 0; j < width; ++j) {
                        gr[j] += (int64_t)(gv * ((int32_t)xr[j] - zp)); /* |product| < 2^23 */
                    }
                }
            }
        }
    }
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.linear_bwd.select_input_channels. */
tt_status tt_linear_save_input_s8(const tt_linear_bwd_params *p, const int8_t *x, int8_t *x_sub) {
    if (!geometry_ok(p) || x == NULL || x_sub == NULL) {
        return TT_ERR_ARG;
    }
    const int32_t n = p->n_channels, cin = p->in_c;
    for (int32_t j = 0; j < n; ++j) {
        if (p->channels[j] < 0 || p->channels[j] >= cin) {
            return TT_ERR_ARG;
        }
    }
    const int32_t positions = p->in_h * p->in_w;
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int8_t *xp = x + pos * cin;
        int8_t *sp = x_sub + pos * n;
        for (int32_t j = 0; j < n; ++j) {
            sp[j] = xp[p->channels[j]];
        }
    }
    return TT_OK;
}
