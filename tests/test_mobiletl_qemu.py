"""MobileTL on the emulated Cortex-M4 and Cortex-M7 (QEMU mps2): 50 training steps of
``mobiletl:blocks=2`` (sign-rule masks, bias-only expansions and depthwise convs, full
projections) give the simulator's bytes: per-step (p_label, predicted), every trained
tensor and the test logits. The model is the shipped MobileNetV2-class checkpoint (48x48,
ReLU6 implicit in its output ranges), small enough for QEMU within the test budget."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from codegen.backends import QEMU_BACKENDS, RunSpec, build_device, qemu_transport, run_backend, run_generated
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import CompileOptions, compile_model
from tinytrain.train.kernels.mask import SIGN_MASK_HI

STEPS = 50
pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


def test_qemu_m4_and_m7_match_simulator(tmp_path_factory: pytest.TempPathFactory) -> None:
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[3000:3003], seed=7, lr=0.01)
    c = compile_model(shipped(CHECKPOINT), CompileOptions("mobiletl:blocks=2", classes=10, sample_bytes=784))
    signs = [st for st in c.program.all_steps if st.params.clamp is not None and st.params.clamp[1] == SIGN_MASK_HI]
    assert len(signs) >= 4  # both blocks' expansion and depthwise
    root = tmp_path_factory.mktemp("mobiletl-qemu")
    with ThreadPoolExecutor(2) as pool:
        builds = list(pool.map(lambda t: build_device(c, t, root / t, spec.sample_shape), QEMU_BACKENDS))
        runs = pool.map(lambda b: run_generated(c, b[0], spec, qemu_transport(b[1], 300.0)), builds)
        sim = run_backend("sim", c, spec)
        results = list(runs)
    for r in results:
        assert_same_run(sim, r, STEPS)
    g = c.program.graph
    assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in sim.tensors.items())
