/*
 * tinytrain runtime, host backend (x86-64): shared helpers of the x86 kernels (see
 * x86/README.md). Only the build machine compiles these files; with
 * defined(__x86_64__) && defined(__AVX2__) (gcc -O3 -march=native on any AVX2 host) they
 * use AVX2 intrinsics (and AVX-512 VNNI's VPDPWSSD when __AVX512VNNI__ and __AVX512VL__
 * are defined); elsewhere TT_X86_AVX2 is 0 and the x86 sources fall back to the portable
 * C of the dsp backend.
 *
 * Exactness: every sum here is modulo 2^32 (VPMADDWD of two int8 values extended to int16
 * never saturates: |a b + c d| <= 2 * 128 * 128 = 2^15 < 2^31; VPADDD / VPDPWSSD wrap), so
 * it equals the reference's int32 sums exactly as the dsp blocks do (include/tt_dsp.h,
 * "Arithmetic"); requantization is tt_dsp_rq's (fast channels: one 64-bit sum and an
 * arithmetic shift of its high word, proven equal to tt_requant_s8 in tt_dsp.h), here on
 * four or eight lanes at a time.
 */
#ifndef TT_X86_H
#define TT_X86_H

#include <string.h>

#include "tt_common.h"
#include "tt_dsp.h"

#if defined(__x86_64__) && defined(__AVX2__)
#include <immintrin.h>
#define TT_X86_AVX2 1
#else
#define TT_X86_AVX2 0
#endif

#if TT_X86_AVX2

#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
/* acc + a.lo * b.lo + a.hi * b.hi per int32 lane (int16 halves), modulo 2^32 */
#define TT_X86_MADD(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#else
#define TT_X86_MADD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif

/* Requantization constants of four channels in lane order (tt_dsp_rq, fast channels). */
typedef struct {
    __m128i q;      /* multiplier per lane */
    __m128i c_even; /* int64 start value 2^30 + 2^(30 + r) of lanes 0 and 2 */
    __m128i c_odd;  /* of lanes 1 and 3 */
    __m128i rs;     /* r - 1 per lane */
} tt_x86_rq4;

static inline tt_x86_rq4 tt_x86_rq4_make(const tt_dsp_rq rq[4]) {
    tt_x86_rq4 v;
    v.q = _mm_setr_epi32(rq[0].q, rq[1].q, rq[2].q, rq[3].q);
    v.c_even = _mm_setr_epi32((int32_t)rq[0].lo, (int32_t)rq[0].hi, (int32_t)rq[2].lo, (int32_t)rq[2].hi);
    v.c_odd = _mm_setr_epi32((int32_t)rq[1].lo, (int32_t)rq[1].hi, (int32_t)rq[3].lo, (int32_t)rq[3].hi);
    v.rs = _mm_setr_epi32(rq[0].rs, rq[1].rs, rq[2].rs, rq[3].rs);
    return v;
}

/* tt_dsp_rq_fast on four lanes: t = c + x q - [x < 0] 2^31 (int64), floor(t / 2^(32 + rs)) =
 * (high word of t) >> rs (arithmetic). */
static inline __m128i tt_x86_rq4_fast(__m128i acc, const tt_x86_rq4 *r) {
    const __m128i lo_mask = _mm_setr_epi32(-1, 0, -1, 0);
    const __m128i neg_e = _mm_slli_epi64(_mm_and_si128(_mm_srli_epi32(acc, 31), lo_mask), 31);
    const __m128i neg_o = _mm_slli_epi64(_mm_srli_epi64(acc, 63), 31);
    const __m128i acc_o = _mm_srli_epi64(acc, 32);
    const __m128i pe = _mm_sub_epi64(_mm_add_epi64(_mm_mul_epi32(acc, r->q), r->c_even), neg_e);
    const __m128i po = _mm_sub_epi64(_mm_add_epi64(_mm_mul_epi32(acc_o, _mm_srli_epi64(r->q, 32)), r->c_odd), neg_o);
    const __m128i hi = _mm_blend_epi32(_mm_srli_epi64(pe, 32), po, 0xA);
    return _mm_srav_epi32(hi, r->rs);
}

