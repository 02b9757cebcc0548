"""ctypes mirrors of the C forward kernels (``tt_conv.h``, ``tt_fc.h``, ``tt_eltwise.h``,
``tt_pool.h``, ``tt_shape.h``, ``tt_preprocess.h``) and the translation of an op's numpy
kernel parameters into the C kernel's parameters struct.

Each ``*_c_params(op, inputs, outputs)`` runs the numpy kernel's ``prepare`` (validation,
geometry) and derives exactly what the C struct needs; the per-channel multipliers and
shifts are computed with the same functions, from the same floats, as the numpy kernel's
``prepare`` (TFLite Micro's Prepare arithmetic), so the C computes the numpy kernel's bytes.
The result is a :class:`CKernelParams`: the ctypes struct plus the numpy arrays its pointer
fields point to (kept alive with it). A code generator renders it as ``static const``
initialisers with :meth:`CKernelParams.values`; tests pass ``cp.ref`` to the C function
(see the ``run_*`` helpers, which call a runtime loaded with
:func:`tinytrain.testing.cbuild.load_runtime` after :func:`declare_forward`).

Conventions shared with the C: weights and biases are not part of the params (biases train,
weights may be patched), one sample (N = 1) per call for the window ops.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import (
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    FullyConnectedAttrs,
    Op,
    OpKind,
)
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.core_common import f32, per_tensor_qparams, quantized_activation_range
from tinytrain.sim.kernels.core_conv import ConvParams, DepthwiseParams, Geometry, channel_qparams
from tinytrain.sim.kernels.core_pool import PoolParams
from tinytrain.sim.kernels.core_reduce import ReduceParams
from tinytrain.sim.kernels.core_shape import PadParams, ReshapeParams
from tinytrain.train.data import Preprocess, ResizeAxis

ADD_LEFT_SHIFT = 20  # TFLite Micro's int8 ADD
PAD_MAX_RANK = 4

_I32 = ctypes.c_int32
_I32P = ctypes.POINTER(ctypes.c_int32)
_I8P = ctypes.POINTER(ctypes.c_int8)
_U16P = ctypes.POINTER(ctypes.c_uint16)

# ----------------------------------------------------------------------- ctypes mirrors


def _ints(*names: str) -> list[tuple[str, Any]]:
    return [(n, _I32) for n in names]


class TtWeightPatch(ctypes.Structure):
    _fields_ = [("n", _I32), ("ch", _U16P), ("w_train", _I8P)]


_WINDOW = ("stride_h", "stride_w", "dil_h", "dil_w", "pad_top", "pad_left", "pad_bottom", "pad_right")


class TtConvParams(ctypes.Structure):
    _fields_ = [
        *_ints("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "filter_in_c", *_WINDOW),
        *_ints("in_zp", "out_zp", "act_min", "act_max"),
        ("mult", _I32P),
        ("shift", _I32P),
    ]


class TtDwParams(ctypes.Structure):
    _fields_ = [
        *_ints("in_h", "in_w", "in_c", "out_h", "out_w", "out_c", "k_h", "k_w", "depth_mult", *_WINDOW),
        *_ints("in_zp", "out_zp", "act_min", "act_max"),
        ("mult", _I32P),
        ("shift", _I32P),
    ]


class TtFcParams(ctypes.Structure):
    _fields_ = [
        *_ints("rows", "in_c", "out_c", "in_zp", "w_zp", "out_zp", "act_min", "act_max"),
        ("mult", _I32P),
        ("shift", _I32P),
    ]


class TtAddParams(ctypes.Structure):
    _fields_ = _ints(
        "size",
        "in1_zp",
        "in2_zp",
        "left_shift",
        "in1_mult",
        "in1_shift",
        "in2_mult",
        "in2_shift",
        "out_mult",
        "out_shift",
        "out_zp",
        "act_min",
        "act_max",
    )


class TtPoolParams(ctypes.Structure):
    _fields_ = _ints(
        "in_h",
        "in_w",
        "c",
        "out_h",
        "out_w",
        "k_h",
        "k_w",
        "stride_h",
        "stride_w",
        "pad_top",
        "pad_left",
        "pad_bottom",
        "pad_right",
        "act_min",
        "act_max",
    )


class TtMeanParams(ctypes.Structure):
    _fields_ = _ints("outer", "n", "inner", "in_zp", "mult", "shift", "out_zp")


class TtPadParams(ctypes.Structure):
    _fields_ = [
        ("in_dims", _I32 * PAD_MAX_RANK),
        ("before", _I32 * PAD_MAX_RANK),
        ("after", _I32 * PAD_MAX_RANK),
        ("value", _I32),
    ]


class TtReshapeParams(ctypes.Structure):
    _fields_ = [("size", _I32)]


class TtResizeAxis(ctypes.Structure):
    _fields_ = [("lo", _I32P), ("hi", _I32P), ("w0", _I32P), ("w1", _I32P)]


class TtPreprocessParams(ctypes.Structure):
    _fields_ = [
        *_ints("in_h", "in_w", "in_c", "out_h", "out_w", "out_c"),
        ("rows", TtResizeAxis),
        ("cols", TtResizeAxis),
        ("lut", _I8P),
    ]


S = TypeVar("S", bound=ctypes.Structure)
FieldValue = int | tuple[int, ...] | np.ndarray


@dataclass(frozen=True, eq=False)
class CKernelParams(Generic[S]):
    """A C params struct and the arrays behind its pointer fields (``arrays`` maps the
    field path, e.g. ``"mult"`` or ``"rows.lo"``, to the array; kept alive here)."""

    struct: S
    arrays: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def ref(self) -> Any:
        """``byref(struct)`` for a ctypes call (valid while this object lives)."""
        return ctypes.byref(self.struct)

    def values(self) -> dict[str, FieldValue]:
        """Every field by path: ints, fixed arrays as tuples, pointer fields as their arrays
        (a NULL pointer field is absent)."""
        out: dict[str, FieldValue] = {}
        _collect(self.struct, "", self.arrays, out)
        return out


def _collect(s: ctypes.Structure, prefix: str, arrays: Mapping[str, np.ndarray], out: dict[str, FieldValue]) -> None:
    for entry in s._fields_:
        name, ctype = entry[0], entry[1]
        path = prefix + name
        v = getattr(s, name)
        if isinstance(v, ctypes.Structure):
            _collect(v, path + ".", arrays, out)
        elif isinstance(v, ctypes.Array):
            out[path] = tuple(int(e) for e in v)
        elif isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer):
            if path in arrays:
                out[path] = arrays[path]
        else:
            out[path] = int(v)


def _c_array(a: np.ndarray | Sequence[int], dtype: type) -> np.ndarray:
    arr: np.ndarray = np.ascontiguousarray(np.asarray(a, dtype=dtype))
    arr.flags.writeable = False
    return arr


def _ptr(arr: np.ndarray, ptype: Any) -> Any:
    return arr.ctypes.data_as(ptype)


def _mult_shift(pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return _c_array([q for q, _ in pairs], np.int32), _c_array([s for _, s in pairs], np.int32)


def _prepare(op: Op, inputs: Inputs, outputs: Outputs) -> Any:
    return KERNELS[op.kind].prepare(op, inputs, outputs)


def _tensor(t: Tensor | None, what: str) -> Tensor:
    if t is None:
        raise UsageError(f"{what} is missing")
    return t


def _window_fields(g: Geometry) -> dict[str, int]:
    return {
        "k_h": g.kh,
        "k_w": g.kw,
        "stride_h": g.sh,
        "stride_w": g.sw,
        "dil_h": g.dh,
        "dil_w": g.dw,
        "pad_top": g.pad_top,
        "pad_left": g.pad_left,
        "pad_bottom": g.pad_bottom,
        "pad_right": g.pad_right,
        "out_h": g.out_h,
        "out_w": g.out_w,
    }


def _conv_quant(
    op: Op, inputs: Inputs, outputs: Outputs, channels: int
) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """Zero points, activation range and per-channel (mult, shift) exactly as
    ``core_conv.conv_requantizer`` derives them."""
    inp, filt, out = _tensor(inputs[0], "input"), _tensor(inputs[1], "filter"), outputs[0]
    in_scale, in_zp = per_tensor_qparams(op, inp, "input")
    out_scale, out_zp = per_tensor_qparams(op, out, "output")
    assert isinstance(op.attrs, (Conv2DAttrs, DepthwiseConv2DAttrs))
    lo, hi = quantized_activation_range(op, op.attrs.activation, out_scale, out_zp)
    mult, shift = _mult_shift(
        [quantize_multiplier(in_scale * fs / out_scale) for fs in channel_qparams(op, filt, channels)]
    )
    return {"in_zp": in_zp, "out_zp": out_zp, "act_min": lo, "act_max": hi}, mult, shift


def _int8_only(op: Op, is_int8: bool) -> None:
    if not is_int8:
        raise UsageError(f"{op.describe()}: the C runtime implements the int8 kernel only")


# ------------------------------------------------------------------ params converters


def conv_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtConvParams]:
    """``tt_conv_params`` of an int8 CONV_2D."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, ConvParams)
    _int8_only(op, p.is_int8)
    inp, filt = _tensor(inputs[0], "input"), _tensor(inputs[1], "filter")
    _, h, w, cin = inp.shape
    cout, _, _, fcin = filt.shape
    q, mult, shift = _conv_quant(op, inputs, outputs, cout)
    s = TtConvParams(
        in_h=h, in_w=w, in_c=cin, out_c=cout, filter_in_c=fcin, **_window_fields(p.geom), **q,
        mult=_ptr(mult, _I32P), shift=_ptr(shift, _I32P),
    )  # fmt: skip
    return CKernelParams(s, MappingProxyType({"mult": mult, "shift": shift}))


