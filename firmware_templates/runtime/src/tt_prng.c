/* xorshift32 draws and the seeding hashes; see tt_prng.h. */
#include "tt_prng.h"

/* Twin of tinytrain/train/kernels/prng.py:seed_state. */
tt_status tt_prng_seed(uint32_t *state, uint32_t seed) {
    if (state == NULL || seed == 0u) {
        return TT_ERR_ARG;
    }
    *state = seed;
    return TT_OK;
}

/* Twin of tinytrain/train/kernels/prng.py:draws (the sequential loop it is defined by). */
tt_status tt_prng_draws(uint32_t *state, uint32_t *out, int32_t n) {
    if (state == NULL || *state == 0u || n < 0 || (n > 0 && out == NULL)) {
        return TT_ERR_ARG;
    }
    for (int32_t i = 0; i < n; ++i) {
        out[i] = tt_xorshift32(state);
    }
    return TT_OK;
}

/* Twin of tinytrain/train/data.py:fmix32. */
uint32_t tt_fmix32(uint32_t h) {
    h ^= h >> 16;
    h = (uint32_t)(h * 0x85EBCA6Bu);
    h ^= h >> 13;
    h = (uint32_t)(h * 0xC2B2AE35u);
    h ^= h >> 16;
    return h;
}

/* Twin of tinytrain/train/executor.py:update_prng_seed. */
uint32_t tt_update_prng_seed(uint32_t seed) {
    uint32_t h = tt_fmix32((uint32_t)(seed + 0x2545F491u));
    return h != 0u ? h : 0x9E3779B9u;
}
