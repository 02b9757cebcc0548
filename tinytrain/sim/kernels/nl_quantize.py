"""QUANTIZE and DEQUANTIZE kernels (TFLite Micro ``quantize_common.cc`` / ``dequantize.cc``).

QUANTIZE float32 -> int: ``(int32)roundf(x / (float)scale) + zero_point``, clamped;
the division is float32 and ``roundf`` rounds halves away from zero. Where the C cast
of a float outside the int32 range (or NaN) is undefined, the value x86-64 produces
(``INT32_MIN``, what the TFLite Micro host build computes) is used.
QUANTIZE int -> int: ``Requantize`` with ``QuantizeMultiplier(in_scale / out_scale)``.
DEQUANTIZE: ``(float)(double(scale) * (q - zero_point))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import NoAttrs, Op
from tinytrain.sim.fixedpoint import INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, wrap_int32
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.nl_common import graph_error, qparams, require_dtypes, unary_tensors, unsupported

_REQUANTIZE_PAIRS = (
    (DType.INT16, DType.INT8),
    (DType.INT8, DType.INT8),
    (DType.INT8, DType.UINT8),
    (DType.UINT8, DType.INT8),
    (DType.INT8, DType.INT16),
    (DType.INT8, DType.INT32),
    (DType.INT16, DType.INT16),
    (DType.INT16, DType.INT32),
    (DType.INT32, DType.INT8),
    (DType.INT32, DType.INT16),
)
_QUANTIZE_PAIRS = ((DType.FLOAT32, DType.INT8), (DType.FLOAT32, DType.INT16), *_REQUANTIZE_PAIRS)
_DEQUANTIZE_PAIRS = ((DType.INT8, DType.FLOAT32), (DType.INT16, DType.FLOAT32), (DType.UINT8, DType.FLOAT32))


def _no_attrs(op: Op) -> None:
    if not isinstance(op.attrs, NoAttrs):
        raise graph_error(op, f"unexpected attributes {type(op.attrs).__name__}")


def _int_range(dtype: DType) -> tuple[int, int]:
    info = np.iinfo(dtype.np)
    return int(info.min), int(info.max)


@dataclass(frozen=True)
class AffineQuantizeParams:
    """float32 -> int."""

    scale: float  # the output scale as a float32 value
    zero_point: int
    out_dtype: str


@dataclass(frozen=True)
class RequantizeParams:
    """int -> int."""

    multiplier: int
    shift: int
    input_zero_point: int
    output_zero_point: int
    out_dtype: str


def prepare_quantize(op: Op, inputs: Inputs, outputs: Outputs) -> AffineQuantizeParams | RequantizeParams:
    _no_attrs(op)
    x, y = unary_tensors(op, inputs, outputs)
    require_dtypes(op, x, y, _QUANTIZE_PAIRS)
    out_scale, out_zp = qparams(op, y)
    if x.dtype is DType.FLOAT32:
        return AffineQuantizeParams(float(np.float32(out_scale)), out_zp, y.dtype.value)
    in_scale, in_zp = qparams(op, x)
    multiplier, shift = quantize_multiplier(in_scale / out_scale)
    if shift > 31:  # MultiplyByQuantizedMultiplier would compute 1 << shift in an int (undefined in C)
        raise unsupported(op, f"input scale {in_scale!r} is too large for output scale {out_scale!r}")
    return RequantizeParams(multiplier, shift, in_zp, out_zp, y.dtype.value)


def _round_half_away_f32(q: np.ndarray) -> np.ndarray:
    """``roundf`` on float32 values, computed exactly in float64."""
    q64 = q.astype(np.float64)
    mag = np.abs(q64)
    r = np.floor(mag)
    r = r + ((mag - r) >= 0.5)
    return np.copysign(r, q64)


def _float_to_int32_x86(r: np.ndarray) -> np.ndarray:
    """``static_cast<int32_t>(float)`` as x86-64 does it (cvttss2si): INT32_MIN when out of range or NaN."""
    in_range = (r >= -(2.0**31)) & (r < 2.0**31)  # False for NaN
    safe = np.where(in_range, r, 0.0)
    return np.where(in_range, safe.astype(np.int64), np.int64(INT32_MIN))


def _affine_quantize(params: AffineQuantizeParams, x: np.ndarray) -> np.ndarray:
    lo, hi = _int_range(DType(params.out_dtype))
    with np.errstate(all="ignore"):
        q = np.asarray(x, dtype=np.float32) / np.float32(params.scale)
        rounded = _round_half_away_f32(q)
    unclamped = wrap_int32(_float_to_int32_x86(rounded) + params.zero_point)
    return np.clip(unclamped, lo, hi).astype(np.dtype(params.out_dtype))


def _requantize(params: RequantizeParams, x: np.ndarray) -> np.ndarray:
    lo, hi = _int_range(DType(params.out_dtype))
    centred = wrap_int32(np.asarray(x).astype(np.int64) - params.input_zero_point)
    out = wrap_int32(
        multiply_by_quantized_multiplier(centred, params.multiplier, params.shift) + params.output_zero_point
    )
    return np.clip(out, lo, hi).astype(np.dtype(params.out_dtype))


def run_quantize(
    params: AffineQuantizeParams | RequantizeParams, args: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, ...]:
    x = args[0]
    assert x is not None
    if isinstance(params, AffineQuantizeParams):
        return (_affine_quantize(params, x),)
    return (_requantize(params, x),)


@dataclass(frozen=True)
class DequantizeParams:
    scale: float  # the input scale (float32 value) as a double
    zero_point: int


def prepare_dequantize(op: Op, inputs: Inputs, outputs: Outputs) -> DequantizeParams:
    _no_attrs(op)
    x, y = unary_tensors(op, inputs, outputs)
    require_dtypes(op, x, y, _DEQUANTIZE_PAIRS)
    scale, zp = qparams(op, x)
    return DequantizeParams(float(np.float32(scale)), zp)


def run_dequantize(params: DequantizeParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x = args[0]
    assert x is not None
    centred = (np.asarray(x).astype(np.int64) - params.zero_point).astype(np.float64)
    return ((params.scale * centred).astype(np.float32),)
