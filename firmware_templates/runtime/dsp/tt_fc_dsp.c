/*
 * int8 FULLY_CONNECTED (and the 1x1 convolution fast path of tt_conv_s8), optimized
 * backend: replaces src/tt_fc.c (see dsp/README.md). Same function, same arguments, same
 * bytes as the reference; the arithmetic is described in include/tt_fc.h.
 *
 * C twin of tinytrain.sim.kernels.core_matmul.run_fully_connected (int8 path), like
 * src/tt_fc.c. Speed: output-channel pairs x row pairs, SMLAD on sign-extended byte
 * pairs (include/tt_dsp.h), the input zero point folded into a per-channel start value
 * (bias + off * sum of the channel's weights, modulo 2^32: exact because the reference
 * sums modulo 2^32 too). Patched weights (tt_weight_patch) and a weight zero point take
 * the same blocks with the patch / row-sum corrections of the reference.
 */
#include "tt_fc.h"

#include <string.h>

#include "tt_dsp.h"
#include "tt_internal.h"

typedef struct {
    const int8_t *in;
    const int8_t *w;
    const int32_t *bias;
    int32_t k;
    int32_t off;
    uint32_t neg_wzp;
    int mode;
    const tt_weight_patch *patch;
} fc_ctx;

/* The channel's start value: bias + off * (sum of its current weights). */
static uint32_t channel_base(const fc_ctx *c, int32_t o) {
    const int8_t *wr = c->w + (size_t)o * (size_t)c->k;
    const uint32_t b = c->bias != NULL ? (uint32_t)c->bias[o] : 0u;
    uint32_t s;
    if (c->mode == TT_PATCH_PREFIX) {
        const int32_t n = c->patch->n;
        s = tt_dsp_sum_s8(c->patch->w_train + (size_t)o * (size_t)n, n) + tt_dsp_sum_s8(wr + n, c->k - n);
    } else {
        s = tt_dsp_sum_s8(wr, c->k);
    }
    return b + (uint32_t)c->off * s;
}

/* -w_zp * sum_i (x[i] + off) modulo 2^32 (the reference's weight-zero-point correction). */
static uint32_t row_correction(const fc_ctx *c, const int8_t *x) {
    if (c->neg_wzp == 0u) {
        return 0u;
    }
    const uint32_t s = tt_dsp_sum_s8(x, c->k) + (uint32_t)c->off * (uint32_t)c->k;
    return c->neg_wzp * s;
}

/* Patch correction of row x for channel o (delta mode), modulo 2^32. */
static uint32_t delta(const fc_ctx *c, const int8_t *x, int32_t o) {
    const int32_t n = c->patch->n;
    return tt_patch_delta_s8(x, c->off, c->w + (size_t)o * (size_t)c->k, c->patch->w_train + (size_t)o * (size_t)n,
                             c->patch->ch, n);
}

/* acc[] += raw dots of rows x0, x1 with channels o, o + 1 (current weights). */
static void raw_2x2(const fc_ctx *c, const int8_t *x0, const int8_t *x1, int32_t o, uint32_t acc[4]) {
    const int32_t k = c->k;
    const int8_t *w0 = c->w + (size_t)o * (size_t)k;
    if (c->mode == TT_PATCH_PREFIX) {
        const int32_t n = c->patch->n;
        const int8_t *t0 = c->patch->w_train + (size_t)o * (size_t)n;
        tt_dsp_dot_2x2(x0, x1, t0, t0 + n, n, acc);
        tt_dsp_dot_2x2(x0 + n, x1 + n, w0 + n, w0 + k + n, k - n, acc);
        return;
    }
    tt_dsp_dot_2x2(x0, x1, w0, w0 + k, k, acc);
    if (c->mode == TT_PATCH_DELTA) {
        acc[0] += delta(c, x0, o);
        acc[1] += delta(c, x0, o + 1);
        acc[2] += delta(c, x1, o);
        acc[3] += delta(c, x1, o + 1);
    }
}