def depthwise_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtDwParams]:
    """``tt_dw_params`` of an int8 DEPTHWISE_CONV_2D."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, DepthwiseParams)
    _int8_only(op, p.is_int8)
    inp, filt = _tensor(inputs[0], "input"), _tensor(inputs[1], "filter")
    _, h, w, cin = inp.shape
    cout = filt.shape[3]
    q, mult, shift = _conv_quant(op, inputs, outputs, cout)
    s = TtDwParams(
        in_h=h, in_w=w, in_c=cin, out_c=cout, depth_mult=p.mult, **_window_fields(p.geom), **q,
        mult=_ptr(mult, _I32P), shift=_ptr(shift, _I32P),
    )  # fmt: skip
    return CKernelParams(s, MappingProxyType({"mult": mult, "shift": shift}))


def fc_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtFcParams]:
    """``tt_fc_params`` of an int8 FULLY_CONNECTED (multipliers as ``prepare_fully_connected``
    derives them: double precision per channel, float32 product per tensor)."""
    p = _prepare(op, inputs, outputs)
    _int8_only(op, p.is_int8)
    inp, filt, out = _tensor(inputs[0], "input"), _tensor(inputs[1], "weights"), outputs[0]
    assert isinstance(op.attrs, FullyConnectedAttrs) and filt.quant is not None
    in_scale, in_zp = per_tensor_qparams(op, inp, "input")
    out_scale, out_zp = per_tensor_qparams(op, out, "output")
    out_c, accum = filt.shape
    fq = filt.quant
    if len(fq.scale) > 1:
        pairs = [quantize_multiplier(in_scale * float(s) / out_scale) for s in fq.scale]
        w_zp = 0
    else:
        pairs = [quantize_multiplier(float(f32(in_scale) * f32(fq.scale[0])) / out_scale)] * out_c
        w_zp = int(fq.zero_point[0])
    mult, shift = _mult_shift(pairs)
    lo, hi = quantized_activation_range(op, op.attrs.activation, out_scale, out_zp)
    s = TtFcParams(
        rows=math.prod(out.shape[:-1]), in_c=accum, out_c=out_c, in_zp=in_zp, w_zp=w_zp, out_zp=out_zp,
        act_min=lo, act_max=hi, mult=_ptr(mult, _I32P), shift=_ptr(shift, _I32P),
    )  # fmt: skip
    return CKernelParams(s, MappingProxyType({"mult": mult, "shift": shift}))


def add_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtAddParams]:
    """``tt_add_params`` of an int8 ADD of two same-shape inputs (multipliers in double
    precision, as ``core_elementwise`` derives them for ADD)."""
    if op.kind is not OpKind.ADD:
        raise UsageError(f"{op.describe()}: not an ADD")
    p = _prepare(op, inputs, outputs)
    _int8_only(op, p.is_int8)
    a, b, out = _tensor(inputs[0], "input 1"), _tensor(inputs[1], "input 2"), outputs[0]
    if a.shape != b.shape or a.shape != out.shape:
        raise UsageError(f"{op.describe()}: the C ADD does not broadcast ({list(a.shape)} + {list(b.shape)})")
    assert isinstance(op.attrs, ElementwiseAttrs)
    s1, z1 = per_tensor_qparams(op, a, "input 1")
    s2, z2 = per_tensor_qparams(op, b, "input 2")
    so, zo = per_tensor_qparams(op, out, "output")
    twice = 2.0 * max(s1, s2)
    q1, sh1 = quantize_multiplier(s1 / twice)
    q2, sh2 = quantize_multiplier(s2 / twice)
    qo, sho = quantize_multiplier(twice / ((1 << ADD_LEFT_SHIFT) * so))
    lo, hi = quantized_activation_range(op, op.attrs.activation, so, zo)
    s = TtAddParams(
        size=out.size, in1_zp=z1, in2_zp=z2, left_shift=ADD_LEFT_SHIFT, in1_mult=q1, in1_shift=sh1,
        in2_mult=q2, in2_shift=sh2, out_mult=qo, out_shift=sho, out_zp=zo, act_min=lo, act_max=hi,
    )  # fmt: skip
    return CKernelParams(s)


def pool_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtPoolParams]:
    """``tt_pool_params`` of an int8 AVERAGE_POOL_2D or MAX_POOL_2D."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, PoolParams)
    _int8_only(op, p.is_int8)
    _, h, w, c = _tensor(inputs[0], "input").shape
    g = p.geom
    s = TtPoolParams(
        in_h=h, in_w=w, c=c, out_h=g.out_h, out_w=g.out_w, k_h=g.kh, k_w=g.kw, stride_h=g.sh, stride_w=g.sw,
        pad_top=g.pad_top, pad_left=g.pad_left, pad_bottom=g.pad_bottom, pad_right=g.pad_right,
        act_min=p.q_lo, act_max=p.q_hi,
    )  # fmt: skip
    return CKernelParams(s)


