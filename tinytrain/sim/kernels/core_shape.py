"""RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, CONCATENATION, PAD, PADV2.

These ops move bytes without arithmetic in TFLite Micro (CONCATENATION requires every
int8 input to share the output's scale and zero point, and TFLite Micro's Prepare
rejects the op otherwise; PAD fills with the output zero point, PADV2 with its
constant). Shapes come from the IR tensors; when the runtime carries N samples on
axis 0 (the IR has 1 there), the ops that keep axis 0 as the batch apply to all
samples at once, and the others report ``batch_safe = False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, ConcatenationAttrs, NoAttrs, Op, ReshapeAttrs, SqueezeAttrs
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    check_arity,
    check_dtype,
    check_shape,
    const_data,
    const_int_vector,
    graph_error,
    leading_one,
    per_tensor_qparams,
    tensor_at,
    unsupported,
)

# ------------------------------------------------------------------ pure reshapes


@dataclass(frozen=True)
class ReshapeParams:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


def _check_reshape(op: Op, inp: Tensor, out: Tensor) -> ReshapeParams:
    if out.dtype is not inp.dtype:
        raise graph_error(op, f"output type {out.dtype.value} differs from input type {inp.dtype.value}")
    if inp.size != out.size:
        raise graph_error(op, f"cannot reshape {list(inp.shape)} ({inp.size} values) to {list(out.shape)}")
    return ReshapeParams(tuple(inp.shape), tuple(out.shape))


def prepare_reshape(op: Op, inputs: Inputs, outputs: Outputs) -> ReshapeParams:
    check_arity(op, inputs, outputs, (1, 2), optional=(1,))
    if not isinstance(op.attrs, (ReshapeAttrs, NoAttrs)):
        raise graph_error(op, "attributes must be ReshapeAttrs")
    return _check_reshape(op, tensor_at(op, inputs, 0), outputs[0])


def prepare_squeeze(op: Op, inputs: Inputs, outputs: Outputs) -> ReshapeParams:
    check_arity(op, inputs, outputs, (1,))
    if not isinstance(op.attrs, (SqueezeAttrs, NoAttrs)):
        raise graph_error(op, "attributes must be SqueezeAttrs")
    inp, out = tensor_at(op, inputs, 0), outputs[0]
    dims = op.attrs.squeeze_dims if isinstance(op.attrs, SqueezeAttrs) else ()
    rank = len(inp.shape)
    if rank > 8:
        raise unsupported(op, "input rank above 8")
    if not dims:
        squeeze = {i for i, d in enumerate(inp.shape) if d == 1}
    else:
        squeeze = set()
        for d in dims:
            r = d + rank if d < 0 else d
            if not 0 <= r < rank or inp.shape[r] != 1:
                raise graph_error(op, f"cannot squeeze dimension {d} of {list(inp.shape)}")
            squeeze.add(r)
    check_shape(op, out, tuple(d for i, d in enumerate(inp.shape) if i not in squeeze), "output")
    return _check_reshape(op, inp, out)


def prepare_expand_dims(op: Op, inputs: Inputs, outputs: Outputs) -> ReshapeParams:
    check_arity(op, inputs, outputs, (2,))
    inp, axis_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    axis = const_int_vector(op, axis_t, "axis")
    if len(axis) != 1:
        raise graph_error(op, f"axis must hold one value, holds {len(axis)}")
    rank = len(inp.shape)
    a = axis[0] + rank + 1 if axis[0] < 0 else axis[0]
    if not 0 <= a <= rank:
        raise graph_error(op, f"axis {axis[0]} out of range for rank {rank}")
    check_shape(op, out, (*inp.shape[:a], 1, *inp.shape[a:]), "output")
    return _check_reshape(op, inp, out)


def run_reshape(p: ReshapeParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_reshape_s8 in firmware_templates/runtime/src/tt_shape.c."""
    x = args[0]
    assert x is not None
    if x.shape == p.in_shape or not p.out_shape:
        return (x.reshape(p.out_shape),)
    return (x.reshape((x.shape[0], *p.out_shape[1:])),)


