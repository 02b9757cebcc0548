/*
 * Backward of ADD, PAD and RESHAPE (tt_shape_bwd.h).
 */
#include "tt_shape_bwd.h"

#include "tt_grad.h"
#include "tt_internal.h"

static int32_t size_of(const int32_t *dims) {
    int32_t n = 1;
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        n *= dims[a];
    }
    return n;
}

/* Sum of g_y over the box bdims (broadcast axes) at base offset, output strides ostr. */
static int64_t box_sum(const int16_t *g_y, int32_t base, const int32_t *bdims, const int32_t *ostr) {
    int64_t s = 0;
    for (int32_t t0 = 0; t0 < bdims[0]; ++t0)
        for (int32_t t1 = 0; t1 < bdims[1]; ++t1)
            for (int32_t t2 = 0; t2 < bdims[2]; ++t2)
                for (int32_t t3 = 0; t3 < bdims[3]; ++t3)
                    for (int32_t t4 = 0; t4 < bdims[4]; ++t4)
                        for (int32_t t5 = 0; t5 < bdims[5]; ++t5) {
                            s += g_y[base + t0 * ostr[0] + t1 * ostr[1] + t2 * ostr[2] + t3 * ostr[3] +
                                     t4 * ostr[4] + t5 * ostr[5]];
                        }
    return s;
}

/* One pass of the broadcast ADD backward. */
static uint64_t add_pass(const int32_t *idims, const int32_t *bdims, const int32_t *ostr, const int16_t *g_y,
                         int16_t *g_x, int32_t r, int32_t write) {
    uint64_t m = 0u;
    int32_t q = 0;
    for (int32_t i0 = 0; i0 < idims[0]; ++i0)
        for (int32_t i1 = 0; i1 < idims[1]; ++i1)
            for (int32_t i2 = 0; i2 < idims[2]; ++i2)
                for (int32_t i3 = 0; i3 < idims[3]; ++i3)
                    for (int32_t i4 = 0; i4 < idims[4]; ++i4)
                        for (int32_t i5 = 0; i5 < idims[5]; ++i5) {
                            int32_t base = i0 * ostr[0] + i1 * ostr[1] + i2 * ostr[2] + i3 * ostr[3] +
                                           i4 * ostr[4] + i5 * ostr[5];
                            int64_t acc = box_sum(g_y, base, bdims, ostr);
                            tt_grad_pass_elem(acc, r, write, &g_x[q], &m);
                            ++q;
                        }
    return m;
}

/* Twin of tinytrain.train.kernels.shape_bwd.add_input_grads (one input). */
tt_status tt_add_bwd_s16(const tt_add_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                         int32_t *e_x) {
    if (p == NULL || which < 0 || which > 1 || g_y == NULL || g_x == NULL || e_x == NULL) {
        return TT_ERR_ARG;
    }
    const int32_t *idims = p->in_dims[which];
    int32_t ostr[TT_BWD_MAX_RANK], istr[TT_BWD_MAX_RANK], bdims[TT_BWD_MAX_RANK];
    if (!tt_bwd_strides(p->out_dims, ostr) || !tt_bwd_strides(idims, istr)) {
        return TT_ERR_SHAPE;
    }
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        if (idims[a] == p->out_dims[a]) {
            bdims[a] = 1;
        } else if (idims[a] == 1) {
            bdims[a] = p->out_dims[a]; /* a broadcast axis */
        } else {
            return TT_ERR_SHAPE;
        }
    }
    if (!tt_grad_exp_ok(e_y)) {
        return TT_ERR_RANGE;
    }
    if (p->same_shape[which]) {
        if (size_of(idims) != size_of(p->out_dims)) {
            return TT_ERR_SHAPE;
        }
        return tt_reshape_bwd_s16(size_of(idims), g_y, e_y, g_x, e_x);
    }
    uint64_t m = add_pass(idims, bdims, ostr, g_y, g_x, 0, 0);
    int32_t r = tt_grad_shift_u64(m, TT_GRAD_BITS);
    (void)add_pass(idims, bdims, ostr, g_y, g_x, r, 1);
    *e_x = e_y + r;
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.shape_bwd.pad_input_grad. */
tt_status tt_pad_bwd_s16(const tt_pad_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x) {
    if (p == NULL || g_y == NULL || g_x == NULL || e_x == NULL) {
        return TT_ERR_ARG;
    }
    int32_t ostr[TT_BWD_MAX_RANK], istr[TT_BWD_MAX_RANK];
    if (!tt_bwd_strides(p->out_dims, ostr) || !tt_bwd_strides(p->in_dims, istr)) {
        return TT_ERR_SHAPE;
    }
    int32_t base = 0;
    for (int32_t a = 0; a < TT_BWD_MAX_RANK; ++a) {
        if (p->before[a] < 0 || (int64_t)p->before[a] + p->in_dims[a] > p->out_dims[a]) {
            return TT_ERR_SHAPE;
        }
        base += p->before[a] * ostr[a];
    }
    const int32_t *d = p->in_dims;
    int32_t q = 0;
    /* destination index q <= source index: a forward copy is safe in place */
    for (int32_t i0 = 0; i0 < d[0]; ++i0)
        for (int32_t i1 = 0; i1 < d[1]; ++i1)
            for (int32_t i2 = 0; i2 < d[2]; ++i2)
                for (int32_t i3 = 0; i3 < d[3]; ++i3)
                    for (int32_t i4 = 0; i4 < d[4]; ++i4) {
                        const int16_t *src = g_y + base + i0 * ostr[0] + i1 * ostr[1] + i2 * ostr[2] +
                                             i3 * ostr[3] + i4 * ostr[4];
                        for (int32_t i5 = 0; i5 < d[5]; ++i5) {
                            g_x[q++] = src[i5];
                        }
                    }
    *e_x = e_y;
    return TT_OK;
}

/* Twin of tinytrain.train.kernels.shape_bwd.reshape_input_grad. */
tt_status tt_reshape_bwd_s16(int32_t n, const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x) {
    if (n < 0 || e_x == NULL || (n > 0 && (g_y == NULL || g_x == NULL))) {
        return TT_ERR_ARG;
    }
    if (g_x != g_y) { /* g_x is g_y or does not overlap it */
        for (int32_t i = 0; i < n; ++i) {
            g_x[i] = g_y[i];
        }
    }
    *e_x = e_y;
    return TT_OK;
}
