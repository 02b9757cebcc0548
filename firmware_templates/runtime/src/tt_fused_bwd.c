/* Row-streamed fused backward of expansion CONV_2D E -> DEPTHWISE_CONV_2D D; see tt_fused_bwd.h. */
#include "tt_fused_bwd.h"
#include "tt_fused_bwd_core.h"

#include "tt_fixedpoint.h"

#define GRAD_BITS 14
#define Q15_BITS 15
#define MAX_DROP 14
#define Q15_ONE 32768

/* The row source and run-time context (ed_row_fn / ed_sweep_fn hooks): tt_fused_bwd_core.h,
 * shared with the fused P->D->E backward (tt_fused_pde_bwd.c). */
typedef tt_ed_ctx ed_ctx;

#include "tt_grad.h" /* tt_grad_shift_u64 */

/* normalize's shift for a global max |acc| = m (0 for all zero) (numpy: fused_bwd._shift). */
static int norm_shift(uint64_t m) {
    return (int)tt_grad_shift_u64(m, GRAD_BITS);
}

/* One element of normalize with the tensor's global shift r (numpy: fused_bwd._norm_row):
 * |result| <= 2^14, so the int32 product of a left shift cannot overflow. */
static int32_t norm_elem(int32_t a, int r) {
    if (r < 0) {
        return a * ((int32_t)1 << -r);
    }
    return r > 0 ? tt_rdbpot32(a, r) : a;
}

static int mask_bit(const uint8_t *mask, int32_t i) {
    return (mask[i >> 3] >> (i & 7)) & 1;
}

static uint64_t abs32(int32_t v) {
    return v < 0 ? (uint64_t)0 - (uint64_t)(int64_t)v : (uint64_t)v;
}

/* The int32 value of a modulo-2^32 sum (numpy: wrap_int32). */
static int32_t sum_value(uint32_t u) {
    return tt_wrap32((int64_t)u);
}

/* The plain row source: rows of the whole tensor g_d (fused_bwd.py: run_fused_expand_dw_backward). */
static const int16_t *whole_d_row(const ed_ctx *x, int32_t oy) {
    return x->g_d + (int64_t)oy * x->p->d_out_w * x->p->channels;
}

static void sweep_hook(const ed_ctx *x, int sweep, int begin) {
    if (x->sweep != NULL) {
        x->sweep(x, sweep, begin);
    }
}

/* g'_D of element (oy, ox, c): masked, times μ, rounded down by 15 + d
 * (numpy: fused_bwd._Rows.scaled_d_row). */
static int32_t d_scaled(const ed_ctx *x, const int16_t *row, int32_t oy, int32_t ox, int32_t c) {
    const tt_fused_ed_params *p = x->p;
    if (x->mask_d != NULL && !mask_bit(x->mask_d, (oy * p->d_out_w + ox) * p->channels + c)) {
        return 0;
    }
    return tt_rdbpot32((int32_t)row[ox * p->channels + c] * p->d_mu[c], Q15_BITS + p->d_drop);
}

/* D's input-gradient sums of input row iy into acc_d (numpy: fused_bwd._Rows.acc_d_row). */
static void acc_d_row(const ed_ctx *x, int32_t iy) {
    const tt_fused_ed_params *p = x->p;
    const int32_t C = p->channels, W = p->width;
    const tt_fbwd_weights *wd = x->w_d;
    uint32_t *acc = x->acc_d;
    for (int32_t k = 0; k < W * C; ++k) {
        acc[k] = 0u;
    }
    for (int32_t ky = 0; ky < p->d_kh; ++ky) {
        const int32_t t = iy + p->d_pad_top - ky;
        if (t < 0 || t % p->d_sh != 0 || t / p->d_sh >= p->d_out_h) {
            continue;
        }
        const int32_t oy = t / p->d_sh;
        const int16_t *row = x->d_row(x, oy);
        const int8_t *w_ky = wd->w + ky * p->d_kw * C;
        for (int32_t ox = 0; ox < p->d_out_w; ++ox) {
            const int32_t ix0 = ox * p->d_sw - p->d_pad_left;
            for (int32_t c = 0; c < C; ++c) {
                const int32_t gp = d_scaled(x, row, oy, ox, c);
                if (gp == 0) {
                    continue;
                }
                for (int32_t kx = 0; kx < p->d_kw; ++kx) {
                    const int32_t ix = ix0 + kx;
                    if (ix >= 0 && ix < W) {
                        acc[ix * C + c] += (uint32_t)(gp * (int32_t)w_ky[kx * C + c]);
                    }
                }
            }
            /* trained channels: the slice's current value replaces the flash value */
            for (int32_t j = 0; j < wd->n; ++j) {
                const int32_t c = (int32_t)wd->ch[j];
                const int32_t gp = d_scaled(x, row, oy, ox, c);
                if (gp == 0) {
                    continue;
                }
                for (int32_t kx = 0; kx < p->d_kw; ++kx) {
                    const int32_t ix = ix0 + kx;
                    if (ix >= 0 && ix < W) {
                        const int32_t diff =
                            (int32_t)wd->w_train[(ky * p->d_kw + kx) * wd->n + j] - (int32_t)w_ky[kx * C + c];
                        acc[ix * C + c] += (uint32_t)(gp * diff);
                    }
                }
            }
        }
    }
}