def reshape_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    return leading_one(inputs[0] if inputs else None, outputs[0] if outputs else None)


# ----------------------------------------------------------------------- TRANSPOSE


@dataclass(frozen=True)
class TransposeParams:
    perm: tuple[int, ...]


def prepare_transpose(op: Op, inputs: Inputs, outputs: Outputs) -> TransposeParams:
    check_arity(op, inputs, outputs, (2,))
    inp, perm_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    rank = len(inp.shape)
    if not 1 <= rank <= 5:
        raise unsupported(op, f"transpose of rank {rank} (TFLite Micro supports 1..5)")
    if len(perm_t.shape) != 1:
        raise graph_error(op, f"perm must be a vector, has shape {list(perm_t.shape)}")
    perm = const_int_vector(op, perm_t, "perm")
    if sorted(perm) != list(range(rank)):
        raise graph_error(op, f"perm {list(perm)} is not a permutation of {rank} axes")
    check_shape(op, out, tuple(inp.shape[i] for i in perm), "output")
    return TransposeParams(perm)


def run_transpose(p: TransposeParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_transpose_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8, rank <= 6)."""
    x = args[0]
    assert x is not None
    return (np.ascontiguousarray(np.transpose(x, p.perm)),)


def transpose_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if len(inputs) != 2 or inputs[1] is None or inputs[1].data is None:
        return False
    perm = inputs[1].data.reshape(-1)
    return perm.size >= 1 and int(perm[0]) == 0 and leading_one(inputs[0], outputs[0] if outputs else None)


# ------------------------------------------------------------------ CONCATENATION


@dataclass(frozen=True)
class ConcatParams:
    axis: int


def prepare_concatenation(op: Op, inputs: Inputs, outputs: Outputs) -> ConcatParams:
    if not 1 <= len(inputs) <= 10:
        raise unsupported(op, f"{len(inputs)} inputs (TFLite Micro supports 1..10)")
    check_arity(op, inputs, outputs, (len(inputs),))
    if not isinstance(op.attrs, ConcatenationAttrs):
        raise graph_error(op, "attributes must be ConcatenationAttrs")
    if op.attrs.activation is not Activation.NONE:
        raise unsupported(op, f"fused activation {op.attrs.activation.value}")
    out = outputs[0]
    ins = [tensor_at(op, inputs, i) for i in range(len(inputs))]
    check_dtype(op, out, (DType.INT8, DType.FLOAT32, DType.INT16, DType.INT32, DType.INT64, DType.BOOL), "output")
    rank = len(out.shape)
    axis = op.attrs.axis + rank if op.attrs.axis < 0 else op.attrs.axis
    if not 0 <= axis < rank:
        raise graph_error(op, f"axis {op.attrs.axis} out of range for rank {rank}")
    total = 0
    for t in ins:
        if t.dtype is not out.dtype:
            raise unsupported(op, f"input {t.name!r} type {t.dtype.value} differs from the output's")
        if len(t.shape) != rank or any(t.shape[i] != out.shape[i] for i in range(rank) if i != axis):
            raise graph_error(op, f"input {t.name!r} shape {list(t.shape)} does not fit output {list(out.shape)}")
        total += t.shape[axis]
        if out.dtype is DType.INT8:
            s_in, z_in = per_tensor_qparams(op, t, "input")
            s_out, z_out = per_tensor_qparams(op, out, "output")
            if s_in != s_out or z_in != z_out:
                raise unsupported(
                    op, f"input {t.name!r} quantization differs from the output's (TFLite Micro rejects it)"
                )
    if total != out.shape[axis]:
        raise graph_error(op, f"inputs add up to {total} along axis {axis}, output has {out.shape[axis]}")
    return ConcatParams(axis)


def run_concatenation(p: ConcatParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_concat_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8)."""
    arrs = [a for a in args if a is not None]
    if p.axis != 0 and len(arrs) > 1:
        n = max(a.shape[0] for a in arrs)
        arrs = [np.broadcast_to(a, (n, *a.shape[1:])) if a.shape[0] != n else a for a in arrs]
    return (np.concatenate(arrs, axis=p.axis),)


