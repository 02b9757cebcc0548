"""ctypes mirrors of the C update / PRNG / schedule / accumulator / fused-backward kernels
(``firmware_templates/runtime/include/tt_{prng,schedule,update,accumulate,fused_bwd}.h``) and
the conversion of the numpy kernels' compile-time params into the C params structs.

The ``*_arrays`` functions give the plain integer fields of a C params struct (what a code
generator emits as ``static const`` initialisers); the ``*_struct`` functions build the
ctypes structure over them for host tests. A :class:`CStruct` keeps the numpy arrays its
pointers refer to alive.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.kernels.accumulate import GradAccumulator, mean_multiplier
from tinytrain.train.kernels.fused_bwd import FusedExpandDwParams
from tinytrain.train.kernels.fused_bwd_project import FusedProjectParams
from tinytrain.train.kernels.schedule import Schedule
from tinytrain.train.kernels.update import UpdateParams

I32 = ctypes.c_int32
U32 = ctypes.c_uint32
I64 = ctypes.c_int64
P = ctypes.c_void_p
P_I32 = ctypes.POINTER(ctypes.c_int32)
P_U32 = ctypes.POINTER(ctypes.c_uint32)
P_I64 = ctypes.POINTER(ctypes.c_int64)
P_U16 = ctypes.POINTER(ctypes.c_uint16)
P_I8 = ctypes.POINTER(ctypes.c_int8)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


# ------------------------------------------------------------------ C structs


class SgdStep(ctypes.Structure):
    _fields_ = [("q_lr", I32), ("shift_lr", I32), ("c_t", I32)]


class ScheduleParams(ctypes.Structure):
    _fields_ = [("kind", I32), ("total_steps", I32)]


class UpdateParamsC(ctypes.Structure):
    _fields_ = [
        ("channels", I32),
        ("w_mult", P_I32),
        ("w_shift", P_I32),
        ("b_mult", P_I32),
        ("b_shift", P_I32),
        ("rows", I32),
        ("row_len", I32),
        ("depthwise", I32),
        ("row_channel", P_U16),
    ]


class GradRow(ctypes.Structure):
    _fields_ = [("data", P), ("elem_bytes", I32), ("stride", I32), ("scale", I32)]


class AccParamsC(ctypes.Structure):
    _fields_ = [("rows", I32), ("row_len", I32), ("row_major", I32), ("bits", I32)]


class AccStateC(ctypes.Structure):
    _fields_ = [("m", P), ("e", P_I32), ("n", P_I32)]


class FbwdWeights(ctypes.Structure):
    _fields_ = [("w", P_I8), ("n", I32), ("ch", P_U16), ("w_train", P_I8)]


_FUSED_INT_FIELDS = (
    "height",
    "width",
    "channels",
    "d_kh",
    "d_kw",
    "d_sh",
    "d_sw",
    "d_pad_top",
    "d_pad_left",
    "d_out_h",
    "d_out_w",
)
_FUSED_E_FIELDS = (
    "e_in_h",
    "e_in_w",
    "e_cin",
    "e_kh",
    "e_kw",
    "e_sh",
    "e_sw",
    "e_pad_top",
    "e_pad_left",
)


class FusedEdParamsC(ctypes.Structure):
    _fields_ = [
        *((f, I32) for f in _FUSED_INT_FIELDS),
        ("d_mu", P_I32),
        ("d_k", I32),
        ("d_drop", I32),
        ("d_mask", I32),
        *((f, I32) for f in _FUSED_E_FIELDS),
        ("e_mu", P_I32),
        ("e_k", I32),
        ("e_drop", I32),
        ("e_in_zp", I32),
        ("e_mask", I32),
        ("e_input_grad", I32),
        ("e_bias", I32),
        ("e_weight_n", I32),
    ]


class FusedPdeParamsC(ctypes.Structure):
    _fields_ = [
        ("ed", FusedEdParamsC),
        ("p_cout", I32),
        ("p_mu", P_I32),
        ("p_k", I32),
        ("p_drop", I32),
        ("p_mask", I32),
        ("ring_rows", I32),
        ("d_bias", I32),
        ("d_weight_n", I32),
        ("d_in_zp", I32),
    ]


# ------------------------------------------------------------------ function prototypes


def _fused_bwd_prototype(
    params_c: Any, masks: int, weights: int, x_subs: int, exponents: int
) -> tuple[Any, tuple[Any, ...]]:
    """``tt_fused_*_bwd_s16(params, g, e, masks..., weights..., x_subs..., g_in, exponents..., scratch)``."""
    p_u8, p_w, p_i16 = ctypes.POINTER(ctypes.c_uint8), ctypes.POINTER(FbwdWeights), ctypes.POINTER(ctypes.c_int16)
    return I32, (
        ctypes.POINTER(params_c), p_i16, I32, *(p_u8,) * masks, *(p_w,) * weights, *(P_I8,) * x_subs,
        p_i16, *(P_I32,) * exponents, P,
    )  # fmt: skip


_PROTOTYPES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # tt_prng.h
    "tt_prng_seed": (I32, (P_U32, U32)),
    "tt_prng_draws": (I32, (P_U32, P_U32, I32)),
    "tt_fmix32": (U32, (U32,)),
    "tt_update_prng_seed": (U32, (U32,)),
    # tt_schedule.h
    "tt_schedule_factor": (I32, (ctypes.POINTER(ScheduleParams), I32, P_I32)),
    "tt_cosine_q15": (I32, (I32,)),
    # tt_update.h
    "tt_update_combine": (I32, (ctypes.POINTER(SgdStep), I32, I32, P_I64, P_I64)),
    "tt_update_stochastic_shift": (I64, (I64, I64, U32)),
    "tt_update_rounding_shift": (I64, (I64, I64)),
    "tt_update_weight_row_s8": (
        I32,
        (ctypes.POINTER(UpdateParamsC), ctypes.POINTER(SgdStep), I32, P_I64, I32, P_I8, P_U32),
    ),
    "tt_update_weight_row_src_s8": (
        I32,
        (ctypes.POINTER(UpdateParamsC), ctypes.POINTER(SgdStep), I32, ctypes.POINTER(GradRow), I64, P_I8, P_U32),
    ),
    "tt_update_weights_s8": (
        I32,
        (ctypes.POINTER(UpdateParamsC), ctypes.POINTER(SgdStep), P_I64, I32, P_I8, P_U32),
    ),
    "tt_update_bias_s32": (I32, (ctypes.POINTER(UpdateParamsC), ctypes.POINTER(SgdStep), P_I64, I32, P_I32)),
    "tt_update_bias_one_s32": (
        I32,
        (ctypes.POINTER(UpdateParamsC), ctypes.POINTER(SgdStep), I32, I64, I64, P_I32),
    ),
    # tt_accumulate.h
    "tt_acc_mantissa_bytes": (I32, (I32,)),
    "tt_acc_init": (I32, (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC))),
    "tt_acc_add_s64": (I32, (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), P_I64, I32)),
    "tt_acc_add_row_s64": (I32, (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), I32, P_I64, I32)),
    "tt_acc_add_row_src": (
        I32,
        (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), I32, ctypes.POINTER(GradRow), I64),
    ),
    "tt_acc_commit": (I32, (ctypes.POINTER(AccStateC),)),
    "tt_acc_mean": (I32, (I32, P_I32, P_I32)),
    "tt_mom_step_s64": (I32, (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), P_I64, I32, I32)),
    "tt_mom_step_row_s64": (
        I32,
        (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), I32, P_I64, I32, I32),
    ),
    "tt_mom_step_acc": (
        I32,
        (ctypes.POINTER(AccParamsC), ctypes.POINTER(AccStateC), ctypes.POINTER(AccStateC), I32, I32, I32),
    ),
    "tt_acc_update_weights_s8": (
        I32,
        (
            ctypes.POINTER(AccParamsC),
            ctypes.POINTER(AccStateC),
            I32,
            I32,
            ctypes.POINTER(UpdateParamsC),
            ctypes.POINTER(SgdStep),
            P_I8,
            P_U32,
        ),
    ),
    "tt_acc_update_bias_s32": (
        I32,
        (
            ctypes.POINTER(AccParamsC),
            ctypes.POINTER(AccStateC),
            I32,
            I32,
            ctypes.POINTER(UpdateParamsC),
            ctypes.POINTER(SgdStep),
            P_I32,
        ),
    ),
    # tt_fused_bwd.h
    "tt_fused_ed_scratch_bytes": (ctypes.c_size_t, (ctypes.POINTER(FusedEdParamsC),)),
    "tt_fused_ed_bias_grad": (P_I64, (ctypes.POINTER(FusedEdParamsC), P)),
    "tt_fused_ed_weight_grad": (P_I64, (ctypes.POINTER(FusedEdParamsC), P)),
    "tt_fused_ed_bwd_s16": _fused_bwd_prototype(FusedEdParamsC, masks=2, weights=2, x_subs=1, exponents=2),
    # tt_fused_pde_bwd.h
    "tt_fused_pde_scratch_bytes": (ctypes.c_size_t, (ctypes.POINTER(FusedPdeParamsC),)),
    "tt_fused_pde_d_bias_grad": (P_I64, (ctypes.POINTER(FusedPdeParamsC), P)),
    "tt_fused_pde_d_weight_grad": (P_I64, (ctypes.POINTER(FusedPdeParamsC), P)),
    "tt_fused_pde_ed_scratch": (P, (ctypes.POINTER(FusedPdeParamsC), P)),
    "tt_fused_pde_exponents": (P_I32, (ctypes.POINTER(FusedPdeParamsC), P)),
    "tt_fused_pde_bwd_s16": _fused_bwd_prototype(FusedPdeParamsC, masks=3, weights=3, x_subs=2, exponents=3),
}


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets ``restype`` / ``argtypes`` of every function of these headers on ``lib``."""
    for name, (res, args) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = list(args)
    return lib


