"""ctypes runners of the tiny-ViT C kernels (``firmware_templates/runtime/include/tt_vit.h``):
numpy-in / numpy-out wrappers that call the C kernels, for the op-by-op tests.

The params builders (ctypes struct mirrors, ``*_c_params``) live in :mod:`codegen.cparams.vit`
(the code generator uses them; package code never imports ``tinytrain.testing``) and are
re-exported here.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from codegen.cparams.vit import ADD_LEFT_SHIFT as ADD_LEFT_SHIFT
from codegen.cparams.vit import BINARY_KINDS as BINARY_KINDS
from codegen.cparams.vit import BMM_BATCH_RANK as BMM_BATCH_RANK
from codegen.cparams.vit import CONCAT_MAX_INPUTS as CONCAT_MAX_INPUTS
from codegen.cparams.vit import MAX_RANK as MAX_RANK
from codegen.cparams.vit import CParams as CParams
from codegen.cparams.vit import FieldValue as FieldValue
from codegen.cparams.vit import TtBatchMatMulBwdParams as TtBatchMatMulBwdParams
from codegen.cparams.vit import TtBatchMatMulParams as TtBatchMatMulParams
from codegen.cparams.vit import TtBinaryParams as TtBinaryParams
from codegen.cparams.vit import TtConcatBwdParams as TtConcatBwdParams
from codegen.cparams.vit import TtConcatParams as TtConcatParams
from codegen.cparams.vit import TtGatherParams as TtGatherParams
from codegen.cparams.vit import TtLutParams as TtLutParams
from codegen.cparams.vit import TtMeanLastBwdParams as TtMeanLastBwdParams
from codegen.cparams.vit import TtMulBwdParams as TtMulBwdParams
from codegen.cparams.vit import TtRsqrtBwdParams as TtRsqrtBwdParams
from codegen.cparams.vit import TtSoftmaxBwdParams as TtSoftmaxBwdParams
from codegen.cparams.vit import TtSoftmaxParams as TtSoftmaxParams
from codegen.cparams.vit import TtSubBwdParams as TtSubBwdParams
from codegen.cparams.vit import TtTokenSelectParams as TtTokenSelectParams
from codegen.cparams.vit import batch_matmul_bwd_c_params as batch_matmul_bwd_c_params
from codegen.cparams.vit import batch_matmul_c_params as batch_matmul_c_params
from codegen.cparams.vit import binary_c_params as binary_c_params
from codegen.cparams.vit import broadcast_strides as broadcast_strides
from codegen.cparams.vit import concat_bwd_c_params as concat_bwd_c_params
from codegen.cparams.vit import concat_c_params as concat_c_params
from codegen.cparams.vit import contiguous_strides as contiguous_strides
from codegen.cparams.vit import mean_bwd_c_params as mean_bwd_c_params
from codegen.cparams.vit import mul_bwd_c_params as mul_bwd_c_params
from codegen.cparams.vit import pad_dims as pad_dims
from codegen.cparams.vit import rsqrt_bwd_c_params as rsqrt_bwd_c_params
from codegen.cparams.vit import rsqrt_c_params as rsqrt_c_params
from codegen.cparams.vit import slice_struct as slice_struct
from codegen.cparams.vit import softmax_bwd_c_params as softmax_bwd_c_params
from codegen.cparams.vit import softmax_c_params as softmax_c_params
from codegen.cparams.vit import strided_slice_bwd_c_params as strided_slice_bwd_c_params
from codegen.cparams.vit import strided_slice_c_params as strided_slice_c_params
from codegen.cparams.vit import sub_bwd_c_params as sub_bwd_c_params
from codegen.cparams.vit import token_select_bwd_c_params as token_select_bwd_c_params
from codegen.cparams.vit import token_select_c_params as token_select_c_params
from codegen.cparams.vit import transpose_bwd_c_params as transpose_bwd_c_params
from codegen.cparams.vit import transpose_c_params as transpose_c_params
from codegen.cparams.vit import transpose_struct as transpose_struct
from tinytrain.errors import UsageError
from tinytrain.train.kernels.gradient import Grad

_I32 = ctypes.c_int32

# ------------------------------------------------------------------------------- C calls

_P = ctypes.c_void_p
_SIGNATURES: Mapping[str, tuple[Any, ...]] = MappingProxyType(
    {
        "tt_binary_s8": (_P, _P, _P, _P),
        "tt_lut_s8": (_P, _P, _P),
        "tt_softmax_s8": (_P, _P, _P),
        "tt_batch_matmul_s8": (_P, _P, _P, _P),
        "tt_transpose_s8": (_P, _P, _P),
        "tt_strided_slice_s8": (_P, _P, _P),
        "tt_concat_s8": (_P, _P, _P),
        "tt_concat2_s8": (_P, _P, _P, _P),
        "tt_token_select_s8": (_P, _P, _P, _P, _P),
        "tt_token_select_bwd_s16": (_P, _P, _I32, _P, _P, _P),
        "tt_batch_matmul_bwd_s16": (_P, _I32, _P, _I32, _P, _P, _P),
        "tt_softmax_bwd_s16": (_P, _P, _I32, _P, _P, _P),
        "tt_mul_bwd_s16": (_P, _I32, _P, _I32, _P, _P, _P),
        "tt_sub_bwd_s16": (_P, _I32, _P, _I32, _P, _P),
        "tt_mean_last_bwd_s16": (_P, _P, _I32, _P, _P),
        "tt_rsqrt_bwd_s16": (_P, _P, _I32, _P, _P, _P),
        "tt_transpose_bwd_s16": (_P, _P, _I32, _P, _P),
        "tt_strided_slice_bwd_s16": (_P, _I32, _P, _I32, _P, _P),
        "tt_concat_bwd_s16": (_P, _P, _I32, _P, _P),
    }
)


def declare_vit(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets ``argtypes``/``restype`` of the ViT kernels on ``lib`` (returns it)."""
    for name, args in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes = list(args)
        fn.restype = ctypes.c_int
    return lib


