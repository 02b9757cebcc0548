/* Bias gradient + SGD step without a gradient buffer (see include/tt_bias_step.h).
 * Twin of tinytrain.train.kernels.linear_bwd.bias_grad + tinytrain.train.kernels.update.update_bias. */
#include "tt_bias_step.h"

tt_status tt_bias_step_s16(const tt_linear_bwd_params *lb, const tt_update_params *up, const tt_sgd_step *step,
                           const int16_t *g_y, int32_t e_y, int32_t *bias) {
    if (lb == NULL || up == NULL || step == NULL || g_y == NULL || bias == NULL || lb->out_c <= 0 ||
        lb->out_h <= 0 || lb->out_w <= 0 || up->channels != lb->out_c) {
        return TT_ERR_ARG;
    }
    const int32_t cout = lb->out_c;
    const int32_t positions = lb->out_h * lb->out_w;
    for (int32_t o = 0; o < cout; ++o) {
        int64_t g = 0;
        const int16_t *gy = g_y + o;
        for (int32_t pos = 0; pos < positions; ++pos) {
            g += gy[(int64_t)pos * cout];
        }
        tt_status st = tt_update_bias_one_s32(up, step, o, g, (int64_t)e_y, bias);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
