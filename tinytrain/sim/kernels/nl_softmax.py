"""SOFTMAX and LOG_SOFTMAX kernels (TFLite Micro reference semantics, over the last axis).

Quantized softmax follows ``reference_ops::Softmax``: input differences to the row
maximum are rescaled to Q5.26 (``input_beta_multiplier``), exponentiated with
gemmlowp's ``exp_on_negative_values``, summed in Q12.19 and normalised with
``GetReciprocal``. LOG_SOFTMAX follows ``reference_ops::LogSoftmaxQuantized``
(log of the sum with ``log_x_for_x_greater_than_or_equal_to_1``).
Float versions use the C library's ``expf``/``logf`` and are rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import NoAttrs, Op, SoftmaxAttrs
from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels import nl_fixedpoint as fp
from tinytrain.sim.kernels.nl_common import OpRef, graph_error, qparams, require_dtypes, unary_tensors, unsupported

_SCALED_DIFF_INTEGER_BITS = 5
_ACCUMULATION_INTEGER_BITS = 12
_LOG_SOFTMAX_OUTPUT_INTEGER_BITS = 4


def softmax_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    """The reduction runs over the last axis: stacking samples on axis 0 is only safe
    when axis 0 is not that axis."""
    del op, outputs
    x = inputs[0] if inputs else None
    return x is not None and len(x.shape) >= 2


def _check_rank(op: Op, shape: tuple[int, ...]) -> None:
    if len(shape) < 1:
        raise graph_error(op, "input must have at least one dimension")


# --------------------------------------------------------------------------- SOFTMAX


@dataclass(frozen=True)
class SoftmaxParams:
    input_multiplier: int
    input_left_shift: int
    diff_min: int
    out_bits: int  # 8 or 16
    out_dtype: str
    op: OpRef


def prepare_softmax(op: Op, inputs: Inputs, outputs: Outputs) -> SoftmaxParams:
    if not isinstance(op.attrs, SoftmaxAttrs):
        raise graph_error(op, f"expects SoftmaxAttrs, got {type(op.attrs).__name__}")
    x, y = unary_tensors(op, inputs, outputs)
    _check_rank(op, x.shape)
    if x.dtype is DType.FLOAT32:
        raise unsupported(op, "float32 SOFTMAX uses the C library's expf in TFLite Micro and is not bit-reproducible")
    if x.dtype is DType.INT16:
        raise unsupported(op, "int16 SOFTMAX uses an expf-generated table in TFLite Micro; not supported")
    require_dtypes(op, x, y, ((DType.INT8, DType.INT8), (DType.INT8, DType.INT16)))
    in_scale, _ = qparams(op, x)
    out_scale, out_zp = qparams(op, y)
    if y.dtype is DType.INT8:
        if out_zp != -128 or out_scale != 1.0 / 256:
            raise unsupported(
                op, f"int8 SOFTMAX output must have scale 1/256 and zero point -128, got {out_scale!r}, {out_zp}"
            )
        out_bits = 8
    else:
        target = np.float32(1.0 / 65536)
        delta = abs(np.float32(out_scale) - target)
        if out_zp != -32768 or delta > np.float32(0.001) * target:
            raise unsupported(
                op, f"int16 SOFTMAX output must have scale ~1/65536 and zero point -32768, got {out_scale!r}, {out_zp}"
            )
        out_bits = 16
    beta = float(np.float32(op.attrs.beta))  # TfLiteSoftmaxParams stores beta as a float
    real, multiplier, left_shift = fp.preprocess_softmax_scaling(beta, in_scale, _SCALED_DIFF_INTEGER_BITS)
    if not real > 1.0:
        raise unsupported(op, f"beta * input scale = {beta * in_scale!r} is too small (TFLite Micro aborts)")
    radius = fp.calculate_input_radius(_SCALED_DIFF_INTEGER_BITS, left_shift)
    return SoftmaxParams(multiplier, left_shift, -radius, out_bits, y.dtype.value, OpRef.of(op))


def _sum_of_exps(exps_q0: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Row sums (last axis, kept) of Rescale<12>(exp) where valid, with int32 wrap."""
    contrib = np.where(valid, fp.rescale(exps_q0, 0, _ACCUMULATION_INTEGER_BITS), np.int64(0))
    return fp.wrap_int32(contrib.sum(axis=-1, keepdims=True))


