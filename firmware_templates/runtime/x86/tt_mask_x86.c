/*
 * Clamp masks on x86-64 (AVX2), host backend: replaces src/tt_mask.c (see x86/README.md);
 * the same functions, the same bytes. tt_apply_mask_s16: 16 gradients per step, the two
 * mask bytes broadcast, each lane's bit tested (VPAND + VPCMPEQW) and the gradient kept or
 * zeroed; the last n % 16 values and the mask packing: the reference code, included.
 * Without AVX2 this file is exactly src/tt_mask.c.
 * Twin of tinytrain.train.kernels.mask.apply_mask.
 */
#include "tt_x86.h"

#if !TT_X86_AVX2

#include "../src/tt_mask.c"

#else

#include "tt_mask.h"

static tt_status ref_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out);
#define tt_apply_mask_s16 ref_apply_mask_s16
#include "../src/tt_mask.c"
#undef tt_apply_mask_s16

tt_status tt_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out) {
    if (n < 0 || (n > 0 && (g == NULL || mask == NULL || out == NULL))) {
        return TT_ERR_ARG;
    }
    const __m256i bits = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
                                           (int16_t)0x4000, (int16_t)0x8000);
    int32_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const uint16_t m = (uint16_t)((uint32_t)mask[i >> 3] | ((uint32_t)mask[(i >> 3) + 1] << 8));
        const __m256i sel = _mm256_cmpeq_epi16(_mm256_and_si256(_mm256_set1_epi16((int16_t)m), bits), bits);
        const __m256i v = _mm256_loadu_si256((const __m256i *)(const void *)(g + i));
        _mm256_storeu_si256((__m256i *)(void *)(out + i), _mm256_and_si256(v, sel));
    }
    /* the last n % 16 values (i is a multiple of 8: whole mask bytes) */
    return ref_apply_mask_s16(g + i, mask + (i >> 3), n - i, out + i);
}

#endif /* TT_X86_AVX2 */
