/*
 * The fused block's stages on x86-64 (AVX2), host backend: replaces
 * src/tt_fused_block_stages.c (see x86/README.md); the same three functions
 * (include/tt_fused_block_internal.h), the same bytes.
 *   - lead 1x1, windowed lead (stem, column dilation 1) and projection: one GEMM (x86_gemm)
 *     over the row's pixels, gathered as int16 rows (the stem's window rows side by side),
 *     4 pixels x 4 channels per block, 16 int16 pairs per VPMADDWD (VPDPWSSD with
 *     AVX-512 VNNI), lane sums reduced with VPHADDD, bias + off * weight sum added after
 *     the reduction, requantization on four lanes (tt_x86_rq4_fast);
 *   - depthwise: 16 channels per block, taps in pairs (the two taps' int16 values
 *     interleaved, VPMADDWD), requantization on four lanes;
 *   - weight patches: the current weights (flash row with the patch written over it) are
 *     built once per call, when the weights are widened to int16 anyway;
 *   - everything else (column-dilated leads, large windows, leftover channels, depths
 *     above TT_X86_MAX_K): the dsp stages (portable C), included below.
 * Without AVX2 (another host, or an ARM build) this file is exactly the dsp stages.
 * C twin of the stage convolutions of tinytrain/sim/kernels/fused_block.py: run_fused_block.
 */
#include "tt_x86.h"

#if !TT_X86_AVX2

#include "../dsp/tt_fused_block_stages_dsp.c"

#else

/* the dsp stages (with the reference loops they include) under other names, as fallbacks */
#include "tt_fused_block_internal.h"
#define tt_fb_lead_row tt_x86_dsp_fb_lead_row
#define tt_fb_depthwise_row tt_x86_dsp_fb_depthwise_row
#define tt_fb_project_row tt_x86_dsp_fb_project_row
void tt_x86_dsp_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst);
void tt_x86_dsp_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst);
void tt_x86_dsp_fb_project_row(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst);
#include "../dsp/tt_fused_block_stages_dsp.c"
#undef tt_fb_lead_row
#undef tt_fb_depthwise_row
#undef tt_fb_project_row

static x86_gemm x86_stage_gemm(const tt_fb_stage *st, int mode, int32_t k, int32_t cin, int32_t cols,
                               const int32_t *bias) {
    const int patched = mode != TT_PATCH_NONE;
    const x86_gemm g = {k,
                        (k + 15) & ~15,
                        cols,
                        st->weights,
                        bias,
                        (uint32_t)(-st->input_zp),
                        st->multiplier,
                        st->shift,
                        st->output_zp,
                        st->act_min - st->output_zp,
                        st->act_max - st->output_zp,
                        cin,
                        patched ? st->patch->w_train : NULL,
                        patched ? st->patch->ch : NULL,
                        patched ? st->patch->n : 0,
                        0};
    return g;
}

void tt_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->lead_win;
    const tt_fb_stage *st = &p->lead;
    const int32_t cin = p->in_c;
    const int32_t k = c->direct ? cin : g->kh * g->kw * cin;
    if ((!c->direct && g->dw != 1) || k > TT_X86_MAX_K) {
        tt_x86_dsp_fb_lead_row(c, rows, row_stride, dst);
        return;
    }
    const x86_gemm gm = x86_stage_gemm(st, c->lead_mode, k, cin, p->mid_c, c->lead_bias);
    if (c->direct) {
        x86_gemm_pixels(&gm, p->mid_w, 1, cin, rows, (size_t)cin, 0, dst, (size_t)p->mid_c);
        return;
    }
    x86_gemm_pixels(&gm, p->mid_w, g->kh, g->kw * cin, rows, (size_t)g->sw * (size_t)cin, row_stride, dst,
                    (size_t)p->mid_c);
}

void tt_fb_project_row(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    if (p->mid_c > TT_X86_MAX_K) {
        tt_x86_dsp_fb_project_row(c, dw_row, dst);
        return;
    }
    const x86_gemm gm = x86_stage_gemm(&p->proj, c->proj_mode, p->mid_c, p->mid_c, p->out_c, c->proj_bias);
    x86_gemm_pixels(&gm, p->out_w, 1, p->mid_c, dw_row, (size_t)p->mid_c, 0, dst, (size_t)p->out_c);
}

