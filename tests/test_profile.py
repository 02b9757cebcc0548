"""`tinytrain profile` / codegen.profile: deterministic instruction counts in QEMU (per
training step, per inference, per kernel call and per layer), identical on two runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec
from codegen.profile import Profile, profile
from tinytrain.cli import main
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model

pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)
TARGET = "qemu-m4"


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(MBV2), CompileOptions("last-layer", classes=10, sample_bytes=784))


@pytest.fixture(scope="module")
def prof(compiled: Compiled) -> Profile:
    x, y = fashion_mnist("train")
    t, _ = fashion_mnist("test")
    spec = RunSpec(x[:1], y[:1].astype(np.int64), t[:1], seed=0, lr=0.01)
    return profile(compiled, TARGET, spec, timeout=300)


def test_counts_are_consistent(prof: Profile, compiled: Compiled) -> None:
    assert prof.resolution == 40
    counts = [*prof.step_instructions, *prof.inference_instructions_each, *(c.instructions for c in prof.train_calls)]
    assert all(n % 40 == 0 for n in counts)  # ticks of 40 instructions
    assert prof.train_step_instructions > prof.inference_instructions > 1_000_000
    # the traced calls add up to the measured totals (the hooks cost < 100 instructions per call)
    pairs = ((prof.train_calls, prof.train_step_instructions), (prof.infer_calls, prof.inference_instructions))
    for calls, total in pairs:
        s = sum(c.instructions for c in calls)
        assert abs(s - total) <= 100 * len(calls) + total // 100, (s, total)
    assert [c.kernel for c in prof.infer_calls] == [c.kernel for c in prof.train_calls if c.phase == "forward"]
    assert {c.phase for c in prof.train_calls} == {"forward", "loss", "backward"}
    j = prof.to_json()
    assert j["macs_forward"] == compiled.memory.macs_forward > 0
    assert 0 < j["macs_per_instruction_inference"] < 4
    fused = [la for la in prof.layers if la.layer.startswith("ops ")]
    assert fused and all(la.macs_forward > 0 and la.forward_instructions > 0 for la in fused)
    assert sum(la.forward_instructions + la.backward_instructions for la in prof.layers) == sum(
        c.instructions for c in prof.train_calls
    )


def test_cli_profile_json_is_the_same_on_a_second_run(
    prof: Profile, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["compile", str(shipped(MBV2)), "--scheme", "last-layer", "--classes", "10",
                 "--sample-shape", "28x28", "-o", str(out), "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["profile", str(out), "--target", TARGET, "--steps", "1", "--test-samples", "1", "--json"]) == 0
    j = json.loads(capsys.readouterr().out)
    ref = prof.to_json()
    for key in ("train_step_instructions", "inference_instructions", "layers", "train_calls", "infer_calls"):
        assert j[key] == ref[key], key


def test_profile_refuses_non_qemu_targets(compiled: Compiled) -> None:
    x = np.zeros((1, 28, 28), np.uint8)
    with pytest.raises(UsageError, match="QEMU"):
        profile(compiled, "host", RunSpec(x, np.zeros(1, np.int64), x))
