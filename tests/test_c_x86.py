"""The host (x86-64) runtime backend computes the reference backend's bytes.

``codegen.runtime_sources("x86")`` swaps ``tt_fc.c`` and ``tt_fused_block_stages.c`` for the
AVX2 files of ``firmware_templates/runtime/x86/`` (and reuses the dsp backward / update
files). Built with ``-O3 -march=native`` (the build machine: AVX2, AVX-512 VNNI where
present; the sources also build with ``-mavx2`` alone, without AVX2, and for Cortex-M4) against the
reference build (``tt_fc_s8`` / ``tt_conv_s8``'s 1x1 path on random shapes, zero points at
the int8 extremes, weight zero points, both patch modes; every CONV_2D of the shipped MBV2)
and against the numpy twin (``tt_fused_block_s8``: geometry cases, random blocks with
extreme zero points, weight patches, every fused block of the shipped MBV2). End to end:
the generated tte program of MobileNetV2-w0.35 @128 built for the host with the x86
kernels trains 20 steps to the simulator's bytes.
"""

from __future__ import annotations

import ctypes
import platform
import re
import shutil
import subprocess
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codegen.backends import HOST_FAST_FLAGS, RunSpec, build_host, device_sources, run_generated, run_sim
from codegen.cparams.forward import TtFcParams, conv_c_params, declare_forward, run_conv_c, weight_patch
from codegen.runtime_sources import RUNTIME, RUNTIME_INCLUDE, X86_REPLACES, runtime_sources
from codegen.targets import ElfInfo, run_firmware
from tests import test_c_backward as tcb
from tests.test_c_backward import check_linear, fmnist_images, make_linear, rand_grad, shipped_graphs, subsets
from tests.test_c_dsp import FC_SHAPES, _fc_call, _mbv2, _mbv2_values
from tests.test_c_dsp_bwd import CONV1X1_CASES
from tests.test_c_fused_block import RANDOM, _with_extremes, check_block
from tests.test_fused_block import CASES, Case, build
from tinytrain.datasets import fashion_mnist
from tinytrain.ir.ops import OpKind, Padding
from tinytrain.models.ship import shipped
from tinytrain.passes.fuse_blocks import fuse_frozen_blocks
from tinytrain.testing import c_backward as cb
from tinytrain.testing.c_fused_block import declare
from tinytrain.testing.cbuild import C_FLAGS, build_shared
from tinytrain.train.compile import CompileOptions, compile_model
from tinytrain.train.kernels.gradient import Grad

__all__ = ["fmnist_images", "shipped_graphs"]  # module fixtures of test_c_backward, used here

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 host only")

X86_DIR = RUNTIME / "x86"
STEPS = 20


def _avx2_host() -> bool:
    try:
        return " avx2 " in f" {Path('/proc/cpuinfo').read_text().replace(chr(10), ' ')} "
    except OSError:
        return False


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, ...]:
    """(reference build, x86 build -O3 -march=native), compiled in parallel."""
    d = tmp_path_factory.mktemp("c")
    x86 = runtime_sources("x86")
    jobs: list[tuple[list[Path], tuple[str, ...], str]] = [(runtime_sources("ref"), (), "ttref"),
                                                           (x86, HOST_FAST_FLAGS, "ttx86")]  # fmt: skip
    with ThreadPoolExecutor(len(jobs)) as ex:
        paths = list(ex.map(lambda j: build_shared(j[0], d, (RUNTIME_INCLUDE,), j[1], name=j[2]), jobs))
    out = [ctypes.CDLL(str(p)) for p in paths]
    for lib in out:
        declare_forward(lib)
        declare(lib)
        cb.declare(lib)
        lib.tt_apply_mask_s16.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]
        lib.tt_apply_mask_s16.restype = ctypes.c_int
    return tuple(out)


