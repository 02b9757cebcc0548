"""RSQRT kernel (TFLite Micro ``elementwise.cc``).

int8: the output multiplier is ``1 / (sqrtf(input_scale) * output_scale)`` (float32
product widened to double), and each value goes through
``GetInvSqrtQuantizedMultiplierExp`` and two ``MultiplyByQuantizedMultiplier`` calls.
TFLite Micro fails ``Invoke`` when an input is below the zero point (negative real
value); the simulator raises :class:`~tinytrain.errors.UsageError` then.
float32: ``1.f / sqrtf(x)``, exact IEEE arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import NoAttrs, Op
from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels import nl_fixedpoint as fp
from tinytrain.sim.kernels.nl_common import (
    LutParams,
    OpRef,
    graph_error,
    int8_table,
    qparams,
    require_dtypes,
    unary_tensors,
    unsupported,
)

_KSHIFT = 20


@dataclass(frozen=True)
class RsqrtParams:
    table: LutParams | None  # None for float32
    input_zero_point: int
    op: OpRef


def prepare_rsqrt(op: Op, inputs: Inputs, outputs: Outputs) -> RsqrtParams:
    if not isinstance(op.attrs, NoAttrs):
        raise graph_error(op, f"unexpected attributes {type(op.attrs).__name__}")
    x, y = unary_tensors(op, inputs, outputs)
    require_dtypes(op, x, y, ((DType.INT8, DType.INT8), (DType.FLOAT32, DType.FLOAT32)))
    if x.dtype is DType.FLOAT32:
        return RsqrtParams(None, 0, OpRef.of(op))
    in_scale, in_zp = qparams(op, x)
    out_scale, out_zp = qparams(op, y)
    product = np.float32(np.sqrt(np.float32(in_scale))) * np.float32(out_scale)
    multiplier, shift = quantize_multiplier(1.0 / float(product))
    if not -31 <= shift - _KSHIFT <= 31:
        # MultiplyByQuantizedMultiplier would shift an int32 by 32 or more (undefined in C)
        raise unsupported(op, f"input/output scales {in_scale!r}, {out_scale!r} are too far apart")

    def fn(v: np.ndarray) -> np.ndarray:
        value = v - in_zp
        inv_sqrt, inv_shift = fp.get_inv_sqrt_quantized_multiplier_exp(np.maximum(value, 0), -1)
        data = multiply_by_quantized_multiplier(np.ones_like(value), inv_sqrt, inv_shift + _KSHIFT)
        out = fp.add(multiply_by_quantized_multiplier(data, multiplier, shift - _KSHIFT), out_zp)
        out = np.clip(out, -128, 127)
        return np.where(value == 0, np.int64(127), out)

    return RsqrtParams(int8_table(fn, np.dtype(np.int8)), in_zp, OpRef.of(op))


def run_rsqrt(params: RsqrtParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_lut_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8: the table)."""
    x = args[0]
    assert x is not None
    if params.table is None:
        with np.errstate(all="ignore"):
            xf = np.asarray(x, dtype=np.float32)
            return ((np.float32(1.0) / np.sqrt(xf)).astype(np.float32),)
    values = np.asarray(x).astype(np.int64)
    if values.size and int(values.min()) < params.input_zero_point:
        raise UsageError(
            f"{params.op.describe()}: input below its zero point (negative real value); "
            'TFLite Micro fails Invoke ("Rsqrt is only defined for positive values")'
        )
    return (params.table.table[values - params.table.low],)
