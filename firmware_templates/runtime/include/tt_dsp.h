/*
 * tinytrain runtime, optimized backend: the few Cortex-M DSP-extension (ARMv7E-M)
 * instructions the dsp kernels use, each with a portable C fallback of exactly the same
 * result, so the dsp sources build and are tested on the host too.
 *
 * With __ARM_FEATURE_DSP (Cortex-M4/M7, -mcpu=cortex-m4/m7) they map to the ACLE
 * intrinsics of <arm_acle.h>; elsewhere to plain C. Every operation here is modular
 * (results are the low 32 bits of the exact value): SMLAD / SMLABB / SMLATT set the Q
 * flag on signed overflow but still return the wrapped sum, which is what the fallbacks
 * compute in uint32 arithmetic. Signed 16-bit halves are carried in uint32_t words.
 *
 * Below the intrinsics: int8 dot-product blocks and the row x channel GEMM shared by
 * dsp/tt_fc_dsp.c and dsp/tt_fused_block_stages_dsp.c.
 *
 * Arithmetic. The reference kernels accumulate sum_i w[i] * (x[i] + off) modulo 2^32
 * (off = -input_zp). Here the same sum is split as
 *     sum_i w[i] * x[i]  +  off * sum_i w[i]          (all modulo 2^32)
 * The raw int8 x int8 products go through SXTB16 (bytes 0/2 and 1/3 as int16 pairs) and
 * SMLAD (two products per instruction); the weight sum of each output channel is
 * computed once per call (per row for the fused block) and folded, with the bias, into
 * the accumulator's start value. Every sum is taken modulo 2^32 (SMLAD wraps; the C
 * fallbacks use uint32), so any summation order gives the reference's bytes: where the
 * reference relies on "no overflow" (|w * (x - zp)| <= 32640 per tap, <= 65793 taps),
 * its int32 sum equals the true sum and so does ours modulo 2^32, and where the reference
 * wraps (tt_fc_s8 sums in uint32), both wrap identically.
 *
 * Loads: tt_ld32 reads 4 bytes from any address (memcpy; an unaligned LDR on ARMv7-M,
 * which GCC emits for -mcpu=cortex-m4/m7 with its default -munaligned-access).
 */
#ifndef TT_DSP_H
#define TT_DSP_H

#include <string.h>

#include "tt_common.h"
#include "tt_conv.h"
#include "tt_fixedpoint.h"
#include "tt_internal.h"

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define TT_DSP_NATIVE 1
#else
#define TT_DSP_NATIVE 0
#endif

/* 4 bytes at p, little-endian (byte p[0] in bits 0..7), any alignment. */
static inline uint32_t tt_ld32(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* Rotate right by 8 bits (GCC folds it into the operand of SXTB16 on ARM). */
static inline uint32_t tt_ror8(uint32_t x) { return (x >> 8) | (x << 24); }

#if TT_DSP_NATIVE

/* SXTB16: bytes 0 and 2 of x sign-extended to the low and high int16 halves. */
static inline uint32_t tt_sxtb16(uint32_t x) { return (uint32_t)__sxtb16((int32_t)x); }

/* SMLAD: acc + lo(x) * lo(y) + hi(x) * hi(y), int16 halves, modulo 2^32. */
static inline uint32_t tt_smlad(uint32_t x, uint32_t y, uint32_t acc) {
    return (uint32_t)__smlad((int16x2_t)x, (int16x2_t)y, (int32_t)acc);
}

/* SMLABB: acc + lo(x) * lo(y), modulo 2^32. */
static inline uint32_t tt_smlabb(uint32_t x, uint32_t y, uint32_t acc) {
    return (uint32_t)__smlabb((int32_t)x, (int32_t)y, (int32_t)acc);
}

/* SMLATT: acc + hi(x) * hi(y), modulo 2^32. */
static inline uint32_t tt_smlatt(uint32_t x, uint32_t y, uint32_t acc) {
    return (uint32_t)__smlatt((int32_t)x, (int32_t)y, (int32_t)acc);
}

#else /* portable fallbacks, bit-identical */

static inline int32_t tt_dsp_lo16(uint32_t x) { return (int32_t)(int16_t)(uint16_t)(x & 0xFFFFu); }
static inline int32_t tt_dsp_hi16(uint32_t x) { return (int32_t)(int16_t)(uint16_t)(x >> 16); }

static inline uint32_t tt_sxtb16(uint32_t x) {
    uint32_t lo = (uint32_t)(int32_t)(int8_t)(uint8_t)(x & 0xFFu) & 0xFFFFu;
    uint32_t hi = (uint32_t)(int32_t)(int8_t)(uint8_t)((x >> 16) & 0xFFu) & 0xFFFFu;
    return lo | (hi << 16);
}

/* |int16 * int16| <= 2^30: each product fits int32; the sums wrap in uint32. */
static inline uint32_t tt_smlad(uint32_t x, uint32_t y, uint32_t acc) {
    return acc + (uint32_t)(tt_dsp_lo16(x) * tt_dsp_lo16(y)) + (uint32_t)(tt_dsp_hi16(x) * tt_dsp_hi16(y));
}

static inline uint32_t tt_smlabb(uint32_t x, uint32_t y, uint32_t acc) {
    return acc + (uint32_t)(tt_dsp_lo16(x) * tt_dsp_lo16(y));
}

static inline uint32_t tt_smlatt(uint32_t x, uint32_t y, uint32_t acc) {
    return acc + (uint32_t)(tt_dsp_hi16(x) * tt_dsp_hi16(y));
}

#endif

/* SXTB16 of x rotated right by 8: bytes 1 and 3 sign-extended (one instruction on the
 * DSP extension: GCC 12 does not fold the rotation into the intrinsic's operand). */
#if TT_DSP_NATIVE
static inline uint32_t tt_sxtb16_ror8(uint32_t x) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
#else
static inline uint32_t tt_sxtb16_ror8(uint32_t x) { return tt_sxtb16(tt_ror8(x)); }
#endif

/* ------------------------------------------------------------ requantization */

/*
 * tt_requant_s8 (include/tt_conv.h) with a cheaper, exact high multiply: gemmlowp's
 * SaturatingRoundingDoublingHighMul, trunc((a * b + nudge) / 2^31) with nudge = 2^30 for
 * a * b >= 0 and 1 - 2^30 otherwise, equals floor((a * b + 2^30) / 2^31) in both cases
 * (for a * b < 0 the truncated quotient of the negative total is its ceiling, and
 * ceil((p + 1 - 2^30) / 2^31) = floor((p + 2^30) / 2^31)); the only saturating case
 * (a = b = INT32_MIN) is kept. The rounding right shift is tt_rdbpot32's, written
 * with unsigned shifts (no branches on ARM).
 */
static inline int8_t tt_dsp_requant_s8(uint32_t acc, int32_t q, int shift, int32_t zp, int32_t lo_z, int32_t hi_z) {
    const int left = shift > 0 ? shift : 0;
    const int right = shift > 0 ? 0 : -shift;
    const int32_t x = tt_wrap32((int64_t)(acc << left));
    int32_t hm;
    if (x == TT_INT32_MIN && q == TT_INT32_MIN) {
        hm = TT_INT32_MAX;
    } else {
        /* bits 31..62 of x * q + 2^30 (that value fits int32): floor division by 2^31 */
        const uint64_t p = (uint64_t)((int64_t)x * (int64_t)q) + ((uint64_t)1 << 30);
        hm = tt_wrap32((int64_t)(uint32_t)(p >> 31));
    }
    /* tt_rdbpot32(hm, right) without a signed shift: floor(hm / 2^right) through the
     * offset-binary value hm + 2^31, plus one when the remainder is above the threshold */
    const uint32_t mask = (1u << right) - 1u;
    const uint32_t rem = (uint32_t)hm & mask;
    const uint32_t thr = (mask >> 1) + (hm < 0 ? 1u : 0u);
    const uint32_t fl = ((((uint32_t)hm ^ 0x80000000u) >> right) - (0x80000000u >> right)) + (rem > thr ? 1u : 0u);
    const int32_t v = tt_wrap32((int64_t)fl);
    return (int8_t)(tt_clamp32(v, lo_z, hi_z) + zp);
}

/* ------------------------------------------------------------ int8 dot blocks */

/* acc[0..3] += raw dot products x0.w0, x0.w1, x1.w0, x1.w1 over len bytes (modulo 2^32). */
static inline void tt_dsp_dot_2x2(const int8_t *x0, const int8_t *x1, const int8_t *w0, const int8_t *w1, int32_t len,
                                  uint32_t acc[4]) {
    uint32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        const uint32_t xa = tt_ld32(x0 + i);
        const uint32_t xb = tt_ld32(x1 + i);
        const uint32_t wa = tt_ld32(w0 + i);
        const uint32_t wb = tt_ld32(w1 + i);
        const uint32_t xa_e = tt_sxtb16(xa), xa_o = tt_sxtb16_ror8(xa);
        const uint32_t xb_e = tt_sxtb16(xb), xb_o = tt_sxtb16_ror8(xb);
        const uint32_t wa_e = tt_sxtb16(wa), wa_o = tt_sxtb16_ror8(wa);
        const uint32_t wb_e = tt_sxtb16(wb), wb_o = tt_sxtb16_ror8(wb);
        a00 = tt_smlad(xa_e, wa_e, a00);
        a00 = tt_smlad(xa_o, wa_o, a00);
        a01 = tt_smlad(xa_e, wb_e, a01);
        a01 = tt_smlad(xa_o, wb_o, a01);
        a10 = tt_smlad(xb_e, wa_e, a10);
        a10 = tt_smlad(xb_o, wa_o, a10);
        a11 = tt_smlad(xb_e, wb_e, a11);
        a11 = tt_smlad(xb_o, wb_o, a11);
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
    tt_dot_2x2(x0 + i, x1 + i, 0, w0 + i, w1 + i, len - i, acc); /* the last len % 4 bytes */
}

/* acc[0..1] += raw dot products x.w0, x.w1 over len bytes. */
static inline void tt_dsp_dot_1x2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t len, uint32_t acc[2]) {
    uint32_t a0 = acc[0], a1 = acc[1];
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        const uint32_t xv = tt_ld32(x + i);
        const uint32_t wa = tt_ld32(w0 + i);
        const uint32_t wb = tt_ld32(w1 + i);
        const uint32_t x_e = tt_sxtb16(xv), x_o = tt_sxtb16_ror8(xv);
        a0 = tt_smlad(x_e, tt_sxtb16(wa), a0);
        a0 = tt_smlad(x_o, tt_sxtb16_ror8(wa), a0);
        a1 = tt_smlad(x_e, tt_sxtb16(wb), a1);
        a1 = tt_smlad(x_o, tt_sxtb16_ror8(wb), a1);
    }
    for (; i < len; ++i) {
        const int32_t xv = x[i];
        a0 += (uint32_t)(xv * (int32_t)w0[i]);
        a1 += (uint32_t)(xv * (int32_t)w1[i]);
    }
    acc[0] = a0;
    acc[1] = a1;
}

