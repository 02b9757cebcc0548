/*
 * The fused block's stages on the Cortex-M DSP extension (include/tt_dsp.h), optimized
 * backend: replaces src/tt_fused_block_stages.c (see dsp/README.md); the same three
 * functions (include/tt_fused_block_internal.h), the same bytes. The driver
 * (src/tt_fused_block.c: checks, geometry, ring, lead window, masks, ADD) is shared.
 *   - lead 1x1 (expansion) and projection: tt_dsp_gemm_s8 (channel pairs x pixel pairs,
 *     SMLAD, input offset folded into bias + off * weight sum, computed once per row);
 *   - a lead conv with a window (stem): the same blocks over its kh window rows
 *     (window_gemm), when its column dilation is 1;
 *   - depthwise: four channels per 4-byte load, SMLABB/SMLATT;
 *   - everything else (a stage with a weight patch, a column-dilated lead, the channels
 *     left over by the depthwise blocks): the reference loops, *_generic of
 *     src/tt_fused_block_stages.c, included below.
 * Accumulators: the reference's int32 sums never overflow (<= TT_FB_MAX_TAPS taps of
 * |w (x - zp)| <= 32640) so they equal the true sums; ours are the same sums modulo 2^32.
 * C twin of the stage convolutions of tinytrain/sim/kernels/fused_block.py: run_fused_block.
 */
#include "tt_fused_block_internal.h"

#include <string.h>

#include "tt_dsp.h"

/* the reference loops as static functions (lead_row_generic, depthwise_row_generic,
 * project_row_generic), without the reference's tt_fb_* entry points */
#define TT_FB_GENERIC_STAGES_ONLY
#include "../src/tt_fused_block_stages.c"
#undef TT_FB_GENERIC_STAGES_ONLY

/*
 * A windowed convolution row as a blocked GEMM: output pixel ox reads kh segments of
 * seg contiguous bytes at x + ox * x_step + ky * row_stride (a window without column
 * dilation: kw * in_c bytes per window row); channel co's weights are kh * seg
 * contiguous bytes. Channel pairs x pixel pairs, SMLAD, the input offset folded into
 * the start value (bias + off * weight sum), see include/tt_dsp.h.
 */