/* clamp(v, lo_z, hi_z) + zp of four lanes, stored as four int8. */
static inline void tt_x86_store4(__m128i v, __m128i lo_z, __m128i hi_z, __m128i zp, int8_t *y) {
    v = _mm_add_epi32(_mm_min_epi32(_mm_max_epi32(v, lo_z), hi_z), zp);
    v = _mm_packs_epi32(v, v);
    v = _mm_packs_epi16(v, v);
    const int32_t b = _mm_cvtsi128_si32(v);
    memcpy(y, &b, 4);
}

/* Sum of the eight int32 lanes of each of a0..a3: {sum a0, sum a1, sum a2, sum a3}. */
static inline __m128i tt_x86_hsum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* ------------------------------------------------------------ int8 GEMM */

/*
 * y[r][o] = requant(sum_i (w[o][i] - wzp) (x[r][i] + off) + bias[o]) over gathered int16 rows:
 * 4 pixels x 4 channels per block, 16 int16 pairs per multiply-add, lane sums reduced
 * with VPHADDD, bias + off * (weight sum) added after the reduction (all modulo 2^32),
 * requantization on four lanes. The weights of a 4-channel block are widened to int16
 * once per call (with a patch written over them: the current weights).
 */
#define TT_X86_MAX_K 2048       /* GEMM depth limit (int16 per gathered row: kpad) */
#define TT_X86_XBUF 16384       /* int16 of gathered pixel rows */
#define TT_X86_RB 4             /* pixels per block */

typedef struct {
    int32_t k, kpad, cols;
    const int8_t *w; /* [cols][k] */
    const int32_t *bias;
    uint32_t off; /* -input_zp */
    const int32_t *mult, *shift;
    int32_t zp, lo_z, hi_z;
    int32_t cin;           /* inputs per tap: k = taps * cin */
    const int8_t *wt;      /* patch: [cols][taps][n] replaces w[co][tap][ch[j]]; NULL: none */
    const uint16_t *ch;
    int32_t n;
    int32_t wzp; /* weights zero point (tt_fc_s8's per-tensor weights), else 0 */
} x86_gemm;

/* src[0 .. k - 1] as int16 into dst[0 .. kpad - 1], zeros after k. */
static inline void x86_row16(const int8_t *src, int32_t k, int32_t kpad, int16_t *dst) {
    int32_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(src + i));
        _mm256_storeu_si256((__m256i *)(void *)(dst + i), _mm256_cvtepi8_epi16(v));
    }
    for (; i < k; ++i) {
        dst[i] = src[i];
    }
    for (; i < kpad; ++i) {
        dst[i] = 0;
    }
}

/* Channel o's current weights (minus wzp, patch written over the flash row) as int16 into
 * dst[0 .. kpad - 1] (zeros after k); returns their sum modulo 2^32. */
static inline uint32_t x86_weight_row(const x86_gemm *g, int32_t o, int16_t *dst) {
    x86_row16(g->w + (size_t)o * (size_t)g->k, g->k, g->kpad, dst);
    if (g->wzp != 0) { /* w - w_zp fits int16: |(w - w_zp) x| pairs stay far below 2^31 */
        for (int32_t i = 0; i < g->k; ++i) {
            dst[i] = (int16_t)(dst[i] - g->wzp);
        }
    }
    if (g->wt != NULL) {
        const int32_t taps = g->k / g->cin;
        const int8_t *pw = g->wt + (size_t)o * (size_t)taps * (size_t)g->n;
        for (int32_t t = 0; t < taps; ++t) {
            for (int32_t q = 0; q < g->n; ++q) {
                dst[(size_t)t * (size_t)g->cin + g->ch[q]] = pw[(size_t)t * (size_t)g->n + (size_t)q];
            }
        }
    }
    uint32_t s = 0;
    for (int32_t i = 0; i < g->k; ++i) {
        s += (uint32_t)(int32_t)dst[i];
    }
    return s;
}

/* ---- eight lanes */

typedef struct {
    __m256i q, c_even, c_odd, rs;
} tt_x86_rq8;