/* Raw dot product x.w over len bytes. */
static inline uint32_t tt_dsp_dot_1x1(const int8_t *x, const int8_t *w, int32_t len) {
    uint32_t a = 0;
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        const uint32_t xv = tt_ld32(x + i);
        const uint32_t wv = tt_ld32(w + i);
        a = tt_smlad(tt_sxtb16(xv), tt_sxtb16(wv), a);
        a = tt_smlad(tt_sxtb16_ror8(xv), tt_sxtb16_ror8(wv), a);
    }
    for (; i < len; ++i) {
        a += (uint32_t)((int32_t)x[i] * (int32_t)w[i]);
    }
    return a;
}

/* sum_i v[i] (int8) modulo 2^32. */
static inline uint32_t tt_dsp_sum_s8(const int8_t *v, int32_t len) {
    const uint32_t ones = 0x00010001u;
    uint32_t a = 0;
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        const uint32_t vv = tt_ld32(v + i);
        a = tt_smlad(tt_sxtb16(vv), ones, a);
        a = tt_smlad(tt_sxtb16_ror8(vv), ones, a);
    }
    for (; i < len; ++i) {
        a += (uint32_t)(int32_t)v[i];
    }
    return a;
}

/*
 * The plain GEMM of a 1x1 convolution without patch or weight zero point:
 *   y[r * y_stride + o] = tt_dsp_requant_s8(sum_i w[o][i] * (x[r * x_stride + i] + off) + bias[o], ...)
 * for r < rows, o < cols; w is [cols][k] contiguous. Loop order: output-channel pairs
 * outside (their weight sums computed once), row pairs inside.
 */
typedef struct {
    int32_t rows, k, cols;
    int32_t off;              /* -input_zp */
    const int32_t *mult;      /* [cols] */
    const int32_t *shift;     /* [cols] */
    int32_t zp, lo_z, hi_z;   /* output zp, act_min - zp, act_max - zp */
} tt_dsp_gemm;

static inline uint32_t tt_dsp_channel_base(const tt_dsp_gemm *g, const int8_t *w, const int32_t *bias, int32_t o) {
    const uint32_t b = bias != NULL ? (uint32_t)bias[o] : 0u;
    return b + (uint32_t)g->off * tt_dsp_sum_s8(w, g->k);
}

static inline void tt_dsp_gemm_s8(const tt_dsp_gemm *g, const int8_t *x, size_t x_stride, const int8_t *w,
                                  const int32_t *bias, int8_t *y, size_t y_stride) {
    const int32_t k = g->k;
    int32_t o = 0;
    for (; o + 2 <= g->cols; o += 2) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        const int8_t *w1 = w0 + k;
        const uint32_t b0 = tt_dsp_channel_base(g, w0, bias, o);
        const uint32_t b1 = tt_dsp_channel_base(g, w1, bias, o + 1);
        const int32_t q0 = g->mult[o], q1 = g->mult[o + 1];
        const int s0 = (int)g->shift[o], s1 = (int)g->shift[o + 1];
        int32_t r = 0;
        for (; r + 2 <= g->rows; r += 2) {
            const int8_t *x0 = x + (size_t)r * x_stride;
            uint32_t acc[4] = {b0, b1, b0, b1};
            tt_dsp_dot_2x2(x0, x0 + x_stride, w0, w1, k, acc);
            int8_t *y0 = y + (size_t)r * y_stride + o;
            int8_t *y1 = y0 + y_stride;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, g->zp, g->lo_z, g->hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, g->zp, g->lo_z, g->hi_z);
            y1[0] = tt_dsp_requant_s8(acc[2], q0, s0, g->zp, g->lo_z, g->hi_z);
            y1[1] = tt_dsp_requant_s8(acc[3], q1, s1, g->zp, g->lo_z, g->hi_z);
        }
        if (r < g->rows) {
            uint32_t acc[2] = {b0, b1};
            tt_dsp_dot_1x2(x + (size_t)r * x_stride, w0, w1, k, acc);
            int8_t *y0 = y + (size_t)r * y_stride + o;
            y0[0] = tt_dsp_requant_s8(acc[0], q0, s0, g->zp, g->lo_z, g->hi_z);
            y0[1] = tt_dsp_requant_s8(acc[1], q1, s1, g->zp, g->lo_z, g->hi_z);
        }
    }
    if (o < g->cols) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        const uint32_t b0 = tt_dsp_channel_base(g, w0, bias, o);
        for (int32_t r = 0; r < g->rows; ++r) {
            const uint32_t acc = b0 + tt_dsp_dot_1x1(x + (size_t)r * x_stride, w0, k);
            y[(size_t)r * y_stride + (size_t)o] = tt_dsp_requant_s8(acc, g->mult[o], (int)g->shift[o], g->zp, g->lo_z,
                                                                g->hi_z);
        }
    }
}

/* ------------------------------------------------ added for the backward kernels */

/* SMLATB: acc + hi(x) * lo(y); SMLABT: acc + lo(x) * hi(y) (int16 halves, modulo 2^32). */
#if TT_DSP_NATIVE
static inline uint32_t tt_smlatb(uint32_t x, uint32_t y, uint32_t acc) {
    return (uint32_t)__smlatb((int32_t)x, (int32_t)y, (int32_t)acc);
}
static inline uint32_t tt_smlabt(uint32_t x, uint32_t y, uint32_t acc) {
    return (uint32_t)__smlabt((int32_t)x, (int32_t)y, (int32_t)acc);
}
#else
static inline uint32_t tt_smlatb(uint32_t x, uint32_t y, uint32_t acc) {
    return acc + (uint32_t)(tt_dsp_hi16(x) * tt_dsp_lo16(y));
}
static inline uint32_t tt_smlabt(uint32_t x, uint32_t y, uint32_t acc) {
    return acc + (uint32_t)(tt_dsp_lo16(x) * tt_dsp_hi16(y));
}
#endif

/* ------------------------------------------- per-channel requantization, precomputed */

/*
 * tt_requant_s8 with its per-channel work done once (tt_dsp_rq_make) and, for the usual
 * channels (multiplier q > 2^30, shift -r with 1 <= r <= 31), both roundings of tt_mbqm
 * in one 64-bit sum:
 *   tt_mbqm(x, q, -r) = floor((x q + 2^30 + 2^(30 + r) - [x < 0] 2^31) / 2^(31 + r)).
 * Proof: SaturatingRoundingDoublingHighMul (x q never saturates, q != INT32_MIN) is
 * hm = floor((x q + 2^30) / 2^31) (see tt_dsp_requant_s8); RoundingDivideByPOT(hm, r)
 * (mask = 2^r - 1, threshold = 2^(r-1) - 1 + [hm < 0], + 1 when hm & mask > threshold)
 * is floor((hm + 2^(r-1) - [hm < 0]) / 2^r); nested floors of integer quotients merge:
 * floor((floor(t / 2^31) + K) / 2^r) = floor((t + K 2^31) / 2^(31 + r)); and
 * hm < 0 <=> x q + 2^30 < 0 <=> x < 0 because q > 2^30 (x <= -1 gives x q <= -q < -2^30).
 * |x q| < 2^62, so the sum fits an int64. On the DSP extension: two SMLAL (the start
 * value 2^30 + 2^(30 + r), x * q, (x >>> 31) * INT32_MIN) and one ASR of the high word
 * by r - 1. Other channels (q <= 2^30, shift >= 0): tt_dsp_requant_s8.
 */