def mean_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtMeanParams]:
    """``tt_mean_params`` of an int8 MEAN or SUM over a run of consecutive axes (the
    multiplier with 1/n folded in for MEAN, exactly as ``prepare_reduce`` does)."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, ReduceParams)
    _int8_only(op, p.is_int8)
    inp, out = _tensor(inputs[0], "input"), outputs[0]
    axes = p.axes
    if not axes or list(axes) != list(range(axes[0], axes[-1] + 1)):
        raise UsageError(f"{op.describe()}: the C MEAN reduces consecutive axes only, got {list(axes)}")
    if p.n == 0:
        raise UsageError(f"{op.describe()}: empty reduction")
    s_in, z_in = per_tensor_qparams(op, inp, "input")
    s_out, z_out = per_tensor_qparams(op, out, "output")
    q, shift = quantize_multiplier(s_in / s_out)
    if p.is_mean:
        k = min(p.n.bit_length() - 1, 32, 31 + shift)
        q = (q << k) // p.n
        shift -= k
    s = TtMeanParams(
        outer=math.prod(inp.shape[: axes[0]]), n=p.n, inner=math.prod(inp.shape[axes[-1] + 1 :]),
        in_zp=z_in, mult=q, shift=shift, out_zp=z_out,
    )  # fmt: skip
    return CKernelParams(s)


def pad_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtPadParams]:
    """``tt_pad_params`` of an int8 PAD / PADV2 of rank <= 4."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, PadParams)
    inp = _tensor(inputs[0], "input")
    if inp.dtype.np != np.int8:
        raise UsageError(f"{op.describe()}: the C runtime implements the int8 kernel only")
    rank = len(inp.shape)
    if rank > PAD_MAX_RANK:
        raise UsageError(f"{op.describe()}: the C PAD handles rank <= {PAD_MAX_RANK}, got {rank}")
    lead = PAD_MAX_RANK - rank
    dims = (1,) * lead + tuple(inp.shape)
    pads = ((0, 0),) * lead + tuple(p.pads)
    arr = _I32 * PAD_MAX_RANK
    s = TtPadParams(
        in_dims=arr(*dims), before=arr(*(lo for lo, _ in pads)), after=arr(*(hi for _, hi in pads)), value=int(p.value)
    )
    return CKernelParams(s)


