/*
 * int8 HARD_SWISH (TFLite Micro reference semantics) and MobileTL's 1-bit sign mask;
 * twins of tinytrain.sim.kernels.nl_activations (run_hard_swish, the table prepare_hard_swish
 * computes) and tinytrain.train.kernels.mask.sign_mask.
 *
 * y = x * relu6(x + 3) / 6 in real values, computed with TFLite Micro's int16 fixed-point
 * steps from a compile-time params struct (tinytrain/testing/c_hard_swish.py derives it from
 * the tensors' scales exactly as prepare_hard_swish does): the C never sees a float.
 */
#ifndef TT_HARD_SWISH_H
#define TT_HARD_SWISH_H

#include "tt_common.h"

typedef struct {
    int32_t input_zp, output_zp; /* int8 zero points */
    int32_t out_mult;            /* int16 multiplier of hires input -> output, in [0, 32767] */
    int32_t out_exp;             /* its exponent, in [-31, 0] */
    int32_t rel_mult;            /* int16 multiplier of hires input -> "reluish" (3/32768 units), [0, 32767] */
    int32_t rel_exp;             /* its exponent, in [-31, 31] */
} tt_hard_swish_params;

/*
 * y[i] = hard_swish(x[i]) for n elements (x and y may alias). The 256 possible outputs are
 * tabulated first (256 bytes of stack), then looked up. TT_ERR_ARG on params out of range.
 */
tt_status tt_hard_swish_s8(const tt_hard_swish_params *p, const int8_t *x, int32_t n, int8_t *y);

/*
 * MobileTL's sign rule: packs the mask (v[i] > zero) of n int8 values into
 * mask[(n + 7) / 8] (8 per byte, little bit order, last byte zero-padded; the layout of
 * tt_mask.h). For a HARD_SWISH, v is its input and zero its input zero point; for a
 * ReLU/ReLU6 folded into requantization, v is the output and zero its act_min.
 * -128 <= zero <= 127.
 */
tt_status tt_sign_mask_s8(const int8_t *v, int32_t n, int32_t zero, uint8_t *mask);

/*
 * The exact HARD_SWISH backward (numpy: tinytrain.train.kernels.act_bwd): g_x = normalize(
 * g_y[i] * deriv[x[i] + 128], e_y - 14) over n elements, deriv the compile-time table of
 * round(d(real x) * 2^14) (|deriv| <= 3 * 2^13). Two passes (max, then the values), so g_x
 * may be g_y. TT_ERR_RANGE when e_y is outside the gradient exponent range.
 */
tt_status tt_hard_swish_bwd_s16(const int32_t *deriv, const int16_t *g_y, int32_t e_y, const int8_t *x, int32_t n,
                                int16_t *g_x, int32_t *e_x);

/* y[i] = x[i] for n bytes (the HARD_SWISH input saved for the exact backward; numpy: act_bwd.save_hard_swish_input). */
tt_status tt_copy_s8(const int8_t *x, int32_t n, int8_t *y);

#endif /* TT_HARD_SWISH_H */
