/*
 * Backward of ADD, PAD / PADV2 and RESHAPE / SQUEEZE / EXPAND_DIMS (docs/numerics.md,
 * "Other ops"); twins of tinytrain/train/kernels/shape_bwd.py.
 *
 * Shapes are left-padded with 1 to TT_BWD_MAX_RANK (row-major order is unchanged).
 */
#ifndef TT_SHAPE_BWD_H
#define TT_SHAPE_BWD_H

#include "tt_common.h"

#ifndef TT_BWD_MAX_RANK
#define TT_BWD_MAX_RANK 6 /* shapes are left-padded with 1 to this rank (also in tt_pool_bwd.h) */
#endif

/*
 * ADD: the masked output gradient (tt_apply_mask_s16 with the ADD's clamp mask first)
 * goes unchanged to an input of the output's exact shape (same_shape = 1: a copy, same
 * exponent). Any other input (broadcast, or only a different rank) gets the sum over
 * its broadcast axes (in_dims 1 where out_dims is not), normalized to 14 bits: two
 * passes, no scratch; the sum must have fewer than 2^16 terms (prepare_add_backward
 * checks it; the C sums in int64 anyway).
 */
typedef struct {
    int32_t out_dims[TT_BWD_MAX_RANK];
    int32_t in_dims[2][TT_BWD_MAX_RANK]; /* each input's shape, left-padded to the rank */
    int32_t same_shape[2];               /* 1: the input's unpadded shape equals the output's */
} tt_add_bwd_params;

/* numpy: shape_bwd.add_input_grads (input `which` = 0 or 1). g_x must not overlap g_y, except
 * g_x == g_y for a same_shape input. */
tt_status tt_add_bwd_s16(const tt_add_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                         int32_t *e_x);

/* PAD / PADV2: the input gradient is the slice of the output gradient the input filled. */
typedef struct {
    int32_t in_dims[TT_BWD_MAX_RANK];
    int32_t out_dims[TT_BWD_MAX_RANK];
    int32_t before[TT_BWD_MAX_RANK]; /* padding before each axis, >= 0 */
} tt_pad_bwd_params;

/* numpy: shape_bwd.pad_input_grad. g_x may be g_y (the copy runs forward). */
tt_status tt_pad_bwd_s16(const tt_pad_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x);

/* numpy: shape_bwd.reshape_input_grad: the same n mantissas and exponent (g_x is g_y or does
 * not overlap it). */
tt_status tt_reshape_bwd_s16(int32_t n, const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x);

#endif /* TT_SHAPE_BWD_H */