typedef struct {
    int32_t q;    /* multiplier */
    int32_t rs;   /* fast: r - 1; otherwise the shift */
    uint32_t lo;  /* fast: low word of 2^30 + 2^(30 + r) */
    uint32_t hi;  /* fast: its high word */
    int32_t fast; /* 1: q > 2^30 and -31 <= shift <= -1 */
} tt_dsp_rq;

static inline tt_dsp_rq tt_dsp_rq_make(int32_t q, int32_t shift) {
    tt_dsp_rq r;
    r.q = q;
    r.fast = q > 0x40000000 && shift <= -1 && shift >= -31;
    if (r.fast) {
        const int rr = (int)-shift;
        const uint64_t c = ((uint64_t)1 << 30) + ((uint64_t)1 << (30 + rr));
        r.rs = rr - 1;
        r.lo = (uint32_t)c;
        r.hi = (uint32_t)(c >> 32);
    } else {
        r.rs = shift;
        r.lo = 0u;
        r.hi = 0u;
    }
    return r;
}

/* tt_mbqm(wrap32(acc), q, shift) for a fast channel (r->fast). */
static inline int32_t tt_dsp_rq_fast(uint32_t acc, const tt_dsp_rq *r) {
#if TT_DSP_NATIVE
    uint32_t lo = r->lo, hi = r->hi;
    int32_t m;
    __asm__("smlal %0, %1, %3, %4\n\t"
            "lsr %2, %3, #31\n\t"
            "smlal %0, %1, %2, %5\n\t"
            "asr %2, %1, %6"
            : "+&r"(lo), "+&r"(hi), "=&r"(m)
            : "r"(acc), "r"(r->q), "r"(0x80000000u), "r"(r->rs));
    return m;
#else
    const int64_t x = (int64_t)tt_wrap32((int64_t)acc);
    const int64_t c = (int64_t)(((uint64_t)r->hi << 32) | (uint64_t)r->lo);
    const int64_t t = c + x * (int64_t)r->q - (x < 0 ? ((int64_t)1 << 31) : 0);
    return (int32_t)tt_asr64(t, 32 + (int)r->rs);
#endif
}

/* tt_dsp_rq_fast without the sign term: floor((acc q + 2^30 + 2^(30 + r)) / 2^(31 + r)) (one
 * SMLAL and one ASR). It equals tt_dsp_rq_fast for acc >= 0 and is <= 0 for acc < 0 (acc q +
 * 2^30 < 0 since q > 2^30), as is tt_dsp_rq_fast (the term only lowers it): where every value
 * <= 0 clamps to the same output (act_min >= zp, e.g. ReLU with zp = -128), the two give the
 * same bytes (TT_DSP_RQ_RELU). */
static inline int32_t tt_dsp_rq_fast_ns(uint32_t acc, const tt_dsp_rq *r) {
#if TT_DSP_NATIVE
    uint32_t lo = r->lo, hi = r->hi;
    int32_t m;
    __asm__("smlal %0, %1, %3, %4\n\t"
            "asr %2, %1, %5"
            : "+&r"(lo), "+&r"(hi), "=&r"(m)
            : "r"(acc), "r"(r->q), "r"(r->rs));
    return m;
#else
    const int64_t x = (int64_t)tt_wrap32((int64_t)acc);
    const int64_t c = (int64_t)(((uint64_t)r->hi << 32) | (uint64_t)r->lo);
    return (int32_t)tt_asr64(c + x * (int64_t)r->q, 32 + (int)r->rs);
#endif
}

/* tt_requant_s8(acc, q, shift, zp, lo_z, hi_z) for any channel. */
static inline int8_t tt_dsp_rq_s8(uint32_t acc, const tt_dsp_rq *r, int32_t zp, int32_t lo_z, int32_t hi_z) {
    if (r->fast) {
        return (int8_t)(tt_clamp32(tt_dsp_rq_fast(acc, r), lo_z, hi_z) + zp);
    }
    return tt_dsp_requant_s8(acc, r->q, (int)r->rs, zp, lo_z, hi_z);
}

/* clamp(v, lo_z, hi_z) + zp as int8 (v: a fast channel's tt_dsp_rq_fast). */
static inline int8_t tt_dsp_rq_out(int32_t v, int32_t zp, int32_t lo_z, int32_t hi_z) {
    return (int8_t)(tt_clamp32(v, lo_z, hi_z) + zp);
}

/* ------------------------------------------------------- GEMM with tt_dsp_rq requantization */

/* One 4-byte step of tt_dsp_dot_2x2_w: x words xa, xb against weight words wa, wb (ordered
 * so that at most six temporaries are live). */
#define TT_DSP_STEP_2X2(xa, xb, wa, wb)                                                                                 \
    do {                                                                                                               \
        const uint32_t xa_e = tt_sxtb16(xa), xa_o = tt_sxtb16_ror8(xa);                                                \
        const uint32_t xb_e = tt_sxtb16(xb), xb_o = tt_sxtb16_ror8(xb);                                                \
        const uint32_t wa_e = tt_sxtb16(wa), wa_o = tt_sxtb16_ror8(wa);                                                \
        a00 = tt_smlad(xa_e, wa_e, a00);                                                                               \
        a10 = tt_smlad(xb_e, wa_e, a10);                                                                               \
        a00 = tt_smlad(xa_o, wa_o, a00);                                                                               \
        a10 = tt_smlad(xb_o, wa_o, a10);                                                                               \
        const uint32_t wb_e = tt_sxtb16(wb), wb_o = tt_sxtb16_ror8(wb);                                                \
        a01 = tt_smlad(xa_e, wb_e, a01);                                                                               \
        a11 = tt_smlad(xb_e, wb_e, a11);                                                                               \
        a01 = tt_smlad(xa_o, wb_o, a01);                                                                               \
        a11 = tt_smlad(xb_o, wb_o, a11);                                                                               \
    } while (0)

/* acc[0..3] += raw dots x0.w0, x0.w1, x1.w0, x1.w1 over len bytes (modulo 2^32): 8 bytes per
 * loop step (the pointer and counter upkeep of a step spread over 32 products), then 4,
 * then the last len % 4 bytes. */
static inline void tt_dsp_dot_2x2_w(const int8_t *x0, const int8_t *x1, const int8_t *w0, const int8_t *w1, int32_t len,
                                    uint32_t acc[4]) {
    uint32_t a00 = acc[0], a01 = acc[1], a10 = acc[2], a11 = acc[3];
    int32_t n8 = len >> 3;
    while (n8-- > 0) {
        uint32_t xa = tt_ld32(x0), xb = tt_ld32(x1), wa = tt_ld32(w0), wb = tt_ld32(w1);
        TT_DSP_STEP_2X2(xa, xb, wa, wb);
        xa = tt_ld32(x0 + 4);
        xb = tt_ld32(x1 + 4);
        wa = tt_ld32(w0 + 4);
        wb = tt_ld32(w1 + 4);
        TT_DSP_STEP_2X2(xa, xb, wa, wb);
        x0 += 8;
        x1 += 8;
        w0 += 8;
        w1 += 8;
    }
    if ((len & 4) != 0) {
        const uint32_t xa = tt_ld32(x0), xb = tt_ld32(x1), wa = tt_ld32(w0), wb = tt_ld32(w1);
        TT_DSP_STEP_2X2(xa, xb, wa, wb);
        x0 += 4;
        x1 += 4;
        w0 += 4;
        w1 += 4;
    }
    acc[0] = a00;
    acc[1] = a01;
    acc[2] = a10;
    acc[3] = a11;
    if ((len & 3) != 0) {
        tt_dot_2x2(x0, x1, 0, w0, w1, len & 3, acc);
    }
}

/* Stores the 2 x 2 block acc (rows y0, y0 + y_stride; channels rq[0], rq[1]). */
static inline void tt_dsp_store_2x2(const uint32_t acc[4], const tt_dsp_rq rq[2], int32_t zp, int32_t lo_z,
                                    int32_t hi_z, int8_t *y0, size_t y_stride) {
    if (rq[0].fast && rq[1].fast) {
        y0[0] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[0], &rq[0]), zp, lo_z, hi_z);
        y0[1] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[1], &rq[1]), zp, lo_z, hi_z);
        y0[y_stride] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[2], &rq[0]), zp, lo_z, hi_z);
        y0[y_stride + 1] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[3], &rq[1]), zp, lo_z, hi_z);
        return;
    }
    y0[0] = tt_dsp_rq_s8(acc[0], &rq[0], zp, lo_z, hi_z);
    y0[1] = tt_dsp_rq_s8(acc[1], &rq[1], zp, lo_z, hi_z);
    y0[y_stride] = tt_dsp_rq_s8(acc[2], &rq[0], zp, lo_z, hi_z);
    y0[y_stride + 1] = tt_dsp_rq_s8(acc[3], &rq[1], zp, lo_z, hi_z);
}