static inline tt_x86_rq8 tt_x86_rq8_make(const tt_dsp_rq rq[8]) {
    int32_t q[8], ce[8], co[8], rs[8];
    for (int32_t j = 0; j < 8; j += 2) {
        q[j] = rq[j].q;
        q[j + 1] = rq[j + 1].q;
        ce[j] = (int32_t)rq[j].lo;
        ce[j + 1] = (int32_t)rq[j].hi;
        co[j] = (int32_t)rq[j + 1].lo;
        co[j + 1] = (int32_t)rq[j + 1].hi;
        rs[j] = rq[j].rs;
        rs[j + 1] = rq[j + 1].rs;
    }
    tt_x86_rq8 v;
    v.q = _mm256_loadu_si256((const __m256i *)(const void *)q);
    v.c_even = _mm256_loadu_si256((const __m256i *)(const void *)ce);
    v.c_odd = _mm256_loadu_si256((const __m256i *)(const void *)co);
    v.rs = _mm256_loadu_si256((const __m256i *)(const void *)rs);
    return v;
}

/* tt_x86_rq4_fast on eight lanes. */
static inline __m256i tt_x86_rq8_fast(__m256i acc, const tt_x86_rq8 *r) {
    const __m256i lo_mask = _mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0);
    const __m256i neg_e = _mm256_slli_epi64(_mm256_and_si256(_mm256_srli_epi32(acc, 31), lo_mask), 31);
    const __m256i neg_o = _mm256_slli_epi64(_mm256_srli_epi64(acc, 63), 31);
    const __m256i acc_o = _mm256_srli_epi64(acc, 32);
    const __m256i pe = _mm256_sub_epi64(_mm256_add_epi64(_mm256_mul_epi32(acc, r->q), r->c_even), neg_e);
    const __m256i po =
        _mm256_sub_epi64(_mm256_add_epi64(_mm256_mul_epi32(acc_o, _mm256_srli_epi64(r->q, 32)), r->c_odd), neg_o);
    const __m256i hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
    return _mm256_srav_epi32(hi, r->rs);
}

/* clamp(v, lo_z, hi_z) + zp of eight lanes, stored as eight int8. */
static inline void tt_x86_store8(__m256i v, __m256i lo_z, __m256i hi_z, __m256i zp, int8_t *y) {
    v = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(v, lo_z), hi_z), zp);
    v = _mm256_packs_epi32(v, v);
    v = _mm256_packs_epi16(v, v);
    const __m128i b = _mm_unpacklo_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64((__m128i *)(void *)y, b);
}

#define TT_X86_PANEL 16384 /* int16 of the packed weights of the small-depth GEMM */

/* Whether x86_gemm_rows_v takes g (small depth: no horizontal sums). */
static inline int x86_gemm_small(const x86_gemm *g) {
    const int32_t cols16 = (g->cols + 15) & ~15;
    return g->k <= 32 && cols16 * g->kpad <= TT_X86_PANEL;
}

/*
 * x86_gemm_rows for a small depth: the weights packed once per call as int16 pairs
 * panel[block of 8 channels][pair kp][channel][2]; per pixel and pair one 32-bit broadcast
 * of (x[2kp], x[2kp + 1]), one VPMADDWD per block of 8 channels; 4 pixels x 16 channels
 * per tile; the 8-lane sums are requantized directly (no horizontal sums).
 */
