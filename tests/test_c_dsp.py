"""The optimized (dsp) runtime backend computes the reference backend's bytes.

Host: the runtime built with the dsp sources swapped in (``codegen.runtime_sources``; the
DSP intrinsics' portable C fallbacks) against the reference build (``tt_fc_s8`` and
``tt_conv_s8``'s 1x1 path on random shapes, zero points at the int8 extremes, weight zero
points, both patch modes, wrapping biases; every 1x1 conv and FC of the shipped MBV2) and
against the numpy twin (``tt_fused_block_s8``: the geometry cases, random blocks and
every fused block of the shipped MBV2, through the helpers of ``test_c_fused_block``).

Cortex-M4 and M7 in QEMU: a firmware (``firmware_templates/runtime/dsp/tests/``) runs the
reference and the dsp version of each replaced kernel on the same pseudo-random inputs
with real-layer shapes, compares the outputs on the device and prints the instruction
counts; it exits 0 only if every output agrees.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from codegen.cparams.forward import (
    TtFcParams,
    TtWeightPatch,
    conv_c_params,
    declare_forward,
    run_conv_c,
    weight_patch,
)
from codegen.runtime_sources import DSP_REPLACES, RUNTIME, RUNTIME_INCLUDE, runtime_sources
from tests.test_c_fused_block import RANDOM, _with_extremes, check_block
from tests.test_fused_block import CASES, Case, build
from tinytrain.frontends.load import load_model
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind, Padding
from tinytrain.models.ship import MBV2, shipped
from tinytrain.passes.fuse_blocks import fuse_frozen_blocks
from tinytrain.sim.forward import Simulator
from tinytrain.testing.c_fused_block import c_scratch_bytes, declare
from tinytrain.testing.cbuild import build_shared

DSP_TESTS = RUNTIME / "dsp" / "tests"


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(reference build, dsp build) of the whole runtime (separate libraries, RTLD_LOCAL)."""
    d = tmp_path_factory.mktemp("c")
    ref = ctypes.CDLL(str(build_shared(runtime_sources("ref"), d, name="ttref")))
    dsp = ctypes.CDLL(str(build_shared(runtime_sources("dsp"), d, (RUNTIME_INCLUDE,), name="ttdsp")))
    for lib in (ref, dsp):
        declare_forward(lib)
        declare(lib)
    return ref, dsp


def test_runtime_sources_swap_the_replaced_files() -> None:
    ref, dsp = runtime_sources("ref"), runtime_sources("dsp")
    assert len(ref) == len(dsp)
    swapped = {(a.name, b.relative_to(RUNTIME).as_posix()) for a, b in zip(ref, dsp, strict=True) if a != b}
    assert swapped == set(DSP_REPLACES.items())
    assert all(p.exists() for p in dsp)


# ------------------------------------------------------------------------------ FC / 1x1


def _fc_call(lib: ctypes.CDLL, s: TtFcParams, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
             patch: TtWeightPatch | None, rows: int, out_c: int) -> tuple[int, np.ndarray]:  # fmt: skip
    y = np.full((rows, out_c), 0x55, np.int8)
    st = lib.tt_fc_s8(ctypes.byref(s), x.ctypes.data, w.ctypes.data, None if bias is None else bias.ctypes.data,
                      None if patch is None else ctypes.addressof(patch), y.ctypes.data)  # fmt: skip
    return int(st), y


FC_SHAPES = [(1, 1, 1), (1, 3, 2), (2, 4, 2), (3, 5, 3), (4, 8, 4), (5, 7, 5), (1, 33, 10), (6, 16, 9),
             (7, 24, 16), (16, 96, 24), (2, 130, 3), (9, 3, 17), (0, 4, 2),
             (3, 128, 5), (5, 12, 7), (4, 132, 2), (3, 192, 3), (2, 196, 3), (3, 356, 3)]  # fmt: skip


