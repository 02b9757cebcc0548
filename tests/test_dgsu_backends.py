"""DGSU programs train to the same bytes everywhere: the row and layer selections, the trained
weights, the ages and layer signals, the per-step (p_label, predicted) and the test logits are
identical on the simulator, the host build, QEMU Cortex-M4 (dgsu:ratio) and Cortex-M7
(dgsu-layers) over 50 steps; a run resumed from its state (the simulator's tensors + PRNG,
the host application's checkpoint) equals the uninterrupted run.

The model is the shipped MCUNet-synthetic checkpoint (1.2 M forward MACs: 50 steps in QEMU
take a few seconds), where dgsu:ratio=0.02 picks 1 to 3 of 8 to 96 rows per layer."""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunResult, RunSpec, build_device, build_host, qemu_transport, run_backend, run_generated
from codegen.targets import ElfInfo, run_firmware
from host_tools.device import Device
from host_tools.firmware import build_app
from host_tools.link import Link
from tests.helpers_port import PipePort
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model
from tinytrain.train.kernels.schedule import Q15_ONE, lr_multiplier
from tinytrain.train.loop import Trainer

STEPS = 50
SCHEMES = ("dgsu:ratio=0.02", "dgsu-layers:layers=3,ratio=0.25")
HAVE_GCC = shutil.which("gcc") is not None
HAVE_QEMU = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    x, y = fashion_mnist("train")
    return RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[3000:3004], seed=7, lr=0.05)


@pytest.fixture(scope="module")
def programs(spec: RunSpec) -> dict[str, tuple[Compiled, RunResult]]:
    out = {}
    for s in SCHEMES:
        c = compile_model(shipped(CHECKPOINT), CompileOptions(s, classes=10, sample_bytes=784))
        out[s] = (c, run_backend("sim", c, spec))
    return out


def test_simulated_runs_select_and_train(programs: dict[str, tuple[Compiled, RunResult]]) -> None:
    """The state moved: ages count steps, the layer signals exist, weights of dynamic layers changed."""
    for c, r in programs.values():
        ages = {k: v for k, v in r.tensors.items() if k.startswith("dgsu_age:")}
        assert ages and all(v.dtype == np.uint16 for v in ages.values())
        assert any(v.max() > 0 for v in ages.values()) and any((v == 0).any() for v in ages.values())
        for p in c.scheme.dynamic:
            w0 = c.program.graph.tensor(p.layer.weight).data
            assert w0 is not None
            assert not np.array_equal(r.tensors[p.layer.weight], w0) or p.dynamic is None or p.dynamic.candidate >= 0
        if c.scheme.layer_select is not None:
            assert r.tensors["dgsu_layer_age"].max() > 0 and r.tensors["dgsu_layer_ema"].dtype == np.int32
            assert (r.tensors["dgsu_layer_score"] != 0).any()
        else:
            assert "dgsu_layer_age" not in r.tensors


@pytest.mark.skipif(not HAVE_GCC, reason="gcc is not installed")
def test_host_matches_simulator(spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]], tmp_path: Path) -> None:
    """dgsu:ratio through the run protocol (dgsu-layers: the application test below). Built
    with -O0 (a third of the -O2 build time; the bytes cannot depend on it)."""
    c, sim = programs[SCHEMES[0]]
    gen, exe = build_host(c, tmp_path, spec.sample_shape, extra_flags=("-O0",))
    info = ElfInfo("host", exe, None, exe.with_suffix(".map"), None, 0, 0, 0, None, None)

    def transport(data: bytes) -> bytes:
        r = run_firmware(info, 120.0, data)
        assert r.exit_status == 0
        return r.uart_output

    assert_same_run(sim, run_generated(c, gen, spec, transport))


