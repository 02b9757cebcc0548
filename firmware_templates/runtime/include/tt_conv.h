/*
 * tinytrain runtime: int8 CONV_2D and DEPTHWISE_CONV_2D forward (TFLite Micro reference
 * semantics: ConvPerChannel / DepthwiseConvPerChannel).
 *
 * Per output value: acc = sum over the taps inside the image of w * (x - in_zp), computed
 * modulo 2^32 (uint32) and read back as int32 (the numpy twin reproduces the same wrap);
 * acc += bias[c] (int32, wrapping); y = tt_mbqm(acc, mult[c], shift[c]) + out_zp, clamped
 * to [act_min, act_max]. Taps in the padding contribute nothing (TFLite skips them).
 * The filter zero point is ignored, as TFLite Micro's int8 kernels do.
 *
 * Bound: |w * (x - in_zp)| <= 128 * 255 = 32640, so the accumulator never wraps for
 * K = kh*kw*filter_in_c <= 65793 taps (every real layer); beyond that the result still
 * equals the twin's (both wrap modulo 2^32).
 *
 * No scratch memory. One sample (N = 1) per call.
 */
#ifndef TT_CONV_H
#define TT_CONV_H

#include "tt_common.h"
#include "tt_fixedpoint.h"

/*
 * Weight patch of a channel-subset weight update: the trained input channels of the layer
 * live in SRAM (w_train) while the original weights stay in flash; the kernels compute
 * with the current weights, i.e. as if w_flash[..., ch[j]] were replaced by w_train[..., j].
 *
 *   CONV_2D:            w_train [out_c][k_h][k_w][n], ch[j] < filter_in_c (input channels)
 *   FULLY_CONNECTED:    w_train [out_c][n],           ch[j] < in_c
 *   DEPTHWISE_CONV_2D:  w_train [k_h][k_w][n],        ch[j] < out_c (whole channels)
 *
 * ch must be strictly increasing (TT_ERR_ARG otherwise). n = 0 or patch = NULL: no patch.
 */
typedef struct {
    int32_t n;
    const uint16_t *ch;     /* [n] trained channel indices, strictly increasing */
    const int8_t *w_train;  /* trained weights, layout above */
} tt_weight_patch;

/* 1 when a * b * c * d (each >= 0) is at most INT32_MAX: every element count and index a
 * kernel computes then fits int32 and size_t, whatever the target. */
static inline int tt_count_ok(int64_t a, int64_t b, int64_t c, int64_t d) {
    int64_t v = a * b;
    if (v > TT_INT32_MAX) {
        return 0;
    }
    v *= c;
    if (v > TT_INT32_MAX) {
        return 0;
    }
    return v * d <= TT_INT32_MAX;
}

/* How a kernel applies a (validated) patch. */
enum { TT_PATCH_NONE = 0, TT_PATCH_PREFIX = 1, TT_PATCH_DELTA = 2 };

/*
 * Validates a patch against `limit` channels: TT_OK and *mode = TT_PATCH_NONE (no patch),
 * TT_PATCH_PREFIX (ch[j] == j for every j: the first n channels read w_train directly) or
 * TT_PATCH_DELTA (any other strictly increasing set: flash result + correction);
 * TT_ERR_ARG for n < 0, n > limit, NULL arrays, or ch not strictly increasing below limit.
 */
static inline tt_status tt_patch_check(const tt_weight_patch *patch, int32_t limit, int *mode) {
    *mode = TT_PATCH_NONE;
    if (patch == NULL || patch->n == 0) {
        return TT_OK;
    }
    if (patch->n < 0 || patch->n > limit || patch->ch == NULL || patch->w_train == NULL) {
        return TT_ERR_ARG;
    }
    int prefix = 1;
    for (int32_t j = 0; j < patch->n; ++j) {
        int32_t c = (int32_t)patch->ch[j];
        if (c >= limit || (j > 0 && c <= (int32_t)patch->ch[j - 1])) {
            return TT_ERR_ARG;
        }
        prefix = prefix && c == j;
    }
    *mode = prefix ? TT_PATCH_PREFIX : TT_PATCH_DELTA;
    return TT_OK;
}

/*
 * The shared int8 output stage: acc (int32 accumulator + bias, modulo 2^32) ->
 * clamp(tt_mbqm(acc, q, shift) + zp, lo + zp, hi + zp), with lo_z = act_min - zp and
 * hi_z = act_max - zp precomputed (clamping before adding zp avoids any overflow).
 */
static inline int8_t tt_requant_s8(uint32_t acc, int32_t q, int shift, int32_t zp, int32_t lo_z, int32_t hi_z) {
    int32_t v = tt_mbqm(tt_wrap32((int64_t)acc), q, shift);
    return (int8_t)(tt_clamp32(v, lo_z, hi_z) + zp);
}