@pytest.mark.parametrize("patch_mode", ["none", "prefix", "delta"])
@pytest.mark.parametrize("shape", FC_SHAPES, ids=[f"{r}x{k}x{o}" for r, k, o in FC_SHAPES])
def test_fc_matches_reference(libs: tuple[ctypes.CDLL, ctypes.CDLL], shape: tuple[int, int, int],
                              patch_mode: str) -> None:  # fmt: skip
    ref, dsp = libs
    rows, k, out_c = shape
    rng = np.random.default_rng(rows * 10007 + k * 101 + out_c + len(patch_mode))
    for trial in range(6):
        x = rng.integers(-128, 128, (max(rows, 1), k), dtype=np.int8)
        w = rng.integers(-128, 128, (out_c, k), dtype=np.int8)
        if trial == 0:  # saturation: the extremes only
            x = rng.choice(np.array([-128, 127], np.int8), x.shape)
            w = rng.choice(np.array([-128, 127], np.int8), w.shape)
        bias = None if trial == 1 else rng.integers(-(2**31), 2**31, out_c, dtype=np.int64).astype(np.int32)
        if bias is not None and trial == 2:
            bias[:] = rng.choice(np.array([-(2**31), 2**31 - 1], np.int64), out_c).astype(np.int32)
        mult = rng.integers(1 << 30, (1 << 31) - 1, out_c, dtype=np.int64).astype(np.int32)
        shift = rng.integers(-31 if trial == 3 else -14, 3, out_c, dtype=np.int64).astype(np.int32)
        zps = [-128, -127, 0, 126, 127]
        in_zp, out_zp = int(rng.choice(zps)), int(rng.choice(zps))
        w_zp = int(rng.choice(zps)) if trial in (4, 5) else 0
        lo, hi = sorted(int(v) for v in rng.integers(-128, 128, 2)) if trial == 5 else (-128, 127)
        s = TtFcParams(rows=rows, in_c=k, out_c=out_c, in_zp=in_zp, w_zp=w_zp, out_zp=out_zp, act_min=lo, act_max=hi,
                       mult=mult.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)),
                       shift=shift.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))  # fmt: skip
        patch = None
        keep = None
        if patch_mode != "none":
            n = int(rng.integers(1, k + 1))
            ch = np.arange(n) if patch_mode == "prefix" else np.sort(rng.choice(k, n, replace=False))
            if patch_mode == "delta" and np.array_equal(ch, np.arange(n)):
                continue  # that set is a prefix
            keep = weight_patch(ch, rng.integers(-128, 128, (out_c, n), dtype=np.int8))
            patch = keep.struct
        st_r, y_r = _fc_call(ref, s, x, w, bias, patch, rows, out_c)
        st_d, y_d = _fc_call(dsp, s, x, w, bias, patch, rows, out_c)
        assert st_r == st_d == 0
        assert np.array_equal(y_r, y_d), (shape, patch_mode, trial)
        del keep


