/*
 * Softmax cross-entropy gradient on int8 logits (docs/numerics.md, "Loss"); twin of
 * tinytrain/train/kernels/loss.py.
 *
 * The probabilities are TFLite Micro's int8 -> int16 SOFTMAX of the logits (gemmlowp
 * fixed-point exp, reference_ops::Softmax with an int16 output of scale 1/65536 and
 * zero point -32768): P_i = p_q_i + 32768 in [0, 65535], p_i = P_i / 65536. The gradient
 * with respect to the real logits is p - onehot(label): acc_i = P_i - 65536 * [i = label]
 * at exponent -16, normalized to 14 bits.
 */
#ifndef TT_LOSS_H
#define TT_LOSS_H

#include "tt_common.h"

#define TT_SOFTMAX_CE_MAX_CLASSES 4095 /* the Q12.19 sum of exponentials cannot wrap */

/* Compile-time constants: SoftmaxCEParams / SoftmaxParams of loss.prepare_softmax_ce. */
typedef struct {
    int32_t classes;          /* 1 .. TT_SOFTMAX_CE_MAX_CLASSES */
    int32_t input_multiplier; /* SoftmaxParams.input_multiplier (Q31, > 0) */
    int32_t input_left_shift; /* SoftmaxParams.input_left_shift, 0 .. 31 */
    int32_t diff_min;         /* SoftmaxParams.diff_min (<= 0) */
} tt_softmax_ce_params;

/*
 * Twin of loss.softmax_ce_grad: logits[classes] (int8), 0 <= label < classes (else
 * TT_ERR_RANGE). Writes the gradient g[classes] and *e, the label's integer probability
 * *p_label = P_label in [0, 65535] (the host reports the loss -ln(P_label / 65536)) and
 * *predicted = the first index of the largest logit. No scratch (g holds the int16
 * probabilities between the passes).
 */
tt_status tt_softmax_ce_grad_s8(const tt_softmax_ce_params *p, const int8_t *logits, int32_t label, int16_t *g,
                                int32_t *e, int32_t *p_label, int32_t *predicted);

#endif /* TT_LOSS_H */
