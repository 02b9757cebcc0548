"""ctypes mirrors of the C backward kernels' params structs (``firmware_templates/runtime/
include/tt_grad.h, tt_mask.h, tt_loss.h, tt_linear_bwd.h, tt_pool_bwd.h, tt_shape_bwd.h``),
builders that turn the numpy kernels' prepared params into those structs, the scratch-size
formulas, and numpy-in / numpy-out wrappers that call the C kernels (tests and the code
generator's tests use them).

A builder returns a frozen ``C*`` holder: ``.struct`` is the ctypes struct and the holder
keeps the numpy arrays its pointers refer to alive. The generator emits the same field
values as ``static const`` initialisers (:func:`struct_values` lists them).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad
from tinytrain.train.kernels.linear_bwd import LinearBwdParams
from tinytrain.train.kernels.loss import SoftmaxCEParams
from tinytrain.train.kernels.mask import mask_nbytes
from tinytrain.train.kernels.pool_bwd import PoolBwdParams
from tinytrain.train.kernels.shape_bwd import AddBwdParams, PadBwdParams

MAX_RANK = 6  # TT_BWD_MAX_RANK
TT_OK, TT_ERR_ARG, TT_ERR_SHAPE, TT_ERR_RANGE = 0, 1, 2, 3
LINEAR_KINDS = {OpKind.CONV_2D: 0, OpKind.DEPTHWISE_CONV_2D: 1, OpKind.FULLY_CONNECTED: 2}

_I32 = ctypes.c_int32
_P_I32 = ctypes.POINTER(ctypes.c_int32)
_VP = ctypes.c_void_p
# kernel size, strides and paddings, in this order in every window-shaped params struct
_WINDOW_FIELDS = tuple(
    (name, _I32) for name in ("kh", "kw", "sh", "sw", "pad_top", "pad_left", "pad_bottom", "pad_right")
)


# ------------------------------------------------------------------ struct mirrors


class TtSoftmaxCEParams(ctypes.Structure):
    _fields_ = [("classes", _I32), ("input_multiplier", _I32), ("input_left_shift", _I32), ("diff_min", _I32)]


class TtLinearBwdParams(ctypes.Structure):
    _fields_ = [
        ("kind", _I32),
        ("in_h", _I32),
        ("in_w", _I32),
        ("in_c", _I32),
        ("out_h", _I32),
        ("out_w", _I32),
        ("out_c", _I32),
        *_WINDOW_FIELDS,
        ("k", _I32),
        ("drop", _I32),
        ("in_zp", _I32),
        ("mu", _P_I32),
        ("n_channels", _I32),
        ("channels", _P_I32),
        ("slot", _P_I32),
    ]


class TtMeanBwdParams(ctypes.Structure):
    _fields_ = [("in_dims", _I32 * MAX_RANK), ("keep_dims", _I32 * MAX_RANK), ("mu", _I32), ("k", _I32)]


class TtAvgPoolBwdParams(ctypes.Structure):
    _fields_ = [
        ("in_h", _I32),
        ("in_w", _I32),
        ("c", _I32),
        ("out_h", _I32),
        ("out_w", _I32),
        *_WINDOW_FIELDS,
        ("mu", _P_I32),
        ("k", _I32),
    ]


class TtAddBwdParams(ctypes.Structure):
    _fields_ = [
        ("out_dims", _I32 * MAX_RANK),
        ("in_dims", (_I32 * MAX_RANK) * 2),
        ("same_shape", _I32 * 2),
    ]


class TtPadBwdParams(ctypes.Structure):
    _fields_ = [("in_dims", _I32 * MAX_RANK), ("out_dims", _I32 * MAX_RANK), ("before", _I32 * MAX_RANK)]


def struct_values(s: ctypes.Structure) -> dict[str, Any]:
    """The fields of a struct as Python values: arrays as lists, pointer fields as their
    address (None for NULL). The tables behind the pointers are the holder's arrays
    (``CLinearBwd.mu / channels / slot``, ``CPoolBwd.mu``), which a generator emits as
    ``static const int32_t`` arrays."""
    out: dict[str, Any] = {}
    for field in s._fields_:
        name = field[0]
        v = getattr(s, name)
        if isinstance(v, ctypes.Array):
            out[name] = [list(x) if isinstance(x, ctypes.Array) else x for x in v]
        elif isinstance(v, ctypes._Pointer):  # type: ignore[attr-defined]
            out[name] = ctypes.cast(v, ctypes.c_void_p).value
        else:
            out[name] = v
    return out


# ------------------------------------------------------------------ function signatures

_SIGNATURES: tuple[tuple[str, type | None, tuple[Any, ...]], ...] = (
    ("tt_normalize_s32", _I32, (_VP, _I32, _I32, _I32, _VP, _P_I32)),
    ("tt_normalize_s64", _I32, (_VP, _I32, _I32, _I32, _VP, _P_I32)),
    ("tt_add_grads_s16", _I32, (_VP, _I32, _VP, _I32, _I32, _VP, _P_I32)),
    ("tt_clamp_mask_s8", _I32, (_VP, _I32, _I32, _I32, _VP)),
    ("tt_clamp_mask_s8_at", _I32, (_VP, _I32, _I32, _I32, _VP, _I32)),
    ("tt_apply_mask_s16", _I32, (_VP, _VP, _I32, _VP)),
    ("tt_softmax_ce_grad_s8", _I32, (ctypes.POINTER(TtSoftmaxCEParams), _VP, _I32, _VP, _P_I32, _P_I32, _P_I32)),
    ("tt_linear_bwd_input_scratch_bytes", _I32, (ctypes.POINTER(TtLinearBwdParams),)),
    ("tt_linear_bwd_weight_row_len", _I32, (ctypes.POINTER(TtLinearBwdParams),)),
    ("tt_linear_bwd_input_s16", _I32, (ctypes.POINTER(TtLinearBwdParams), _VP, _VP, _VP, _I32, _VP, _P_I32, _VP)),
    ("tt_linear_bwd_bias_s16", _I32, (ctypes.POINTER(TtLinearBwdParams), _VP, _VP)),
    ("tt_linear_bwd_weight_row_s16", _I32, (ctypes.POINTER(TtLinearBwdParams), _VP, _VP, _I32, _VP)),
    ("tt_linear_save_input_s8", _I32, (ctypes.POINTER(TtLinearBwdParams), _VP, _VP)),
    ("tt_mean_bwd_s16", _I32, (ctypes.POINTER(TtMeanBwdParams), _VP, _I32, _VP, _P_I32)),
    ("tt_avgpool_bwd_s16", _I32, (ctypes.POINTER(TtAvgPoolBwdParams), _VP, _I32, _VP, _P_I32)),
    ("tt_add_bwd_s16", _I32, (ctypes.POINTER(TtAddBwdParams), _I32, _VP, _I32, _VP, _P_I32)),
    ("tt_pad_bwd_s16", _I32, (ctypes.POINTER(TtPadBwdParams), _VP, _I32, _VP, _P_I32)),
    ("tt_reshape_bwd_s16", _I32, (_I32, _VP, _I32, _VP, _P_I32)),
)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets ``argtypes`` / ``restype`` of every backward kernel on ``lib``."""
    for name, restype, argtypes in _SIGNATURES:
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = list(argtypes)
    return lib