def reshape_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtReshapeParams]:
    """``tt_reshape_params`` of a RESHAPE / SQUEEZE / EXPAND_DIMS (any element type: bytes)."""
    p = _prepare(op, inputs, outputs)
    assert isinstance(p, ReshapeParams)
    inp = _tensor(inputs[0], "input")
    return CKernelParams(TtReshapeParams(size=inp.nbytes))


def _axis(a: ResizeAxis, name: str, arrays: dict[str, np.ndarray]) -> TtResizeAxis:
    fields = {}
    for f in ("lo", "hi", "w0", "w1"):
        arr = _c_array(getattr(a, f), np.int32)
        arrays[f"{name}.{f}"] = arr
        fields[f] = _ptr(arr, _I32P)
    return TtResizeAxis(**fields)


def preprocess_c_params(pre: Preprocess) -> CKernelParams[TtPreprocessParams]:
    """``tt_preprocess_params`` of a :class:`tinytrain.train.data.Preprocess`."""
    native = pre.native_shape
    in_c = native[2] if len(native) == 3 else 1
    out_h, out_w, out_c = pre.input_shape
    arrays: dict[str, np.ndarray] = {}
    rows = _axis(pre.rows, "rows", arrays)
    cols = _axis(pre.cols, "cols", arrays)
    lut = _c_array(pre.lut, np.int8)
    arrays["lut"] = lut
    s = TtPreprocessParams(
        in_h=native[0], in_w=native[1], in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c, rows=rows, cols=cols,
        lut=_ptr(lut, _I8P),
    )  # fmt: skip
    return CKernelParams(s, MappingProxyType(arrays))


