/*
 * Learning-rate schedule factor c_t in Q15 (docs/numerics.md, "Update"): the step's
 * learning rate is lr · c_t / 32768. Constant schedule: c_t = 32768. Cosine schedule:
 * entry min(floor(256 · step / total_steps), 256) of the 257-entry table
 * round(32768 · (1 + cos(pi · j / 256)) / 2) (a compile-time constant: this file holds the
 * same integers as tinytrain/train/kernels/schedule.py:COSINE_Q15; the tests compare them).
 *
 * The learning rate itself reaches the device as integers: (q_lr, shift_lr) =
 * QuantizeMultiplier(lr), computed by the host (numpy: schedule.lr_multiplier) and passed
 * in a tt_sgd_step (tt_update.h). Nothing here uses floating point.
 */
#ifndef TT_SCHEDULE_H
#define TT_SCHEDULE_H

#include "tt_common.h"

#define TT_Q15_ONE 32768
#define TT_COSINE_STEPS 256

typedef enum {
    TT_SCHEDULE_CONSTANT = 0,
    TT_SCHEDULE_COSINE = 1
} tt_schedule_kind;

typedef struct {
    int32_t kind;        /* tt_schedule_kind */
    int32_t total_steps; /* cosine: the run's number of steps (> 0); unused for constant */
} tt_schedule_params;

/* c_t of step `step` (0-based) into *c_t (numpy: schedule.schedule_factor).
 * TT_ERR_ARG: NULL pointers, an unknown kind, or (cosine) step < 0 or total_steps <= 0. */
tt_status tt_schedule_factor(const tt_schedule_params *p, int32_t step, int32_t *c_t);

/* Entry j (0..256) of the cosine table, -1 outside (for tests and tools). */
int32_t tt_cosine_q15(int32_t j);

#endif /* TT_SCHEDULE_H */
