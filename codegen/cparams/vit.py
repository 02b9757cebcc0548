"""ctypes mirrors of the tiny-ViT C kernels' params structs (``firmware_templates/runtime/include/
tt_vit.h``) and the translation of an op (forward) or of the numpy backward params into them.

Forward builders take ``(op, inputs, outputs)`` and derive the C fields with the same functions,
from the same floats, as the numpy kernel's ``prepare`` (so the C computes the numpy bytes);
backward builders take the numpy ``*BwdParams``. Shapes are left-padded with 1 to
``MAX_RANK``; strides are element strides, 0 on a broadcast axis. MEAN's forward is the
existing ``tt_mean_s8`` (``codegen.cparams.forward.mean_c_params``). The code generator
(``codegen/lower_vit.py``) renders a :class:`CParams` as ``static const`` initialisers;
``tinytrain.testing.c_vit`` re-exports these builders next to its ctypes runners.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import BatchMatMulAttrs, ElementwiseAttrs, Op, OpKind
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import f32, per_tensor_qparams, quantized_activation_range
from tinytrain.sim.kernels.core_index import prepare_strided_slice
from tinytrain.sim.kernels.core_matmul import prepare_batch_matmul
from tinytrain.sim.kernels.core_shape import prepare_concatenation, prepare_transpose
from tinytrain.sim.kernels.nl_rsqrt import prepare_rsqrt
from tinytrain.sim.kernels.nl_softmax import prepare_softmax
from tinytrain.sim.kernels.token_select import prepare_token_select
from tinytrain.train.kernels.attn_bwd import BatchMatMulBwdParams, SoftmaxBwdParams
from tinytrain.train.kernels.layout_bwd import ConcatenationBwdParams, StridedSliceBwdParams, TransposeBwdParams
from tinytrain.train.kernels.norm_bwd import MeanBwdParams, MulBwdParams, RsqrtBwdParams, SubBwdParams
from tinytrain.train.kernels.token_bwd import TokenSelectBwdParams

MAX_RANK = 6  # TT_VIT_MAX_RANK
BMM_BATCH_RANK = 3  # TT_BMM_BATCH_RANK
CONCAT_MAX_INPUTS = 10  # TT_CONCAT_MAX_INPUTS
BINARY_KINDS: Mapping[OpKind, int] = MappingProxyType({OpKind.ADD: 0, OpKind.SUB: 1, OpKind.MUL: 2})
ADD_LEFT_SHIFT = 20

_I32 = ctypes.c_int32
_R = _I32 * MAX_RANK
_B = _I32 * BMM_BATCH_RANK

# ----------------------------------------------------------------------- struct mirrors


class TtBinaryParams(ctypes.Structure):
    _fields_ = [
        ("kind", _I32),
        ("out_dims", _R),
        ("in_strides", _R * 2),
        *((n, _I32) for n in ("in1_zp", "in2_zp", "left_shift", "in1_mult", "in1_shift", "in2_mult", "in2_shift")),
        *((n, _I32) for n in ("out_mult", "out_shift", "out_zp", "act_min", "act_max")),
    ]


class TtLutParams(ctypes.Structure):
    _fields_ = [("size", _I32), ("min_value", _I32), ("table", ctypes.POINTER(ctypes.c_int8))]


class TtSoftmaxParams(ctypes.Structure):
    _fields_ = [(n, _I32) for n in ("rows", "n", "input_multiplier", "input_left_shift", "diff_min")]


class TtBatchMatMulParams(ctypes.Structure):
    _fields_ = [
        ("batch", _B),
        ("lhs_batch", _B),
        ("rhs_batch", _B),
        *((n, _I32) for n in ("rows", "depth", "cols", "lhs_m", "lhs_k", "rhs_k", "rhs_c")),
        *((n, _I32) for n in ("lhs_zp", "rhs_zp", "out_zp", "mult", "shift", "act_min", "act_max")),
    ]


class TtGatherParams(ctypes.Structure):
    """``tt_gather_params`` = ``tt_transpose_params`` = ``tt_strided_slice_params``."""

    _fields_ = [("out_dims", _R), ("src_strides", _R), ("offset", _I32)]


class TtConcatParams(ctypes.Structure):
    _fields_ = [("outer", _I32), ("inner", _I32), ("n_inputs", _I32), ("axis_len", _I32 * CONCAT_MAX_INPUTS)]


class TtTokenSelectParams(ctypes.Structure):
    _fields_ = [(n, _I32) for n in ("tokens", "dim", "heads", "kept", "p_zp")]


class TtBatchMatMulBwdParams(ctypes.Structure):
    _fields_ = [("fwd", TtBatchMatMulParams), ("mu", _I32 * 2), ("k", _I32 * 2), ("drop", _I32 * 2)]


class TtSoftmaxBwdParams(ctypes.Structure):
    _fields_ = [(n, _I32) for n in ("rows", "n", "out_zp", "out_bits", "beta_mu", "beta_k")]


class TtMulBwdParams(ctypes.Structure):
    _fields_ = [
        ("out_dims", _R),
        ("in_strides", _R * 2),
        ("zp", _I32 * 2),
        ("mu", _I32 * 2),
        ("k", _I32 * 2),
        ("square", _I32),
    ]


class TtSubBwdParams(ctypes.Structure):
    _fields_ = [("out_dims", _R), ("in_strides", _R * 2), ("same_shape", _I32 * 2)]


class TtMeanLastBwdParams(ctypes.Structure):
    _fields_ = [("in_dims", _R), ("g_strides", _R), ("mu", _I32), ("k", _I32)]


class TtRsqrtBwdParams(ctypes.Structure):
    _fields_ = [(n, _I32) for n in ("size", "out_zp", "mu", "k")]


class TtConcatBwdParams(ctypes.Structure):
    _fields_ = [(n, _I32) for n in ("outer", "inner", "out_len", "in_len", "offset")]


@dataclass(frozen=True, eq=False)
class CParams:
    """A C params struct and the arrays its pointer fields refer to (kept alive here)."""

    struct: Any
    arrays: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ref(self) -> Any:
        return ctypes.byref(self.struct)

    def values(self) -> dict[str, FieldValue]:
        """Every field by path (``"fwd.rows"`` inside a nested struct): ints, fixed arrays as
        (nested) tuples, pointer fields as the arrays they point to (for ``static const`` data)."""
        out: dict[str, FieldValue] = {}
        _collect(self.struct, "", self.arrays, out)
        return out


FieldValue = int | tuple[Any, ...] | np.ndarray


def _as_tuple(v: Any) -> Any:
    return tuple(_as_tuple(x) for x in v) if isinstance(v, ctypes.Array) else int(v)


def _collect(s: ctypes.Structure, prefix: str, arrays: Mapping[str, np.ndarray], out: dict[str, FieldValue]) -> None:
    for entry in s._fields_:
        name = entry[0]
        path = prefix + name
        v = getattr(s, name)
        if isinstance(v, ctypes.Structure):
            _collect(v, path + ".", arrays, out)
        elif isinstance(v, ctypes.Array):
            out[path] = _as_tuple(v)
        elif isinstance(v, ctypes._Pointer):
            if path in arrays:
                out[path] = arrays[path]
        else:
            out[path] = int(v)


# ---------------------------------------------------------------------------- geometry


def pad_dims(shape: Sequence[int], rank: int = MAX_RANK) -> list[int]:
    """``shape`` left-padded with 1 to ``rank``."""
    if len(shape) > rank:
        raise UsageError(f"shape {list(shape)} has a rank above {rank}")
    return [1] * (rank - len(shape)) + [int(d) for d in shape]


def contiguous_strides(dims: Sequence[int]) -> list[int]:
    out = [0] * len(dims)
    s = 1
    for a in range(len(dims) - 1, -1, -1):
        out[a] = s
        s *= int(dims[a])
    return out


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[int]:
    """Element strides of an input read at the output's (padded) positions: 0 on its size-1 axes
    (broadcast or not, they never advance)."""
    dims = pad_dims(in_shape)
    if len(dims) != len(pad_dims(out_shape)):
        raise UsageError(f"shapes {list(in_shape)} and {list(out_shape)} do not broadcast")
    return [0 if d == 1 else s for d, s in zip(dims, contiguous_strides(dims), strict=True)]


def _arr(ctype: Any, values: Sequence[int]) -> Any:
    return ctype(*(int(v) for v in values))


# --------------------------------------------------------------------- forward builders


def binary_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_binary_params`` of an int8 ADD / SUB / MUL (multipliers exactly as
    ``core_elementwise._binary_tables`` derives them: double for ADD and MUL, float32 for SUB)."""
    if op.kind not in BINARY_KINDS:
        raise UsageError(f"{op.describe()}: not an ADD, SUB or MUL")
    a, b, out = inputs[0], inputs[1], outputs[0]
    if a is None or b is None or not isinstance(op.attrs, ElementwiseAttrs):
        raise UsageError(f"{op.describe()}: needs two inputs and ElementwiseAttrs")
    s1, z1 = per_tensor_qparams(op, a, "input 1")
    s2, z2 = per_tensor_qparams(op, b, "input 2")
    so, zo = per_tensor_qparams(op, out, "output")
    lo, hi = quantized_activation_range(op, op.attrs.activation, so, zo)
    q1 = sh1 = q2 = sh2 = 0
    left = 0
    if op.kind is OpKind.MUL:
        qo, sho = quantize_multiplier(s1 * s2 / so)
    else:
        left = ADD_LEFT_SHIFT
        if op.kind is OpKind.ADD:
            twice = 2.0 * max(s1, s2)
            r1, r2, ro = s1 / twice, s2 / twice, twice / ((1 << left) * so)
        else:
            twice32 = f32(2.0) * f32(max(s1, s2))
            r1 = float(f32(s1) / twice32)
            r2 = float(f32(s2) / twice32)
            ro = float(twice32 / (f32(1 << left) * f32(so)))
        for r in (r1, r2, ro):
            if not 0.0 < r < 1.0:
                raise UsageError(f"{op.describe()}: multiplier {r!r} outside (0, 1)")
        (q1, sh1), (q2, sh2), (qo, sho) = quantize_multiplier(r1), quantize_multiplier(r2), quantize_multiplier(ro)
    s = TtBinaryParams(
        kind=BINARY_KINDS[op.kind],
        out_dims=_arr(_R, pad_dims(out.shape)),
        in_strides=(_R * 2)(
            _arr(_R, broadcast_strides(a.shape, out.shape)), _arr(_R, broadcast_strides(b.shape, out.shape))
        ),
        in1_zp=z1,
        in2_zp=z2,
        left_shift=left,
        in1_mult=q1,
        in1_shift=sh1,
        in2_mult=q2,
        in2_shift=sh2,
        out_mult=qo,
        out_shift=sho,
        out_zp=zo,
        act_min=lo,
        act_max=hi,
    )
    return CParams(s)