def weight_patch(channels: Sequence[int] | np.ndarray, w_train: np.ndarray) -> CKernelParams[TtWeightPatch]:
    """A ``tt_weight_patch``: trained channel indices (strictly increasing) and the trained
    weights (conv ``[O, kh, kw, n]``, FC ``[O, n]``, depthwise ``[kh, kw, n]``)."""
    ch = _c_array(channels, np.uint16)
    wt = _c_array(w_train, np.int8)
    if wt.shape[-1] != ch.size:
        raise UsageError(f"w_train has {wt.shape[-1]} channels on its last axis for {ch.size} channel indices")
    s = TtWeightPatch(n=ch.size, ch=_ptr(ch, _U16P), w_train=_ptr(wt, _I8P))
    return CKernelParams(s, MappingProxyType({"ch": ch, "w_train": wt}))


# ------------------------------------------------------------------------ C calls

_P = ctypes.c_void_p
_SIGNATURES: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "tt_conv_s8": (_P, _P, _P, _P, _P, _P),
        "tt_depthwise_conv_s8": (_P, _P, _P, _P, _P, _P),
        "tt_fc_s8": (_P, _P, _P, _P, _P, _P),
        "tt_add_s8": (_P, _P, _P, _P),
        "tt_avg_pool_s8": (_P, _P, _P),
        "tt_max_pool_s8": (_P, _P, _P),
        "tt_mean_s8": (_P, _P, _P),
        "tt_pad_s8": (_P, _P, _P),
        "tt_reshape_s8": (_P, _P, _P),
        "tt_preprocess_u8_s8": (_P, _P, _P),
    }
)