static inline void x86_gemm_rows_v(const x86_gemm *g, const int16_t *xb, int32_t nrows, int8_t *y, size_t y_stride) {
    const int32_t kpad = g->kpad;
    const int32_t k2 = (g->k + 1) / 2;
    const int32_t cols16 = (g->cols + 15) & ~15;
    int16_t panel[TT_X86_PANEL];
    int16_t wrow[32];
    uint32_t base[16];
    tt_dsp_rq rq[16];
    const __m256i zp = _mm256_set1_epi32(g->zp), lo_z = _mm256_set1_epi32(g->lo_z), hi_z = _mm256_set1_epi32(g->hi_z);
    for (int32_t o0 = 0; o0 < cols16; o0 += 16) {
        int fast = 1;
        for (int32_t j = 0; j < 16; ++j) {
            const int32_t o = o0 + j;
            int16_t *blk = panel + (size_t)(o0 / 8 + j / 8) * (size_t)k2 * 16u;
            if (o < g->cols) {
                base[j] = (g->bias != NULL ? (uint32_t)g->bias[o] : 0u) + g->off * x86_weight_row(g, o, wrow);
                rq[j] = tt_dsp_rq_make(g->mult[o], g->shift[o]);
                fast &= rq[j].fast;
            } else {
                memset(wrow, 0, sizeof wrow);
                base[j] = 0u;
                rq[j] = rq[0];
            }
            for (int32_t kp = 0; kp < k2; ++kp) {
                blk[(size_t)kp * 16u + (size_t)(j % 8) * 2u] = wrow[2 * kp];
                blk[(size_t)kp * 16u + (size_t)(j % 8) * 2u + 1u] = wrow[2 * kp + 1];
            }
        }
        const __m256i b0 = _mm256_loadu_si256((const __m256i *)(const void *)base);
        const __m256i b1 = _mm256_loadu_si256((const __m256i *)(const void *)(base + 8));
        const tt_x86_rq8 r0 = tt_x86_rq8_make(rq), r1 = tt_x86_rq8_make(rq + 8);
        const int16_t *p0 = panel + (size_t)(o0 / 8) * (size_t)k2 * 16u;
        const int16_t *p1 = p0 + (size_t)k2 * 16u;
        for (int32_t r = 0; r < nrows; r += 4) {
            __m256i a[4][2];
            for (int32_t i = 0; i < 4; ++i) {
                a[i][0] = b0;
                a[i][1] = b1;
            }
            const int16_t *x0 = xb + (size_t)r * (size_t)kpad;
            for (int32_t kp = 0; kp < k2; ++kp) {
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(const void *)(p0 + (size_t)kp * 16u));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(const void *)(p1 + (size_t)kp * 16u));
                for (int32_t i = 0; i < 4; ++i) {
                    int32_t pair;
                    memcpy(&pair, x0 + (size_t)i * (size_t)kpad + 2 * kp, 4);
                    const __m256i xv = _mm256_set1_epi32(pair);
                    a[i][0] = TT_X86_MADD(a[i][0], xv, w0);
                    a[i][1] = TT_X86_MADD(a[i][1], xv, w1);
                }
            }
            for (int32_t i = 0; i < 4 && r + i < nrows; ++i) {
                int8_t *yr = y + (size_t)(r + i) * y_stride + (size_t)o0;
                for (int32_t h = 0; h < 2; ++h) {
                    const int32_t ob = o0 + 8 * h;
                    if (fast && ob + 8 <= g->cols) {
                        tt_x86_store8(tt_x86_rq8_fast(a[i][h], h == 0 ? &r0 : &r1), lo_z, hi_z, zp, yr + 8 * h);
                        continue;
                    }
                    uint32_t sv[8];
                    _mm256_storeu_si256((__m256i *)(void *)sv, a[i][h]);
                    for (int32_t j = 0; j < 8 && ob + j < g->cols; ++j) {
                        yr[8 * h + j] = tt_dsp_rq_s8(sv[j], &rq[8 * h + j], g->zp, g->lo_z, g->hi_z);
                    }
                }
            }
        }
    }
}

/*
 * y[r * y_stride + o] for r < nrows, o < cols from the gathered int16 rows xb (row r at
 * xb + r * kpad; rows nrows .. round-up to TT_X86_RB must be readable, any values).
 */
