"""Gradient tensors: an int16 mantissa array and one power-of-two exponent per tensor.

``Grad(g, e)`` stands for the real gradient ``g · 2^e`` of the loss with respect to a
*real-valued* tensor (``docs/numerics.md``, "Gradient tensors"). ``g`` is int16 with
``|g| ≤ 2^14`` after :func:`normalize`; ``e`` is a Python int (an int32 arena slot in
the C runtime). Arrays keep the IR layout (NHWC, leading batch axis of 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.sim.fixedpoint import rounding_divide_by_pot

GRAD_BITS = 14  # default mantissa bits: |g| ≤ 2^14 fits int16 after rounding


@dataclass(frozen=True, eq=False)
class Grad:
    """Real gradient ``g · 2^e``: ``g`` int16 (any shape), ``e`` the per-tensor exponent."""

    g: np.ndarray
    e: int

    def __post_init__(self) -> None:
        if self.g.dtype != np.int16:
            raise UsageError(f"gradient mantissas must be int16, got {self.g.dtype}")
        object.__setattr__(self, "e", int(self.e))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.g.shape)

    def reshape(self, shape: tuple[int, ...]) -> Grad:
        return Grad(self.g.reshape(shape), self.e)


def bit_length(m: int) -> int:
    """Number of bits of a non-negative integer (0 for 0), C: ``32 - clz``-style."""
    return int(m).bit_length()


def max_abs(acc: np.ndarray) -> int:
    """``max |acc|`` as a Python int (0 for an empty array)."""
    if acc.size == 0:
        return 0
    return max(abs(int(acc.max())), abs(int(acc.min())))


def normalize(acc: np.ndarray, e_acc: int, bits: int = GRAD_BITS) -> Grad:
    """Turns an integer accumulator (real value ``acc · 2^e_acc``) into a gradient.

    ``r = bitlen(max|acc|) − bits``; a negative ``r`` shifts left (exact), a positive one
    is ``RoundingDivideByPOT(acc, r)``; the exponent becomes ``e_acc + r``. An all-zero
    accumulator gives ``g = 0`` with ``e = e_acc``. ``|g| ≤ 2^bits``.

    C twin: tt_normalize_s32 / tt_normalize_s64 in firmware_templates/runtime/src/tt_grad.c.
    """
    if not 1 <= bits <= GRAD_BITS:
        raise UsageError(f"gradient bits must be in [1, {GRAD_BITS}], got {bits}")
    a = np.asarray(acc, dtype=np.int64)
    m = max_abs(a)
    if m == 0:
        return Grad(np.zeros(a.shape, dtype=np.int16), e_acc)
    r = bit_length(m) - bits
    if r < 0:
        g = a << np.int64(-r)
    elif r > 0:
        g = rounding_divide_by_pot(a, r)
    else:
        g = a
    return Grad(g.astype(np.int16), e_acc + r)


def grad_to_float(grad: Grad) -> np.ndarray:
    """The real gradient ``g · 2^e`` in float64. Host-side reporting and tests only:
    no training kernel calls it."""
    return grad.g.astype(np.float64) * np.ldexp(1.0, grad.e)
