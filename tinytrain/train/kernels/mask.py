"""1-bit clamp masks (ReLU / ReLU6 / saturation folded into requantization).

The forward pass records, per output element, whether the requantized value lies
strictly inside ``(act_min, act_max)``: only there does the output move with its
input, so only there does the gradient pass. Masks are packed 8 elements per byte,
little-endian bit order (element ``8·j + b`` is bit ``b`` of byte ``j``), in row-major
element order; the last byte is zero-padded.
"""

from __future__ import annotations

import math

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.train.kernels.gradient import Grad


def mask_nbytes(n: int) -> int:
    """Bytes of a packed mask of ``n`` elements."""
    return (n + 7) // 8


def pack_mask(bits: np.ndarray) -> np.ndarray:
    """Packs a boolean array (row-major) into ``ceil(n / 8)`` uint8 bytes."""
    return np.packbits(np.asarray(bits, dtype=bool).reshape(-1), bitorder="little")


def unpack_mask(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The boolean array of ``shape`` held by a packed mask."""
    n = math.prod(shape)
    if packed.dtype != np.uint8 or packed.size != mask_nbytes(n):
        raise UsageError(
            f"a mask of {n} elements needs {mask_nbytes(n)} uint8 bytes, got {packed.dtype}[{packed.size}]"
        )
    return np.unpackbits(packed.reshape(-1), count=n, bitorder="little").astype(bool).reshape(shape)


def clamp_mask(y_q: np.ndarray, act_min: int, act_max: int) -> np.ndarray:
    """Packed mask of ``act_min < y_q < act_max`` (``y_q``: the clamped int8 output).

    C twin: tt_clamp_mask_s8 (chunked: tt_clamp_mask_s8_at) in firmware_templates/runtime/src/tt_mask.c."""
    y = np.asarray(y_q)
    return pack_mask((y > act_min) & (y < act_max))


# The upper bound of a clamp mask with its upper test disabled (every int8 value is below
# it): ``clamp_mask(v, lo, SIGN_MASK_HI) == sign_mask(v, lo)``, MobileTL's sign rule.
SIGN_MASK_HI = 128


def sign_mask(v_q: np.ndarray, zero: int) -> np.ndarray:
    """Packed mask of ``v_q > zero`` (MobileTL's sign rule: the gradient passes where the
    int8 value ``v_q`` stands for a real value above the one of ``zero``).

    C twin: tt_sign_mask_s8 in firmware_templates/runtime/src/tt_hard_swish.c."""
    if not -128 <= zero <= 127:
        raise UsageError(f"sign mask threshold {zero} outside int8")
    return pack_mask(np.asarray(v_q) > zero)


def apply_mask(grad: Grad, packed: np.ndarray) -> Grad:
    """The gradient with the masked-out elements set to 0 (same exponent).

    C twin: tt_apply_mask_s16 in firmware_templates/runtime/src/tt_mask.c."""
    keep = unpack_mask(packed, grad.shape)
    return Grad(np.where(keep, grad.g, np.int16(0)).astype(np.int16), grad.e)
