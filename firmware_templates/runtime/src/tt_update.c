/* SGD update with QAS-equivalent scaling and stochastic rounding; see tt_update.h. */
#include "tt_update.h"

#include "tt_fixedpoint.h"
#include "tt_internal.h"
#include "tt_prng.h"

#define W_SATURATE_LOG2 8  /* |Δw| >= 2^8 already saturates any int8 weight */
#define B_SATURATE_LOG2 32 /* |Δb| >= 2^32 already saturates any int32 bias */
#define MAX_SHIFT 62       /* RoundingDivideByPOT of |P| < 2^61 by >= 62 gives 0 */

/* p · 2^left (left >= 0) exact while below 2^lg, else ±2^lg (numpy: update._saturating_left). */
static int64_t saturating_left(int64_t p, int64_t left, int lg) {
    int sh = left < (int64_t)lg ? (int)left : lg;
    int64_t lim = ((int64_t)1 << lg) >> sh;
    return tt_clamp64(p, -lim, lim) * ((int64_t)1 << sh);
}

static int valid_row_src(const tt_grad_row *g, int32_t n) {
    if (g == NULL || (n > 0 && g->data == NULL)) {
        return 0;
    }
    return g->elem_bytes == 1 || g->elem_bytes == 2 || g->elem_bytes == 4 || g->elem_bytes == 8;
}

/* Bits r that reduce a row whose max |G| is `top` to |G'| <= 2^30 (numpy: update._reduce_rows). */
static int reduce_bits(uint64_t top) {
    int r = tt_bitlen_u64(top) - TT_GRAD_UPDATE_BITS;
    return r > 0 ? r : 0;
}

/* Twin of tinytrain/train/kernels/update.py:combine_multipliers (one channel). */
tt_status tt_update_combine(const tt_sgd_step *step, int32_t q, int32_t shift, int64_t *m, int64_t *s) {
    if (step == NULL || m == NULL || s == NULL || step->q_lr < 0 || step->c_t < 0 || step->c_t > 32768) {
        return TT_ERR_ARG;
    }
    int64_t m1 = tt_asr64((int64_t)q * (int64_t)step->q_lr + ((int64_t)1 << 30), 31);
    *m = tt_asr64(m1 * (int64_t)step->c_t + ((int64_t)1 << 14), 15);
    *s = (int64_t)shift + (int64_t)step->shift_lr;
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/update.py:stochastic_shift (|p| <= 2^61). */
int64_t tt_update_stochastic_shift(int64_t p, int64_t r, uint32_t u) {
    if (r > 32) {
        int64_t e = r - 32 < MAX_SHIFT ? r - 32 : MAX_SHIFT;
        return tt_asr64(tt_rdbpot64(p, (int)e) + (int64_t)u, 32);
    }
    if (r >= 1) {
        uint64_t mask = ((uint64_t)1 << r) - 1u;
        return tt_asr64(p + (int64_t)((uint64_t)u & mask), (int)r);
    }
    return saturating_left(p, r < -64 ? 64 : -r, W_SATURATE_LOG2);
}

/* Twin of tinytrain/train/kernels/update.py:rounding_shift (|p| <= 2^61). */
int64_t tt_update_rounding_shift(int64_t p, int64_t r) {
    if (r >= 1) {
        return tt_rdbpot64(p, r < MAX_SHIFT ? (int)r : MAX_SHIFT);
    }
    return saturating_left(p, r < -64 ? 64 : -r, B_SATURATE_LOG2);
}

/* Twin of tinytrain/train/kernels/update.py:update_weights for one output channel (the
 * row's draws are the row's share of update_weights' draws, in the same order). */
tt_status tt_update_weight_row_src_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                      const tt_grad_row *grad, int64_t e_y, int8_t *w_train, uint32_t *prng) {
    if (p == NULL || step == NULL || w_train == NULL || prng == NULL || *prng == 0u || p->w_mult == NULL ||
        p->w_shift == NULL || row < 0 || row >= p->rows || p->row_len < 0 || !valid_row_src(grad, p->row_len)) {
        return TT_ERR_ARG;
    }
    int32_t ch = row;
    if (p->depthwise) {
        if (p->row_channel == NULL) {
            return TT_ERR_ARG;
        }
        ch = (int32_t)p->row_channel[row];
    }
    if (ch >= p->channels) {
        return TT_ERR_ARG;
    }
    int64_t m, s;
    tt_status st = tt_update_combine(step, p->w_mult[ch], p->w_shift[ch], &m, &s);
    if (st != TT_OK) {
        return st;
    }
    const int32_t n = p->row_len;
    uint64_t top = 0;
    for (int32_t t = 0; t < n; ++t) {
        uint64_t a = tt_abs_u64(tt_grad_row_at(grad, t));
        top = a > top ? a : top;
    }
    const int r = reduce_bits(top);
    const int64_t total_r = 31 - s - e_y - (int64_t)r;
    int8_t *w = p->depthwise ? w_train + row : w_train + (int64_t)row * n;
    const int64_t w_stride = p->depthwise ? p->rows : 1;
    for (int32_t t = 0; t < n; ++t) {
        int64_t g2 = tt_rdbpot64(tt_grad_row_at(grad, t), r);
        int64_t prod = -g2 * m;
        uint32_t u = tt_xorshift32(prng);
        int64_t delta = tt_update_stochastic_shift(prod, total_r, u);
        int8_t *wt = w + (int64_t)t * w_stride;
        *wt = (int8_t)tt_clamp64((int64_t)*wt + delta, TT_W_MIN, TT_W_MAX);
    }
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/update.py:update_bias for one element. */
tt_status tt_update_bias_one_s32(const tt_update_params *p, const tt_sgd_step *step, int32_t channel,
                                 int64_t grad, int64_t e_y, int32_t *bias) {
    if (p == NULL || bias == NULL || p->b_mult == NULL || p->b_shift == NULL || channel < 0 ||
        channel >= p->channels) {
        return TT_ERR_ARG;
    }
    int64_t m, s;
    tt_status st = tt_update_combine(step, p->b_mult[channel], p->b_shift[channel], &m, &s);
    if (st != TT_OK) {
        return st;
    }
    const int r = reduce_bits(tt_abs_u64(grad));
    const int64_t prod = -tt_rdbpot64(grad, r) * m;
    const int64_t delta = tt_update_rounding_shift(prod, 31 - s - e_y - (int64_t)r);
    bias[channel] = (int32_t)tt_clamp64((int64_t)bias[channel] + delta, TT_INT32_MIN, TT_INT32_MAX);
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/update.py:update_bias. */
tt_status tt_update_bias_s32(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad,
                             int32_t e_y, int32_t *bias) {
    if (p == NULL || grad == NULL) {
        return TT_ERR_ARG;
    }
    for (int32_t o = 0; o < p->channels; ++o) {
        tt_status st = tt_update_bias_one_s32(p, step, o, grad[o], (int64_t)e_y, bias);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
