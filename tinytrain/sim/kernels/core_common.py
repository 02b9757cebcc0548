"""Validation and quantization-parameter helpers shared by the core kernels.

Every ``prepare`` of the core kernels checks arity, attribute type, element types,
shapes and quantization of its IR tensors with these helpers, so that a corrupt or
unsupported model always ends in :class:`GraphError` (inconsistent graph) or
:class:`UnsupportedOpError` (valid, but not something TFLite Micro's reference kernels
run), never in a stray ``IndexError``/``ValueError``.

Float arithmetic that TFLite Micro's Prepare functions do in single precision
(``float`` in C) is reproduced with ``np.float32`` scalars; double precision
(``double`` in C) is a Python float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tinytrain.errors import GraphError, UnsupportedOpError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, Op
from tinytrain.ir.tensor import Tensor

INT8_MIN = -128
INT8_MAX = 127
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)


def unsupported(op: Op, detail: str) -> UnsupportedOpError:
    names = tuple(n for n in (*op.inputs, *op.outputs) if n is not None)
    return UnsupportedOpError(op.kind.value, op.index, names, detail)


def graph_error(op: Op, detail: str) -> GraphError:
    return GraphError(f"{op.describe()}: {detail}")


def check_arity(
    op: Op,
    inputs: Sequence[Tensor | None],
    outputs: Sequence[Tensor],
    n_inputs: Sequence[int],
    n_outputs: int = 1,
    optional: Sequence[int] = (),
) -> None:
    """Checks the number of inputs/outputs and that required inputs are present."""
    if len(inputs) not in n_inputs:
        want = " or ".join(str(n) for n in n_inputs)
        raise graph_error(op, f"expects {want} inputs, got {len(inputs)}")
    if len(outputs) != n_outputs:
        raise graph_error(op, f"expects {n_outputs} outputs, got {len(outputs)}")
    for i, t in enumerate(inputs):
        if t is None and i not in optional:
            raise graph_error(op, f"input {i} is missing")


def tensor_at(op: Op, inputs: Sequence[Tensor | None], i: int) -> Tensor:
    if i >= len(inputs):
        raise graph_error(op, f"input {i} is missing")
    t = inputs[i]
    if t is None:
        raise graph_error(op, f"input {i} is missing")
    return t


def check_dtype(op: Op, t: Tensor, allowed: Sequence[DType], role: str) -> None:
    if t.dtype not in allowed:
        names = ", ".join(d.value for d in allowed)
        raise unsupported(op, f"{role} {t.name!r} has type {t.dtype.value}, supported: {names}")


def check_rank(op: Op, t: Tensor, ranks: Sequence[int], role: str) -> None:
    if len(t.shape) not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise graph_error(op, f"{role} {t.name!r} must have rank {want}, has shape {list(t.shape)}")


def check_shape(op: Op, t: Tensor, shape: Sequence[int], role: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise graph_error(op, f"{role} {t.name!r} has shape {list(t.shape)}, expected {list(shape)}")


def per_tensor_qparams(op: Op, t: Tensor, role: str) -> tuple[float, int]:
    """Scale and zero point of a per-tensor quantized tensor (TFLite's ``params``)."""
    q = t.quant
    if q is None:
        raise unsupported(op, f"{role} {t.name!r} ({t.dtype.value}) has no quantization parameters")
    if len(q.scale) != 1:
        raise unsupported(op, f"{role} {t.name!r} must be quantized per tensor, has {len(q.scale)} scales")
    return float(q.scale[0]), int(q.zero_point[0])


def const_data(op: Op, t: Tensor, role: str) -> np.ndarray:
    if t.data is None:
        raise unsupported(op, f"non-constant {role} tensor {t.name!r} is not supported")
    return t.data


def const_int_vector(op: Op, t: Tensor, role: str, dtypes: Sequence[DType] = (DType.INT32,)) -> tuple[int, ...]:
    """A constant integer parameter tensor (axes, permutation, ...) as a tuple of ints."""
    check_dtype(op, t, dtypes, role)
    data = const_data(op, t, role)
    if data.ndim > 1:
        raise graph_error(op, f"{role} tensor {t.name!r} must have rank 0 or 1, has shape {list(t.shape)}")
    return tuple(int(v) for v in data.reshape(-1))


def round_half_away(x: float) -> int:
    """C's ``round``: halves away from zero (exact for any double)."""
    a = abs(x)
    r = math.floor(a)
    if a - r >= 0.5:  # a - floor(a) is exact for doubles
        r += 1
    return int(r) if x >= 0 else -int(r)


def f32(x: float) -> np.float32:
    return np.float32(x)


def quantize_f32(op: Op, value: float, scale: float, zero_point: int) -> int:
    """TFLite's kernel_util ``Quantize``: ``zp + round(float(value) / float(scale))``."""
    v = float(f32(value) / f32(scale))
    if not math.isfinite(v) or not (float(INT32_MIN) <= v <= float(INT32_MAX) + 1.0):
        raise unsupported(op, f"activation bound {value} does not fit int32 at scale {scale}")
    return zero_point + round_half_away(v)


def quantized_activation_range(
    op: Op, activation: Activation, scale: float, zero_point: int, qmin: int = INT8_MIN, qmax: int = INT8_MAX
) -> tuple[int, int]:
    """TFLite's ``CalculateActivationRangeQuantized`` for a fused activation."""
    if activation is Activation.NONE:
        return qmin, qmax
    if activation is Activation.RELU:
        return max(qmin, quantize_f32(op, 0.0, scale, zero_point)), qmax
    if activation is Activation.RELU6:
        return (
            max(qmin, quantize_f32(op, 0.0, scale, zero_point)),
            min(qmax, quantize_f32(op, 6.0, scale, zero_point)),
        )
    if activation is Activation.RELU_N1_TO_1:
        return (
            max(qmin, quantize_f32(op, -1.0, scale, zero_point)),
            min(qmax, quantize_f32(op, 1.0, scale, zero_point)),
        )
    raise unsupported(op, f"fused activation {activation.value}")  # pragma: no cover - enum is closed


def float_activation_range(op: Op, activation: Activation) -> tuple[np.float32, np.float32]:
    """TFLite's ``CalculateActivationRange<float>`` (NONE clamps to the finite range)."""
    if activation is Activation.NONE:
        return f32(-FLOAT32_MAX), f32(FLOAT32_MAX)
    if activation is Activation.RELU:
        return f32(0.0), f32(FLOAT32_MAX)
    if activation is Activation.RELU6:
        return f32(0.0), f32(6.0)
    if activation is Activation.RELU_N1_TO_1:
        return f32(-1.0), f32(1.0)
    raise unsupported(op, f"fused activation {activation.value}")  # pragma: no cover - enum is closed


def clamp_float(x: np.ndarray, lo: np.float32, hi: np.float32) -> np.ndarray:
    """TFLite's ``ActivationFunctionWithMinMax``: ``std::min(std::max(x, lo), hi)``.

    ``std::max(a, b)`` is ``a < b ? b : a`` (NaN and -0.0 pass through), which
    ``np.maximum`` does not reproduce, hence the explicit comparisons.
    """
    x = np.where(x < lo, lo, x)
    return np.where(hi < x, hi, x).astype(np.float32, copy=False)


def broadcast_shape(op: Op, a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        raise graph_error(op, f"shapes {list(a)} and {list(b)} do not broadcast") from None


def runtime_shape(ir_shape: Sequence[int], total: int) -> tuple[int, ...]:
    """The IR shape of an output holding ``total`` values at run time.

    Axis 0 is scaled when the runtime carries a batch of N samples where the IR says 1.
    """
    shape = tuple(ir_shape)
    if math.prod(shape) == total or not shape:
        return shape
    rest = math.prod(shape[1:])
    return (total // rest if rest else 0, *shape[1:])


def leading_one(inp: Tensor | None, out: Tensor | None) -> bool:
    """Both tensors exist and have a leading (batch) dimension of 1."""
    return (
        inp is not None
        and out is not None
        and len(inp.shape) >= 1
        and len(out.shape) >= 1
        and inp.shape[0] == 1
        and out.shape[0] == 1
    )
