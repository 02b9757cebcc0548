/*
 * Backward of the linear layers on x86-64 (AVX2), host backend: replaces
 * src/tt_linear_bwd.c (see x86/README.md); the same functions, the same bytes.
 *   - tt_linear_bwd_input_s16 of a 1x1 stride-1 unpadded conv: the current weights (the
 *     slice w_sub written over the flash rows) packed once per call as int16 pairs of
 *     output channels, g' of two output channels broadcast as one int16 pair, one
 *     VPMADDWD per 8 input channels; of a depthwise layer: 8 channels per vector,
 *     VPMULLD of the current tap weight and g' per covering tap. Both keep every pixel's
 *     int32 sums in a stack buffer (one pass, instead of the reference's two) and
 *     normalize at the end (tt_grad_scale32 at the shift of the global max, as the
 *     reference's second pass does);
 *   - tt_linear_bwd_weight_row_s16 of a 1x1 conv / fully connected layer with fewer than
 *     512 positions: grad[j] = sum g x_j - zp sum g, the int32 sums exact (|g x| < 2^22),
 *     two positions per VPMADDWD (x of the two positions interleaved as int16 pairs);
 *   - everything else: the reference code, included below (its entry points static).
 * All sums are modulo 2^32 like the reference's uint32 sums. Without AVX2 this file is
 * exactly dsp/tt_linear_bwd_dsp.c.
 * Twins of tinytrain/train/kernels/linear_bwd.py (input_grad, weight_grad).
 */
#include "tt_x86.h"

#if !TT_X86_AVX2

#include "../dsp/tt_linear_bwd_dsp.c"

#else

#include <string.h>

#include "tt_grad.h"
#include "tt_linear_bwd.h"

static tt_status ref_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                               const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch);
static tt_status ref_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                    int32_t row, int64_t *grad_row);
#define tt_linear_bwd_input_s16 ref_input_s16
#define tt_linear_bwd_weight_row_s16 ref_weight_row_s16
#include "../src/tt_linear_bwd.c"
#undef tt_linear_bwd_input_s16
#undef tt_linear_bwd_weight_row_s16

#define X86_BWD_ACC 32768     /* int32 sums of the one-pass input gradient (pixels x channels) */
#define X86_BWD_W 32768       /* int16 of packed current weights */
#define X86_BWD_MAX_CIN 1024  /* 1x1 conv input channels */
#define X86_BWD_GROUP 16      /* output-channel pairs per packed weight group */
#define X86_BWD_GP 65536      /* g' pairs of a 1x1 conv (pixels x output-channel pairs) */

static int32_t x86_conv1x1(const tt_linear_bwd_params *p) {
    return p->kind == TT_LINEAR_CONV && p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pad_top == 0 &&
           p->pad_left == 0 && p->pad_bottom == 0 && p->pad_right == 0 && p->out_h == p->in_h &&
           p->out_w == p->in_w;
}

/* g_x = tt_grad_scale32(acc, r) with r from the max |acc| (the reference's second pass);
 * acc[pos * stride + i] for i < len. Returns r. */
static int32_t x86_normalize(const uint32_t *acc, int32_t positions, int32_t len, int32_t stride, int16_t *g_x) {
    uint32_t m = 0u;
    for (int32_t pos = 0; pos < positions; ++pos) {
        const uint32_t *a = acc + (size_t)pos * (size_t)stride;
        for (int32_t i = 0; i < len; ++i) {
            const uint32_t v = tt_abs_u32(tt_wrap32((int64_t)a[i]));
            m = v > m ? v : m;
        }
    }
    const int32_t r = tt_grad_shift_u32(m, TT_GRAD_BITS);
    for (int32_t pos = 0; pos < positions; ++pos) {
        const uint32_t *a = acc + (size_t)pos * (size_t)stride;
        int16_t *gx = g_x + (size_t)pos * (size_t)len;
        for (int32_t i = 0; i < len; ++i) {
            gx[i] = tt_grad_scale32(tt_wrap32((int64_t)a[i]), r);
        }
    }
    return r;
}