/* E's masked output gradient at (iy, ix, o) from the current acc_d row (numpy: e_grad_row). */
static int32_t e_grad_at(const ed_ctx *x, int32_t iy, int32_t ix, int32_t o, int r_d) {
    const tt_fused_ed_params *p = x->p;
    const int32_t k = ix * p->channels + o;
    if (x->mask_e != NULL && !mask_bit(x->mask_e, iy * p->width * p->channels + k)) {
        return 0;
    }
    return norm_elem(sum_value(x->acc_d[k]), r_d);
}

/* Adds g_E(iy, ix, o) = g to E's weight gradient (numpy: fused_bwd._conv_weight_grad_row). */
static void e_weight_grad(const ed_ctx *x, int32_t iy, int32_t ix, int32_t o, int32_t g) {
    const tt_fused_ed_params *p = x->p;
    const int32_t n = p->e_weight_n;
    for (int32_t ky = 0; ky < p->e_kh; ++ky) {
        const int32_t in_y = iy * p->e_sh + ky - p->e_pad_top;
        if (in_y < 0 || in_y >= p->e_in_h) {
            continue;
        }
        for (int32_t kx = 0; kx < p->e_kw; ++kx) {
            const int32_t in_x = ix * p->e_sw + kx - p->e_pad_left;
            if (in_x < 0 || in_x >= p->e_in_w) {
                continue;
            }
            const int8_t *xs = x->x_sub + (in_y * p->e_in_w + in_x) * n;
            int64_t *wg = x->w_grad + ((o * p->e_kh + ky) * p->e_kw + kx) * n;
            for (int32_t j = 0; j < n; ++j) {
                wg[j] += (int64_t)(g * ((int32_t)xs[j] - p->e_in_zp));
            }
        }
    }
}

/* Adds g_E(iy, ix, o) = g to the row ix of E's input-gradient sums (1×1 E). */
static void e_input_sums(const ed_ctx *x, int32_t ix, int32_t o, int32_t g) {
    const tt_fused_ed_params *p = x->p;
    const int32_t cin = p->e_cin;
    const tt_fbwd_weights *we = x->w_e;
    const int32_t gp = tt_rdbpot32(g * p->e_mu[o], Q15_BITS + p->e_drop);
    if (gp == 0) {
        return;
    }
    uint32_t *acc = x->acc_e + ix * cin;
    const int8_t *w_o = we->w + o * cin;
    for (int32_t i = 0; i < cin; ++i) {
        acc[i] += (uint32_t)(gp * (int32_t)w_o[i]);
    }
    for (int32_t j = 0; j < we->n; ++j) {
        const int32_t i = (int32_t)we->ch[j];
        acc[i] += (uint32_t)(gp * ((int32_t)we->w_train[o * we->n + j] - (int32_t)w_o[i]));
    }
}

/* Pass 2 (params = 1: bias / weight gradients, returns max |E input sums|) or pass 3
 * (params = 0: writes E's normalized input gradient with shift r_e) over input row iy. */
static uint64_t e_row(const ed_ctx *x, int32_t iy, int r_d, int params, int r_e, int16_t *g_in) {
    const tt_fused_ed_params *p = x->p;
    const int32_t C = p->channels, cin = p->e_cin;
    uint64_t top = 0;
    acc_d_row(x, iy);
    for (int32_t ix = 0; ix < p->width; ++ix) {
        if (p->e_input_grad) {
            for (int32_t i = 0; i < cin; ++i) {
                x->acc_e[ix * cin + i] = 0u;
            }
        }
        for (int32_t o = 0; o < C; ++o) {
            const int32_t g = e_grad_at(x, iy, ix, o, r_d);
            if (g == 0) {
                continue;
            }
            if (params && x->bias_grad != NULL) {
                x->bias_grad[o] += g;
            }
            if (params && x->w_grad != NULL) {
                e_weight_grad(x, iy, ix, o, g);
            }
            if (p->e_input_grad) {
                e_input_sums(x, ix, o, g);
            }
        }
        if (p->e_input_grad) {
            const uint32_t *acc = x->acc_e + ix * cin;
            if (params) {
                for (int32_t i = 0; i < cin; ++i) {
                    const uint64_t a = abs32(sum_value(acc[i]));
                    top = a > top ? a : top;
                }
            } else {
                int16_t *out = g_in + (iy * p->width + ix) * cin;
                for (int32_t i = 0; i < cin; ++i) {
                    out[i] = (int16_t)norm_elem(sum_value(acc[i]), r_e);
                }
            }
        }
    }
    return top;
}