@pytest.mark.skipif(not HAVE_QEMU, reason="arm-none-eabi-gcc / qemu-system-arm not installed")
def test_qemu_matches_simulator(
    spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One run per target: dgsu:ratio on Cortex-M4, dgsu-layers on Cortex-M7 (built in parallel,
    with the dsp kernels, 3x faster in QEMU, and -O1: faster to build; the bytes cannot
    depend on either)."""
    jobs = {"qemu-m4": SCHEMES[0], "qemu-m7": SCHEMES[1]}
    root = tmp_path_factory.mktemp("qemu")

    def run(target: str) -> RunResult:
        c, _ = programs[jobs[target]]
        gen, info = build_device(c, target, root / target, spec.sample_shape, kernels="dsp", extra_flags=("-O1",))
        return run_generated(c, gen, spec, qemu_transport(info, 120.0))

    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(jobs, pool.map(run, jobs), strict=True))
    for target, res in results.items():
        assert_same_run(programs[jobs[target]][1], res)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_simulator_resume_equals_uninterrupted(
    scheme: str, spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]]
) -> None:
    """Trained tensors (with the DGSU state) and the PRNG saved after half the run, loaded into
    a fresh executor: the second half gives the uninterrupted run's steps and bytes."""
    c, want = programs[scheme]
    half = STEPS // 2
    lr = lr_multiplier(spec.lr)

    def steps(tr: Trainer, lo: int, hi: int) -> list[tuple[int, int]]:
        feats = tr.features(spec.samples[lo:hi])
        out = []
        for k in range(hi - lo):
            live = {n: f[k : k + 1] for n, f in zip(tr.boundary, feats, strict=True)}
            r = tr.executor.step(live, int(spec.labels[lo + k]), lr, Q15_ONE)
            out.append((r.p_label, r.predicted))
        return out

    first = Trainer(c.program, spec.sample_shape, spec.seed)
    got = steps(first, 0, half)
    saved = {k: np.array(v, copy=True) for k, v in first.executor.trained_tensors().items()}
    prng = np.array(first.executor.prng, copy=True)
    second = Trainer(c.program, spec.sample_shape, spec.seed + 1)
    second.executor.load_tensors(saved)
    second.executor.prng[:] = prng
    got += steps(second, half, STEPS)
    assert got == list(want.steps)
    final = second.executor.trained_tensors()
    assert sorted(final) == sorted(want.tensors)
    for k, v in want.tensors.items():
        assert np.array_equal(final[k], v), k


@pytest.mark.skipif(not HAVE_GCC or shutil.which("stdbuf") is None, reason="gcc / stdbuf not installed")
def test_host_checkpoint_resume_equals_uninterrupted(
    spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]], tmp_path: Path
) -> None:
    """The training application (host build): the DGSU state is in the tensor table, so a
    checkpoint carries it; a new process that loads the checkpoint and trains the second half
    ends with the uninterrupted run's step results and tensors (which are the simulator's)."""
    c, sim = programs[SCHEMES[1]]
    app = build_app(c, "host", tmp_path / "app", (28, 28), extra_flags=("-O0",))
    env = dict(os.environ, TT_STORAGE_FILE=str(tmp_path / "storage.bin"))
    half = STEPS // 2

    def session() -> tuple[subprocess.Popen[bytes], Device]:
        proc = subprocess.Popen(
            ["stdbuf", "-o0", str(app.info.elf)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
        )
        dev = Device(Link(PipePort(proc), timeout=20.0, retries=0), app.program)
        dev.identify()
        return proc, dev

    def train(dev: Device, lo: int, hi: int) -> list[tuple[int, int]]:
        out = []
        for k in range(lo, hi):
            r = dev.train(spec.samples[k], int(spec.labels[k]))
            out.append((r.p_label, r.predicted))
        return out

    proc, dev = session()
    try:
        dev.reset(spec.seed)
        dev.set_lr(spec.lr)
        first = train(dev, 0, half)
        dev.save_checkpoint()
        straight = train(dev, half, STEPS)
        want = dev.pull()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
    assert first + straight == list(sim.steps)
    proc, dev = session()
    try:
        dev.reset(spec.seed + 1)  # another PRNG and fresh ages: all replaced by the checkpoint
        dev.load_checkpoint()
        resumed = train(dev, half, STEPS)
        got = dev.pull()
    finally:
        proc.stdin.close()  # type: ignore[union-attr]
        proc.wait(10)
    assert resumed == straight
    assert sorted(got) == sorted(want) == sorted(sim.tensors)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v) and np.array_equal(v, sim.tensors[k]), k


@pytest.mark.skipif(not HAVE_GCC, reason="gcc is not installed")
def test_host_depthwise_and_classifier_rows(spec: RunSpec, tmp_path: Path) -> None:
    """A scheme file with dynamic rows in 1×1 convs (two of them the projection P of a fused
    P→D→E backward step), a depthwise conv (rows = channels) and the classifier (rows =
    classes): the host build trains to the simulator's bytes."""
    scheme = tmp_path / "mixed.yaml"
    scheme.write_text(
        "default: bias\n"
        "layers:\n"
        "  - {layer: conv2, update: dynamic, count: 2, explore: 1}\n"
        "  - {layer: conv5, update: dynamic, count: 3, explore: 1}\n"
        "  - {layer: conv12, update: dynamic, ratio: 0.3}\n"
        "  - {layer: dw13, update: dynamic, count: 5, explore: 2}\n"
        "  - {layer: -1, update: dynamic, count: 3, explore: 1}\n"
    )
    c = compile_model(shipped(CHECKPOINT), CompileOptions(str(scheme), classes=10, sample_bytes=784))
    kinds = {p.layer.kind.value for p in c.scheme.dynamic}
    assert kinds == {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    fused_p = [st.fused_from for st in c.program.backward if st.fused_from is not None]
    assert sum(1 for p in fused_p if p.layer is not None and p.layer.dynamic is not None) == 2
    short = RunSpec(spec.samples[:20], spec.labels[:20], spec.test, seed=3, lr=0.05)
    gen, exe = build_host(c, tmp_path / "host", short.sample_shape, extra_flags=("-O0",))
    info = ElfInfo("host", exe, None, exe.with_suffix(".map"), None, 0, 0, 0, None, None)

    def transport(data: bytes) -> bytes:
        r = run_firmware(info, 120.0, data)
        assert r.exit_status == 0
        return r.uart_output

    assert_same_run(run_backend("sim", c, short), run_generated(c, gen, short, transport))
