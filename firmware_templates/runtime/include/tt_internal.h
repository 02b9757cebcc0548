/*
 * Small helpers shared by several runtime sources (src/ and dsp/). Internal: not part of
 * any kernel's API, and no numpy twin of its own (each helper is a piece of the kernels
 * that use it).
 */
#ifndef TT_INTERNAL_H
#define TT_INTERNAL_H

#include "tt_common.h"
#include "tt_conv.h"
#include "tt_fc.h"
#include "tt_grad.h"
#include "tt_pool_bwd.h" /* TT_BWD_MAX_RANK */
#include "tt_update.h"   /* tt_grad_row */

/* Element t of a gradient row: data[t · stride] · scale, exact in int64. */
static inline int64_t tt_grad_row_at(const tt_grad_row *g, int32_t t) {
    int64_t i = (int64_t)t * (int64_t)g->stride;
    int64_t v;
    switch (g->elem_bytes) {
    case 1:
        v = ((const int8_t *)g->data)[i];
        break;
    case 2:
        v = ((const int16_t *)g->data)[i];
        break;
    case 4:
        v = ((const int32_t *)g->data)[i];
        break;
    default:
        v = ((const int64_t *)g->data)[i];
        break;
    }
    return v * (int64_t)g->scale;
}

/* Row-major strides of dims (TT_BWD_MAX_RANK of them); 0 when a dim is < 1 or the size
 * exceeds int32, else 1. */
static inline int32_t tt_bwd_strides(const int32_t *dims, int32_t *strides) {
    int64_t s = 1;
    for (int32_t a = TT_BWD_MAX_RANK - 1; a >= 0; --a) {
        if (dims[a] < 1) {
            return 0;
        }
        strides[a] = (int32_t)s;
        s *= dims[a];
        if (s > TT_INT32_MAX) {
            return 0;
        }
    }
    return 1;
}

/* One element of a two-pass normalize: pass 2 (write != 0) stores tt_grad_scale64(acc, r)
 * at *out, pass 1 raises *m to |acc| when larger. */
static inline void tt_grad_pass_elem(int64_t acc, int32_t r, int32_t write, int16_t *out, uint64_t *m) {
    if (write) {
        *out = tt_grad_scale64(acc, r);
    } else {
        uint64_t a = tt_abs_u64(acc);
        *m = a > *m ? a : *m;
    }
}

/* acc[0..3] += sum_i (x0|x1[i] + off) * (w0|w1[i]) for a 2x2 block (x0w0, x0w1, x1w0, x1w1),
 * modulo 2^32. */
static inline void tt_dot_2x2(const int8_t *x0, const int8_t *x1, int32_t off, const int8_t *w0, const int8_t *w1,
                              int32_t len, uint32_t acc[4]) {
    uint32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    const int8_t *end = x0 + len;
    while (x0 < end) {
        int32_t xa = (int32_t)*x0++ + off;
        int32_t xb = (int32_t)*x1++ + off;
        int32_t wa = *w0++;
        int32_t wb = *w1++;
        a00 += (uint32_t)(xa * wa);
        a01 += (uint32_t)(xa * wb);
        a10 += (uint32_t)(xb * wa);
        a11 += (uint32_t)(xb * wb);
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
}

/* tt_check_requant on the fields of a params struct naming them like tt_fc_params,
 * tt_conv_params and tt_dw_params do. */
#define TT_CHECK_REQUANT_OF(p)                                                                                   \
    tt_check_requant((p)->in_zp, (p)->out_zp, (p)->act_min, (p)->act_max, (p)->mult, (p)->shift, (p)->out_c)

/* `requant` (a tt_check_requant status) if it is an error, else tt_patch_check(patch, limit, mode). */
static inline tt_status tt_requant_patch_check(tt_status requant, const tt_weight_patch *patch, int32_t limit,
                                               int *mode) {
    return requant != TT_OK ? requant : tt_patch_check(patch, limit, mode);
}

/* The argument checks of tt_fc_s8 (reference and dsp): sets *mode (tt_patch_check) on TT_OK. */
static inline tt_status tt_fc_check(const tt_fc_params *p, const int8_t *in, const int8_t *w, int8_t *out,
                                    const tt_weight_patch *patch, int *mode) {
    if (p == NULL || in == NULL || w == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    if (p->rows < 0 || p->in_c <= 0 || p->out_c <= 0 || !tt_count_ok(p->rows, p->in_c, 1, 1) ||
        !tt_count_ok(p->rows, p->out_c, 1, 1) || !tt_count_ok(p->out_c, p->in_c, 1, 1)) {
        return TT_ERR_SHAPE;
    }
    tt_status st = TT_CHECK_REQUANT_OF(p);
    if (st != TT_OK) {
        return st;
    }
    if (p->w_zp < TT_INT8_MIN || p->w_zp > TT_INT8_MAX) {
        return TT_ERR_ARG;
    }
    return tt_patch_check(patch, p->in_c, mode);
}

#endif /* TT_INTERNAL_H */