static void window_gemm(const tt_dsp_gemm *g, int32_t kh, const int8_t *x, size_t x_step, size_t row_stride,
                        const int8_t *w, const int32_t *bias, int8_t *y) {
    const int32_t seg = g->k;
    const int32_t taps = kh * seg;
    const size_t y_stride = (size_t)g->cols;
    int32_t co = 0;
    for (; co + 2 <= g->cols; co += 2) {
        const int8_t *w0 = w + (size_t)co * (size_t)taps;
        const int8_t *w1 = w0 + taps;
        const uint32_t b0 = (bias != NULL ? (uint32_t)bias[co] : 0u) + (uint32_t)g->off * tt_dsp_sum_s8(w0, taps);
        const uint32_t b1 = (bias != NULL ? (uint32_t)bias[co + 1] : 0u) + (uint32_t)g->off * tt_dsp_sum_s8(w1, taps);
        const int32_t q0 = g->mult[co], q1 = g->mult[co + 1];
        const int s0 = (int)g->shift[co], s1 = (int)g->shift[co + 1];
        int32_t ox = 0;
        for (; ox + 2 <= g->rows; ox += 2) {
            uint32_t acc[4] = {b0, b1, b0, b1};
            const int8_t *xa = x + (size_t)ox * x_step;
            for (int32_t ky = 0; ky < kh; ++ky) {
                const int8_t *xr = xa + (size_t)ky * row_stride;
                tt_dsp_dot_2x2(xr, xr + x_step, w0 + (size_t)ky * (size_t)seg, w1 + (size_t)ky * (size_t)seg, seg, acc);
            }
            int8_t *y0 = y + (size_t)ox * y_stride + co;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, g->zp, g->lo_z, g->hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, g->zp, g->lo_z, g->hi_z);
            y0[y_stride] = tt_dsp_requant_s8(acc[2], q0, s0, g->zp, g->lo_z, g->hi_z);
            y0[y_stride + 1] = tt_dsp_requant_s8(acc[3], q1, s1, g->zp, g->lo_z, g->hi_z);
        }
        if (ox < g->rows) {
            uint32_t acc[2] = {b0, b1};
            const int8_t *xa = x + (size_t)ox * x_step;
            for (int32_t ky = 0; ky < kh; ++ky) {
                tt_dsp_dot_1x2(xa + (size_t)ky * row_stride, w0 + (size_t)ky * (size_t)seg,
                               w1 + (size_t)ky * (size_t)seg, seg, acc);
            }
            int8_t *y0 = y + (size_t)ox * y_stride + co;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, g->zp, g->lo_z, g->hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, g->zp, g->lo_z, g->hi_z);
        }
    }
    if (co < g->cols) {
        const int8_t *w0 = w + (size_t)co * (size_t)taps;
        const uint32_t b0 = (bias != NULL ? (uint32_t)bias[co] : 0u) + (uint32_t)g->off * tt_dsp_sum_s8(w0, taps);
        for (int32_t ox = 0; ox < g->rows; ++ox) {
            uint32_t acc = b0;
            for (int32_t ky = 0; ky < kh; ++ky) {
                acc += tt_dsp_dot_1x1(x + (size_t)ox * x_step + (size_t)ky * row_stride, w0 + (size_t)ky * (size_t)seg,
                                      seg);
            }
            y[(size_t)ox * y_stride + (size_t)co] =
                tt_dsp_requant_s8(acc, g->mult[co], (int)g->shift[co], g->zp, g->lo_z, g->hi_z);
        }
    }
}

#define TT_DSP_IM2COL_MAX_TAPS 36
#define TT_DSP_IM2COL_PIXELS 8

/* The last (taps % 4 != 0) or no extra word of a window: the x bytes of taps 4 * t4 ..
 * taps - 1 placed at the end of a word whose first bytes are 0, so that it pairs with the
 * weight word at taps - 4 (inside the channel's weights) and the extra weight bytes meet
 * zeros. */
static void tt_dsp_im2col_pixel(const int8_t *xa, int32_t kh, int32_t seg, size_t row_stride, int32_t taps,
                                int8_t *dst) {
    int8_t win[TT_DSP_IM2COL_MAX_TAPS];
    for (int32_t ky = 0; ky < kh; ++ky) {
        memcpy(win + (size_t)ky * (size_t)seg, xa + (size_t)ky * row_stride, (size_t)seg);
    }
    const int32_t full = taps & ~3;
    memcpy(dst, win, (size_t)full);
    const int32_t rest = taps - full;
    if (rest != 0) {
        memset(dst + full, 0, 4);
        memcpy(dst + full + 4 - rest, win + full, (size_t)rest);
    }
}

/*
 * A windowed convolution row whose window (kh rows of seg bytes, taps = kh * seg <=
 * TT_DSP_IM2COL_MAX_TAPS) is gathered once per pixel into a contiguous buffer (chunks of
 * TT_DSP_IM2COL_PIXELS pixels), then channel pairs x pixel pairs as one GEMM over the whole
 * window: a channel's taps weights are contiguous (OHWI), the last partial word pairs
 * weights taps - 4 .. taps - 1 with (0.., the last taps % 4 x bytes), see
 * tt_dsp_im2col_pixel; requantization tt_dsp_rq.
 */
