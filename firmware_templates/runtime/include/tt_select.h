/*
 * DGSU selection (docs/schemes.md, "DGSU"): which weight rows, and which layers, update
 * this step. Twins of tinytrain/train/kernels/select.py (integer only).
 *
 * Rows (tt_select_rows): of n candidates with int64 scores and uint16 ages, k are chosen:
 * first k - explore by the largest key (|score| when magnitude != 0, else score; ties: the
 * larger age, then the lower index), then explore among the others by the largest age
 * (ties: the lower index). chosen[i] = 1 for a chosen index, else 0; sel[0..k) lists the
 * chosen indices in ascending order; the chosen ages become 0, the others min(age + 1, 65535).
 * With k == n every index is chosen and age may be NULL. Legal range: |score| < 2^63,
 * 0 <= explore <= k <= n <= 65535.
 *
 * Layer signal (tt_select_layer_signal): L = log2(sum_o |B[o]| * 2^e) in Q8 (bit length
 * for the integer part, the 8 bits below the leading one as the fraction; -2^24 for a zero
 * sum; clamped to +-2^24); score = L - ema and ema += (L - ema) >> 3 (arithmetic), or, on
 * the first signal (ema == INT32_MIN), score = 0 and ema = L. Legal: sum_o |B[o]| < 2^64.
 */
#ifndef TT_SELECT_H
#define TT_SELECT_H

#include "tt_common.h"

#define TT_SELECT_AGE_MAX 65535
#define TT_SELECT_EMA_UNSET INT32_MIN

/* numpy: select.select_rows. TT_ERR_ARG for a bad size or a NULL pointer (age only when k < n). */
tt_status tt_select_rows(const int64_t *score, int32_t n, int32_t magnitude, uint16_t *age, int32_t k,
                         int32_t explore, uint8_t *chosen, uint16_t *sel);

/* The rows of one DGSU layer this step: when active is NULL or *active != 0, tt_select_rows
 * by |bias_grad| and *count = k; otherwise *count = 0 and nothing else changes (the layer
 * was not picked by the layer selection; numpy: the executor's DGSU step). */
tt_status tt_select_dgsu_rows(const int64_t *bias_grad, int32_t n, uint16_t *age, int32_t k, int32_t explore,
                              const uint8_t *active, uint8_t *chosen, uint16_t *sel, int32_t *count);

/* numpy: select.log2_q8 (total >= 0 as a uint64). */
int32_t tt_select_log2_q8(uint64_t total, int32_t e);

/* numpy: select.layer_signal. bias_grad[n] int64 with exponent e; updates *ema, writes *score. */
tt_status tt_select_layer_signal(const int64_t *bias_grad, int32_t n, int32_t e, int32_t *ema, int64_t *score);

/* ALaST's signal (numpy: cls_change.cls_change): rows int8[n_rows][dim] holds class-token rows;
 * score[j] = sum_d |(rows[dst[j]][d] - zp[dst[j]]) * mult[dst[j]] - (rows[src[j]][d] - zp[src[j]]) * mult[src[j]]|
 * for j < n, in int64. TT_ERR_ARG for a NULL pointer, a negative size or a row index >= n_rows. */
tt_status tt_select_cls_change(const int8_t *rows, int32_t n_rows, int32_t dim, const int32_t *zp, const int32_t *mult,
                               const uint16_t *src, const uint16_t *dst, int32_t n, int64_t *score);

#endif /* TT_SELECT_H */
