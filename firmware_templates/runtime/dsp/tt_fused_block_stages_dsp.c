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
        tt_dsp_gemm_s8(&gm, rows, (size_t)cin, st->weights, c->lead_bias, dst, (size_t)p->mid_c);
        return;
    }
    const tt_dsp_gemm gm = stage_gemm(st, p->mid_w, g->kw * cin, p->mid_c);
    window_gemm(&gm, g->kh, rows, (size_t)g->sw * (size_t)cin, row_stride, st->weights, c->lead_bias, dst);
}

#define TT_DSP_DW_MAX_KH 16

/* Four channels at a time: one 4-byte load of input and of weights per tap, SXTB16 into
 * (ch, ch + 2) and (ch + 1, ch + 3) int16 pairs, SMLABB / SMLATT into four accumulators
 * started at bias + off * (the channel's weight sum). Remaining channels (all of them for
 * windows taller than TT_DSP_DW_MAX_KH): the reference loop. */
void tt_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->dw_win;
    const tt_fb_stage *st = &p->dw;
    const int32_t kh = g->kh, kw = g->kw;
    if (c->dw_mode != TT_PATCH_NONE || kh > TT_DSP_DW_MAX_KH) {
        depthwise_row_generic(c, ring, oy, 0, dst); /* patched weights, tall windows */
        return;
    }
    const int32_t nc = p->mid_c;
    const int32_t n_ring = c->n_ring;
    const int32_t base = (oy * g->sh) % n_ring;
    const uint32_t off = (uint32_t)(-st->input_zp);
    const int32_t zp = st->output_zp;
    const int32_t lo_z = st->act_min - zp, hi_z = st->act_max - zp;
    const size_t x_step = (size_t)g->sw * (size_t)nc; /* next output pixel */
    const size_t tap_step = (size_t)g->dw * (size_t)nc; /* next kx */
    const int8_t *rowp[TT_DSP_DW_MAX_KH];
    for (int32_t ky = 0; ky < kh; ++ky) {
        int32_t slot = base + ky * g->dh;
        slot %= n_ring;
        rowp[ky] = ring + (size_t)slot * c->slot_bytes;
    }
    int32_t ch0 = 0;
    for (; ch0 + 4 <= nc; ch0 += 4) {
        uint32_t b[4];
        for (int32_t j = 0; j < 4; ++j) {
            uint32_t s = 0;
            for (int32_t t = 0; t < kh * kw; ++t) {
                s += (uint32_t)(int32_t)st->weights[(size_t)t * (size_t)nc + (size_t)(ch0 + j)];
            }
            b[j] = (c->dw_bias != NULL ? (uint32_t)c->dw_bias[ch0 + j] : 0u) + off * s;
        }
        const int32_t *q = st->multiplier + ch0;
        const int32_t *sh = st->shift + ch0;
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            uint32_t a0 = b[0], a1 = b[1], a2 = b[2], a3 = b[3];
            const int8_t *w = st->weights + ch0;
            for (int32_t ky = 0; ky < kh; ++ky) {
                const int8_t *px = rowp[ky] + (size_t)ox * x_step + (size_t)ch0;
                for (int32_t kx = 0; kx < kw; ++kx) {
                    const uint32_t xv = tt_ld32(px);
                    const uint32_t wv = tt_ld32(w);
                    const uint32_t xe = tt_sxtb16(xv), xo = tt_sxtb16_ror8(xv);
                    const uint32_t we = tt_sxtb16(wv), wo = tt_sxtb16_ror8(wv);
                    a0 = tt_smlabb(xe, we, a0);
                    a1 = tt_smlabb(xo, wo, a1);
                    a2 = tt_smlatt(xe, we, a2);
                    a3 = tt_smlatt(xo, wo, a3);
                    px += tap_step;
                    w += nc;
                }
            }
            int8_t *y = dst + (size_t)ox * (size_t)nc + (size_t)ch0;
            y[0] = tt_dsp_requant_s8(a0, q[0], (int)sh[0], zp, lo_z, hi_z);
            y[1] = tt_dsp_requant_s8(a1, q[1], (int)sh[1], zp, lo_z, hi_z);
            y[2] = tt_dsp_requant_s8(a2, q[2], (int)sh[2], zp, lo_z, hi_z);
            y[3] = tt_dsp_requant_s8(a3, q[3], (int)sh[3], zp, lo_z, hi_z);
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
    tt_dsp_gemm_s8(&gm, dw_row, (size_t)p->mid_c, p->proj.weights, c->proj_bias, dst, (size_t)p->out_c);
}