class CKernelError(UsageError):
    def __init__(self, name: str, status: int) -> None:
        super().__init__(f"{name} returned status {status}")
        self.status = status


def _check(name: str, status: int) -> None:
    if status != TT_OK:
        raise CKernelError(name, status)


def _buf(a: np.ndarray, dtype: type | np.dtype[Any]) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a), dtype=dtype)


def _vp(a: np.ndarray | None) -> ctypes.c_void_p | None:
    if a is None:
        return None
    if not a.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return ctypes.c_void_p(a.ctypes.data)


def _i32_ptr(a: np.ndarray | None) -> Any:
    if a is None or a.size == 0:
        return None
    return a.ctypes.data_as(_P_I32)


def _dims(shape: Sequence[int], fill: int = 1) -> list[int]:
    """``shape`` left-padded with ``fill`` to the C runtime's rank."""
    if len(shape) > MAX_RANK:
        raise UsageError(f"rank {len(shape)} exceeds the C runtime's {MAX_RANK}")
    return [fill] * (MAX_RANK - len(shape)) + [int(d) for d in shape]


# ------------------------------------------------------------------ builders


@dataclass(frozen=True, eq=False)
class CSoftmaxCE:
    struct: TtSoftmaxCEParams


def softmax_ce_struct(p: SoftmaxCEParams) -> CSoftmaxCE:
    sm = p.softmax
    if sm.out_bits != 16:
        raise UsageError("the loss needs the int16 softmax")
    return CSoftmaxCE(TtSoftmaxCEParams(p.classes, sm.input_multiplier, sm.input_left_shift, sm.diff_min))


@dataclass(frozen=True, eq=False)
class CLinearBwd:
    struct: TtLinearBwdParams
    mu: np.ndarray
    channels: np.ndarray
    slot: np.ndarray
    kind: OpKind
    in_rows: int  # positions of the input (fully connected: rows)