def rsqrt_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_lut_params`` of an int8 RSQRT: the numpy kernel's table, inputs >= the zero point."""
    p = prepare_rsqrt(op, inputs, outputs)
    if p.table is None:
        raise UsageError(f"{op.describe()}: the C runtime implements the int8 RSQRT only")
    table = np.ascontiguousarray(p.table.table, dtype=np.int8)
    assert p.table.low == -128 and table.size == 256
    s = TtLutParams(
        size=outputs[0].size, min_value=p.input_zero_point, table=table.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
    )
    return CParams(s, MappingProxyType({"table": table}))


def softmax_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_softmax_params`` of an int8 -> int8 SOFTMAX."""
    p = prepare_softmax(op, inputs, outputs)
    if p.out_bits != 8:
        raise UsageError(f"{op.describe()}: the C SOFTMAX writes int8 only")
    shape = outputs[0].shape
    n = shape[-1]
    s = TtSoftmaxParams(
        rows=math.prod(shape) // n,
        n=n,
        input_multiplier=p.input_multiplier,
        input_left_shift=p.input_left_shift,
        diff_min=p.diff_min,
    )
    return CParams(s)


def _bmm_geometry(
    lhs: Sequence[int], rhs: Sequence[int], out: Sequence[int], adj_x: bool, adj_y: bool
) -> dict[str, Any]:
    """Batch dims and element strides of the two stored operands (contiguous layouts)."""
    rank = max(len(lhs), len(rhs), len(out))
    pl, pr, po = pad_dims(lhs, rank), pad_dims(rhs, rank), pad_dims(out, rank)
    nb = rank - 2
    if nb > BMM_BATCH_RANK:
        raise UsageError(f"BATCH_MATMUL with {nb} batch axes (the C handles {BMM_BATCH_RANK})")
    sl, sr = contiguous_strides(pl), contiguous_strides(pr)
    lead = BMM_BATCH_RANK - nb
    batch = [1] * lead + po[:nb]
    lb = [0] * lead + [0 if pl[d] == 1 else sl[d] for d in range(nb)]
    rb = [0] * lead + [0 if pr[d] == 1 else sr[d] for d in range(nb)]
    rows, cols = po[-2], po[-1]
    depth = pl[-2] if adj_x else pl[-1]
    lhs_m, lhs_k = (1, pl[-1]) if adj_x else (pl[-1], 1)
    rhs_k, rhs_c = (1, pr[-1]) if adj_y else (pr[-1], 1)
    return {
        "batch": _arr(_B, batch),
        "lhs_batch": _arr(_B, lb),
        "rhs_batch": _arr(_B, rb),
        "rows": rows,
        "depth": depth,
        "cols": cols,
        "lhs_m": lhs_m,
        "lhs_k": lhs_k,
        "rhs_k": rhs_k,
        "rhs_c": rhs_c,
    }


def batch_matmul_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_batch_matmul_params`` of an int8 BATCH_MATMUL (multiplier as ``prepare_batch_matmul``)."""
    p = prepare_batch_matmul(op, inputs, outputs)
    if not p.is_int8:
        raise UsageError(f"{op.describe()}: the C runtime implements the int8 BATCH_MATMUL only")
    lhs, rhs, out = inputs[0], inputs[1], outputs[0]
    assert lhs is not None and rhs is not None and isinstance(op.attrs, BatchMatMulAttrs)
    ls, lz = per_tensor_qparams(op, lhs, "lhs")
    rs, rz = per_tensor_qparams(op, rhs, "rhs")
    os_, oz = per_tensor_qparams(op, out, "output")
    q, sh = quantize_multiplier(float(f32(ls) * f32(rs)) / os_)
    geo = _bmm_geometry(lhs.shape, rhs.shape, out.shape, p.adj_x, p.adj_y)
    s = TtBatchMatMulParams(**geo, lhs_zp=lz, rhs_zp=rz, out_zp=oz, mult=q, shift=sh, act_min=-128, act_max=127)
    return CParams(s)