/* 1x1 conv input gradient; returns r. The caller checked the sizes (x86_input_fits).
 * Groups of X86_BWD_GROUP output-channel pairs outermost: the group's current weights
 * packed once (int16 pairs), then per pixel and 8 input channels one vector of sums takes
 * each pair's g' as one broadcast int16 pair (zero pairs skipped). */
static int32_t x86_conv1x1_input(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                 const int16_t *g_y, int16_t *g_x) {
    const int32_t cin = p->in_c, cout = p->out_c, positions = p->in_h * p->in_w;
    const int32_t cin8 = (cin + 7) & ~7, pairs = (cout + 1) / 2;
    const int32_t shift = Q15_BITS + p->drop;
    int16_t wp[X86_BWD_GROUP * 2 * X86_BWD_MAX_CIN]; /* [pair of the group][i][2]: current weights */
    uint32_t acc[X86_BWD_ACC];
    uint32_t gp[X86_BWD_GP]; /* [pos][pair]: (g'(2q), g'(2q + 1)) as int16 pairs */
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int16_t *gy = g_y + (size_t)pos * (size_t)cout;
        for (int32_t q = 0; q < pairs; ++q) { /* |g'| <= 2^15, and g' = 2^15 needs g = 2^15: int16 */
            const int32_t g0 = tt_rdbpot32(gy[2 * q] * p->mu[2 * q], shift);
            const int32_t g1 = 2 * q + 1 < cout ? tt_rdbpot32(gy[2 * q + 1] * p->mu[2 * q + 1], shift) : 0;
            gp[(size_t)pos * (size_t)pairs + (size_t)q] = ((uint32_t)g1 << 16) | ((uint32_t)g0 & 0xFFFFu);
        }
    }
    memset(acc, 0, (size_t)positions * (size_t)cin8 * sizeof(uint32_t));
    for (int32_t q0 = 0; q0 < pairs; q0 += X86_BWD_GROUP) {
        const int32_t nq = pairs - q0 < X86_BWD_GROUP ? pairs - q0 : X86_BWD_GROUP;
        for (int32_t t = 0; t < 2 * nq; ++t) {
            const int32_t o = 2 * q0 + t;
            int16_t *dst = wp + (size_t)(t / 2) * (size_t)cin8 * 2u + (size_t)(t % 2);
            for (int32_t i = 0; i < cin8; ++i) {
                int32_t v = 0;
                if (o < cout && i < cin) {
                    v = w[(size_t)o * (size_t)cin + (size_t)i];
                    if (w_sub != NULL && p->slot[i] >= 0) {
                        v = w_sub[(size_t)o * (size_t)p->n_channels + (size_t)p->slot[i]];
                    }
                }
                dst[2 * i] = (int16_t)v;
            }
        }
        for (int32_t pos = 0; pos < positions; ++pos) {
            const uint32_t *gq = gp + (size_t)pos * (size_t)pairs + (size_t)q0;
            uint32_t *a = acc + (size_t)pos * (size_t)cin8;
            for (int32_t i = 0; i < cin8; i += 8) {
                __m256i s = _mm256_loadu_si256((const __m256i *)(const void *)(a + i));
                for (int32_t q = 0; q < nq; ++q) {
                    if (gq[q] != 0u) {
                        const __m256i wv =
                            _mm256_loadu_si256((const __m256i *)(const void *)(wp + (size_t)q * (size_t)cin8 * 2u + 2 * i));
                        s = TT_X86_MADD(s, wv, _mm256_set1_epi32((int32_t)gq[q]));
                    }
                }
                _mm256_storeu_si256((__m256i *)(void *)(a + i), s);
            }
        }
    }
    return x86_normalize(acc, positions, cin, cin8, g_x);
}

