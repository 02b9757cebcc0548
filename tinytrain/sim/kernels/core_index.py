"""STRIDED_SLICE, SLICE, GATHER and RESIZE_NEAREST_NEIGHBOR, as TFLite Micro computes them.

All four only select bytes; the index computations follow TFLite Micro exactly:

* STRIDED_SLICE: the per-axis start/stop of TFLite's Eval (``StridedSliceStartForAxis``
  / ``StridedSliceEndForAxis``: negative indices wrap once, clamping, then
  ``begin_mask``/``end_mask``, ``shrink_axis_mask``), and the output size check of its
  Prepare. TFLite Micro forces ``ellipsis_mask`` and ``new_axis_mask`` to 0 and ignores
  ``offset``; a model that sets them would not compute what it says, so those options
  are rejected (``UnsupportedOpError``) rather than approximated.
* SLICE: ``size = -1`` means "to the end"; int32 or int64 parameters.
* GATHER: ``axis`` and ``batch_dims`` (negative values wrap once), int32 indices.
* RESIZE_NEAREST_NEIGHBOR: ``GetNearestNeighbor`` in float32 (``scale`` from
  ``align_corners``, ``+0.5`` for ``half_pixel_centers``, ``round`` or ``floor``,
  clamping), precomputed as index maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import GatherAttrs, Op, ResizeAttrs, StridedSliceAttrs
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    check_arity,
    check_dtype,
    check_rank,
    check_shape,
    const_int_vector,
    f32,
    graph_error,
    leading_one,
    round_half_away,
    runtime_shape,
    tensor_at,
    unsupported,
)

INT32_LOWEST = -(2**31)
INT32_MAX = 2**31 - 1


def _clamp(v: int, lo: int, hi: int) -> int:
    return hi if hi < v else lo if v < lo else v


def _axis_slice(start: int, stop: int, stride: int) -> tuple[slice, int]:
    """A Python slice visiting ``start, start+stride, ...`` while before ``stop`` (C loop)."""
    count = len(range(start, stop, stride))
    if count == 0:
        return slice(0, 0), 0
    last = start + stride * (count - 1)
    if stride > 0:
        return slice(start, last + 1, stride), count
    return slice(start, last - 1 if last - 1 >= 0 else None, stride), count


@dataclass(frozen=True)
class SliceParams:
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    slices: tuple[slice, ...]


def _run_slices(p: SliceParams, x: np.ndarray) -> np.ndarray:
    slices = p.slices
    if x.shape != p.in_shape and slices:
        slices = (slice(None), *slices[1:])  # batched: every sample keeps its axis-0 entry
    y = x[slices]
    return np.ascontiguousarray(y).reshape(runtime_shape(p.out_shape, y.size))


def run_slice(p: SliceParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_strided_slice_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8 STRIDED_SLICE)."""
    x = args[0]
    assert x is not None
    return (_run_slices(p, x),)


def _axis0_is_identity(p: SliceParams) -> bool:
    return bool(p.slices) and len(range(*p.slices[0].indices(1))) == 1 and p.slices[0].indices(1)[0] == 0


# --------------------------------------------------------------------- STRIDED_SLICE


def prepare_strided_slice(op: Op, inputs: Inputs, outputs: Outputs) -> SliceParams:
    check_arity(op, inputs, outputs, (4,))
    if not isinstance(op.attrs, StridedSliceAttrs):
        raise graph_error(op, "attributes must be StridedSliceAttrs")
    a = op.attrs
    if a.ellipsis_mask or a.new_axis_mask or a.offset:
        raise unsupported(op, "ellipsis_mask, new_axis_mask and offset are ignored by TFLite Micro")
    inp, out = tensor_at(op, inputs, 0), outputs[0]
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    rank = len(inp.shape)
    if not 1 <= rank <= 4:
        raise unsupported(op, f"input rank {rank} (TFLite Micro supports up to 4)")
    vecs = []
    for i, role in ((1, "begin"), (2, "end"), (3, "strides")):
        v = const_int_vector(op, tensor_at(op, inputs, i), role)
        if len(v) != rank:
            raise graph_error(op, f"{role} has {len(v)} values for rank {rank}")
        vecs.append(v)
    begin, end, strides = vecs
    slices: list[slice] = []
    out_dims: list[int] = []
    for ax in range(rank):
        size, stride = inp.shape[ax], strides[ax]
        if stride == 0:
            raise graph_error(op, "stride values must be non-zero")
        shrink = bool(a.shrink_axis_mask & (1 << ax))
        start = begin[ax] + size if begin[ax] < 0 else begin[ax]
        start = _clamp(start, 0, size) if stride > 0 else _clamp(start, -1, size - 1)
        if a.begin_mask & (1 << ax):
            start = 0 if stride > 0 else size - 1
        if shrink:
            if stride < 0:
                raise unsupported(op, "shrink_axis_mask with a negative stride (TFLite Micro writes nothing)")
            if not 0 <= start < size:
                raise graph_error(op, f"shrink index {begin[ax]} out of range for axis {ax} of size {size}")
            stop = start + 1
        else:
            stop = end[ax] + size if end[ax] < 0 else end[ax]
            stop = _clamp(stop, 0, size) if stride > 0 else _clamp(stop, -1, size - 1)
            if a.end_mask & (1 << ax):
                stop = size if stride > 0 else -1
        sl, count = _axis_slice(start, stop, stride if not shrink else 1)
        slices.append(sl)
        if not shrink:
            out_dims.append(count)
    check_shape(op, out, tuple(out_dims), "output")
    return SliceParams(tuple(inp.shape), tuple(out.shape), tuple(slices))