def transpose_struct(in_shape: Sequence[int], perm: Sequence[int]) -> TtGatherParams:
    """The gather that transposes a contiguous ``in_shape`` array by ``perm``."""
    lead = MAX_RANK - len(in_shape)
    dims = pad_dims(in_shape)
    pperm = list(range(lead)) + [lead + int(a) for a in perm]
    st = contiguous_strides(dims)
    return TtGatherParams(
        out_dims=_arr(_R, [dims[a] for a in pperm]), src_strides=_arr(_R, [st[a] for a in pperm]), offset=0
    )


def transpose_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_transpose_params`` of a TRANSPOSE."""
    p = prepare_transpose(op, inputs, outputs)
    x = inputs[0]
    assert x is not None
    return CParams(transpose_struct(x.shape, p.perm))


def slice_struct(in_shape: Sequence[int], slices: Sequence[slice]) -> TtGatherParams:
    """The gather of ``x[slices]`` (one Python slice per axis) from a contiguous ``in_shape`` array."""
    dims = pad_dims(in_shape)
    st = contiguous_strides(dims)
    lead = MAX_RANK - len(in_shape)
    counts, strides, offset = [1] * MAX_RANK, [0] * MAX_RANK, 0
    for ax, (sl, size) in enumerate(zip(slices, in_shape, strict=True)):
        start, stop, step = sl.indices(size)
        count = len(range(start, stop, step))
        if count == 0:
            raise UsageError("the C STRIDED_SLICE needs a non-empty slice")
        counts[lead + ax] = count
        strides[lead + ax] = step * st[lead + ax]
        offset += start * st[lead + ax]
    return TtGatherParams(out_dims=_arr(_R, counts), src_strides=_arr(_R, strides), offset=offset)


def strided_slice_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_strided_slice_params`` of a STRIDED_SLICE (the forward's index computation)."""
    p = prepare_strided_slice(op, inputs, outputs)
    return CParams(slice_struct(p.in_shape, p.slices))


