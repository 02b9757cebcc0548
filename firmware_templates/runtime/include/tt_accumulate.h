/*
 * Integer gradient accumulation over B samples and SGD momentum (twin of
 * tinytrain/train/kernels/accumulate.py; its docstring is the definition).
 *
 * An accumulator (or a momentum buffer) of one trained tensor holds the running sum of the
 * per-sample gradients as block floating point with one int32 exponent per row (row =
 * output channel of a weight slice, one element of a bias):
 *   m  mantissas, |m| <= 2^bits, in the parameter slice's layout; stored as int8 when
 *      bits <= 6, int16 when bits <= 14, else int32;
 *   e  int32 [rows]: row r's real value is m[row r] · 2^e[r];
 *   n  int32: the number of samples added.
 * Row layouts (tt_acc_params.row_major):
 *   1  rows along axis 0: row r = m[r·row_len .. r·row_len + row_len) (conv O×kh×kw×n,
 *      FC O×n, a bias of `rows` elements with row_len 1);
 *   0  rows along the last axis: row r = m[r + t·rows], t < row_len (depthwise 1×kh×kw×n).
 * State bytes: rows·row_len·sizeof(mantissa) + 4·rows + 4 (numpy: GradAccumulator.state_bytes).
 * No scratch: a row of the incoming gradient is read twice (its max, then the sum).
 *
 * Sequence of a batch: tt_acc_init; per sample tt_acc_add_s64 (or, when the gradient comes
 * one row at a time, tt_acc_add_row_s64 per row then tt_acc_commit once); at the end
 * tt_acc_mean(*n, ...) and tt_acc_update_weights_s8 / tt_acc_update_bias_s32, then tt_acc_init.
 * Momentum (v <- mu·v + g): tt_mom_step_* into the momentum state (same format), then the
 * update from it with (scale 1, e_sub 0).
 *
 * Legal range: incoming gradients |G| < 2^62; exponents int32 (new exponents are computed
 * in int64 and stored with int32 wrap-around, as the numpy int32 state does).
 */
#ifndef TT_ACCUMULATE_H
#define TT_ACCUMULATE_H

#include "tt_common.h"
#include "tt_update.h"

#define TT_ACC_BITS 30
#define TT_ACC_GUARD_BITS 30
#define TT_ACC_MEAN_FRAC_BITS 30
#define TT_ACC_MAX_BATCH 65536
#define TT_MOMENTUM_Q15_0_9 29491

typedef struct {
    int32_t rows;      /* output channels (a bias: its elements) */
    int32_t row_len;   /* elements per row (a bias: 1) */
    int32_t row_major; /* 1: row axis 0; 0: row axis last (depthwise) */
    int32_t bits;      /* mantissa bits, 2..30 */
} tt_acc_params;

typedef struct {
    void *m;    /* mantissas: int8_t / int16_t / int32_t per bits */
    int32_t *e; /* [rows] */
    int32_t *n; /* sample count */
} tt_acc_state;

/* Bytes of one mantissa for `bits` (1, 2 or 4), 0 for bits outside 2..30. */
int32_t tt_acc_mantissa_bytes(int32_t bits);

/* All mantissas, exponents and the count to 0 (numpy: accumulate.acc_init). */
tt_status tt_acc_init(const tt_acc_params *p, const tt_acc_state *s);

/* s <- s + grad · 2^e with grad the whole int64 gradient in the slice layout, then n + 1
 * (numpy: accumulate.acc_add with one exponent). */
tt_status tt_acc_add_s64(const tt_acc_params *p, const tt_acc_state *s, const int64_t *grad, int32_t e);

/* Adds one row (row r's row_len contiguous int64 values, exponent e); the count is not
 * touched: call tt_acc_commit once after the last row of a sample. */
tt_status tt_acc_add_row_s64(const tt_acc_params *p, const tt_acc_state *s, int32_t row, const int64_t *grad,
                             int32_t e);

/* Adds one row from any row source with an int64 exponent (count untouched). */
tt_status tt_acc_add_row_src(const tt_acc_params *p, const tt_acc_state *s, int32_t row, const tt_grad_row *grad,
                             int64_t e);

/* n <- n + 1. */
tt_status tt_acc_commit(const tt_acc_state *s);

/* The mean's multiplier for a batch of `batch` samples (1..65536): *mu = round(2^(30 + k) / batch)
 * with k = floor(log2 batch), *e_sub = 30 + k (numpy: accumulate.mean_multiplier). The mean
 * gradient of row r is m[row r] · mu at exponent e[r] - e_sub (numpy: acc_result). */
tt_status tt_acc_mean(int32_t batch, int32_t *mu, int32_t *e_sub);

/* Momentum v <- mu_q15 / 2^15 · v + grad · 2^e (0 <= mu_q15 <= 32768), n + 1
 * (numpy: accumulate.mom_step with one exponent). */
tt_status tt_mom_step_s64(const tt_acc_params *p, const tt_acc_state *v, const int64_t *grad, int32_t e,
                          int32_t mu_q15);

/* One row of tt_mom_step_s64 (row r's row_len contiguous int64 values); call tt_acc_commit
 * on v after the last row. */
tt_status tt_mom_step_row_s64(const tt_acc_params *p, const tt_acc_state *v, int32_t row, const int64_t *grad,
                              int32_t e, int32_t mu_q15);

/* Momentum step whose gradient is the mean of an accumulator g (same params): row r adds
 * g.m[row r] · mu at exponent g.e[r] - e_sub (numpy: mom_step(acc_result(...)) as the
 * executor's flush runs it with momentum). n + 1. */
tt_status tt_mom_step_acc(const tt_acc_params *p, const tt_acc_state *v, const tt_acc_state *g, int32_t mu,
                          int32_t e_sub, int32_t mu_q15);

/* The SGD step of a weight slice from an accumulator or momentum state: row r's gradient
 * is m[row r] · mu at exponent e[r] - e_sub (the mean: tt_acc_mean's values; a momentum
 * buffer's value: mu 1, e_sub 0). The accumulator's rows must be the update's rows (same
 * slice layout). (numpy: accumulate.update_weights_rows with acc_result / acc_value.) */
tt_status tt_acc_update_weights_s8(const tt_acc_params *a, const tt_acc_state *s, int32_t mu, int32_t e_sub,
                                   const tt_update_params *u, const tt_sgd_step *step, int8_t *w_train,
                                   uint32_t *prng);

/* The same for a bias (accumulator of u->channels rows of 1) (numpy: update_bias_rows). */
tt_status tt_acc_update_bias_s32(const tt_acc_params *a, const tt_acc_state *s, int32_t mu, int32_t e_sub,
                                 const tt_update_params *u, const tt_sgd_step *step, int32_t *bias);

#endif /* TT_ACCUMULATE_H */
