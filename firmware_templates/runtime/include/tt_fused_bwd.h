/*
 * Row-streamed fused backward of "CONV_2D E (1×1 expansion, or the stem) -> DEPTHWISE_CONV_2D D"
 * (twin of tinytrain/train/kernels/fused_bwd.py:run_fused_expand_dw_backward; its module
 * docstring is the definition). D's input gradient (= E's output gradient) never exists:
 * its int32 sums are recomputed one row at a time in up to three passes:
 *   1. max |acc_D| over all rows -> D's normalization shift r_D;
 *   2. per row: acc_D, normalized with r_D, masked with E's clamp mask (= E's masked output
 *      gradient row g_E): E's bias gradient and weight gradient accumulate (int64), and,
 *      when E's input gradient is needed, the max of its int32 sums;
 *   3. (E's input gradient only) per row: everything again, E's input-gradient row
 *      normalized with the global shift r_E, written out.
 * The bytes equal D's unfused backward followed by E's (tt_linear_bwd + tt_grad). D's own
 * bias / weight gradients read only D's masked output gradient and its saved channels: the
 * unfused kernels compute them. Run the updates after this kernel (it reads the old w_D and
 * w_E), D's before E's (the PRNG order of the simulator).
 *
 * Weights: w points to the whole tensor as compiled (flash: depthwise 1×kh×kw×C, E O×kh×kw×Cin);
 * when some channels train, their current values are the trained slice (SRAM) w_train in the
 * slice layout (depthwise kh×kw×n, conv O×kh×kw×n) at channel indices ch[0..n) of the last
 * axis: the kernel uses those instead of the flash values.
 *
 * Scratch (void *, 8-byte aligned), exactly tt_fused_ed_scratch_bytes(p) =
 * fused_bwd.py:fused_scratch_bytes bytes, in this order:
 *   int64 [C]            E's bias gradient               if e_bias
 *   int64 [C·kh·kw·n]    E's weight gradient (slice layout O×kh×kw×n)   if e_weight_n > 0
 *   int32 [W·C]          one row of D's input-gradient sums
 *   int32 [W·Cin]        one row of E's input-gradient sums   if e_input_grad
 * After the call, E's gradients are in the scratch (tt_fused_ed_bias_grad /
 * tt_fused_ed_weight_grad) for E's update (tt_update_bias_s32 / tt_update_weights_s8 with
 * the exponent *e_param).
 *
 * Arithmetic: int32 sums are accumulated modulo 2^32 (uint32) and read back as int32, which
 * is the numpy kernel's int64 sum wrapped to int32 (exact whenever the bit budget holds, as
 * it does for every int16 gradient); the weight and bias gradients are exact int64 sums.
 * Legal range: any int16 g_d, any int8 weights and saved inputs, exponents with
 * |e_d| + 64 < 2^31.
 */
#ifndef TT_FUSED_BWD_H
#define TT_FUSED_BWD_H

#include "tt_common.h"

/* A layer's weights: the compiled tensor plus the trained channels (n = 0: none). */
typedef struct {
    const int8_t *w;        /* the whole tensor (flash) */
    int32_t n;              /* trained channels of the last axis (0: none) */
    const uint16_t *ch;     /* [n] their indices */
    const int8_t *w_train;  /* the trained slice, layout of w[..., ch] */
} tt_fbwd_weights;

typedef struct {
    /* D (depthwise, multiplier 1): input H × W × C (= E's output), output d_out_h × d_out_w × C */
    int32_t height;
    int32_t width;
    int32_t channels;
    int32_t d_kh, d_kw, d_sh, d_sw;
    int32_t d_pad_top, d_pad_left; /* possibly a folded PAD's explicit padding */
    int32_t d_out_h, d_out_w;
    const int32_t *d_mu; /* [C] Q15 factors (LinearBwdParams.mu) */
    int32_t d_k;         /* LinearBwdParams.k */
    int32_t d_drop;      /* LinearBwdParams.drop, 0..14 */
    int32_t d_mask;      /* 1: D's output gradient passes D's clamp mask */
    /* E (CONV_2D): input e_in_h × e_in_w × e_cin, output H × W × C, kernel e_kh × e_kw */
    int32_t e_in_h, e_in_w, e_cin;
    int32_t e_kh, e_kw, e_sh, e_sw;
    int32_t e_pad_top, e_pad_left;
    const int32_t *e_mu; /* [C] */
    int32_t e_k;
    int32_t e_drop;
    int32_t e_in_zp;      /* E's input zero point (for the weight gradient) */
    int32_t e_mask;       /* 1: E's output gradient passes E's clamp mask */
    int32_t e_input_grad; /* 1: E's input gradient (needs a 1×1, stride-1, unpadded E) */
    int32_t e_bias;       /* 1: E's bias gradient */
    int32_t e_weight_n;   /* E's trained input channels (weight gradient), 0: none */
} tt_fused_ed_params;

/* The scratch size in bytes (fused_bwd.py:fused_scratch_bytes); 0 for NULL params. */
size_t tt_fused_ed_scratch_bytes(const tt_fused_ed_params *p);

/* E's bias gradient (int64 [C]) in the scratch, NULL when E's bias does not train. */
int64_t *tt_fused_ed_bias_grad(const tt_fused_ed_params *p, void *scratch);

/* E's weight gradient (int64 C×kh×kw×n) in the scratch, NULL when E's weights do not train. */
int64_t *tt_fused_ed_weight_grad(const tt_fused_ed_params *p, void *scratch);

/*
 * g_d, e_d     D's output gradient (int16 d_out_h × d_out_w × C) before D's clamp mask, and its exponent
 * mask_d       D's packed clamp mask (d_out_h·d_out_w·C bits; ignored unless p->d_mask)
 * mask_e       E's packed clamp mask (H·W·C bits; ignored unless p->e_mask)
 * w_d, w_e     D's and E's current weights (w_e may be NULL unless p->e_input_grad)
 * x_sub_e      E's saved input channels (int8 e_in_h × e_in_w × e_weight_n, raw values; NULL unless e_weight_n)
 * g_in, e_in   E's input gradient (int16 e_in_h × e_in_w × e_cin) and its exponent (unless e_input_grad: unused)
 * e_param      the exponent of E's masked output gradient (E's parameter-gradient exponent)
 * scratch      tt_fused_ed_scratch_bytes(p) bytes, 8-byte aligned
 * TT_ERR_ARG: a NULL pointer that is needed, or bad params (sizes, strides, drops, a
 * trained channel index out of range, an input gradient with a non-1×1 E).
 */
tt_status tt_fused_ed_bwd_s16(const tt_fused_ed_params *p, const int16_t *g_d, int32_t e_d, const uint8_t *mask_d,
                              const uint8_t *mask_e, const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e,
                              const int8_t *x_sub_e, int16_t *g_in, int32_t *e_in, int32_t *e_param, void *scratch);

#endif /* TT_FUSED_BWD_H */
