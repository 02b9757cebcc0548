"""The generated C (host build) trains to the simulator's bytes: per-step (p_label,
predicted), every trained tensor and the test logits, on Fashion-MNIST native samples."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec, run_backend
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model

STEPS = 20
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    x, y = fashion_mnist("train")
    return RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[1000:1006], seed=5, lr=0.05)


def _compile(scheme: str, batch: int = 1, model: str = MBV2) -> Compiled:
    return compile_model(shipped(model), CompileOptions(scheme, classes=10, sample_bytes=784, batch=batch))


@pytest.mark.parametrize("scheme", ["last-layer", "tte"])
def test_host_matches_simulator(scheme: str, spec: RunSpec, tmp_path: Path) -> None:
    c = _compile(scheme)
    sim = run_backend("sim", c, spec)
    host = run_backend("host", c, spec, work_dir=tmp_path)
    assert_same_run(sim, host)
    # the run trained something: some tensor moved away from its compiled value
    g = c.program.graph
    assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in host.tensors.items())


def test_sanitized_build(spec: RunSpec, tmp_path: Path) -> None:
    c = _compile("last-layer")
    short = RunSpec(spec.samples[:4], spec.labels[:4], spec.test[:2], seed=1, lr=0.05)
    assert_same_run(run_backend("sim", c, short), run_backend("host", c, short, work_dir=tmp_path, sanitize=True))


def test_batch_refused() -> None:
    c = _compile("last-layer", batch=2)
    x = np.zeros((1, 28, 28), np.uint8)
    with pytest.raises(UsageError, match="batch"):
        run_backend("host", c, RunSpec(x, np.zeros(1, np.int64), x))


@pytest.mark.parametrize(("model", "scheme"), [(CHECKPOINT, "bias-only"), (CHECKPOINT, "tte"), (MBV2, "bias-only")])
def test_host_fused_backward_matches_simulator(model: str, scheme: str, spec: RunSpec, tmp_path: Path) -> None:
    """Fused E→D (tt_fused_ed_bwd_s16) and P→D→E (tt_fused_pde_bwd_s16) backward steps,
    their updates from the fused scratch, and live fused forward blocks: the host C trains
    the real programs to the simulator's bytes over STEPS steps."""
    c = _compile(scheme, model=model)
    fused = [st for st in c.program.backward if st.fused is not None]
    assert fused
    if scheme == "bias-only":
        assert any(st.fused_project is not None for st in fused)
    for st in fused:  # the planned scratch is the kernel's (tests/test_c_fused_bwd.py, test_c_fused_pde_bwd.py)
        buf = next(b for b in c.plan.buffers if b.name == f"scratch:fused-bwd:{st.op_index}")
        assert buf.size == st.fused_scratch_bytes and c.plan.offset(buf.name) % 8 == 0
    assert_same_run(run_backend("sim", c, spec), run_backend("host", c, spec, work_dir=tmp_path))
