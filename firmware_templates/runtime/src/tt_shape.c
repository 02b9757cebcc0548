/*
 * int8 PAD / PADV2 and RESHAPE (see tt_shape.h).
 */
#include "tt_shape.h"

#include <string.h>

/* C twin of tinytrain.sim.kernels.core_shape.run_pad (int8 PAD / PADV2). */
tt_status tt_pad_s8(const tt_pad_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    int32_t od[4];
    for (int i = 0; i < 4; ++i) {
        if (p->in_dims[i] < 0 || p->before[i] < 0 || p->after[i] < 0) {
            return TT_ERR_SHAPE;
        }
        int64_t v = (int64_t)p->in_dims[i] + p->before[i] + p->after[i];
        if (v > TT_INT32_MAX) {
            return TT_ERR_SHAPE;
        }
        od[i] = (int32_t)v;
    }
    int64_t count_in = 1, count_out = 1;
    for (int i = 0; i < 4; ++i) {
        count_in *= p->in_dims[i]; /* each factor < 2^31 and the running product <= INT32_MAX */
        count_out *= od[i];
        if (count_in > TT_INT32_MAX || count_out > TT_INT32_MAX) {
            return TT_ERR_SHAPE;
        }
    }
    if (p->value < TT_INT8_MIN || p->value > TT_INT8_MAX) {
        return TT_ERR_ARG;
    }
    const int8_t fill = (int8_t)p->value;
    const int32_t *id = p->in_dims;
    const size_t row = (size_t)od[3];
    const size_t in_row = (size_t)id[3];
    int8_t *y = out;
    for (int32_t a = 0; a < od[0]; ++a) {
        const int in_a = a >= p->before[0] && a < p->before[0] + id[0];
        for (int32_t b = 0; b < od[1]; ++b) {
            const int in_b = in_a && b >= p->before[1] && b < p->before[1] + id[1];
            for (int32_t c = 0; c < od[2]; ++c, y += row) {
                if (!(in_b && c >= p->before[2] && c < p->before[2] + id[2])) {
                    memset(y, fill, row);
                    continue;
                }
                const size_t src =
                    (((size_t)(a - p->before[0]) * (size_t)id[1] + (size_t)(b - p->before[1])) * (size_t)id[2] +
                     (size_t)(c - p->before[2])) *
                    in_row;
                memset(y, fill, (size_t)p->before[3]);
                memcpy(y + p->before[3], in + src, in_row);
                memset(y + (size_t)p->before[3] + in_row, fill, (size_t)p->after[3]);
            }
        }
    }
    return TT_OK;
}

/* C twin of tinytrain.sim.kernels.core_shape.run_reshape (int8). */
tt_status tt_reshape_s8(const tt_reshape_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    if (p->size < 0) {
        return TT_ERR_SHAPE;
    }
    if (out != in) {
        memmove(out, in, (size_t)p->size);
    }
    return TT_OK;
}