/* tt_dsp_gemm_s8 (same arguments, same bytes) with tt_dsp_rq requantization and the
 * tt_dsp_dot_2x2_w blocks. */
static inline void tt_dsp_gemm_rq_s8(const tt_dsp_gemm *g, const int8_t *x, size_t x_stride, const int8_t *w,
                                     const int32_t *bias, int8_t *y, size_t y_stride) {
    const int32_t k = g->k;
    const int32_t zp = g->zp, lo_z = g->lo_z, hi_z = g->hi_z;
    int32_t o = 0;
    for (; o + 2 <= g->cols; o += 2) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        const int8_t *w1 = w0 + k;
        const uint32_t b0 = tt_dsp_channel_base(g, w0, bias, o);
        const uint32_t b1 = tt_dsp_channel_base(g, w1, bias, o + 1);
        const tt_dsp_rq rq[2] = {tt_dsp_rq_make(g->mult[o], g->shift[o]),
                                 tt_dsp_rq_make(g->mult[o + 1], g->shift[o + 1])};
        int32_t r = 0;
        if (rq[0].fast && rq[1].fast) {
            for (; r + 2 <= g->rows; r += 2) {
                const int8_t *x0 = x + (size_t)r * x_stride;
                uint32_t acc[4] = {b0, b1, b0, b1};
                tt_dsp_dot_2x2_w(x0, x0 + x_stride, w0, w1, k, acc);
                int8_t *y0 = y + (size_t)r * y_stride + o;
                y0[0] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[0], &rq[0]), zp, lo_z, hi_z);
                y0[1] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[1], &rq[1]), zp, lo_z, hi_z);
                y0[y_stride] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[2], &rq[0]), zp, lo_z, hi_z);
                y0[y_stride + 1] = tt_dsp_rq_out(tt_dsp_rq_fast(acc[3], &rq[1]), zp, lo_z, hi_z);
            }
        } else {
            for (; r + 2 <= g->rows; r += 2) {
                const int8_t *x0 = x + (size_t)r * x_stride;
                uint32_t acc[4] = {b0, b1, b0, b1};
                tt_dsp_dot_2x2_w(x0, x0 + x_stride, w0, w1, k, acc);
                tt_dsp_store_2x2(acc, rq, zp, lo_z, hi_z, y + (size_t)r * y_stride + o, y_stride);
            }
        }
        if (r < g->rows) {
            uint32_t acc[2] = {b0, b1};
            tt_dsp_dot_1x2(x + (size_t)r * x_stride, w0, w1, k, acc);
            int8_t *y0 = y + (size_t)r * y_stride + o;
            y0[0] = tt_dsp_rq_s8(acc[0], &rq[0], zp, lo_z, hi_z);
            y0[1] = tt_dsp_rq_s8(acc[1], &rq[1], zp, lo_z, hi_z);
        }
    }
    if (o < g->cols) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        const uint32_t b0 = tt_dsp_channel_base(g, w0, bias, o);
        const tt_dsp_rq rq = tt_dsp_rq_make(g->mult[o], g->shift[o]);
        for (int32_t r = 0; r < g->rows; ++r) {
            const uint32_t acc = b0 + tt_dsp_dot_1x1(x + (size_t)r * x_stride, w0, k);
            y[(size_t)r * y_stride + (size_t)o] = tt_dsp_rq_s8(acc, &rq, zp, lo_z, hi_z);
        }
    }
}

/* ------------------------------------------ GEMM with the weights of a channel pair pre-extended */

#if defined(__GNUC__)
#define TT_DSP_NOINLINE __attribute__((noinline))
#define TT_DSP_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define TT_DSP_NOINLINE
#define TT_DSP_ALWAYS_INLINE inline
#endif

/* Largest k (multiple of 4) whose channel-pair weights tt_dsp_gemm_wx_s8 extends on the stack
 * (4 k bytes). */
#define TT_DSP_WX_MAX_K 192

/* The per-channel-pair constants of tt_dsp_gemm_wx_s8's row loop. */
typedef struct {
    uint32_t b0, b1; /* start values: bias + off * weight sum */
    tt_dsp_rq rq[2];
    int32_t zp, lo_z, hi_z;
} tt_dsp_pair;

/* Both channels' int8 weights w0, w1 (k4 words each) as int16 pairs, one 16-byte group per
 * 4 bytes: wx[4 j .. 4 j + 3] = sxtb16(w0 word j), sxtb16_ror8(w0 word j), the same of w1;
 * returns the two weight sums (modulo 2^32) in s[0], s[1]. */
static inline void tt_dsp_extend_pair(const int8_t *w0, const int8_t *w1, int32_t k4, uint32_t *wx, uint32_t s[2]) {
    const uint32_t ones = 0x00010001u;
    uint32_t s0 = 0, s1 = 0;
    for (int32_t j = 0; j < k4; ++j) {
        const uint32_t a = tt_ld32(w0 + 4 * j), b = tt_ld32(w1 + 4 * j);
        const uint32_t ae = tt_sxtb16(a), ao = tt_sxtb16_ror8(a), be = tt_sxtb16(b), bo = tt_sxtb16_ror8(b);
        wx[4 * j] = ae;
        wx[4 * j + 1] = ao;
        wx[4 * j + 2] = be;
        wx[4 * j + 3] = bo;
        s0 = tt_smlad(ae, ones, tt_smlad(ao, ones, s0));
        s1 = tt_smlad(be, ones, tt_smlad(bo, ones, s1));
    }
    s[0] = s0;
    s[1] = s1;
}

/* acc of rows xa (and xb) with the pre-extended pair wx over k4 words. */
#define TT_DSP_WX_STEP(pa, pb, pw)                                                                                     \
    do {                                                                                                               \
        const uint32_t xa_ = tt_ld32(pa), xb_ = tt_ld32(pb);                                                           \
        const uint32_t xae_ = tt_sxtb16(xa_), xao_ = tt_sxtb16_ror8(xa_);                                              \
        const uint32_t xbe_ = tt_sxtb16(xb_), xbo_ = tt_sxtb16_ror8(xb_);                                              \
        a00 = tt_smlad(xae_, (pw)[0], a00);                                                                            \
        a10 = tt_smlad(xbe_, (pw)[0], a10);                                                                            \
        a00 = tt_smlad(xao_, (pw)[1], a00);                                                                            \
        a10 = tt_smlad(xbo_, (pw)[1], a10);                                                                            \
        a01 = tt_smlad(xae_, (pw)[2], a01);                                                                            \
        a11 = tt_smlad(xbe_, (pw)[2], a11);                                                                            \
        a01 = tt_smlad(xao_, (pw)[3], a01);                                                                            \
        a11 = tt_smlad(xbo_, (pw)[3], a11);                                                                            \
    } while (0)

/* TT_DSP_WX_STEP(pa, pb, pw) then pa, pb += 4 and pw += 4 words: on the DSP extension one
 * inline-assembly block (post-incremented loads, LDRD of the extended weights, 16
 * instructions per 16 products, six temporaries). */
#if TT_DSP_NATIVE
#define TT_DSP_WX_STEP_INC(pa, pb, pw)                                                                                 \
    do {                                                                                                               \
        uint32_t xa_, xb_, e_, f_, w0_, w1_;                                                                           \
        __asm__ volatile("ldr %[xa], [%[pa]], #4\n\t"                                                                  \
                         "ldr %[xb], [%[pb]], #4\n\t"                                                                  \
                         "ldrd %[w0], %[w1], [%[pw]], #16\n\t"                                                         \
                         "sxtb16 %[e], %[xa]\n\t"                                                                      \
                         "sxtb16 %[xa], %[xa], ror #8\n\t"                                                             \
                         "smlad %[a00], %[e], %[w0], %[a00]\n\t"                                                       \
                         "sxtb16 %[f], %[xb]\n\t"                                                                      \
                         "smlad %[a00], %[xa], %[w1], %[a00]\n\t"                                                      \
                         "sxtb16 %[xb], %[xb], ror #8\n\t"                                                             \
                         "smlad %[a10], %[f], %[w0], %[a10]\n\t"                                                       \
                         "smlad %[a10], %[xb], %[w1], %[a10]\n\t"                                                      \
                         "ldrd %[w0], %[w1], [%[pw], #-8]\n\t"                                                         \
                         "smlad %[a01], %[e], %[w0], %[a01]\n\t"                                                       \
                         "smlad %[a11], %[f], %[w0], %[a11]\n\t"                                                       \
                         "smlad %[a01], %[xa], %[w1], %[a01]\n\t"                                                      \
                         "smlad %[a11], %[xb], %[w1], %[a11]"                                                          \
                         : [xa] "=&r"(xa_), [xb] "=&r"(xb_), [e] "=&r"(e_), [f] "=&r"(f_), [w0] "=&r"(w0_),            \
                           [w1] "=&r"(w1_), [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11),       \
                           [pa] "+r"(pa), [pb] "+r"(pb), [pw] "+r"(pw)                                                 \
                         :                                                                                             \
                         : "memory");                                                                                  \
    } while (0)