def test_fc_refuses_like_the_reference(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    ref, dsp = libs
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
        st_d, _ = _fc_call(dsp, s, x, w, None, None, 2, 2)
        assert st_r == st_d != 0, fields
    bad_shift = np.array([0, 32], np.int32)
    s = TtFcParams(**good, mult=mult.ctypes.data_as(i32p), shift=bad_shift.ctypes.data_as(i32p))
    assert _fc_call(dsp, s, x, w, None, None, 2, 2)[0] == _fc_call(ref, s, x, w, None, None, 2, 2)[0] != 0
    unsorted = weight_patch(np.array([2, 1]), np.zeros((2, 2), np.int8))
    s = TtFcParams(**good, mult=mult.ctypes.data_as(i32p), shift=shift.ctypes.data_as(i32p))
    assert _fc_call(dsp, s, x, w, None, unsorted.struct, 2, 2)[0] == 1


# ------------------------------------------------------------------------- shipped MBV2


@cache
def _mbv2() -> Graph:
    return load_model(shipped(MBV2))


@cache
def _mbv2_values() -> dict[str, np.ndarray]:
    """Every activation of the shipped MBV2 on two random samples."""
    graph = _mbv2()
    acts = tuple(t.name for t in graph.tensors if t.data is None and t.name not in graph.inputs)
    probe = replace(graph, outputs=acts)
    shape = graph.tensor(graph.inputs[0]).shape
    x = np.random.default_rng(7).integers(-128, 128, (2, *shape[1:]), dtype=np.int8)
    values = dict(zip(acts, Simulator(probe).run([x]), strict=True))
    values[graph.inputs[0]] = x
    return values


def test_shipped_mbv2_convolutions(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    """Every CONV_2D of the shipped MBV2 (1x1: the dsp FC path; the stem: unchanged code)."""
    ref, dsp = libs
    graph = _mbv2()
    values = _mbv2_values()
    n = 0
    for op in graph.ops:
        if op.kind is not OpKind.CONV_2D:
            continue
        ins = graph.op_inputs(op)
        outs = tuple(graph.tensor(o) for o in op.outputs)
        cp = conv_c_params(op, ins, outs)
        filt = ins[1]
        assert filt is not None and filt.data is not None
        w = filt.data
        b_t = ins[2] if len(ins) > 2 else None
        b = b_t.data if b_t is not None else None
        x = values[op.inputs[0]]  # type: ignore[index]
        for i in range(x.shape[0]):
            y_ref = run_conv_c(ref, cp, x[i], w, b)
            assert np.array_equal(run_conv_c(dsp, cp, x[i], w, b), y_ref), op.describe()
            assert np.array_equal(y_ref, values[op.outputs[0]][i]), op.describe()
        n += 1
    assert n > 10


def test_shipped_mbv2_fused_blocks(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    _, dsp = libs
    graph = _mbv2()
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    assert fused.blocks
    values = _mbv2_values()
    for block in fused.blocks:
        fb = check_block(dsp, graph, block.op_indices, values[block.input])
        assert c_scratch_bytes(fb) == fb.scratch_bytes
        assert dsp.tt_fused_block_scratch_bytes(ctypes.byref(fb.to_ctypes().struct)) == fb.scratch_bytes


# ------------------------------------------------------------------------ fused blocks


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_block_geometry_cases(libs: tuple[ctypes.CDLL, ctypes.CDLL], case: Case) -> None:
    _, dsp = libs
    graph = build(case)
    x = np.random.default_rng(1).integers(-128, 128, (2, *graph.tensor(graph.inputs[0]).shape[1:]), dtype=np.int8)
    check_block(dsp, graph, range(len(graph.ops)), x)


@pytest.mark.parametrize("seed", range(6))
def test_fused_block_weight_patches(libs: tuple[ctypes.CDLL, ctypes.CDLL], seed: int) -> None:
    """Patched stages (the dsp block: merged current weights through the GEMM, patched depthwise groups):
    the reference's patch tests."""
    from tests import test_c_fused_block as ref_tests

    _, dsp = libs
    ref_tests.test_weight_patches_random_blocks(dsp, seed)
    ref_tests.test_refused_patches(dsp)


def test_fused_block_weight_patches_shipped_tte(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    """The patched live blocks of the 128x128 tte program (k = 56 leads, k = 336 projections) on the dsp build."""
    from tests import test_c_fused_block as ref_tests

    _, dsp = libs
    ref_tests.test_weight_patches_shipped_tte_block(dsp)


@pytest.mark.parametrize(("k", "stride", "lead", "residual"), RANDOM)
def test_fused_block_random(libs: tuple[ctypes.CDLL, ctypes.CDLL], k: int, stride: int, lead: str,
                            residual: str) -> None:  # fmt: skip
    _, dsp = libs
    rng = np.random.default_rng(7000 * k + 100 * stride + len(lead) + len(residual))
    h, w = (int(v) for v in rng.integers(k, k + 9, 2))
    cin = int(rng.integers(1, 19)) if not residual else int(rng.integers(2, 19))
    padding = Padding.SAME if residual or rng.random() < 0.7 else Padding.VALID
    if lead == "stem":
        h, w = 2 * h, 2 * w
    case = Case("random", h, w, cin, k, stride, lead=lead, padding=padding, residual=residual,
                expand=int(rng.integers(1, 7)), cout=0 if residual else int(rng.integers(1, 19)))  # fmt: skip
    graph = _with_extremes(build(case, seed=int(rng.integers(1 << 30))), rng, per_tensor=bool(rng.random() < 0.5))
    shape = graph.tensor(graph.inputs[0]).shape
    x = rng.integers(-128, 128, (2, *shape[1:]), dtype=np.int8)
    check_block(dsp, graph, range(len(graph.ops)), x)


# ------------------------------------------------------------------------ Cortex-M


def test_dsp_sources_compile_for_cortex_m(tmp_path: Path) -> None:
    """The dsp sources build with the native intrinsics for M4 and M7 (and use them)."""
    import subprocess

    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    cpus = {"m4": ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16"], "m7": ["-mcpu=cortex-m7", "-mfpu=fpv5-d16"]}
    for name, flags in cpus.items():
        for src in sorted((RUNTIME / "dsp").glob("tt_*_dsp.c")):
            obj = tmp_path / f"{src.stem}-{name}.o"
            cmd = [cc, *flags, "-mthumb", "-mfloat-abi=hard", "-std=c99", "-ffp-contract=off", "-Wall", "-Wextra",
                   "-Werror", "-O2", f"-I{RUNTIME_INCLUDE}", "-c", str(src), "-o", str(obj)]  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            if src.name in ARITHMETIC_ONLY:  # faster by restructuring, no DSP instruction needed
                continue
            dis = subprocess.run([cc.replace("gcc", "objdump"), "-d", str(obj)], capture_output=True, text=True)
            assert re.search(r"\bsmla(d|bb|tt)\b", dis.stdout), f"{src.name} ({name}) uses no DSP instruction"


ARITHMETIC_ONLY = frozenset({"tt_update_dsp.c", "tt_mask_dsp.c", "tt_pool_bwd_dsp.c", "tt_bias_step_dsp.c"})
"""dsp replacements whose speed-up is arithmetic (one 32x32->64 multiply per row, rounding
case chosen once per row; masks a byte / nibble at a time, SSUB8 + SEL; a global average
pool's gradient computed once per channel; bias gradients summed in int32, four channels per
step), not multiply-accumulate DSP-extension instructions."""

BENCH_LINE = re.compile(r"^kernel (\S+) ref (\d+) dsp (\d+) equal ([01])$", re.MULTILINE)


def bench_sources() -> list[Path]:
    """The QEMU test firmware: reference kernels + the dsp ones renamed (tt_dsp_*) + main."""
    from codegen.runtime_sources import RUNTIME_SRC

    refs = [RUNTIME_SRC / n for n in ("tt_fc.c", "tt_fused_block.c", "tt_fused_block_stages.c")]
    return [*refs, DSP_TESTS / "tt_dsp_renamed.c", DSP_TESTS / "tt_dsp_renamed_fb.c", DSP_TESTS / "tt_dsp_bench.c"]


@pytest.mark.parametrize("target", ["qemu-m4", "qemu-m7"])
def test_qemu_reference_and_dsp_agree_on_device(tmp_path: Path, target: str) -> None:
    """On the device: every dsp kernel == its reference on real-layer shapes, and it is faster."""
    if shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None:
        pytest.skip("arm-none-eabi-gcc / qemu-system-arm not installed")
    from codegen.targets import build_firmware, run_qemu

    info = build_firmware(target, bench_sources(), [RUNTIME_INCLUDE], tmp_path, sram_bytes=1 << 20, name="dspbench")
    status, uart = run_qemu(info.elf, target, timeout=120)
    text = uart.decode(errors="replace")
    rows = BENCH_LINE.findall(text)
    assert len(rows) >= 12, text
    assert all(eq == "1" for *_, eq in rows), text
    assert status == 0 and "done 0" in text, text
    for name, ref, dsp, _ in rows:
        assert 0 < int(dsp) < int(ref), f"{name}: dsp {dsp} >= ref {ref} instructions"
    fused = [int(ref) / int(dsp) for name, ref, dsp, _ in rows if name.startswith("fb_")]
    assert min(fused) > 2.0, text
