/*
 * tinytrain runtime: int8 ADD forward (TFLite Micro reference semantics, integer_ops AddElementwise).
 *
 * Per element, with a = in1 - in1_zp and b = in2 - in2_zp:
 *   s1 = tt_mbqm(a * 2^left_shift, in1_mult, in1_shift)
 *   s2 = tt_mbqm(b * 2^left_shift, in2_mult, in2_shift)
 *   out = clamp(tt_mbqm(s1 + s2, out_mult, out_shift) + out_zp, act_min, act_max)
 * TFLite uses left_shift = 20 and input multipliers below one (shifts <= 0), so
 * |a * 2^20| < 2^28, |s1|, |s2| < 2^28 and s1 + s2 never overflows int32.
 * Both inputs have the same shape (no broadcasting). No scratch memory.
 */
#ifndef TT_ELTWISE_H
#define TT_ELTWISE_H

#include "tt_common.h"

typedef struct {
    int32_t size;                  /* elements of each input and of the output */
    int32_t in1_zp, in2_zp;        /* [-128, 127] */
    int32_t left_shift;            /* [0, 22] (TFLite: 20) */
    int32_t in1_mult, in1_shift;   /* shift in [-31, 0] */
    int32_t in2_mult, in2_shift;   /* shift in [-31, 0] */
    int32_t out_mult, out_shift;   /* shift in [-31, 31] */
    int32_t out_zp;                /* [-128, 127] */
    int32_t act_min, act_max;      /* -128 <= act_min <= act_max <= 127 */
} tt_add_params;

/* out[i] = ADD(in1[i], in2[i]); out may alias in1 or in2 (element-wise, read before write). */
tt_status tt_add_s8(const tt_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);

#endif /* TT_ELTWISE_H */
