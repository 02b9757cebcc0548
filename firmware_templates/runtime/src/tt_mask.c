/*
 * Clamp masks: packing in the forward pass, application in the backward (tt_mask.h).
 */
#include "tt_mask.h"

static int clamp_args_ok(int32_t n, int32_t act_min, int32_t act_max) {
    return n >= 0 && act_min >= TT_INT8_MIN && act_max <= TT_INT8_MAX && act_min <= act_max;
}

/* Twin of tinytrain.train.kernels.mask.clamp_mask (on a chunk starting at first_bit). */
tt_status tt_clamp_mask_s8_at(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask,
                              int32_t first_bit) {
    if (!clamp_args_ok(n, act_min, act_max) || first_bit < 0 || (n > 0 && (y == NULL || mask == NULL))) {
        return TT_ERR_ARG;
    }
    if (n == 0) {
        return TT_OK;
    }
    int32_t byte = first_bit >> 3;
    int32_t bit = first_bit & 7;
    /* keep the bits below the chunk in its first byte */
    uint32_t cur = (uint32_t)mask[byte] & ((1u << bit) - 1u);
    for (int32_t i = 0; i < n; ++i) {
        int32_t v = y[i];
        if (v > act_min && v < act_max) {
            cur |= 1u << bit;
        }
        if (++bit == 8) {
            mask[byte++] = (uint8_t)cur;
            cur = 0u;
            bit = 0;
        }
    }
    if (bit != 0) {
        mask[byte] = (uint8_t)cur; /* the bits above the chunk are cleared */
    }
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.mask.clamp_mask. */
tt_status tt_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask) {
    return tt_clamp_mask_s8_at(y, n, act_min, act_max, mask, 0);
}

/* Twin of tinytrain.train.kernels.mask.apply_mask. */
tt_status tt_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out) {
    if (n < 0 || (n > 0 && (g == NULL || mask == NULL || out == NULL))) {
        return TT_ERR_ARG;
    }
    for (int32_t i = 0; i < n; ++i) {
        int keep = ((uint32_t)mask[i >> 3] >> (i & 7)) & 1u;
        out[i] = keep ? g[i] : (int16_t)0;
    }
    return TT_OK;
}
