"""LOGISTIC, TANH and HARD_SWISH kernels (TFLite Micro reference semantics).

int8 versions are elementwise over 256 possible input values: ``prepare`` runs the
exact fixed-point computation of TFLite Micro on all of them and ``run`` is a table
lookup. The float32 HARD_SWISH is plain IEEE float arithmetic and is reproduced
exactly; float32 LOGISTIC / TANH depend on the C library's ``expf`` / ``tanhf`` and
are rejected rather than approximated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import NoAttrs, Op
from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels import nl_fixedpoint as fp
from tinytrain.sim.kernels.nl_common import (
    LutParams,
    graph_error,
    int8_table,
    qparams,
    require_dtypes,
    unary_tensors,
    unsupported,
)

_INT8 = ((DType.INT8, DType.INT8),)
_FLOAT_EXP_DETAIL = (
    "float32 {name} is computed with the C library's transcendental functions in TFLite Micro "
    "and cannot be reproduced bit-exactly; quantize the model to int8"
)


def _no_attrs(op: Op) -> None:
    if not isinstance(op.attrs, NoAttrs):
        raise graph_error(op, f"unexpected attributes {type(op.attrs).__name__}")


def _q4_input_params(op: Op, input_scale: float) -> tuple[int, int, int]:
    """Prepare of TFLM's int8 LOGISTIC / TANH: Q4.27 input multiplier and radius.

    Returns ``(multiplier, left_shift, input_range_radius)``.
    """
    real = input_scale * float(1 << (31 - 4))
    mantissa, left_shift = math.frexp(real)
    multiplier = fp.round_half_away(mantissa * float(1 << 31))
    if multiplier >= 1 << 31:
        raise unsupported(op, f"input scale {input_scale!r} overflows TFLite Micro's int32 input multiplier")
    if not 0 <= left_shift < 63:  # TFLM's CalculateInputRadius shifts an int64 by left_shift
        raise unsupported(op, f"input scale {input_scale!r} is out of range (undefined shift in CalculateInputRadius)")
    radius = fp.calculate_input_radius(4, left_shift, 31)
    # Shifts above 31 only occur with radius 0, where every input saturates and the
    # multiplier is never used: clamp so the (ignored) numpy arithmetic stays in range.
    return multiplier, min(left_shift, 31), radius


def _q4_prepare(op: Op, inputs: Inputs) -> tuple[int, int, int, int]:
    """(input zero point, multiplier, left shift, radius) of an int8 LOGISTIC / TANH."""
    x = inputs[0]
    assert x is not None
    scale, zero_point = qparams(op, x)
    multiplier, left_shift, radius = _q4_input_params(op, scale)
    return zero_point, multiplier, left_shift, radius


# --------------------------------------------------------------------------- LOGISTIC


def prepare_logistic(op: Op, inputs: Inputs, outputs: Outputs) -> LutParams:
    _no_attrs(op)
    x, y = unary_tensors(op, inputs, outputs)
    if x.dtype is DType.FLOAT32:
        raise unsupported(op, _FLOAT_EXP_DETAIL.format(name="LOGISTIC"))
    require_dtypes(op, x, y, _INT8)
    _, out_zp = qparams(op, y)
    if out_zp != -128:
        raise unsupported(op, f"int8 LOGISTIC needs output zero point -128 (TFLite Micro), got {out_zp}")
    in_zp, multiplier, left_shift, radius = _q4_prepare(op, inputs)

    def fn(v: np.ndarray) -> np.ndarray:
        centred = v - in_zp
        in_q4 = multiply_by_quantized_multiplier(centred, multiplier, left_shift)
        out_q0 = fp.logistic(in_q4, 4)
        out = np.clip(fp.rounding_divide_by_pot(out_q0, 31 - 8) - 128, -128, 127)
        out = np.where(centred >= radius, np.int64(127), out)
        return np.where(centred <= -radius, np.int64(-128), out)

    return int8_table(fn, np.dtype(np.int8))


# --------------------------------------------------------------------------- TANH


def prepare_tanh(op: Op, inputs: Inputs, outputs: Outputs) -> LutParams:
    _no_attrs(op)
    x, y = unary_tensors(op, inputs, outputs)
    if x.dtype is DType.FLOAT32:
        raise unsupported(op, _FLOAT_EXP_DETAIL.format(name="TANH"))
    require_dtypes(op, x, y, _INT8)
    # TFLM does not read the output quantization of an int8 TANH: the result is
    # always produced on scale 1/128, zero point 0 (what the converter emits).
    qparams(op, y)
    in_zp, multiplier, left_shift, radius = _q4_prepare(op, inputs)

    def fn(v: np.ndarray) -> np.ndarray:
        centred = v - in_zp
        in_q4 = multiply_by_quantized_multiplier(centred, multiplier, left_shift)
        out_q0 = fp.tanh(in_q4, 4)
        out = np.clip(fp.rounding_divide_by_pot(out_q0, 31 - 7), -128, 127)
        out = np.where(centred >= radius, np.int64(127), out)
        return np.where(centred <= -radius, np.int64(-128), out)

    return int8_table(fn, np.dtype(np.int8))


# --------------------------------------------------------------------------- HARD_SWISH


@dataclass(frozen=True)
class FloatHardSwishParams:
    pass


def _downscale_to_int16(multiplier: int) -> int:
    """TFLite ``DownScaleInt32ToInt16Multiplier``."""
    if multiplier >= fp.INT32_MAX - (1 << 15):
        return fp.INT16_MAX
    return (multiplier + (1 << 15)) >> 16


def prepare_hard_swish(op: Op, inputs: Inputs, outputs: Outputs) -> LutParams | FloatHardSwishParams:
    _no_attrs(op)
    x, y = unary_tensors(op, inputs, outputs)
    require_dtypes(op, x, y, ((DType.INT8, DType.INT8), (DType.FLOAT32, DType.FLOAT32)))
    if x.dtype is DType.FLOAT32:
        return FloatHardSwishParams()
    in_scale, in_zp = qparams(op, x)
    out_scale, out_zp = qparams(op, y)
    # TFLM computes the scales in float32, then widens the quotients to double.
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(in_scale)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    out_q, out_exp = quantize_multiplier(float(hires_input_scale / np.float32(out_scale)))
    out_q16 = _downscale_to_int16(out_q)
    if out_exp > 0:
        raise unsupported(op, "TFLite Micro requires output_multiplier_exponent <= 0 (output scale too small)")
    rel_q, rel_exp = quantize_multiplier(float(hires_input_scale / reluish_scale))
    rel_q16 = _downscale_to_int16(rel_q)
    if rel_exp > 31:  # SaturatingLeftShift would compute 1 << (exponent - 1) in an int (undefined in C)
        raise unsupported(op, f"input scale {in_scale!r} is too large")

    def fn(v: np.ndarray) -> np.ndarray:
        centred = fp.wrap_int16(v - in_zp)
        hires = fp.wrap_int16(centred * (1 << 7))
        preshift_out = fp.saturating_rounding_doubling_high_mul16(hires, out_q16)
        reluish = hires
        if rel_exp > 0:
            reluish = fp.saturating_left_shift16(reluish, rel_exp - 1)
        reluish = fp.saturating_rounding_doubling_high_mul16(reluish, rel_q16)
        if rel_exp > 0:
            reluish = fp.saturating_left_shift16(reluish, 1)
        if rel_exp < 0:
            reluish = fp.rounding_divide_by_pot16(reluish, -rel_exp)
        reluish = fp.wrap_int16((reluish + (1 << 15)) >> 1)
        preshift_value = fp.saturating_doubling_high_mul16(reluish, preshift_out)
        out = fp.rounding_divide_by_pot16(preshift_value, -out_exp)
        out = fp.wrap_int16(out + out_zp)
        return np.clip(out, -128, 127)

    return int8_table(fn, np.dtype(np.int8))


def _float_hard_swish(x: np.ndarray) -> np.ndarray:
    """``in * min(6, max(0, in + 3)) / 6`` in float32 with std::min/max's NaN behaviour."""
    x = np.asarray(x, dtype=np.float32)
    zero, three, six = np.float32(0.0), np.float32(3.0), np.float32(6.0)
    with np.errstate(all="ignore"):
        shifted = x + three
        relu = np.where(zero < shifted, shifted, zero)  # std::max(0, v) == (0 < v) ? v : 0
        relu6 = np.where(relu < six, relu, six)  # std::min(6, v) == (v < 6) ? v : 6
        return ((x * relu6) / six).astype(np.float32)


def run_hard_swish(
    params: LutParams | FloatHardSwishParams, args: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, ...]:
    """C twin (int8): tt_hard_swish_s8 in firmware_templates/runtime/src/tt_hard_swish.c."""
    x = args[0]
    assert x is not None
    if isinstance(params, FloatHardSwishParams):
        return (_float_hard_swish(x),)
    return (params.table[np.asarray(x).astype(np.int64) - params.low],)