static inline void x86_gemm_rows(const x86_gemm *g, const int16_t *xb, int32_t nrows, int8_t *y, size_t y_stride) {
    const int32_t kpad = g->kpad;
    int16_t wb[4 * TT_X86_MAX_K];
    const __m128i zp = _mm_set1_epi32(g->zp), lo_z = _mm_set1_epi32(g->lo_z), hi_z = _mm_set1_epi32(g->hi_z);
    for (int32_t o = 0; o < g->cols; o += 4) {
        const int32_t nc = g->cols - o < 4 ? g->cols - o : 4;
        uint32_t base[4];
        tt_dsp_rq rq[4];
        int fast = nc == 4;
        for (int32_t j = 0; j < 4; ++j) {
            if (j < nc) {
                const uint32_t s = x86_weight_row(g, o + j, wb + (size_t)j * (size_t)kpad);
                base[j] = (g->bias != NULL ? (uint32_t)g->bias[o + j] : 0u) + g->off * s;
                rq[j] = tt_dsp_rq_make(g->mult[o + j], g->shift[o + j]);
                fast &= rq[j].fast;
            } else {
                base[j] = 0u;
                rq[j] = rq[0];
                memset(wb + (size_t)j * (size_t)kpad, 0, (size_t)kpad * sizeof(int16_t));
            }
        }
        const __m128i bv = _mm_setr_epi32((int32_t)base[0], (int32_t)base[1], (int32_t)base[2], (int32_t)base[3]);
        const tt_x86_rq4 rv = tt_x86_rq4_make(rq);
        for (int32_t r = 0; r < nrows; r += TT_X86_RB) {
            __m256i acc[TT_X86_RB][4];
            for (int32_t a = 0; a < TT_X86_RB; ++a) {
                for (int32_t b = 0; b < 4; ++b) {
                    acc[a][b] = _mm256_setzero_si256();
                }
            }
            const int16_t *x0 = xb + (size_t)r * (size_t)kpad;
            for (int32_t i = 0; i < kpad; i += 16) {
                __m256i wv[4];
                for (int32_t b = 0; b < 4; ++b) {
                    wv[b] = _mm256_loadu_si256((const __m256i *)(const void *)(wb + (size_t)b * (size_t)kpad + i));
                }
                for (int32_t a = 0; a < TT_X86_RB; ++a) {
                    const __m256i xv = _mm256_loadu_si256((const __m256i *)(const void *)(x0 + (size_t)a * (size_t)kpad + i));
                    for (int32_t b = 0; b < 4; ++b) {
                        acc[a][b] = TT_X86_MADD(acc[a][b], xv, wv[b]);
                    }
                }
            }
            for (int32_t a = 0; a < TT_X86_RB && r + a < nrows; ++a) {
                const __m128i s = _mm_add_epi32(tt_x86_hsum4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]), bv);
                int8_t *yr = y + (size_t)(r + a) * y_stride + (size_t)o;
                if (fast) {
                    tt_x86_store4(tt_x86_rq4_fast(s, &rv), lo_z, hi_z, zp, yr);
                } else {
                    uint32_t sv[4];
                    _mm_storeu_si128((__m128i *)(void *)sv, s);
                    for (int32_t j = 0; j < nc; ++j) {
                        yr[j] = tt_dsp_rq_s8(sv[j], &rq[j], g->zp, g->lo_z, g->hi_z);
                    }
                }
            }
        }
    }
}

/* The GEMM of n pixels: pixel i's kh segments of seg bytes at x + i * x_step + ky * row_stride,
 * gathered in chunks of whole blocks that fit TT_X86_XBUF. */
static inline void x86_gemm_pixels(const x86_gemm *g, int32_t n, int32_t kh, int32_t seg, const int8_t *x, size_t x_step,
                            size_t row_stride, int8_t *y, size_t y_stride) {
    int16_t xb[TT_X86_XBUF];
    const int32_t kpad = g->kpad;
    const int32_t chunk = (TT_X86_XBUF / kpad) / TT_X86_RB * TT_X86_RB;
    for (int32_t p0 = 0; p0 < n; p0 += chunk) {
        const int32_t np = n - p0 < chunk ? n - p0 : chunk;
        const int32_t npad = (np + TT_X86_RB - 1) / TT_X86_RB * TT_X86_RB;
        for (int32_t i = 0; i < npad; ++i) {
            int16_t *d = xb + (size_t)i * (size_t)kpad;
            if (i >= np) {
                memset(d, 0, (size_t)kpad * sizeof(int16_t));
                continue;
            }
            const int8_t *xp = x + (size_t)(p0 + i) * x_step;
            if (kh == 1) {
                x86_row16(xp, seg, kpad, d);
                continue;
            }
            for (int32_t ky = 0; ky < kh; ++ky) {
                const int8_t *src = xp + (size_t)ky * row_stride;
                int16_t *dd = d + (size_t)ky * (size_t)seg;
                for (int32_t j = 0; j < seg; ++j) {
                    dd[j] = src[j];
                }
            }
            for (int32_t j = kh * seg; j < kpad; ++j) {
                d[j] = 0;
            }
        }
        if (x86_gemm_small(g)) {
            x86_gemm_rows_v(g, xb, np, y + (size_t)p0 * y_stride, y_stride);
        } else {
            x86_gemm_rows(g, xb, np, y + (size_t)p0 * y_stride, y_stride);
        }
    }
}

#endif /* TT_X86_AVX2 */

#endif /* TT_X86_H */