def concat_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_concat_params`` of an int8 CONCATENATION."""
    axis = prepare_concatenation(op, inputs, outputs).axis
    out = outputs[0]
    lens = [t.shape[axis] for t in inputs if t is not None]
    s = TtConcatParams(
        outer=math.prod(out.shape[:axis]),
        inner=math.prod(out.shape[axis + 1 :]),
        n_inputs=len(lens),
        axis_len=_arr(_I32 * CONCAT_MAX_INPUTS, lens + [0] * (CONCAT_MAX_INPUTS - len(lens))),
    )
    return CParams(s)


def token_select_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CParams:
    """``tt_token_select_params`` of a TOKEN_SELECT (BSR's token dropping)."""
    p = prepare_token_select(op, inputs, outputs)
    return CParams(TtTokenSelectParams(tokens=p.tokens, dim=p.dim, heads=p.heads, kept=p.kept, p_zp=p.p_zero_point))


# -------------------------------------------------------------------- backward builders


def batch_matmul_bwd_c_params(p: BatchMatMulBwdParams) -> CParams:
    """``tt_batch_matmul_bwd_params`` (the requantization fields of ``fwd`` are unused: 0)."""
    geo = _bmm_geometry(p.in_shapes[0], p.in_shapes[1], p.out_shape, p.adj_x, p.adj_y)
    fwd = TtBatchMatMulParams(**geo, lhs_zp=p.zero_points[0], rhs_zp=p.zero_points[1], act_min=-128, act_max=127)
    a2 = _I32 * 2
    return CParams(TtBatchMatMulBwdParams(fwd=fwd, mu=a2(*p.mu), k=a2(*p.k), drop=a2(*p.drop)))


def softmax_bwd_c_params(p: SoftmaxBwdParams) -> CParams:
    s = TtSoftmaxBwdParams(
        rows=math.prod(p.shape) // p.n, n=p.n, out_zp=p.out_zp, out_bits=p.out_bits, beta_mu=p.beta_mu, beta_k=p.beta_k
    )
    return CParams(s)


def _in_strides(in_shapes: Sequence[Sequence[int]], out_shape: Sequence[int]) -> Any:
    return (_R * 2)(*(_arr(_R, broadcast_strides(s, out_shape)) for s in in_shapes))


def mul_bwd_c_params(p: MulBwdParams) -> CParams:
    a2 = _I32 * 2
    s = TtMulBwdParams(
        out_dims=_arr(_R, pad_dims(p.out_shape)),
        in_strides=_in_strides(p.in_shapes, p.out_shape),
        zp=a2(*p.zero_points),
        mu=a2(*p.mu),
        k=a2(*p.k),
        square=int(p.square),
    )
    return CParams(s)


def sub_bwd_c_params(p: SubBwdParams) -> CParams:
    same = (_I32 * 2)(*(int(tuple(s) == tuple(p.out_shape)) for s in p.in_shapes))
    s = TtSubBwdParams(
        out_dims=_arr(_R, pad_dims(p.out_shape)), in_strides=_in_strides(p.in_shapes, p.out_shape), same_shape=same
    )
    return CParams(s)


def mean_bwd_c_params(p: MeanBwdParams) -> CParams:
    s = TtMeanLastBwdParams(
        in_dims=_arr(_R, pad_dims(p.in_shape)),
        g_strides=_arr(_R, broadcast_strides(p.keep_shape, p.in_shape)),
        mu=p.mu,
        k=p.k,
    )
    return CParams(s)


def rsqrt_bwd_c_params(p: RsqrtBwdParams) -> CParams:
    return CParams(TtRsqrtBwdParams(size=math.prod(p.shape), out_zp=p.out_zp, mu=p.mu, k=p.k))


def transpose_bwd_c_params(p: TransposeBwdParams) -> CParams:
    """The gather of the output gradient (the forward output's shape) by the inverse permutation."""
    out_shape = tuple(p.in_shape[i] for i in np.argsort(p.inverse))
    return CParams(transpose_struct(out_shape, p.inverse))


def strided_slice_bwd_c_params(p: StridedSliceBwdParams) -> CParams:
    """The forward's gather params (the backward scatters through them)."""
    return CParams(slice_struct(p.in_shape, p.slices))


def concat_bwd_c_params(p: ConcatenationBwdParams, which: int) -> CParams:
    shape = p.in_shapes[which]
    ax = p.axis
    out_len = sum(s[ax] for s in p.in_shapes)
    s = TtConcatBwdParams(
        outer=math.prod(shape[:ax]),
        inner=math.prod(shape[ax + 1 :]),
        out_len=out_len,
        in_len=shape[ax],
        offset=p.offsets[which],
    )
    return CParams(s)


def token_select_bwd_c_params(p: TokenSelectBwdParams) -> CParams:
    """The forward's ``tt_token_select_params`` (the backward reads tokens, dim and kept; heads 1, p_zp 0)."""
    _, t, d = p.in_shape
    return CParams(TtTokenSelectParams(tokens=t, dim=d, heads=1, kept=p.kept, p_zp=0))
