/*
 * Backward of MEAN and AVERAGE_POOL_2D, optimized (replaces src/tt_pool_bwd.c; the same
 * functions, the same bytes).
 *   - tt_mean_bwd_s16 (twin of tinytrain.train.kernels.pool_bwd.pool_input_grad, MEAN) when
 *     every reduced axis precedes every kept axis of size > 1 (a global average pool: input
 *     [1, H, W, C], output [1, 1, 1, C]): every input element of output element o receives the
 *     same g'_o = RoundingDivideByPOT(g_y[o] mu, 15), so the reference's two passes over the
 *     input (max |g'|, then the normalized values) run over the outputs only: the maximum over
 *     the outputs is the maximum over the inputs (each output covers at least one input), the
 *     normalized values of the first block of outputs are computed once and copied to the
 *     other blocks. g_x must not overlap g_y (nor does the reference allow it: its second pass
 *     reads g_y after writing g_x).
 *   - other MEAN layouts and AVERAGE_POOL_2D: the reference code of src/tt_pool_bwd.c,
 *     included below.
 */
#include "tt_pool_bwd.h"

#include <string.h>

/* the reference entry point replaced here becomes a static fallback (ref_*) */
static tt_status ref_mean_bwd_s16(const tt_mean_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                                  int32_t *e_x);
#define tt_mean_bwd_s16 ref_mean_bwd_s16
#include "../src/tt_pool_bwd.c"
#undef tt_mean_bwd_s16

tt_status tt_mean_bwd_s16(const tt_mean_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                          int32_t *e_x) {
    /* the reference's checks, in its order */
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL || p->mu < 0 || p->mu > ((int32_t)1 << Q15_BITS)) {
        return TT_ERR_ARG;
    }
    int32_t istr[TT_BWD_MAX_RANK], ostr[TT_BWD_MAX_RANK];
    if (!tt_bwd_strides(p->in_dims, istr) || !tt_bwd_strides(p->keep_dims, ostr)) {
        return TT_ERR_SHAPE;
    }
    int32_t split = 0; /* one past the last reduced axis */
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        if (p->keep_dims[a] == 1 && p->in_dims[a] != 1) {
            split = a + 1;
        } else if (p->keep_dims[a] != p->in_dims[a]) {
            return TT_ERR_SHAPE;
        }
    }
    if (!tt_grad_exp_ok(e_y) || p->k < 0 || p->k > 31) {
        return TT_ERR_RANGE;
    }
    int32_t inner = 1, outer = 1;
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        if (a >= split) {
            inner *= p->in_dims[a]; /* kept axes: output index = input index modulo inner */
        } else if (p->keep_dims[a] != 1) {
            return ref_mean_bwd_s16(p, g_y, e_y, g_x, e_x); /* a kept axis before a reduced one */
        } else {
            outer *= p->in_dims[a];
        }
    }
    uint64_t m = 0u;
    for (int32_t o = 0; o < inner; ++o) {
        const uint64_t v = tt_abs_u64(scaled(g_y[o], p->mu));
        m = v > m ? v : m;
    }
    const int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    for (int32_t o = 0; o < inner; ++o) {
        g_x[o] = tt_grad_scale64(scaled(g_y[o], p->mu), r);
    }
    for (int32_t t = 1; t < outer; ++t) {
        memcpy(g_x + (size_t)t * (size_t)inner, g_x, (size_t)inner * sizeof(int16_t));
    }
    *e_x = e_y - p->k + r;
    return TT_OK;
}