def declare_forward(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets ``argtypes``/``restype`` of the forward kernels on ``lib`` (returns it)."""
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = list(args)
        fn.restype = ctypes.c_int
    return lib


def _addr(a: np.ndarray | None) -> int | None:
    if a is None:
        return None
    if not a.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return int(a.ctypes.data)


def _check(status: int, name: str) -> None:
    if status != 0:
        raise UsageError(f"{name} returned status {status}")


def _bias(b: np.ndarray | None) -> np.ndarray | None:
    return None if b is None else np.ascontiguousarray(b, dtype=np.int32)


def _patch_ref(patch: CKernelParams[TtWeightPatch] | None) -> Any:
    return None if patch is None else ctypes.addressof(patch.struct)


def _i8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int8)


def _run_linear_c(
    lib: ctypes.CDLL,
    name: str,
    struct: ctypes.Structure,
    out_shape: tuple[int, ...],
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    patch: CKernelParams[TtWeightPatch] | None,
) -> np.ndarray:
    """C kernel ``name(params, x, w, bias, patch, y)`` (conv, depthwise, fc): int8 ``y`` of ``out_shape``."""
    y = np.empty(out_shape, np.int8)
    x, w, b = _i8(x), _i8(w), _bias(bias)
    fn = getattr(lib, name)
    _check(fn(ctypes.addressof(struct), _addr(x), _addr(w), _addr(b), _patch_ref(patch), _addr(y)), name)
    return y


def run_conv_c(
    lib: ctypes.CDLL,
    cp: CKernelParams[TtConvParams],
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    patch: CKernelParams[TtWeightPatch] | None = None,
) -> np.ndarray:
    """One sample through ``tt_conv_s8``: int8 ``[out_h, out_w, out_c]``."""
    s = cp.struct
    return _run_linear_c(lib, "tt_conv_s8", s, (s.out_h, s.out_w, s.out_c), x, w, bias, patch)


def run_depthwise_c(
    lib: ctypes.CDLL,
    cp: CKernelParams[TtDwParams],
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    patch: CKernelParams[TtWeightPatch] | None = None,
) -> np.ndarray:
    """One sample through ``tt_depthwise_conv_s8``: int8 ``[out_h, out_w, out_c]``."""
    s = cp.struct
    return _run_linear_c(lib, "tt_depthwise_conv_s8", s, (s.out_h, s.out_w, s.out_c), x, w, bias, patch)


def run_fc_c(
    lib: ctypes.CDLL,
    cp: CKernelParams[TtFcParams],
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None,
    patch: CKernelParams[TtWeightPatch] | None = None,
) -> np.ndarray:
    """``tt_fc_s8`` on ``rows`` input rows: int8 ``[rows, out_c]``."""
    s = cp.struct
    return _run_linear_c(lib, "tt_fc_s8", s, (s.rows, s.out_c), x, w, bias, patch)


def run_add_c(lib: ctypes.CDLL, cp: CKernelParams[TtAddParams], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = _i8(a), _i8(b)
    y = np.empty(cp.struct.size, np.int8)
    _check(lib.tt_add_s8(ctypes.addressof(cp.struct), _addr(a), _addr(b), _addr(y)), "tt_add_s8")
    return y


def run_pool_c(lib: ctypes.CDLL, cp: CKernelParams[TtPoolParams], x: np.ndarray, is_avg: bool) -> np.ndarray:
    s = cp.struct
    y = np.empty((s.out_h, s.out_w, s.c), np.int8)
    x = _i8(x)
    fn = lib.tt_avg_pool_s8 if is_avg else lib.tt_max_pool_s8
    _check(fn(ctypes.addressof(s), _addr(x), _addr(y)), "tt_avg_pool_s8" if is_avg else "tt_max_pool_s8")
    return y


def run_mean_c(lib: ctypes.CDLL, cp: CKernelParams[TtMeanParams], x: np.ndarray) -> np.ndarray:
    s = cp.struct
    y = np.empty((s.outer, s.inner), np.int8)
    x = _i8(x)
    _check(lib.tt_mean_s8(ctypes.addressof(s), _addr(x), _addr(y)), "tt_mean_s8")
    return y


def run_pad_c(lib: ctypes.CDLL, cp: CKernelParams[TtPadParams], x: np.ndarray) -> np.ndarray:
    s = cp.struct
    shape = tuple(int(s.in_dims[i]) + int(s.before[i]) + int(s.after[i]) for i in range(PAD_MAX_RANK))
    y = np.empty(shape, np.int8)
    x = _i8(x)
    _check(lib.tt_pad_s8(ctypes.addressof(s), _addr(x), _addr(y)), "tt_pad_s8")
    return y


def run_reshape_c(lib: ctypes.CDLL, cp: CKernelParams[TtReshapeParams], x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = np.empty(cp.struct.size, np.uint8)
    _check(lib.tt_reshape_s8(ctypes.addressof(cp.struct), _addr(x), _addr(y)), "tt_reshape_s8")
    return y


def run_preprocess_c(lib: ctypes.CDLL, cp: CKernelParams[TtPreprocessParams], sample: np.ndarray) -> np.ndarray:
    """One native uint8 sample through ``tt_preprocess_u8_s8``: int8 ``[out_h, out_w, out_c]``."""
    s = cp.struct
    x = np.ascontiguousarray(sample, dtype=np.uint8)
    y = np.empty((s.out_h, s.out_w, s.out_c), np.int8)
    _check(lib.tt_preprocess_u8_s8(ctypes.addressof(s), _addr(x), _addr(y)), "tt_preprocess_u8_s8")
    return y