static void window_gemm_im2col(const tt_dsp_gemm *g, int32_t kh, const int8_t *x, size_t x_step, size_t row_stride,
                               const int8_t *w, const int32_t *bias, int8_t *y) {
    const int32_t seg = g->k;
    const int32_t taps = kh * seg;
    const int32_t full = taps & ~3;
    const int32_t extra = taps != full;
    const int32_t xs = full + 4 * extra; /* bytes per gathered pixel */
    const size_t y_stride = (size_t)g->cols;
    const int32_t zp = g->zp, lo_z = g->lo_z, hi_z = g->hi_z;
    int8_t buf[TT_DSP_IM2COL_PIXELS * (TT_DSP_IM2COL_MAX_TAPS + 4)];
    for (int32_t px0 = 0; px0 < g->rows; px0 += TT_DSP_IM2COL_PIXELS) {
        const int32_t np = g->rows - px0 < TT_DSP_IM2COL_PIXELS ? g->rows - px0 : TT_DSP_IM2COL_PIXELS;
        for (int32_t i = 0; i < np; ++i) {
            tt_dsp_im2col_pixel(x + (size_t)(px0 + i) * x_step, kh, seg, row_stride, taps, buf + (size_t)i * (size_t)xs);
        }
        for (int32_t co = 0; co < g->cols; ++co) {
            const int8_t *w0 = w + (size_t)co * (size_t)taps;
            const int pair = co + 1 < g->cols;
            const int8_t *w1 = pair ? w0 + taps : w0;
            const uint32_t b0 = (bias != NULL ? (uint32_t)bias[co] : 0u) + (uint32_t)g->off * tt_dsp_sum_s8(w0, taps);
            const uint32_t b1 =
                pair ? (bias != NULL ? (uint32_t)bias[co + 1] : 0u) + (uint32_t)g->off * tt_dsp_sum_s8(w1, taps) : 0u;
            const tt_dsp_rq rq[2] = {tt_dsp_rq_make(g->mult[co], g->shift[co]),
                                     tt_dsp_rq_make(g->mult[co + pair], g->shift[co + pair])};
            for (int32_t i = 0; i < np; i += 2) {
                const int8_t *xa = buf + (size_t)i * (size_t)xs;
                const int8_t *xb = i + 1 < np ? xa + xs : xa; /* an odd last pixel: computed twice, stored once */
                uint32_t acc[4] = {b0, b1, b0, b1};
                tt_dsp_dot_2x2_w(xa, xb, w0, w1, full, acc);
                if (extra) {
                    tt_dsp_dot_2x2_w(xa + full, xb + full, w0 + taps - 4, w1 + taps - 4, 4, acc);
                }
                int8_t *y0 = y + (size_t)(px0 + i) * y_stride + (size_t)co;
                y0[0] = tt_dsp_rq_s8(acc[0], &rq[0], zp, lo_z, hi_z);
                if (pair) {
                    y0[1] = tt_dsp_rq_s8(acc[1], &rq[1], zp, lo_z, hi_z);
                }
                if (i + 1 < np) {
                    y0[y_stride] = tt_dsp_rq_s8(acc[2], &rq[0], zp, lo_z, hi_z);
                    if (pair) {
                        y0[y_stride + 1] = tt_dsp_rq_s8(acc[3], &rq[1], zp, lo_z, hi_z);
                    }
                }
            }
            co += pair;
        }
    }
}

/* The stage's GEMM constants over `rows` output pixels, k bytes per segment, cols channels. */
static tt_dsp_gemm stage_gemm(const tt_fb_stage *st, int32_t rows, int32_t k, int32_t cols) {
    const tt_dsp_gemm g = {rows,          k,           cols, -st->input_zp, st->multiplier, st->shift, st->output_zp,
                           st->act_min - st->output_zp, st->act_max - st->output_zp};
    return g;
}