def concatenation_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if not outputs or not isinstance(op.attrs, ConcatenationAttrs):
        return False
    out = outputs[0]
    rank = len(out.shape)
    axis = op.attrs.axis + rank if op.attrs.axis < 0 else op.attrs.axis
    return rank >= 1 and axis != 0 and out.shape[0] == 1


# --------------------------------------------------------------------- PAD / PADV2


@dataclass(frozen=True, eq=False)
class PadParams:
    pads: tuple[tuple[int, int], ...]
    value: np.generic


def prepare_pad(op: Op, inputs: Inputs, outputs: Outputs) -> PadParams:
    check_arity(op, inputs, outputs, (2, 3))
    inp, pad_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    value_t = inputs[2] if len(inputs) == 3 else None
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32, DType.INT16, DType.INT32), "input")
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    rank = len(inp.shape)
    if rank > 5:
        raise unsupported(op, f"rank {rank} above 5")
    check_dtype(op, pad_t, (DType.INT32,), "paddings")
    pd = const_data(op, pad_t, "paddings")
    if pd.size != 2 * len(out.shape) or len(out.shape) != rank:
        raise graph_error(op, f"paddings of shape {list(pad_t.shape)} do not match rank {rank}")
    flat = [int(v) for v in pd.reshape(-1)]
    pads = tuple((flat[2 * i], flat[2 * i + 1]) for i in range(rank))
    if any(lo < 0 or hi < 0 for lo, hi in pads):
        raise unsupported(op, f"negative paddings {list(pads)}")
    check_shape(op, out, tuple(d + lo + hi for d, (lo, hi) in zip(inp.shape, pads, strict=True)), "output")
    np_t = inp.dtype.np
    if value_t is not None:
        if value_t.dtype is not inp.dtype:
            raise graph_error(op, "constant value type differs from the input's")
        vd = const_data(op, value_t, "constant value")
        if vd.size != 1:
            raise graph_error(op, f"constant value must hold one element, holds {vd.size}")
        same_q = inp.dtype is not DType.INT8 or (
            per_tensor_qparams(op, value_t, "constant value") == per_tensor_qparams(op, out, "output")
        )
        if not same_q:
            raise unsupported(op, "constant value quantization differs from the output's")
        value = np_t.type(vd.reshape(-1)[0])
    elif inp.dtype is DType.INT8:
        _, zp = per_tensor_qparams(op, out, "output")
        if not INT8_MIN <= zp <= INT8_MAX:
            raise unsupported(op, f"output zero point {zp} outside the int8 range")
        value = np_t.type(zp)
    else:
        value = np_t.type(0)
    return PadParams(pads, value)


def run_pad(p: PadParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_pad_s8 in firmware_templates/runtime/src/tt_shape.c (int8, rank <= 4)."""
    x = args[0]
    assert x is not None
    return (np.pad(x, p.pads, mode="constant", constant_values=p.value),)


def pad_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if len(inputs) < 2 or inputs[1] is None or inputs[1].data is None:
        return False
    flat = inputs[1].data.reshape(-1)
    return flat.size >= 2 and int(flat[0]) == 0 and int(flat[1]) == 0 and leading_one(inputs[0], outputs[0])


RESHAPE = KernelSpec(prepare=prepare_reshape, run=run_reshape, batch_safe=reshape_batch_safe)
SQUEEZE = KernelSpec(prepare=prepare_squeeze, run=run_reshape, batch_safe=reshape_batch_safe)
EXPAND_DIMS = KernelSpec(prepare=prepare_expand_dims, run=run_reshape, batch_safe=reshape_batch_safe)
TRANSPOSE = KernelSpec(prepare=prepare_transpose, run=run_transpose, batch_safe=transpose_batch_safe)
CONCATENATION = KernelSpec(prepare=prepare_concatenation, run=run_concatenation, batch_safe=concatenation_batch_safe)
PAD = KernelSpec(prepare=prepare_pad, run=run_pad, batch_safe=pad_batch_safe)
PADV2 = PAD
