"""Learning-rate schedule factors in Q15 and the host's learning-rate multiplier.

The schedule multiplies the learning rate by ``c_t / 32768``: ``32768`` for a constant
schedule; for a cosine schedule the entry ``⌊256 · step / total_steps⌋`` (clamped to
256) of a 257-entry table of ``round(32768 · (1 + cos(π·j/256)) / 2)``. The table is a
compile-time constant (the C code gets the same integers), so computing it in floating
point here does not make the step depend on floats.
"""

from __future__ import annotations

import enum
import math

from tinytrain.errors import UsageError
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernels.core_common import round_half_away

Q15_ONE = 1 << 15
COSINE_STEPS = 256


class Schedule(enum.Enum):
    CONSTANT = "constant"
    COSINE = "cosine"


COSINE_Q15: tuple[int, ...] = tuple(
    round_half_away(Q15_ONE * (1.0 + math.cos(math.pi * j / COSINE_STEPS)) / 2.0) for j in range(COSINE_STEPS + 1)
)


def schedule_factor(schedule: Schedule, step: int, total_steps: int) -> int:
    """``c_t`` in Q15 for step ``step`` (0-based) of ``total_steps``.

    C twin: tt_schedule_factor in firmware_templates/runtime/src/tt_schedule.c.
    """
    if schedule is Schedule.CONSTANT:
        return Q15_ONE
    if total_steps <= 0 or step < 0:
        raise UsageError(f"bad schedule position: step {step} of {total_steps}")
    return COSINE_Q15[min(COSINE_STEPS * step // total_steps, COSINE_STEPS)]


def lr_multiplier(lr: float) -> tuple[int, int]:
    """Host side: ``(q_lr, shift_lr) = QuantizeMultiplier(lr)``, ``lr ≈ q_lr · 2^(shift_lr − 31)``."""
    if not (math.isfinite(lr) and lr > 0.0):
        raise UsageError(f"learning rate must be finite and > 0, got {lr!r}")
    return quantize_multiplier(lr)