static void raw_1x2(const fc_ctx *c, const int8_t *x, int32_t o, uint32_t acc[2]) {
    const int32_t k = c->k;
    const int8_t *w0 = c->w + (size_t)o * (size_t)k;
    if (c->mode == TT_PATCH_PREFIX) {
        const int32_t n = c->patch->n;
        const int8_t *t0 = c->patch->w_train + (size_t)o * (size_t)n;
        tt_dsp_dot_1x2(x, t0, t0 + n, n, acc);
        tt_dsp_dot_1x2(x + n, w0 + n, w0 + k + n, k - n, acc);
        return;
    }
    tt_dsp_dot_1x2(x, w0, w0 + k, k, acc);
    if (c->mode == TT_PATCH_DELTA) {
        acc[0] += delta(c, x, o);
        acc[1] += delta(c, x, o + 1);
    }
}

static uint32_t raw_1x1(const fc_ctx *c, const int8_t *x, int32_t o) {
    const int32_t k = c->k;
    const int8_t *w0 = c->w + (size_t)o * (size_t)k;
    if (c->mode == TT_PATCH_PREFIX) {
        const int32_t n = c->patch->n;
        return tt_dsp_dot_1x1(x, c->patch->w_train + (size_t)o * (size_t)n, n) + tt_dsp_dot_1x1(x + n, w0 + n, k - n);
    }
    uint32_t a = tt_dsp_dot_1x1(x, w0, k);
    if (c->mode == TT_PATCH_DELTA) {
        a += delta(c, x, o);
    }
    return a;
}

/* The general path: patches and/or a weight zero point. */
static void fc_general(const tt_fc_params *p, const fc_ctx *c, int8_t *out) {
    const int32_t k = c->k;
    const int32_t cols = p->out_c;
    const int32_t zp = p->out_zp;
    const int32_t lo_z = p->act_min - zp;
    const int32_t hi_z = p->act_max - zp;
    int32_t o = 0;
    for (; o + 2 <= cols; o += 2) {
        const uint32_t b0 = channel_base(c, o), b1 = channel_base(c, o + 1);
        const int32_t q0 = p->mult[o], q1 = p->mult[o + 1];
        const int s0 = (int)p->shift[o], s1 = (int)p->shift[o + 1];
        int32_t r = 0;
        for (; r + 2 <= p->rows; r += 2) {
            const int8_t *x0 = c->in + (size_t)r * (size_t)k;
            const int8_t *x1 = x0 + k;
            const uint32_t c0 = row_correction(c, x0), c1 = row_correction(c, x1);
            uint32_t acc[4] = {b0 + c0, b1 + c0, b0 + c1, b1 + c1};
            raw_2x2(c, x0, x1, o, acc);
            int8_t *y0 = out + (size_t)r * (size_t)cols + o;
            int8_t *y1 = y0 + cols;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, zp, lo_z, hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, zp, lo_z, hi_z);
            y1[0] = tt_dsp_requant_s8(acc[2], q0, s0, zp, lo_z, hi_z);
            y1[1] = tt_dsp_requant_s8(acc[3], q1, s1, zp, lo_z, hi_z);
        }
        if (r < p->rows) {
            const int8_t *x0 = c->in + (size_t)r * (size_t)k;
            const uint32_t c0 = row_correction(c, x0);
            uint32_t acc[2] = {b0 + c0, b1 + c0};
            raw_1x2(c, x0, o, acc);
            int8_t *y0 = out + (size_t)r * (size_t)cols + o;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, zp, lo_z, hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, zp, lo_z, hi_z);
        }
    }
    if (o < cols) {
        const uint32_t b0 = channel_base(c, o);
        for (int32_t r = 0; r < p->rows; ++r) {
            const int8_t *x0 = c->in + (size_t)r * (size_t)k;
            const uint32_t acc = b0 + row_correction(c, x0) + raw_1x1(c, x0, o);
            out[(size_t)r * (size_t)cols + (size_t)o] = tt_dsp_requant_s8(acc, p->mult[o], (int)p->shift[o], zp, lo_z, hi_z);
        }
    }
}