def test_runtime_sources_swap_the_replaced_files() -> None:
    ref, x86 = runtime_sources("ref"), runtime_sources("x86")
    swapped = {(a.name, b.relative_to(RUNTIME).as_posix()) for a, b in zip(ref, x86, strict=True) if a != b}
    assert swapped == set(X86_REPLACES.items())
    assert all(p.exists() for p in x86)
    assert any(v.startswith("x86/") for v in X86_REPLACES.values())


def test_x86_sources_use_avx2_and_build_elsewhere(libs: tuple[ctypes.CDLL, ...], tmp_path: Path) -> None:
    """With -march=native on an AVX2 host every x86 replacement runs on ymm registers; without
    AVX2 (plain host gcc, and Cortex-M4) the files are the dsp / reference portable C and
    still build clean (both compilers run at once)."""
    if _avx2_host():
        dis = subprocess.run(["objdump", "-d", str(libs[1]._name)], capture_output=True, text=True).stdout
        funcs = dict(re.findall(r"^[0-9a-f]+ <(\w+)>:\n(.*?)(?=\n\n)", dis, re.MULTILINE | re.DOTALL))
        keys = (("tt_fb_depthwise_row",), ("x86_gemm_rows",), ("x86_conv1x1_input", "tt_linear_bwd_input_s16"),
                ("x86_wgrad_row", "tt_linear_bwd_weight_row_s16"), ("tt_apply_mask_s16",))  # fmt: skip
        for key in keys:
            assert any("%ymm" in body for name, body in funcs.items() if name.startswith(key)), key
    srcs = [str(s) for s in sorted(X86_DIR.glob("tt_*_x86.c"))]
    cmds = [["gcc", *C_FLAGS, f"-I{RUNTIME_INCLUDE}", "-c", *srcs]]
    if _avx2_host():  # AVX2 without AVX-512 VNNI (VPMADDWD + VPADDD instead of VPDPWSSD)
        cmds.append([*cmds[0][: -len(srcs) - 1], "-mavx2", "-c", *srcs])
    arm = shutil.which("arm-none-eabi-gcc")
    if arm is not None:
        m4 = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off"]
        cmds.append([arm, *m4, "-Wall", "-Wextra", "-Werror", "-O2", f"-I{RUNTIME_INCLUDE}", "-c", *srcs])
    for i in range(len(cmds)):
        (tmp_path / str(i)).mkdir()
    procs = [subprocess.Popen(c, cwd=tmp_path / str(i), stderr=subprocess.PIPE, text=True) for i, c in enumerate(cmds)]
    for proc in procs:
        _, err = proc.communicate()
        assert proc.returncode == 0, err


# ------------------------------------------------------------------------------ FC / 1x1

X86_FC_SHAPES = [*FC_SHAPES, (13, 27, 16), (40, 48, 13), (9, 336, 56), (64, 8, 48), (70, 17, 5), (3, 2100, 3)]


