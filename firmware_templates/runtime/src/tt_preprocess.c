/*
 * Native uint8 sample -> int8 model input (see tt_preprocess.h).
 */
#include "tt_preprocess.h"

static tt_status check_axis(const tt_resize_axis *a, int32_t n, int32_t m) {
    if (a->lo == NULL || a->hi == NULL || a->w0 == NULL || a->w1 == NULL) {
        return TT_ERR_ARG;
    }
    for (int32_t i = 0; i < m; ++i) {
        if (a->lo[i] < 0 || a->lo[i] >= n || a->hi[i] < 0 || a->hi[i] >= n || a->w0[i] < 0 || a->w1[i] < 0 ||
            a->w0[i] + a->w1[i] != ((int32_t)1 << TT_RESIZE_FRAC_BITS)) {
            return TT_ERR_ARG;
        }
    }
    return TT_OK;
}

/* C twin of tinytrain.train.data.Preprocess.__call__ (resize_bilinear_u8, channel
 * replication, lookup table) for one sample. */
tt_status tt_preprocess_u8_s8(const tt_preprocess_params *p, const uint8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL || p->lut == NULL) {
        return TT_ERR_ARG;
    }
    if (p->in_h <= 0 || p->in_w <= 0 || p->in_c <= 0 || p->out_h <= 0 || p->out_w <= 0 || p->out_c <= 0 ||
        (p->in_c != 1 && p->in_c != p->out_c) || (int64_t)p->in_h * p->in_w > TT_INT32_MAX ||
        (int64_t)p->in_h * p->in_w * p->in_c > TT_INT32_MAX || (int64_t)p->out_h * p->out_w > TT_INT32_MAX ||
        (int64_t)p->out_h * p->out_w * p->out_c > TT_INT32_MAX) {
        return TT_ERR_SHAPE;
    }
    tt_status st = check_axis(&p->rows, p->in_h, p->out_h);
    if (st == TT_OK) {
        st = check_axis(&p->cols, p->in_w, p->out_w);
    }
    if (st != TT_OK) {
        return st;
    }
    const int32_t cin = p->in_c;
    const int32_t cout = p->out_c;
    const size_t in_row = (size_t)p->in_w * (size_t)cin;
    const int32_t half = (int32_t)1 << (2 * TT_RESIZE_FRAC_BITS - 1);
    int8_t *y = out;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        const uint8_t *r_lo = in + (size_t)p->rows.lo[oy] * in_row;
        const uint8_t *r_hi = in + (size_t)p->rows.hi[oy] * in_row;
        const int32_t v0 = p->rows.w0[oy];
        const int32_t v1 = p->rows.w1[oy];
        for (int32_t ox = 0; ox < p->out_w; ++ox, y += cout) {
            const size_t lx = (size_t)p->cols.lo[ox] * (size_t)cin;
            const size_t hx = (size_t)p->cols.hi[ox] * (size_t)cin;
            const int32_t u0 = p->cols.w0[ox];
            const int32_t u1 = p->cols.w1[ox];
            for (int32_t c = 0; c < cin; ++c) {
                const int32_t ra = u0 * (int32_t)r_lo[lx + (size_t)c] + u1 * (int32_t)r_lo[hx + (size_t)c];
                const int32_t rb = u0 * (int32_t)r_hi[lx + (size_t)c] + u1 * (int32_t)r_hi[hx + (size_t)c];
                const int32_t acc = v0 * ra + v1 * rb; /* <= 255 * 2^22, >= 0 */
                const int8_t q = p->lut[(uint8_t)((acc + half) >> (2 * TT_RESIZE_FRAC_BITS))];
                if (cin == cout) {
                    y[c] = q;
                } else {
                    for (int32_t k = 0; k < cout; ++k) {
                        y[k] = q;
                    }
                }
            }
        }
    }
    return TT_OK;
}
