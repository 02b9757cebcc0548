"""The optimized (dsp) backward kernels compute the reference bytes.

Host: the runtime built with the dsp sources swapped in (``codegen.runtime_sources("dsp")``,
the DSP intrinsics' portable C fallbacks), once plainly and once with UBSan, against the
numpy twins (``tinytrain/train/kernels/linear_bwd.py``, ``update.py``) through the helpers
of ``test_c_backward`` / ``test_c_update``: the geometry cases of ``test_c_backward``, 1x1
convolutions shaped to hit every block / leftover path of ``dsp/tt_linear_bwd_dsp.c``, and
every backward kernel call of real training steps of the shipped MBV2 (``tte``). The dsp
build is also compared with the reference build on the same random inputs.

QEMU Cortex-M7: the generated tte training program of MobileNetV2-w0.35 @128 built with the
dsp kernels (the DSP intrinsics themselves) trains to the simulator's bytes.
"""

from __future__ import annotations

import ctypes
import math
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codegen.backends import RunSpec, run_backend
from codegen.cparams import backward as cb_mod
from codegen.cparams import update as cu_mod
from codegen.runtime_sources import DSP_REPLACES, RUNTIME, RUNTIME_INCLUDE, runtime_sources
from tests import test_c_backward as tcb
from tests import test_c_update as tcu
from tests.helpers_c import M4_FLAGS, assert_integer_only
from tests.test_c_backward import check_linear, fmnist_images, make_linear, rand_grad, same, shipped_graphs, subsets
from tinytrain.datasets import fashion_mnist
from tinytrain.ir.ops import OpKind
from tinytrain.models.ship import shipped
from tinytrain.testing import c_backward as cb
from tinytrain.testing import c_update as cu
from tinytrain.testing.cbuild import C_FLAGS, build_shared
from tinytrain.train.compile import CompileOptions, compile_model
from tinytrain.train.kernels import linear_bwd, pool_bwd, prng
from tinytrain.train.kernels import mask as mask_mod
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.schedule import lr_multiplier
from tinytrain.train.kernels.update import make_update, update_bias, update_weights

__all__ = ["fmnist_images", "shipped_graphs"]  # module fixtures reused from test_c_backward

UBSAN = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
OWN = ("tt_bias_step.c", "tt_linear_bwd.c", "tt_mask.c", "tt_pool_bwd.c", "tt_update.c")


# what the UBSan build needs besides the replacements: the other kernels the checks call
UBSAN_SRC = (
    "tt_grad.c", "tt_loss.c", "tt_shape_bwd.c", "tt_prng.c", "tt_schedule.c",
    "tt_update_slice.c",
)  # fmt: skip


def _declare_present(lib: ctypes.CDLL) -> ctypes.CDLL:
    """cb.declare + cu.declare for the functions the library has (the UBSan build holds a subset)."""
    for name, restype, argtypes in cb_mod._SIGNATURES:
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, list(argtypes)
    for name, (res, args) in cu_mod._PROTOTYPES.items():
        if hasattr(lib, name):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, list(args)
    return lib


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, ...]:
    """(the dsp build of the whole runtime, the replacements + the kernels the checks call with UBSan)."""
    d = tmp_path_factory.mktemp("c")
    plain = ctypes.CDLL(str(build_shared(runtime_sources("dsp"), d, (RUNTIME_INCLUDE,), name="ttdspb")))
    srcs = [RUNTIME / DSP_REPLACES[n] for n in OWN] + [RUNTIME / "src" / n for n in UBSAN_SRC]
    ub = ctypes.CDLL(str(build_shared(srcs, d, (RUNTIME_INCLUDE,), extra_flags=UBSAN, name="ttdspbub")))
    return cu.declare(cb.declare(plain)), _declare_present(ub)


@pytest.fixture(scope="module")
def ref_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return cb.declare(ctypes.CDLL(str(build_shared(runtime_sources("ref"), tmp_path_factory.mktemp("r")))))


