/*
 * SGD update, optimized backend: replaces src/tt_update.c (see dsp/README.md); the same
 * functions and bytes. C twin of tinytrain/train/kernels/update.py.
 *
 * tt_update_weight_row_src_s8 of an int64 gradient row with scale 1 (every row the
 * generated program and the fused kernels update) whose largest |G| is below 2^30 (then
 * the row's reduction shift r is 0 and G' = G) and whose per-step multiplier M and -M fit
 * int32: the product -G' M is one 32 x 32 -> 64-bit multiply (SMULL), and the stochastic
 * rounding's case (the row's total shift R = 31 - S - e_y: R > 32, 1 <= R <= 32 or R <= 0)
 * is chosen once per row instead of once per weight. Each weight still draws its xorshift32
 * value in order and moves by exactly tt_update_stochastic_shift(-G' M, R, u), clamped to
 * [-127, 127]. Every other row (r > 0, other sources, extreme multipliers): the reference
 * code of src/tt_update.c, included below. All other functions are the reference's.
 */
#include "tt_update.h"

/* The reference row update replaced here becomes a static function (declared static first,
 * so that its definition in the included file has internal linkage): the fallback. The row
 * and slice wrappers (src/tt_update_slice.c) are shared by every backend. */
static tt_status ref_weight_row_src_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                       const tt_grad_row *grad, int64_t e_y, int8_t *w_train, uint32_t *prng);
#define tt_update_weight_row_src_s8 ref_weight_row_src_s8
#include "../src/tt_update.c"
#undef tt_update_weight_row_src_s8

/* w + d clamped to [-127, 127] (|d| <= 2^30). */
static inline int8_t moved32(int8_t w, int32_t d) {
    const int32_t v = (int32_t)w + d;
    return (int8_t)(v > TT_W_MAX ? TT_W_MAX : (v < TT_W_MIN ? TT_W_MIN : v));
}

/* w + delta clamped to [-127, 127] (any int64 delta). */
static inline int8_t moved64(int8_t w, int64_t delta) {
    const int64_t lim = 256; /* |delta| >= 254 saturates any int8 weight */
    return moved32(w, (int32_t)(delta > lim ? lim : (delta < -lim ? -lim : delta)));
}

/* The high word of an int64 (floor(t / 2^32)) and its low word. */
static inline int32_t hi32(int64_t t) {
    return (int32_t)tt_asr64(t, 32);
}

static inline uint32_t lo32(int64_t t) {
    return (uint32_t)(uint64_t)t;
}

/* G[t] * neg_m: |G| < 2^30 and |neg_m| <= 2^31 - 1, so |product| < 2^61. */
static inline int64_t product(const int64_t *g, int32_t t, int32_t g_stride, int32_t neg_m) {
    return (int64_t)(int32_t)g[(int64_t)t * g_stride] * (int64_t)neg_m;
}

/*
 * The row's weights moved by tt_update_stochastic_shift(G[t] * neg_m, total_r, u_t), one
 * xorshift32 draw u_t per weight in order, clamped to [-127, 127]. Rewritten exactly:
 *   R > 32, e = min(R - 32, 62): RoundingDivideByPOT(p, e) = floor((p + 2^(e-1) - [p < 0]) / 2^e)
 *     (round half away from zero) =: q = q_hi 2^32 + q_lo (0 <= q_lo < 2^32), and
 *     floor((q + u) / 2^32) = q_hi + carry(q_lo + u); |p| < 2^61 keeps every sum in int64
 *     and |q_hi| < 2^28;
 *   1 <= R <= 32: floor((p + (u & (2^R - 1))) / 2^R) from the two words of the sum;
 *   R <= 0: the reference's saturating left shift.
 */
static void move_row(const int64_t *g, int32_t g_stride, int32_t n, int32_t neg_m, int64_t total_r, int8_t *w,
                     int32_t w_stride, uint32_t *prng) {
    uint32_t state = *prng;
    if (total_r > 32) {
        const int e = (int)(total_r - 32 < MAX_SHIFT ? total_r - 32 : MAX_SHIFT);
        const int64_t half = (int64_t)1 << (e - 1);
        for (int32_t t = 0; t < n; ++t) {
            const int64_t p = product(g, t, g_stride, neg_m);
            const int64_t s = p + (p < 0 ? half - 1 : half);
            const int32_t hi = hi32(s);
            uint32_t q_lo;
            int32_t q_hi;
            if (e < 32) {
                q_lo = (lo32(s) >> e) | ((uint32_t)hi << (32 - e));
                q_hi = tt_asr32(hi, e);
            } else {
                q_lo = (uint32_t)tt_asr32(hi, e - 32);
                q_hi = tt_asr32(hi, 31);
            }
            const uint32_t u = tt_xorshift32(&state);
            const int32_t d = q_hi + (q_lo + u < u ? 1 : 0);
            int8_t *wt = w + (int64_t)t * w_stride;
            *wt = moved32(*wt, d);
        }
    } else if (total_r >= 1) {
        const int sh = (int)total_r;
        const uint32_t mask = (uint32_t)(((uint64_t)1 << sh) - 1u);
        for (int32_t t = 0; t < n; ++t) {
            const int64_t p = product(g, t, g_stride, neg_m);
            const uint32_t u = tt_xorshift32(&state);
            int8_t *wt = w + (int64_t)t * w_stride;
            *wt = moved64(*wt, tt_asr64(p + (int64_t)(u & mask), sh));
        }
    } else {
        const int64_t left = total_r < -64 ? 64 : -total_r;
        for (int32_t t = 0; t < n; ++t) {
            const int64_t p = product(g, t, g_stride, neg_m);
            (void)tt_xorshift32(&state);
            int8_t *wt = w + (int64_t)t * w_stride;
            *wt = moved64(*wt, saturating_left(p, left, W_SATURATE_LOG2));
        }
    }
    *prng = state;
}

/* Twin of tinytrain/train/kernels/update.py:update_weights for one output channel. */
tt_status tt_update_weight_row_src_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                      const tt_grad_row *grad, int64_t e_y, int8_t *w_train, uint32_t *prng) {
    if (p == NULL || step == NULL || w_train == NULL || prng == NULL || *prng == 0u || p->w_mult == NULL ||
        p->w_shift == NULL || row < 0 || row >= p->rows || p->row_len < 0 || !valid_row_src(grad, p->row_len) ||
        grad->elem_bytes != 8 || grad->scale != 1) {
        return ref_weight_row_src_s8(p, step, row, grad, e_y, w_train, prng);
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
    const int64_t *g = (const int64_t *)grad->data;
    const int32_t gs = grad->stride;
    const int64_t lim = (int64_t)1 << TT_GRAD_UPDATE_BITS; /* r = 0 <=> max |G| < 2^30 */
    int32_t small = m > -((int64_t)1 << 31) && m <= ((int64_t)1 << 31) - 1 && -m <= ((int64_t)1 << 31) - 1;
    for (int32_t t = 0; t < n && small; ++t) {
        const int64_t v = g[(int64_t)t * gs];
        small = v > -lim && v < lim;
    }
    if (!small) {
        return ref_weight_row_src_s8(p, step, row, grad, e_y, w_train, prng);
    }
    int8_t *w = p->depthwise ? w_train + row : w_train + (int64_t)row * n;
    move_row(g, gs, n, (int32_t)(-m), 31 - s - e_y, w, p->depthwise ? p->rows : 1, prng);
    return TT_OK;
}