/* Byte offsets of the scratch regions (8-byte aligned int64 regions first). */
static size_t bias_bytes(const tt_fused_ed_params *p) {
    return p->e_bias ? (size_t)8 * (size_t)p->channels : 0u;
}

static size_t wgrad_bytes(const tt_fused_ed_params *p) {
    return p->e_weight_n > 0
               ? (size_t)8 * (size_t)p->channels * (size_t)p->e_kh * (size_t)p->e_kw * (size_t)p->e_weight_n
               : 0u;
}

/* Twin of tinytrain/train/kernels/fused_bwd.py:fused_scratch_bytes. */
size_t tt_fused_ed_scratch_bytes(const tt_fused_ed_params *p) {
    if (p == NULL) {
        return 0u;
    }
    size_t n = (size_t)4 * (size_t)p->width * (size_t)p->channels;
    if (p->e_input_grad) {
        n += (size_t)4 * (size_t)p->width * (size_t)p->e_cin;
    }
    return n + bias_bytes(p) + wgrad_bytes(p);
}

int64_t *tt_fused_ed_bias_grad(const tt_fused_ed_params *p, void *scratch) {
    if (p == NULL || scratch == NULL || !p->e_bias) {
        return NULL;
    }
    return (int64_t *)scratch;
}

int64_t *tt_fused_ed_weight_grad(const tt_fused_ed_params *p, void *scratch) {
    if (p == NULL || scratch == NULL || p->e_weight_n <= 0) {
        return NULL;
    }
    return (int64_t *)((uint8_t *)scratch + bias_bytes(p));
}

static int valid_weights(const tt_fbwd_weights *w, int32_t channels) {
    if (w == NULL || w->w == NULL || w->n < 0 || w->n > channels) {
        return 0;
    }
    if (w->n > 0) {
        if (w->ch == NULL || w->w_train == NULL) {
            return 0;
        }
        for (int32_t j = 0; j < w->n; ++j) {
            if ((int32_t)w->ch[j] >= channels) {
                return 0;
            }
        }
    }
    return 1;
}

static int valid_mu(const int32_t *mu, int32_t n) {
    if (mu == NULL) {
        return 0;
    }
    for (int32_t i = 0; i < n; ++i) {
        if (mu[i] < 0 || mu[i] > Q15_ONE) {
            return 0;
        }
    }
    return 1;
}

static int valid_params(const tt_fused_ed_params *p) {
    if (p->height < 1 || p->width < 1 || p->channels < 1 || p->d_kh < 1 || p->d_kw < 1 || p->d_sh < 1 ||
        p->d_sw < 1 || p->d_pad_top < 0 || p->d_pad_left < 0 || p->d_out_h < 1 || p->d_out_w < 1 ||
        p->d_drop < 0 || p->d_drop > MAX_DROP || !valid_mu(p->d_mu, p->channels)) {
        return 0;
    }
    if (p->e_in_h < 1 || p->e_in_w < 1 || p->e_cin < 1 || p->e_kh < 1 || p->e_kw < 1 || p->e_sh < 1 ||
        p->e_sw < 1 || p->e_pad_top < 0 || p->e_pad_left < 0 || p->e_weight_n < 0 || p->e_weight_n > p->e_cin) {
        return 0;
    }
    if (!p->e_input_grad && !p->e_bias && p->e_weight_n == 0) {
        return 0; /* E's backward would compute nothing (numpy: prepare refuses the pair) */
    }
    if (p->e_input_grad) {
        if (p->e_kh != 1 || p->e_kw != 1 || p->e_sh != 1 || p->e_sw != 1 || p->e_pad_top != 0 ||
            p->e_pad_left != 0 || p->e_in_h != p->height || p->e_in_w != p->width || p->e_drop < 0 ||
            p->e_drop > MAX_DROP || !valid_mu(p->e_mu, p->channels)) {
            return 0;
        }
    }
    return 1;
}

/* Passes 1-3 from D's output-gradient rows with exponent e_d: E's parameter gradients in
 * the scratch, E's input gradient, the exponents (numpy: fused_bwd.stream_expand_backward). */