void tt_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->lead_win;
    const tt_fb_stage *st = &p->lead;
    const int32_t cin = p->in_c;
    if (c->lead_mode != TT_PATCH_NONE || (!c->direct && g->dw != 1)) {
        lead_row_generic(c, rows, row_stride, dst); /* patched weights, column dilation */
        return;
    }
    if (c->direct) {
        const tt_dsp_gemm gm = stage_gemm(st, p->mid_w, cin, p->mid_c);
        tt_dsp_gemm_rq_s8(&gm, rows, (size_t)cin, st->weights, c->lead_bias, dst, (size_t)p->mid_c);
        return;
    }
    const tt_dsp_gemm gm = stage_gemm(st, p->mid_w, g->kw * cin, p->mid_c);
    if (g->kh * g->kw * cin <= TT_DSP_IM2COL_MAX_TAPS && g->kh * g->kw * cin >= 4) {
        window_gemm_im2col(&gm, g->kh, rows, (size_t)g->sw * (size_t)cin, row_stride, st->weights, c->lead_bias, dst);
        return;
    }
    window_gemm(&gm, g->kh, rows, (size_t)g->sw * (size_t)cin, row_stride, st->weights, c->lead_bias, dst);
}

#define TT_DSP_DW_MAX_KH 16
#define TT_DSP_DW_MAX_TAPS 25

/* One depthwise tap for channels ch0 .. ch0 + 3: input word at px, the tap's weights
 * pre-extended in wt[0] (ch, ch + 2) and wt[1] (ch + 1, ch + 3). */
#define TT_DSP_DW_TAP(px, wt)                                                                                          \
    do {                                                                                                               \
        const uint32_t xv_ = tt_ld32(px);                                                                              \
        const uint32_t xe_ = tt_sxtb16(xv_), xo_ = tt_sxtb16_ror8(xv_);                                                \
        a0 = tt_smlabb(xe_, (wt)[0], a0);                                                                              \
        a1 = tt_smlabb(xo_, (wt)[1], a1);                                                                              \
        a2 = tt_smlatt(xe_, (wt)[0], a2);                                                                              \
        a3 = tt_smlatt(xo_, (wt)[1], a3);                                                                              \
    } while (0)

/* Four channels at a time: per group, the weights are sign-extended once into int16 pairs
 * (wx: tap t's (ch, ch + 2) and (ch + 1, ch + 3) words), the start values bias + off *
 * (weight sum) and the requantization constants computed once; per output pixel and tap
 * one 4-byte input load, SXTB16 into (ch, ch + 2) / (ch + 1, ch + 3) pairs, SMLABB /
 * SMLATT into four accumulators (3-wide windows without column dilation: the row's three
 * taps unrolled). Remaining channels, windows of more than TT_DSP_DW_MAX_TAPS taps or
 * TT_DSP_DW_MAX_KH rows, patched weights: the reference loop. */