def linear_bwd_struct(p: LinearBwdParams, channels: Sequence[int] = ()) -> CLinearBwd:
    """The C params of a linear layer's backward with trained input channels ``channels``
    (depthwise: channels), in the update order."""
    ch = np.asarray(list(channels), dtype=np.int32)
    if ch.size and (ch.min() < 0 or ch.max() >= p.in_channels or np.unique(ch).size != ch.size):
        raise UsageError(f"channels must be distinct indices in [0, {p.in_channels}), got {ch.tolist()}")
    slot = np.full(p.in_channels, -1, dtype=np.int32)
    slot[ch] = np.arange(ch.size, dtype=np.int32)
    mu = np.ascontiguousarray(p.mu, dtype=np.int32)
    dims: tuple[int, ...]
    if p.kind is OpKind.FULLY_CONNECTED:
        rows = math.prod(p.in_shape) // p.in_channels
        dims = (rows, 1, p.in_channels, rows, 1, p.out_channels, 1, 1, 1, 1, 0, 0, 0, 0)
    else:
        g = p.geom
        if g is None or len(p.in_shape) != 4 or len(p.out_shape) != 4 or p.in_shape[0] != 1:
            raise UsageError(f"{p.kind.value} backward needs NHWC shapes with a batch of 1 and a geometry")
        if (g.dh, g.dw) != (1, 1):
            raise UsageError("dilated convolutions have no backward")
        _, h, w, c = p.in_shape
        dims = (h, w, c, g.out_h, g.out_w, p.out_channels, g.kh, g.kw, g.sh, g.sw)
        dims += (g.pad_top, g.pad_left, g.pad_bottom, g.pad_right)
        rows = h * w
    s = TtLinearBwdParams(
        LINEAR_KINDS[p.kind],
        *dims,
        p.k,
        p.drop,
        p.in_zp,
        _i32_ptr(mu),
        int(ch.size),
        _i32_ptr(ch),
        _i32_ptr(slot) if ch.size else None,
    )
    return CLinearBwd(s, mu, ch, slot, p.kind, rows)


@dataclass(frozen=True, eq=False)
class CPoolBwd:
    struct: TtMeanBwdParams | TtAvgPoolBwdParams
    mu: np.ndarray


def pool_bwd_struct(p: PoolBwdParams) -> CPoolBwd:
    """A MEAN (``geom`` None) or AVERAGE_POOL_2D backward's C params."""
    g = p.geom
    if g is None:
        s_mean = TtMeanBwdParams()
        s_mean.in_dims[:] = _dims(p.in_shape)
        s_mean.keep_dims[:] = _dims(p.keep_shape)
        s_mean.mu = int(p.mu)
        s_mean.k = p.k
        return CPoolBwd(s_mean, np.zeros(0, dtype=np.int32))
    mu = np.ascontiguousarray(p.mu.reshape(-1), dtype=np.int32)
    _, h, w, c = p.in_shape
    s = TtAvgPoolBwdParams(
        h,
        w,
        c,
        g.out_h,
        g.out_w,
        g.kh,
        g.kw,
        g.sh,
        g.sw,
        g.pad_top,
        g.pad_left,
        g.pad_bottom,
        g.pad_right,
        _i32_ptr(mu),
        p.k,
    )
    return CPoolBwd(s, mu)


def add_bwd_struct(p: AddBwdParams) -> TtAddBwdParams:
    s = TtAddBwdParams()
    s.out_dims[:] = _dims(p.out_shape)
    for i, shape in enumerate(p.in_shapes):
        s.in_dims[i][:] = _dims(shape)
        s.same_shape[i] = int(tuple(shape) == tuple(p.out_shape))
    return s


def pad_bwd_struct(p: PadBwdParams) -> TtPadBwdParams:
    s = TtPadBwdParams()
    s.in_dims[:] = _dims(p.in_shape)
    s.out_dims[:] = _dims(tuple(d + lo + hi for d, (lo, hi) in zip(p.in_shape, p.pads, strict=True)))
    s.before[:] = _dims(tuple(lo for lo, _ in p.pads), fill=0)
    return s


# ------------------------------------------------------------------ sizes (memory planner)


def linear_input_scratch_bytes(p: LinearBwdParams) -> int:
    """Scratch of ``tt_linear_bwd_input_s16``: 4·in_c (conv), 0 (depthwise), 4·out_c (fully connected)."""
    if p.kind is OpKind.CONV_2D:
        return 4 * p.in_channels
    if p.kind is OpKind.DEPTHWISE_CONV_2D:
        return 0
    return 4 * p.out_channels