@pytest.mark.parametrize("patch_mode", ["none", "prefix", "delta"])
@pytest.mark.parametrize("shape", X86_FC_SHAPES, ids=[f"{r}x{k}x{o}" for r, k, o in X86_FC_SHAPES])
def test_fc_matches_reference(libs: tuple[ctypes.CDLL, ...], shape: tuple[int, int, int], patch_mode: str) -> None:
    ref, *x86 = libs
    rows, k, out_c = shape
    rng = np.random.default_rng(rows * 10007 + k * 101 + out_c + len(patch_mode) + 5)
    i32p = ctypes.POINTER(ctypes.c_int32)
    for trial in range(5):
        x = rng.integers(-128, 128, (max(rows, 1), k), dtype=np.int8)
        w = rng.integers(-128, 128, (out_c, k), dtype=np.int8)
        if trial == 0:  # saturation: the extremes only
            x = rng.choice(np.array([-128, 127], np.int8), x.shape)
            w = rng.choice(np.array([-128, 127], np.int8), w.shape)
        bias = None if trial == 1 else rng.integers(-(2**31), 2**31, out_c, dtype=np.int64).astype(np.int32)
        mult = rng.integers(1 << 30, (1 << 31) - 1, out_c, dtype=np.int64).astype(np.int32)
        if trial == 4:  # slow-path channels: small multipliers, left shifts
            mult[::2] = rng.integers(0, 1 << 30, mult[::2].size, dtype=np.int64).astype(np.int32)
        shift = rng.integers(-31 if trial == 3 else -14, 3, out_c, dtype=np.int64).astype(np.int32)
        zps = [-128, -127, 0, 126, 127]
        in_zp, out_zp = int(rng.choice(zps)), int(rng.choice(zps))
        w_zp = int(rng.choice(zps)) if trial in (2, 4) else 0
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2)) if trial == 2 else (-128, 127)
        s = TtFcParams(rows=rows, in_c=k, out_c=out_c, in_zp=in_zp, w_zp=w_zp, out_zp=out_zp, act_min=lo, act_max=hi,
                       mult=mult.ctypes.data_as(i32p), shift=shift.ctypes.data_as(i32p))  # fmt: skip
        keep = None
        if patch_mode != "none":
            n = int(rng.integers(1, k + 1))
            ch = np.arange(n) if patch_mode == "prefix" else np.sort(rng.choice(k, n, replace=False))
            if patch_mode == "delta" and np.array_equal(ch, np.arange(n)):
                continue  # that set is a prefix
            keep = weight_patch(ch, rng.integers(-128, 128, (out_c, n), dtype=np.int8))
        patch = None if keep is None else keep.struct
        st_r, y_r = _fc_call(ref, s, x, w, bias, patch, rows, out_c)
        assert st_r == 0
        for lib in x86:
            st_x, y_x = _fc_call(lib, s, x, w, bias, patch, rows, out_c)
            assert st_x == 0 and np.array_equal(y_r, y_x), (shape, patch_mode, trial)
        del keep


def test_fc_refuses_like_the_reference(libs: tuple[ctypes.CDLL, ...]) -> None:
    ref, *x86 = libs
    mult = np.full(2, 1 << 30, np.int32)
    shift = np.zeros(2, np.int32)
    x = np.zeros((2, 4), np.int8)
    w = np.zeros((2, 4), np.int8)
    i32p = ctypes.POINTER(ctypes.c_int32)
    good = {"rows": 2, "in_c": 4, "out_c": 2, "in_zp": 0, "w_zp": 0, "out_zp": 0, "act_min": -128, "act_max": 127}
    bad = [{"in_c": 0}, {"rows": -1}, {"in_zp": 128}, {"w_zp": -129}, {"act_min": 5, "act_max": 4}, {"out_zp": 200}]
    for fields in bad:
        s = TtFcParams(**{**good, **fields}, mult=mult.ctypes.data_as(i32p), shift=shift.ctypes.data_as(i32p))
        st_r, _ = _fc_call(ref, s, x, w, None, None, 2, 2)
        for lib in x86:
            assert _fc_call(lib, s, x, w, None, None, 2, 2)[0] == st_r != 0, fields


# ------------------------------------------------------------------------- shipped MBV2


def test_shipped_mbv2_convolutions(libs: tuple[ctypes.CDLL, ...]) -> None:
    """Every CONV_2D of the shipped MBV2 (1x1: the x86 GEMM) == the reference build."""
    ref, *x86 = libs
    graph = _mbv2()
    values = _mbv2_values()
    n = 0
    for op in graph.ops:
        if op.kind is not OpKind.CONV_2D:
            continue
        ins = graph.op_inputs(op)
        cp = conv_c_params(op, ins, tuple(graph.tensor(o) for o in op.outputs))
        filt = ins[1]
        assert filt is not None and filt.data is not None
        b_t = ins[2] if len(ins) > 2 else None
        b = b_t.data if b_t is not None else None
        x = values[op.inputs[0]]  # type: ignore[index]
        y_ref = run_conv_c(ref, cp, x[0], filt.data, b)
        assert np.array_equal(y_ref, values[op.outputs[0]][0]), op.describe()
        for lib in x86:
            assert np.array_equal(run_conv_c(lib, cp, x[0], filt.data, b), y_ref), op.describe()
        n += 1
    assert n > 10