def strided_slice_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if not inputs or not outputs or not leading_one(inputs[0], outputs[0]):
        return False
    try:
        p = prepare_strided_slice(op, inputs, outputs)
    except Exception:
        return False
    shrink0 = isinstance(op.attrs, StridedSliceAttrs) and bool(op.attrs.shrink_axis_mask & 1)
    return not shrink0 and _axis0_is_identity(p)


# ---------------------------------------------------------------------------- SLICE


def prepare_slice(op: Op, inputs: Inputs, outputs: Outputs) -> SliceParams:
    check_arity(op, inputs, outputs, (3,))
    inp, b_t, s_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), tensor_at(op, inputs, 2), outputs[0]
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    rank = len(inp.shape)
    if rank > 5:
        raise unsupported(op, f"input rank {rank} above 5")
    if b_t.dtype is not s_t.dtype:
        raise graph_error(op, "begin and size types differ")
    begin = const_int_vector(op, b_t, "begin", (DType.INT32, DType.INT64))
    size = const_int_vector(op, s_t, "size", (DType.INT32, DType.INT64))
    if len(begin) != rank or len(size) != rank:
        raise graph_error(op, f"begin/size have {len(begin)}/{len(size)} values for rank {rank}")
    slices = []
    dims = []
    for ax in range(rank):
        start = begin[ax]
        stop = inp.shape[ax] if size[ax] == -1 else start + size[ax]
        if not 0 <= start <= stop <= inp.shape[ax]:
            raise graph_error(op, f"slice [{start}, {stop}) out of range for axis {ax} of size {inp.shape[ax]}")
        slices.append(slice(start, stop))
        dims.append(stop - start)
    check_shape(op, out, tuple(dims), "output")
    return SliceParams(tuple(inp.shape), tuple(out.shape), tuple(slices))


def slice_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if not inputs or not outputs or not leading_one(inputs[0], outputs[0]):
        return False
    try:
        p = prepare_slice(op, inputs, outputs)
    except Exception:
        return False
    return _axis0_is_identity(p)


# --------------------------------------------------------------------------- GATHER


@dataclass(frozen=True)
class GatherParams:
    axis: int
    batch_dims: int
    where: str


def prepare_gather(op: Op, inputs: Inputs, outputs: Outputs) -> GatherParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, GatherAttrs):
        raise graph_error(op, "attributes must be GatherAttrs")
    inp, idx, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_dtype(op, idx, (DType.INT32,), "indices")
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    rank, irank = len(inp.shape), len(idx.shape)
    axis = op.attrs.axis + rank if op.attrs.axis < 0 else op.attrs.axis
    if not 0 <= axis < rank:
        raise graph_error(op, f"axis {op.attrs.axis} out of range for rank {rank}")
    bd = op.attrs.batch_dims + irank if op.attrs.batch_dims < 0 else op.attrs.batch_dims
    if not (0 <= bd <= axis and bd < rank and bd <= irank):
        raise graph_error(op, f"batch_dims {op.attrs.batch_dims} invalid for axis {axis}")
    if tuple(inp.shape[:bd]) != tuple(idx.shape[:bd]):
        raise graph_error(op, "batch dimensions of input and indices differ")
    check_shape(op, out, (*inp.shape[:axis], *idx.shape[bd:], *inp.shape[axis + 1 :]), "output")
    if idx.data is not None and idx.data.size and (idx.data.min() < 0 or idx.data.max() >= inp.shape[axis]):
        raise graph_error(op, f"indices out of range [0, {inp.shape[axis]})")
    return GatherParams(axis, bd, op.describe())


