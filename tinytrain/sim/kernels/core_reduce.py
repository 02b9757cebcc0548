"""MEAN and SUM, bit-exact with TFLite Micro's reference kernels.

int8 (``QuantizedMeanOrSum``; this TFLite Micro has a single int8 path, whatever the
scales): the raw int8 values are summed per output (int32), the input zero point is
removed as ``sum − zp·n`` and the result is requantized with the multiplier of
``scale_in / scale_out``; for MEAN, TFLite first folds ``1/n`` into that multiplier
(``shift = min(⌊log2 n⌋, 32, 31 + shift_out)``, ``q' = (q << shift) / n``,
``shift_out −= shift``). Sums are computed exactly in int64; int32 wrap-around is
reproduced when ``256·n`` could exceed int32.

float32: TFLite adds the values into each output in the input's row-major order
(``ReduceSumImpl``), one float32 addition at a time; the same order is reproduced by
moving the reduced axes last (keeping their order) and adding one reduced position at a
time, vectorised over the outputs. MEAN then divides by ``float(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op, OpKind, ReduceAttrs
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    check_arity,
    check_dtype,
    const_int_vector,
    graph_error,
    per_tensor_qparams,
    runtime_shape,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_requant import Requantizer, make_requantizer


@dataclass(frozen=True, eq=False)
class ReduceParams:
    is_int8: bool
    is_mean: bool
    axes: tuple[int, ...]  # resolved, sorted, unique
    n: int
    out_shape: tuple[int, ...]
    in_zp: int
    requant: Requantizer | None


def resolve_axes(op: Op, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    """TFLite's ``ResolveAxis``: negative axes wrap once, duplicates are dropped."""
    out: list[int] = []
    for a in axes:
        r = a + rank if a < 0 else a
        if not 0 <= r < rank:
            raise graph_error(op, f"axis {a} out of range for rank {rank}")
        if r not in out:
            out.append(r)
    return tuple(sorted(out))


def prepare_reduce(op: Op, inputs: Inputs, outputs: Outputs) -> ReduceParams:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, ReduceAttrs):
        raise graph_error(op, "attributes must be ReduceAttrs")
    inp, axis_t, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise unsupported(op, "input and output must have the same type")
    axes = resolve_axes(op, const_int_vector(op, axis_t, "axis"), len(inp.shape))
    keep = tuple(1 if i in axes else d for i, d in enumerate(inp.shape))
    expect = keep if op.attrs.keep_dims else tuple(d for i, d in enumerate(inp.shape) if i not in axes)
    if math.prod(out.shape) != math.prod(expect):
        raise graph_error(op, f"output shape {list(out.shape)} does not hold the reduction of {list(inp.shape)}")
    n = math.prod(inp.shape[i] for i in axes)
    is_mean = op.kind is OpKind.MEAN
    if inp.dtype is DType.FLOAT32:
        return ReduceParams(False, is_mean, axes, n, tuple(out.shape), 0, None)
    s_in, z_in = per_tensor_qparams(op, inp, "input")
    s_out, z_out = per_tensor_qparams(op, out, "output")
    q, shift = quantize_multiplier(s_in / s_out)
    if is_mean and n > 0:
        k = min(n.bit_length() - 1, 32, 31 + shift)
        q = (q << k) // n
        shift -= k
    if -shift > 31:
        raise unsupported(op, f"requantization right shift {-shift} above 31 (undefined in TFLite)")
    rq = make_requantizer([q], [shift], z_out, INT8_MIN, INT8_MAX, 256 * n)
    return ReduceParams(True, is_mean, axes, n, tuple(out.shape), z_in, rq)


def _reduced_last(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``x`` with the reduced axes moved last (in order), as (outer, n)."""
    k = len(axes)
    moved = np.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    n = math.prod(x.shape[a] for a in axes)
    return moved.reshape(-1, n)


def run_reduce(p: ReduceParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_mean_s8 in firmware_templates/runtime/src/tt_pool.c (int8, consecutive axes)."""
    x = args[0]
    assert x is not None
    outer = x.size // p.n if p.n else math.prod(d for i, d in enumerate(x.shape) if i not in p.axes)
    shape = runtime_shape(p.out_shape, outer)
    if p.is_int8:
        if x.size == 0:
            return (np.zeros(shape, dtype=np.int8),)
        acc = x.sum(axis=p.axes, dtype=np.int64)
        if p.in_zp:
            acc -= p.in_zp * p.n
        assert p.requant is not None
        return (p.requant.apply(acc.reshape(-1)).reshape(shape),)
    if x.size == 0:
        return (np.zeros(shape, dtype=np.float32),)
    xr = _reduced_last(x.astype(np.float32, copy=False), p.axes)
    total = np.zeros(xr.shape[0], dtype=np.float32)
    for i in range(p.n):
        total += xr[:, i]
    if p.is_mean:
        total /= np.float32(p.n)
    return (total.reshape(shape),)


def reduce_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if len(inputs) != 2 or inputs[0] is None or inputs[1] is None or not outputs:
        return False
    inp, axis_t, out = inputs[0], inputs[1], outputs[0]
    if axis_t.data is None or not inp.shape or inp.shape[0] != 1 or not out.shape or out.shape[0] != 1:
        return False
    rank = len(inp.shape)
    return all((int(a) + rank if int(a) < 0 else int(a)) != 0 for a in axis_t.data.reshape(-1))


MEAN = KernelSpec(prepare=prepare_reduce, run=run_reduce, batch_safe=reduce_batch_safe)
SUM = MEAN
