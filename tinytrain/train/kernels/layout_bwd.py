"""Backward of the layout ops of the tiny ViT: TRANSPOSE, STRIDED_SLICE, CONCATENATION.

They move values without arithmetic, so the gradient keeps its mantissas and exponent
(``docs/numerics.md``, "ViT ops"):

* **TRANSPOSE** by ``perm``: the output gradient transposed by the inverse permutation.
* **STRIDED_SLICE**: the output gradient scattered into zeros of the input's shape at the
  positions the forward read (begin / end / strides / masks exactly as the forward kernel
  ``sim.kernels.core_index`` computes them; shrunk axes come back as size 1).
* **CONCATENATION** along ``axis``: each non-constant input gets its slice of the output
  gradient; constant inputs (the class token) get nothing (a wanted constant is ignored).

None of them saves anything (``*_SAVES == ()``) and none needs a clamp mask (the int8
values are copied, TFLite Micro requires equal input and output quantization).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import check_dtype, tensor_at
from tinytrain.sim.kernels.core_index import prepare_strided_slice
from tinytrain.sim.kernels.core_shape import prepare_concatenation, prepare_transpose
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.norm_bwd import check_grad

TRANSPOSE_SAVES: tuple[str, ...] = ()
STRIDED_SLICE_SAVES: tuple[str, ...] = ()
CONCATENATION_SAVES: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class TransposeBwdParams:
    in_shape: tuple[int, ...]
    inverse: tuple[int, ...]  # the inverse permutation


def prepare_transpose_backward(op: Op, inputs: Inputs, outputs: Outputs) -> TransposeBwdParams:
    """The forward's validation (``core_shape.prepare_transpose``) plus an int8 input."""
    perm = prepare_transpose(op, inputs, outputs).perm
    x = tensor_at(op, inputs, 0)
    check_dtype(op, x, (DType.INT8,), "input")
    inverse = [0] * len(perm)
    for out_axis, in_axis in enumerate(perm):
        inverse[in_axis] = out_axis
    return TransposeBwdParams(tuple(x.shape), tuple(inverse))


def transpose_input_grads(
    p: TransposeBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: g_y transposed by the inverse permutation}`` (same exponent).

    C twin: tt_transpose_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c."""
    if 0 not in wanted:
        return {}
    out_shape = tuple(p.in_shape[i] for i in np.argsort(p.inverse))
    check_grad(g_y, out_shape, "TRANSPOSE")
    return {0: Grad(np.ascontiguousarray(np.transpose(g_y.g, p.inverse)), g_y.e)}


@dataclass(frozen=True, eq=False)
class StridedSliceBwdParams:
    in_shape: tuple[int, ...]
    slices: tuple[slice, ...]  # per input axis, the positions the forward read
    kept_shape: tuple[int, ...]  # the output shape with the shrunk axes kept as 1


def prepare_strided_slice_backward(op: Op, inputs: Inputs, outputs: Outputs) -> StridedSliceBwdParams:
    """The forward's index computation (``core_index.prepare_strided_slice``) plus an int8 input."""
    sp = prepare_strided_slice(op, inputs, outputs)
    x = tensor_at(op, inputs, 0)
    check_dtype(op, x, (DType.INT8,), "input")
    kept = tuple(len(range(*sl.indices(d))) for sl, d in zip(sp.slices, x.shape, strict=True))
    return StridedSliceBwdParams(tuple(x.shape), sp.slices, kept)


def strided_slice_input_grads(
    p: StridedSliceBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: zeros of the input's shape with g_y at the positions read}`` (same exponent).

    C twin: tt_strided_slice_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c."""
    if 0 not in wanted:
        return {}
    if g_y.g.size != int(np.prod(p.kept_shape)):
        raise UsageError(f"STRIDED_SLICE backward: {g_y.g.size} gradient values for a slice of {list(p.kept_shape)}")
    g = np.zeros(p.in_shape, dtype=np.int16)
    g[p.slices] = g_y.g.reshape(p.kept_shape)
    return {0: Grad(g, g_y.e)}


@dataclass(frozen=True, eq=False)
class ConcatenationBwdParams:
    axis: int  # non-negative
    in_shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]  # start of input i along the axis
    consts: tuple[bool, ...]  # input i is a constant (no gradient)

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.consts) if not c)


def prepare_concatenation_backward(op: Op, inputs: Inputs, outputs: Outputs) -> ConcatenationBwdParams:
    """The forward's validation (``core_shape.prepare_concatenation``: no fused activation,
    equal int8 quantization) plus int8 tensors."""
    axis = prepare_concatenation(op, inputs, outputs).axis
    ins = [tensor_at(op, inputs, i) for i in range(len(inputs))]
    check_dtype(op, outputs[0], (DType.INT8,), "output")
    offsets, start = [], 0
    for t in ins:
        offsets.append(start)
        start += t.shape[axis]
    return ConcatenationBwdParams(
        axis, tuple(tuple(t.shape) for t in ins), tuple(offsets), tuple(t.data is not None for t in ins)
    )


def concatenation_input_grads(
    p: ConcatenationBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{i: the slice of g_y that input i filled}`` for the wanted non-constant inputs
    (same exponent).

    C twin: tt_concat_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c (one input per call)."""
    out: dict[int, Grad] = {}
    for i in p.grad_inputs:
        if i not in wanted:
            continue
        shape = p.in_shapes[i]
        lo = p.offsets[i]
        if g_y.g.ndim != len(shape) or g_y.g.shape[p.axis] < lo + shape[p.axis]:
            raise UsageError(f"CONCATENATION backward: gradient of shape {list(g_y.shape)} for input {list(shape)}")
        part = np.take(g_y.g, np.arange(lo, lo + shape[p.axis]), axis=p.axis)
        out[i] = Grad(np.ascontiguousarray(part.reshape(shape)), g_y.e)
    return out
