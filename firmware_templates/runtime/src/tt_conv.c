/*
 * int8 CONV_2D and DEPTHWISE_CONV_2D (see tt_conv.h for the arithmetic).
 *
 * CONV_2D: 1x1 convolutions with stride 1, no padding and one group (the pointwise layers
 * that hold most MACs of MobileNetV2) are a matrix product and run through tt_fc_s8's
 * blocked loop; every other convolution runs the generic loop below (per output pixel, per
 * output channel, over the taps inside the image, inner loop over the group's input
 * channels).
 *
 * DEPTHWISE_CONV_2D: per output pixel, blocks of 4 channels (depth multiplier 1) with four
 * accumulators and contiguous loads; single channels otherwise.
 *
 * All accumulations are modulo 2^32 (uint32 arithmetic), read back as int32.
 */
#include "tt_conv.h"

#include "tt_fc.h"
#include "tt_internal.h"

/* Taps [*lo, *hi) of a window whose first tap reads input coordinate `origin` (stride d)
 * that fall inside [0, size). */
static void tap_range(int32_t origin, int32_t k, int32_t d, int32_t size, int32_t *lo, int32_t *hi) {
    int32_t a = origin < 0 ? (-origin + d - 1) / d : 0;
    int32_t b = size - 1 - origin < 0 ? 0 : (size - 1 - origin) / d + 1;
    if (a > k) {
        a = k;
    }
    if (b > k) {
        b = k;
    }
    if (b < a) {
        b = a;
    }
    *lo = a;
    *hi = b;
}

typedef struct {
    int32_t in_h, in_w, in_c, out_h, out_w, k_h, k_w, stride_h, stride_w, dil_h, dil_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
} window_dims;

/* Positive sizes, strides, dilations; non-negative paddings; the last window ends inside
 * the padded input (as TFLite's padding computation guarantees). */
static tt_status check_window(const window_dims *d) {
    if (d->in_h <= 0 || d->in_w <= 0 || d->in_c <= 0 || d->out_h <= 0 || d->out_w <= 0 || d->k_h <= 0 ||
        d->k_w <= 0 || d->stride_h <= 0 || d->stride_w <= 0 || d->dil_h <= 0 || d->dil_w <= 0 || d->pad_top < 0 ||
        d->pad_left < 0 || d->pad_bottom < 0 || d->pad_right < 0) {
        return TT_ERR_SHAPE;
    }
    /* padded extents below 2^30: every coordinate the loops compute fits int32 */
    if ((int64_t)d->in_h + d->pad_top + d->pad_bottom >= ((int64_t)1 << 30) ||
        (int64_t)d->in_w + d->pad_left + d->pad_right >= ((int64_t)1 << 30) ||
        !tt_count_ok(d->in_h, d->in_w, d->in_c, 1)) {
        return TT_ERR_SHAPE;
    }
    int64_t need_h = (int64_t)(d->out_h - 1) * d->stride_h + (int64_t)(d->k_h - 1) * d->dil_h + 1;
    int64_t need_w = (int64_t)(d->out_w - 1) * d->stride_w + (int64_t)(d->k_w - 1) * d->dil_w + 1;
    if (need_h > (int64_t)d->in_h + d->pad_top + d->pad_bottom ||
        need_w > (int64_t)d->in_w + d->pad_left + d->pad_right) {
        return TT_ERR_SHAPE;
    }
    return TT_OK;
}

/* The window_dims of a tt_conv_params or tt_dw_params (the two name these fields alike). */
#define WINDOW_OF(p)                                                                                           \
    {(p)->in_h, (p)->in_w, (p)->in_c, (p)->out_h, (p)->out_w, (p)->k_h, (p)->k_w, (p)->stride_h,               \
     (p)->stride_w, (p)->dil_h, (p)->dil_w, (p)->pad_top, (p)->pad_left, (p)->pad_bottom, (p)->pad_right}