#define TT_X86_DW_MAX_KH 16
#define TT_X86_DW_MAX_TAPS 25

/* Four lanes (channels ch .. ch + 3 of a block) requantized and stored at y. */
static inline void x86_dw_store4(__m128i s, int fast, const tt_x86_rq4 *rv, const tt_dsp_rq *rq, int32_t zp,
                                 int32_t lo_z, int32_t hi_z, int8_t *y) {
    if (fast) {
        tt_x86_store4(tt_x86_rq4_fast(s, rv), _mm_set1_epi32(lo_z), _mm_set1_epi32(hi_z), _mm_set1_epi32(zp), y);
        return;
    }
    uint32_t sv[4];
    _mm_storeu_si128((__m128i *)(void *)sv, s);
    for (int32_t j = 0; j < 4; ++j) {
        y[j] = tt_dsp_rq_s8(sv[j], &rq[j], zp, lo_z, hi_z);
    }
}

/*
 * 16 channels per block: per block the weights of taps t, t + 1 are interleaved once as
 * int16 pairs (lanes: channels 0-3 | 8-11 in wlo, 4-7 | 12-15 in whi, the order of
 * VPUNPCKLWD / VPUNPCKHWD within 128-bit lanes), per pixel and tap pair two 16-byte loads
 * extended to int16, interleaved the same way, two VPMADDWD. An odd last tap pairs with a
 * zero weight (wtile's extra tap). Patched channels (whole channels: w_train [kh][kw][n])
 * are written into the block's weight tile. Leftover channels: the reference loop; more than
 * TT_X86_DW_MAX_TAPS taps: the dsp stage.
 */
