/* Bias gradient and SGD step of one layer, one output channel at a time.
 *
 * The same bytes as tt_linear_bwd_bias_s16 (int64 sums over the output positions) followed by
 * tt_update_bias_s32, without the int64 [out_c] gradient buffer between them: each channel's
 * sum is consumed by tt_update_bias_one_s32 as soon as it is formed. Twin of
 * tinytrain.train.kernels.linear_bwd.bias_grad followed by tinytrain.train.kernels.update.update_bias.
 */
#ifndef TT_BIAS_STEP_H
#define TT_BIAS_STEP_H

#include "tt_common.h"
#include "tt_linear_bwd.h"
#include "tt_update.h"

/* g_y[out_h*out_w*out_c] with exponent e_y; bias[out_c] is updated in place. */
tt_status tt_bias_step_s16(const tt_linear_bwd_params *lb, const tt_update_params *up, const tt_sgd_step *step,
                           const int16_t *g_y, int32_t e_y, int32_t *bias);

#endif /* TT_BIAS_STEP_H */