def as_ptr(a: np.ndarray | None, ctype: Any) -> Any:
    """A typed C pointer to a C-contiguous array (None → NULL)."""
    if a is None:
        return None
    if not a.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return a.ctypes.data_as(ctypes.POINTER(ctype))


@dataclass(eq=False)
class CStruct:
    """A ctypes struct and the arrays its pointers refer to (kept alive with it)."""

    struct: Any
    arrays: tuple[np.ndarray, ...] = ()

    def ref(self) -> Any:
        return ctypes.byref(self.struct)


def _i32(values: Sequence[int] | np.ndarray, what: str) -> np.ndarray:
    a = np.ascontiguousarray(np.asarray(values, dtype=np.int64).reshape(-1))
    if a.size and (int(a.min()) < INT32_MIN or int(a.max()) > INT32_MAX):
        raise UsageError(f"{what} does not fit int32")
    return a.astype(np.int32)


# ------------------------------------------------------------------ PRNG / schedule / step


def sgd_step(lr: tuple[int, int], c_t: int) -> SgdStep:
    """The host's per-step values: ``(q_lr, shift_lr)`` (``schedule.lr_multiplier``) and ``c_t``."""
    return SgdStep(int(lr[0]), int(lr[1]), int(c_t))


def schedule_params(schedule: Schedule, total_steps: int) -> ScheduleParams:
    kind = {Schedule.CONSTANT: 0, Schedule.COSINE: 1}[schedule]
    return ScheduleParams(kind, int(total_steps))


