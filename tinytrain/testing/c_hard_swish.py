"""ctypes mirrors of ``tt_hard_swish.h`` (int8 HARD_SWISH, MobileTL's sign mask) and the
translation of a HARD_SWISH op into the C kernel's ``tt_hard_swish_params``.

:func:`hard_swish_c_params` runs the numpy kernel's ``prepare`` (validation, the same
errors) and derives the C constants with the same float32/double steps as
``tinytrain.sim.kernels.nl_activations.prepare_hard_swish`` (TFLite Micro's Prepare), so the
C computes the simulator's table byte for byte (tests/test_mobiletl_c.py checks all 256
inputs for many quantizations). The code generator (codegen/lower.py) and the tests use it.
"""

from __future__ import annotations

import ctypes

import numpy as np

from codegen.cparams.forward import CKernelParams
from tinytrain.errors import UsageError
from tinytrain.ir.ops import Op, OpKind
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.nl_activations import FloatHardSwishParams


class TtHardSwishParams(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("input_zp", "output_zp", "out_mult", "out_exp", "rel_mult", "rel_exp")]


def _downscale_to_int16(multiplier: int) -> int:
    """TFLite's ``DownScaleInt32ToInt16Multiplier`` (as nl_activations)."""
    if multiplier >= (1 << 31) - 1 - (1 << 15):
        return (1 << 15) - 1
    return (multiplier + (1 << 15)) >> 16


def hard_swish_c_params(op: Op, inputs: Inputs, outputs: Outputs) -> CKernelParams[TtHardSwishParams]:
    """``tt_hard_swish_params`` of an int8 HARD_SWISH."""
    if op.kind is not OpKind.HARD_SWISH:
        raise UsageError(f"{op.describe()}: not a HARD_SWISH")
    if isinstance(KERNELS[op.kind].prepare(op, inputs, outputs), FloatHardSwishParams):
        raise UsageError(f"{op.describe()}: the C runtime has no float32 HARD_SWISH (quantize the model to int8)")
    x, y = inputs[0], outputs[0]
    assert x is not None
    in_scale, in_zp = x.qparams
    out_scale, out_zp = y.qparams
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(in_scale)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    out_q, out_exp = quantize_multiplier(float(hires_input_scale / np.float32(out_scale)))
    rel_q, rel_exp = quantize_multiplier(float(hires_input_scale / reluish_scale))
    if not -31 <= out_exp <= 0 or not -31 <= rel_exp <= 31:
        raise UsageError(f"{op.describe()}: HARD_SWISH multiplier exponents ({out_exp}, {rel_exp}) out of range")
    s = TtHardSwishParams(
        input_zp=int(in_zp),
        output_zp=int(out_zp),
        out_mult=_downscale_to_int16(out_q),
        out_exp=out_exp,
        rel_mult=_downscale_to_int16(rel_q),
        rel_exp=rel_exp,
    )
    return CKernelParams(s)


def declare_hard_swish(lib: ctypes.CDLL) -> None:
    """argtypes / restype of the ``tt_hard_swish.h`` functions."""
    vp, i32 = ctypes.c_void_p, ctypes.c_int32
    lib.tt_hard_swish_s8.argtypes = (ctypes.POINTER(TtHardSwishParams), vp, i32, vp)
    lib.tt_hard_swish_s8.restype = i32
    lib.tt_sign_mask_s8.argtypes = (vp, i32, i32, vp)
    lib.tt_sign_mask_s8.restype = i32
    lib.tt_hard_swish_bwd_s16.argtypes = (vp, vp, i32, vp, i32, vp, vp)
    lib.tt_hard_swish_bwd_s16.restype = i32
    lib.tt_copy_s8.argtypes = (vp, i32, vp)
    lib.tt_copy_s8.restype = i32


def _vp(a: np.ndarray) -> int:
    return int(a.ctypes.data)


def run_c_hard_swish(lib: ctypes.CDLL, cp: CKernelParams[TtHardSwishParams], x: np.ndarray) -> np.ndarray:
    """``tt_hard_swish_s8`` on an int8 array (any shape)."""
    xs = np.ascontiguousarray(x, dtype=np.int8)
    y = np.zeros_like(xs)
    status = lib.tt_hard_swish_s8(ctypes.byref(cp.struct), _vp(xs), xs.size, _vp(y))
    if status != 0:
        raise UsageError(f"tt_hard_swish_s8 failed with status {status}")
    return y


def run_c_sign_mask(lib: ctypes.CDLL, v: np.ndarray, zero: int) -> np.ndarray:
    """``tt_sign_mask_s8``: the packed mask of ``v > zero``."""
    vs = np.ascontiguousarray(v, dtype=np.int8).reshape(-1)
    mask = np.full((vs.size + 7) // 8, 0xA5, dtype=np.uint8)  # garbage: every byte must be written
    status = lib.tt_sign_mask_s8(_vp(vs), vs.size, zero, _vp(mask))
    if status != 0:
        raise UsageError(f"tt_sign_mask_s8 failed with status {status}")
    return mask


def run_c_hard_swish_bwd(
    lib: ctypes.CDLL, deriv: np.ndarray, g_y: np.ndarray, e_y: int, x: np.ndarray
) -> tuple[np.ndarray, int]:
    """``tt_hard_swish_bwd_s16``: (g_x mantissas, e_x) of the exact HARD_SWISH backward."""
    d = np.ascontiguousarray(deriv, dtype=np.int32)
    g = np.ascontiguousarray(g_y, dtype=np.int16).reshape(-1)
    xs = np.ascontiguousarray(x, dtype=np.int8).reshape(-1)
    out = np.full(g.size, 0x5A5A, dtype=np.int16)
    e = ctypes.c_int32(0)
    status = lib.tt_hard_swish_bwd_s16(_vp(d), _vp(g), e_y, _vp(xs), g.size, _vp(out), ctypes.byref(e))
    if status != 0:
        raise UsageError(f"tt_hard_swish_bwd_s16 failed with status {status}")
    return out.reshape(np.shape(g_y)), int(e.value)
