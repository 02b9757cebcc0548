/*
 * Bias gradient + SGD step, optimized (replaces src/tt_bias_step.c; the same function, the
 * same bytes). Twin of tinytrain.train.kernels.linear_bwd.bias_grad +
 * tinytrain.train.kernels.update.update_bias.
 *
 * The gradient of channel o is the sum of g_y over the positions. With fewer than 2^16
 * positions and |g_y| <= 2^15 every sum is below 2^31 in magnitude: exact in int32 (the
 * reference sums in int64). Channels four at a time: per position two 4-byte loads hold
 * the four int16 values, each added sign-extended (SXTAH on the DSP extension, which GCC
 * emits for the portable expression); then tt_update_bias_one_s32 per channel in increasing
 * order, exactly as the reference calls it (its status stops the loop at the same channel).
 */
#include "tt_bias_step.h"

#include <string.h>

/* the reference entry point replaced here becomes a static fallback (ref_*) */
static tt_status ref_bias_step_s16(const tt_linear_bwd_params *lb, const tt_update_params *up,
                                   const tt_sgd_step *step, const int16_t *g_y, int32_t e_y, int32_t *bias);
#define tt_bias_step_s16 ref_bias_step_s16
#include "../src/tt_bias_step.c"
#undef tt_bias_step_s16

/* The int16 in the low / high half of a word, sign-extended. */
static inline int32_t lo16(uint32_t v) { return (int32_t)(int16_t)(uint16_t)(v & 0xFFFFu); }
static inline int32_t hi16(uint32_t v) { return (int32_t)(int16_t)(uint16_t)(v >> 16); }

tt_status tt_bias_step_s16(const tt_linear_bwd_params *lb, const tt_update_params *up, const tt_sgd_step *step,
                           const int16_t *g_y, int32_t e_y, int32_t *bias) {
    if (lb == NULL || up == NULL || step == NULL || g_y == NULL || bias == NULL || lb->out_c <= 0 ||
        lb->out_h <= 0 || lb->out_w <= 0 || up->channels != lb->out_c ||
        (int64_t)lb->out_h * lb->out_w >= ((int64_t)1 << 16)) {
        return ref_bias_step_s16(lb, up, step, g_y, e_y, bias);
    }
    const int32_t cout = lb->out_c;
    const int32_t positions = lb->out_h * lb->out_w;
    int32_t o = 0;
    for (; o + 4 <= cout; o += 4) {
        int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0; /* |s| < 2^16 * 2^15 */
        const int16_t *gy = g_y + o;
        for (int32_t pos = 0; pos < positions; ++pos) {
            uint32_t v[2];
            memcpy(v, gy, sizeof v);
            s0 += lo16(v[0]);
            s1 += hi16(v[0]);
            s2 += lo16(v[1]);
            s3 += hi16(v[1]);
            gy += cout;
        }
        const int32_t s[4] = {s0, s1, s2, s3};
        for (int32_t j = 0; j < 4; ++j) {
            const tt_status st = tt_update_bias_one_s32(up, step, o + j, (int64_t)s[j], (int64_t)e_y, bias);
            if (st != TT_OK) {
                return st;
            }
        }
    }
    for (; o < cout; ++o) {
        int32_t s0 = 0;
        const int16_t *gy = g_y + o;
        for (int32_t pos = 0; pos < positions; ++pos) {
            s0 += gy[(int64_t)pos * cout];
        }
        const tt_status st = tt_update_bias_one_s32(up, step, o, (int64_t)s0, (int64_t)e_y, bias);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