#else
#define TT_DSP_WX_STEP_INC(pa, pb, pw)                                                                                 \
    do {                                                                                                               \
        TT_DSP_WX_STEP(pa, pb, pw);                                                                                    \
        pa += 4;                                                                                                       \
        pb += 4;                                                                                                       \
        pw += 4;                                                                                                       \
    } while (0)
#endif

/* clamp(v, -128, 127) as int8 (SSAT #8 on the DSP extension). */
#if TT_DSP_NATIVE
static inline int32_t tt_ssat8(int32_t v) { return __ssat(v, 8); }
#else
static inline int32_t tt_ssat8(int32_t v) { return tt_clamp32(v, -128, 127); }
#endif

/* How tt_dsp_pair_rows requantizes: any channel (tt_dsp_rq_s8); fast channels, clamped to
 * [lo_z, hi_z]; fast channels of a full-range output (act_min = -128, act_max = 127):
 * clamp(v, lo_z, hi_z) + zp = ssat8(v + zp), v + zp cannot overflow since |v| <= 2^31 / 2^r'
 * with r' = r - 1 >= 0 ... (v = the high word of an int64 below 2^62 in magnitude shifted right
 * by 32 + r - 1 >= 32, so |v| <= 2^30). */
enum { TT_DSP_RQ_ANY = 0, TT_DSP_RQ_FAST = 1, TT_DSP_RQ_FULL = 2, TT_DSP_RQ_RELU = 3 };

/* TT_DSP_RQ_RELU: fast channels of a full-range output with zp = -128 (act_min = zp): no sign
 * term (tt_dsp_rq_fast_ns: for acc < 0 both values are <= 0, both outputs -128). */

#define TT_DSP_PAIR_OUT(acc, rqp, mode)                                                                                \
    ((mode) == TT_DSP_RQ_RELU   ? (int8_t)tt_ssat8(tt_dsp_rq_fast_ns((acc), (rqp)) + zp)                              \
     : (mode) == TT_DSP_RQ_FULL ? (int8_t)tt_ssat8(tt_dsp_rq_fast((acc), (rqp)) + zp)                                 \
     : (mode) == TT_DSP_RQ_FAST ? tt_dsp_rq_out(tt_dsp_rq_fast((acc), (rqp)), zp, lo_z, hi_z)                         \
                                : tt_dsp_rq_s8((acc), (rqp), zp, lo_z, hi_z))

/* Rows 0 .. rows - 1 (x + r * x_stride, k4 words each) of one channel pair (pre-extended wx,
 * constants cp) into y + r * y_stride + 0 / 1, requantized per mode (TT_DSP_RQ_*). */
/* One row against a channel pair (the odd last row of the pair GEMMs): *a0 / *a1 start at the biases and gain
 * the row's dot products with channel 0 and channel 1 (wx interleaves the pair's even / odd byte lanes). */
static TT_DSP_ALWAYS_INLINE void tt_dsp_pair_row_sums(const int8_t *pa, const uint32_t *pw, int32_t k4, uint32_t *a0,
                                                      uint32_t *a1) {
    uint32_t s0 = *a0, s1 = *a1;
    for (int32_t j = 0; j < k4; ++j) {
        const uint32_t xa = tt_ld32(pa);
        const uint32_t xae = tt_sxtb16(xa), xao = tt_sxtb16_ror8(xa);
        s0 = tt_smlad(xae, pw[0], s0);
        s0 = tt_smlad(xao, pw[1], s0);
        s1 = tt_smlad(xae, pw[2], s1);
        s1 = tt_smlad(xao, pw[3], s1);
        pa += 4;
        pw += 4;
    }
    *a0 = s0;
    *a1 = s1;
}

static TT_DSP_ALWAYS_INLINE void tt_dsp_pair_rows(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4, const uint32_t *wx,
                                    const tt_dsp_pair *cp, int8_t *y, size_t y_stride, int mode) {
    const int32_t zp = cp->zp, lo_z = cp->lo_z, hi_z = cp->hi_z;
    const tt_dsp_rq rq0 = cp->rq[0], rq1 = cp->rq[1];
    const uint32_t b0 = cp->b0, b1 = cp->b1;
    const size_t kb = 4 * (size_t)k4;
    const int8_t *x_end = x + (size_t)(rows & ~1) * x_stride;
    while (x != x_end) {
        const int8_t *pa = x, *pb = x + x_stride;
        const uint32_t *pw = wx;
        uint32_t a00 = b0, a01 = b1, a10 = b0, a11 = b1;
        const int8_t *end = pa + kb;
        do {
            TT_DSP_WX_STEP_INC(pa, pb, pw);
        } while (pa != end);
        y[0] = TT_DSP_PAIR_OUT(a00, &rq0, mode);
        y[1] = TT_DSP_PAIR_OUT(a01, &rq1, mode);
        y[y_stride] = TT_DSP_PAIR_OUT(a10, &rq0, mode);
        y[y_stride + 1] = TT_DSP_PAIR_OUT(a11, &rq1, mode);
        x += 2 * x_stride;
        y += 2 * y_stride;
    }
    if ((rows & 1) != 0) {
        uint32_t a00 = cp->b0, a01 = cp->b1;
        tt_dsp_pair_row_sums(x, wx, k4, &a00, &a01);
        y[0] = tt_dsp_rq_s8(a00, &cp->rq[0], zp, lo_z, hi_z);
        y[1] = tt_dsp_rq_s8(a01, &cp->rq[1], zp, lo_z, hi_z);
    }
}

static TT_DSP_NOINLINE void tt_dsp_pair_rows_full(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                  const uint32_t *wx, const tt_dsp_pair *cp, int8_t *y,
                                                  size_t y_stride) {
    tt_dsp_pair_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, TT_DSP_RQ_FULL);
}

static TT_DSP_NOINLINE void tt_dsp_pair_rows_fast(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                  const uint32_t *wx, const tt_dsp_pair *cp, int8_t *y,
                                                  size_t y_stride) {
    tt_dsp_pair_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, TT_DSP_RQ_FAST);
}

static TT_DSP_NOINLINE void tt_dsp_pair_rows_relu(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                  const uint32_t *wx, const tt_dsp_pair *cp, int8_t *y,
                                                  size_t y_stride) {
    tt_dsp_pair_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, TT_DSP_RQ_RELU);
}

static TT_DSP_NOINLINE void tt_dsp_pair_rows_any(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                 const uint32_t *wx, const tt_dsp_pair *cp, int8_t *y,
                                                 size_t y_stride) {
    tt_dsp_pair_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, TT_DSP_RQ_ANY);
}

/* The SMMLAR pair path (its functions at the end of this file): a channel pair's start values
 * and requantization constants. Field offsets are fixed (the inline assembly reads q0 .. r1 at
 * bytes 8 .. 28). */
typedef struct tt_dsp_pair_sm {
    uint32_t b0, b1;     /* start values: bias + off * weight sum (modulo 2^32) */
    int32_t q0, kc0, r0; /* channel 0: q, 2^(r-1) + zp 2^r, r */
    int32_t q1, kc1, r1; /* channel 1 */
} tt_dsp_pair_sm;
static int tt_dsp_pair_sm_make(tt_dsp_pair_sm *cp, const tt_dsp_gemm *g, const int32_t *bias, int32_t o,
                               const uint32_t s[2]);
static TT_DSP_NOINLINE void tt_dsp_pair_sm_rows_relu(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                     const uint32_t *wx, const tt_dsp_pair_sm *cp, int8_t *y,
                                                     size_t y_stride);
static TT_DSP_NOINLINE void tt_dsp_pair_sm_rows_full(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                     const uint32_t *wx, const tt_dsp_pair_sm *cp, int8_t *y,
                                                     size_t y_stride);

/*
 * tt_dsp_gemm_wx_s8's main path (k a multiple of 4, 4 <= k <= TT_DSP_WX_MAX_K, rows > 0):
 * each channel pair's weights are sign-extended once into int16 pairs on the stack (their
 * sums on the way), then all rows, two at a time, against them (two 4-byte x loads, four
 * SXTB16, two LDRD-able weight pairs and eight SMLAD per 16 products); other k:
 * tt_dsp_gemm_rq_s8.
 */
