"""The code-generation commands: ``build`` (host and Cortex-M targets, over budget),
``simulate --backend host`` against ``--backend sim``, and ``debug-diff``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tinytrain.cli import main
from tinytrain.models.ship import MBV2, shipped

ARM = shutil.which("arm-none-eabi-gcc") is not None
pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "art"
    args = [str(shipped(MBV2)), "--scheme", "last-layer", "--classes", "10", "--sample-shape", "28x28"]
    assert main(["compile", *args, "-o", str(out), "--json"]) == 0
    return out


def test_build_host_json(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "build", str(artifact), "--target", "host", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["target"] == "host" and info["sram_budget"] is None and info["flash_budget"] is None
    assert info["text"] > 0 and info["bss"] >= info["arena_bytes"] > 0
    assert Path(info["elf"]).exists() and (artifact / "firmware" / "host" / "tt_model.c").exists()


@pytest.mark.skipif(not ARM, reason="arm-none-eabi-gcc is not installed")
def test_build_cortex_m_table_and_json(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "build", str(artifact), "--target", "qemu-m4")
    assert code == 0, err
    for word in ("text", "data", "bss", "flash used", "SRAM used", "plan arena", "262,144"):
        assert word in out, word
    code, out, err = _run(capsys, "build", str(artifact), "--target", "stm32f746g-disco", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["sram_budget"] == 256 * 1024 and info["flash_budget"] == 1024 * 1024
    assert info["flash_used"] == info["text"] + info["data"] <= info["flash_budget"]
    assert info["arena_bytes"] <= info["sram_used"] == info["data"] + info["bss"] <= info["sram_budget"]
    assert info["bin"] and Path(info["bin"]).exists()


@pytest.mark.skipif(not ARM, reason="arm-none-eabi-gcc is not installed")
def test_build_over_budget_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tight"
    args = [str(shipped(MBV2)), "--scheme", "last-layer", "--classes", "10", "--sample-shape", "28x28"]
    assert main(["compile", *args, "--sram", "46KB", "-o", str(out), "--json"]) == 0
    capsys.readouterr()
    code, _, err = _run(capsys, "build", str(out), "--target", "qemu-m4")
    assert code == 2
    assert "region `RAM' overflowed by" in err or "region RAM overflowed by" in err
    assert "budget 47104 bytes" in err


def test_simulate_host_equals_sim(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["simulate", str(artifact), "--train-samples", "12", "--test-samples", "8", "--epochs", "2"]
    common += ["--lr", "0.05", "--seed", "3", "--schedule", "cosine", "--json"]
    results = {}
    for backend in ("sim", "host"):
        weights = tmp_path / f"{backend}.npz"
        code, out, err = _run(capsys, *common, "--backend", backend, "--save-weights", str(weights))
        assert code == 0, err
        results[backend] = (out, np.load(weights))
    assert results["sim"][0] == results["host"][0]
    info = json.loads(results["host"][0])
    assert info["steps"] == 24 and len(info["test_accuracy_per_epoch"]) == 2
    sim_w, host_w = results["sim"][1], results["host"][1]
    assert sim_w.files == host_w.files and sim_w.files
    for k in sim_w.files:
        assert sim_w[k].dtype == host_w[k].dtype and np.array_equal(sim_w[k], host_w[k]), k


def test_debug_diff_no_divergence(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "debug-diff", str(artifact), "--steps", "2", "--lr", "0.05", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert not info["diverged"] and info["steps"] == 2 and info["comparisons"] > info["calls_per_step"]


def test_bisect_names_an_injected_fault(artifact: Path, tmp_path: Path) -> None:
    from codegen.bisect import bisect, trace_calls
    from codegen.lower import lower
    from tinytrain.datasets import fashion_mnist
    from tinytrain.train.compile import load_artifact

    compiled = load_artifact(artifact)
    calls = trace_calls(lower(compiled, (28, 28)))
    # the first forward call whose output is an activation: flip a bit in its output's 3rd byte
    k = next(
        tc.index for tc in calls if tc.call.phase == "forward" and tc.buffers and tc.buffers[-1].startswith("act:")
    )
    buf = calls[k].buffers[-1]
    x, y = fashion_mnist("train")
    rep = bisect(compiled, x[:1], y[:1].astype(np.int64), tmp_path, fault=(k, compiled.plan.offset(buf) + 2))
    d = rep.divergence
    assert d is not None and d.step == 0 and d.call == k and d.buffer == buf and d.offset == 2
    assert d.kernel == calls[k].call.kernel and d.c_value ^ d.sim_value == 1