class CKernelError(UsageError):
    """A C kernel returned a status other than TT_OK."""

    def __init__(self, name: str, status: int) -> None:
        super().__init__(f"{name} returned status {status}")
        self.status = status


def _call(lib: ctypes.CDLL, name: str, *args: Any) -> None:
    st = int(getattr(lib, name)(*args))
    if st != 0:
        raise CKernelError(name, st)


def _a(x: np.ndarray) -> int:
    if not x.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return int(x.ctypes.data)


def _i8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int8)


def _i16(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int16)


def _dims(s: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in s.out_dims)


def run_binary_c(lib: ctypes.CDLL, cp: CParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``tt_binary_s8``: int8 output of the padded output dims."""
    a, b = _i8(a), _i8(b)
    y = np.empty(_dims(cp.struct), np.int8)
    _call(lib, "tt_binary_s8", ctypes.addressof(cp.struct), _a(a), _a(b), _a(y))
    return y


def run_lut_c(lib: ctypes.CDLL, cp: CParams, x: np.ndarray, in_place: bool = False) -> np.ndarray:
    x = _i8(x).copy()
    y = x if in_place else np.empty_like(x)
    _call(lib, "tt_lut_s8", ctypes.addressof(cp.struct), _a(x), _a(y))
    return y


def run_softmax_c(lib: ctypes.CDLL, cp: CParams, x: np.ndarray, in_place: bool = False) -> np.ndarray:
    x = _i8(x).copy()
    y = x if in_place else np.empty_like(x)
    _call(lib, "tt_softmax_s8", ctypes.addressof(cp.struct), _a(x), _a(y))
    return y


def run_batch_matmul_c(lib: ctypes.CDLL, cp: CParams, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    s = cp.struct
    a, b = _i8(a), _i8(b)
    y = np.empty((*(int(v) for v in s.batch), s.rows, s.cols), np.int8)
    _call(lib, "tt_batch_matmul_s8", ctypes.addressof(s), _a(a), _a(b), _a(y))
    return y


def run_gather_c(lib: ctypes.CDLL, cp: CParams, x: np.ndarray, name: str = "tt_transpose_s8") -> np.ndarray:
    """``tt_transpose_s8`` / ``tt_strided_slice_s8``: int8 output of the padded output dims."""
    x = _i8(x)
    y = np.empty(_dims(cp.struct), np.int8)
    _call(lib, name, ctypes.addressof(cp.struct), _a(x), _a(y))
    return y


def run_concat_c(lib: ctypes.CDLL, cp: CParams, xs: Sequence[np.ndarray]) -> np.ndarray:
    s = cp.struct
    arrs = [_i8(x) for x in xs]
    ptrs = (ctypes.c_void_p * len(arrs))(*(_a(x) for x in arrs))
    y = np.empty(s.outer * sum(int(v) for v in s.axis_len) * s.inner, np.int8)
    _call(lib, "tt_concat_s8", ctypes.addressof(s), ptrs, _a(y))
    return y


def _grad_out(g_y: np.ndarray, size: int, in_place: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the g_y buffer passed to C, the g_x buffer): the same array when ``in_place``."""
    g = _i16(g_y).copy()
    if in_place:
        if g.size != size:
            raise UsageError("in place needs equal sizes")
        return g, g
    return g, np.empty(size, np.int16)


def c_batch_matmul_input_grad(
    lib: ctypes.CDLL, cp: CParams, which: int, g_y: Grad, other: np.ndarray, in_shape: Sequence[int]
) -> Grad:
    g, gx = _grad_out(g_y.g, math.prod(in_shape), False)
    o = _i8(other)
    e = ctypes.c_int32(0)
    _call(
        lib,
        "tt_batch_matmul_bwd_s16",
        ctypes.addressof(cp.struct),
        which,
        _a(g),
        g_y.e,
        _a(o),
        _a(gx),
        ctypes.addressof(e),
    )
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def c_softmax_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, y: np.ndarray, in_place: bool = False) -> Grad:
    g, gx = _grad_out(g_y.g, g_y.g.size, in_place)
    yq = _i8(y)
    e = ctypes.c_int32(0)
    _call(lib, "tt_softmax_bwd_s16", ctypes.addressof(cp.struct), _a(g), g_y.e, _a(yq), _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(g_y.shape), e.value)