static TT_DSP_NOINLINE void tt_dsp_gemm_wx_body(const tt_dsp_gemm *g, const int8_t *x, size_t x_stride,
                                                 const int8_t *w, const int32_t *bias, int8_t *y, size_t y_stride) {
    const int32_t k = g->k;
    const int32_t k4 = k >> 2;
    const int full = g->lo_z + g->zp == -128 && g->hi_z + g->zp == 127;
    uint32_t wx[TT_DSP_WX_MAX_K];
    int32_t o = 0;
    for (; o + 2 <= g->cols; o += 2) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        uint32_t s[2];
        tt_dsp_extend_pair(w0, w0 + k, k4, wx, s);
        if (full) {
            tt_dsp_pair_sm sm;
            if (tt_dsp_pair_sm_make(&sm, g, bias, o, s)) {
                if (g->zp == -128) {
                    tt_dsp_pair_sm_rows_relu(x, x_stride, g->rows, k4, wx, &sm, y + o, y_stride);
                } else {
                    tt_dsp_pair_sm_rows_full(x, x_stride, g->rows, k4, wx, &sm, y + o, y_stride);
                }
                continue;
            }
        }
        tt_dsp_pair cp;
        cp.b0 = (bias != NULL ? (uint32_t)bias[o] : 0u) + (uint32_t)g->off * s[0];
        cp.b1 = (bias != NULL ? (uint32_t)bias[o + 1] : 0u) + (uint32_t)g->off * s[1];
        cp.rq[0] = tt_dsp_rq_make(g->mult[o], g->shift[o]);
        cp.rq[1] = tt_dsp_rq_make(g->mult[o + 1], g->shift[o + 1]);
        cp.zp = g->zp;
        cp.lo_z = g->lo_z;
        cp.hi_z = g->hi_z;
        if (cp.rq[0].fast && cp.rq[1].fast && full && g->zp == -128) {
            tt_dsp_pair_rows_relu(x, x_stride, g->rows, k4, wx, &cp, y + o, y_stride);
        } else if (cp.rq[0].fast && cp.rq[1].fast && full) {
            tt_dsp_pair_rows_full(x, x_stride, g->rows, k4, wx, &cp, y + o, y_stride);
        } else if (cp.rq[0].fast && cp.rq[1].fast) {
            tt_dsp_pair_rows_fast(x, x_stride, g->rows, k4, wx, &cp, y + o, y_stride);
        } else {
            tt_dsp_pair_rows_any(x, x_stride, g->rows, k4, wx, &cp, y + o, y_stride);
        }
    }
    if (o < g->cols) {
        const int8_t *w0 = w + (size_t)o * (size_t)k;
        const uint32_t b0 = tt_dsp_channel_base(g, w0, bias, o);
        const tt_dsp_rq rq = tt_dsp_rq_make(g->mult[o], g->shift[o]);
        for (int32_t r = 0; r < g->rows; ++r) {
            const uint32_t acc = b0 + tt_dsp_dot_1x1(x + (size_t)r * x_stride, w0, k);
            y[(size_t)r * y_stride + (size_t)o] = tt_dsp_rq_s8(acc, &rq, g->zp, g->lo_z, g->hi_z);
        }
    }
}

/* ------------------------------------------------ k = 8: channels inside, one rounding multiply */

/* SMMLAR: the high word of a * 2^32 + x * y + 2^31 (modulo 2^64), i.e. floor((a 2^32 + x y +
 * 2^31) / 2^32) when that value fits an int64. */
static inline int32_t tt_smmlar(int32_t x, int32_t y, int32_t a) {
#if TT_DSP_NATIVE
    int32_t r;
    __asm__("smmlar %0, %1, %2, %3" : "=r"(r) : "r"(x), "r"(y), "r"(a));
    return r;
#else
    const uint64_t t = ((uint64_t)(uint32_t)a << 32) + (uint64_t)((int64_t)x * (int64_t)y) + ((uint64_t)1 << 31);
    return tt_wrap32((int64_t)(t >> 32));
#endif
}

/* Both int16 halves of a packed pair doubled (|half| <= 128: the doubled halves fit int16;
 * the low half's bit 15 shifted into bit 16 is cleared). */
static inline uint32_t tt_dsp_dbl16(uint32_t v) { return (v << 1) & 0xFFFEFFFFu; }

/*
 * Requantization as one SMMLAR and one shift, for a fast channel (q > 2^30, shift = -r with
 * 1 <= r <= 23) whose accumulator is known to satisfy |acc| < 2^30. With X = 2 acc (exact):
 *   tt_mbqm(acc, q, -r) = floor((acc q + 2^30 + 2^(30 + r) - [acc < 0] 2^31) / 2^(31 + r))   (tt_dsp_rq)
 *                       = floor((X q + 2^31 + (2^(r-1) - [X < 0]) 2^32) / 2^(32 + r))
 *                       = floor(smmlar(X, q, 2^(r-1) - [X < 0]) / 2^r)      (nested floors merge)
 * and adding the output zero point zp inside, zp 2^r 2^32 (|zp 2^r| <= 2^30):
 *   tt_mbqm(acc, q, -r) + zp = asr(smmlar(X, q, kc + (X >> 31)), r), kc = 2^(r-1) + zp 2^r
 * (X >> 31 arithmetic: -1 or 0). Every value fits an int64 (|X q| < 2^62, |kc| < 2^31).
 * When act_min >= zp (a ReLU-like lower bound) the sign term can be left out: for acc < 0 both
 * values are <= zp <= act_min (acc q + 2^30 < 0 makes the floor without the term <= 0, and the
 * term only lowers it), so both clamp to act_min; for acc >= 0 the term is 0.
 */
typedef struct {
    uint32_t b;    /* 2 (bias + off * sum w), modulo 2^32 */
    uint32_t w[4]; /* the channel's 8 weights as doubled int16 pairs: bytes 0/2, 1/3, 4/6, 5/7 */
    int32_t q, kc, r;
} tt_dsp_k8_ch;

#define TT_DSP_K8_CHUNK 16

/* tt_dsp_k8_eligible: every channel fast with 1 <= r <= 23 and |bias| <= 2^29, so that
 * |acc| <= 2^29 + 8 * 128 * 255 < 2^30 (each tap |w (x + off)| <= 128 * 255; no wrap). */
static inline int tt_dsp_k8_eligible(const tt_dsp_gemm *g, const int32_t *bias) {
    for (int32_t o = 0; o < g->cols; ++o) {
        if (g->mult[o] <= 0x40000000 || g->shift[o] < -23 || g->shift[o] > -1 ||
            (bias != NULL && (bias[o] > (1 << 29) || bias[o] < -(1 << 29)))) {
            return 0;
        }
    }
    return 1;
}

/* Arithmetic shift right by 0 <= e <= 31 (ASR on ARM; elsewhere tt_asr32). */
#if TT_DSP_NATIVE
static inline int32_t tt_dsp_asr(int32_t x, int32_t e) {
    int32_t r;
    __asm__("asr %0, %1, %2" : "=r"(r) : "r"(x), "r"(e));
    return r;
}
#else
static inline int32_t tt_dsp_asr(int32_t x, int32_t e) { return tt_asr32(x, (int)e); }
#endif

/* One output of channel record c for the extended row (xae, xao, xbe, xbo), before clamping:
 * tt_mbqm(acc, q, -r) + zp, with the sign term (sign = 1) or without. */
static inline int32_t tt_dsp_k8_out(uint32_t xae, uint32_t xao, uint32_t xbe, uint32_t xbo, const tt_dsp_k8_ch *c,
                                    int sign) {
    uint32_t acc = tt_smlad(xae, c->w[0], c->b);
    acc = tt_smlad(xao, c->w[1], acc);
    acc = tt_smlad(xbe, c->w[2], acc);
    acc = tt_smlad(xbo, c->w[3], acc);
    const int32_t X = tt_wrap32((int64_t)acc);
    return tt_dsp_asr(tt_smmlar(X, c->q, sign ? c->kc + tt_dsp_asr(X, 31) : c->kc), c->r);
}

/* The n channel records [ch, ch_end) of one row into yp[0 .. n - 1]; mode 0: act_min >= zp and
 * full range (no sign term, SSAT), 1: full range (SSAT), 2: [act_min, act_max]. */
