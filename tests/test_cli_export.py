"""``tinytrain export OUT --weights W.npz``: the trained model as an int8 .tflite that the
TFLite Micro interpreter runs to the simulator's bytes; bad weights files are refused with
one line and write nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinytrain.cli import main
from tinytrain.frontends.tflite import load_tflite
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm
from tinytrain.train.compile import load_artifact
from tinytrain.train.data import load_dataset, preprocess_for_graph
from tinytrain.train.loop import Trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export")
    out, weights = root / "out", root / "w.npz"
    args = [str(shipped(CHECKPOINT)), "--scheme", "tte", "--classes", "10", "--sample-shape", "28x28"]
    assert main(["compile", *args, "-o", str(out), "--json"]) == 0
    sim = ["simulate", str(out), "--train-samples", "40", "--test-samples", "0", "--lr", "0.05"]
    assert main([*sim, "--save-weights", str(weights), "--quiet"]) == 0
    return out, weights


def test_exported_model_runs_in_tflm_to_the_simulator_bytes(trained: tuple[Path, Path], tmp_path: Path) -> None:
    out, weights = trained
    tfl = tmp_path / "trained.tflite"
    assert main(["export", str(out), "--weights", str(weights), "-o", str(tfl)]) == 0
    compiled = load_artifact(out)
    trainer = Trainer(compiled.program, (28, 28))
    with np.load(weights) as f:
        trainer.executor.load_tensors({k: f[k] for k in f.files})
    graph = trainer.executor.current_graph()
    x = preprocess_for_graph(graph, (28, 28))(load_dataset("fashion-mnist", "test").images[:6])
    want = Simulator(graph).run([x])[0]
    got = run_tflm(tfl.read_bytes(), [x])[0]
    assert np.array_equal(got, want)
    untrained = Simulator(compiled.program.graph).run([x])[0]
    assert not np.array_equal(untrained, want)  # the weights did change the model
    assert len(load_tflite(tfl.read_bytes()).ops) == len(graph.ops)


def _bad(weights: Path, tmp_path: Path, edit: str) -> Path:
    with np.load(weights) as f:
        tensors = {k: np.array(f[k]) for k in f.files}
    name = sorted(tensors)[0]
    if edit == "unknown":
        tensors["no.such.tensor"] = tensors[name]
    elif edit == "missing":
        del tensors[name]
    elif edit == "shape":
        tensors[name] = tensors[name].reshape(-1)[:-1]
    elif edit == "dtype":
        tensors[name] = tensors[name].astype(np.float32)
    path = tmp_path / f"{edit}.npz"
    if edit == "corrupt":
        path.write_bytes(weights.read_bytes()[:100])
    else:
        np.savez(path, **tensors)  # type: ignore[arg-type]
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("unknown", "does not train"),
        ("missing", "lacks trained tensors"),
        ("shape", "in the weights file"),
        ("dtype", "in the weights file"),
        ("corrupt", "not a readable .npz"),
    ],
)
def test_bad_weights_are_refused(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: str, message: str
) -> None:
    out, weights = trained
    tfl = tmp_path / "t.tflite"
    assert main(["export", str(out), "--weights", str(_bad(weights, tmp_path, edit)), "-o", str(tfl)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not tfl.exists()


def test_weights_of_a_new_head_need_the_compile_output(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, weights = trained
    args = ["export", str(shipped(CHECKPOINT)), "--weights", str(weights), "-o", str(tmp_path / "x.tflite")]
    assert main(args) == 2  # head.weight is not a tensor of the checkpoint
    assert not (tmp_path / "x.tflite").exists()


def test_model_file_with_weights(tmp_path: Path) -> None:
    """Without --classes the trained tensors are the model's own: export MODEL --weights."""
    out, weights = tmp_path / "out", tmp_path / "w.npz"
    args = [str(shipped(CHECKPOINT)), "--scheme", "bias-only", "--sample-shape", "28x28", "-o", str(out), "--json"]
    assert main(["compile", *args]) == 0
    sim = ["simulate", str(out), "--train-samples", "10", "--test-samples", "0", "--lr", "0.05", "--quiet"]
    assert main([*sim, "--save-weights", str(weights)]) == 0
    a, b = tmp_path / "a.tflite", tmp_path / "b.tflite"
    assert main(["export", str(shipped(CHECKPOINT)), "--weights", str(weights), "-o", str(a)]) == 0
    assert main(["export", str(out), "--weights", str(weights), "-o", str(b)]) == 0
    x = preprocess_for_graph(load_tflite(a.read_bytes()), (28, 28))(load_dataset("fashion-mnist", "test").images[:4])
    assert np.array_equal(run_tflm(a.read_bytes(), [x])[0], run_tflm(b.read_bytes(), [x])[0])
