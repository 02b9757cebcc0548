"""ALaST (issue 7; docs/schemes.md, "ALaST"): the preset and its errors, the class-token signal
against its C twin and against float arithmetic, the per-step block choice against an
independent float ranking (unchosen blocks keep their weights), and the program byte-identical
on the simulator, the host build and the firmware on qemu-m4 (dsp kernels) within 256 KB.

The shipped tiny ViT (4 blocks, 65 tokens of 64) with a new 10-class head."""

from __future__ import annotations

import ctypes
import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec, build_device, qemu_transport, run_backend, run_generated
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.models.ship import shipped
from tinytrain.testing.c_select import load_select
from tinytrain.testing.cbuild import ptr
from tinytrain.train.compile import Compiled, CompileOptions, compile_graph, prepare_graph, scheme_file_data
from tinytrain.train.dgsu import LAYER_SCORE
from tinytrain.train.kernels.cls_change import MULT_ONE, cls_change, common_multipliers
from tinytrain.train.kernels.schedule import lr_multiplier
from tinytrain.train.loop import Trainer
from tinytrain.train.planner import OverBudgetError
from tinytrain.train.scheme import resolve, scheme_from_mapping
from tinytrain.train.vit_blocks import vit_blocks

KB = 1024
SCHEME = "alast:blocks=1+2+3,train_layers=2,drop_at=0,keep=0.5"  # the default, spelled out


@pytest.fixture(scope="module")
def graph() -> Graph:
    return prepare_graph(shipped("vit-d64-32-fmnist04-int8.tflite"), 10, "zero", 0)


def _compile(graph: Graph, scheme: str, sram: int = 256 * KB) -> Compiled:
    return compile_graph(graph, scheme, CompileOptions(scheme, classes=10, sample_bytes=28 * 28, sram_bytes=sram))


# ---------------------------------------------------------------- the preset


def test_preset_defaults_and_budget(graph: Graph) -> None:
    default = _compile(graph, "alast").scheme
    assert default.layers == _compile(graph, SCHEME).scheme.layers and default.token_drop is not None
    assert default.token_drop.drop_at == (0,) and default.token_drop.keep == 0.5
    ls = default.layer_select
    assert ls is not None and ls.cls is not None
    assert ls.candidates == (1, 2, 3) and ls.budget == 2 and ls.explore == 0
    assert ls.cls.src == (0, 1, 2) and ls.cls.dst == (1, 2, 3) and len(ls.cls.tensors) == 4
    assert _compile(graph, "alast:blocks=2+3,drop_at=none", sram=1024 * KB).scheme.token_drop is None
    c = _compile(graph, "alast:blocks=0+1+2+3,budget=0.5,explore=1", sram=1024 * KB)
    ls = c.scheme.layer_select
    assert ls is not None and ls.candidates == (0, 1, 2, 3) and ls.budget == 2 and ls.explore == 1
    vb = vit_blocks(c.graph)
    for p in c.scheme.layers:  # every dynamic layer is grouped under its own block
        if p.dynamic is not None:
            assert ls.candidates[p.dynamic.candidate] == vb.op_block[p.layer.op_index]
            assert p.dynamic.k == p.dynamic.rows  # a chosen block trains every row