static TT_DSP_ALWAYS_INLINE void tt_dsp_k8_row(uint32_t xae, uint32_t xao, uint32_t xbe, uint32_t xbo,
                                               const tt_dsp_k8_ch *c, const tt_dsp_k8_ch *ch_end, int8_t *yp,
                                               int mode, int32_t act_min, int32_t act_max) {
#if TT_DSP_NATIVE
    if (mode != 2) {
        uint32_t acc, wa, wb, wc;
        if (mode == 0) {
            __asm__ volatile("1:\n\t"
                             "ldrd %[acc], %[wa], [%[c]]\n\t"
                             "ldrd %[wb], %[wc], [%[c], #8]\n\t"
                             "smlad %[acc], %[xae], %[wa], %[acc]\n\t"
                             "ldr %[wa], [%[c], #16]\n\t"
                             "smlad %[acc], %[xao], %[wb], %[acc]\n\t"
                             "smlad %[acc], %[xbe], %[wc], %[acc]\n\t"
                             "smlad %[acc], %[xbo], %[wa], %[acc]\n\t"
                             "ldrd %[wa], %[wb], [%[c], #20]\n\t"
                             "ldr %[wc], [%[c], #28]\n\t"
                             "adds %[c], %[c], #32\n\t"
                             "smmlar %[acc], %[acc], %[wa], %[wb]\n\t"
                             "asr %[acc], %[acc], %[wc]\n\t"
                             "ssat %[acc], #8, %[acc]\n\t"
                             "strb %[acc], [%[yp]], #1\n\t"
                             "cmp %[c], %[end]\n\t"
                             "bne 1b"
                             : [acc] "=&r"(acc), [wa] "=&r"(wa), [wb] "=&r"(wb), [wc] "=&r"(wc), [c] "+r"(c),
                               [yp] "+r"(yp)
                             : [xae] "r"(xae), [xao] "r"(xao), [xbe] "r"(xbe), [xbo] "r"(xbo), [end] "r"(ch_end)
                             : "cc", "memory");
        } else {
            __asm__ volatile("1:\n\t"
                             "ldrd %[acc], %[wa], [%[c]]\n\t"
                             "ldrd %[wb], %[wc], [%[c], #8]\n\t"
                             "smlad %[acc], %[xae], %[wa], %[acc]\n\t"
                             "ldr %[wa], [%[c], #16]\n\t"
                             "smlad %[acc], %[xao], %[wb], %[acc]\n\t"
                             "smlad %[acc], %[xbe], %[wc], %[acc]\n\t"
                             "smlad %[acc], %[xbo], %[wa], %[acc]\n\t"
                             "ldrd %[wa], %[wb], [%[c], #20]\n\t"
                             "ldr %[wc], [%[c], #28]\n\t"
                             "adds %[c], %[c], #32\n\t"
                             "add %[wb], %[wb], %[acc], asr #31\n\t"
                             "smmlar %[acc], %[acc], %[wa], %[wb]\n\t"
                             "asr %[acc], %[acc], %[wc]\n\t"
                             "ssat %[acc], #8, %[acc]\n\t"
                             "strb %[acc], [%[yp]], #1\n\t"
                             "cmp %[c], %[end]\n\t"
                             "bne 1b"
                             : [acc] "=&r"(acc), [wa] "=&r"(wa), [wb] "=&r"(wb), [wc] "=&r"(wc), [c] "+r"(c),
                               [yp] "+r"(yp)
                             : [xae] "r"(xae), [xao] "r"(xao), [xbe] "r"(xbe), [xbo] "r"(xbo), [end] "r"(ch_end)
                             : "cc", "memory");
        }
        return;
    }
#endif
    for (; c != ch_end; ++c) {
        const int32_t v = tt_dsp_k8_out(xae, xao, xbe, xbo, c, mode != 0);
        *yp++ = (int8_t)(mode == 2 ? tt_clamp32(v, act_min, act_max) : tt_ssat8(v));
    }
}

/* Rows of one chunk of n >= 1 channels (records ch) into y + r * y_stride (mode: tt_dsp_k8_row). */
static TT_DSP_ALWAYS_INLINE void tt_dsp_k8_rows(const int8_t *x, size_t x_stride, int32_t rows, const tt_dsp_k8_ch *ch,
                                                int32_t n, int8_t *y, size_t y_stride, int mode, int32_t act_min,
                                                int32_t act_max) {
    const tt_dsp_k8_ch *const ch_end = ch + n;
    for (int32_t r = 0; r < rows; ++r) {
        const uint32_t xa = tt_ld32(x), xb = tt_ld32(x + 4);
        tt_dsp_k8_row(tt_sxtb16(xa), tt_sxtb16_ror8(xa), tt_sxtb16(xb), tt_sxtb16_ror8(xb), ch, ch_end, y, mode,
                      act_min, act_max);
        x += x_stride;
        y += y_stride;
    }
}

static TT_DSP_NOINLINE void tt_dsp_k8_rows_relu(const int8_t *x, size_t x_stride, int32_t rows, const tt_dsp_k8_ch *ch,
                                                int32_t n, int8_t *y, size_t y_stride) {
    tt_dsp_k8_rows(x, x_stride, rows, ch, n, y, y_stride, 0, -128, 127);
}

static TT_DSP_NOINLINE void tt_dsp_k8_rows_full(const int8_t *x, size_t x_stride, int32_t rows, const tt_dsp_k8_ch *ch,
                                                int32_t n, int8_t *y, size_t y_stride) {
    tt_dsp_k8_rows(x, x_stride, rows, ch, n, y, y_stride, 1, -128, 127);
}

static TT_DSP_NOINLINE void tt_dsp_k8_rows_any(const int8_t *x, size_t x_stride, int32_t rows, const tt_dsp_k8_ch *ch,
                                               int32_t n, int8_t *y, size_t y_stride, int32_t act_min,
                                               int32_t act_max) {
    tt_dsp_k8_rows(x, x_stride, rows, ch, n, y, y_stride, 2, act_min, act_max);
}

/* tt_dsp_gemm_s8 for k = 8 and tt_dsp_k8_eligible channels: records of TT_DSP_K8_CHUNK
 * channels on the stack, then every row against them (x loaded and extended once per row). */
static TT_DSP_NOINLINE void tt_dsp_gemm_k8(const tt_dsp_gemm *g, const int8_t *x, size_t x_stride, const int8_t *w,
                                           const int32_t *bias, int8_t *y, size_t y_stride) {
    const uint32_t ones = 0x00010001u;
    const int32_t zp = g->zp;
    const int32_t act_min = g->lo_z + zp, act_max = g->hi_z + zp;
    const int full = act_min == -128 && act_max == 127;
    tt_dsp_k8_ch ch[TT_DSP_K8_CHUNK];
    for (int32_t o0 = 0; o0 < g->cols; o0 += TT_DSP_K8_CHUNK) {
        const int32_t n = g->cols - o0 < TT_DSP_K8_CHUNK ? g->cols - o0 : TT_DSP_K8_CHUNK;
        for (int32_t i = 0; i < n; ++i) {
            const int32_t o = o0 + i;
            const uint32_t a = tt_ld32(w + 8 * (size_t)o), b = tt_ld32(w + 8 * (size_t)o + 4);
            tt_dsp_k8_ch *c = &ch[i];
            c->w[0] = tt_dsp_dbl16(tt_sxtb16(a));
            c->w[1] = tt_dsp_dbl16(tt_sxtb16_ror8(a));
            c->w[2] = tt_dsp_dbl16(tt_sxtb16(b));
            c->w[3] = tt_dsp_dbl16(tt_sxtb16_ror8(b));
            const uint32_t s2 = tt_smlad(c->w[0], ones, tt_smlad(c->w[1], ones, tt_smlad(c->w[2], ones,
                                                                 tt_smlad(c->w[3], ones, 0u)))); /* 2 sum w */
            c->b = 2u * (bias != NULL ? (uint32_t)bias[o] : 0u) + (uint32_t)g->off * s2;
            const int32_t r = -g->shift[o];
            c->q = g->mult[o];
            c->r = r;
            c->kc = ((int32_t)1 << (r - 1)) + zp * ((int32_t)1 << r);
        }
        if (full && zp == -128) {
            tt_dsp_k8_rows_relu(x, x_stride, g->rows, ch, n, y + o0, y_stride);
        } else if (full) {
            tt_dsp_k8_rows_full(x, x_stride, g->rows, ch, n, y + o0, y_stride);
        } else {
            tt_dsp_k8_rows_any(x, x_stride, g->rows, ch, n, y + o0, y_stride, act_min, act_max);
        }
    }
}

/*
 * tt_dsp_gemm_s8 (same arguments, same bytes): for k a multiple of 4 up to TT_DSP_WX_MAX_K
 * tt_dsp_gemm_wx_body (its 4 k-byte weight buffer only on the stack while it runs), other k:
 * tt_dsp_gemm_rq_s8.
 */
static inline void tt_dsp_gemm_wx_s8(const tt_dsp_gemm *g, const int8_t *x, size_t x_stride, const int8_t *w,
                                     const int32_t *bias, int8_t *y, size_t y_stride) {
    const int32_t k = g->k;
    if ((k & 3) != 0 || k > TT_DSP_WX_MAX_K || k == 0 || g->rows <= 0) {
        tt_dsp_gemm_rq_s8(g, x, x_stride, w, bias, y, y_stride);
        return;
    }
    if (k == 8 && tt_dsp_k8_eligible(g, bias)) {
        tt_dsp_gemm_k8(g, x, x_stride, w, bias, y, y_stride);
        return;
    }
    tt_dsp_gemm_wx_body(g, x, x_stride, w, bias, y, y_stride);
}

