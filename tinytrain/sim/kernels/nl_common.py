"""Shared validation and table-lookup machinery of the nonlinear kernels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from tinytrain.errors import GraphError, UnsupportedOpError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.kernel_spec import Inputs, Outputs


def unsupported(op: Op, detail: str) -> UnsupportedOpError:
    return OpRef.of(op).unsupported(detail)


@dataclass(frozen=True)
class OpRef:
    """What a run-time error needs to name its op (kept in kernel params)."""

    name: str
    index: int
    tensors: tuple[str, ...]

    @staticmethod
    def of(op: Op) -> OpRef:
        return OpRef(op.kind.value, op.index, tuple(n for n in (*op.inputs, *op.outputs) if n is not None))

    def unsupported(self, detail: str) -> UnsupportedOpError:
        return UnsupportedOpError(self.name, self.index, self.tensors, detail)

    def describe(self) -> str:
        return f"op #{self.index} {self.name} (tensors: {', '.join(self.tensors)})"


def graph_error(op: Op, detail: str) -> GraphError:
    return GraphError(f"{op.describe()}: {detail}")


def unary_tensors(op: Op, inputs: Inputs, outputs: Outputs) -> tuple[Tensor, Tensor]:
    """The single input and output of an elementwise-shaped op (same shapes required)."""
    if len(inputs) != 1 or inputs[0] is None:
        raise graph_error(op, f"expects exactly 1 input, got {len(inputs)}")
    if len(outputs) != 1:
        raise graph_error(op, f"expects exactly 1 output, got {len(outputs)}")
    x, y = inputs[0], outputs[0]
    if x.shape != y.shape:
        raise graph_error(op, f"input shape {list(x.shape)} differs from output shape {list(y.shape)}")
    return x, y


def require_dtypes(op: Op, x: Tensor, y: Tensor, allowed: Sequence[tuple[DType, DType]]) -> None:
    if (x.dtype, y.dtype) not in allowed:
        pairs = ", ".join(f"{a.value}->{b.value}" for a, b in allowed)
        raise unsupported(op, f"{x.dtype.value} -> {y.dtype.value} is not supported (supported: {pairs})")


def qparams(op: Op, t: Tensor) -> tuple[float, int]:
    """Per-tensor (scale, zero point) of a quantized tensor, or an error naming the op."""
    if t.quant is None:
        raise graph_error(op, f"tensor {t.name!r} ({t.dtype.value}) has no quantization parameters")
    if t.quant.per_channel:
        raise unsupported(op, f"tensor {t.name!r} is quantized per channel; only per-tensor is supported")
    return t.qparams


@dataclass(frozen=True, eq=False)
class LutParams:
    """An int8/uint8 -> any elementwise map, precomputed for every input value.

    ``table[v - low]`` is the output for input value ``v``.
    """

    table: np.ndarray = field(repr=False)
    low: int


def int8_table(fn: Callable[[np.ndarray], np.ndarray], out_dtype: np.dtype, low: int = -128) -> LutParams:
    """Tabulates ``fn`` (vectorised over int64 input values) on all 256 byte values."""
    values = np.arange(low, low + 256, dtype=np.int64)
    table = np.asarray(fn(values)).astype(out_dtype)
    table.flags.writeable = False
    return LutParams(table, low)


def run_table(params: LutParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x = args[0]
    assert x is not None
    return (params.table[np.asarray(x).astype(np.int64) - params.low],)