def test_shipped_mbv2_fused_blocks(libs: tuple[ctypes.CDLL, ...]) -> None:
    _, *x86 = libs
    graph = _mbv2()
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    assert fused.blocks
    values = _mbv2_values()
    for block in fused.blocks:
        for lib in x86:
            check_block(lib, graph, block.op_indices, values[block.input][:1])


# ------------------------------------------------------------------------ fused blocks


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_block_geometry_cases(libs: tuple[ctypes.CDLL, ...], case: Case) -> None:
    graph = build(case)
    x = np.random.default_rng(1).integers(-128, 128, (1, *graph.tensor(graph.inputs[0]).shape[1:]), dtype=np.int8)
    for lib in libs[1:]:
        check_block(lib, graph, range(len(graph.ops)), x)


@pytest.mark.parametrize("seed", range(6))
def test_fused_block_weight_patches(libs: tuple[ctypes.CDLL, ...], seed: int) -> None:
    """Patched stages (the x86 GEMM / depthwise with the patch written over the weights)."""
    from tests import test_c_fused_block as ref_tests

    for lib in libs[1:]:
        ref_tests.test_weight_patches_random_blocks(lib, seed)
        ref_tests.test_refused_patches(lib)


@pytest.mark.parametrize(("k", "stride", "lead", "residual"), RANDOM)
def test_fused_block_random(libs: tuple[ctypes.CDLL, ...], k: int, stride: int, lead: str, residual: str) -> None:
    rng = np.random.default_rng(9000 * k + 100 * stride + len(lead) + len(residual))
    h, w = (int(v) for v in rng.integers(k, k + 9, 2))
    cin = int(rng.integers(1, 19)) if not residual else int(rng.integers(2, 19))
    padding = Padding.SAME if residual or rng.random() < 0.7 else Padding.VALID
    if lead == "stem":
        h, w = 2 * h, 2 * w
    case = Case("random", h, w, cin, k, stride, lead=lead, padding=padding, residual=residual,
                expand=int(rng.integers(2, 9)), cout=0 if residual else int(rng.integers(1, 19)))  # fmt: skip
    graph = _with_extremes(build(case, seed=int(rng.integers(1 << 30))), rng, per_tensor=bool(rng.random() < 0.5))
    x = rng.integers(-128, 128, (1, *graph.tensor(graph.inputs[0]).shape[1:]), dtype=np.int8)
    for lib in libs[1:]:
        check_block(lib, graph, range(len(graph.ops)), x)


# ------------------------------------------------------------------------ backward