void tt_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->dw_win;
    const tt_fb_stage *st = &p->dw;
    const int32_t kh = g->kh, kw = g->kw;
    const int32_t nc = p->mid_c;
    if (kh > TT_X86_DW_MAX_KH || kh * kw > TT_X86_DW_MAX_TAPS || nc < 16) {
        tt_x86_dsp_fb_depthwise_row(c, ring, oy, dst);
        return;
    }
    const int32_t taps = kh * kw;
    const int32_t pairs = (taps + 1) / 2;
    const int32_t n_ring = c->n_ring;
    const int32_t base_slot = (oy * g->sh) % n_ring;
    const uint32_t off = (uint32_t)(-st->input_zp);
    const int32_t zp = st->output_zp;
    const int32_t lo_z = st->act_min - zp, hi_z = st->act_max - zp;
    const size_t x_step = (size_t)g->sw * (size_t)nc;
    const int8_t *tap_ptr[TT_X86_DW_MAX_TAPS + 1];
    for (int32_t ky = 0; ky < kh; ++ky) {
        const int32_t slot = (base_slot + ky * g->dh) % n_ring;
        for (int32_t kx = 0; kx < kw; ++kx) {
            tap_ptr[ky * kw + kx] = ring + (size_t)slot * c->slot_bytes + (size_t)kx * (size_t)g->dw * (size_t)nc;
        }
    }
    if (taps % 2 != 0) {
        tap_ptr[taps] = tap_ptr[taps - 1]; /* meets a zero weight */
    }
    const int patched = c->dw_mode != TT_PATCH_NONE;
    const int32_t pt_n = patched ? st->patch->n : 0;
    const uint16_t *pt_ch = patched ? st->patch->ch : NULL;
    const int8_t *pt_w = patched ? st->patch->w_train : NULL;
    int32_t pj = 0; /* patch cursor: the first patched channel >= ch0 */
    int32_t ch0 = 0;
    for (; ch0 + 16 <= nc; ch0 += 16) {
        __m256i wlo[(TT_X86_DW_MAX_TAPS + 1) / 2], whi[(TT_X86_DW_MAX_TAPS + 1) / 2];
        int8_t wtile[TT_X86_DW_MAX_TAPS + 1][16]; /* the block's current weights, tap-major; a zero odd tap */
        memset(wtile[taps], 0, 16);
        for (int32_t t = 0; t < taps; ++t) {
            memcpy(wtile[t], st->weights + (size_t)t * (size_t)nc + (size_t)ch0, 16);
        }
        while (pj < pt_n && (int32_t)pt_ch[pj] < ch0 + 16) { /* patched channels of the block */
            for (int32_t t = 0; t < taps; ++t) {
                wtile[t][pt_ch[pj] - ch0] = pt_w[(size_t)t * (size_t)pt_n + (size_t)pj];
            }
            ++pj;
        }
        uint32_t sums[16] = {0};
        for (int32_t t = 0; t < 2 * pairs; t += 2) {
            const __m256i a = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)wtile[t]));
            const __m256i b = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)wtile[t + 1]));
            wlo[t / 2] = _mm256_unpacklo_epi16(a, b);
            whi[t / 2] = _mm256_unpackhi_epi16(a, b);
        }
        for (int32_t t = 0; t < taps; ++t) {
            for (int32_t j = 0; j < 16; ++j) {
                sums[j] += (uint32_t)(int32_t)wtile[t][j];
            }
        }
        uint32_t b[16];
        tt_dsp_rq rq[16];
        int fast = 1;
        for (int32_t j = 0; j < 16; ++j) {
            b[j] = (c->dw_bias != NULL ? (uint32_t)c->dw_bias[ch0 + j] : 0u) + off * sums[j];
            rq[j] = tt_dsp_rq_make(st->multiplier[ch0 + j], st->shift[ch0 + j]);
            fast &= rq[j].fast;
        }
        /* accumulator lanes: lo = channels 0-3 | 8-11, hi = 4-7 | 12-15 */
        const __m256i blo = _mm256_setr_epi32((int32_t)b[0], (int32_t)b[1], (int32_t)b[2], (int32_t)b[3],
                                              (int32_t)b[8], (int32_t)b[9], (int32_t)b[10], (int32_t)b[11]);
        const __m256i bhi = _mm256_setr_epi32((int32_t)b[4], (int32_t)b[5], (int32_t)b[6], (int32_t)b[7],
                                              (int32_t)b[12], (int32_t)b[13], (int32_t)b[14], (int32_t)b[15]);
        tt_x86_rq4 rv[4];
        for (int32_t q = 0; q < 4; ++q) {
            rv[q] = tt_x86_rq4_make(rq + 4 * q);
        }
        for (int32_t ox = 0; ox < p->out_w; ++ox) {
            const size_t pofs = (size_t)ox * x_step + (size_t)ch0;
            __m256i alo = blo, ahi = bhi;
            for (int32_t t = 0; t < pairs; ++t) {
                const __m256i x0 =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(tap_ptr[2 * t] + pofs)));
                const __m256i x1 =
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(tap_ptr[2 * t + 1] + pofs)));
                alo = TT_X86_MADD(alo, _mm256_unpacklo_epi16(x0, x1), wlo[t]);
                ahi = TT_X86_MADD(ahi, _mm256_unpackhi_epi16(x0, x1), whi[t]);
            }
            int8_t *y = dst + (size_t)ox * (size_t)nc + (size_t)ch0;
            x86_dw_store4(_mm256_castsi256_si128(alo), fast, &rv[0], rq, zp, lo_z, hi_z, y);
            x86_dw_store4(_mm256_castsi256_si128(ahi), fast, &rv[1], rq + 4, zp, lo_z, hi_z, y + 4);
            x86_dw_store4(_mm256_extracti128_si256(alo, 1), fast, &rv[2], rq + 8, zp, lo_z, hi_z, y + 8);
            x86_dw_store4(_mm256_extracti128_si256(ahi, 1), fast, &rv[3], rq + 12, zp, lo_z, hi_z, y + 12);
        }
    }
    if (ch0 < nc) {
        depthwise_row_generic(c, ring, oy, ch0, dst);
    }
}

#endif /* TT_X86_AVX2 */
