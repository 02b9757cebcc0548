/*
 * int8 AVERAGE_POOL_2D, MAX_POOL_2D and MEAN (see tt_pool.h).
 */
#include "tt_pool.h"

#include "tt_fixedpoint.h"

/* Taps [*lo, *hi) of a window starting at input coordinate `origin` inside [0, size). */
static void window_range(int32_t origin, int32_t k, int32_t size, int32_t *lo, int32_t *hi) {
    int32_t a = origin < 0 ? -origin : 0;
    int32_t b = size - origin < k ? size - origin : k;
    *lo = a;
    *hi = b > a ? b : a;
}

static tt_status check_pool(const tt_pool_params *p, const int8_t *in, const int8_t *out) {
    if (p == NULL || in == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    if (p->in_h <= 0 || p->in_w <= 0 || p->c <= 0 || p->out_h <= 0 || p->out_w <= 0 || p->k_h <= 0 || p->k_w <= 0 ||
        p->stride_h <= 0 || p->stride_w <= 0 || p->pad_top < 0 || p->pad_left < 0 || p->pad_bottom < 0 ||
        p->pad_right < 0) {
        return TT_ERR_SHAPE;
    }
    /* padded extents below 2^30 and element counts within int32: no index overflows */
    if ((int64_t)p->in_h + p->pad_top + p->pad_bottom >= ((int64_t)1 << 30) ||
        (int64_t)p->in_w + p->pad_left + p->pad_right >= ((int64_t)1 << 30) ||
        (int64_t)p->in_h * p->in_w > TT_INT32_MAX || (int64_t)p->in_h * p->in_w * p->c > TT_INT32_MAX ||
        (int64_t)p->out_h * p->out_w > TT_INT32_MAX || (int64_t)p->out_h * p->out_w * p->c > TT_INT32_MAX) {
        return TT_ERR_SHAPE;
    }
    int64_t need_h = (int64_t)(p->out_h - 1) * p->stride_h + p->k_h;
    int64_t need_w = (int64_t)(p->out_w - 1) * p->stride_w + p->k_w;
    if (need_h > (int64_t)p->in_h + p->pad_top + p->pad_bottom ||
        need_w > (int64_t)p->in_w + p->pad_left + p->pad_right) {
        return TT_ERR_SHAPE;
    }
    if (p->act_min < TT_INT8_MIN || p->act_max > TT_INT8_MAX || p->act_min > p->act_max) {
        return TT_ERR_ARG;
    }
    return TT_OK;
}

static tt_status pool(const tt_pool_params *p, const int8_t *in, int8_t *out, int is_avg) {
    tt_status st = check_pool(p, in, out);
    if (st != TT_OK) {
        return st;
    }
    if (is_avg) {
        /* Window origins grow with the output index: the first and last windows of each axis
         * are the only candidates for lying entirely in the padding. */
        int32_t a, b, c0, c1;
        window_range(-p->pad_top, p->k_h, p->in_h, &a, &b);
        window_range((p->out_h - 1) * p->stride_h - p->pad_top, p->k_h, p->in_h, &c0, &c1);
        if (a == b || c0 == c1) {
            return TT_ERR_SHAPE;
        }
        window_range(-p->pad_left, p->k_w, p->in_w, &a, &b);
        window_range((p->out_w - 1) * p->stride_w - p->pad_left, p->k_w, p->in_w, &c0, &c1);
        if (a == b || c0 == c1) {
            return TT_ERR_SHAPE;
        }
    }
    const int32_t C = p->c;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky0, ky1;
        window_range(iy0, p->k_h, p->in_h, &ky0, &ky1);
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int32_t kx0, kx1;
            window_range(ix0, p->k_w, p->in_w, &kx0, &kx1);
            const int32_t count = (ky1 - ky0) * (kx1 - kx0);
            int8_t *y = out + ((size_t)oy * (size_t)p->out_w + (size_t)ox) * (size_t)C;
            for (int32_t c = 0; c < C; ++c) {
                int32_t acc = is_avg ? 0 : TT_INT8_MIN;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int8_t *row = in + ((size_t)(iy0 + ky) * (size_t)p->in_w) * (size_t)C + (size_t)c;
                    for (int32_t kx = kx0; kx < kx1; ++kx) {
                        const int32_t x = row[(size_t)(ix0 + kx) * (size_t)C];
                        if (is_avg) {
                            acc += x;
                        } else if (x > acc) {
                            acc = x;
                        }
                    }
                }
                if (is_avg) {
                    /* C division truncates toward zero: rounds half away from zero here. */
                    acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
                }
                y[c] = (int8_t)tt_clamp32(acc, p->act_min, p->act_max);
            }
        }
    }
    return TT_OK;
}

/* C twin of tinytrain.sim.kernels.core_pool.run_pool (int8 AVERAGE_POOL_2D). */
tt_status tt_avg_pool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out) {
    return pool(p, in, out, 1);
}

/* C twin of tinytrain.sim.kernels.core_pool.run_pool (int8 MAX_POOL_2D). */
tt_status tt_max_pool_s8(const tt_pool_params *p, const int8_t *in, int8_t *out) {
    return pool(p, in, out, 0);
}

/* C twin of tinytrain.sim.kernels.core_reduce.run_reduce (int8 MEAN / SUM). */
tt_status tt_mean_s8(const tt_mean_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    if (p->outer < 0 || p->n <= 0 || p->inner < 0 || (int64_t)p->outer * p->n > TT_INT32_MAX ||
        (int64_t)p->outer * p->n * p->inner > TT_INT32_MAX) {
        return TT_ERR_SHAPE;
    }
    if (p->in_zp < TT_INT8_MIN || p->in_zp > TT_INT8_MAX || p->out_zp < TT_INT8_MIN || p->out_zp > TT_INT8_MAX ||
        p->shift < -31 || p->shift > 31) {
        return TT_ERR_ARG;
    }
    const uint32_t zp_n = (uint32_t)(-p->in_zp) * (uint32_t)p->n; /* -in_zp * n modulo 2^32 */
    const int32_t lo_z = TT_INT8_MIN - p->out_zp;
    const int32_t hi_z = TT_INT8_MAX - p->out_zp;
    const size_t inner = (size_t)p->inner;
    for (int32_t o = 0; o < p->outer; ++o) {
        const int8_t *base = in + (size_t)o * (size_t)p->n * inner;
        int8_t *y = out + (size_t)o * inner;
        for (size_t i = 0; i < inner; ++i) {
            uint32_t acc = zp_n;
            for (int32_t k = 0; k < p->n; ++k) {
                acc += (uint32_t)(int32_t)base[(size_t)k * inner + i];
            }
            const int32_t v = tt_mbqm(tt_wrap32((int64_t)acc), p->mult, p->shift);
            y[i] = (int8_t)(tt_clamp32(v, lo_z, hi_z) + p->out_zp);
        }
    }
    return TT_OK;
}
