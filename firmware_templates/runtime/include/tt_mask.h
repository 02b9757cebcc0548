/*
 * 1-bit clamp masks (docs/numerics.md, "The clamp"); twins of
 * tinytrain/train/kernels/mask.py.
 *
 * The forward pass records, per element of an op's int8 output, whether the clamped
 * value lies strictly inside (act_min, act_max). Masks are packed 8 elements per byte,
 * little-endian bit order (element 8*j + b is bit b of byte j), row-major element order,
 * the last byte zero-padded: TT_MASK_NBYTES(n) bytes for n elements. The backward pass
 * zeroes the gradient mantissas whose bit is 0 (the exponent is unchanged).
 */
#ifndef TT_MASK_H
#define TT_MASK_H

#include "tt_common.h"

#define TT_MASK_NBYTES(n) (((n) + 7) / 8)

/*
 * Packs the mask of y[n] (numpy: mask.clamp_mask) into mask[TT_MASK_NBYTES(n)].
 * -128 <= act_min <= act_max <= 127.
 */
tt_status tt_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask);

/*
 * The same for a chunk of a larger tensor (e.g. one output row of a row-streamed
 * kernel): writes the bits first_bit .. first_bit + n - 1 of mask, keeps the bits below
 * first_bit in its first byte and clears the bits above the chunk in its last byte.
 * Chunks written in increasing order produce exactly tt_clamp_mask_s8's bytes.
 */
tt_status tt_clamp_mask_s8_at(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask,
                              int32_t first_bit);

/*
 * out[i] = bit i of mask ? g[i] : 0 for n elements (numpy: mask.apply_mask; the
 * exponent is unchanged). out may be g (in place).
 */
tt_status tt_apply_mask_s16(const int16_t *g, const uint8_t *mask, int32_t n, int16_t *out);

#endif /* TT_MASK_H */
