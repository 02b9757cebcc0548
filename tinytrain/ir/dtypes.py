"""Element types of IR tensors."""

from __future__ import annotations

import enum
from typing import Any

import numpy


class DType(enum.Enum):
    """Element type of a tensor. The value is the numpy dtype name."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    INT32 = "int32"
    INT64 = "int64"
    FLOAT32 = "float32"
    BOOL = "bool"

    @property
    def np(self) -> numpy.dtype[Any]:
        return numpy.dtype(self.value)

    @property
    def itemsize(self) -> int:
        return int(numpy.dtype(self.value).itemsize)

    @property
    def is_float(self) -> bool:
        return self is DType.FLOAT32

    @classmethod
    def from_numpy(cls, dtype: numpy.dtype[Any] | type) -> DType:
        return cls(numpy.dtype(dtype).name)
