"""Backward of ADD, PAD / PADV2 and RESHAPE / SQUEEZE / EXPAND_DIMS.

* ADD: ``y = x1 + x2`` (in real values) inside the output clamp, so the masked output
  gradient passes unchanged (same mantissas, same exponent) to both inputs. An input
  that was broadcast receives the int32 sum over the broadcast axes, normalized.
* PAD: the input gradient is the slice of the output gradient that the input filled.
* RESHAPE and friends: the same mantissas in the input's shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import ElementwiseAttrs, Op
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import (
    check_arity,
    check_dtype,
    const_data,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    tensor_at,
    unsupported,
)
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, normalize

MAX_BROADCAST_SUM = 1 << (31 - GRAD_BITS - 1)  # count · 2^14 < 2^31


# ----------------------------------------------------------------------------- ADD


@dataclass(frozen=True, eq=False)
class AddBwdParams:
    out_shape: tuple[int, ...]
    in_shapes: tuple[tuple[int, ...], tuple[int, ...]]
    clamp: tuple[int, int]  # (act_min, act_max) of the int8 output


def _broadcast_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    return tuple(i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a == 1 and b != 1)


def prepare_add_backward(op: Op, inputs: Inputs, outputs: Outputs) -> AddBwdParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, ElementwiseAttrs):
        raise graph_error(op, "attributes must be ElementwiseAttrs")
    a, b, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    for t, role in ((a, "input 0"), (b, "input 1"), (y, "output")):
        check_dtype(op, t, (DType.INT8,), role)
    for t in (a, b):
        if len(t.shape) > len(y.shape):
            raise graph_error(op, f"input {t.name!r} has a higher rank than the output")
        count = y.size // max(t.size, 1)  # output elements summed into one input element
        if count >= MAX_BROADCAST_SUM:
            raise unsupported(op, f"input {t.name!r} is broadcast {count} times: too many for an int32 gradient sum")
    s_out, z_out = per_tensor_qparams(op, y, "output")
    clamp = quantized_activation_range(op, op.attrs.activation, s_out, z_out)
    return AddBwdParams(y.shape, (a.shape, b.shape), clamp)


def _to_input(g_y: Grad, in_shape: tuple[int, ...]) -> Grad:
    if g_y.shape == in_shape:
        return g_y
    axes = _broadcast_axes(in_shape, g_y.shape)
    acc = g_y.g.astype(np.int64).sum(axis=axes, keepdims=True) if axes else g_y.g.astype(np.int64)
    return normalize(acc.reshape(in_shape), g_y.e)


def add_input_grads(p: AddBwdParams, g_y: Grad) -> tuple[Grad, Grad]:
    """Gradients of both ADD inputs from the (masked) output gradient.

    C twin: tt_add_bwd_s16 (one input per call) in firmware_templates/runtime/src/tt_shape_bwd.c."""
    return _to_input(g_y, p.in_shapes[0]), _to_input(g_y, p.in_shapes[1])


# ----------------------------------------------------------------------------- PAD


@dataclass(frozen=True, eq=False)
class PadBwdParams:
    in_shape: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]


def prepare_pad_backward(op: Op, inputs: Inputs, outputs: Outputs) -> PadBwdParams:
    check_arity(op, inputs, outputs, (2, 3))
    x, pad_t, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    flat = [int(v) for v in const_data(op, pad_t, "paddings").reshape(-1)]
    if len(flat) != 2 * len(x.shape):
        raise graph_error(op, f"paddings {flat} do not match rank {len(x.shape)}")
    pads = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(len(x.shape)))
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise unsupported(op, f"negative paddings {list(pads)}")
    if tuple(d + lo + hi for d, (lo, hi) in zip(x.shape, pads, strict=True)) != y.shape:
        raise graph_error(op, f"output shape {list(y.shape)} does not match the padded input")
    return PadBwdParams(x.shape, pads)


def pad_input_grad(p: PadBwdParams, g_y: Grad) -> Grad:
    """C twin: tt_pad_bwd_s16 in firmware_templates/runtime/src/tt_shape_bwd.c."""
    index = tuple(slice(lo, lo + d) for d, (lo, _) in zip(p.in_shape, p.pads, strict=True))
    return Grad(np.ascontiguousarray(g_y.g[index]), g_y.e)


# ------------------------------------------------------------------------- RESHAPE


@dataclass(frozen=True, eq=False)
class ReshapeBwdParams:
    in_shape: tuple[int, ...]


def prepare_reshape_backward(op: Op, inputs: Inputs, outputs: Outputs) -> ReshapeBwdParams:
    x, y = tensor_at(op, inputs, 0), outputs[0]
    if len(outputs) != 1 or x.size != y.size:
        raise graph_error(op, f"cannot reshape {list(y.shape)} back to {list(x.shape)}")
    return ReshapeBwdParams(x.shape)


def reshape_input_grad(p: ReshapeBwdParams, g_y: Grad) -> Grad:
    """C twin: tt_reshape_bwd_s16 in firmware_templates/runtime/src/tt_shape_bwd.c."""
    return g_y.reshape(p.in_shape)