/* Depthwise input gradient; returns r. */
static int32_t x86_dw_input(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub, const int16_t *g_y,
                            int16_t *g_x) {
    const int32_t ch = p->in_c, kh = p->kh, kw = p->kw, ch8 = (ch + 7) & ~7;
    const int32_t shift = Q15_BITS + p->drop;
    const int32_t opos = p->out_h * p->out_w;
    int32_t wc[X86_BWD_W / 2]; /* [tap][ch8] current weights */
    int32_t gp[X86_BWD_ACC];   /* [out pos][ch8] g' */
    uint32_t acc[X86_BWD_ACC];
    for (int32_t t = 0; t < kh * kw; ++t) {
        for (int32_t c = 0; c < ch8; ++c) {
            int32_t v = 0;
            if (c < ch) {
                v = w[(size_t)t * (size_t)ch + (size_t)c];
                if (w_sub != NULL && p->n_channels > 0 && p->slot[c] >= 0) {
                    v = w_sub[(size_t)t * (size_t)p->n_channels + (size_t)p->slot[c]];
                }
            }
            wc[(size_t)t * (size_t)ch8 + (size_t)c] = v;
        }
    }
    for (int32_t q = 0; q < opos; ++q) {
        for (int32_t c = 0; c < ch8; ++c) {
            gp[(size_t)q * (size_t)ch8 + (size_t)c] =
                c < ch ? tt_rdbpot32(g_y[(size_t)q * (size_t)ch + (size_t)c] * p->mu[c], shift) : 0;
        }
    }
    for (int32_t iy = 0; iy < p->in_h; ++iy) {
        int32_t oy0, oy1;
        covering(iy + p->pad_top, kh, p->sh, p->out_h, &oy0, &oy1);
        for (int32_t ix = 0; ix < p->in_w; ++ix) {
            int32_t ox0, ox1;
            covering(ix + p->pad_left, kw, p->sw, p->out_w, &ox0, &ox1);
            uint32_t *a = acc + ((size_t)iy * (size_t)p->in_w + (size_t)ix) * (size_t)ch8;
            for (int32_t c = 0; c < ch8; c += 8) {
                __m256i s = _mm256_setzero_si256();
                for (int32_t oy = oy0; oy <= oy1; ++oy) {
                    const int32_t ky = iy + p->pad_top - oy * p->sh;
                    for (int32_t ox = ox0; ox <= ox1; ++ox) {
                        const int32_t kx = ix + p->pad_left - ox * p->sw;
                        const int32_t *wt = wc + (size_t)(ky * kw + kx) * (size_t)ch8 + (size_t)c;
                        const int32_t *g = gp + ((size_t)oy * (size_t)p->out_w + (size_t)ox) * (size_t)ch8 + (size_t)c;
                        const __m256i prod =
                            _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(const void *)wt),
                                               _mm256_loadu_si256((const __m256i *)(const void *)g));
                        s = _mm256_add_epi32(s, prod);
                    }
                }
                _mm256_storeu_si256((__m256i *)(void *)(a + c), s);
            }
        }
    }
    return x86_normalize(acc, p->in_h * p->in_w, ch, ch8, g_x);
}

/* Whether the one-pass buffers hold this layer (else: the reference). */
static int32_t x86_input_fits(const tt_linear_bwd_params *p) {
    const int64_t pix = (int64_t)p->in_h * p->in_w;
    if (x86_conv1x1(p)) {
        const int64_t cin8 = (p->in_c + 7) & ~7;
        return pix * cin8 <= X86_BWD_ACC && cin8 <= X86_BWD_MAX_CIN && pix * ((p->out_c + 1) / 2) <= X86_BWD_GP;
    }
    if (p->kind == TT_LINEAR_DEPTHWISE) {
        const int64_t ch8 = (p->in_c + 7) & ~7;
        return pix * ch8 <= X86_BWD_ACC && (int64_t)p->out_h * p->out_w * ch8 <= X86_BWD_ACC &&
               (int64_t)p->kh * p->kw * ch8 <= X86_BWD_W / 2;
    }
    return 0;
}

/* Twin of tinytrain.train.kernels.linear_bwd.input_grad. */
tt_status tt_linear_bwd_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                  const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch) {
    if (!params_ok(p) || !x86_input_fits(p) || w == NULL || g_y == NULL || g_x == NULL || e_x == NULL ||
        (w_sub != NULL && p->n_channels == 0) || (tt_linear_bwd_input_scratch_bytes(p) > 0 && scratch == NULL) ||
        !tt_grad_exp_ok(e_y) || p->k < -4096 || p->k > 4096) {
        return ref_input_s16(p, w, w_sub, g_y, e_y, g_x, e_x, scratch); /* its checks and statuses */
    }
    const int32_t r = p->kind == TT_LINEAR_DEPTHWISE ? x86_dw_input(p, w, w_sub, g_y, g_x)
                                                     : x86_conv1x1_input(p, w, w_sub, g_y, g_x);
    *e_x = e_y + p->k + p->drop + r;
    return TT_OK;
}

