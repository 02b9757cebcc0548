"""Tiny-ViT training programs in C (issue 7): the generated code (codegen/lower_vit.py) trains to
the simulator's bytes — per-step (p_label, predicted), every trained tensor, the test logits — on
the host for ``vit-last:1``, ``bsr`` (tokens dropped before a trained block, so TOKEN_SELECT's
backward runs too) and ``bias-only``; the BSR program of the default tiny ViT fits 256 KB of SRAM
and 1 MB of flash as planned and as linked for qemu-m7 and qemu-m4 (dsp kernels), where it trains
to the same bytes, and its training application does over a serial byte stream on qemu-m7.
The new C kernels (TOKEN_SELECT forward / backward, the ViT clamp mask) are checked against
their numpy twins through ctypes.

The converted default tiny ViT (65 tokens of 64, 4 blocks) is built once per module.
"""

from __future__ import annotations

import ctypes
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec, build_device, qemu_transport, run_backend, run_generated
from codegen.lower import lower
from tests.helpers_runs import assert_same_run
from tests.helpers_vit import token_select_op, write_tiny_vit
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import NoAttrs, OpKind
from tinytrain.sim.kernels.token_select import prepare_token_select, run_token_select
from tinytrain.testing import c_vit as cv
from tinytrain.testing.cbuild import RUNTIME_SRC, build_shared
from tinytrain.train.compile import Compiled, CompileOptions, compile_graph, prepare_graph
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.mask import clamp_mask
from tinytrain.train.kernels.token_bwd import prepare_token_select_backward, token_select_input_grads

KB = 1024
STEPS = 5
BSR = "bsr:blocks=2+3,drop_at=1,keep=0.5"  # the example scaled to 4 blocks
BSR_BEFORE = "bsr:blocks=0+3,drop_at=1,keep=0.5"  # block 0 trains: the gradient crosses TOKEN_SELECT
HOST_SCHEMES = ("vit-last:1", BSR_BEFORE, "bias-only")
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    """The tiny ViT with a new zero 10-class head (``tinytrain compile --classes 10``)."""
    return prepare_graph(write_tiny_vit(tmp_path_factory.mktemp("cvit")), 10, "zero", 0)


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    x, y = fashion_mnist("train")
    return RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[1000:1002], seed=5, lr=0.05)


def _compile(graph: Graph, scheme: str, sram: int = 256 * KB) -> Compiled:
    return compile_graph(graph, scheme, CompileOptions(scheme, classes=10, sample_bytes=28 * 28, sram_bytes=sram))


@pytest.mark.parametrize("scheme", HOST_SCHEMES)
def test_host_matches_simulator(graph: Graph, scheme: str, spec: RunSpec, tmp_path: Path) -> None:
    # bias-only trains every bias of the model: over 256 KB, but the host does not care
    c = _compile(graph, scheme, sram=1024 * KB)
    low = lower(c, spec.sample_shape)
    kernels = set(low.kernels)
    assert {"tt_binary_s8", "tt_batch_matmul_s8", "tt_softmax_s8", "tt_lut_s8", "tt_concat2_s8"} <= kernels
    if scheme == BSR_BEFORE:
        assert {"tt_token_select_s8", "tt_token_select_bwd_s16", "tt_batch_matmul_bwd_s16"} <= kernels
        assert any(b.name.startswith("saved:") and "@" not in b.name for b in c.plan.buffers)  # shared copies
    sim = run_backend("sim", c, spec)
    host = run_backend("host", c, spec, work_dir=tmp_path)
    assert_same_run(sim, host)
    g = c.program.graph
    moved = [n for n, t in host.tensors.items() if not np.array_equal(t, np.asarray(g.tensor(n).data))]
    assert moved  # the run trained something


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="the ARM toolchain or QEMU is not installed",
)
@pytest.mark.parametrize(("target", "kernels"), [("qemu-m7", "ref"), ("qemu-m4", "dsp")])
def test_bsr_fits_and_trains_on_qemu(graph: Graph, spec: RunSpec, tmp_path: Path, target: str, kernels: str) -> None:
    """The default tiny ViT under BSR within the default budgets: the plan, then the linked
    firmware (arena, stacks, constants and code), which trains to the simulator's bytes on
    both emulated cores (the M4 build with the DSP kernel backend)."""
    c = _compile(graph, BSR)
    assert c.plan.arena_size <= 256 * KB and c.memory.flash_bytes <= 1024 * KB
    gen, info = build_device(c, target, tmp_path, spec.sample_shape, kernels)  # type: ignore[arg-type]
    assert info.ram_used <= 256 * KB and info.flash_used <= 1024 * KB
    assert info.ram_used >= c.plan.arena_size
    short = RunSpec(spec.samples[:2], spec.labels[:2], spec.test[:1], seed=spec.seed, lr=spec.lr)
    assert_same_run(run_backend("sim", c, short), run_generated(c, gen, short, qemu_transport(info, 300.0)))


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="the ARM toolchain or QEMU is not installed",
)
def test_bsr_trains_over_serial(graph: Graph, spec: RunSpec, tmp_path: Path) -> None:
    """The training application (firmware_templates/app) of the BSR program on qemu-m7, driven
    over its serial byte stream like the CNN's: the steps, the pulled tensors and an evaluation
    equal the simulator's."""
    from codegen.targets import qemu_serial_session
    from host_tools.device import Device
    from host_tools.firmware import build_app
    from host_tools.link import Link

    c = _compile(graph, BSR)
    app = build_app(c, "qemu-m7", tmp_path, spec.sample_shape)
    short = RunSpec(spec.samples[:2], spec.labels[:2], spec.test[:1], seed=spec.seed, lr=spec.lr)
    sim = run_backend("sim", c, short)
    with qemu_serial_session(app.info.elf, "qemu-m7") as s:
        dev = Device(Link(s.port, timeout=5.0, retries=2), app.program, step_timeout=120.0)
        dev.reset(short.seed)
        dev.set_lr(short.lr)
        dev.set_schedule("constant", short.total)
        steps = [dev.train(x, int(y)) for x, y in zip(short.samples, short.labels, strict=True)]
        pulled = dev.pull()
        logits = np.stack([dev.eval(x) for x in short.test])
    assert [(r.p_label, r.predicted) for r in steps] == list(sim.steps)
    assert sorted(pulled) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert pulled[name].dtype == t.dtype and np.array_equal(pulled[name], t), name
    assert np.array_equal(logits, sim.test_logits)