/* C twin of tinytrain.sim.kernels.core_conv.run_conv (int8 path). */
tt_status tt_conv_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                     const tt_weight_patch *patch, int8_t *out) {
    if (p == NULL || in == NULL || w == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    const window_dims d = WINDOW_OF(p);
    tt_status st = check_window(&d);
    if (st != TT_OK) {
        return st;
    }
    if (p->out_c <= 0 || p->filter_in_c <= 0 || p->in_c % p->filter_in_c != 0 ||
        p->out_c % (p->in_c / p->filter_in_c) != 0 || !tt_count_ok(p->out_h, p->out_w, p->out_c, 1) ||
        !tt_count_ok(p->out_c, p->k_h, p->k_w, p->filter_in_c)) {
        return TT_ERR_SHAPE;
    }
    int mode;
    st = tt_requant_patch_check(TT_CHECK_REQUANT_OF(p), patch, p->filter_in_c, &mode);
    if (st != TT_OK) {
        return st;
    }
    const int pointwise = p->k_h == 1 && p->k_w == 1 && p->stride_h == 1 && p->stride_w == 1 && p->pad_top == 0 &&
                          p->pad_left == 0 && p->out_h == p->in_h && p->out_w == p->in_w && p->filter_in_c == p->in_c;
    if (pointwise) {
        const tt_fc_params fc = {p->in_h * p->in_w, p->in_c,    p->out_c, p->in_zp, 0,
                                 p->out_zp,         p->act_min, p->act_max, p->mult, p->shift};
        return tt_fc_s8(&fc, in, w, bias, patch, out);
    }

    const int32_t fcin = p->filter_in_c;
    const int32_t per_group = p->out_c / (p->in_c / fcin);
    const int32_t taps = p->k_h * p->k_w;
    const int32_t off = -p->in_zp;
    const int32_t zp = p->out_zp;
    const int32_t lo_z = p->act_min - zp;
    const int32_t hi_z = p->act_max - zp;
    const int32_t n = mode == TT_PATCH_NONE ? 0 : patch->n;
    const uint16_t *ch = mode == TT_PATCH_NONE ? NULL : patch->ch;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        const int32_t iy0 = oy * p->stride_h - p->pad_top;
        int32_t ky0, ky1;
        tap_range(iy0, p->k_h, p->dil_h, p->in_h, &ky0, &ky1);
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            const int32_t ix0 = ox * p->stride_w - p->pad_left;
            int32_t kx0, kx1;
            tap_range(ix0, p->k_w, p->dil_w, p->in_w, &kx0, &kx1);
            int8_t *y = out + ((size_t)oy * (size_t)p->out_w + (size_t)ox) * (size_t)p->out_c;
            for (int32_t o = 0; o < p->out_c; ++o) {
                const int32_t cin0 = (o / per_group) * fcin;
                uint32_t acc = bias != NULL ? (uint32_t)bias[o] : 0u;
                for (int32_t ky = ky0; ky < ky1; ++ky) {
                    const int32_t iy = iy0 + ky * p->dil_h;
                    const int8_t *row = in + (size_t)iy * (size_t)p->in_w * (size_t)p->in_c + (size_t)cin0;
                    for (int32_t kx = kx0; kx < kx1; ++kx) {
                        const int32_t ix = ix0 + kx * p->dil_w;
                        const size_t tap = (size_t)o * (size_t)taps + (size_t)(ky * p->k_w + kx);
                        const int8_t *x = row + (size_t)ix * (size_t)p->in_c;
                        const int8_t *wt = n != 0 ? patch->w_train + tap * (size_t)n : NULL;
                        acc += tt_dot_patched_s8(x, off, w + tap * (size_t)fcin, fcin, mode, wt, ch, n);
                    }
                }
                y[o] = tt_requant_s8(acc, p->mult[o], p->shift[o], zp, lo_z, hi_z);
            }
        }
    }
    return TT_OK;
}

/* Window of one output pixel of a depthwise convolution. */
typedef struct {
    const int8_t *in;  /* input + channel offset of the first channel computed */
    int32_t in_w, in_c, iy0, ix0, dil_h, dil_w, k_w;
    int32_t ky0, ky1, kx0, kx1;
    int32_t off;
} dw_window;

/* One channel: sum over the valid taps of (x + off) * wbase[tap * wstride]. */
static uint32_t dw_channel(const dw_window *v, const int8_t *wbase, int32_t wstride) {
    uint32_t acc = 0;
    for (int32_t ky = v->ky0; ky < v->ky1; ++ky) {
        const int8_t *row = v->in + (size_t)(v->iy0 + ky * v->dil_h) * (size_t)v->in_w * (size_t)v->in_c;
        const int8_t *wr = wbase + (size_t)(ky * v->k_w) * (size_t)wstride;
        for (int32_t kx = v->kx0; kx < v->kx1; ++kx) {
            const int32_t x = (int32_t)row[(size_t)(v->ix0 + kx * v->dil_w) * (size_t)v->in_c] + v->off;
            acc += (uint32_t)(x * (int32_t)wr[(size_t)kx * (size_t)wstride]);
        }
    }
    return acc;
}