void tt_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->dw_win;
    const tt_fb_stage *st = &p->dw;
    const int32_t kh = g->kh, kw = g->kw;
    if (c->dw_mode != TT_PATCH_NONE || kh > TT_DSP_DW_MAX_KH || kh * kw > TT_DSP_DW_MAX_TAPS) {
        depthwise_row_generic(c, ring, oy, 0, dst); /* patched weights, large windows */
        return;
    }
    const int32_t nc = p->mid_c;
    const int32_t taps = kh * kw;
    const int32_t n_ring = c->n_ring;
    const int32_t base = (oy * g->sh) % n_ring;
    const uint32_t off = (uint32_t)(-st->input_zp);
    const int32_t zp = st->output_zp;
    const int32_t lo_z = st->act_min - zp, hi_z = st->act_max - zp;
    const size_t x_step = (size_t)g->sw * (size_t)nc;   /* next output pixel */
    const size_t tap_step = (size_t)g->dw * (size_t)nc; /* next kx */
    const int unrolled = kw == 3;
    const int8_t *rowp[TT_DSP_DW_MAX_KH];
    for (int32_t ky = 0; ky < kh; ++ky) {
        int32_t slot = base + ky * g->dh;
        slot %= n_ring;
        rowp[ky] = ring + (size_t)slot * c->slot_bytes;
    }
    int32_t ch0 = 0;
    for (; ch0 + 4 <= nc; ch0 += 4) {
        uint32_t wx[2 * TT_DSP_DW_MAX_TAPS];
        uint32_t b[4];
        tt_dsp_rq rq[4];
        uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int32_t t = 0; t < taps; ++t) {
            const int8_t *wp = st->weights + (size_t)t * (size_t)nc + (size_t)ch0;
            const uint32_t wv = tt_ld32(wp);
            wx[2 * t] = tt_sxtb16(wv);
            wx[2 * t + 1] = tt_sxtb16_ror8(wv);
            s0 += (uint32_t)(int32_t)wp[0];
            s1 += (uint32_t)(int32_t)wp[1];
            s2 += (uint32_t)(int32_t)wp[2];
            s3 += (uint32_t)(int32_t)wp[3];
        }
        const uint32_t sums[4] = {s0, s1, s2, s3};
        int fast = 1;
        for (int32_t j = 0; j < 4; ++j) {
            b[j] = (c->dw_bias != NULL ? (uint32_t)c->dw_bias[ch0 + j] : 0u) + off * sums[j];
            rq[j] = tt_dsp_rq_make(st->multiplier[ch0 + j], st->shift[ch0 + j]);
            fast &= rq[j].fast;
        }
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            uint32_t a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
            const uint32_t *w = wx;
            const size_t pofs = (size_t)ox * x_step + (size_t)ch0;
            if (unrolled) {
                for (int32_t ky = 0; ky < kh; ++ky) {
                    const int8_t *px = rowp[ky] + pofs;
                    TT_DSP_DW_TAP(px, w);
                    TT_DSP_DW_TAP(px + tap_step, w + 2);
                    TT_DSP_DW_TAP(px + 2 * tap_step, w + 4);
                    w += 6;
                }
            } else {
                for (int32_t ky = 0; ky < kh; ++ky) {
                    const int8_t *px = rowp[ky] + pofs;
                    for (int32_t kx = 0; kx < kw; ++kx) {
                        TT_DSP_DW_TAP(px, w);
                        px += tap_step;
                        w += 2;
                    }
                }
            }
            int8_t *y = dst + (size_t)ox * (size_t)nc + (size_t)ch0;
            if (fast) {
                y[0] = tt_dsp_rq_out(tt_dsp_rq_fast(a0, &rq[0]), zp, lo_z, hi_z);
                y[1] = tt_dsp_rq_out(tt_dsp_rq_fast(a1, &rq[1]), zp, lo_z, hi_z);
                y[2] = tt_dsp_rq_out(tt_dsp_rq_fast(a2, &rq[2]), zp, lo_z, hi_z);
                y[3] = tt_dsp_rq_out(tt_dsp_rq_fast(a3, &rq[3]), zp, lo_z, hi_z);
            } else {
                y[0] = tt_dsp_rq_s8(a0, &rq[0], zp, lo_z, hi_z);
                y[1] = tt_dsp_rq_s8(a1, &rq[1], zp, lo_z, hi_z);
                y[2] = tt_dsp_rq_s8(a2, &rq[2], zp, lo_z, hi_z);
                y[3] = tt_dsp_rq_s8(a3, &rq[3], zp, lo_z, hi_z);
            }
        }
    }
    if (ch0 < nc) {
        depthwise_row_generic(c, ring, oy, ch0, dst);
    }
}

void tt_fb_project_row(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    if (c->proj_mode != TT_PATCH_NONE) {
        project_row_generic(c, dw_row, dst); /* patched weights */
        return;
    }
    const tt_dsp_gemm gm = stage_gemm(&p->proj, p->out_w, p->mid_c, p->out_c);
    tt_dsp_gemm_rq_s8(&gm, dw_row, (size_t)p->mid_c, p->proj.weights, c->proj_bias, dst, (size_t)p->out_c);
}
