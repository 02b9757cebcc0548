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
static TT_DSP_NOINLINE void window_gemm(const tt_dsp_gemm *g, int32_t kh, const int8_t *x, size_t x_step, size_t row_stride,
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
#define TT_DSP_IM2COL_PIXELS 16

/* The window of one output pixel (kh rows of seg bytes at xa + ky * row_stride) into dst,
 * zero-padded to kp bytes. */
static void tt_dsp_im2col_pixel(const int8_t *xa, int32_t kh, int32_t seg, size_t row_stride, int32_t kp,
                                int8_t *dst) {
    for (int32_t ky = 0; ky < kh; ++ky) {
        memcpy(dst + (size_t)ky * (size_t)seg, xa + (size_t)ky * row_stride, (size_t)seg);
    }
    memset(dst + (size_t)kh * (size_t)seg, 0, (size_t)(kp - kh * seg));
}

/*
 * A windowed convolution row whose window (kh rows of seg bytes, taps = kh * seg <=
 * TT_DSP_IM2COL_MAX_TAPS) is gathered once per pixel into a contiguous buffer (chunks of
 * TT_DSP_IM2COL_PIXELS pixels, each zero-padded to kp = taps rounded up to 4 bytes), then
 * per channel pair (its OHWI weights, contiguous, copied with the same zero padding) one
 * tt_dsp_gemm_wx_s8 over the chunk: the padded taps add 0 to the sums and to the weight sums.
 */
static TT_DSP_NOINLINE void window_gemm_im2col(const tt_dsp_gemm *g, int32_t kh, const int8_t *x, size_t x_step, size_t row_stride,
                               const int8_t *w, const int32_t *bias, int8_t *y) {
    const int32_t seg = g->k;
    const int32_t taps = kh * seg;
    const int32_t kp = (taps + 3) & ~3;
    const size_t y_stride = (size_t)g->cols;
    int8_t buf[TT_DSP_IM2COL_PIXELS * TT_DSP_IM2COL_MAX_TAPS];
    int8_t wp[2 * TT_DSP_IM2COL_MAX_TAPS];
    for (int32_t px0 = 0; px0 < g->rows; px0 += TT_DSP_IM2COL_PIXELS) {
        const int32_t np = g->rows - px0 < TT_DSP_IM2COL_PIXELS ? g->rows - px0 : TT_DSP_IM2COL_PIXELS;
        for (int32_t i = 0; i < np; ++i) {
            tt_dsp_im2col_pixel(x + (size_t)(px0 + i) * x_step, kh, seg, row_stride, kp, buf + (size_t)i * (size_t)kp);
        }
        for (int32_t co = 0; co < g->cols; co += 2) {
            const int32_t m = g->cols - co < 2 ? g->cols - co : 2;
            for (int32_t i = 0; i < m; ++i) {
                memcpy(wp + (size_t)i * (size_t)kp, w + (size_t)(co + i) * (size_t)taps, (size_t)taps);
                memset(wp + (size_t)i * (size_t)kp + (size_t)taps, 0, (size_t)(kp - taps));
            }
            tt_dsp_gemm sub = *g;
            sub.rows = np;
            sub.k = kp;
            sub.cols = m;
            sub.mult = g->mult + co;
            sub.shift = g->shift + co;
            tt_dsp_gemm_wx_s8(&sub, buf, (size_t)kp, wp, bias != NULL ? bias + co : NULL,
                              y + (size_t)px0 * y_stride + (size_t)co, y_stride);
        }
    }
}

/* The stage's GEMM constants over `rows` output pixels, k bytes per segment, cols channels. */
static tt_dsp_gemm stage_gemm(const tt_fb_stage *st, int32_t rows, int32_t k, int32_t cols) {
    const tt_dsp_gemm g = {rows,          k,           cols, -st->input_zp, st->multiplier, st->shift, st->output_zp,
                           st->act_min - st->output_zp, st->act_max - st->output_zp};
    return g;
}



#define TT_DSP_PATCH_MAX_K 352

/* Channels o, o + 1 (m of them) of a patched 1x1 stage: their current weights (the flash row
 * with the n trained values w_train [cols][n] put at input channels ch[j]) into cur (m rows of
 * k bytes). */
static void merge_patched_rows(const tt_fb_stage *st, int32_t k, int32_t o, int32_t m, int8_t *cur) {
    const int32_t n = st->patch->n;
    for (int32_t i = 0; i < m; ++i) {
        int8_t *row = cur + (size_t)i * (size_t)k;
        const int8_t *wt = st->patch->w_train + (size_t)(o + i) * (size_t)n;
        memcpy(row, st->weights + (size_t)(o + i) * (size_t)k, (size_t)k);
        for (int32_t j = 0; j < n; ++j) {
            row[st->patch->ch[j]] = wt[j];
        }
    }
}

/* patched_gemm for k <= TT_DSP_WX_MAX_K (a small merge buffer next to tt_dsp_gemm_wx_body's). */
static TT_DSP_NOINLINE void patched_gemm_small(const tt_dsp_gemm *g, const tt_fb_stage *st, const int8_t *x,
                                               size_t x_stride, const int32_t *bias, int8_t *y, size_t y_stride) {
    int8_t cur[2 * TT_DSP_WX_MAX_K];
    for (int32_t o = 0; o < g->cols; o += 2) {
        const int32_t m = g->cols - o < 2 ? g->cols - o : 2;
        merge_patched_rows(st, g->k, o, m, cur);
        tt_dsp_gemm sub = *g;
        sub.cols = m;
        sub.mult = g->mult + o;
        sub.shift = g->shift + o;
        tt_dsp_gemm_wx_s8(&sub, x, x_stride, cur, bias != NULL ? bias + o : NULL, y + o, y_stride);
    }
}

/* patched_gemm for TT_DSP_WX_MAX_K < k <= TT_DSP_PATCH_MAX_K (tt_dsp_gemm_rq_s8 per pair). */
static TT_DSP_NOINLINE void patched_gemm_large(const tt_dsp_gemm *g, const tt_fb_stage *st, const int8_t *x,
                                               size_t x_stride, const int32_t *bias, int8_t *y, size_t y_stride) {
    int8_t cur[2 * TT_DSP_PATCH_MAX_K];
    for (int32_t o = 0; o < g->cols; o += 2) {
        const int32_t m = g->cols - o < 2 ? g->cols - o : 2;
        merge_patched_rows(st, g->k, o, m, cur);
        tt_dsp_gemm sub = *g;
        sub.cols = m;
        sub.mult = g->mult + o;
        sub.shift = g->shift + o;
        tt_dsp_gemm_rq_s8(&sub, x, x_stride, cur, bias != NULL ? bias + o : NULL, y + o, y_stride);
    }
}

/* A 1x1 stage with a weight patch: per channel pair the current weights merged on the stack,
 * then that pair as one GEMM (cols = 2, or 1 for a last odd channel); the sums are the
 * reference's with the current weights, modulo 2^32. Returns 0 (nothing written) when
 * k > TT_DSP_PATCH_MAX_K. */
static int patched_gemm(const tt_dsp_gemm *g, const tt_fb_stage *st, const int8_t *x, size_t x_stride,
                        const int32_t *bias, int8_t *y, size_t y_stride) {
    if (g->k > TT_DSP_PATCH_MAX_K) {
        return 0;
    }
    if (g->k <= TT_DSP_WX_MAX_K) {
        patched_gemm_small(g, st, x, x_stride, bias, y, y_stride);
    } else {
        patched_gemm_large(g, st, x, x_stride, bias, y, y_stride);
    }
    return 1;
}

void tt_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->lead_win;
    const tt_fb_stage *st = &p->lead;
    const int32_t cin = p->in_c;
    if (c->lead_mode != TT_PATCH_NONE && c->direct) {
        const tt_dsp_gemm gm = stage_gemm(st, p->mid_w, cin, p->mid_c);
        if (patched_gemm(&gm, st, rows, (size_t)cin, c->lead_bias, dst, (size_t)p->mid_c)) {
            return;
        }
    }
    if (c->lead_mode != TT_PATCH_NONE || (!c->direct && g->dw != 1)) {
        lead_row_generic(c, rows, row_stride, dst); /* patched weights, column dilation */
        return;
    }
    if (c->direct) {
        const tt_dsp_gemm gm = stage_gemm(st, p->mid_w, cin, p->mid_c);
        tt_dsp_gemm_wx_s8(&gm, rows, (size_t)cin, st->weights, c->lead_bias, dst, (size_t)p->mid_c);
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


/* One window row of three taps (kx = 0, 1, 2 at p, p + ts, p + 2 ts) for a channel group:
 * TT_DSP_DW_TAP three times with the weights at byte offsets o0, o1, o2 (literals) of wt; on the DSP extension one
 * inline-assembly block (GCC otherwise interleaves the taps and spills the extended inputs):
 * LDR, LDRD (wt is 4-byte aligned), SXTB16 twice, SMLABB / SMLATT into a0 .. a3 per tap. */
#if TT_DSP_NATIVE
#define TT_DSP_DW_TAP_ASM(xaddr, wofs)                                                                                 \
    "ldr %[x], " xaddr "\n\t"                                                                                          \
    "ldrd %[w0], %[w1], [%[w], #" wofs "]\n\t"                                                                         \
    "sxtb16 %[e], %[x]\n\t"                                                                                            \
    "sxtb16 %[x], %[x], ror #8\n\t"                                                                                    \
    "smlabb %[a0], %[e], %[w0], %[a0]\n\t"                                                                             \
    "smlatt %[a2], %[e], %[w0], %[a2]\n\t"                                                                             \
    "smlabb %[a1], %[x], %[w1], %[a1]\n\t"                                                                             \
    "smlatt %[a3], %[x], %[w1], %[a3]\n\t"
#define TT_DSP_DW_ROW3(p_, ts_, wt_, o0, o1, o2)                                                                       \
    do {                                                                                                               \
        uint32_t x_, e_, w0_, w1_;                                                                                     \
        __asm__(TT_DSP_DW_TAP_ASM("[%[p]]", #o0) TT_DSP_DW_TAP_ASM("[%[p], %[ts]]", #o1)                               \
                "add %[e], %[p], %[ts]\n\t" TT_DSP_DW_TAP_ASM("[%[e], %[ts]]", #o2)                                    \
                : [x] "=&r"(x_), [e] "=&r"(e_), [w0] "=&r"(w0_), [w1] "=&r"(w1_), [a0] "+r"(a0), [a1] "+r"(a1),       \
                  [a2] "+r"(a2), [a3] "+r"(a3)                                                                         \
                : [p] "r"(p_), [ts] "r"(ts_), [w] "r"(wt_)                                                             \
                : "memory");                                                                                           \
    } while (0)
#else
#define TT_DSP_DW_ROW3(p, ts, wt, o0, o1, o2)                                                                          \
    do {                                                                                                               \
        TT_DSP_DW_TAP((p), (wt) + (o0) / 4);                                                                           \
        TT_DSP_DW_TAP((p) + (ts), (wt) + (o1) / 4);                                                                    \
        TT_DSP_DW_TAP((p) + 2 * (ts), (wt) + (o2) / 4);                                                                \
    } while (0)
#endif

/* A depthwise channel group's constants (4 channels). */
typedef struct {
    uint32_t b[4];
    tt_dsp_rq rq[4];
    int32_t zp, lo_z, hi_z;
} dw_group;

/* Output pixels 0 .. out_w - 1 of a 3x3 window for one channel group: window rows at r0, r1,
 * r2 (already offset to the group's first channel), pixel ox at + ox * x_step, tap kx at
 * + kx * ts; wx as in tt_fb_depthwise_row; y + ox * nc; requantization per mode (TT_DSP_RQ_*). */
static TT_DSP_ALWAYS_INLINE void dw_pixels_3x3(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step, size_t ts,
                                 int32_t out_w, const uint32_t *wx, const dw_group *gp, int8_t *y, size_t nc,
                                 int mode) {
    const int32_t zp = gp->zp, lo_z = gp->lo_z, hi_z = gp->hi_z;
    const tt_dsp_rq rq0 = gp->rq[0], rq1 = gp->rq[1], rq2 = gp->rq[2], rq3 = gp->rq[3];
    const uint32_t b0 = gp->b[0], b1 = gp->b[1], b2 = gp->b[2], b3 = gp->b[3];
    for (int32_t ox = out_w; ox > 0; --ox) {
        uint32_t a0 = b0, a1 = b1, a2 = b2, a3 = b3;
        TT_DSP_DW_ROW3(r0, ts, wx, 0, 8, 16);
        TT_DSP_DW_ROW3(r1, ts, wx, 24, 32, 40);
        TT_DSP_DW_ROW3(r2, ts, wx, 48, 56, 64);
        y[0] = TT_DSP_PAIR_OUT(a0, &rq0, mode);
        y[1] = TT_DSP_PAIR_OUT(a1, &rq1, mode);
        y[2] = TT_DSP_PAIR_OUT(a2, &rq2, mode);
        y[3] = TT_DSP_PAIR_OUT(a3, &rq3, mode);
        r0 += x_step;
        r1 += x_step;
        r2 += x_step;
        y += nc;
    }
}

static TT_DSP_NOINLINE void dw_pixels_3x3_full(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                               size_t ts, int32_t out_w, const uint32_t *wx, const dw_group *gp,
                                               int8_t *y, size_t nc) {
    dw_pixels_3x3(r0, r1, r2, x_step, ts, out_w, wx, gp, y, nc, TT_DSP_RQ_FULL);
}

static TT_DSP_NOINLINE void dw_pixels_3x3_relu(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                               size_t ts, int32_t out_w, const uint32_t *wx, const dw_group *gp,
                                               int8_t *y, size_t nc) {
    dw_pixels_3x3(r0, r1, r2, x_step, ts, out_w, wx, gp, y, nc, TT_DSP_RQ_RELU);
}

static TT_DSP_NOINLINE void dw_pixels_3x3_fast(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                               size_t ts, int32_t out_w, const uint32_t *wx, const dw_group *gp,
                                               int8_t *y, size_t nc) {
    dw_pixels_3x3(r0, r1, r2, x_step, ts, out_w, wx, gp, y, nc, TT_DSP_RQ_FAST);
}

static TT_DSP_NOINLINE void dw_pixels_3x3_any(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                              size_t ts, int32_t out_w, const uint32_t *wx, const dw_group *gp,
                                              int8_t *y, size_t nc) {
    dw_pixels_3x3(r0, r1, r2, x_step, ts, out_w, wx, gp, y, nc, TT_DSP_RQ_ANY);
}

/*
 * 3x3 groups of a full-range output (act_min = -128, act_max = 127) whose four channels allow
 * the SMMLAR requantization (q > 2^30, shift -r with 1 <= r <= 23, |bias| <= 2^29): the proof
 * of tt_dsp_k8_ch (include/tt_dsp.h), with X = 2 acc exact since |acc| <= 2^29 + 9 * 128 * 255
 * < 2^30: the weights are stored doubled (|2 w| <= 256 fits an int16 half), the start value is
 * 2 (bias + off * sum w), and per output
 *     tt_mbqm(acc, q, -r) + zp = asr(smmlar(X, q, kc + [sign]), r),  kc = 2^(r-1) + zp 2^r,
 * then SSAT #8; the sign term (X >> 31) is left out when zp = -128 (ReLU-like: act_min >= zp,
 * tt_dsp_k8_ch's argument). One record per group, built once per row (dw3_make); 4-byte
 * aligned (LDRD).
 */
typedef struct {
    uint32_t w[18]; /* tap t: w[2t] = 2 (ch0, ch2), w[2t + 1] = 2 (ch1, ch3), int16 pairs (byte offsets 0 .. 71) */
    uint32_t b[4];  /* 2 (bias + off * sum w), modulo 2^32 (72 .. 87) */
    int32_t rq[12]; /* channel j: q, kc, r at 88 + 12 j */
} dw3_group;

/* Fills g for channels ch0 .. ch0 + 3 (weights wsrc + t * wstep, t < 9); 0 when a channel does
 * not allow the SMMLAR requantization (g is then unusable). */
static int dw3_make(dw3_group *g, const int8_t *wsrc, size_t wstep, const int32_t *bias, const tt_fb_stage *st,
                    int32_t ch0) {
    uint32_t se = 0, so = 0; /* per-channel weight sums as int16 halves: |sum| <= 9 * 128 */
    for (int32_t t = 0; t < 9; ++t) {
        const uint32_t wv = tt_ld32(wsrc + (size_t)t * wstep);
        const uint32_t e = tt_sxtb16(wv), o = tt_sxtb16_ror8(wv);
        g->w[2 * t] = tt_dsp_dbl16(e);
        g->w[2 * t + 1] = tt_dsp_dbl16(o);
        se = tt_sadd16(se, e);
        so = tt_sadd16(so, o);
    }
    const int32_t sums[4] = {(int32_t)(int16_t)(uint16_t)(se & 0xFFFFu), (int32_t)(int16_t)(uint16_t)(so & 0xFFFFu),
                             (int32_t)(int16_t)(uint16_t)(se >> 16), (int32_t)(int16_t)(uint16_t)(so >> 16)};
    const uint32_t off = (uint32_t)(-st->input_zp);
    const int32_t zp = st->output_zp;
    for (int32_t j = 0; j < 4; ++j) {
        const int32_t q = st->multiplier[ch0 + j], sh = st->shift[ch0 + j];
        const int32_t b = bias != NULL ? bias[ch0 + j] : 0;
        if (q <= 0x40000000 || sh < -23 || sh > -1 || b > (1 << 29) || b < -(1 << 29)) {
            return 0;
        }
        const int32_t r = -sh;
        g->b[j] = 2u * ((uint32_t)b + off * (uint32_t)sums[j]);
        g->rq[3 * j] = q;
        g->rq[3 * j + 1] = ((int32_t)1 << (r - 1)) + zp * ((int32_t)1 << r);
        g->rq[3 * j + 2] = r;
    }
    return 1;
}

/* Output j of a dw3 pixel (accumulator a = X) before SSAT, with or without the sign term. */
static inline int32_t dw3_out(uint32_t a, const dw3_group *g, int32_t j, int sign) {
    const int32_t x = tt_wrap32((int64_t)a);
    const int32_t kc = g->rq[3 * j + 1] + (sign ? tt_dsp_asr(x, 31) : 0);
    return tt_dsp_asr(tt_smmlar(x, g->rq[3 * j], kc), g->rq[3 * j + 2]);
}

#if TT_DSP_NATIVE
#define TT_DSP_DW3_RQ(a, qofs, yofs, sign)                                                                             \
    "ldrd %[q], %[k], [%[g], #" qofs "]\n\t"                                                                           \
    "ldr %[r], [%[g], #" qofs "+8]\n\t" sign                                                                           \
    "smmlar %[" a "], %[" a "], %[q], %[k]\n\t"                                                                        \
    "asr %[" a "], %[" a "], %[r]\n\t"                                                                                 \
    "ssat %[" a "], #8, %[" a "]\n\t"                                                                                  \
    "strb %[" a "], [%[y], #" yofs "]\n\t"
#define TT_DSP_DW3_SIGN(a) "add %[k], %[k], %[" a "], asr #31\n\t"
#define TT_DSP_DW3_STORE(y_, g_, SIGN)                                                                                 \
    do {                                                                                                               \
        uint32_t q_, k_, r_;                                                                                           \
        __asm__ volatile(TT_DSP_DW3_RQ("a0", "88", "0", SIGN("a0")) TT_DSP_DW3_RQ("a1", "100", "1", SIGN("a1"))                 \
                    TT_DSP_DW3_RQ("a2", "112", "2", SIGN("a2")) TT_DSP_DW3_RQ("a3", "124", "3", SIGN("a3"))            \
                : [a0] "+&r"(a0), [a1] "+&r"(a1), [a2] "+&r"(a2), [a3] "+&r"(a3), [q] "=&r"(q_), [k] "=&r"(k_),        \
                  [r] "=&r"(r_)                                                                                        \
                : [g] "r"(g_), [y] "r"(y_)                                                                             \
                : "memory");                                                                                           \
    } while (0)
#define TT_DSP_DW3_NOSIGN(a) ""
#endif

/* Output pixels 0 .. out_w - 1 of a dw3 group (rows, steps and y as in dw_pixels_3x3). */
static TT_DSP_ALWAYS_INLINE void dw3_pixels(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                            size_t ts, int32_t out_w, const dw3_group *g, int8_t *y, size_t nc,
                                            int sign) {
    const uint32_t *wx = g->w;
    for (int32_t ox = out_w; ox > 0; --ox) {
        uint32_t a0 = g->b[0], a1 = g->b[1], a2 = g->b[2], a3 = g->b[3];
        TT_DSP_DW_ROW3(r0, ts, wx, 0, 8, 16);
        TT_DSP_DW_ROW3(r1, ts, wx, 24, 32, 40);
        TT_DSP_DW_ROW3(r2, ts, wx, 48, 56, 64);
#if TT_DSP_NATIVE
        if (sign) {
            TT_DSP_DW3_STORE(y, g, TT_DSP_DW3_SIGN);
        } else {
            TT_DSP_DW3_STORE(y, g, TT_DSP_DW3_NOSIGN);
        }
#else
        y[0] = (int8_t)tt_ssat8(dw3_out(a0, g, 0, sign));
        y[1] = (int8_t)tt_ssat8(dw3_out(a1, g, 1, sign));
        y[2] = (int8_t)tt_ssat8(dw3_out(a2, g, 2, sign));
        y[3] = (int8_t)tt_ssat8(dw3_out(a3, g, 3, sign));
#endif
        r0 += x_step;
        r1 += x_step;
        r2 += x_step;
        y += nc;
    }
}

static TT_DSP_NOINLINE void dw3_pixels_relu(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                            size_t ts, int32_t out_w, const dw3_group *g, int8_t *y, size_t nc) {
    dw3_pixels(r0, r1, r2, x_step, ts, out_w, g, y, nc, 0);
}

static TT_DSP_NOINLINE void dw3_pixels_full(const int8_t *r0, const int8_t *r1, const int8_t *r2, size_t x_step,
                                            size_t ts, int32_t out_w, const dw3_group *g, int8_t *y, size_t nc) {
    dw3_pixels(r0, r1, r2, x_step, ts, out_w, g, y, nc, 1);
}

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
    if (kh > TT_DSP_DW_MAX_KH || kh * kw > TT_DSP_DW_MAX_TAPS) {
        depthwise_row_generic(c, ring, oy, 0, dst); /* large windows */
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
    const int full = st->act_min == -128 && st->act_max == 127;
    const int8_t *rowp[TT_DSP_DW_MAX_KH];
    for (int32_t ky = 0; ky < kh; ++ky) {
        int32_t slot = base + ky * g->dh;
        slot %= n_ring;
        rowp[ky] = ring + (size_t)slot * c->slot_bytes;
    }
    const fb_patch pt = stage_patch(st, c->dw_mode); /* whole channels: w_train [taps][n] */
    int32_t pj = 0;                                  /* the first patched channel >= ch0 */
    int32_t ch0 = 0;
    for (; ch0 + 4 <= nc; ch0 += 4) {
        uint32_t wx[2 * TT_DSP_DW_MAX_TAPS];
        int8_t wg[4 * TT_DSP_DW_MAX_TAPS]; /* a patched group's current weights, [taps][4] */
        const int8_t *wsrc = st->weights + (size_t)ch0;
        size_t wstep = (size_t)nc;
        if (pj < pt.n && (int32_t)pt.ch[pj] < ch0 + 4) {
            for (int32_t t = 0; t < taps; ++t) {
                memcpy(wg + 4 * t, st->weights + (size_t)t * (size_t)nc + (size_t)ch0, 4);
            }
            wsrc = wg;
            wstep = 4;
        }
        while (pj < pt.n && (int32_t)pt.ch[pj] < ch0 + 4) {
            const int32_t lane = (int32_t)pt.ch[pj] - ch0;
            for (int32_t t = 0; t < taps; ++t) {
                wg[4 * t + lane] = pt.wt[(size_t)t * (size_t)pt.n + (size_t)pj];
            }
            ++pj;
        }
        if (kh == 3 && kw == 3 && full) {
            dw3_group g3;
            if (dw3_make(&g3, wsrc, wstep, c->dw_bias, st, ch0)) {
                if (zp == -128) {
                    dw3_pixels_relu(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, &g3,
                                    dst + (size_t)ch0, (size_t)nc);
                } else {
                    dw3_pixels_full(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, &g3,
                                    dst + (size_t)ch0, (size_t)nc);
                }
                continue;
            }
        }
        uint32_t b[4];
        tt_dsp_rq rq[4];
        uint32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int32_t t = 0; t < taps; ++t) {
            const int8_t *wp = wsrc + (size_t)t * wstep;
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
        if (kh == 3 && kw == 3) {
            dw_group gp;
            for (int32_t j = 0; j < 4; ++j) {
                gp.b[j] = b[j];
                gp.rq[j] = rq[j];
            }
            gp.zp = zp;
            gp.lo_z = lo_z;
            gp.hi_z = hi_z;
            int8_t *y = dst + (size_t)ch0;
            if (fast && full && zp == -128) {
                dw_pixels_3x3_relu(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, wx, &gp, y,
                                   (size_t)nc);
            } else if (fast && full) {
                dw_pixels_3x3_full(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, wx, &gp, y,
                                   (size_t)nc);
            } else if (fast) {
                dw_pixels_3x3_fast(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, wx, &gp, y,
                                   (size_t)nc);
            } else {
                dw_pixels_3x3_any(rowp[0] + ch0, rowp[1] + ch0, rowp[2] + ch0, x_step, tap_step, p->out_w, wx, &gp, y,
                                  (size_t)nc);
            }
            continue;
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
    const tt_dsp_gemm gm = stage_gemm(&p->proj, p->out_w, p->mid_c, p->out_c);
    if (c->proj_mode != TT_PATCH_NONE) {
        if (!patched_gemm(&gm, &p->proj, dw_row, (size_t)p->mid_c, c->proj_bias, dst, (size_t)p->out_c)) {
            project_row_generic(c, dw_row, dst); /* patched weights, k > TT_DSP_PATCH_MAX_K */
        }
        return;
    }
    tt_dsp_gemm_wx_s8(&gm, dw_row, (size_t)p->mid_c, p->proj.weights, c->proj_bias, dst, (size_t)p->out_c);
}