/* 1x1 conv / fully connected weight row (fewer than 512 positions). */
static void x86_wgrad_row(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub, int32_t o,
                           int64_t *grad_row) {
    const int32_t n = p->n_channels, cout = p->out_c, positions = p->out_h * p->out_w;
    const int16_t *gy = g_y + o;
    uint32_t gs = 0u;
    for (int32_t pos = 0; pos < positions; ++pos) {
        gs += (uint32_t)(int32_t)gy[(size_t)pos * (size_t)cout];
    }
    const int64_t zg = (int64_t)p->in_zp * (int64_t)tt_wrap32((int64_t)gs);
    int32_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256(); /* j 0-3 | 8-11, 4-7 | 12-15 */
        int32_t pos = 0;
        for (; pos + 2 <= positions; pos += 2) {
            const int32_t g0 = gy[(size_t)pos * (size_t)cout], g1 = gy[(size_t)(pos + 1) * (size_t)cout];
            if ((g0 | g1) == 0) {
                continue;
            }
            const __m256i gv = _mm256_set1_epi32((int32_t)(((uint32_t)g1 << 16) | ((uint32_t)g0 & 0xFFFFu)));
            const __m256i x0 = _mm256_cvtepi8_epi16(
                _mm_loadu_si128((const __m128i *)(const void *)(x_sub + (size_t)pos * (size_t)n + (size_t)j)));
            const __m256i x1 = _mm256_cvtepi8_epi16(
                _mm_loadu_si128((const __m128i *)(const void *)(x_sub + (size_t)(pos + 1) * (size_t)n + (size_t)j)));
            lo = TT_X86_MADD(lo, _mm256_unpacklo_epi16(x0, x1), gv);
            hi = TT_X86_MADD(hi, _mm256_unpackhi_epi16(x0, x1), gv);
        }
        uint32_t l[8], h[8];
        _mm256_storeu_si256((__m256i *)(void *)l, lo);
        _mm256_storeu_si256((__m256i *)(void *)h, hi);
        uint32_t s[16] = {l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3], l[4], l[5], l[6], l[7], h[4], h[5], h[6], h[7]};
        if (pos < positions) { /* an odd last position */
            const int32_t g = gy[(size_t)pos * (size_t)cout];
            const int8_t *xr = x_sub + (size_t)pos * (size_t)n + (size_t)j;
            for (int32_t k = 0; k < 16; ++k) {
                s[k] += (uint32_t)(g * (int32_t)xr[k]);
            }
        }
        for (int32_t k = 0; k < 16; ++k) {
            grad_row[j + k] = (int64_t)tt_wrap32((int64_t)s[k]) - zg;
        }
    }
    for (; j < n; ++j) {
        uint32_t a = 0u;
        for (int32_t pos = 0; pos < positions; ++pos) {
            a += (uint32_t)((int32_t)gy[(size_t)pos * (size_t)cout] * (int32_t)x_sub[(size_t)pos * (size_t)n + (size_t)j]);
        }
        grad_row[j] = (int64_t)tt_wrap32((int64_t)a) - zg;
    }
}

/* Twin of tinytrain.train.kernels.linear_bwd.weight_grad (one output channel / subset channel). */
tt_status tt_linear_bwd_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                       int32_t row, int64_t *grad_row) {
    if (!geometry_ok(p) || g_y == NULL || x_sub == NULL || grad_row == NULL || p->n_channels == 0 || row < 0 ||
        !(p->kind == TT_LINEAR_FC || x86_conv1x1(p)) || row >= p->out_c || p->out_h * p->out_w >= 512) {
        return ref_weight_row_s16(p, g_y, x_sub, row, grad_row);
    }
    x86_wgrad_row(p, g_y, x_sub, row, grad_row);
    return TT_OK;
}

#endif /* TT_X86_AVX2 */
