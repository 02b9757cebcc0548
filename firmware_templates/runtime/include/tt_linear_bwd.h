/*
 * Backward of the linear layers CONV_2D, DEPTHWISE_CONV_2D (multiplier 1) and
 * FULLY_CONNECTED (docs/numerics.md, "Linear layers"); twins of
 * tinytrain/train/kernels/linear_bwd.py.
 *
 * Layouts are TFLite's with a batch of 1: activations and gradients NHWC, weights OHWI
 * (conv), 1HWC (depthwise), [out][in] (fully connected). A fully connected layer is
 * described as a 1x1 convolution over `rows` positions: in_h = out_h = rows (the input
 * read as (rows, in) like TFLite does), in_w = out_w = 1, kh = kw = sh = sw = 1, no
 * padding; its [out][in] weights are then exactly OHWI.
 *
 * Input gradient (tt_linear_bwd_input_s16): g'[pos, o] = RoundingDivideByPOT(g_y[pos, o]
 * * mu[o], 15 + drop), acc[i] = sum w_q[o, i] * g' (int32: the compile-time bit budget
 * `drop` keeps every partial sum below 2^31 for |g_y| <= 2^14 and |w| <= 128),
 * (g_x, e_x) = normalize(acc, e_y + k + drop). Two passes over the input (the global
 * max |acc|, then recompute and write the int16 values): no int32 copy of the gradient.
 *
 * Partially trained weights: the current weights of a layer whose trained input channels
 * (depthwise: channels) live in RAM as the slice w[..., channels] while the full original
 * tensor stays in flash are passed as (w = flash tensor, w_sub = the slice): every
 * channel listed in p->channels reads w_sub, the others read w. w_sub = NULL means w
 * holds the current weights of every channel.
 *
 * Weight gradient (tt_linear_bwd_weight_row_s16): one "row" at a time, the layout the
 * update kernel consumes right away (memory contract of tinytrain/train/memory.py):
 *   conv / fully connected: row = output channel o in [0, out_c),
 *       grad[(ky*kw + kx)*n + j] = sum_pos g_y[pos, o] * (x[pos + tap, channels[j]] - in_zp)
 *       (kh*kw*n int64; fully connected: n values);
 *   depthwise: row = subset index j in [0, n), channel c = channels[j],
 *       grad[ky*kw + kx] = sum_pos g_y[pos, c] * (x[pos + tap, c] - in_zp)  (kh*kw int64).
 * Taps in the padding contribute 0. The row is the slice of numpy weight_grad's result
 * (layout w[..., channels]) at that output channel (depthwise: subset channel).
 * The input x is read from x_sub, the trained channels saved by the forward pass
 * (tt_linear_save_input_s8: x_sub[pos*n + j] = x[pos*in_c + channels[j]], int8, the zero
 * point not yet subtracted, as numpy select_input_channels saves it).
 *
 * Bias gradient (tt_linear_bwd_bias_s16): grad_b[o] = sum_pos g_y[pos, o] (int64[out_c]).
 *
 * The output gradient g_y is the masked one (tt_apply_mask_s16 first). Any int16 g_y is
 * legal: for |g_y| <= 2^14 (what normalize produces) the bit budget keeps every input-
 * gradient sum below 2^31; beyond it the sums wrap to int32 exactly as the numpy twin's.
 */
#ifndef TT_LINEAR_BWD_H
#define TT_LINEAR_BWD_H

#include "tt_common.h"

typedef enum {
    TT_LINEAR_CONV = 0,
    TT_LINEAR_DEPTHWISE = 1,
    TT_LINEAR_FC = 2
} tt_linear_kind;

/* Compile-time constants of one layer's backward (numpy LinearBwdParams + the trained channels). */
typedef struct {
    int32_t kind; /* tt_linear_kind */
    int32_t in_h, in_w, in_c;    /* fully connected: rows, 1, in */
    int32_t out_h, out_w, out_c; /* depthwise: out_c == in_c; fully connected: rows, 1, out */
    int32_t kh, kw, sh, sw;
    int32_t pad_top, pad_left, pad_bottom, pad_right;
    int32_t k;      /* exponent offset: ceil(log2 max s_w) */
    int32_t drop;   /* bit budget d, 0 .. 14 */
    int32_t in_zp;  /* input zero point, -128 .. 127 */
    const int32_t *mu;       /* [out_c] Q15 factors round(2^15 s_w[o] / 2^k), 0 .. 32768 */
    int32_t n_channels;      /* trained input channels (0: none) */
    const int32_t *channels; /* [n_channels] distinct, in [0, in_c) */
    const int32_t *slot;     /* [in_c]: j when channel i == channels[j], else -1 (NULL if n_channels == 0) */
} tt_linear_bwd_params;

/* Scratch bytes of tt_linear_bwd_input_s16: 4*in_c (conv: one pixel's int32 sums),
 * 0 (depthwise), 4*out_c (fully connected: one row's g'); -1 for a bad kind. */
int32_t tt_linear_bwd_input_scratch_bytes(const tt_linear_bwd_params *p);

/* Length (int64 elements) of one weight-gradient row: kh*kw*n (conv), kh*kw (depthwise),
 * n (fully connected). */
int32_t tt_linear_bwd_weight_row_len(const tt_linear_bwd_params *p);

/* Input gradient (numpy: linear_bwd.input_grad). g_y[out_h*out_w*out_c], e_y;
 * writes g_x[in_h*in_w*in_c] and *e_x. scratch: tt_linear_bwd_input_scratch_bytes(p)
 * bytes, 4-byte aligned (may be NULL when that is 0). */
tt_status tt_linear_bwd_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                  const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch);

/* Bias gradient (numpy: linear_bwd.bias_grad): grad_b[out_c] (int64); real grad_b * 2^e_y. */
tt_status tt_linear_bwd_bias_s16(const tt_linear_bwd_params *p, const int16_t *g_y, int64_t *grad_b);

/* One row of the weight gradient (numpy: linear_bwd.weight_grad, see above); real
 * gradient grad_row * s_in * 2^e_y. grad_row: tt_linear_bwd_weight_row_len(p) int64. */
tt_status tt_linear_bwd_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                       int32_t row, int64_t *grad_row);

/* What the forward pass saves for the weight gradient (numpy: linear_bwd.select_input_channels):
 * x_sub[pos*n + j] = x[pos*in_c + channels[j]] for the in_h*in_w positions. */
tt_status tt_linear_save_input_s8(const tt_linear_bwd_params *p, const int8_t *x, int8_t *x_sub);

#endif /* TT_LINEAR_BWD_H */