/* sum_i (x[i] + off) * w[i] modulo 2^32 (|each product| <= 255 * 255). */
static inline uint32_t tt_dot_s8(const int8_t *x, int32_t off, const int8_t *w, int32_t len) {
    uint32_t a = 0;
    for (int32_t i = 0; i < len; ++i) {
        a += (uint32_t)(((int32_t)x[i] + off) * (int32_t)w[i]);
    }
    return a;
}

/* Patch correction of one dot product: sum_j (x[ch[j]] + off) * (wt[j] - w[ch[j]]) modulo 2^32. */
static inline uint32_t tt_patch_delta_s8(const int8_t *x, int32_t off, const int8_t *w, const int8_t *wt,
                                         const uint16_t *ch, int32_t n) {
    uint32_t a = 0;
    for (int32_t j = 0; j < n; ++j) {
        int32_t c = ch[j];
        a += (uint32_t)(((int32_t)x[c] + off) * ((int32_t)wt[j] - (int32_t)w[c]));
    }
    return a;
}

/* One dot product of length k with the current weights: w (flash row) patched by the n
 * values wt (the patch row of this dot product) at channels ch, per the patch mode. */
static inline uint32_t tt_dot_patched_s8(const int8_t *x, int32_t off, const int8_t *w, int32_t k, int mode,
                                         const int8_t *wt, const uint16_t *ch, int32_t n) {
    if (mode == TT_PATCH_PREFIX) {
        return tt_dot_s8(x, off, wt, n) + tt_dot_s8(x + n, off, w + n, k - n);
    }
    uint32_t a = tt_dot_s8(x, off, w, k);
    if (mode == TT_PATCH_DELTA) {
        a += tt_patch_delta_s8(x, off, w, wt, ch, n);
    }
    return a;
}

/* Checks the quantization fields shared by conv, depthwise and FC: zero points in int8,
 * -128 <= act_min <= act_max <= 127, `channels` shifts in [-31, 31], non-NULL arrays. */
static inline tt_status tt_check_requant(int32_t in_zp, int32_t out_zp, int32_t act_min, int32_t act_max,
                                         const int32_t *mult, const int32_t *shift, int32_t channels) {
    if (in_zp < TT_INT8_MIN || in_zp > TT_INT8_MAX || out_zp < TT_INT8_MIN || out_zp > TT_INT8_MAX) {
        return TT_ERR_ARG;
    }
    if (act_min < TT_INT8_MIN || act_max > TT_INT8_MAX || act_min > act_max || mult == NULL || shift == NULL) {
        return TT_ERR_ARG;
    }
    for (int32_t c = 0; c < channels; ++c) {
        if (shift[c] < -31 || shift[c] > 31) {
            return TT_ERR_ARG;
        }
    }
    return TT_OK;
}

/* CONV_2D, int8 activations, int8 filter [out_c][k_h][k_w][filter_in_c] (OHWI),
 * groups = in_c / filter_in_c, out_c a multiple of groups. */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w, filter_in_c;
    int32_t stride_h, stride_w;
    int32_t dil_h, dil_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t in_zp;             /* [-128, 127] */
    int32_t out_zp;            /* [-128, 127] */
    int32_t act_min, act_max;  /* -128 <= act_min <= act_max <= 127 */
    const int32_t *mult;       /* [out_c] quantized multipliers (QuantizeMultiplier q) */
    const int32_t *shift;      /* [out_c] exponents, > 0 = left shift, in [-31, 31] */
} tt_conv_params;

/* DEPTHWISE_CONV_2D, int8, filter [1][k_h][k_w][out_c], out_c = in_c * depth_mult
 * (output channel c reads input channel c / depth_mult). */
typedef struct {
    int32_t in_h, in_w, in_c;
    int32_t out_h, out_w, out_c;
    int32_t k_h, k_w, depth_mult;
    int32_t stride_h, stride_w;
    int32_t dil_h, dil_w;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t in_zp, out_zp;
    int32_t act_min, act_max;
    const int32_t *mult;   /* [out_c] */
    const int32_t *shift;  /* [out_c] */
} tt_dw_params;

/*
 * in [in_h][in_w][in_c], w (flash) as above, bias [out_c] or NULL, patch or NULL,
 * out [out_h][out_w][out_c]. 1x1 convolutions without padding or groups take a fast path.
 * Returns TT_ERR_ARG (NULL pointer, zero point / shift / activation range out of range,
 * bad patch), TT_ERR_SHAPE (inconsistent dims) without writing anything.
 */
tt_status tt_conv_s8(const tt_conv_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                     const tt_weight_patch *patch, int8_t *out);

tt_status tt_depthwise_conv_s8(const tt_dw_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                               const tt_weight_patch *patch, int8_t *out);

#endif /* TT_CONV_H */