def linear_weight_row_len(p: LinearBwdParams, n_channels: int) -> int:
    """int64 elements of one weight-gradient row (the caller's buffer is 8× that in bytes)."""
    g = p.geom
    taps = 1 if g is None else g.kh * g.kw
    return taps if p.kind is OpKind.DEPTHWISE_CONV_2D else taps * n_channels


# ------------------------------------------------------------------ numpy-level wrappers


def c_normalize(lib: ctypes.CDLL, acc: np.ndarray, e_acc: int, bits: int = GRAD_BITS) -> Grad:
    a = np.asarray(acc)
    wide = a.dtype == np.int64
    src = _buf(a, np.int64 if wide else np.int32)
    g = np.empty(src.shape, dtype=np.int16)
    e = _I32()
    name = "tt_normalize_s64" if wide else "tt_normalize_s32"
    _check(name, getattr(lib, name)(_vp(src), src.size, e_acc, bits, _vp(g), ctypes.byref(e)))
    return Grad(g, e.value)


def c_add_grads(lib: ctypes.CDLL, a: Grad, b: Grad) -> Grad:
    ga, gb = _buf(a.g, np.int16), _buf(b.g, np.int16)
    out = np.empty(ga.shape, dtype=np.int16)
    e = _I32()
    _check("tt_add_grads_s16", lib.tt_add_grads_s16(_vp(ga), a.e, _vp(gb), b.e, ga.size, _vp(out), ctypes.byref(e)))
    return Grad(out, e.value)


def c_clamp_mask(lib: ctypes.CDLL, y_q: np.ndarray, act_min: int, act_max: int) -> np.ndarray:
    y = _buf(y_q, np.int8)
    mask = np.empty(mask_nbytes(y.size), dtype=np.uint8)
    _check("tt_clamp_mask_s8", lib.tt_clamp_mask_s8(_vp(y), y.size, act_min, act_max, _vp(mask)))
    return mask


def c_apply_mask(lib: ctypes.CDLL, grad: Grad, packed: np.ndarray) -> Grad:
    g = _buf(grad.g, np.int16).copy()
    m = _buf(packed, np.uint8)
    _check("tt_apply_mask_s16", lib.tt_apply_mask_s16(_vp(g), _vp(m), g.size, _vp(g)))
    return Grad(g, grad.e)


def c_softmax_ce_grad(lib: ctypes.CDLL, p: CSoftmaxCE, logits_q: np.ndarray, label: int) -> tuple[Grad, int, int]:
    """``(gradient, P_label, predicted)``."""
    x = _buf(logits_q, np.int8)
    g = np.empty(x.shape, dtype=np.int16)
    e, p_label, pred = _I32(), _I32(), _I32()
    status = lib.tt_softmax_ce_grad_s8(
        ctypes.byref(p.struct), _vp(x), label, _vp(g), ctypes.byref(e), ctypes.byref(p_label), ctypes.byref(pred)
    )
    _check("tt_softmax_ce_grad_s8", status)
    return Grad(g, e.value), p_label.value, pred.value