# ------------------------------------------------------------------ update


@dataclass(frozen=True, eq=False)
class UpdateArrays:
    """The fields of ``tt_update_params`` for one layer and its trained weight slice."""

    channels: int
    w_mult: np.ndarray  # int32 [channels]
    w_shift: np.ndarray
    b_mult: np.ndarray
    b_shift: np.ndarray
    rows: int
    row_len: int
    depthwise: bool
    row_channel: np.ndarray | None  # uint16 [rows] (depthwise)


def slice_rows(kind: OpKind, w_shape: Sequence[int], channels: Sequence[int]) -> tuple[int, int]:
    """``(rows, row_len)`` of the trained slice ``w[..., channels]`` (see tt_update.h)."""
    n = len(channels)
    if n == 0:
        return 0, 0
    if kind is OpKind.DEPTHWISE_CONV_2D:
        return n, int(w_shape[1]) * int(w_shape[2])
    if kind is OpKind.CONV_2D:
        return int(w_shape[0]), int(w_shape[1]) * int(w_shape[2]) * n
    if kind is OpKind.FULLY_CONNECTED:
        return int(w_shape[0]), n
    raise UsageError(f"{kind.value} has no trainable weights")


def update_arrays(up: UpdateParams, w_shape: Sequence[int], channels: Sequence[int]) -> UpdateArrays:
    """The C fields of a layer's update params (``grad_rules.BackwardParams.update``) for the
    weight shape of the op and its trained channels (empty when only the bias trains)."""
    rows, row_len = slice_rows(up.kind, w_shape, channels)
    dw = up.kind is OpKind.DEPTHWISE_CONV_2D
    ch = np.ascontiguousarray(np.asarray(channels, dtype=np.uint16)) if dw and rows else None
    return UpdateArrays(
        int(up.w_mult.size),
        _i32(up.w_mult, "weight multiplier"),
        _i32(up.w_shift, "weight shift"),
        _i32(up.b_mult, "bias multiplier"),
        _i32(up.b_shift, "bias shift"),
        rows,
        row_len,
        dw,
        ch,
    )


