/*
 * int8 HARD_SWISH and MobileTL's sign mask (tt_hard_swish.h).
 */
#include "tt_hard_swish.h"

#include "tt_grad.h"
#include "tt_internal.h"

/* Two's-complement wrap of an int64 to int16 (numpy: nl_fixedpoint.wrap_int16). */
static int32_t wrap16(int64_t v) {
    uint32_t u = (uint32_t)((uint64_t)v & 0xFFFFu);
    return u >= 0x8000u ? (int32_t)u - 65536 : (int32_t)u;
}

/* C division truncating toward zero by 2^15 of an int64 (numpy: nl_fixedpoint._c_div). */
static int64_t div_pow15(int64_t v) { return v >= 0 ? v / 32768 : -((-v) / 32768); }

/* gemmlowp SaturatingRoundingDoublingHighMul<int16_t> (numpy: saturating_rounding_doubling_high_mul16). */
static int32_t srdhm16(int32_t a, int32_t b) {
    if (a == TT_INT16_MIN && b == TT_INT16_MIN) {
        return TT_INT16_MAX;
    }
    int64_t ab = (int64_t)a * (int64_t)b;
    int64_t nudge = ab >= 0 ? (int64_t)(1 << 14) : (int64_t)(1 - (1 << 14));
    return wrap16(div_pow15(ab + nudge));
}

/* TFLite's int16 SaturatingDoublingHighMul, truncating (numpy: saturating_doubling_high_mul16). */
static int32_t sdhm16(int32_t a, int32_t b) {
    if (a == TT_INT16_MIN && b == TT_INT16_MIN) {
        return TT_INT16_MAX;
    }
    return wrap16(div_pow15((int64_t)a * (int64_t)b));
}

/* TFLite's int16 SaturatingLeftShift, 0 <= amount <= 31 (numpy: saturating_left_shift16). */
static int32_t sat_lshift16(int32_t x, int32_t amount) {
    int64_t v = (int64_t)x * ((int64_t)1 << amount);
    if (v > TT_INT16_MAX) {
        return TT_INT16_MAX;
    }
    if (v < TT_INT16_MIN) {
        return TT_INT16_MIN;
    }
    return (int32_t)v;
}

/* gemmlowp RoundingDivideByPOT<int16_t>, mask in int16, 0 <= e <= 31 (numpy: rounding_divide_by_pot16). */
static int32_t rdbpot16(int32_t x, int32_t e) {
    int32_t mask = wrap16(((int64_t)1 << e) - 1);
    /* x & mask, without bitwise operations on negative values: mask is 2^e - 1 (e <= 15) or -1 */
    int32_t remainder = mask < 0 ? x : (int32_t)((uint32_t)x & (uint32_t)mask);
    int32_t threshold = tt_asr32(mask, 1) + (x < 0 ? 1 : 0);
    return wrap16((int64_t)tt_asr32(x, e) + (remainder > threshold ? 1 : 0));
}

/* One input value (numpy: the fn tabulated by nl_activations.prepare_hard_swish). */
static int8_t hard_swish_one(const tt_hard_swish_params *p, int32_t v) {
    int32_t centred = wrap16((int64_t)v - p->input_zp);
    int32_t hires = wrap16((int64_t)centred * 128);
    int32_t preshift_out = srdhm16(hires, p->out_mult);
    int32_t reluish = hires;
    if (p->rel_exp > 0) {
        reluish = sat_lshift16(reluish, p->rel_exp - 1);
    }
    reluish = srdhm16(reluish, p->rel_mult);
    if (p->rel_exp > 0) {
        reluish = sat_lshift16(reluish, 1);
    }
    if (p->rel_exp < 0) {
        reluish = rdbpot16(reluish, -p->rel_exp);
    }
    reluish = wrap16(((int64_t)reluish + 32768) / 2); /* reluish + 2^15 >= 0: the shift is a division */
    int32_t preshift_value = sdhm16(reluish, preshift_out);
    int32_t out = rdbpot16(preshift_value, -p->out_exp);
    out = wrap16((int64_t)out + p->output_zp);
    return (int8_t)tt_clamp32(out, TT_INT8_MIN, TT_INT8_MAX);
}

