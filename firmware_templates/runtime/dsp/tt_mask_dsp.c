/*
 * Clamp masks, optimized (replaces src/tt_mask.c; the same functions, the same bytes).
 *   - tt_apply_mask_s16 (twin of tinytrain.train.kernels.mask.apply_mask): per mask byte
 *     (8 gradients), 0x00: eight zeros stored; otherwise each nibble selects one of 16
 *     two-word masks (0xFFFF per kept int16), ANDed with the gradients' two words.
 *   - tt_clamp_mask_s8_at / tt_clamp_mask_s8 (twin of tinytrain.train.kernels.mask.clamp_mask)
 *     for a chunk starting at a byte boundary: 4 values per step, act_min < v < act_max as
 *     v - (act_min + 1) >= 0 and (act_max - 1) - v >= 0 per byte (SSUB8 + SEL on the DSP
 *     extension: their GE flags are the signs of the exact differences), the four 0x00 / 0xFF
 *     bytes packed into a nibble with one multiply: bit i of the byte-wise 0/1 word x (bits
 *     0, 8, 16, 24) lands at bit 24 + i of x * 0x01020408 (byte i times 2^(24 - 7 i)); the
 *     other products fall below bit 20 (i < j) or above bit 31 (i > j), so bits 24..27 are
 *     exactly the four flags.
 *   - chunks starting inside a byte, the last n % 8 values, empty ranges: the reference code
 *     of src/tt_mask.c, included below.
 */
#include "tt_mask.h"

#include "tt_dsp.h"

#if defined(__GNUC__)
#define TT_MASK_UNUSED __attribute__((unused))
#else
#define TT_MASK_UNUSED
#endif

/* the reference entry points become static fallbacks (ref_*) */
static tt_status ref_clamp_mask_s8_at(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask,
                                      int32_t first_bit);
static tt_status ref_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max,
                                   uint8_t *mask) TT_MASK_UNUSED;
static tt_status ref_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out);
#define tt_clamp_mask_s8_at ref_clamp_mask_s8_at
#define tt_clamp_mask_s8 ref_clamp_mask_s8
#define tt_apply_mask_s16 ref_apply_mask_s16
#include "../src/tt_mask.c"
#undef tt_clamp_mask_s8_at
#undef tt_clamp_mask_s8
#undef tt_apply_mask_s16

/* Two-word AND masks of a nibble: word 0 keeps int16 values 0 / 1, word 1 values 2 / 3. */
#define TT_MASK_W(b0, b1) (((b0) ? 0x0000FFFFu : 0u) | ((b1) ? 0xFFFF0000u : 0u))
#define TT_MASK_N(n) {TT_MASK_W((n) & 1, (n) & 2), TT_MASK_W((n) & 4, (n) & 8)}
static const uint32_t nibble_masks[16][2] = {
    TT_MASK_N(0),  TT_MASK_N(1),  TT_MASK_N(2),  TT_MASK_N(3),  TT_MASK_N(4),  TT_MASK_N(5),
    TT_MASK_N(6),  TT_MASK_N(7),  TT_MASK_N(8),  TT_MASK_N(9),  TT_MASK_N(10), TT_MASK_N(11),
    TT_MASK_N(12), TT_MASK_N(13), TT_MASK_N(14), TT_MASK_N(15),
};

/* 4 int16 values (8 bytes) at src AND the nibble's masks into dst (any alignment). */
static inline void masked4(const int16_t *src, uint32_t nib, int16_t *dst) {
    uint32_t v[2];
    memcpy(v, src, sizeof v);
    v[0] &= nibble_masks[nib][0];
    v[1] &= nibble_masks[nib][1];
    memcpy(dst, v, sizeof v);
}

tt_status tt_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out) {
    if (n < 0 || (n > 0 && (g == NULL || mask == NULL || out == NULL))) {
        return TT_ERR_ARG;
    }
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint32_t b = mask[i >> 3];
        if (b == 0u) {
            memset(out + i, 0, 8 * sizeof(int16_t));
            continue;
        }
        masked4(g + i, b & 15u, out + i);
        masked4(g + i + 4, b >> 4, out + i + 4);
    }
    /* the last n % 8 values (i is a multiple of 8: whole mask bytes) */
    return ref_apply_mask_s16(g + i, mask + (i >> 3), n - i, out + i);
}

/* Byte i of the result: 1 when lo <= (int8) byte i of v <= hi, else 0 (lo, hi in int8 range;
 * lo_w, hi_w: lo, hi in every byte). */
static inline uint32_t in_range4(uint32_t v, uint32_t lo_w, uint32_t hi_w, int32_t lo, int32_t hi) {
#if TT_DSP_NATIVE
    uint32_t t, m;
    (void)lo;
    (void)hi;
    __asm__("ssub8 %[t], %[v], %[lo]\n\t"
            "sel %[m], %[ones], %[zero]\n\t"
            "ssub8 %[t], %[hi], %[v]\n\t"
            "sel %[m], %[m], %[zero]"
            : [t] "=&r"(t), [m] "=&r"(m)
            : [v] "r"(v), [lo] "r"(lo_w), [hi] "r"(hi_w), [ones] "r"(0x01010101u), [zero] "r"(0u)
            : "cc");
    return m;
#else
    (void)lo_w;
    (void)hi_w;
    uint32_t m = 0u;
    for (int k = 0; k < 4; ++k) {
        const int32_t b = (int32_t)(int8_t)(uint8_t)((v >> (8 * k)) & 0xFFu);
        m |= (b >= lo && b <= hi ? 1u : 0u) << (8 * k);
    }
    return m;
#endif
}

/* The nibble of a byte-wise 0/1 word (see the top of the file). */
static inline uint32_t pack4(uint32_t m) { return (m * 0x01020408u) >> 24; }

tt_status tt_clamp_mask_s8_at(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask,
                              int32_t first_bit) {
    if (!clamp_args_ok(n, act_min, act_max) || first_bit < 0 || (n > 0 && (y == NULL || mask == NULL))) {
        return TT_ERR_ARG;
    }
    if ((first_bit & 7) != 0 || act_min == TT_INT8_MAX || act_max == TT_INT8_MIN) {
        return ref_clamp_mask_s8_at(y, n, act_min, act_max, mask, first_bit);
    }
    const int32_t lo = act_min + 1, hi = act_max - 1; /* both in [-128, 127] here */
    const uint32_t lo_w = ((uint32_t)lo & 0xFFu) * 0x01010101u, hi_w = ((uint32_t)hi & 0xFFu) * 0x01010101u;
    uint8_t *mb = mask + (first_bit >> 3);
    int32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const uint32_t a = in_range4(tt_ld32(y + i), lo_w, hi_w, lo, hi);
        const uint32_t b = in_range4(tt_ld32(y + i + 4), lo_w, hi_w, lo, hi);
        *mb++ = (uint8_t)(pack4(a) | (pack4(b) << 4));
    }
    return ref_clamp_mask_s8_at(y + i, n - i, act_min, act_max, mask, first_bit + i);
}

tt_status tt_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask) {
    return tt_clamp_mask_s8_at(y, n, act_min, act_max, mask, 0);
}