def test_scheme_file_round_trip(graph: Graph) -> None:
    c = _compile(graph, SCHEME)
    data = scheme_file_data(c.scheme)
    assert data["alast_blocks"] == [1, 2, 3] and data["token_drop"] == {"drop_at": [0], "keep": 0.5}
    again = resolve(scheme_from_mapping(data), c.graph)
    assert again.layer_select == c.scheme.layer_select and again.layers == c.scheme.layers


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        ("alast:blocks=1+2,train_layers=3", r"train_layers=3 must be in 1\.\.2"),
        ("alast:train_layers=1,budget=0.5", "not both"),
        ("alast:blocks=2+3,drop_at=2", r"drop_at block\(s\) \[2\] are not before the first candidate block 2"),
        ("alast:blocks=0+1,keep=0.5", "keep needs a block to drop tokens after"),
        ("alast:blocks=2+3,explore=2", r"explore=2 must be in 0\.\.1"),
        ("alast:blocks=7", "block 7 does not exist"),
        ("alast:budget=1.5", r"must be in \(0, 1\]"),
    ],
)
def test_preset_errors(graph: Graph, scheme: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _compile(graph, scheme, sram=1024 * KB)


def test_over_budget_program_names_the_peak(graph: Graph) -> None:
    with pytest.raises(OverBudgetError, match=r"budget 256\.0 KB \(over by .*live at the peak"):
        _compile(graph, "alast:blocks=0+1+2+3,train_layers=1")


# ---------------------------------------------------------------- the signal


def test_cls_change_matches_c_and_float(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    lib = load_select(tmp_path)
    fn = lib.tt_select_cls_change
    vp, i32 = ctypes.c_void_p, ctypes.c_int32
    fn.argtypes = [vp, i32, i32, vp, vp, vp, vp, i32, vp]
    fn.restype = i32
    rng = np.random.default_rng(0)
    scales = [0.02, 0.051, 0.013, 0.09]
    zps = [-5, 6, 18, -128]
    rows = rng.integers(-128, 128, (4, 64), dtype=np.int8)
    src, dst = (0, 1, 2, 0), (1, 2, 3, 3)
    mults = common_multipliers(scales)
    want = cls_change(rows, zps, mults, src, dst)
    args = [np.asarray(a, t) for a, t in ((zps, np.int32), (mults, np.int32), (src, np.uint16), (dst, np.uint16))]
    got = np.zeros(4, np.int64)
    assert fn(ptr(rows), 4, 64, *(ptr(a) for a in args), 4, ptr(got)) == 0
    assert np.array_equal(got, want)
    bad = np.asarray((0, 9, 2, 0), np.uint16)
    assert fn(ptr(rows), 4, 64, ptr(args[0]), ptr(args[1]), ptr(bad), ptr(args[3]), 4, ptr(got)) != 0
    # float: the summed |change| in real units, scaled to the largest scale's 2^15 steps
    real = (rows.astype(np.float64) - np.asarray(zps)[:, None]) * np.asarray(scales)[:, None]
    exact = [np.abs(real[b] - real[a]).sum() * MULT_ONE / max(scales) for a, b in zip(src, dst, strict=True)]
    assert np.allclose(want, exact, rtol=1e-3)


def test_blocks_chosen_by_class_token_change(graph: Graph) -> None:
    """Each step the blocks of the largest float class-token change (from the forward's own
    activations) train; the unchosen ones keep every weight (their biases still step)."""
    c = _compile(graph, SCHEME)
    ls = c.scheme.layer_select
    assert ls is not None and ls.cls is not None
    x, y = fashion_mnist("train")
    trainer = Trainer(c.program, (28, 28), seed=0)
    ex = trainer.executor
    acts: dict[str, np.ndarray] = {}
    picks: list[np.ndarray] = []

    def observe(kind: str, op_index: int, tensor: str, value: object) -> None:
        del op_index
        if kind == "act" and tensor in ls.cls.tensors:
            acts[tensor] = np.asarray(value)
        if kind == "select-layers":
            picks.append(np.asarray(value))

    ex.observer = observe
    g = c.program.graph
    vb = vit_blocks(g)
    feats = trainer.features(x[:12])
    chosen_counts = np.zeros(3, int)
    for k in range(12):
        live = {n: f[k : k + 1] for n, f in zip(trainer.boundary, feats, strict=True)}
        for n, v in live.items():
            if n in ls.cls.tensors:
                acts[n] = v
        before = {i: w.copy() for i, w in ex.weights.items()}
        ex.step(live, int(y[k]), lr_multiplier(0.05), 1 << 15)
        real = []
        for name in ls.cls.tensors:
            q = g.tensor(name).quant
            assert q is not None
            real.append((acts[name].reshape(-1, ls.cls.dim)[0].astype(np.float64) - q.zero_point[0]) * q.scale[0])
        change = np.array([np.abs(real[b] - real[a]).sum() for a, b in zip(ls.cls.src, ls.cls.dst, strict=True)])
        order = np.argsort(-change, kind="stable")
        sel = sorted(int(j) for j in picks[-1])
        if change[order[1]] > 1.01 * change[order[2]]:  # no near-tie at the budget's edge
            assert sel == sorted(int(j) for j in order[:2])
        by_int = np.argsort(-ex.dgsu_state[LAYER_SCORE], kind="stable")
        assert np.array_equal(by_int, np.argsort(-change, kind="stable"))
        for j in range(3):
            for i in vb.layers[ls.candidates[j]]:
                op_i = c.scheme.layers[i].layer.op_index
                if j in sel:
                    chosen_counts[j] += 1
                else:
                    assert np.array_equal(ex.weights[op_i], before[op_i])
    assert len(picks) == 12 and chosen_counts.sum() > 0


# ---------------------------------------------------------------- the C program


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_host_matches_simulator(graph: Graph, tmp_path: Path) -> None:
    c = _compile(graph, SCHEME)
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:6], y[:6].astype(np.int64), x[1000:1002], seed=3, lr=0.05)
    sim = run_backend("sim", c, spec)
    assert_same_run(sim, run_backend("host", c, spec, work_dir=tmp_path))
    assert int(sim.tensors["dgsu_layer_age"].max()) > 0  # some block sat a step out


@pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="the ARM toolchain or QEMU is not installed",
)
def test_fits_and_trains_on_qemu_m4(graph: Graph, tmp_path: Path) -> None:
    c = _compile(graph, SCHEME)
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:2], y[:2].astype(np.int64), x[1000:1001], seed=3, lr=0.05)
    gen, info = build_device(c, "qemu-m4", tmp_path, spec.sample_shape, "dsp")
    assert c.plan.arena_size <= info.ram_used <= 256 * KB and info.flash_used <= 1024 * KB
    assert_same_run(run_backend("sim", c, spec), run_generated(c, gen, spec, qemu_transport(info, 300.0)))
