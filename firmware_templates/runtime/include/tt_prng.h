/*
 * xorshift32 (Marsaglia 2003, shifts 13, 17, 5): the training step's only random source
 * (stochastic rounding of the weight update), and the seeding hashes.
 *
 * The state is one non-zero uint32_t (an arena slot). Each draw advances the state and
 * returns the new state: x ^= x << 13; x ^= x >> 17; x ^= x << 5 (all mod 2^32).
 *
 * Twins of tinytrain/train/kernels/prng.py, tinytrain/train/data.py:fmix32 and
 * tinytrain/train/executor.py:update_prng_seed.
 */
#ifndef TT_PRNG_H
#define TT_PRNG_H

#include "tt_common.h"

/* One draw: advances *state and returns its new value (numpy: prng.next_state).
 * A zero state stays zero: callers keep it non-zero (tt_prng_seed refuses 0). */
static inline uint32_t tt_xorshift32(uint32_t *state) {
    uint32_t x = *state;
    x ^= (uint32_t)(x << 13);
    x ^= x >> 17;
    x ^= (uint32_t)(x << 5);
    *state = x;
    return x;
}

/* *state = seed; TT_ERR_ARG for a zero seed or a NULL state (numpy: prng.seed_state). */
tt_status tt_prng_seed(uint32_t *state, uint32_t seed);

/* The next n draws into out[0..n) (n >= 0), advancing *state (numpy: prng.draws).
 * TT_ERR_ARG for a NULL or zero state, n < 0, or a NULL out with n > 0. */
tt_status tt_prng_draws(uint32_t *state, uint32_t *out, int32_t n);

/* MurmurHash3's 32-bit finalizer (numpy: tinytrain.train.data.fmix32). */
uint32_t tt_fmix32(uint32_t h);

/* The update PRNG's initial state for a run seed (taken mod 2^32):
 * fmix32(seed + 0x2545F491), 0x9E3779B9 if that is 0 (numpy: executor.update_prng_seed). */
uint32_t tt_update_prng_seed(uint32_t seed);

#endif /* TT_PRNG_H */