def test_own_files_are_replaced() -> None:
    for name in OWN:
        assert name in DSP_REPLACES and (RUNTIME / DSP_REPLACES[name]).exists()


M7_FLAGS = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")


@pytest.mark.parametrize("cpu", [M4_FLAGS, M7_FLAGS], ids=["m4", "m7"])
def test_dsp_sources_build_for_cortex_m_integer_only(cpu: tuple[str, ...], tmp_path: Path) -> None:
    """Each replacement compiles clean (-Werror) with the DSP intrinsics, calls no float
    helper nor malloc, and its text uses no float / double / stdio."""
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    for name in OWN:
        src = RUNTIME / DSP_REPLACES[name]
        text = re.sub(r"/\*.*?\*/", "", src.read_text(), flags=re.S)
        for word in ("float", "double", "malloc", "printf", "stdio"):
            assert not re.search(rf"\b{word}\b", text), f"{src.name} uses {word}"
        obj = tmp_path / (src.stem + ".o")
        cmd = [cc, *cpu, *C_FLAGS, "-c", f"-I{RUNTIME_INCLUDE}", str(src), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert_integer_only(obj)


def _random_linear(
    libs: tuple[ctypes.CDLL, ...],
    case: tuple[Any, ...],
    modes: tuple[str, ...],
    channel_sets: list[tuple[int, ...]] | None = None,
) -> None:
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    p, w_flash = make_linear(case, rng)
    for mode in modes:
        g_y = Grad(rand_grad(rng, p.out_shape, mode), int(rng.integers(-40, 5)))
        x = rng.integers(-128, 128, p.in_shape).astype(np.int8)
        for channels in subsets(rng, p.in_channels) if channel_sets is None else channel_sets:
            w_cur = w_flash.copy()
            if channels:
                sub = cb.trained_slice(p.kind, w_flash, channels)
                new = rng.integers(-127, 128, sub.shape).astype(np.int8)
                if p.kind is OpKind.FULLY_CONNECTED:
                    w_cur[:, list(channels)] = new
                else:
                    w_cur[..., list(channels)] = new
            check_linear(libs, p, w_flash, w_cur, channels, g_y, x)


def _case_id(c: tuple[Any, ...]) -> str:
    return f"{c[0].value}-{c[1]}x{c[2]}x{c[3]}-{c[5]}x{c[6]}s{c[7]}"


@pytest.mark.parametrize("case", tcb.LINEAR_CASES, ids=_case_id)
def test_linear_backward_cases_match_numpy(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    _random_linear(libs, case, ("random", "zero", "max", "full"))


NO_PAD = (0, 0, 0, 0)
# 1x1 stride-1 convolutions: in_c % 4 = 0..3 (block leftovers), out_c % 4 = 0..3 (row-quad
# leftovers), a single pixel, a large out_c (bit budget d > 0), MBV2-like shapes
CONV1X1_CASES: tuple[tuple[Any, ...], ...] = tuple(
    (OpKind.CONV_2D, h, w, cin, cout, 1, 1, 1, 1, NO_PAD)
    for h, w, cin, cout in (
        (1, 1, 1, 1),
        (1, 1, 4, 4),
        (2, 3, 5, 7),
        (3, 2, 6, 9),
        (2, 2, 7, 10),
        (3, 3, 8, 11),
        (1, 2, 13, 6),
        (4, 4, 16, 96),
        (2, 2, 112, 1280),
        (4, 4, 96, 16),
        (2, 1, 3, 5000),
    )
)


@pytest.mark.parametrize("case", CONV1X1_CASES, ids=lambda c: f"{c[1]}x{c[2]}x{c[3]}-to-{c[4]}")
def test_conv1x1_input_grad_matches_numpy(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    _random_linear(libs, case, ("random", "zero", "max", "full"))


@pytest.mark.parametrize("case", [c for c in CONV1X1_CASES if c[3] >= 5], ids=lambda c: f"{c[1]}x{c[3]}-to-{c[4]}")
def test_conv1x1_input_grad_contiguous_trained_channels(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    """Trained channels c0 .. c0 + n - 1 in order (tte trains the first n): the slices read in
    place of the per-row corrections (axpy4_split), ranges at the start, inside, at the end."""
    cin = case[3]
    sets = [tuple(range(k)) for k in (1, cin // 2, cin - 1)]
    sets += [tuple(range(c0, c0 + k)) for c0, k in ((1, cin - 1), (cin // 3, cin // 3 + 1), (cin - 2, 1))]
    _random_linear(libs, case, ("random", "max"), sets)


def test_conv1x1_extremes_and_sparse_rows(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    """Weights and gradients at the int8 / int16 extremes (wrapping sums), and gradients
    with 0..5 non-zero rows per pixel (every row-quad leftover), dsp == numpy == reference."""
    rng = np.random.default_rng(11)
    for case in CONV1X1_CASES:
        p, w = make_linear(case, rng)
        c = cb.linear_bwd_struct(p, ())
        for trial in range(4):
            if trial == 0:
                w = rng.choice(np.array([-128, 127], np.int8), w.shape)
                g = rng.choice(np.array([-32768, 32767, 0], np.int16), p.out_shape)
            else:
                g = np.zeros(p.out_shape, np.int16)
                flat = g.reshape(-1, p.out_channels)
                for row in flat:
                    k = int(rng.integers(0, min(6, p.out_channels) + 1))
                    row[rng.choice(p.out_channels, k, replace=False)] = rng.integers(-(2**14), 2**14 + 1, k)
            g_y = Grad(g, int(rng.integers(-30, 3)))
            want = linear_bwd.input_grad(p, w, g_y)
            for lib in (*libs, ref_lib):
                assert same(cb.c_linear_input_grad(lib, c, p, w, g_y), want)


def test_conv1x1_one_pass_normalization(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    """The one-pass store (dsp/tt_linear_bwd_dsp.c, sp_state): pixel magnitudes growing (and
    shrinking) over the positions so the storage shift changes many times, tiny tensors
    (shift 0, negative final shifts), and power-of-two weights and gradients (mu = 2^15) so
    that many sums are negative exact multiples of the storage shift."""
    rng = np.random.default_rng(21)
    for h, w, cin, cout in ((4, 5, 12, 9), (3, 3, 5, 40), (1, 7, 16, 6), (6, 6, 4, 300)):
        g = tcb.geometry(h, w, 1, 1, 1, 1, NO_PAD)
        scales = [0.125] * cout  # mu = 2^15 exactly: g' = g_y >> drop
        p = linear_bwd.make_linear_backward(OpKind.CONV_2D, (1, h, w, cin), (1, h, w, cout), (cout, 1, 1, cin),
                                            scales, 0, g)  # fmt: skip
        c = cb.linear_bwd_struct(p, ())
        for trial in range(8):
            if trial % 2:
                wt = rng.choice(np.array([-128, -64, -32, 0, 32, 64, 127], np.int8), (cout, 1, 1, cin))
            else:
                wt = rng.integers(-128, 128, (cout, 1, 1, cin)).astype(np.int8)
            bits = rng.integers(0, 15, h * w)
            if trial in (2, 3):
                bits = np.sort(bits)  # growing: the shift changes at many pixels
            if trial == 4:
                bits[:] = 0
            mags = (1 << bits).reshape(h, w, 1)
            gy = rng.integers(-1, 2, (1, h, w, cout)) * mags
            if trial % 2:
                gy = gy * rng.choice(np.array([1, 3, 5]), gy.shape)
            g_y = Grad(np.clip(gy, -(2**14), 2**14).astype(np.int16), int(rng.integers(-20, 3)))
            want = linear_bwd.input_grad(p, wt, g_y)
            for lib in (*libs, ref_lib):
                assert same(cb.c_linear_input_grad(lib, c, p, wt, g_y), want)


def test_worst_case_sums(libs: tuple[ctypes.CDLL, ...]) -> None:
    """|g| = 2^14 everywhere and w = -128 everywhere reach the bit budget's bound."""
    rng = np.random.default_rng(6)
    for case in (*tcb.LINEAR_CASES[:2], CONV1X1_CASES[8], CONV1X1_CASES[10]):
        p, w = make_linear(case, rng)
        w[...] = -128
        g_y = Grad(np.full(p.out_shape, 1 << 14, np.int16), 0)
        want = linear_bwd.input_grad(p, w, g_y)
        assert int(np.abs(want.g).max()) > 0
        for lib in libs:
            assert same(cb.c_linear_input_grad(lib, cb.linear_bwd_struct(p, ()), p, w, g_y), want)


def _input_status(lib: ctypes.CDLL, c: Any, w: np.ndarray, g: np.ndarray, e_y: int, scratch: np.ndarray | None) -> int:
    gx = np.zeros(int(c.struct.in_h) * int(c.struct.in_w) * int(c.struct.in_c), np.int16)
    e = ctypes.c_int32(0)
    sp = None if scratch is None else scratch.ctypes.data
    args = (ctypes.byref(c.struct), w.ctypes.data, None, g.ctypes.data, e_y, gx.ctypes.data, ctypes.byref(e), sp)
    return int(lib.tt_linear_bwd_input_s16(*args))


def test_refuses_bad_params_like_the_reference(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(3)
    for case in (CONV1X1_CASES[3], tcb.LINEAR_CASES[9]):
        p, w = make_linear(case, rng)
        g = rand_grad(rng, p.out_shape, "random")
        scratch = np.zeros(max(1, math.ceil(cb.linear_input_scratch_bytes(p) / 4)), np.int32)
        for field, value in (("mu", None), ("in_zp", 200), ("drop", 15), ("n_channels", -1), ("out_h", 0)):
            c = cb.linear_bwd_struct(p, ())
            setattr(c.struct, field, value)
            got = [_input_status(lib, c, w, g, 0, scratch) for lib in (*libs, ref_lib)]
            assert got[0] != cb.TT_OK and len(set(got)) == 1, (field, got)
        c = cb.linear_bwd_struct(p, ())
        for lib in (*libs, ref_lib):  # an exponent out of range; no scratch (conv only)
            assert _input_status(lib, c, w, g, 2**30 + 1, scratch) == cb.TT_ERR_RANGE
            no_scratch = cb.TT_ERR_ARG if p.kind is OpKind.CONV_2D else cb.TT_OK
            assert _input_status(lib, c, w, g, 0, None) == no_scratch


@pytest.mark.parametrize("model", ["mbv2-w0.35-96-int8.tflite"])
def test_real_training_steps_match_numpy(
    libs: tuple[ctypes.CDLL, ...],
    shipped_graphs: dict[str, Any],
    fmnist_images: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    model: str,
) -> None:
    """Every backward kernel call of 4 tte training steps of the shipped MBV2: dsp build == numpy."""
    tcb.test_real_training_steps_match_c(libs, shipped_graphs, fmnist_images, monkeypatch, model, "tte")


# ---------------------------------------------------------------- update


@pytest.mark.parametrize("layer", tcu.LAYERS, ids=lambda la: f"{la.kind.value}-{'x'.join(map(str, la.w_shape))}")
def test_update_weights_random(libs: tuple[ctypes.CDLL, ...], layer: Any) -> None:
    for lib in libs:
        tcu.test_update_weights_random(lib, layer)


def test_update_refuses_bad_arguments(libs: tuple[ctypes.CDLL, ...]) -> None:
    for lib in libs:
        tcu.test_update_refuses_bad_arguments(lib)


@pytest.mark.parametrize("layer", tcu.LAYERS, ids=lambda la: f"{la.kind.value}-{'x'.join(map(str, la.w_shape))}")
def test_update_small_gradients_every_rounding_case(libs: tuple[ctypes.CDLL, ...], layer: Any) -> None:
    """Rows with max |G| < 2^30 (the one-multiply path) at total shifts R > 32, 1..32 and
    <= 0, incl. |G| = 2^30 - 1 and 2^30 (the boundary), steps from tiny to saturating."""
    rng = np.random.default_rng(tcu.LAYERS.index(layer) + 100)
    cases = 0
    for trial in range(24):
        up = make_update(layer.kind, float(rng.uniform(0.001, 0.1)), tcu.random_scales(rng, layer.cout))
        w = rng.integers(-128, 128, layer.w_shape).astype(np.int8)
        ch = np.asarray(layer.channels)
        sub_shape = w[..., ch].shape
        bits = int(rng.integers(0, 31))
        grad = rng.integers(-(2**bits), 2**bits, sub_shape, dtype=np.int64)
        if trial % 6 == 5:
            grad.reshape(-1)[0] = rng.choice([2**30 - 1, -(2**30 - 1), 2**30, -(2**30)])
        e_y = int(rng.integers(-90, 60))
        lr = lr_multiplier(float(10 ** rng.uniform(-6, 0.5)))
        c_t = int(rng.choice([1, 32768, int(rng.integers(0, 32769))]))
        seed = int(rng.integers(1, 2**32))
        s_np = prng.seed_state(seed)
        want = update_weights(up, w, grad, e_y, layer.channels, lr, c_t, s_np)
        cs = cu.update_struct(cu.update_arrays(up, layer.w_shape, layer.channels))
        step = cu.sgd_step(lr, c_t)
        for lib in libs:
            w_slice = np.ascontiguousarray(w[..., ch])
            s_c = np.array([seed], np.uint32)
            assert tcu.c_update_weights(lib, cs, step, grad, e_y, w_slice, s_c, bool(trial % 2), layer) == 0
            assert np.array_equal(w_slice, want[..., ch]) and s_c[0] == s_np[0]
        cases += 1
    assert cases == 24


# ---------------------------------------------------------------- end to end on Cortex-M7

QEMU_STEPS = 6


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)
def test_qemu_m7_dsp_training_matches_simulator(tmp_path: Path) -> None:
    """tte on MobileNetV2-w0.35 @128 (the issue's benchmark program), dsp kernels on the
    emulated Cortex-M7: per-step results, every trained tensor and the test logits equal
    the simulator's after QEMU_STEPS steps."""
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:QEMU_STEPS], y[:QEMU_STEPS].astype(np.int64), x[2000:2002], seed=11, lr=0.05)
    model = shipped("mbv2-w0.35-128-fmnist04-int8.tflite")
    c = compile_model(model, CompileOptions("tte", classes=10, sample_bytes=784))
    sim = run_backend("sim", c, spec)
    dev = run_backend("qemu-m7", c, spec, tmp_path, timeout=300, kernels="dsp")
    assert dev.steps == sim.steps and len(dev.steps) == QEMU_STEPS
    assert np.array_equal(dev.test_logits, sim.test_logits)
    assert sorted(dev.tensors) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert t.dtype == dev.tensors[name].dtype and np.array_equal(t, dev.tensors[name]), name
    g = c.program.graph
    assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in dev.tensors.items())


# ------------------------------------------------------------------------------ clamp masks


def _masks(lib: ctypes.CDLL, y: np.ndarray, lo: int, hi: int, first_bit: int, pre: np.ndarray) -> tuple[int, bytes]:
    mask = pre.copy()
    st = lib.tt_clamp_mask_s8_at(y.ctypes.data, y.size, lo, hi, mask.ctypes.data, first_bit)
    return int(st), mask.tobytes()


def test_masks_match_reference_and_numpy(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    """tt_clamp_mask_s8(_at) / tt_apply_mask_s16 of dsp/tt_mask_dsp.c (plain and UBSan builds)
    against the numpy twins and the reference build: sizes around the 8-value steps, chunks at
    and inside byte boundaries (the bits below the chunk kept), every kind of range (empty,
    act_min = 127, act_max = -128, ReLU6-like, full), masks with 0x00 / 0xFF bytes, in place."""
    rng = np.random.default_rng(77)
    ranges = [(-128, 127), (-128, -128), (127, 127), (-128, 0), (0, 127), (-5, -4), (-20, 90), (126, 127), (3, 3)]
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 100, 1031):
        y = rng.integers(-128, 128, n).astype(np.int8)
        edge = rng.random(n) < 0.2
        y[edge] = rng.choice(np.array([-128, 127, -127, 126, 0, -5, -4, 3], np.int8), int(edge.sum()))
        for lo, hi in ranges:
            yy = np.clip(y, lo, hi).astype(np.int8)
            want = mask_mod.clamp_mask(yy, lo, hi)
            for lib in libs:
                got = np.zeros(mask_mod.mask_nbytes(n), np.uint8)
                assert lib.tt_clamp_mask_s8(yy.ctypes.data, n, lo, hi, got.ctypes.data) == 0
                assert np.array_equal(got, want), (n, lo, hi)
            for first_bit in (0, 3, 8, 13, 16):
                pre = rng.integers(0, 256, mask_mod.mask_nbytes(n + first_bit) + 2).astype(np.uint8)
                ref = _masks(ref_lib, yy, lo, hi, first_bit, pre)
                for lib in libs:
                    assert _masks(lib, yy, lo, hi, first_bit, pre) == ref, (n, lo, hi, first_bit)
        assert all(_masks(lib, y, 5, 4, 0, np.zeros(200, np.uint8))[0] != 0 for lib in libs)  # refused
        g = rng.integers(-(1 << 15), 1 << 15, n).astype(np.int16)
        packed = rng.integers(0, 256, mask_mod.mask_nbytes(n)).astype(np.uint8)
        packed[rng.random(packed.size) < 0.3] = 0
        packed[rng.random(packed.size) < 0.2] = 255
        want_g = mask_mod.apply_mask(Grad(g, 0), packed).g
        for lib in (*libs, ref_lib):
            out = np.full(n, 0x5555, np.int16)
            assert lib.tt_apply_mask_s16(g.ctypes.data, packed.ctypes.data, n, out.ctypes.data) == 0
            assert np.array_equal(out, want_g), n
            inplace = g.copy()
            assert lib.tt_apply_mask_s16(inplace.ctypes.data, packed.ctypes.data, n, inplace.ctypes.data) == 0
            assert np.array_equal(inplace, want_g), n


# ------------------------------------------------------------------------------ MEAN backward


@pytest.mark.parametrize(
    ("in_shape", "keep_shape"),
    [
        ((1, 4, 4, 1280), (1, 1, 1, 1280)),  # the shipped MBV2's global average pool
        ((1, 3, 5, 7), (1, 1, 1, 7)),
        ((1, 1, 1, 9), (1, 1, 1, 9)),  # nothing reduced
        ((1, 6, 2, 5), (1, 1, 1, 1)),  # everything reduced
        ((1, 4, 3, 6), (1, 4, 3, 1)),  # a kept axis before the reduced one: the reference path
        ((2, 3, 4), (2, 1, 4)),
        ((1, 5, 8), (1, 1, 8)),
    ],
)
def test_mean_backward_matches_reference_and_numpy(
    libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL, in_shape: tuple[int, ...], keep_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(sum(in_shape) * 31 + sum(keep_shape))
    count = int(np.prod(in_shape)) // int(np.prod(keep_shape))
    mu, k = pool_bwd.reciprocal_q15(np.array(count))
    for mu_v, gmode in ((int(mu), "random"), (1 << 15, "extreme"), (0, "random"), (int(mu), "zero"), (1, "small")):
        p = pool_bwd.PoolBwdParams(in_shape, keep_shape, None, np.array(mu_v, np.int64), k)
        if gmode == "zero":
            g = np.zeros(keep_shape, np.int16)
        elif gmode == "extreme":
            g = rng.choice(np.array([-(1 << 15), (1 << 15) - 1, -1, 1, 0], np.int16), keep_shape)
        elif gmode == "small":
            g = rng.integers(-3, 4, keep_shape).astype(np.int16)
        else:
            g = rng.integers(-(1 << 15), 1 << 15, keep_shape).astype(np.int16)
        g_y = Grad(g, int(rng.integers(-40, 5)))
        want = pool_bwd.pool_input_grad(p, g_y)
        c = cb_mod.pool_bwd_struct(p)
        for lib in (*libs, ref_lib):
            got = cb_mod.c_pool_input_grad(lib, c, p, g_y)
            assert got.e == want.e and np.array_equal(got.g, want.g), (in_shape, keep_shape, mu_v, gmode)
    bad = cb_mod.pool_bwd_struct(pool_bwd.PoolBwdParams(in_shape, keep_shape, None, np.array(mu, np.int64), k))
    bad.struct.k = 32
    gy = np.zeros(keep_shape, np.int16)
    gx = np.zeros(in_shape, np.int16)
    e = ctypes.c_int32()
    for lib in (*libs, ref_lib):
        st = lib.tt_mean_bwd_s16(ctypes.byref(bad.struct), gy.ctypes.data, 0, gx.ctypes.data, ctypes.byref(e))
        assert (
            st
            == ref_lib.tt_mean_bwd_s16(ctypes.byref(bad.struct), gy.ctypes.data, 0, gx.ctypes.data, ctypes.byref(e))
            != 0
        )


# ------------------------------------------------------------------------------ bias step


def test_bias_step_matches_update_of_summed_gradient(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    """tt_bias_step_s16 of dsp/tt_bias_step_dsp.c (int32 sums, four channels per step) == numpy
    update_bias of the int64 position sums == the reference build: channel counts around the
    4-channel step, 1 .. 64 positions, int16 extremes, saturating biases."""
    rng = np.random.default_rng(21)
    for trial in range(30):
        cout = int(rng.choice([1, 3, 4, 5, 8, 11, 192]))
        h, w = (int(v) for v in rng.choice([1, 2, 4, 8], 2))
        up = tcu.make_update(OpKind.CONV_2D, float(rng.uniform(0.001, 0.1)), tcu.random_scales(rng, cout))
        b = rng.integers(-(2**31), 2**31, cout).astype(np.int32)
        b[rng.integers(0, cout)] = 2**31 - 1
        g = rng.integers(-(1 << 15), 1 << 15, (h, w, cout)).astype(np.int16)
        if trial % 3 == 0:
            g = rng.choice(np.array([-(1 << 15), (1 << 15) - 1], np.int16), (h, w, cout))
        e_y = int(rng.integers(-70, 40))
        lr, c_t = tcu._step_values(rng)
        want = update_bias(up, b, g.astype(np.int64).sum(axis=(0, 1)), e_y, lr, c_t)
        cs = cu_mod.update_struct(cu_mod.update_arrays(up, (cout, 1, 1, 1), ()))
        step = cu_mod.sgd_step(lr, c_t)
        lb = cb_mod.TtLinearBwdParams()
        lb.out_h, lb.out_w, lb.out_c = h, w, cout
        for lib in (*libs, ref_lib):
            out = b.copy()
            fn = lib.tt_bias_step_s16
            fn.restype = ctypes.c_int32
            st = fn(ctypes.byref(lb), cs.ref(), ctypes.byref(step), ctypes.c_void_p(g.ctypes.data),
                    ctypes.c_int32(e_y), ctypes.c_void_p(out.ctypes.data))  # fmt: skip
            assert st == 0 and np.array_equal(out, want), (trial, cout, h, w)


def test_bias_update_one_multiply_path(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL) -> None:
    """tt_update_bias_s32 / tt_update_bias_one_s32 of dsp/tt_update_dsp.c (|G| < 2^30: one
    multiply, RoundingDivideByPOT as one add and shift for R >= 1; G = 0 skipped) == numpy
    update_bias == the reference build: gradients 0, +-1, +-(2^30 - 1), +-2^30 (the boundary),
    larger ones, exponents giving R > 62, 1 .. 62 and <= 0, saturating biases, every c_t kind."""
    rng = np.random.default_rng(31)
    for trial in range(40):
        cout = int(rng.integers(1, 24))
        up = make_update(OpKind.CONV_2D, float(rng.uniform(0.001, 0.1)), tcu.random_scales(rng, cout))
        b = rng.integers(-(2**31), 2**31, cout).astype(np.int32)
        b[rng.integers(0, cout)] = 2**31 - 1
        b[rng.integers(0, cout)] = -(2**31)
        bits = int(rng.integers(0, 31))
        grad = rng.integers(-(2**bits), 2**bits + 1, cout, dtype=np.int64)
        special = np.array([0, 1, -1, 2**30 - 1, -(2**30 - 1), 2**30, -(2**30), 2**40, -(2**45)], np.int64)
        k = int(rng.integers(0, min(cout, 4) + 1))
        grad[rng.choice(cout, k, replace=False)] = rng.choice(special, k)
        e_y = int(rng.integers(-110, 80))
        lr, c_t = tcu._step_values(rng)
        want = update_bias(up, b, grad, e_y, lr, c_t)
        cs = cu_mod.update_struct(cu_mod.update_arrays(up, (cout, 1, 1, 1), ()))
        step = cu_mod.sgd_step(lr, c_t)
        for lib in (*libs, ref_lib):
            out = b.copy()
            gp, op = tcu.i64p(grad), tcu.as_ptr(out, ctypes.c_int32)
            st = lib.tt_update_bias_s32(cs.ref(), ctypes.byref(step), gp, e_y, op)
            assert st == 0 and np.array_equal(out, want), (trial, cout, e_y)


# fully connected layers taking the one-pass path (in_c % 4 == 0): the shipped head, several
# rows, a bit budget d > 0
FC_CASES: tuple[tuple[Any, ...], ...] = tuple(
    (OpKind.FULLY_CONNECTED, rows, 1, cin, cout, 1, 1, 1, 1, NO_PAD)
    for rows, cin, cout in ((1, 1280, 10), (5, 24, 7), (2, 8, 3000), (1, 4, 1), (3, 36, 17))
)


@pytest.mark.parametrize("case", FC_CASES, ids=lambda c: f"{c[1]}x{c[3]}-to-{c[4]}")
def test_fc_input_grad_one_pass(libs: tuple[ctypes.CDLL, ...], ref_lib: ctypes.CDLL, case: tuple[Any, ...]) -> None:
    """The fully connected input gradient of dsp/tt_linear_bwd_dsp.c (fc_input_grad): random,
    zero, extreme and wrapping gradients, no / every (the slice is the weights) / some trained
    channels (the reference path), dsp == numpy == reference build."""
    _random_linear(libs, case, ("random", "zero", "max", "full"))
    rng = np.random.default_rng(zlib.crc32(str(case).encode()) + 1)
    p, w = make_linear(case, rng)
    c = cb.linear_bwd_struct(p, ())
    for trial in range(3):
        if trial == 0:
            w = rng.choice(np.array([-128, 127], np.int8), w.shape)
            g = rng.choice(np.array([-32768, 32767, 0], np.int16), p.out_shape)
        else:
            bits = rng.integers(0, 15, p.out_shape[0]).reshape(-1, 1)
            g = (rng.integers(-1, 2, p.out_shape) << bits).astype(np.int16)
        g_y = Grad(g, int(rng.integers(-30, 3)))
        want = linear_bwd.input_grad(p, w, g_y)
        for lib in (*libs, ref_lib):
            assert same(cb.c_linear_input_grad(lib, c, p, w, g_y), want)
