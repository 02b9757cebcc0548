/*
 * tinytrain runtime: int8 AVERAGE_POOL_2D, MAX_POOL_2D and MEAN forward (TFLite Micro
 * reference semantics). No scratch memory; one sample (N = 1) per call for the pools.
 */
#ifndef TT_POOL_H
#define TT_POOL_H

#include "tt_common.h"

/*
 * AVERAGE_POOL_2D / MAX_POOL_2D over an [in_h][in_w][c] input (input and output share their
 * quantization, so there is no rescaling). Only the taps inside the image count: average =
 * sum / count rounded half away from zero (|sum| <= 128 * k_h * k_w, int32), maximum starts
 * at -128; then clamp to [act_min, act_max]. Average pooling refuses (TT_ERR_SHAPE) a window
 * lying entirely in the padding (TFLite fails on it too).
 */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t k_h, k_w;
    int32_t stride_h, stride_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t act_min, act_max;  /* -128 <= act_min <= act_max <= 127 */
} tt_pool_params;

tt_status tt_avg_pool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out);
tt_status tt_max_pool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out);

/*
 * MEAN (and SUM) over the middle axis of an input viewed as [outer][n][inner] (MEAN over
 * H, W of NHWC: outer = N, n = H * W, inner = C; any run of consecutive axes works):
 *   acc = sum of the n raw values - in_zp * n   (modulo 2^32; |acc| <= 255 n, no wrap for n < 2^23)
 *   out = clamp(tt_mbqm(acc, mult, shift) + out_zp, -128, 127)
 * with (mult, shift) the multiplier of in_scale / out_scale, for MEAN with 1/n folded in
 * (computed on the host by the numpy twin's prepare).
 */
typedef struct {
    int32_t outer, n, inner;
    int32_t in_zp;         /* [-128, 127] */
    int32_t mult, shift;   /* shift in [-31, 31] */
    int32_t out_zp;        /* [-128, 127] */
} tt_mean_params;

/* in [outer][n][inner], out [outer][inner]. */
tt_status tt_mean_s8(const tt_mean_params *p, const int8_t *in, int8_t *out);

#endif /* TT_POOL_H */
