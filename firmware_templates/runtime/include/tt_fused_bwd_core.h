/*
 * Internal: the core of the row-streamed fused E->D backward (src/tt_fused_bwd.c) shared
 * with the fused P->D->E backward (src/tt_fused_pde_bwd.c). Not part of any kernel's API.
 *
 * The core runs passes 1-3 of tt_fused_ed_bwd_s16 over rows of D's output gradient that a
 * row source supplies (numpy: fused_bwd.stream_expand_backward with a DwRows whose d_row is
 * the source, and SweepHooks around the sweeps).
 */
#ifndef TT_FUSED_BWD_CORE_H
#define TT_FUSED_BWD_CORE_H

#include "tt_fused_bwd.h"

typedef struct tt_ed_ctx tt_ed_ctx;

/* The source of D's output-gradient rows: row oy (d_out_w × C int16, before D's clamp
 * mask). Sweeps read rows in non-decreasing windows of at most ceil(kh_D / sh_D) rows
 * (fused_bwd.py:dw_reads); a caching source (a fused projection P's ring of recomputed
 * rows, fused_bwd_project.py) restarts at each sweep through the sweep hook. */
typedef const int16_t *(*tt_ed_row_fn)(const tt_ed_ctx *x, int32_t oy);
typedef void (*tt_ed_sweep_fn)(const tt_ed_ctx *x, int sweep, int begin);

/* Run-time view of one call: the params, the inputs, the row source and the scratch regions. */
struct tt_ed_ctx {
    const tt_fused_ed_params *p;
    const int16_t *g_d;    /* D's whole output gradient (the plain row source) */
    tt_ed_row_fn d_row;    /* D's output-gradient rows */
    tt_ed_sweep_fn sweep;  /* NULL, or called before (begin = 1) and after each sweep 1..3 */
    void *src;             /* the row source's own state (NULL for the plain source) */
    const uint8_t *mask_d; /* NULL: no mask */
    const uint8_t *mask_e; /* NULL: no mask */
    const tt_fbwd_weights *w_d;
    const tt_fbwd_weights *w_e;
    const int8_t *x_sub;
    int64_t *bias_grad; /* [C] or NULL */
    int64_t *w_grad;    /* [C·kh·kw·n] or NULL */
    uint32_t *acc_d;    /* [W·C]: one row of D's input-gradient sums, modulo 2^32 */
    uint32_t *acc_e;    /* [W·Cin] or NULL: one row of E's input-gradient sums, modulo 2^32 */
};

/* Checks the arguments of tt_fused_ed_bwd_s16 other than g_d and e_param (TT_ERR_ARG as
 * it does) and sets up *x over scratch (tt_fused_ed_scratch_bytes(p) bytes, 8-byte
 * aligned) with the plain row source: the caller sets g_d, or d_row / sweep / src. */
tt_status tt_fused_ed_ctx_init(tt_ed_ctx *x, const tt_fused_ed_params *p, const uint8_t *mask_d,
                               const uint8_t *mask_e, const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e,
                               const int8_t *x_sub_e, int16_t *g_in, int32_t *e_in, void *scratch);

/* Passes 1-3 from D's output-gradient rows with exponent e_d: E's parameter gradients in
 * the scratch, E's input gradient (g_in, *e_in), *e_param = E's parameter exponent. */
void tt_fused_ed_stream(const tt_ed_ctx *x, int64_t e_d, int16_t *g_in, int32_t *e_in, int32_t *e_param);

/* 1 when w is a valid tt_fbwd_weights over a last axis of `channels` channels. */
int tt_fbwd_valid_weights(const tt_fbwd_weights *w, int32_t channels);

/* 1 when mu[0..n) are Q15 factors in [0, 2^15]. */
int tt_fbwd_valid_mu(const int32_t *mu, int32_t n);

#endif /* TT_FUSED_BWD_CORE_H */
