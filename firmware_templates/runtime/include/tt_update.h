/*
 * SGD update in quantized units with QAS-equivalent scaling and stochastic rounding
 * (docs/numerics.md, "Update"; twin of tinytrain/train/kernels/update.py).
 *
 * Per output channel o (compile time, numpy: update.make_update / prepare_update):
 *   (w_mult[o], w_shift[o]) = QuantizeMultiplier(s_in / s_w[o])
 *   (b_mult[o], b_shift[o]) = QuantizeMultiplier(1 / (s_in · s_w[o]))
 * Per step (tt_sgd_step, from the host): (q_lr, shift_lr) = QuantizeMultiplier(lr) and the Q15
 * schedule factor c_t (tt_schedule.h). Per channel: M = (((q · q_lr + 2^30) >> 31) · c_t + 2^14) >> 15,
 * S = shift + shift_lr. Per row (one output channel of the weight gradient, or one bias
 * element): the int64 gradient is reduced to |G'| <= 2^30 by r = max(0, bitlen(max|G|) - 30)
 * bits (rounding half away from zero), P = -G' · M, R = 31 - S - e_y - r; weights move by the
 * stochastic rounding of P / 2^R (one xorshift32 draw per weight, drawn in row-major order of
 * the row, rows in order; a draw is consumed even when the step is 0) and are clamped to
 * [-127, 127]; biases move by RoundingDivideByPOT(P, R) (or a left shift saturated at ±2^32)
 * and saturate to int32.
 *
 * Trained weights live in SRAM as the slice w[..., ch] of the layer's weights (ch = the
 * trained input channels; depthwise: the trained channels), in the slice's own layout:
 *   CONV_2D          O × kh × kw × n   row o (= output channel o) contiguous, kh·kw·n weights
 *   FULLY_CONNECTED  O × n             row o contiguous, n weights
 *   DEPTHWISE_CONV_2D  kh × kw × n     row j (= channel ch[j]) holds the kh·kw weights
 *                                      slice[t·n + j], t = 0..kh·kw-1 (strided by n)
 * A row's weight gradient (int64, the layout of that row: kh·kw·n, n or kh·kw values in
 * row-major order) may exist alone (the memory contract: one output channel at a time).
 *
 * Legal range: |G| < 2^62 for every gradient element; any int32 multipliers/shifts; any
 * int32 exponent e_y (int64 in the _src variants); 0 <= q_lr (int32), 0 <= c_t <= 32768.
 * Run the updates of a training step in the numpy order (layer by layer in backward
 * order, D's before E's in a fused step; per layer the weights, then the bias): the PRNG
 * draws must happen in exactly the simulator's order.
 */
#ifndef TT_UPDATE_H
#define TT_UPDATE_H

#include "tt_common.h"

#define TT_GRAD_UPDATE_BITS 30
#define TT_W_MIN (-127)
#define TT_W_MAX 127

/* What the host sets per step. */
typedef struct {
    int32_t q_lr;     /* QuantizeMultiplier(lr).q, >= 0 */
    int32_t shift_lr; /* QuantizeMultiplier(lr).shift */
    int32_t c_t;      /* Q15 schedule factor, 0..32768 */
} tt_sgd_step;

/* Compile-time constants of one trained layer (numpy: update.UpdateParams + the slice). */
typedef struct {
    int32_t channels;            /* output channels of the op: the length of the four arrays */
    const int32_t *w_mult;       /* [channels] (NULL when no weight trains) */
    const int32_t *w_shift;      /* [channels] */
    const int32_t *b_mult;       /* [channels] (NULL when the bias does not train) */
    const int32_t *b_shift;      /* [channels] */
    int32_t rows;                /* rows of the trained weight slice: O (conv / FC), n (depthwise); 0: none */
    int32_t row_len;             /* weights per row: kh·kw·n (conv), n (FC), kh·kw (depthwise) */
    int32_t depthwise;           /* 1: row j's weights are slice[t·rows + j]; 0: slice[o·row_len + t] */
    const uint16_t *row_channel; /* depthwise: [rows] the op channel ch[j] of row j; NULL otherwise (row o = channel o) */
} tt_update_params;

/* One row of an integer gradient: element t is data[t · stride] · scale (an exact int64;
 * |value| < 2^62). elem_bytes: 1, 2, 4 (int8 / int16 / int32 values, e.g. accumulator
 * mantissas) or 8 (int64). */
typedef struct {
    const void *data;
    int32_t elem_bytes;
    int32_t stride;
    int32_t scale;
} tt_grad_row;

/* Per-step multiplier of one channel (numpy: update.combine_multipliers): *m = M, *s = S.
 * TT_ERR_ARG for q_lr < 0 or c_t outside [0, 32768]. */
tt_status tt_update_combine(const tt_sgd_step *step, int32_t q, int32_t shift, int64_t *m, int64_t *s);

/* Stochastic rounding of p / 2^r with the draw u (numpy: update.stochastic_shift). */
int64_t tt_update_stochastic_shift(int64_t p, int64_t r, uint32_t u);

/* p / 2^r rounded half away from zero for r >= 1, else a left shift saturated at ±2^32
 * (numpy: update.rounding_shift). */
int64_t tt_update_rounding_shift(int64_t p, int64_t r);

/* Row `row` of the trained weight slice w_train moved by its gradient row `grad`
 * (int64, kh·kw·n / n / kh·kw contiguous values, real gradient grad · s_in · 2^e_y);
 * draws row_len values from *prng. (numpy: update.update_weights restricted to one
 * output channel; update_weights of a whole slice = this for row 0, 1, ... in order.) */
tt_status tt_update_weight_row_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                  const int64_t *grad, int32_t e_y, int8_t *w_train, uint32_t *prng);

/* The same from any row source with an int64 exponent (used by the accumulators). */
tt_status tt_update_weight_row_src_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                      const tt_grad_row *grad, int64_t e_y, int8_t *w_train, uint32_t *prng);

/* Every row of the slice from a whole int64 weight gradient in the slice layout
 * (numpy: update.update_weights), e.g. a fused E's gradient held in the fused scratch. */
tt_status tt_update_weights_s8(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad,
                               int32_t e_y, int8_t *w_train, uint32_t *prng);

/* The bias (int32 [channels]) moved by its int64 gradient [channels] with one exponent
 * (numpy: update.update_bias). */
tt_status tt_update_bias_s32(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad,
                             int32_t e_y, int32_t *bias);

/* One bias element (channel o) with its own int64 exponent (numpy: update.update_bias of
 * one element, as accumulate.update_bias_rows runs it). */
tt_status tt_update_bias_one_s32(const tt_update_params *p, const tt_sgd_step *step, int32_t channel,
                                 int64_t grad, int64_t e_y, int32_t *bias);

#endif /* TT_UPDATE_H */