# ---------------------------------------------------------------- the new kernels (ctypes)


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("cvit_lib")
    srcs = [RUNTIME_SRC / n for n in ("tt_vit_fwd.c", "tt_vit_bwd.c")]
    return cv.declare_vit(ctypes.CDLL(str(build_shared(srcs, out, name="ttvittrain"))))


@pytest.mark.parametrize(
    ("t", "heads", "k", "p_zp", "levels"), [(17, 4, 8, -128, 256), (9, 2, 1, -128, 3), (65, 1, 64, 5, 2)]
)
def test_token_select_kernels_match_numpy(lib: ctypes.CDLL, t: int, heads: int, k: int, p_zp: int, levels: int) -> None:
    """Scores, ties (few levels: many equal scores go to the lower index), ascending order, the
    copied rows; the backward scatters into the kept rows and zeroes the others."""
    rng = np.random.default_rng(t * 100 + k)
    d = 6
    op, ins, outs = token_select_op(t, d, heads, k, p_zp)
    x = rng.integers(-128, 128, (1, t, d), dtype=np.int8)
    p = (rng.integers(0, levels, (1, heads, t, t)) + max(p_zp, -128)).clip(-128, 127).astype(np.int8)
    y, idx = run_token_select(prepare_token_select(op, ins, outs), [x, p])
    cp = cv.token_select_c_params(op, ins, outs)
    y_c, idx_c = cv.run_token_select_c(lib, cp, x, p)
    assert np.array_equal(idx_c, idx) and np.array_equal(y_c, y)
    bp = prepare_token_select_backward(op, ins, outs)
    g_y = Grad(rng.integers(-(1 << 14), 1 << 14, (1, 1 + k, d)).astype(np.int16), -7)
    want = token_select_input_grads(bp, g_y, {"out1": idx}, frozenset({0}))[0]
    got = cv.c_token_select_input_grad(lib, cv.token_select_bwd_c_params(bp), g_y, idx)
    assert got.e == want.e and np.array_equal(got.g, want.g)


@pytest.mark.parametrize(("lo", "hi"), [(-129, 127), (-128, 128), (-129, 128), (-20, 30)])
def test_vit_clamp_mask_matches_numpy(lib: ctypes.CDLL, lo: int, hi: int) -> None:
    y = np.arange(-128, 128, dtype=np.int8)[np.random.default_rng(3).permutation(256)][:203]
    mask = np.zeros((y.size + 7) // 8, np.uint8)
    fn = lib.tt_vit_clamp_mask_s8
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    assert fn(y.ctypes.data, y.size, lo, hi, mask.ctypes.data) == 0
    assert np.array_equal(mask, clamp_mask(y, lo, hi))


def test_lowering_names_an_op_without_a_c_kernel(graph: Graph) -> None:
    """An op kind the generator has no C kernel for (a frozen op here) is refused by name."""
    i = next(k for k, op in enumerate(graph.ops) if op.kind is OpKind.RESHAPE)
    ops = list(graph.ops)
    ops[i] = replace(ops[i], kind=OpKind.LOGISTIC, attrs=NoAttrs())
    c = _compile(replace(graph, ops=tuple(ops)), "vit-last:1")
    with pytest.raises(UsageError, match=rf"op #{i} LOGISTIC \(tensors: .*\): the C code generator has no kernel"):
        lower(c, (28, 28))