#define TT_FC_DSP_PATCH_MAX_K 352

/* A patched layer without weight zero point (in_c <= TT_FC_DSP_PATCH_MAX_K): per channel pair,
 * the current weights (the flash row with the n trained values put at ch[j]; a prefix patch
 * gives the same row) merged into cur, then that pair as one GEMM: tt_dsp_gemm_wx_s8 (sums of
 * the current weights modulo 2^32, as the reference). cap: cur holds 2 cap bytes. */
static void fc_patched_pairs(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                             const tt_weight_patch *patch, int8_t *out, int8_t *cur) {
    const int32_t k = p->in_c;
    const int32_t n = patch->n;
    for (int32_t o = 0; o < p->out_c; o += 2) {
        const int32_t m = p->out_c - o < 2 ? p->out_c - o : 2;
        for (int32_t i = 0; i < m; ++i) {
            int8_t *row = cur + (size_t)i * (size_t)k;
            const int8_t *wt = patch->w_train + (size_t)(o + i) * (size_t)n;
            memcpy(row, w + (size_t)(o + i) * (size_t)k, (size_t)k);
            for (int32_t j = 0; j < n; ++j) {
                row[patch->ch[j]] = wt[j];
            }
        }
        const tt_dsp_gemm g = {p->rows,        p->in_c,  m, -p->in_zp, p->mult + o, p->shift + o, p->out_zp,
                               p->act_min - p->out_zp, p->act_max - p->out_zp};
        tt_dsp_gemm_wx_s8(&g, in, (size_t)p->in_c, cur, bias != NULL ? bias + o : NULL, out + o, (size_t)p->out_c);
    }
}

static TT_DSP_NOINLINE void fc_patched_small(const tt_fc_params *p, const int8_t *in, const int8_t *w,
                                             const int32_t *bias, const tt_weight_patch *patch, int8_t *out) {
    int8_t cur[2 * TT_DSP_WX_MAX_K];
    fc_patched_pairs(p, in, w, bias, patch, out, cur);
}

static TT_DSP_NOINLINE void fc_patched_large(const tt_fc_params *p, const int8_t *in, const int8_t *w,
                                             const int32_t *bias, const tt_weight_patch *patch, int8_t *out) {
    int8_t cur[2 * TT_FC_DSP_PATCH_MAX_K];
    fc_patched_pairs(p, in, w, bias, patch, out, cur);
}

static void fc_patched(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const tt_weight_patch *patch, int8_t *out) {
    if (p->in_c <= TT_DSP_WX_MAX_K) {
        fc_patched_small(p, in, w, bias, patch, out);
    } else {
        fc_patched_large(p, in, w, bias, patch, out);
    }
}

/* C twin of tinytrain.sim.kernels.core_matmul.run_fully_connected (int8 path), optimized. */
tt_status tt_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                   const tt_weight_patch *patch, int8_t *out) {
    int mode;
    const tt_status st = tt_fc_check(p, in, w, out, patch, &mode);
    if (st != TT_OK) {
        return st;
    }
    if (mode == TT_PATCH_NONE && p->w_zp == 0) {
        const tt_dsp_gemm g = {p->rows, p->in_c, p->out_c, -p->in_zp, p->mult, p->shift,
                               p->out_zp, p->act_min - p->out_zp, p->act_max - p->out_zp};
        tt_dsp_gemm_wx_s8(&g, in, (size_t)p->in_c, w, bias, out, (size_t)p->out_c);
        return TT_OK;
    }
    if (p->w_zp == 0 && p->in_c <= TT_FC_DSP_PATCH_MAX_K) {
        fc_patched(p, in, w, bias, patch, out);
        return TT_OK;
    }
    const fc_ctx c = {in, w, bias, p->in_c, -p->in_zp, (uint32_t)(-p->w_zp), mode, patch};
    fc_general(p, &c, out);
    return TT_OK;
}
