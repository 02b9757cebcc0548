"""The generated firmware trains on the emulated Cortex-M4 and Cortex-M7 (QEMU mps2) to the
simulator's bytes: per-step (p_label, predicted), every trained tensor and the test logits,
from native 28x28 Fashion-MNIST samples sent over UART0 with the binary run protocol."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from codegen.backends import (
    QEMU_BACKENDS,
    RunResult,
    RunSpec,
    build_device,
    qemu_transport,
    run_backend,
    run_generated,
)
from codegen.emit import Generated
from codegen.targets import ElfInfo
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model

STEPS = 20
pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    x, y = fashion_mnist("train")
    return RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[2000:2004], seed=11, lr=0.05)


@pytest.fixture(scope="module")
def programs(spec: RunSpec) -> dict[str, tuple[Compiled, RunResult]]:
    out = {}
    for scheme in ("last-layer", "tte"):
        c = compile_model(shipped(MBV2), CompileOptions(scheme, classes=10, sample_bytes=784))
        out[scheme] = (c, run_backend("sim", c, spec))
    return out


Builds = dict[tuple[str, str], tuple[Generated, ElfInfo]]


@pytest.fixture(scope="module")
def builds(
    spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]], tmp_path_factory: pytest.TempPathFactory
) -> Builds:
    """The four firmwares (scheme x target), built two at a time."""
    root = tmp_path_factory.mktemp("qemu")
    keys = [(s, t) for s in programs for t in QEMU_BACKENDS]
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(
            lambda k: build_device(programs[k[0]][0], k[1], root / f"{k[0]}-{k[1]}", spec.sample_shape), keys
        )
        return dict(zip(keys, done, strict=True))


@pytest.mark.parametrize("target", QEMU_BACKENDS)
@pytest.mark.parametrize("scheme", ["last-layer", "tte"])
def test_qemu_matches_simulator(
    scheme: str, target: str, spec: RunSpec, programs: dict[str, tuple[Compiled, RunResult]], builds: Builds
) -> None:
    c, sim = programs[scheme]
    gen, info = builds[scheme, target]
    assert info.target == target and info.text > 0 and info.bss >= gen.lowered.arena_size
    dev = run_generated(c, gen, spec, qemu_transport(info, 120))
    assert_same_run(sim, dev)
    assert len(dev.steps) == STEPS
    g = c.program.graph
    assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in dev.tensors.items())


def test_firmware_errors_and_timeout_are_clear(builds: Builds) -> None:
    _, info = builds["last-layer", "qemu-m4"]
    # a request the driver refuses (bad magic): non-zero exit status, reported
    with pytest.raises(UsageError, match="exited with status 2"):
        qemu_transport(info, 30)(b"XXXX" + bytes(40))
    # a truncated request: the firmware waits for input forever; the run is bounded
    with pytest.raises(UsageError, match="did not finish"):
        qemu_transport(info, 3)(b"TTRN")


def test_unknown_backend_is_refused(programs: dict[str, tuple[Compiled, RunResult]], spec: RunSpec) -> None:
    with pytest.raises(UsageError, match="qemu-m7"):
        run_backend("qemu-m3", programs["tte"][0], spec)
    with pytest.raises(UsageError, match="sanitize"):
        run_backend("qemu-m4", programs["tte"][0], spec, sanitize=True)
