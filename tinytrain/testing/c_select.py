"""ctypes mirrors of firmware_templates/runtime/include/tt_select.h (DGSU selection) and
thin callers returning numpy arrays, for tests comparing the C with
tinytrain/train/kernels/select.py."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from tinytrain.testing.cbuild import RUNTIME_SRC, build_shared, ptr

I32 = ctypes.c_int32
VP = ctypes.c_void_p


def load_select(build_dir: Path) -> ctypes.CDLL:
    """tt_select.c alone as a shared library, its functions declared."""
    lib = ctypes.CDLL(str(build_shared([RUNTIME_SRC / "tt_select.c"], build_dir, name="tt_select")))
    lib.tt_select_rows.argtypes = [VP, I32, I32, VP, I32, I32, VP, VP]
    lib.tt_select_rows.restype = I32
    lib.tt_select_dgsu_rows.argtypes = [VP, I32, VP, I32, I32, VP, VP, VP, VP]
    lib.tt_select_dgsu_rows.restype = I32
    lib.tt_select_log2_q8.argtypes = [ctypes.c_uint64, I32]
    lib.tt_select_log2_q8.restype = I32
    lib.tt_select_layer_signal.argtypes = [VP, I32, I32, VP, VP]
    lib.tt_select_layer_signal.restype = I32
    return lib


def c_select_rows(
    lib: ctypes.CDLL, score: np.ndarray, age: np.ndarray | None, k: int, explore: int, magnitude: bool = True
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray | None]:
    """(status, sel[k], chosen[n], new age | None) from tt_select_rows."""
    s = np.ascontiguousarray(score, dtype=np.int64)
    n = s.size
    a = None if age is None else np.array(age, dtype=np.uint16, copy=True)
    chosen = np.full(max(n, 1), 7, np.uint8)
    sel = np.zeros(max(k, 1), np.uint16)
    st = lib.tt_select_rows(ptr(s), n, int(magnitude), None if a is None else ptr(a), k, explore, ptr(chosen), ptr(sel))
    return int(st), sel[:k], chosen[:n], a


def c_layer_signal(lib: ctypes.CDLL, bias_grad: np.ndarray, e: int, ema: int) -> tuple[int, int, int]:
    """(status, score, new ema) from tt_select_layer_signal."""
    b = np.ascontiguousarray(bias_grad, dtype=np.int64)
    em = np.array([ema], np.int32)
    sc = np.zeros(1, np.int64)
    st = lib.tt_select_layer_signal(ptr(b), b.size, e, ptr(em), ptr(sc))
    return int(st), int(sc[0]), int(em[0])