def _random_linear(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    """Input / bias / weight gradients of the x86 builds == numpy, flash-only and patched weights."""
    rng = np.random.default_rng(zlib.crc32(str(case).encode()) + 1)
    p, w_flash = make_linear(case, rng)
    for mode in ("random", "zero", "max", "full"):
        g_y = Grad(rand_grad(rng, p.out_shape, mode), int(rng.integers(-40, 5)))
        x = rng.integers(-128, 128, p.in_shape).astype(np.int8)
        for channels in subsets(rng, p.in_channels):
            w_cur = w_flash.copy()
            if channels:
                sub = cb.trained_slice(p.kind, w_flash, channels)
                new = rng.integers(-127, 128, sub.shape).astype(np.int8)
                if p.kind is OpKind.FULLY_CONNECTED:
                    w_cur[:, list(channels)] = new
                else:
                    w_cur[..., list(channels)] = new
            check_linear(libs[1:], p, w_flash, w_cur, channels, g_y, x)


BWD_CASES = (*tcb.LINEAR_CASES, *CONV1X1_CASES, (OpKind.DEPTHWISE_CONV_2D, 5, 6, 21, 21, 3, 3, 1, 1, (1, 1, 1, 1)),
             (OpKind.DEPTHWISE_CONV_2D, 8, 8, 48, 48, 3, 3, 2, 2, (0, 1, 0, 1)),
             (OpKind.CONV_2D, 5, 5, 40, 33, 1, 1, 1, 1, (0, 0, 0, 0)))  # fmt: skip


def _bwd_id(c: tuple[Any, ...]) -> str:
    return f"{c[0].value}-{c[1]}x{c[2]}x{c[3]}-{c[4]}-{c[5]}x{c[6]}s{c[7]}"


@pytest.mark.parametrize("case", BWD_CASES, ids=_bwd_id)
def test_linear_backward_matches_numpy(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    _random_linear(libs, case)


def test_real_training_steps_match_numpy(
    libs: tuple[ctypes.CDLL, ...],
    shipped_graphs: dict[str, Any],
    fmnist_images: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every backward kernel call of tte training steps of the shipped MBV2: x86 builds == numpy."""
    tcb.test_real_training_steps_match_c(libs[1:], shipped_graphs, fmnist_images, monkeypatch,
                                         "mbv2-w0.35-96-int8.tflite", "tte")  # fmt: skip


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 40, 333])
def test_apply_mask_matches_reference(libs: tuple[ctypes.CDLL, ...], n: int) -> None:
    rng = np.random.default_rng(n)
    g = rng.integers(-(2**15), 2**15, max(n, 1), dtype=np.int64).astype(np.int16)
    mask = rng.integers(0, 256, (n + 7) // 8 + 1, dtype=np.int64).astype(np.uint8)
    outs = []
    for lib in libs:
        out = np.full(max(n, 1), 0x1234, np.int16)
        assert lib.tt_apply_mask_s16(g.ctypes.data, mask.ctypes.data, n, out.ctypes.data) == 0
        outs.append(out)
        inplace = g.copy()
        assert lib.tt_apply_mask_s16(inplace.ctypes.data, mask.ctypes.data, n, inplace.ctypes.data) == 0
        assert np.array_equal(inplace[:n], out[:n])
    assert all(np.array_equal(o, outs[0]) for o in outs[1:])
    assert libs[1].tt_apply_mask_s16(None, mask.ctypes.data, 3, None) != 0


# ------------------------------------------------------------------------ end to end


@cache
def _tte128() -> object:
    model = shipped("mbv2-w0.35-128-fmnist04-int8.tflite")
    return compile_model(model, CompileOptions("tte", classes=10, sample_bytes=784))


def test_host_x86_training_matches_simulator(tmp_path: Path) -> None:
    """tte on MobileNetV2-w0.35 @128 built for the host with the x86 kernels (-O3
    -march=native): per-step results, every trained tensor and the test logits equal the
    simulator's after 20 steps."""
    from tinytrain.train.compile import Compiled

    c = _tte128()
    assert isinstance(c, Compiled)
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[3000:3003], seed=5, lr=0.05)
    gen, exe = build_host(c, tmp_path, spec.sample_shape, kernels="x86")
    assert any("x86" in p.parts for p in device_sources(gen, "x86"))
    info = ElfInfo("host", exe, None, exe.with_suffix(".map"), None, 0, 0, 0, None, None)

    def transport(data: bytes) -> bytes:
        r = run_firmware(info, 300, data)
        assert r.exit_status == 0
        return r.uart_output

    dev = run_generated(c, gen, spec, transport)
    sim = run_sim(c, spec)
    assert dev.steps == sim.steps and len(dev.steps) == STEPS
    assert np.array_equal(dev.test_logits, sim.test_logits)
    assert sorted(dev.tensors) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert t.dtype == dev.tensors[name].dtype and np.array_equal(t, dev.tensors[name]), name
    g = c.program.graph
    assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in dev.tensors.items())
