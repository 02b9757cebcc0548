"""IR tensors: shape, element type, quantization and kind."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from tinytrain.errors import GraphError
from tinytrain.ir.dtypes import DType


class TensorKind(enum.Enum):
    """What a tensor is for; drives placement (flash vs. SRAM arena) and training."""

    INPUT = "input"  # graph input, written by the caller
    ACTIVATION = "activation"  # intermediate (or output) value, lives in the arena
    CONSTANT = "constant"  # frozen weight / bias / parameter, lives in flash
    TRAINABLE = "trainable"  # weight or bias (slice) updated on device, lives in SRAM
    GRADIENT = "gradient"  # gradient of a value, lives in the arena
    MASK = "mask"  # 1-bit activation mask saved for the backward pass
    STATE = "state"  # optimizer state (momentum, residual of updates)


@dataclass(frozen=True)
class Quantization:
    """Affine quantization ``real = scale * (q - zero_point)``.

    Per-tensor when ``axis is None`` (one scale, one zero point); per-channel along
    ``axis`` otherwise (one scale and zero point per index of that axis).
    Scales are kept as float32 values (as in a .tflite file) widened to Python floats.
    """

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        if len(self.scale) == 0 or len(self.scale) != len(self.zero_point):
            raise GraphError(
                f"quantization needs as many scales as zero points (got {len(self.scale)} and {len(self.zero_point)})"
            )
        if self.axis is None and len(self.scale) != 1:
            raise GraphError("per-tensor quantization must have exactly one scale")
        for s in self.scale:
            if not math.isfinite(s) or s <= 0.0:
                raise GraphError(f"quantization scale must be finite and > 0, got {s!r}")

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @staticmethod
    def per_tensor(scale: float, zero_point: int) -> Quantization:
        return Quantization((float(scale),), (int(zero_point),), None)


@dataclass(frozen=True)
class Tensor:
    """A typed tensor of the IR. ``data`` is set for constants (read-only array)."""

    name: str
    shape: tuple[int, ...]
    dtype: DType
    kind: TensorKind
    quant: Quantization | None = None
    data: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise GraphError(f"tensor {self.name!r}: bad shape {self.shape}")
        if self.data is not None:
            if self.data.shape != self.shape or self.data.dtype != self.dtype.np:
                raise GraphError(
                    f"tensor {self.name!r}: data {self.data.dtype}{list(self.data.shape)} "
                    f"does not match {self.dtype.value}{list(self.shape)}"
                )
            if self.data.flags.writeable:
                frozen = self.data.copy()
                frozen.flags.writeable = False
                object.__setattr__(self, "data", frozen)

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def scale(self) -> float:
        """Per-tensor scale (raises for unquantized or per-channel tensors)."""
        return self.qparams[0]

    @property
    def zero_point(self) -> int:
        return self.qparams[1]

    @property
    def qparams(self) -> tuple[float, int]:
        if self.quant is None or self.quant.per_channel:
            raise GraphError(f"tensor {self.name!r} has no per-tensor quantization")
        return self.quant.scale[0], self.quant.zero_point[0]