/* Four consecutive channels (depth multiplier 1) whose weights are wbase[tap * wstride + 0..3]. */
static void dw_block4(const dw_window *v, const int8_t *wbase, int32_t wstride, uint32_t acc[4]) {
    uint32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int32_t ky = v->ky0; ky < v->ky1; ++ky) {
        const int8_t *row = v->in + (size_t)(v->iy0 + ky * v->dil_h) * (size_t)v->in_w * (size_t)v->in_c;
        const int8_t *wr = wbase + (size_t)(ky * v->k_w) * (size_t)wstride;
        for (int32_t kx = v->kx0; kx < v->kx1; ++kx) {
            const int8_t *x = row + (size_t)(v->ix0 + kx * v->dil_w) * (size_t)v->in_c;
            const int8_t *wk = wr + (size_t)kx * (size_t)wstride;
            a0 += (uint32_t)(((int32_t)x[0] + v->off) * (int32_t)wk[0]);
            a1 += (uint32_t)(((int32_t)x[1] + v->off) * (int32_t)wk[1]);
            a2 += (uint32_t)(((int32_t)x[2] + v->off) * (int32_t)wk[2]);
            a3 += (uint32_t)(((int32_t)x[3] + v->off) * (int32_t)wk[3]);
        }
    }
    acc[0] = a0;
    acc[1] = a1;
    acc[2] = a2;
    acc[3] = a3;
}

/* C twin of tinytrain.sim.kernels.core_conv.run_depthwise (int8 path). */
tt_status tt_depthwise_conv_s8(const tt_dw_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                               const tt_weight_patch *patch, int8_t *out) {
    if (p == NULL || in == NULL || w == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    const window_dims d = WINDOW_OF(p);
    tt_status st = check_window(&d);
    if (st != TT_OK) {
        return st;
    }
    if (p->depth_mult <= 0 || (int64_t)p->out_c != (int64_t)p->in_c * p->depth_mult ||
        !tt_count_ok(p->out_h, p->out_w, p->out_c, 1) || !tt_count_ok(p->k_h, p->k_w, p->out_c, 1)) {
        return TT_ERR_SHAPE;
    }
    int mode;
    st = tt_requant_patch_check(TT_CHECK_REQUANT_OF(p), patch, p->out_c, &mode);
    if (st != TT_OK) {
        return st;
    }
    const int32_t C = p->out_c;
    const int32_t M = p->depth_mult;
    const int32_t zp = p->out_zp;
    const int32_t lo_z = p->act_min - zp;
    const int32_t hi_z = p->act_max - zp;
    const int32_t n = mode == TT_PATCH_NONE ? 0 : patch->n;
    const uint16_t *ch = mode == TT_PATCH_NONE ? NULL : patch->ch;
    const int8_t *wt = mode == TT_PATCH_NONE ? NULL : patch->w_train;
    dw_window v = {in, p->in_w, p->in_c, 0, 0, p->dil_h, p->dil_w, p->k_w, 0, 0, 0, 0, -p->in_zp};
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        v.iy0 = oy * p->stride_h - p->pad_top;
        tap_range(v.iy0, p->k_h, p->dil_h, p->in_h, &v.ky0, &v.ky1);
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            v.ix0 = ox * p->stride_w - p->pad_left;
            tap_range(v.ix0, p->k_w, p->dil_w, p->in_w, &v.kx0, &v.kx1);
            int8_t *y = out + ((size_t)oy * (size_t)p->out_w + (size_t)ox) * (size_t)C;
            int32_t j = 0; /* patch cursor: ch[j] is the next patched channel */
            int32_t c = 0;
            while (c < C) {
                if (M == 1 && c + 4 <= C) {
                    const int8_t *wb = NULL;
                    int32_t ws = 0;
                    if (j >= n || ch[j] >= c + 4) {
                        wb = w + c;
                        ws = C;
                    } else if (j + 4 <= n && ch[j] == c && ch[j + 3] == c + 3) {
                        wb = wt + j; /* ch strictly increasing: ch[j..j+3] == c..c+3 */
                        ws = n;
                        j += 4;
                    }
                    if (wb != NULL) {
                        uint32_t acc[4];
                        v.in = in + c;
                        dw_block4(&v, wb, ws, acc);
                        for (int32_t i = 0; i < 4; ++i) {
                            const uint32_t b = bias != NULL ? (uint32_t)bias[c + i] : 0u;
                            y[c + i] = tt_requant_s8(acc[i] + b, p->mult[c + i], p->shift[c + i], zp, lo_z, hi_z);
                        }
                        c += 4;
                        continue;
                    }
                }
                const int8_t *wb = w + c;
                int32_t ws = C;
                if (j < n && ch[j] == c) {
                    wb = wt + j;
                    ws = n;
                    ++j;
                }
                v.in = in + c / M;
                const uint32_t b = bias != NULL ? (uint32_t)bias[c] : 0u;
                y[c] = tt_requant_s8(dw_channel(&v, wb, ws) + b, p->mult[c], p->shift[c], zp, lo_z, hi_z);
                ++c;
            }
        }
    }
    return TT_OK;
}
