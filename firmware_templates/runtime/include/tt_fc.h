/*
 * tinytrain runtime: int8 FULLY_CONNECTED forward (TFLite Micro reference semantics:
 * FullyConnected with a weights zero point for per-tensor weights, FullyConnectedPerChannel
 * (weights zero point ignored, w_zp = 0) for per-channel weights).
 *
 * out[r][o] = clamp(tt_mbqm(acc + bias[o], mult[o], shift[o]) + out_zp, act_min, act_max),
 * acc = sum_i (w[o][i] - w_zp) * (in[r][i] - in_zp) modulo 2^32 (read back as int32; the
 * numpy twin wraps the same way). |(w - w_zp)(x - in_zp)| <= 255 * 255, so no wrap occurs
 * for in_c <= 33025.
 *
 * This is also the 1x1-convolution fast path of tt_conv_s8 (rows = pixels).
 * No scratch memory.
 */
#ifndef TT_FC_H
#define TT_FC_H

#include "tt_common.h"
#include "tt_conv.h" /* tt_weight_patch */

typedef struct {
    int32_t rows;              /* input rows, each in_c consecutive values */
    int32_t in_c;              /* accumulation depth */
    int32_t out_c;             /* weights [out_c][in_c] */
    int32_t in_zp;             /* [-128, 127] */
    int32_t w_zp;              /* [-128, 127]; 0 for per-channel weights */
    int32_t out_zp;            /* [-128, 127] */
    int32_t act_min, act_max;  /* -128 <= act_min <= act_max <= 127 */
    const int32_t *mult;       /* [out_c] (per-tensor weights: the same value repeated) */
    const int32_t *shift;      /* [out_c], > 0 = left shift, in [-31, 31] */
} tt_fc_params;

/* in [rows][in_c], w [out_c][in_c] (flash), bias [out_c] or NULL, patch (layout
 * [out_c][n], see tt_conv.h) or NULL, out [rows][out_c]. */
tt_status tt_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                   const tt_weight_patch *patch, int8_t *out);

#endif /* TT_FC_H */
