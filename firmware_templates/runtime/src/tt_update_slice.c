/* The whole-row and whole-slice SGD weight updates, on top of tt_update_weight_row_src_s8
 * (src/tt_update.c, or the backend file that replaces it): one copy for every backend. */
#include "tt_update.h"

tt_status tt_update_weight_row_s8(const tt_update_params *p, const tt_sgd_step *step, int32_t row,
                                  const int64_t *grad, int32_t e_y, int8_t *w_train, uint32_t *prng) {
    tt_grad_row g = {grad, 8, 1, 1};
    return tt_update_weight_row_src_s8(p, step, row, &g, (int64_t)e_y, w_train, prng);
}

/* Twin of tinytrain/train/kernels/update.py:update_weights (a whole slice). */
tt_status tt_update_weights_s8(const tt_update_params *p, const tt_sgd_step *step, const int64_t *grad,
                               int32_t e_y, int8_t *w_train, uint32_t *prng) {
    if (p == NULL || grad == NULL) {
        return TT_ERR_ARG;
    }
    for (int32_t row = 0; row < p->rows; ++row) {
        tt_grad_row g;
        g.data = p->depthwise ? grad + row : grad + (int64_t)row * p->row_len;
        g.elem_bytes = 8;
        g.stride = p->depthwise ? p->rows : 1;
        g.scale = 1;
        tt_status st = tt_update_weight_row_src_s8(p, step, row, &g, (int64_t)e_y, w_train, prng);
        if (st != TT_OK) {
            return st;
        }
    }
    return TT_OK;
}
