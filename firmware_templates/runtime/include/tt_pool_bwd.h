/*
 * Backward of MEAN and AVERAGE_POOL_2D (docs/numerics.md, "Other ops"); twins of
 * tinytrain/train/kernels/pool_bwd.py.
 *
 * An average of `count` values passes dL/dy / count to each: with the compile-time Q15
 * factor mu = round(2^(15+k) / count) (k = floor(log2 min count)), g' =
 * RoundingDivideByPOT(g_y * mu, 15), the input accumulator sums g' over the windows
 * containing each input element, and (g_x, e_x) = normalize(acc, e_y - k). Two passes
 * (max |acc|, then the normalized values), no scratch; sums are int64, so any int16 g_y
 * is legal.
 */
#ifndef TT_POOL_BWD_H
#define TT_POOL_BWD_H

#include "tt_common.h"

#ifndef TT_BWD_MAX_RANK
#define TT_BWD_MAX_RANK 6 /* shapes are left-padded with 1 to this rank (also in tt_shape_bwd.h) */
#endif

/* MEAN over any non-batch axes (numpy PoolBwdParams with geom None). */
typedef struct {
    int32_t in_dims[TT_BWD_MAX_RANK];   /* input shape, left-padded with 1 */
    int32_t keep_dims[TT_BWD_MAX_RANK]; /* output shape with the reduced axes kept as 1 */
    int32_t mu;                         /* Q15 factor, 0 .. 32768 */
    int32_t k;
} tt_mean_bwd_params;

/* AVERAGE_POOL_2D, NHWC with a batch of 1 (numpy PoolBwdParams with a geometry). */
typedef struct {
    int32_t in_h, in_w, c;
    int32_t out_h, out_w;
    int32_t kh, kw, sh, sw;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    const int32_t *mu; /* [out_h*out_w] Q15 factors of the windows, 0 .. 32768 */
    int32_t k;
} tt_avgpool_bwd_params;

/* numpy: pool_bwd.pool_input_grad of a MEAN. g_y[prod(keep_dims)], g_x[prod(in_dims)]. */
tt_status tt_mean_bwd_s16(const tt_mean_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x);

/* numpy: pool_bwd.pool_input_grad of an AVERAGE_POOL_2D. g_y[out_h*out_w*c], g_x[in_h*in_w*c]. */
tt_status tt_avgpool_bwd_s16(const tt_avgpool_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                             int32_t *e_x);

#endif /* TT_POOL_BWD_H */
