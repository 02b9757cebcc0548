"""xorshift32 (Marsaglia 2003, shifts 13, 17, 5): the training step's only random source.

The state is a uint32 array of one element (an arena slot in C), seeded by the host with
a non-zero value. Each draw advances the state and returns the new state:
``x ^= x << 13; x ^= x >> 17; x ^= x << 5`` (uint32 arithmetic).

:func:`draws` produces ``n`` successive draws at once. xorshift32 is linear over GF(2),
so ``A^m`` (the state after ``m`` steps, as a 32×32 bit matrix stored as 32 uint32
columns) maps a block of ``m`` consecutive states to the next ``m``; doubling the block
gives all draws in ``⌈log2 n⌉`` vectorised passes, with exactly the values of the
sequential loop (:func:`next_state`).
"""

from __future__ import annotations

import numpy as np

from tinytrain.errors import UsageError

_MASK = 0xFFFFFFFF


def next_state(x: int) -> int:
    """One xorshift32 step on a Python int (the reference the C code implements).

    C twin: tt_xorshift32 in firmware_templates/runtime/include/tt_prng.h.
    """
    x ^= (x << 13) & _MASK
    x ^= x >> 17
    x ^= (x << 5) & _MASK
    return x


def seed_state(seed: int) -> np.ndarray:
    """A fresh PRNG state (uint32[1]) from a non-zero 32-bit seed.

    C twin: tt_prng_seed in firmware_templates/runtime/src/tt_prng.c.
    """
    s = int(seed) & _MASK
    if s == 0:
        raise UsageError("the xorshift32 seed must be non-zero modulo 2^32")
    return np.array([s], dtype=np.uint32)


def _step(v: np.ndarray) -> np.ndarray:
    v = v ^ (v << np.uint32(13))
    v = v ^ (v >> np.uint32(17))
    return v ^ (v << np.uint32(5))


def _apply(cols: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The bit matrix with columns ``cols`` (uint32[32]) applied to every value of ``v``."""
    out = np.zeros_like(v)
    for b in range(32):
        out ^= ((v >> np.uint32(b)) & np.uint32(1)) * cols[b]
    return out


def _jump_tables(levels: int) -> tuple[np.ndarray, ...]:
    """Columns of ``A^(2^j)`` for ``j < levels`` (read-only constants)."""
    cols = _step(np.uint32(1) << np.arange(32, dtype=np.uint32))
    out = []
    for _ in range(levels):
        cols.flags.writeable = False
        out.append(cols)
        cols = _apply(cols, cols)
    return tuple(out)


_SMALL_LOG2 = 6  # up to 2^6 draws: a plain loop
_JUMPS = _jump_tables(40)


def draws(state: np.ndarray, n: int) -> np.ndarray:
    """The next ``n`` draws (uint32[n]); advances ``state`` (uint32[1]) in place.

    C twin: tt_prng_draws in firmware_templates/runtime/src/tt_prng.c.
    """
    if state.dtype != np.uint32 or state.shape != (1,) or int(state[0]) == 0:
        raise UsageError("the PRNG state must be a non-zero uint32 array of one element")
    if n <= 0:
        return np.empty(0, dtype=np.uint32)
    x = int(state[0])
    head = []
    for _ in range(min(n, 1 << _SMALL_LOG2)):
        x = next_state(x)
        head.append(x)
    seq = np.asarray(head, dtype=np.uint32)
    level = _SMALL_LOG2
    while seq.size < n:  # seq holds 2^level draws: A^(2^level) maps them to the next 2^level
        seq = np.concatenate([seq, _apply(_JUMPS[level], seq)])
        level += 1
    out = seq[:n]
    state[0] = out[-1]
    return out
