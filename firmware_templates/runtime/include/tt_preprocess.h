/*
 * tinytrain runtime: input preprocessing of a native uint8 sample into the int8 model input
 * (the integer path of tinytrain.train.data.Preprocess; read that module's docstring).
 *
 *   1. bilinear resize (half-pixel centres) of each uint8 channel from in_h x in_w to
 *      out_h x out_w with Q11 weight tables computed on the host (ResizeAxis.make):
 *        r_a = u0[x] * p[a][lx[x]] + u1[x] * p[a][hx[x]]     for a in {ly[y], hy[y]}   (Q11)
 *        acc = v0[y] * r_ly + v1[y] * r_hy                                         (Q22)
 *        pixel = (acc + 2^21) >> 22
 *      (w0 + w1 = 2^11, so acc <= 255 * 2^22 < 2^31: int32, never negative);
 *   2. a 1-channel sample feeding an out_c-channel model is replicated to every channel;
 *   3. pixel -> int8 through the 256-entry table lut (input_lut on the host).
 * No scratch memory.
 */
#ifndef TT_PREPROCESS_H
#define TT_PREPROCESS_H

#include "tt_common.h"

#define TT_RESIZE_FRAC_BITS 11

/* One axis of the resize (ResizeAxis): m output positions. */
typedef struct {
    const int32_t *lo;  /* [m] source index of weight w0, in [0, n) */
    const int32_t *hi;  /* [m] source index of weight w1, in [0, n) */
    const int32_t *w0;  /* [m] Q11 */
    const int32_t *w1;  /* [m] Q11, w0 + w1 == 2^11 */
} tt_resize_axis;

typedef struct {
    int32_t in_h, in_w, in_c;     /* native sample [in_h][in_w][in_c], in_c = 1 or out_c */
    int32_t out_h, out_w, out_c;  /* model input [out_h][out_w][out_c] */
    tt_resize_axis rows;          /* n = in_h, m = out_h */
    tt_resize_axis cols;          /* n = in_w, m = out_w */
    const int8_t *lut;            /* [256] */
} tt_preprocess_params;

/* Checks the tables (indices in range, weights in [0, 2^11] summing to 2^11: TT_ERR_ARG
 * otherwise), then writes out [out_h][out_w][out_c]. */
tt_status tt_preprocess_u8_s8(const tt_preprocess_params *p, const uint8_t *in, int8_t *out);

#endif /* TT_PREPROCESS_H */