void tt_fused_ed_stream(const ed_ctx *x, int64_t e_d, int16_t *g_in, int32_t *e_in, int32_t *e_param) {
    const tt_fused_ed_params *p = x->p;

    /* Pass 1: the global max of D's input-gradient sums. */
    sweep_hook(x, 1, 1);
    uint64_t m_d = 0;
    for (int32_t iy = 0; iy < p->height; ++iy) {
        acc_d_row(x, iy);
        for (int32_t k = 0; k < p->width * p->channels; ++k) {
            const uint64_t a = abs32(sum_value(x->acc_d[k]));
            m_d = a > m_d ? a : m_d;
        }
    }
    sweep_hook(x, 1, 0);
    const int r_d = norm_shift(m_d);
    const int64_t e_out = e_d + p->d_k + p->d_drop + r_d;
    *e_param = tt_wrap32(e_out);

    /* Pass 2: E's parameter gradients and the max of its input-gradient sums. */
    if (x->bias_grad != NULL) {
        for (int32_t o = 0; o < p->channels; ++o) {
            x->bias_grad[o] = 0;
        }
    }
    if (x->w_grad != NULL) {
        const int32_t nw = p->channels * p->e_kh * p->e_kw * p->e_weight_n;
        for (int32_t k = 0; k < nw; ++k) {
            x->w_grad[k] = 0;
        }
    }
    sweep_hook(x, 2, 1);
    uint64_t m_e = 0;
    for (int32_t iy = 0; iy < p->height; ++iy) {
        const uint64_t t = e_row(x, iy, r_d, 1, 0, NULL);
        m_e = t > m_e ? t : m_e;
    }
    sweep_hook(x, 2, 0);

    /* Pass 3: E's normalized input gradient, row by row. */
    if (p->e_input_grad) {
        const int r_e = norm_shift(m_e);
        sweep_hook(x, 3, 1);
        for (int32_t iy = 0; iy < p->height; ++iy) {
            (void)e_row(x, iy, r_d, 0, r_e, g_in);
        }
        sweep_hook(x, 3, 0);
        *e_in = tt_wrap32(e_out + p->e_k + p->e_drop + r_e);
    }
}

tt_status tt_fused_ed_ctx_init(ed_ctx *x, const tt_fused_ed_params *p, const uint8_t *mask_d, const uint8_t *mask_e,
                               const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e, const int8_t *x_sub_e,
                               int16_t *g_in, int32_t *e_in, void *scratch) {
    if (x == NULL || p == NULL || scratch == NULL || !valid_params(p) || !valid_weights(w_d, p->channels) ||
        (p->d_mask && mask_d == NULL) || (p->e_mask && mask_e == NULL) || (p->e_weight_n > 0 && x_sub_e == NULL)) {
        return TT_ERR_ARG;
    }
    if (p->e_input_grad && (g_in == NULL || e_in == NULL || !valid_weights(w_e, p->e_cin))) {
        return TT_ERR_ARG;
    }
    x->p = p;
    x->g_d = NULL;
    x->d_row = whole_d_row;
    x->sweep = NULL;
    x->src = NULL;
    x->mask_d = p->d_mask ? mask_d : NULL;
    x->mask_e = p->e_mask ? mask_e : NULL;
    x->w_d = w_d;
    x->w_e = w_e;
    x->x_sub = x_sub_e;
    x->bias_grad = tt_fused_ed_bias_grad(p, scratch);
    x->w_grad = tt_fused_ed_weight_grad(p, scratch);
    uint8_t *rows = (uint8_t *)scratch + bias_bytes(p) + wgrad_bytes(p);
    x->acc_d = (uint32_t *)rows;
    x->acc_e = p->e_input_grad ? (uint32_t *)(rows + (size_t)4 * (size_t)p->width * (size_t)p->channels) : NULL;
    return TT_OK;
}

int tt_fbwd_valid_weights(const tt_fbwd_weights *w, int32_t channels) {
    return valid_weights(w, channels);
}

int tt_fbwd_valid_mu(const int32_t *mu, int32_t n) {
    return valid_mu(mu, n);
}

/* Twin of tinytrain/train/kernels/fused_bwd.py:run_fused_expand_dw_backward (E's results;
 * D's parameter gradients come from the unfused kernels). */
tt_status tt_fused_ed_bwd_s16(const tt_fused_ed_params *p, const int16_t *g_d, int32_t e_d, const uint8_t *mask_d,
                              const uint8_t *mask_e, const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e,
                              const int8_t *x_sub_e, int16_t *g_in, int32_t *e_in, int32_t *e_param, void *scratch) {
    if (g_d == NULL || e_param == NULL) {
        return TT_ERR_ARG;
    }
    ed_ctx x;
    const tt_status st = tt_fused_ed_ctx_init(&x, p, mask_d, mask_e, w_d, w_e, x_sub_e, g_in, e_in, scratch);
    if (st != TT_OK) {
        return st;
    }
    x.g_d = g_d;
    tt_fused_ed_stream(&x, (int64_t)e_d, g_in, e_in, e_param);
    return TT_OK;
}
