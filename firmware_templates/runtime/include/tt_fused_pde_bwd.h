/*
 * Row-streamed fused backward of "1×1 projection CONV_2D P <- DEPTHWISE_CONV_2D D <- CONV_2D E"
 * (twin of tinytrain/train/kernels/fused_bwd_project.py:run_fused_project_backward; its module
 * docstring is the definition). Neither D's output gradient (= P's input gradient) nor D's
 * input gradient ever exists: rows of D's output gradient are P's input-gradient sums
 * (row-local: P is 1×1, stride 1, unpadded), recomputed into a ring of ring_rows int16 rows
 * as the fused E->D kernel (tt_fused_bwd.h) reads them:
 *   0. max |acc_P| over all rows -> P's normalization shift r_P and D's output-gradient
 *      exponent e_D = e_P + p_k + p_drop + r_P (= D's parameter-gradient exponent);
 *   1.-3. the E->D kernel's passes on the recomputed rows; D's bias gradient (int64 [C]) and
 *      weight gradient (int64 kh×kw×n, trained channels w_d->ch) accumulate from each masked
 *      row (in sweep 1 with a ring, else in a loop of their own first).
 * The bytes equal P's, D's and E's unfused backward in turn. P's own bias / weight
 * gradients read P's masked output gradient and its saved channels: the unfused kernels
 * compute them. Run the updates after this kernel (it reads the old w_P, w_D and w_E), in
 * the order P, D, E.
 *
 * ring_rows: 1 (a row is recomputed at each read), or at least the widest window of D's
 * output rows one input row reads (fused_bwd.py:dw_reads; each row computed once per sweep).
 *
 * Scratch (void *, 8-byte aligned), exactly tt_fused_pde_scratch_bytes(p) =
 * fused_bwd_project.py:project_scratch_bytes bytes, in this order:
 *   int64 [C]            D's bias gradient                         if d_bias
 *   int64 [kh·kw·n_D]    D's weight gradient (slice layout kh×kw×n)  if d_weight_n > 0
 *   tt_fused_ed_scratch_bytes(&p->ed)   the E->D kernel's scratch (E's gradients first)
 *   int16 [ring_rows·d_out_w·C]         the ring of rows of D's output gradient
 * After the call, D's and E's gradients are in the scratch (tt_fused_pde_d_bias_grad, ...)
 * for their updates (tt_update_weights_s8 / tt_update_bias_s32 with *e_param_d, *e_param_e).
 *
 * Arithmetic: P's sums are accumulated modulo 2^32 (the numpy int64 sum wrapped to int32);
 * D's gradients are exact int64 sums. Legal range: any int16 g_p, int8 weights and saved
 * inputs, exponents with |e_p| + 96 < 2^31.
 */
#ifndef TT_FUSED_PDE_BWD_H
#define TT_FUSED_PDE_BWD_H

#include "tt_common.h"
#include "tt_fused_bwd.h"

typedef struct {
    tt_fused_ed_params ed; /* D and E (D's output d_out_h × d_out_w × C is P's input) */
    int32_t p_cout;        /* P's output channels */
    const int32_t *p_mu;   /* [p_cout] Q15 factors (LinearBwdParams.mu) */
    int32_t p_k;           /* LinearBwdParams.k */
    int32_t p_drop;        /* LinearBwdParams.drop, 0..14 */
    int32_t p_mask;        /* 1: P's output gradient passes P's clamp mask */
    int32_t ring_rows;     /* R (see above) */
    int32_t d_bias;        /* 1: D's bias gradient */
    int32_t d_weight_n;    /* D's trained channels (= w_d->n; weight gradient), 0: none */
    int32_t d_in_zp;       /* D's input zero point (for the weight gradient) */
} tt_fused_pde_params;

/* The scratch size in bytes (fused_bwd_project.py:project_scratch_bytes); 0 for NULL params. */
size_t tt_fused_pde_scratch_bytes(const tt_fused_pde_params *p);

/* D's bias gradient (int64 [C]) in the scratch, NULL when D's bias does not train. */
int64_t *tt_fused_pde_d_bias_grad(const tt_fused_pde_params *p, void *scratch);

/* D's weight gradient (int64 kh×kw×n) in the scratch, NULL when D's weights do not train. */
int64_t *tt_fused_pde_d_weight_grad(const tt_fused_pde_params *p, void *scratch);

/* After the call: int32 [2] {D's, E's parameter-gradient exponent} at the start of the (then
 * dead) ring; NULL when the ring has fewer than 8 bytes. */
int32_t *tt_fused_pde_exponents(const tt_fused_pde_params *p, void *scratch);

/* The E->D kernel's scratch inside the scratch (E's gradients: tt_fused_ed_bias_grad(&p->ed, .)). */
void *tt_fused_pde_ed_scratch(const tt_fused_pde_params *p, void *scratch);

/*
 * g_p, e_p     P's output gradient (int16 d_out_h × d_out_w × p_cout) before P's clamp mask, and its exponent
 * mask_p       P's packed clamp mask (ignored unless p->p_mask)
 * mask_d       D's packed clamp mask (ignored unless p->ed.d_mask)
 * mask_e       E's packed clamp mask (ignored unless p->ed.e_mask)
 * w_p          P's current weights (whole tensor p_cout × 1 × 1 × C, trained input channels)
 * w_d, w_e     D's and E's current weights (w_e may be NULL unless p->ed.e_input_grad)
 * x_sub_d      D's saved input channels (int8 height × width × d_weight_n; NULL unless d_weight_n)
 * x_sub_e      E's saved input channels (as tt_fused_ed_bwd_s16)
 * g_in, e_in   E's input gradient and its exponent (unless p->ed.e_input_grad: unused)
 * e_param_d    D's parameter-gradient exponent (the exponent of D's output gradient), or NULL
 * e_param_e    E's parameter-gradient exponent, or NULL (both also in tt_fused_pde_exponents)
 * scratch      tt_fused_pde_scratch_bytes(p) bytes, 8-byte aligned
 * TT_ERR_ARG: a NULL pointer that is needed, bad params, a ring smaller than D's read window.
 */
tt_status tt_fused_pde_bwd_s16(const tt_fused_pde_params *p, const int16_t *g_p, int32_t e_p, const uint8_t *mask_p,
                               const uint8_t *mask_d, const uint8_t *mask_e, const tt_fbwd_weights *w_p,
                               const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e, const int8_t *x_sub_d,
                               const int8_t *x_sub_e, int16_t *g_in, int32_t *e_in, int32_t *e_param_d,
                               int32_t *e_param_e, void *scratch);

#endif /* TT_FUSED_PDE_BWD_H */
