/*
 * tinytrain runtime: int8 PAD / PADV2 and RESHAPE forward (byte moves, TFLite Micro
 * semantics). No scratch memory.
 */
#ifndef TT_SHAPE_H
#define TT_SHAPE_H

#include "tt_common.h"

/*
 * PAD / PADV2 of a tensor of rank <= 4, seen as [d0][d1][d2][d3] (lower ranks get leading
 * 1s): out dims = in_dims + before + after, the new values are `value` (PAD: the output
 * zero point; PADV2: its constant).
 */
typedef struct {
    int32_t in_dims[4];
    int32_t before[4];  /* >= 0 */
    int32_t after[4];   /* >= 0 */
    int32_t value;      /* [-128, 127] */
} tt_pad_params;

/* out must not overlap in. */
tt_status tt_pad_s8(const tt_pad_params *p, const int8_t *in, int8_t *out);

/* RESHAPE (and SQUEEZE / EXPAND_DIMS): a copy of `size` bytes; nothing to do when the
 * generator aliases the output onto the input (out == in). Overlap is allowed. */
typedef struct {
    int32_t size;
} tt_reshape_params;

tt_status tt_reshape_s8(const tt_reshape_params *p, const int8_t *in, int8_t *out);

#endif /* TT_SHAPE_H */
