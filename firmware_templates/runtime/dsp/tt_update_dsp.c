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
 * code of src/tt_update.c, included below.
 *
 * tt_update_bias_one_s32 (and tt_update_bias_s32, which calls it per channel) of a gradient
 * with |G| < 2^30 (reduction shift 0) and total shift R >= 1: the product -G M as one
 * SMULL (|M| < 2^31, see bias_delta) and RoundingDivideByPOT as one 64-bit add and shift;
 * G = 0 leaves the bias as it is (delta 0) after the same checks. Other gradients and
 * shifts, and every invalid argument: the reference code. All other functions are the
 * reference's.
 */
#include "tt_update.h"

#include "tt_dsp.h"

/* The reference row update replaced here becomes a static function (declared static first,
 * so that its definition in the included file has internal linkage): the fallback. The row
 * and slice wrappers (src/tt_update_slice.c) are shared by every backend. */
static tt_status ref_weight_row_src_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                       const tt_grad_row *grad, int64_t e_y, int8_t *w_train, uint32_t *prng);
static tt_status ref_bias_one_s32(const tt_update_params *p, const tt_sgd_step *step, int32_t channel, int64_t grad,
                                  int64_t e_y, int32_t *bias);
static tt_status ref_bias_s32(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad, int32_t e_y,
                              int32_t *bias);
#define tt_update_weight_row_src_s8 ref_weight_row_src_s8
#define tt_update_bias_one_s32 ref_bias_one_s32
#define tt_update_bias_s32 ref_bias_s32
#include "../src/tt_update.c"
#undef tt_update_weight_row_src_s8
#undef tt_update_bias_one_s32
#undef tt_update_bias_s32

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
 * move_row's most common case, R > 32 with e = R - 32 <= 31 (half = 2^(e-1)): per weight
 * s = P + half - [P < 0] as one multiply-accumulate onto k = half - [G, -M of opposite
 * signs] (when G = 0 or M = 0, P = 0 and k = half - 1 gives the same quotient 0 as half:
 * half - 1 < 2^e), q = floor(s / 2^e) from the two words (q_lo the low word, q_hi the high
 * word), then floor((q + u) / 2^32) = q_hi + carry(q_lo + u).
 */
