"""The scheme search (issue 8): on a small Keras MobileNetV2 variant at 32×32 (seeded
weights, converted once per session), with few, short runs so the whole file stays fast.

One search runs in the session fixture, interrupted after a few training runs by a
callback that raises and then restarted with the same cache: the tests check its
result (fits the budget, compiles, beats bias-only on the validation runs), the
restart's cache use, a Ray run against the local one, and the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import ray

from tinytrain.cli import main
from tinytrain.search import EvolutionConfig, SearchOptions, SearchResult, search
from tinytrain.search.cache import EvalCache
from tinytrain.search.report import pareto_front
from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

KB = 1024
SRAM = 40 * KB  # bias-only needs ~41 KB on this model: the budget makes the search choose
INTERRUPT_AFTER = 3
OPTIONS = SearchOptions(
    blocks=1,
    ratios=(0.5, 1.0),
    probe_samples=32,
    val_samples=64,
    long_samples=64,
    lr=0.005,
    metric="loss",
    top=2,
    baselines=("bias-only",),
    evolution=EvolutionConfig(population=10, generations=6, elite=4),
)


class Interrupt(Exception):
    pass


@dataclass(frozen=True)
class Searched:
    model: Path
    cache: Path
    interrupted_runs: int
    result: SearchResult


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.mobilenetv2 import keras_mobilenetv2_variant
    from tinytrain.models.pretrain import to_float_input
    from tinytrain.train.data import load_dataset

    calibration = to_float_input(load_dataset("fashion-mnist", "train").images[1000:1032], 32)
    model, images = keras_mobilenetv2_variant(32, 3, (3,), seed=5, width=0.35, data=calibration)
    path = tmp_path_factory.mktemp("search") / "tiny32.tflite"
    path.write_bytes(convert_keras(model, images[:16]))
    return path


def _search(model: Path, cache: Path | None, **kw: object) -> SearchResult:
    args: dict[str, object] = {"sram": SRAM, "classes": 10, "sample_shape": (28, 28), "jobs": 1, "options": OPTIONS}
    args.update(kw)
    return search(model, "fashion-mnist", cache_dir=cache, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def searched(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Searched:
    cache = tmp_path_factory.mktemp("search-cache")

    def stop(n: int) -> None:
        if n >= INTERRUPT_AFTER:
            raise Interrupt

    with pytest.raises(Interrupt):
        _search(tiny_model, cache, on_evaluation=stop)
    done = EvalCache.open(cache).entries("eval")
    return Searched(tiny_model, cache, done, _search(tiny_model, cache))


def test_search_fits_compiles_and_beats_bias_only(searched: Searched, tmp_path: Path) -> None:
    r = searched.result
    assert r.best.fits and r.best.peak_sram <= SRAM
    # the scheme file compiles within the budget, to the peak the search reported
    path = r.write_scheme(tmp_path / "best.yaml")
    graph = prepare_graph(searched.model, 10, "zero", 0)
    c = compile_graph(graph, str(path), CompileOptions(str(path), sram_bytes=SRAM, sample_bytes=28 * 28))
    assert c.plan.arena_size <= SRAM and c.plan.peak_live == r.best.peak_sram
    (base,) = r.baselines
    assert base.name == "bias-only" and base.train_samples == r.best.train_samples
    assert r.best.loss is not None and base.loss is not None
    assert r.best.loss < base.loss, (r.best.loss, base.loss)  # the search's metric on the validation runs
    # every validated scheme ran as long as the baseline; the report names them all
    assert {c.phase for c in r.candidates} == {"probe", "validation", "baseline"}
    payload = r.to_json()
    assert payload["best"]["scheme"] == r.best.scheme and len(payload["candidates"]) == len(r.candidates)


def test_interrupted_search_resumes_from_its_cache(searched: Searched) -> None:
    assert searched.interrupted_runs == INTERRUPT_AFTER
    r = searched.result
    ran = [c for c in r.candidates if c.train_samples and not c.cached]
    reused = [c for c in r.candidates if c.cached]
    assert len(reused) >= INTERRUPT_AFTER  # the runs of the interrupted search were not redone
    assert r.evaluations == EvalCache.open(searched.cache).entries("eval") - INTERRUPT_AFTER
    assert r.evaluations <= len(ran)
    # a repeated search is free: no training run, no compile, the same choice
    again = _search(searched.model, searched.cache)
    assert again.evaluations == 0 and again.compiles == 0
    assert again.best == r.best.__class__(**{**r.best.__dict__, "cached": True})


def test_ray_executor_chooses_as_the_local_one(searched: Searched) -> None:
    # a smaller search (two probes, a short evolution, one validation run, no baseline)
    # keeps Ray's start-up the main cost
    evolution = EvolutionConfig(population=4, generations=2, elite=2)
    small = {"evals": 2, "options": replace(OPTIONS, top=1, baselines=(), evolution=evolution)}
    local = _search(searched.model, searched.cache, **small)  # its probes are in the session cache
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote = _search(searched.model, None, executor="ray", jobs=2, **small)
    finally:
        ray.shutdown()
    assert remote.executor == "ray" and remote.evaluations > 0
    assert remote.best.scheme == local.best.scheme
    assert [(c.name, c.accuracy, c.loss, c.peak_sram) for c in remote.candidates] == [
        (c.name, c.accuracy, c.loss, c.peak_sram) for c in local.candidates
    ]


def test_cli_search_writes_a_scheme_compile_accepts(searched: Searched, tmp_path: Path) -> None:
    out = tmp_path / "best.yaml"
    cache = tmp_path / "cache"
    shutil.copytree(searched.cache, cache)
    argv = [
        "search", str(searched.model), "--sram", f"{SRAM}", "--classes", "10", "--sample-shape", "28x28",
        "--jobs", "1", "--blocks", "1", "--ratios", "1/2,1", "--probe-samples", "32", "--val-samples", "64",
        "--long-samples", "64", "--lr", "0.005", "--metric", "loss", "--top", "2", "--population", "10",
        "--generations", "6", "--elite", "4", "--baselines", "bias-only", "--cache", str(cache), "-o", str(out),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0  # the fixture's search: every run and compile from the cache
    report = json.loads(out.with_suffix(".search.json").read_text())
    assert report["budget"]["sram_bytes"] == SRAM and report["best"]["fits"]
    assert report["evaluations"] == 0 and report["best"]["scheme"] == searched.result.best.scheme
    assert out.with_suffix(".search.png").stat().st_size > 0
    assert main(["compile", str(searched.model), "--scheme", str(out), "--classes", "10", "--sram", f"{SRAM}",
                 "--sample-shape", "28x28", "-o", str(tmp_path / "prog")]) == 0  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "missing.tflite", "-o", "x.yaml"], "model file not found"),
        (["search", "{model}", "--sram", "12XB", "-o", "x.yaml"], "bad size"),
        (["search", "{model}", "--sram", "0KB", "-o", "x.yaml"], "size must be positive"),
        (["search", "{model}", "--probe-samples", "0", "-o", "x.yaml"], "probe samples must be at least 1"),
        (["search", "{model}", "--executor", "local", "--ray-address", "auto", "-o", "x.yaml"], "needs --executor ray"),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, tiny_model: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = [a.replace("{model}", str(tiny_model)).replace("x.yaml", str(tmp_path / "x.yaml")) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinytrain: error:") and message in err and "\n" not in err, err


def test_pareto_front() -> None:
    pts = [(10.0, 0.5), (20.0, 0.4), (20.0, 0.7), (30.0, 0.6), (40.0, 0.9)]
    assert pareto_front(pts) == [(10.0, 0.5), (20.0, 0.7), (40.0, 0.9)]
