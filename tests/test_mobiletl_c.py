"""The C twins of MobileTL's kernels (firmware_templates/runtime/src/tt_hard_swish.c):
``tt_hard_swish_s8`` against the simulator's HARD_SWISH (TFLite Micro semantics, itself
bit-exact with TFLM) over all 256 inputs for many quantizations, and ``tt_sign_mask_s8``
against ``kernels.mask.sign_mask``; refusals; the Cortex-M4 build. The real HARD_SWISH
layers of a converted model are checked in tests/test_mobiletl_hswish.py."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import NoAttrs, Op, OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.kernels import KERNELS
from tinytrain.testing.c_hard_swish import (
    TtHardSwishParams,
    declare_hard_swish,
    hard_swish_c_params,
    run_c_hard_swish,
    run_c_hard_swish_bwd,
    run_c_sign_mask,
)
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, build_shared
from tinytrain.train.kernels.act_bwd import hard_swish_input_grad, prepare_hard_swish_backward
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.mask import SIGN_MASK_HI, clamp_mask, sign_mask

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

SOURCE = RUNTIME_SRC / "tt_hard_swish.c"
ALL = np.arange(-128, 128, dtype=np.int8)
OP = Op(OpKind.HARD_SWISH, ("x",), ("y",), NoAttrs(), 0)


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    so = build_shared([SOURCE], tmp_path_factory.mktemp("c"), name="tt_mobiletl")
    cdll = ctypes.CDLL(str(so))
    declare_hard_swish(cdll)
    return cdll


def _act(name: str, scale: float, zp: int) -> Tensor:
    return Tensor(name, (1, 4, 4, 16), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def _quants(seed: int, n: int) -> list[tuple[float, int, float, int]]:
    """(input scale, input zp, output scale, output zp): random, plus the zero points at
    the int8 extremes and MobileNetV3-like ranges (input [-10, 20], output [-0.4, 20])."""
    rng = np.random.default_rng(seed)
    out = [(30 / 255, -128 + 85, 20.4 / 255, -128 + 5), (0.05, -128, 0.05, 127), (0.02, 127, 0.01, -128)]
    for _ in range(n):
        s_in = float(np.exp(rng.uniform(np.log(1e-3), np.log(0.5))))
        s_out = float(s_in * np.exp(rng.uniform(-1.2, 1.2)))
        out.append((s_in, int(rng.integers(-128, 128)), s_out, int(rng.integers(-128, 128))))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_hard_swish_matches_simulator_on_all_inputs(lib: ctypes.CDLL, seed: int) -> None:
    spec = KERNELS[OpKind.HARD_SWISH]
    checked = 0
    for s_in, z_in, s_out, z_out in _quants(seed, 60):
        ins, outs = (_act("x", s_in, z_in),), (_act("y", s_out, z_out),)
        try:
            params = spec.prepare(OP, ins, outs)
        except UsageError:  # a quantization TFLite Micro refuses: the C params refuse it too
            with pytest.raises(UsageError):
                hard_swish_c_params(OP, ins, outs)
            continue
        (ref,) = spec.run(params, [ALL])
        got = run_c_hard_swish(lib, hard_swish_c_params(OP, ins, outs), ALL)
        assert np.array_equal(got, ref), (s_in, z_in, s_out, z_out)
        checked += 1
    assert checked >= 50


def test_hard_swish_in_place_and_empty(lib: ctypes.CDLL) -> None:
    ins, outs = (_act("x", 0.1, -20),), (_act("y", 0.08, -100),)
    cp = hard_swish_c_params(OP, ins, outs)
    x = np.random.default_rng(3).integers(-128, 128, 1000).astype(np.int8)
    (ref,) = KERNELS[OpKind.HARD_SWISH].run(KERNELS[OpKind.HARD_SWISH].prepare(OP, ins, outs), [x])
    buf = x.copy()
    assert lib.tt_hard_swish_s8(ctypes.byref(cp.struct), buf.ctypes.data, buf.size, buf.ctypes.data) == 0
    assert np.array_equal(buf, ref)
    assert lib.tt_hard_swish_s8(ctypes.byref(cp.struct), None, 0, None) == 0


def test_hard_swish_refuses_bad_params(lib: ctypes.CDLL) -> None:
    good = hard_swish_c_params(OP, (_act("x", 0.1, 0),), (_act("y", 0.1, 0),)).struct
    x = np.zeros(4, np.int8)
    for field, value in [("input_zp", 128), ("output_zp", -129), ("out_mult", -1), ("out_mult", 1 << 15),
                         ("out_exp", 1), ("out_exp", -32), ("rel_mult", 40000), ("rel_exp", 32)]:  # fmt: skip
        bad = TtHardSwishParams.from_buffer_copy(good)
        setattr(bad, field, value)
        assert lib.tt_hard_swish_s8(ctypes.byref(bad), x.ctypes.data, 4, x.ctypes.data) != 0, field
    assert lib.tt_hard_swish_s8(ctypes.byref(good), None, 4, x.ctypes.data) != 0
    assert lib.tt_hard_swish_s8(ctypes.byref(good), x.ctypes.data, -1, x.ctypes.data) != 0
    assert lib.tt_hard_swish_s8(None, x.ctypes.data, 4, x.ctypes.data) != 0
    with pytest.raises(UsageError, match="not a HARD_SWISH"):
        hard_swish_c_params(Op(OpKind.RELU, ("x",), ("y",), NoAttrs(), 3), (_act("x", 0.1, 0),), (_act("y", 0.1, 0),))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 1001])
def test_sign_mask_matches_numpy(lib: ctypes.CDLL, n: int) -> None:
    rng = np.random.default_rng(n)
    v = rng.integers(-128, 128, n).astype(np.int8)
    for zero in (-128, -1, 0, int(rng.integers(-128, 128)), 127):
        ref = sign_mask(v, zero)
        assert np.array_equal(run_c_sign_mask(lib, v, zero), ref), zero
        # the sign rule is the clamp mask with its upper test disabled
        assert np.array_equal(clamp_mask(v, zero, SIGN_MASK_HI), ref)
    assert lib.tt_sign_mask_s8(v.ctypes.data, n, 128, np.zeros(200, np.uint8).ctypes.data) != 0
    assert lib.tt_sign_mask_s8(None, 5, 0, np.zeros(1, np.uint8).ctypes.data) != 0


def test_sign_mask_keeps_saturated_top_values() -> None:
    """For a ReLU6 folded into requantization the exact mask drops y == act_max (saturated
    at 6); the sign rule keeps it. Both are 1 bit per element."""
    y = np.array([-128, -127, 0, 126, 127], np.int8)
    exact = np.unpackbits(clamp_mask(y, -128, 127), count=5, bitorder="little")
    sign = np.unpackbits(sign_mask(y, -128), count=5, bitorder="little")
    assert exact.tolist() == [0, 1, 1, 1, 0] and sign.tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(UsageError):
        sign_mask(y, 128)


@pytest.mark.parametrize("seed", range(6))
def test_exact_hard_swish_backward_matches_numpy(lib: ctypes.CDLL, seed: int) -> None:
    """tt_hard_swish_bwd_s16 (the exact derivative from the saved int8 input) against
    act_bwd.hard_swish_input_grad: random, all-zero and one-hot gradients, every input value."""
    rng = np.random.default_rng(seed)
    s_in = float(np.exp(rng.uniform(np.log(0.005), np.log(0.2))))
    z_in = int(rng.integers(-128, 128))
    p = prepare_hard_swish_backward(OP, (_act("x", s_in, z_in),), (_act("y", 0.05, 0),))
    n = int(rng.integers(1, 3000))
    x = rng.integers(-128, 128, n).astype(np.int8)
    x[: min(n, 256)] = ALL[: min(n, 256)]
    e_y = int(rng.integers(-40, 10))
    cases = [rng.integers(-(2**14), 2**14 + 1, n), np.zeros(n), np.eye(1, n, int(rng.integers(0, n)))[0] * -(2**14)]
    for g in cases:
        g_y = Grad(np.asarray(g, dtype=np.int16), e_y)
        ref = hard_swish_input_grad(p, g_y, x)
        got, e = run_c_hard_swish_bwd(lib, p.deriv, g_y.g, e_y, x)
        assert np.array_equal(got, ref.g) and e == ref.e
    g16 = np.zeros(1, np.int16)
    e_out = ctypes.c_int32(0)

    def call(deriv: np.ndarray, e_y: int) -> int:
        return int(
            lib.tt_hard_swish_bwd_s16(
                deriv.ctypes.data, g16.ctypes.data, e_y, x.ctypes.data, 1, g16.ctypes.data, ctypes.byref(e_out)
            )
        )

    assert call(p.deriv, 0) == 0
    assert call(p.deriv, (1 << 30) + 1) != 0  # exponent out of range
    bad = np.array(p.deriv, copy=True)
    bad[3] = 1 << 15  # above 1.5 * 2^14
    assert call(bad, 0) != 0
    y = np.zeros_like(x)
    assert lib.tt_copy_s8(x.ctypes.data, n, y.ctypes.data) == 0 and np.array_equal(x, y)


def test_source_rules_and_cortex_m4_build(tmp_path: Path) -> None:
    text = SOURCE.read_text()
    for word in ("float", "double", "malloc", "printf"):
        assert not re.search(rf"\b{word}\b", text), word
    assert "Twin of tinytrain.sim.kernels.nl_activations.run_hard_swish" in text
    assert "Twin of tinytrain.train.kernels.mask.sign_mask" in text
    assert "Twin of tinytrain.train.kernels.act_bwd.hard_swish_input_grad" in text
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off"]
    flags += ["-Wall", "-Wextra", "-Werror", "-O2", "-c", f"-I{RUNTIME_INCLUDE}", "-o", str(tmp_path / "hs.o")]
    r = subprocess.run([cc, *flags, str(SOURCE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