def update_struct(a: UpdateArrays) -> CStruct:
    s = UpdateParamsC(
        a.channels,
        as_ptr(a.w_mult, ctypes.c_int32),
        as_ptr(a.w_shift, ctypes.c_int32),
        as_ptr(a.b_mult, ctypes.c_int32),
        as_ptr(a.b_shift, ctypes.c_int32),
        a.rows,
        a.row_len,
        int(a.depthwise),
        as_ptr(a.row_channel, ctypes.c_uint16),
    )
    keep = tuple(x for x in (a.w_mult, a.w_shift, a.b_mult, a.b_shift, a.row_channel) if x is not None)
    return CStruct(s, keep)


# ------------------------------------------------------------------ accumulators


def acc_struct(acc: GradAccumulator) -> AccParamsC:
    """``tt_acc_params`` of an accumulator (row axis 0 or the last axis only)."""
    axis = acc.row_axis % len(acc.shape)
    if axis not in (0, len(acc.shape) - 1):
        raise UsageError(f"the C accumulator needs the row axis first or last, got {acc.row_axis}")
    rows = acc.rows
    row_len = int(np.prod(acc.shape)) // rows if rows else 0
    row_major = int(axis == 0)
    return AccParamsC(rows, row_len, row_major, acc.bits)


@dataclass(eq=False)
class AccBuffers:
    """Host-side storage of one C accumulator state (mantissas, exponents, count)."""

    m: np.ndarray
    e: np.ndarray
    n: np.ndarray

    @classmethod
    def empty(cls, acc: GradAccumulator) -> AccBuffers:
        return cls(np.zeros(acc.shape, dtype=acc.dtype), np.zeros(acc.rows, np.int32), np.zeros(1, np.int32))

    def struct(self) -> AccStateC:
        return AccStateC(self.m.ctypes.data, as_ptr(self.e, ctypes.c_int32), as_ptr(self.n, ctypes.c_int32))


def mean_values(batch: int) -> tuple[int, int]:
    """``(mu, e_sub)`` for ``tt_acc_update_*`` of a mean over ``batch`` samples."""
    mu, k = mean_multiplier(batch)
    return mu, 30 + k


# ------------------------------------------------------------------ fused backward


@dataclass(frozen=True, eq=False)
class FusedArrays:
    """The fields of ``tt_fused_ed_params``."""

    ints: tuple[tuple[str, int], ...]  # every int32 field by name
    d_mu: np.ndarray  # int32 [C]
    e_mu: np.ndarray  # int32 [C]


def fused_arrays(fp: FusedExpandDwParams) -> FusedArrays:
    kd, ke = fp.kd, fp.ke
    gd, ge = kd.geom, ke.geom
    if gd is None or ge is None:
        raise UsageError("fused backward params without a geometry")
    e_in = ke.in_shape
    ints = {
        "height": fp.height,
        "width": fp.width,
        "channels": fp.channels,
        "d_kh": gd.kh,
        "d_kw": gd.kw,
        "d_sh": gd.sh,
        "d_sw": gd.sw,
        "d_pad_top": gd.pad_top,
        "d_pad_left": gd.pad_left,
        "d_out_h": gd.out_h,
        "d_out_w": gd.out_w,
        "d_k": kd.k,
        "d_drop": kd.drop,
        "d_mask": int(fp.d.clamp is not None),
        "e_in_h": int(e_in[1]),
        "e_in_w": int(e_in[2]),
        "e_cin": ke.in_channels,
        "e_kh": ge.kh,
        "e_kw": ge.kw,
        "e_sh": ge.sh,
        "e_sw": ge.sw,
        "e_pad_top": ge.pad_top,
        "e_pad_left": ge.pad_left,
        "e_k": ke.k,
        "e_drop": ke.drop,
        "e_in_zp": ke.in_zp,
        "e_mask": int(fp.e.clamp is not None),
        "e_input_grad": int(fp.e_input_grad),
        "e_bias": int(fp.e.request.bias),
        "e_weight_n": len(fp.e.request.weight_channels),
    }
    return FusedArrays(tuple(ints.items()), _i32(kd.mu, "D's mu"), _i32(ke.mu, "E's mu"))