static int params_ok(const tt_hard_swish_params *p) {
    return p != NULL && p->input_zp >= TT_INT8_MIN && p->input_zp <= TT_INT8_MAX && p->output_zp >= TT_INT8_MIN &&
           p->output_zp <= TT_INT8_MAX && p->out_mult >= 0 && p->out_mult <= TT_INT16_MAX && p->out_exp >= -31 &&
           p->out_exp <= 0 && p->rel_mult >= 0 && p->rel_mult <= TT_INT16_MAX && p->rel_exp >= -31 &&
           p->rel_exp <= 31;
}

/* Twin of tinytrain.sim.kernels.nl_activations.run_hard_swish (int8; its table from prepare_hard_swish). */
tt_status tt_hard_swish_s8(const tt_hard_swish_params *p, const int8_t *x, int32_t n, int8_t *y) {
    if (!params_ok(p) || n < 0 || (n > 0 && (x == NULL || y == NULL))) {
        return TT_ERR_ARG;
    }
    int8_t table[256];
    for (int32_t v = TT_INT8_MIN; v <= TT_INT8_MAX; ++v) {
        table[v - TT_INT8_MIN] = hard_swish_one(p, v);
    }
    for (int32_t i = 0; i < n; ++i) {
        y[i] = table[(int32_t)x[i] - TT_INT8_MIN];
    }
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.mask.sign_mask. */
tt_status tt_sign_mask_s8(const int8_t *v, int32_t n, int32_t zero, uint8_t *mask) {
    if (n < 0 || zero < TT_INT8_MIN || zero > TT_INT8_MAX || (n > 0 && (v == NULL || mask == NULL))) {
        return TT_ERR_ARG;
    }
    uint32_t cur = 0u;
    int32_t bit = 0;
    int32_t byte = 0;
    for (int32_t i = 0; i < n; ++i) {
        if ((int32_t)v[i] > zero) {
            cur |= 1u << bit;
        }
        if (++bit == 8) {
            mask[byte++] = (uint8_t)cur;
            cur = 0u;
            bit = 0;
        }
    }
    if (bit != 0) {
        mask[byte] = (uint8_t)cur;
    }
    return TT_OK;
}

#define TT_HSWISH_DERIV_BITS 14
#define TT_HSWISH_DERIV_MAX (3 << 13) /* 1.5 * 2^14 */

/* One pass of the exact backward: the maximum of |g_y * D[x]| (write = 0), or the values. */
static uint64_t hswish_bwd_pass(const int32_t *deriv, const int16_t *g_y, const int8_t *x, int32_t n, int16_t *g_x,
                                int32_t r, int32_t write) {
    uint64_t m = 0u;
    for (int32_t i = 0; i < n; ++i) {
        int64_t acc = (int64_t)g_y[i] * (int64_t)deriv[(int32_t)x[i] + 128];
        tt_grad_pass_elem(acc, r, write, &g_x[i], &m);
    }
    return m;
}

/* Twin of tinytrain.train.kernels.act_bwd.hard_swish_input_grad. */
tt_status tt_hard_swish_bwd_s16(const int32_t *deriv, const int16_t *g_y, int32_t e_y, const int8_t *x, int32_t n,
                                int16_t *g_x, int32_t *e_x) {
    if (deriv == NULL || e_x == NULL || n < 0 || (n > 0 && (g_y == NULL || x == NULL || g_x == NULL))) {
        return TT_ERR_ARG;
    }
    for (int32_t q = 0; q < 256; ++q) {
        if (deriv[q] < -TT_HSWISH_DERIV_MAX || deriv[q] > TT_HSWISH_DERIV_MAX) {
            return TT_ERR_ARG;
        }
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    uint64_t m = hswish_bwd_pass(deriv, g_y, x, n, g_x, 0, 0);
    int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    (void)hswish_bwd_pass(deriv, g_y, x, n, g_x, r, 1);
    *e_x = e_y - TT_HSWISH_DERIV_BITS + r;
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.act_bwd.save_hard_swish_input. */
tt_status tt_copy_s8(const int8_t *x, int32_t n, int8_t *y) {
    if (n < 0 || (n > 0 && (x == NULL || y == NULL))) {
        return TT_ERR_ARG;
    }
    for (int32_t i = 0; i < n; ++i) {
        y[i] = x[i];
    }
    return TT_OK;
}