def c_mul_input_grad(
    lib: ctypes.CDLL,
    cp: CParams,
    which: int,
    g_y: Grad,
    other: np.ndarray,
    in_shape: Sequence[int],
    in_place: bool = False,
) -> Grad:
    g, gx = _grad_out(g_y.g, math.prod(in_shape), in_place)
    o = _i8(other)
    e = ctypes.c_int32(0)
    _call(lib, "tt_mul_bwd_s16", ctypes.addressof(cp.struct), which, _a(g), g_y.e, _a(o), _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def c_sub_input_grad(
    lib: ctypes.CDLL, cp: CParams, which: int, g_y: Grad, in_shape: Sequence[int], in_place: bool = False
) -> Grad:
    g, gx = _grad_out(g_y.g, math.prod(in_shape), in_place)
    e = ctypes.c_int32(0)
    _call(lib, "tt_sub_bwd_s16", ctypes.addressof(cp.struct), which, _a(g), g_y.e, _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def c_mean_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, in_shape: Sequence[int]) -> Grad:
    g, gx = _grad_out(g_y.g, math.prod(in_shape), False)
    e = ctypes.c_int32(0)
    _call(lib, "tt_mean_last_bwd_s16", ctypes.addressof(cp.struct), _a(g), g_y.e, _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def c_rsqrt_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, y: np.ndarray, in_place: bool = False) -> Grad:
    g, gx = _grad_out(g_y.g, g_y.g.size, in_place)
    yq = _i8(y)
    e = ctypes.c_int32(0)
    _call(lib, "tt_rsqrt_bwd_s16", ctypes.addressof(cp.struct), _a(g), g_y.e, _a(yq), _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(g_y.shape), e.value)


def c_transpose_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad) -> Grad:
    dims = _dims(cp.struct)
    g, gx = _grad_out(g_y.g, math.prod(dims), False)
    e = ctypes.c_int32(0)
    _call(lib, "tt_transpose_bwd_s16", ctypes.addressof(cp.struct), _a(g), g_y.e, _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(dims), e.value)


def c_strided_slice_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, in_shape: Sequence[int]) -> Grad:
    size = math.prod(in_shape)
    g, gx = _grad_out(g_y.g, size, False)
    e = ctypes.c_int32(0)
    _call(lib, "tt_strided_slice_bwd_s16", ctypes.addressof(cp.struct), size, _a(g), g_y.e, _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def c_concat_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, in_shape: Sequence[int]) -> Grad:
    g, gx = _grad_out(g_y.g, math.prod(in_shape), False)
    e = ctypes.c_int32(0)
    _call(lib, "tt_concat_bwd_s16", ctypes.addressof(cp.struct), _a(g), g_y.e, _a(gx), ctypes.addressof(e))
    return Grad(gx.reshape(tuple(in_shape)), e.value)


def run_token_select_c(lib: ctypes.CDLL, cp: CParams, x: np.ndarray, attn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tt_token_select_s8``: (x' [1, 1 + K, D] int8, idx [1, K] uint8)."""
    s = cp.struct
    xa, pa = _i8(x), _i8(attn)
    y = np.empty((1, 1 + s.kept, s.dim), np.int8)
    idx = np.empty((1, s.kept), np.uint8)
    _call(lib, "tt_token_select_s8", ctypes.addressof(s), _a(xa), _a(pa), _a(y), _a(idx))
    return y, idx


def c_token_select_input_grad(lib: ctypes.CDLL, cp: CParams, g_y: Grad, idx: np.ndarray) -> Grad:
    s = cp.struct
    g = _i16(g_y.g)
    ia = np.ascontiguousarray(idx, dtype=np.uint8)
    gx = np.empty((1, s.tokens, s.dim), np.int16)
    e = ctypes.c_int32(0)
    _call(lib, "tt_token_select_bwd_s16", ctypes.addressof(s), _a(g), g_y.e, _a(ia), _a(gx), ctypes.addressof(e))
    return Grad(gx, e.value)