def trained_slice(kind: OpKind, w: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """``w[..., channels]`` (fully connected: ``w[:, channels]``): the RAM slice of a layer's
    trained weights, C-contiguous."""
    ch = list(channels)
    return np.ascontiguousarray(w[:, ch] if kind is OpKind.FULLY_CONNECTED else w[..., ch])


def c_linear_input_grad(
    lib: ctypes.CDLL, c: CLinearBwd, p: LinearBwdParams, w: np.ndarray, g_y: Grad, w_sub: np.ndarray | None = None
) -> Grad:
    """The input gradient; ``w`` the flash weights, ``w_sub`` the current trained slice (or None)."""
    wf = _buf(w, np.int8)
    ws = None if w_sub is None else _buf(w_sub, np.int8)
    gy = _buf(g_y.g, np.int16)
    gx = np.empty(p.in_shape, dtype=np.int16)
    scratch = np.empty(max(linear_input_scratch_bytes(p) // 4, 1), dtype=np.int32)
    e = _I32()
    status = lib.tt_linear_bwd_input_s16(
        ctypes.byref(c.struct), _vp(wf), _vp(ws), _vp(gy), g_y.e, _vp(gx), ctypes.byref(e), _vp(scratch)
    )
    _check("tt_linear_bwd_input_s16", status)
    return Grad(gx, e.value)


def c_linear_bias_grad(lib: ctypes.CDLL, c: CLinearBwd, p: LinearBwdParams, g_y: Grad) -> np.ndarray:
    gy = _buf(g_y.g, np.int16)
    out = np.empty(p.out_channels, dtype=np.int64)
    _check("tt_linear_bwd_bias_s16", lib.tt_linear_bwd_bias_s16(ctypes.byref(c.struct), _vp(gy), _vp(out)))
    return out


def c_linear_weight_grad(
    lib: ctypes.CDLL, c: CLinearBwd, p: LinearBwdParams, g_y: Grad, x_sub: np.ndarray
) -> np.ndarray:
    """Every weight-gradient row, assembled in numpy ``weight_grad``'s layout (``w[..., channels]``)."""
    n = int(c.channels.size)
    gy = _buf(g_y.g, np.int16)
    xs = _buf(x_sub, np.int8)
    length = linear_weight_row_len(p, n)
    rows = n if p.kind is OpKind.DEPTHWISE_CONV_2D else p.out_channels
    out = np.empty((rows, length), dtype=np.int64)
    fn = lib.tt_linear_bwd_weight_row_s16
    for r in range(rows):
        row = out[r]
        _check("tt_linear_bwd_weight_row_s16", fn(ctypes.byref(c.struct), _vp(gy), _vp(xs), r, _vp(row)))
    if p.kind is OpKind.FULLY_CONNECTED:
        return out
    g = p.geom
    assert g is not None
    if p.kind is OpKind.DEPTHWISE_CONV_2D:
        return np.ascontiguousarray(out.T.reshape(1, g.kh, g.kw, n))
    return out.reshape(p.out_channels, g.kh, g.kw, n)


def c_select_input_channels(lib: ctypes.CDLL, c: CLinearBwd, x: np.ndarray) -> np.ndarray:
    xa = _buf(x, np.int8)
    n = int(c.channels.size)
    out = np.empty(c.in_rows * n, dtype=np.int8)
    _check("tt_linear_save_input_s8", lib.tt_linear_save_input_s8(ctypes.byref(c.struct), _vp(xa), _vp(out)))
    if c.kind is OpKind.FULLY_CONNECTED:
        return out.reshape(c.in_rows, n)
    return out.reshape(*xa.shape[:-1], n)


def c_pool_input_grad(lib: ctypes.CDLL, c: CPoolBwd, p: PoolBwdParams, g_y: Grad) -> Grad:
    gy = _buf(g_y.g, np.int16)
    gx = np.empty(p.in_shape, dtype=np.int16)
    e = _I32()
    if isinstance(c.struct, TtMeanBwdParams):
        status = lib.tt_mean_bwd_s16(ctypes.byref(c.struct), _vp(gy), g_y.e, _vp(gx), ctypes.byref(e))
        _check("tt_mean_bwd_s16", status)
    else:
        status = lib.tt_avgpool_bwd_s16(ctypes.byref(c.struct), _vp(gy), g_y.e, _vp(gx), ctypes.byref(e))
        _check("tt_avgpool_bwd_s16", status)
    return Grad(gx, e.value)


def c_add_input_grads(lib: ctypes.CDLL, s: TtAddBwdParams, p: AddBwdParams, g_y: Grad) -> tuple[Grad, Grad]:
    gy = _buf(g_y.g, np.int16)
    out: list[Grad] = []
    for which, shape in enumerate(p.in_shapes):
        gx = np.empty(shape, dtype=np.int16)
        e = _I32()
        _check("tt_add_bwd_s16", lib.tt_add_bwd_s16(ctypes.byref(s), which, _vp(gy), g_y.e, _vp(gx), ctypes.byref(e)))
        out.append(Grad(gx, e.value))
    return out[0], out[1]


def c_pad_input_grad(lib: ctypes.CDLL, s: TtPadBwdParams, p: PadBwdParams, g_y: Grad, in_place: bool = False) -> Grad:
    gy = _buf(g_y.g, np.int16).copy()
    gx = gy if in_place else np.empty(p.in_shape, dtype=np.int16)
    e = _I32()
    _check("tt_pad_bwd_s16", lib.tt_pad_bwd_s16(ctypes.byref(s), _vp(gy), g_y.e, _vp(gx), ctypes.byref(e)))
    n = math.prod(p.in_shape)
    return Grad(gx.reshape(-1)[:n].reshape(p.in_shape).copy(), e.value)


def c_reshape_input_grad(lib: ctypes.CDLL, in_shape: tuple[int, ...], g_y: Grad) -> Grad:
    gy = _buf(g_y.g, np.int16)
    gx = np.empty(in_shape, dtype=np.int16)
    e = _I32()
    _check("tt_reshape_bwd_s16", lib.tt_reshape_bwd_s16(gy.size, _vp(gy), g_y.e, _vp(gx), ctypes.byref(e)))
    return Grad(gx, e.value)