def fused_struct(a: FusedArrays) -> CStruct:
    s = FusedEdParamsC(**dict(a.ints))
    s.d_mu = as_ptr(a.d_mu, ctypes.c_int32)
    s.e_mu = as_ptr(a.e_mu, ctypes.c_int32)
    return CStruct(s, (a.d_mu, a.e_mu))


@dataclass(frozen=True, eq=False)
class ProjectArrays:
    """The fields of ``tt_fused_pde_params``: the E→D part and P's / D's own."""

    ed: FusedArrays
    ints: tuple[tuple[str, int], ...]  # every int32 field of the outer struct by name
    p_mu: np.ndarray  # int32 [P's output channels]

    def scratch_offsets(self) -> tuple[int, int, int, int]:
        """Byte offsets in the scratch of D's bias gradient, D's weight gradient, the E→D
        kernel's scratch and the ring (the C header's layout; the ring's first 8 bytes
        hold D's and E's parameter exponents after the call when the ring has 8 bytes)."""
        f = dict(self.ints)
        e = dict(self.ed.ints)
        c = e["channels"]
        d_bias = 8 * c if f["d_bias"] else 0
        d_w = 8 * e["d_kh"] * e["d_kw"] * f["d_weight_n"]
        ed = 4 * e["width"] * c + (4 * e["width"] * e["e_cin"] if e["e_input_grad"] else 0)
        ed += (8 * c if e["e_bias"] else 0) + 8 * c * e["e_kh"] * e["e_kw"] * e["e_weight_n"]
        return 0, d_bias, d_bias + d_w, d_bias + d_w + ed

    def ring_bytes(self) -> int:
        f = dict(self.ints)
        e = dict(self.ed.ints)
        return 2 * f["ring_rows"] * e["d_out_w"] * e["channels"]


def project_arrays(fp: FusedProjectParams) -> ProjectArrays:
    kp, kd = fp.kp, fp.inner.kd
    req_d = fp.inner.d.request
    ints = {
        "p_cout": kp.out_channels,
        "p_k": kp.k,
        "p_drop": kp.drop,
        "p_mask": int(fp.p.clamp is not None),
        "ring_rows": fp.ring_rows,
        "d_bias": int(req_d.bias),
        "d_weight_n": len(req_d.weight_channels),
        "d_in_zp": kd.in_zp,
    }
    return ProjectArrays(fused_arrays(fp.inner), tuple(ints.items()), _i32(kp.mu, "P's mu"))


def project_struct(a: ProjectArrays) -> CStruct:
    inner = fused_struct(a.ed)
    s = FusedPdeParamsC(ed=inner.struct, **dict(a.ints))
    s.p_mu = as_ptr(a.p_mu, ctypes.c_int32)
    return CStruct(s, (*inner.arrays, a.p_mu))


def fbwd_weights(w: np.ndarray, channels: Sequence[int] = (), w_train: np.ndarray | None = None) -> CStruct:
    """``tt_fbwd_weights``: the compiled tensor ``w`` and, for trained ``channels``, the
    current slice ``w_train`` (layout of ``w[..., channels]``)."""
    flash = np.ascontiguousarray(w, dtype=np.int8)
    if not channels:
        return CStruct(FbwdWeights(as_ptr(flash, ctypes.c_int8), 0, None, None), (flash,))
    if w_train is None:
        raise UsageError("trained channels need their slice")
    ch = np.ascontiguousarray(np.asarray(channels, dtype=np.uint16))
    tr = np.ascontiguousarray(w_train, dtype=np.int8)
    s = FbwdWeights(as_ptr(flash, ctypes.c_int8), len(channels), as_ptr(ch, ctypes.c_uint16), as_ptr(tr, ctypes.c_int8))
    return CStruct(s, (flash, ch, tr))
