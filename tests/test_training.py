"""The training compiler: scheme validation, program structure, memory plan invariants,
integer training that learns, determinism, and the compile / simulate commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.frontends.load import load_model
from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
from tinytrain.passes.replace_head import replace_head
from tinytrain.train.build import build_training_program
from tinytrain.train.compile import CompileOptions, compile_graph
from tinytrain.train.data import Dataset, load_dataset
from tinytrain.train.layers import linear_layers
from tinytrain.train.loop import TrainConfig, Trainer
from tinytrain.train.memory import plan_program, program_memory
from tinytrain.train.planner import BufferKind
from tinytrain.train.scheme import Update, preset, resolve, scheme_from_mapping

PRESETS = ("last-layer", "bias-only", "last-k:3", "tte")


@pytest.fixture(scope="module")
def ckpt_graph():  # type: ignore[no-untyped-def]
    return replace_head(load_model(shipped(CHECKPOINT)), 10, "zero", 0)


@pytest.fixture(scope="module")
def mbv2_graph():  # type: ignore[no-untyped-def]
    return replace_head(load_model(shipped(MBV2)), 10, "zero", 0)


@pytest.fixture(scope="module")
def fmnist() -> tuple[Dataset, Dataset]:
    tr, te = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    return Dataset("train", tr.images[:400], tr.labels[:400]), Dataset("test", te.images[:200], te.labels[:200])


# ---------------------------------------------------------------- schemes


def test_presets_resolve(ckpt_graph) -> None:  # type: ignore[no-untyped-def]
    layers = linear_layers(ckpt_graph)
    last = resolve(preset("last-layer", ckpt_graph), ckpt_graph)
    assert [p.layer.index for p in last.trained] == [len(layers) - 1]
    bias = resolve(preset("bias-only", ckpt_graph), ckpt_graph)
    assert len(bias.trained) == len(layers) and sum(p.trains_weights for p in bias.trained) == 1
    k3 = resolve(preset("last-k:3", ckpt_graph), ckpt_graph)
    assert [p.update for p in k3.trained] == [Update.FULL] * 3
    tte = resolve(preset("tte:bias=6,weights=-4+-1,ratios=0.5+1", ckpt_graph), ckpt_graph)
    assert len(tte.trained) == 6
    partial = tte.layers[len(layers) - 4]
    assert partial.update is Update.CHANNELS and len(partial.channels) == partial.layer.in_channels // 2


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": [{"layer": "conv999", "update": "full"}]}, "unknown layer"),
        ({"layers": [{"layer": 99, "update": "full"}]}, "out of range"),
        ({"layers": [{"layer": -1, "update": "channels", "ratio": 1.5}]}, r"ratio must be in \(0, 1\]"),
        ({"layers": [{"layer": -1, "update": "channels", "ratio": 0}]}, r"ratio must be in \(0, 1\]"),
        ({"layers": [{"layer": -1, "update": "channels"}]}, "exactly one of"),
        ({"layers": [{"layer": -1, "update": "sometimes"}]}, "unknown update"),
        ({"layers": [{"layer": -1, "update": "full"}, {"layer": -1, "update": "bias"}]}, "listed twice"),
        ({"layers": [{"layer": -1, "update": "full", "ratio": 0.5}]}, "only apply to update 'channels'"),
        ({"layers": [{"layer": -2, "update": "channels", "count": 100000}]}, "asks for more"),
        ({"layers": "all"}, "must be a list"),
        ({"layer": []}, "unknown key"),
    ],
)
def test_scheme_validation_errors(ckpt_graph, data: object, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=message):
        resolve(scheme_from_mapping(data), ckpt_graph)


@pytest.mark.parametrize(
    "spec", ["nope", "last-k:0", "last-k:x", "tte:bias=0", "tte:weights=-1+-2,ratios=1", "tte:x=1"]
)
def test_bad_presets(ckpt_graph, spec: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError):
        resolve(preset(spec, ckpt_graph), ckpt_graph)


def test_weight_update_needs_a_trainable_layer(tmp_path: Path) -> None:
    """A depthwise conv with a depth multiplier cannot update its weights."""
    from tinytrain.testing.opmodels import build_all

    graph = load_model_bytes(build_all(tmp_path, ["depthwise_m2"])["depthwise_m2"], tmp_path)
    with pytest.raises(UsageError, match="depth multiplier"):
        resolve(scheme_from_mapping({"layers": [{"layer": 0, "update": "full"}]}), graph)


def load_model_bytes(data: bytes, tmp: Path):  # type: ignore[no-untyped-def]
    p = tmp / "m.tflite"
    p.write_bytes(data)
    return load_model(p)


# ---------------------------------------------------------------- program and memory


@pytest.mark.parametrize("spec", PRESETS)
def test_backward_is_pruned_to_the_scheme(ckpt_graph, spec: str) -> None:  # type: ignore[no-untyped-def]
    resolved = resolve(preset(spec, ckpt_graph), ckpt_graph)
    program = build_training_program(ckpt_graph, resolved)
    first = min(p.layer.op_index for p in resolved.trained)
    assert program.first_live_op <= first  # a PAD folded into the first layer's backward runs live too
    # Every backward step, with the steps fused into a depthwise step right after it.
    steps = list(program.all_steps)
    assert all(b.op_index >= first for b in steps)
    # The earliest trained layer computes no input gradient; ops are visited in reverse order.
    earliest = [b for b in steps if b.op_index == first]
    assert earliest and not earliest[0].params.request.input_grads
    assert [b.op_index for b in steps] == sorted((b.op_index for b in steps), reverse=True)
    trained = {p.layer.op_index for p in resolved.trained}
    assert {b.op_index for b in steps if b.trains} == trained


def _check_plan(requests, plan) -> None:  # type: ignore[no-untyped-def]
    """Independent of the planner: every pair of buffers live at a common step is disjoint."""
    spans = {}
    n = plan.num_steps
    for r in requests:
        p = plan.placement(r.name)
        first, last = (0, n - 1) if r.kind in (BufferKind.TRAINABLE, BufferKind.STATE) else (r.first, r.last)
        spans[r.name] = (first, last, p.offset, p.offset + r.size)
        assert p.offset + r.size <= plan.arena_size
    for (a, (f1, l1, o1, e1)), (b, (f2, l2, o2, e2)) in combinations(spans.items(), 2):
        if f1 <= l2 and f2 <= l1 and o1 < e2 and o2 < e1 and e1 > o1 and e2 > o2:
            raise AssertionError(f"{a} and {b} overlap in time and in the arena")
    live = [sum(r.size for r in requests if spans[r.name][0] <= s <= spans[r.name][1]) for s in range(n)]
    assert plan.peak_live == max(live) and plan.arena_size >= plan.peak_live


@pytest.mark.parametrize("spec", PRESETS)
def test_memory_plan_has_no_overlap(mbv2_graph, spec: str) -> None:  # type: ignore[no-untyped-def]
    program = build_training_program(mbv2_graph, resolve(preset(spec, mbv2_graph), mbv2_graph))
    memory = program_memory(program)
    plan = plan_program(memory)
    _check_plan(memory.requests, plan)
    kinds = {r.kind for r in memory.requests}
    assert BufferKind.TRAINABLE in kinds and BufferKind.STATE in kinds
    if spec != "last-layer":
        assert {BufferKind.GRADIENT, BufferKind.MASK} <= kinds
    # Masks are bits.
    for r in memory.requests:
        if r.kind is BufferKind.MASK:
            n = mbv2_graph.tensor(r.name.removeprefix("mask:")).size
            assert r.size == (n + 7) // 8


def test_fused_frozen_stage_and_streamed_sample_cut_memory(mbv2_graph) -> None:  # type: ignore[no-untyped-def]
    program = build_training_program(mbv2_graph, resolve(preset("last-layer", mbv2_graph), mbv2_graph))
    assert program.fused.blocks, "the frozen stage should run as fused blocks"
    full = plan_program(program_memory(program)).peak_live
    streamed = plan_program(program_memory(program, sample_bytes=28 * 28)).peak_live
    biggest_expansion = max(t.nbytes for t in mbv2_graph.tensors if t.data is None)
    assert full < biggest_expansion + mbv2_graph.tensor(mbv2_graph.inputs[0]).nbytes
    assert streamed < full


def test_over_budget_is_refused_with_the_live_buffers(mbv2_graph) -> None:  # type: ignore[no-untyped-def]
    from tinytrain.train.planner import OverBudgetError

    with pytest.raises(OverBudgetError) as info:
        compile_graph(mbv2_graph, "bias-only", CompileOptions("bias-only", sram_bytes=64 * 1024))
    msg = str(info.value)
    assert "budget 64.0 KB" in msg and "needs" in msg and "live at the peak" in msg
    assert re.search(r"(act|grad|mask|saved):\S+ \(\d+\.\d KB\)", msg), msg


# ---------------------------------------------------------------- training


def _train(graph, spec: str, ds: Dataset, test: Dataset | None, epochs: int, lr: float, seed: int):  # type: ignore[no-untyped-def]
    program = build_training_program(graph, resolve(preset(spec, graph), graph))
    trainer = Trainer(program, ds.sample_shape, seed=seed)
    report = trainer.fit(ds, test, TrainConfig(epochs=epochs, lr=lr, seed=seed))
    return trainer, report


@pytest.mark.parametrize("spec", ["last-layer", "tte"])
def test_loss_goes_down(mbv2_graph, fmnist, spec: str) -> None:  # type: ignore[no-untyped-def]
    """Integer training fits a small task (40 samples, 8 epochs, a random-feature model)."""
    train, _ = fmnist
    small = Dataset("small", train.images[:40], train.labels[:40])
    _, report = _train(mbv2_graph, spec, small, None, epochs=8, lr=0.005, seed=1)
    losses = [e.train_loss for e in report.epochs]
    assert min(losses[-3:]) < 0.5 * losses[0], losses
    assert max(e.train_accuracy for e in report.epochs[-3:]) > 0.4, [e.train_accuracy for e in report.epochs]


def test_training_is_deterministic(ckpt_graph, fmnist) -> None:  # type: ignore[no-untyped-def]
    train, test = fmnist
    small = Dataset("small", train.images[:60], train.labels[:60])
    runs = [_train(ckpt_graph, "tte", small, test, 1, 0.02, seed)[0].executor.trained_tensors() for seed in (3, 3, 4)]
    assert runs[0].keys() == runs[1].keys()
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_row_streamed_backward_gives_the_same_bytes(ckpt_graph, fmnist) -> None:  # type: ignore[no-untyped-def]
    """The device's row-streamed fused backward and the simulator's vectorised unfused
    kernels train to the same bytes (bias-only fuses every expansion → depthwise pair)."""
    from tinytrain.train.executor import Executor

    train, _ = fmnist
    program = build_training_program(ckpt_graph, resolve(preset("bias-only", ckpt_graph), ckpt_graph))
    assert any(s.fused is not None for s in program.backward)
    trainers = [Trainer(program, train.sample_shape, seed=5) for _ in range(2)]
    trainers[1].executor = Executor(program, 5, row_streamed=True)
    small = Dataset("s", train.images[:4], train.labels[:4])
    for t in trainers:
        t.fit(small, None, TrainConfig(epochs=1, lr=0.05, seed=5))
    a, b = (t.executor.trained_tensors() for t in trainers)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    initial = Executor(program, 5).trained_tensors()
    assert any(not np.array_equal(a[k], initial[k]) for k in a)


def test_evaluation_matches_per_sample_forward(ckpt_graph, fmnist) -> None:  # type: ignore[no-untyped-def]
    """The batched evaluation with the trained weights equals the whole-graph simulator."""
    from tinytrain.sim.forward import Simulator

    train, test = fmnist
    trainer, _ = _train(ckpt_graph, "tte", Dataset("s", train.images[:30], train.labels[:30]), None, 1, 0.02, 0)
    x = trainer.preprocess(test.images[:16])
    whole = Simulator(trainer.executor.current_graph()).run([x])[0]
    feats = trainer.features(test.images[:16])
    from tinytrain.passes.split import suffix_graph

    split = Simulator(suffix_graph(trainer.executor.current_graph(), trainer.program.first_live_op)).run(feats)[0]
    assert np.array_equal(whole, split)


# ---------------------------------------------------------------- commands


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinytrain", *args], capture_output=True, text=True, timeout=600)


def test_compile_and_simulate_commands(tmp_path: Path) -> None:
    out = tmp_path / "prog"
    r = _cli("compile", str(shipped(CHECKPOINT)), "--scheme", "tte", "--classes", "10", "--sample-shape", "28x28",
             "-o", str(out))
    assert r.returncode == 0, r.stderr
    plan = json.loads((out / "plan.json").read_text())
    assert plan["sram"]["peak_bytes"] <= plan["sram"]["arena_bytes"] <= 256 * 1024
    assert plan["sram"]["trainable_bytes"] > 0 and plan["flash"]["bytes"] > 0
    assert plan["macs"]["forward"] > 0 and plan["macs"]["backward"] > 0 and plan["scheme"]["name"] == "tte"
    assert (out / "memory.png").stat().st_size > 0
    runs = []
    for _ in range(2):
        w = tmp_path / f"w{len(runs)}.npz"
        r = _cli("simulate", str(out), "--train-samples", "50", "--test-samples", "20", "--epochs", "1",
                 "--lr", "0.02", "--seed", "5", "--json", "--save-weights", str(w))
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["steps"] == 50 and len(info["train_loss"]) == 1 and 0.0 <= info["test_accuracy"] <= 1.0
        runs.append(dict(np.load(w)))
    assert runs[0].keys() == runs[1].keys() and all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    r = _cli("simulate", str(out), "--train-samples", "10", "--test-samples", "0", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["test_accuracy"] is None


def test_compile_over_budget_exits_2(tmp_path: Path) -> None:
    r = _cli("compile", str(shipped(MBV2)), "--scheme", "bias-only", "--classes", "10", "--sram", "64KB",
             "-o", str(tmp_path / "x"))
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()
    assert len(line) == 1 and "needs" in line[0] and "budget 64.0 KB" in line[0] and "live at the peak" in line[0]


def test_gradient_accumulation_over_b_samples(mbv2_graph, fmnist) -> None:  # type: ignore[no-untyped-def]
    """B = 4: updates once every 4 samples from integer accumulators; learns, is
    deterministic, and the plan counts the accumulators."""
    train, _ = fmnist
    small = Dataset("small", train.images[:40], train.labels[:40])
    program = build_training_program(mbv2_graph, resolve(preset("last-layer", mbv2_graph), mbv2_graph))
    runs = []
    for _ in range(2):
        trainer = Trainer(program, small.sample_shape, seed=2, batch=4)
        report = trainer.fit(small, None, TrainConfig(epochs=8, lr=0.02, seed=2))
        runs.append((report, trainer.executor.trained_tensors()))
    losses = [e.train_loss for e in runs[0][0].epochs]
    assert min(losses[-3:]) < 0.5 * losses[0], losses
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    # One update per 4 samples gives other bytes than one per sample.
    single = Trainer(program, small.sample_shape, seed=2)
    single.fit(small, None, TrainConfig(epochs=1, lr=0.02, seed=2))
    batched = Trainer(program, small.sample_shape, seed=2, batch=4)
    batched.fit(small, None, TrainConfig(epochs=1, lr=0.02, seed=2))
    w1, w4 = single.executor.trained_tensors(), batched.executor.trained_tensors()
    assert any(not np.array_equal(w1[k], w4[k]) for k in w1)
    plain = program_memory(program)
    acc = program_memory(program, batch=4)
    extra = sum(r.size for r in acc.requests) - sum(r.size for r in plain.requests)
    head = linear_layers(mbv2_graph)[-1]
    # int32 mantissa per weight and bias, int32 exponent per output channel (weights) or
    # element (bias), one int32 count per tensor.
    c, k = head.out_channels, head.in_channels
    assert extra == (4 * c * k + 4 * c + 4) + (4 * c + 4 * c + 4)
    assert any(r.name.startswith("acc:") and r.kind is BufferKind.STATE for r in acc.requests)


def test_momentum(mbv2_graph, fmnist) -> None:  # type: ignore[no-untyped-def]
    """SGD momentum (μ = 0.9 in Q15): learns, is deterministic, differs from plain SGD,
    and combines with accumulation; the artifact keeps it."""
    from tinytrain.train.compile import momentum_q15

    train, _ = fmnist
    small = Dataset("small", train.images[:40], train.labels[:40])
    program = build_training_program(mbv2_graph, resolve(preset("last-layer", mbv2_graph), mbv2_graph))
    mu = momentum_q15(0.9)
    assert mu == 29491
    runs = []
    for _ in range(2):
        trainer = Trainer(program, small.sample_shape, seed=4, momentum_q15=mu)
        report = trainer.fit(small, None, TrainConfig(epochs=6, lr=0.002, seed=4))
        runs.append((report, trainer.executor.trained_tensors()))
    losses = [e.train_loss for e in runs[0][0].epochs]
    assert min(losses[-2:]) < 0.5 * losses[0], losses
    assert all(np.array_equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    plain = Trainer(program, small.sample_shape, seed=4)
    plain.fit(small, None, TrainConfig(epochs=1, lr=0.002, seed=4))
    one = Trainer(program, small.sample_shape, seed=4, momentum_q15=mu)
    one.fit(small, None, TrainConfig(epochs=1, lr=0.002, seed=4))
    w, w_mom = plain.executor.trained_tensors(), one.executor.trained_tensors()
    assert any(not np.array_equal(w[k], w_mom[k]) for k in w)
    both = Trainer(program, small.sample_shape, seed=4, batch=4, momentum_q15=mu)
    both.fit(small, None, TrainConfig(epochs=1, lr=0.002, seed=4))
    with pytest.raises(UsageError, match="momentum"):
        momentum_q15(1.0)
    # The plan holds v for every trained tensor: the accumulator's format.
    plain_mem, mom_mem = program_memory(program), program_memory(program, momentum=True)
    extra = sum(r.size for r in mom_mem.requests) - sum(r.size for r in plain_mem.requests)
    head = linear_layers(mbv2_graph)[-1]
    c, k = head.out_channels, head.in_channels
    assert extra == (4 * c * k + 4 * c + 4) + (4 * c + 4 * c + 4)
    assert {r.name for r in mom_mem.requests if r.name.startswith("mom:")} == {
        "mom:" + str(head.weight), "mom:" + str(head.bias)
    }