/* ------------------------------------------------ added for the 3x3 depthwise channel groups */

/* SADD16: the two int16 halves of x and y added, each modulo 2^16 (lanes independent). */
#if TT_DSP_NATIVE
static inline uint32_t tt_sadd16(uint32_t x, uint32_t y) { return (uint32_t)__sadd16((int16x2_t)x, (int16x2_t)y); }
#else
static inline uint32_t tt_sadd16(uint32_t x, uint32_t y) {
    return ((x + y) & 0xFFFFu) | ((((x >> 16) + (y >> 16)) & 0xFFFFu) << 16);
}
#endif

/* ------------------------------------------------ the pair GEMM with one SMMLAR per output */

/*
 * A channel pair of tt_dsp_gemm_wx_body whose channels allow the SMMLAR requantization of
 * tt_dsp_k8_ch (q > 2^30, shift -r with 1 <= r <= 23) and whose accumulators stay below 2^30 in
 * magnitude (|bias| <= 2^29 and k <= TT_DSP_SM_MAX_K: |acc| <= 2^29 + k * 128 * 255 < 2^30; the
 * wrapped start value plus the wrapped products is the true sum modulo 2^32, hence the true sum),
 * full-range output (act_min = -128, act_max = 127): per output X = acc + acc (exact), then
 * asr(smmlar(X, q, kc + [sign]), r) = tt_mbqm(acc, q, -r) + zp (kc = 2^(r-1) + zp 2^r, proof at
 * tt_dsp_k8_ch) and SSAT #8; the sign term (X >> 31) is left out when zp = -128 (tt_dsp_k8_ch).
 */
#define TT_DSP_SM_MAX_K 16384

static int tt_dsp_pair_sm_make(tt_dsp_pair_sm *cp, const tt_dsp_gemm *g, const int32_t *bias, int32_t o,
                               const uint32_t s[2]) {
    if (g->k > TT_DSP_SM_MAX_K) {
        return 0;
    }
    int32_t c[6];
    uint32_t b[2];
    for (int32_t j = 0; j < 2; ++j) {
        const int32_t q = g->mult[o + j], sh = g->shift[o + j];
        const int32_t bj = bias != NULL ? bias[o + j] : 0;
        if (q <= 0x40000000 || sh < -23 || sh > -1 || bj > (1 << 29) || bj < -(1 << 29)) {
            return 0;
        }
        const int32_t r = -sh;
        b[j] = (uint32_t)bj + (uint32_t)g->off * s[j];
        c[3 * j] = q;
        c[3 * j + 1] = ((int32_t)1 << (r - 1)) + g->zp * ((int32_t)1 << r);
        c[3 * j + 2] = r;
    }
    cp->b0 = b[0];
    cp->b1 = b[1];
    cp->q0 = c[0];
    cp->kc0 = c[1];
    cp->r0 = c[2];
    cp->q1 = c[3];
    cp->kc1 = c[4];
    cp->r1 = c[5];
    return 1;
}

/* One output of a tt_dsp_pair_sm channel (q, kc, r) before SSAT. */
static inline int32_t tt_dsp_sm_out(uint32_t acc, int32_t q, int32_t kc, int32_t r, int sign) {
    const int32_t x = tt_wrap32((int64_t)(uint32_t)(acc + acc));
    return tt_dsp_asr(tt_smmlar(x, q, kc + (sign ? tt_dsp_asr(x, 31) : 0)), r);
}

#if TT_DSP_NATIVE
/* The 2 x 2 block's four outputs: channel 0 (a00 -> y0[0], a10 -> y1[0]), channel 1 (a01 -> y0[1],
 * a11 -> y1[1]); constants read from the record (offsets above). */
#define TT_DSP_SM_OUT(a, yreg, yofs, sign, kreg)                                                                       \
    "add %[" a "], %[" a "], %[" a "]\n\t" sign                                                                        \
    "smmlar %[" a "], %[" a "], %[q], %[" kreg "]\n\t"                                                                 \
    "asr %[" a "], %[" a "], %[r]\n\t"                                                                                 \
    "ssat %[" a "], #8, %[" a "]\n\t"                                                                                  \
    "strb %[" a "], [%[" yreg "], #" yofs "]\n\t"
#define TT_DSP_SM_SIGN(a) "add %[t], %[k], %[" a "], asr #31\n\t"
#define TT_DSP_SM_NOSIGN(a) ""
/* KREG: "t" (k plus the sign term, SIGN adds it) or "k" (no sign term). */
#define TT_DSP_SM_STORE(SIGN, KREG)                                                                                    \
    do {                                                                                                               \
        uint32_t q_, k_, t_, r_;                                                                                       \
        __asm__ volatile("ldrd %[q], %[k], [%[cp], #8]\n\t"                                                            \
                         "ldr %[r], [%[cp], #16]\n\t" TT_DSP_SM_OUT("a00", "y0", "0", SIGN("a00"), KREG)              \
                             TT_DSP_SM_OUT("a10", "y1", "0", SIGN("a10"), KREG)                                        \
                         "ldrd %[q], %[k], [%[cp], #20]\n\t"                                                           \
                         "ldr %[r], [%[cp], #28]\n\t" TT_DSP_SM_OUT("a01", "y0", "1", SIGN("a01"), KREG)              \
                             TT_DSP_SM_OUT("a11", "y1", "1", SIGN("a11"), KREG)                                        \
                         : [a00] "+&r"(a00), [a01] "+&r"(a01), [a10] "+&r"(a10), [a11] "+&r"(a11), [q] "=&r"(q_),      \
                           [k] "=&r"(k_), [t] "=&r"(t_), [r] "=&r"(r_)                                                 \
                         : [cp] "r"(cp), [y0] "r"(y), [y1] "r"(y + y_stride)                                           \
                         : "memory");                                                                                  \
        (void)t_;                                                                                                      \
    } while (0)
#endif

/* tt_dsp_pair_rows for a tt_dsp_pair_sm pair (sign: the full-range variant, else ReLU-like). */
static TT_DSP_ALWAYS_INLINE void tt_dsp_pair_sm_rows(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                     const uint32_t *wx, const tt_dsp_pair_sm *cp, int8_t *y,
                                                     size_t y_stride, int sign) {
    const size_t kb = 4 * (size_t)k4;
    const int8_t *x_end = x + (size_t)(rows & ~1) * x_stride;
    while (x != x_end) {
        const int8_t *pa = x, *pb = x + x_stride;
        const uint32_t *pw = wx;
        uint32_t a00 = cp->b0, a01 = cp->b1, a10 = cp->b0, a11 = cp->b1;
        const int8_t *end = pa + kb;
        do {
            TT_DSP_WX_STEP_INC(pa, pb, pw);
        } while (pa != end);
#if TT_DSP_NATIVE
        if (sign) {
            TT_DSP_SM_STORE(TT_DSP_SM_SIGN, "t");
        } else {
            TT_DSP_SM_STORE(TT_DSP_SM_NOSIGN, "k");
        }
#else
        y[0] = (int8_t)tt_ssat8(tt_dsp_sm_out(a00, cp->q0, cp->kc0, cp->r0, sign));
        y[y_stride] = (int8_t)tt_ssat8(tt_dsp_sm_out(a10, cp->q0, cp->kc0, cp->r0, sign));
        y[1] = (int8_t)tt_ssat8(tt_dsp_sm_out(a01, cp->q1, cp->kc1, cp->r1, sign));
        y[y_stride + 1] = (int8_t)tt_ssat8(tt_dsp_sm_out(a11, cp->q1, cp->kc1, cp->r1, sign));
#endif
        x += 2 * x_stride;
        y += 2 * y_stride;
    }
    if ((rows & 1) != 0) {
        uint32_t a00 = cp->b0, a01 = cp->b1;
        tt_dsp_pair_row_sums(x, wx, k4, &a00, &a01);
        y[0] = (int8_t)tt_ssat8(tt_dsp_sm_out(a00, cp->q0, cp->kc0, cp->r0, sign));
        y[1] = (int8_t)tt_ssat8(tt_dsp_sm_out(a01, cp->q1, cp->kc1, cp->r1, sign));
    }
}

static TT_DSP_NOINLINE void tt_dsp_pair_sm_rows_relu(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                     const uint32_t *wx, const tt_dsp_pair_sm *cp, int8_t *y,
                                                     size_t y_stride) {
    tt_dsp_pair_sm_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, 0);
}

static TT_DSP_NOINLINE void tt_dsp_pair_sm_rows_full(const int8_t *x, size_t x_stride, int32_t rows, int32_t k4,
                                                     const uint32_t *wx, const tt_dsp_pair_sm *cp, int8_t *y,
                                                     size_t y_stride) {
    tt_dsp_pair_sm_rows(x, x_stride, rows, k4, wx, cp, y, y_stride, 1);
}

#endif /* TT_DSP_H */