static void move_row_e31(const int64_t *g, int32_t g_stride, int32_t n, int32_t neg_m, int e, int32_t half,
                         int8_t *w, int32_t w_stride, uint32_t *prng) {
    uint32_t x = *prng;
#if TT_DSP_NATIVE && defined(__OPTIMIZE__) /* 11 registers: unavailable at -O0 (frame pointer) */
    if (g_stride == 1 && w_stride == 1 && e <= 30 && n > 0) {
        /* floor((floor(s / 2^e) + u) / 2^32) = floor((s + u 2^e) / 2^(32+e)) (u an integer;
         * the inner floor drops a fraction < 1); A = s + u 2^e lies in (-2^62, 2^63)
         * (|s| < 2^61 + 2^31, 0 <= u 2^e < 2^62 for e <= 30), within int64: one SMLAL onto
         * (k, 0) and one UMLAL of u by 2^e (modulo 2^64, exact here), d = ASR(high word, e);
         * w + d saturated by SSAT to [-128, 127], then -128 -> -127. ~19 instructions. */
        const uint32_t pow_e = (uint32_t)1 << e;
        const int64_t *gp = g;
        int8_t *wp = w;
        int8_t *const end = w + n;
        uint32_t lo, hi, t;
        __asm__ volatile(
            "1:\n\t"
            "ldr %[t], [%[gp]], #8\n\t"
            "eor %[lo], %[t], %[nm]\n\t"
            "add %[lo], %[half], %[lo], asr #31\n\t"
            "mov %[hi], #0\n\t"
            "smlal %[lo], %[hi], %[t], %[nm]\n\t"
            "eor %[x], %[x], %[x], lsl #13\n\t"
            "eor %[x], %[x], %[x], lsr #17\n\t"
            "eor %[x], %[x], %[x], lsl #5\n\t"
            "umlal %[lo], %[hi], %[x], %[pe]\n\t"
            "ldrsb %[t], [%[wp]]\n\t"
            "asr %[hi], %[hi], %[e]\n\t"
            "add %[t], %[t], %[hi]\n\t"
            "ssat %[t], #8, %[t]\n\t"
            "cmn %[t], #128\n\t"
            "it eq\n\t"
            "mvneq %[t], #126\n\t"
            "strb %[t], [%[wp]], #1\n\t"
            "cmp %[wp], %[end]\n\t"
            "bne 1b"
            : [gp] "+r"(gp), [wp] "+r"(wp), [x] "+r"(x), [lo] "=&r"(lo), [hi] "=&r"(hi), [t] "=&r"(t)
            : [nm] "r"(neg_m), [half] "r"(half), [pe] "r"(pow_e), [e] "r"(e), [end] "r"(end)
            : "cc", "memory");
        *prng = x;
        return;
    }
#endif
    const int el = 32 - e; /* 1 .. 31 */
    for (int32_t t = 0; t < n; ++t) {
        const int32_t gv = (int32_t)g[(int64_t)t * g_stride]; /* |G| < 2^30 */
        const int32_t k = half + tt_asr32(gv ^ neg_m, 31);
        const int64_t s = (int64_t)gv * (int64_t)neg_m + (int64_t)k;
        const int32_t s_hi = hi32(s);
        const uint32_t q_lo = (lo32(s) >> e) | ((uint32_t)s_hi << el);
        const int32_t q_hi = tt_asr32(s_hi, e);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        const int32_t d = q_hi + (q_lo + x < x ? 1 : 0);
        int8_t *wt = w + t * w_stride;
        *wt = moved32(*wt, d);
    }
    *prng = x;
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
        const int32_t half = e <= 31 ? (int32_t)((uint32_t)1 << (e - 1)) : 0;
        if (e <= 31) {
            move_row_e31(g, g_stride, n, neg_m, e, half, w, w_stride, &state);
        } else {
            const int64_t half64 = (int64_t)1 << (e - 1);
            for (int32_t t = 0; t < n; ++t) {
                const int64_t p = product(g, t, g_stride, neg_m);
                const int64_t s = p + (p < 0 ? half64 - 1 : half64);
                const int32_t hi = hi32(s);
                const uint32_t q_lo = (uint32_t)tt_asr32(hi, e - 32);
                const int32_t q_hi = tt_asr32(hi, 31);
                const uint32_t u = tt_xorshift32(&state);
                const int32_t d = q_hi + (q_lo + u < u ? 1 : 0);
                int8_t *wt = w + (int64_t)t * w_stride;
                *wt = moved32(*wt, d);
            }
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

/*
 * The bias step of one channel (the reference tt_update_bias_one_s32) for valid arguments.
 * M = asr(asr(q q_lr + 2^30, 31) c_t + 2^14, 15): q, q_lr int32 (q_lr >= 0) give
 * |asr(q q_lr + 2^30, 31)| <= 2^31 - 1 and 0 <= c_t <= 2^15 keeps |M| <= that, so M and
 * G (|G| < 2^30, reduction shift r = 0, G' = G) are exact int32 operands and |G M| < 2^61.
 * For R = 31 - S - e_y >= 1, RoundingDivideByPOT(P, min(R, 62)) (round half away from
 * zero) = floor((P + 2^(e-1) - [P < 0]) / 2^e): with P = Q 2^e + t (0 <= t < 2^e) both add
 * 1 to Q exactly when t >= 2^(e-1) + [P < 0], which is tt_rdbpot64's test (remainder >
 * threshold); |P| < 2^61 keeps the sum within int64.
 */
static inline int32_t bias_moved(const tt_update_params *p, const tt_sgd_step *step, int32_t channel, int64_t grad,
                                 int64_t e_y, int32_t b) {
    const int64_t m1 = tt_asr64((int64_t)p->b_mult[channel] * (int64_t)step->q_lr + ((int64_t)1 << 30), 31);
    const int32_t m = (int32_t)tt_asr64(m1 * (int64_t)step->c_t + ((int64_t)1 << 14), 15);
    const int64_t s = (int64_t)p->b_shift[channel] + (int64_t)step->shift_lr;
    const int64_t prod = (int64_t)(int32_t)grad * (int64_t)(-m); /* -m: |m| <= 2^31 - 1 */
    const int64_t total_r = 31 - s - e_y;
    int64_t delta;
    if (total_r >= 1) {
        const int e = (int)(total_r < MAX_SHIFT ? total_r : MAX_SHIFT);
        delta = tt_asr64(prod + ((int64_t)1 << (e - 1)) - (prod < 0 ? 1 : 0), e);
    } else {
        delta = tt_update_rounding_shift(prod, total_r);
    }
    const int64_t v = (int64_t)b + delta;
    return (int32_t)(v > TT_INT32_MAX ? TT_INT32_MAX : (v < TT_INT32_MIN ? TT_INT32_MIN : v));
}

/* Twin of tinytrain/train/kernels/update.py:update_bias for one element. */
tt_status tt_update_bias_one_s32(const tt_update_params *p, const tt_sgd_step *step, int32_t channel,
                                 int64_t grad, int64_t e_y, int32_t *bias) {
    const int64_t lim = (int64_t)1 << TT_GRAD_UPDATE_BITS; /* r = 0 <=> |G| < 2^30 */
    if (p == NULL || bias == NULL || p->b_mult == NULL || p->b_shift == NULL || channel < 0 ||
        channel >= p->channels || step == NULL || step->q_lr < 0 || step->c_t < 0 || step->c_t > 32768 ||
        grad <= -lim || grad >= lim) {
        return ref_bias_one_s32(p, step, channel, grad, e_y, bias);
    }
    if (grad != 0) {
        bias[channel] = bias_moved(p, step, channel, grad, e_y, bias[channel]);
    }
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/update.py:update_bias. */
tt_status tt_update_bias_s32(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad,
                             int32_t e_y, int32_t *bias) {
    if (p == NULL || grad == NULL) {
        return ref_bias_s32(p, step, grad, e_y, bias); /* TT_ERR_ARG */
    }
    for (int32_t o = 0; o < p->channels; ++o) {
        tt_status st = tt_update_bias_one_s32(p, step, o, grad[o], (int64_t)e_y, bias);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