def run_softmax(params: SoftmaxParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_softmax_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8 -> int8)."""
    raw = args[0]
    assert raw is not None
    out_dtype = np.dtype(params.out_dtype)
    if raw.size == 0:
        return (np.empty(raw.shape, dtype=out_dtype),)
    x = np.asarray(raw).astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= params.diff_min
    scaled = fp.multiply_by_quantized_multiplier_greater_than_one(
        diff, params.input_multiplier, params.input_left_shift
    )
    exps = fp.exp_on_negative_values(scaled, _SCALED_DIFF_INTEGER_BITS)
    total = _sum_of_exps(exps, valid)
    reciprocal, bits_over_unit = fp.get_reciprocal(total, _ACCUMULATION_INTEGER_BITS)
    exponent = bits_over_unit + 31 - params.out_bits
    if np.any((exponent < 0) | (exponent > 31)):
        # TFLITE_CHECK(0 <= exponent && exponent <= 31) aborts TFLite Micro here.
        raise params.op.unsupported("sum of exponentials too large for the int8/int16 output (TFLite Micro aborts)")
    out_min = -(1 << (params.out_bits - 1))
    out_max = (1 << (params.out_bits - 1)) - 1
    unsat = fp.rounding_divide_by_pot(fp.mul(reciprocal, exps), exponent)
    out = np.clip(unsat + out_min, out_min, out_max)
    return (np.where(valid, out, np.int64(out_min)).astype(out_dtype),)


# --------------------------------------------------------------------------- LOG_SOFTMAX


@dataclass(frozen=True)
class LogSoftmaxParams:
    input_multiplier: int
    input_left_shift: int
    reverse_scaling_divisor: int
    reverse_scaling_right_shift: int
    diff_min: int
    op: OpRef


def prepare_log_softmax(op: Op, inputs: Inputs, outputs: Outputs) -> LogSoftmaxParams:
    if not isinstance(op.attrs, NoAttrs):
        raise graph_error(op, f"unexpected attributes {type(op.attrs).__name__}")
    x, y = unary_tensors(op, inputs, outputs)
    _check_rank(op, x.shape)
    if x.dtype is DType.FLOAT32:
        raise unsupported(op, "float32 LOG_SOFTMAX uses expf/logf in TFLite Micro and is not bit-reproducible")
    require_dtypes(op, x, y, ((DType.INT8, DType.INT8),))
    in_scale, _ = qparams(op, x)
    out_scale, out_zp = qparams(op, y)
    if out_scale != 16.0 / 256 or out_zp != 127:
        raise unsupported(
            op, f"int8 LOG_SOFTMAX output must have scale 16/256 and zero point 127, got {out_scale!r}, {out_zp}"
        )
    real, multiplier, left_shift, real_reverse, reverse_divisor, reverse_shift = fp.preprocess_log_softmax_scaling_exp(
        1.0, in_scale, _SCALED_DIFF_INTEGER_BITS
    )
    if not real > 1.0:
        raise unsupported(op, f"input scale {in_scale!r} is too small (TFLite Micro aborts)")
    if not 0.0 < real_reverse < 1.0 or reverse_shift > 0:
        raise unsupported(
            op, f"input scale {in_scale!r} gives an invalid reverse scaling divisor (TFLite Micro aborts)"
        )
    radius = fp.calculate_input_radius(_SCALED_DIFF_INTEGER_BITS, left_shift)
    return LogSoftmaxParams(multiplier, left_shift, reverse_divisor, -reverse_shift, -radius, OpRef.of(op))


def run_log_softmax(params: LogSoftmaxParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    raw = args[0]
    assert raw is not None
    if raw.size == 0:
        return (np.empty(raw.shape, dtype=np.int8),)
    x = np.asarray(raw).astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    valid = diff >= params.diff_min
    in_q5 = multiply_by_quantized_multiplier(diff, params.input_multiplier, params.input_left_shift)
    exps = fp.exp_on_negative_values(in_q5, _SCALED_DIFF_INTEGER_BITS)
    total = _sum_of_exps(exps, valid)
    if np.any(total <= 0):
        # The Q12.19 sum wrapped (>= 4096 terms near the maximum): TFLite Micro then
        # shifts by negative amounts (undefined behaviour, platform-dependent bytes).
        raise params.op.unsupported("sum of exponentials overflows int32 (undefined behaviour in TFLite Micro)")
    log_sum = fp.log_x_for_x_greater_than_or_equal_to_1(total, _ACCUMULATION_INTEGER_BITS, _SCALED_DIFF_INTEGER_BITS)
    shifted_log_sum = fp.add(log_sum, fp.INT32_MIN)
    adjusted_diff_min = np.maximum(
        np.int64(params.diff_min - 1),
        multiply_by_quantized_multiplier(
            shifted_log_sum, params.reverse_scaling_divisor, -params.reverse_scaling_right_shift
        ),
    )
    shift = 31 - _SCALED_DIFF_INTEGER_BITS - _LOG_SOFTMAX_OUTPUT_INTEGER_BITS
    out = np.clip(fp.rounding_divide_by_pot(fp.sub(in_q5, log_sum), shift) + 127, -128, 127)
    return (np.where(diff > adjusted_diff_min, out, np.int64(-128)).astype(np.int8),)