def run_gather(p: GatherParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x, idx = args[0], args[1]
    assert x is not None and idx is not None
    size = x.shape[p.axis]
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= size):
        raise UsageError(f"{p.where}: gather indices out of range [0, {size})")
    batch = math.prod(x.shape[: p.batch_dims])
    outer = math.prod(x.shape[p.batch_dims : p.axis])
    inner = math.prod(x.shape[p.axis + 1 :])
    coords = idx.reshape(batch, -1).astype(np.intp)
    xr = x.reshape(batch, outer, size, inner)
    y = xr[np.arange(batch)[:, None, None], np.arange(outer)[None, :, None], coords[:, None, :]]
    shape = (*x.shape[: p.axis], *idx.shape[p.batch_dims :], *x.shape[p.axis + 1 :])
    return (y.reshape(shape),)


def gather_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if len(inputs) != 2 or inputs[0] is None or inputs[1] is None or not isinstance(op.attrs, GatherAttrs):
        return False
    inp, idx = inputs[0], inputs[1]
    rank = len(inp.shape)
    axis = op.attrs.axis + rank if op.attrs.axis < 0 else op.attrs.axis
    if op.attrs.batch_dims != 0:
        return False
    if inp.data is None and idx.data is not None:
        return axis >= 1 and rank >= 1 and inp.shape[0] == 1
    if inp.data is not None and idx.data is None:
        return axis == 0 and len(idx.shape) >= 1 and idx.shape[0] == 1
    return False


# ---------------------------------------------------------------- RESIZE_NEAREST_NEIGHBOR


@dataclass(frozen=True, eq=False)
class ResizeParams:
    ys: np.ndarray
    xs: np.ndarray


def nearest_indices(in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool) -> np.ndarray:
    """TFLite's ``GetNearestNeighbor`` for every output coordinate (float32 arithmetic)."""
    if align_corners and out_size > 1:
        scale = f32(in_size - 1) / f32(out_size - 1)
    else:
        scale = f32(in_size) / f32(out_size)
    offset = f32(0.5) if half_pixel_centers else f32(0.0)
    idx = []
    for i in range(out_size):
        v = float((f32(i) + offset) * scale)
        r = round_half_away(v) if align_corners else math.floor(v)
        r = min(r, in_size - 1)
        if half_pixel_centers:
            r = max(0, r)
        idx.append(r)
    return np.asarray(idx, dtype=np.intp)


def prepare_resize(op: Op, inputs: Inputs, outputs: Outputs) -> ResizeParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, ResizeAttrs):
        raise graph_error(op, "attributes must be ResizeAttrs")
    inp, size_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_rank(op, inp, (4,), "input")
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32, DType.INT16), "input")
    if out.dtype is not inp.dtype:
        raise graph_error(op, "input and output types differ")
    if len(size_t.shape) != 1:
        raise graph_error(op, f"size must be a vector, has shape {list(size_t.shape)}")
    size = const_int_vector(op, size_t, "size")
    if len(size) != 2 or min(size) <= 0:
        raise graph_error(op, f"size must hold two positive values, holds {list(size)}")
    n, h, w, c = inp.shape
    check_shape(op, out, (n, size[0], size[1], c), "output")
    if h <= 0 or w <= 0:
        raise graph_error(op, "empty input")
    a = op.attrs
    return ResizeParams(
        nearest_indices(h, size[0], a.align_corners, a.half_pixel_centers),
        nearest_indices(w, size[1], a.align_corners, a.half_pixel_centers),
    )


def run_resize(p: ResizeParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x = args[0]
    assert x is not None
    return (x[:, p.ys][:, :, p.xs],)


STRIDED_SLICE = KernelSpec(prepare=prepare_strided_slice, run=run_slice, batch_safe=strided_slice_batch_safe)
SLICE = KernelSpec(prepare=prepare_slice, run=run_slice, batch_safe=slice_batch_safe)
GATHER = KernelSpec(prepare=prepare_gather, run=run_gather, batch_safe=gather_batch_safe)
RESIZE_NEAREST_NEIGHBOR = KernelSpec(prepare=prepare_resize, run=run_resize)
