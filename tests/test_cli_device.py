"""The device workflow on the command line, end to end in emulation: ``emulate`` (QEMU with
the bootloader, serial on TCP) → ``flash`` → ``train`` (samples streamed in simulate's order)
→ ``pull``: the pulled weights equal ``simulate --save-weights`` byte for byte; then
``export --weights`` of the pulled file."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tinytrain.cli import main
from tinytrain.models.ship import CHECKPOINT, shipped

STEPS = 50


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-device") / "out"
    args = [str(shipped(CHECKPOINT)), "--scheme", "tte", "--classes", "10", "--sample-shape", "28x28"]
    assert main(["compile", *args, "-o", str(d), "--json"]) == 0
    return d


@pytest.fixture(scope="module")
def url(out: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinytrain.cli", "emulate", str(out), "--target", "qemu-m4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("socket://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() is not None else "")
        state = json.loads((out / "emulator.json").read_text())
        assert state == {"url": line, "target": "qemu-m4"}
        yield line
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0
    assert not (out / "emulator.json").exists()


def test_emulate_flash_train_pull_equals_simulate(
    out: Path, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # flash remembers OUT there for pull
    assert main(["train", "--port", url, "--train-samples", "3"]) == 2  # no firmware yet: the bootloader answers
    assert "bootloader" in capsys.readouterr().err
    assert main(["flash", str(out), "--port", url, "--quiet"]) == 0
    common = ["--train-samples", str(STEPS // 2), "--epochs", "2", "--lr", "0.05", "--seed", "3"]
    assert main(["train", "--port", url, *common, "--test-samples", "4", "--program", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == STEPS and summary["test_accuracy"] is not None
    pulled, simulated = tmp_path / "device.npz", tmp_path / "sim.npz"
    assert main(["pull", "--port", url, "-o", str(pulled)]) == 0  # the program is found by its identity
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    assert main(["pull", "--port", url, "-o", str(tmp_path / "x.npz")]) == 2
    assert "pass --program OUT" in capsys.readouterr().err
    sim = ["simulate", str(out), *common, "--test-samples", "0", "--save-weights", str(simulated), "--quiet"]
    assert main(sim) == 0
    with np.load(pulled) as a, np.load(simulated) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    tfl = tmp_path / "trained.tflite"
    assert main(["export", str(out), "--weights", str(pulled), "-o", str(tfl)]) == 0 and tfl.stat().st_size > 0


def test_wrong_port_and_sample_size(out: Path, url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", "--port", "socket://127.0.0.1:1", "--train-samples", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot open serial port" in err[0]
    data = tmp_path / "rgb.npz"
    np.savez(data, x=np.zeros((4, 32, 32, 3), np.uint8), y=np.zeros(4, np.int64))
    assert main(["train", "--port", url, "--data", str(data), "--train-samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "784-byte samples" in err[0], err
