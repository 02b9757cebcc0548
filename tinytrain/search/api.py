"""``tinytrain.search(...)``: a scheme for a model under a memory budget.

1. **Contribution analysis** (:mod:`tinytrain.search.contrib`): short fine-tuning runs
   (probes) on a training subset, scored on a validation subset held out of the training
   split; each probe's memory comes from the planner with the budget.
2. **Evolutionary search** (:mod:`tinytrain.search.evolve`) of the genome of largest
   summed contribution whose program fits the budgets (planner, cached).
3. **Validation**: the ``top`` best genomes and the ``baselines`` are trained with longer
   runs (``long_samples``) on the same validation subset; the best searched scheme by
   validation accuracy (then the smaller peak SRAM) is the result.

Every training run is cached (:mod:`tinytrain.search.cache`) by model, scheme, data,
seed, steps and learning rate, every compile by model, scheme and budgets.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.graph import Graph
from tinytrain.search.cache import DEFAULT_CACHE_DIR, EvalCache, bytes_digest, digest
from tinytrain.search.contrib import METRICS, Contributions, contributions, probes
from tinytrain.search.evolve import EvolutionConfig, evolve
from tinytrain.search.executors import Executor, make_executor
from tinytrain.search.features import FeatureStore
from tinytrain.search.result import Candidate, SearchResult
from tinytrain.search.space import (
    DEFAULT_BLOCKS,
    DEFAULT_RATIOS,
    CandidateSpace,
    Genome,
    candidate_space,
    canonical_scheme,
)
from tinytrain.search.tasks import RunSettings, run_evaluation
from tinytrain.train.build import build_training_program
from tinytrain.train.compile import CompileOptions, compile_scheme, parse_size, prepare_graph, scheme_file_data
from tinytrain.train.data import Dataset, load_dataset
from tinytrain.train.planner import OverBudgetError
from tinytrain.train.scheme import Scheme, get_scheme, resolve

KB = 1024
CACHE_VERSION = 1  # part of every key: bump when an evaluation's meaning changes

# (phase, done, total): a phase starts with done = 0; ``phase`` is one of PHASES.
ProgressFn = Callable[[str, int, int], None]
PHASES = ("compile", "features", "probes", "evolution", "validation")


@dataclass(frozen=True)
class SearchOptions:
    sram_bytes: int = 256 * KB
    flash_bytes: int = 1024 * KB
    classes: int | None = None
    sample_shape: tuple[int, ...] | None = None  # the device streams native samples of this shape
    seed: int = 0
    blocks: int = DEFAULT_BLOCKS
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    max_probes: int | None = None  # cap on the contribution-analysis runs
    probe_samples: int = 500
    val_samples: int = 500
    long_samples: int = 2000
    epochs: int = 1
    lr: float = 0.01
    metric: str = "accuracy"
    top: int = 3
    baselines: tuple[str, ...] = ("tte",)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)

    def check(self) -> None:
        if self.metric not in METRICS:
            raise UsageError(f"unknown metric {self.metric!r} (one of {', '.join(METRICS)})")
        for name in ("probe_samples", "val_samples", "long_samples", "epochs", "top"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', ' ')} must be at least 1, got {getattr(self, name)}")
        if self.long_samples < self.probe_samples:
            raise UsageError(f"long samples ({self.long_samples}) must be at least the probe samples")
        if self.lr <= 0:
            raise UsageError(f"the learning rate must be > 0, got {self.lr}")
        if self.max_probes is not None and self.max_probes < 1:
            raise UsageError(f"evals must be at least 1, got {self.max_probes}")


@dataclass(frozen=True)
class CompileInfo:
    peak_sram: int
    arena: int
    flash: int
    first_live_op: int
    fits: bool

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CompileInfo:
        return cls(int(d["peak_sram"]), int(d["arena"]), int(d["flash"]), int(d["first_live_op"]), bool(d["fits"]))

    def to_json(self) -> dict[str, Any]:
        return {"peak_sram": self.peak_sram, "arena": self.arena, "flash": self.flash,
                "first_live_op": self.first_live_op, "fits": self.fits}  # fmt: skip


@dataclass(frozen=True)
class _Run:
    """One training run to do: a named scheme and its compile."""

    name: str
    phase: str
    scheme: Scheme
    mapping: dict[str, Any]
    canonical: list[list[Any]]
    info: CompileInfo
    predicted: float | None = None


@dataclass
class _Search:
    graph: Graph
    model: bytes
    model_hash: str
    options: SearchOptions
    cache: EvalCache
    executor: Executor
    progress: ProgressFn
    on_evaluation: Callable[[int], None] | None
    evaluations: int = 0
    compiles: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------- compile

    def compile_info(self, scheme: Scheme) -> tuple[list[list[Any]], CompileInfo]:
        o = self.options
        canonical = canonical_scheme(resolve(scheme, self.graph))
        sample = int(np.prod(o.sample_shape)) if o.sample_shape else None
        key = digest({"v": CACHE_VERSION, "kind": "compile", "model": self.model_hash, "scheme": canonical,
                      "sram": o.sram_bytes, "sample_bytes": sample})  # fmt: skip
        hit = self.cache.get("compile", key)
        if hit is not None:
            return canonical, CompileInfo.from_json(hit)
        self.compiles += 1
        opts = CompileOptions(scheme.name, sram_bytes=o.sram_bytes, flash_bytes=1 << 40, sample_bytes=sample)
        try:
            c = compile_scheme(self.graph, scheme, opts)
            info = CompileInfo(c.plan.peak_live, c.plan.arena_size, c.memory.flash_bytes,
                               c.program.first_live_op, True)  # fmt: skip
        except OverBudgetError as exc:
            first = build_training_program(self.graph, resolve(scheme, self.graph)).first_live_op
            info = CompileInfo(exc.peak_live, exc.needed, 0, first, False)
        self.cache.put("compile", key, info.to_json())
        return canonical, info

    def fits(self, info: CompileInfo) -> bool:
        return info.fits and info.flash <= self.options.flash_bytes

    def make_run(self, name: str, phase: str, scheme: Scheme, predicted: float | None = None) -> _Run:
        canonical, info = self.compile_info(scheme)
        info = replace(info, fits=self.fits(info))
        mapping = scheme_file_data(resolve(scheme, self.graph))
        mapping["name"] = name
        return _Run(name, phase, scheme, mapping, canonical, info, predicted)

    # ------------------------------------------------------------- training runs

    def evaluate(
        self, runs: Sequence[_Run], store: FeatureStore, n_train: int, labels: np.ndarray, data_hash: str, phase: str
    ) -> dict[str, tuple[dict[str, Any], bool]]:
        """Trains every run (cached ones are free); name → (result, from cache). Runs
        must fit; equal schemes share one training run."""
        o = self.options
        settings = RunSettings(o.lr, o.epochs, o.seed)
        keys: dict[str, str] = {}
        for r in runs:
            keys[r.name] = digest({"v": CACHE_VERSION, "kind": "eval", "model": self.model_hash,
                                   "scheme": r.canonical, "data": data_hash, "steps": n_train * o.epochs,
                                   "run": settings.to_json()})  # fmt: skip
        out: dict[str, tuple[dict[str, Any], bool]] = {}
        todo: dict[str, _Run] = {}
        for r in runs:
            hit = self.cache.get("eval", keys[r.name])
            if hit is not None:
                out[r.name] = (hit, True)
            elif keys[r.name] not in todo:
                todo[keys[r.name]] = r
        order = sorted(todo)  # by key: the same calls whatever the run order
        ops = sorted({todo[k].info.first_live_op for k in order})
        t0 = time.perf_counter()
        self.progress("features", 0, store.tasks_for(ops))
        done = 0

        def feat_progress(k: int) -> None:
            nonlocal done
            done += k
            self.progress("features", done, store.tasks_for(ops) + done)

        store.ensure(ops, self.executor, feat_progress)
        self.timings["features"] = self.timings.get("features", 0.0) + time.perf_counter() - t0
        model = self.executor.share(self.model)
        shared: dict[int, tuple[Any, Any]] = {}
        for op in ops:
            f = store.get(op)
            shared[op] = (
                self.executor.share({k: v[:n_train] for k, v in f.items()}),
                self.executor.share({k: v[n_train:] for k, v in f.items()}),
            )
        tr_labels, val_labels = self.executor.share(labels[:n_train]), self.executor.share(labels[n_train:])
        native = tuple(int(d) for d in store.images.shape[1:])
        calls = []
        for k in order:
            tr_feats, val_feats = shared[todo[k].info.first_live_op]
            calls.append((model, todo[k].mapping, native, tr_feats, tr_labels, val_feats, val_labels, settings))
        results: dict[str, dict[str, Any]] = {}
        self.progress(phase, len(out), len(runs))
        t0 = time.perf_counter()
        for i, res in self.executor.run(run_evaluation, calls):
            key = order[i]
            self.cache.put("eval", key, res)
            results[key] = res
            self.evaluations += 1
            self.progress(phase, len(out) + len(results), len(runs))
            if self.on_evaluation is not None:
                self.on_evaluation(self.evaluations)
        self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - t0
        for r in runs:
            if r.name not in out:
                out[r.name] = (results[keys[r.name]], False)
        return out


def _subsets(train: Dataset, o: SearchOptions) -> tuple[np.ndarray, np.ndarray]:
    """Validation indices and long-run training indices (the probe set is its start),
    from one seeded permutation of the training split."""
    need = o.val_samples + o.long_samples
    if len(train) < need:
        raise UsageError(
            f"the training split has {len(train)} samples; the search needs {need} "
            f"({o.val_samples} validation + {o.long_samples} training): lower them"
        )
    perm = np.random.default_rng(o.seed).permutation(len(train))
    return np.sort(perm[: o.val_samples]), perm[o.val_samples : need]


def _data_hash(train: Dataset, idx: np.ndarray, val: np.ndarray) -> str:
    return bytes_digest(
        np.ascontiguousarray(train.images[idx]).tobytes(), train.labels[idx].astype(np.int64).tobytes(),
        np.ascontiguousarray(train.images[val]).tobytes(), train.labels[val].astype(np.int64).tobytes(),
    )  # fmt: skip


def _candidate(run: _Run, res: tuple[dict[str, Any], bool] | None, samples: int) -> Candidate:
    r, cached = res if res is not None else ({}, False)
    return Candidate(
        name=run.name,
        phase=run.phase,
        scheme=run.mapping,
        peak_sram=run.info.peak_sram,
        arena=run.info.arena,
        fits=run.info.fits,
        train_samples=samples if res is not None else 0,
        accuracy=r.get("accuracy"),
        loss=r.get("loss"),
        predicted_gain=run.predicted,
        cached=cached,
        seconds=float(r.get("seconds", 0.0)),
    )


def search(
    model: str | Path,
    data: str | Path = "fashion-mnist",
    *,
    sram: int | str = 256 * KB,
    flash: int | str = 1024 * KB,
    classes: int | None = None,
    sample_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    evals: int | None = None,
    executor: str = "local",
    jobs: int | None = None,
    ray_address: str | None = None,
    cache_dir: str | Path | None = DEFAULT_CACHE_DIR,
    options: SearchOptions | None = None,
    progress: ProgressFn | None = None,
    on_evaluation: Callable[[int], None] | None = None,
) -> SearchResult:
    """Searches an update scheme for ``model`` that fits ``sram`` (and ``flash``).

    ``data``: ``"fashion-mnist"`` or an ``.npz`` (the training split is used; the
    validation subset is held out of it). ``evals`` caps the contribution-analysis runs.
    ``executor``: ``"local"`` (``jobs`` processes; 1 runs in this process) or ``"ray"``.
    ``cache_dir=None`` keeps the cache in memory only. ``options`` sets everything else
    (its budget, classes, sample shape and seed fields are overridden by the arguments).
    ``on_evaluation(n)`` is called after each training run that was not cached (n counts
    them); an exception it raises stops the search (the finished runs stay cached)."""
    from dataclasses import replace

    t_start = time.perf_counter()
    o = replace(
        options or SearchOptions(),
        sram_bytes=parse_size(sram) if isinstance(sram, str) else int(sram),
        flash_bytes=parse_size(flash) if isinstance(flash, str) else int(flash),
        classes=classes,
        sample_shape=sample_shape,
        seed=seed,
        max_probes=evals if evals is not None else (options.max_probes if options else None),
    )
    o = replace(o, evolution=replace(o.evolution, seed=seed))
    o.check()
    graph = prepare_graph(model, o.classes, "zero", 0)
    blob = write_tflite(graph)
    from tinytrain.frontends.tflite import load_tflite

    graph = load_tflite(blob)  # exactly the graph the workers see
    train = load_dataset(data, "train")
    if len(train) and int(train.labels.max()) >= _classes(graph):
        raise UsageError(
            f"data set {train.name!r} has label {int(train.labels.max())}; the model has {_classes(graph)} classes "
            "(use --classes)"
        )
    val_idx, long_idx = _subsets(train, o)
    probe_idx = long_idx[: o.probe_samples]
    space = candidate_space(graph, o.blocks, o.ratios)
    cache = EvalCache.open(cache_dir)
    ex = make_executor(executor, jobs, ray_address)
    report: ProgressFn = progress or (lambda phase, done, total: None)
    s = _Search(graph, blob, bytes_digest(blob), o, cache, ex, report, on_evaluation)
    try:
        result = _run(s, space, train, probe_idx, long_idx, val_idx)
    finally:
        ex.close()
    timings = dict(s.timings)
    timings["total"] = time.perf_counter() - t_start
    return SearchResult(
        model=str(model),
        data=str(data),
        options=o,
        executor=ex.name,
        workers=ex.workers,
        space=space.to_json(),
        contributions=result[2],
        best=result[0],
        candidates=result[1],
        searched=result[3],
        evaluations=s.evaluations,
        compiles=s.compiles,
        cache_hits=cache.stats.hits,
        timings=timings,
    )


def _score(c: Candidate, metric: str) -> float:
    if c.accuracy is None or c.loss is None:
        return -float("inf")
    return c.accuracy if metric == "accuracy" else -c.loss


def _classes(graph: Graph) -> int:
    return int(np.prod(graph.tensor(graph.outputs[0]).shape))


def _run(
    s: _Search,
    space: CandidateSpace,
    train: Dataset,
    probe_idx: np.ndarray,
    long_idx: np.ndarray,
    val_idx: np.ndarray,
) -> tuple[Candidate, tuple[Candidate, ...], dict[str, Any], int]:
    o = s.options
    # 1. contribution analysis
    probe_list = probes(space, o.max_probes)
    t0 = time.perf_counter()
    runs: list[_Run] = []
    s.progress("compile", 0, len(probe_list))
    for i, p in enumerate(probe_list):
        runs.append(s.make_run(p.name, "probe", p.scheme))
        s.progress("compile", i + 1, len(probe_list))
    s.timings["compile"] = time.perf_counter() - t0
    if not s.fits(runs[0].info):
        raise UsageError(
            f"even the classifier alone needs {runs[0].info.arena / KB:.1f} KB of SRAM "
            f"(budget {o.sram_bytes / KB:.1f} KB): no scheme fits"
        )
    fitting = [r for r in runs if s.fits(r.info)]
    probe_images = np.concatenate([train.images[probe_idx], train.images[val_idx]])
    probe_labels = np.concatenate([train.labels[probe_idx], train.labels[val_idx]]).astype(np.int64)
    store = FeatureStore(s.model, probe_images, train.sample_shape)
    probe_hash = _data_hash(train, probe_idx, val_idx)
    done = s.evaluate(fitting, store, len(probe_idx), probe_labels, probe_hash, "probes")
    del store
    results = {r.name: done[r.name][0] if r.name in done else None for r in runs}
    contrib: Contributions = contributions(space, probe_list, results, o.metric)
    candidates = [_candidate(r, done.get(r.name), len(probe_idx)) for r in runs]

    # 2. evolutionary search (fit checked by the planner, cached)
    t0 = time.perf_counter()
    s.progress("evolution", 0, o.evolution.generations)
    gen_done = 0

    def gen_progress(k: int) -> None:
        nonlocal gen_done
        gen_done += k
        s.progress("evolution", gen_done, o.evolution.generations)

    def fits(g: Genome) -> bool:
        return s.fits(s.compile_info(space.scheme(g))[1])

    ranked = evolve(space, contrib, fits, o.evolution, gen_progress)
    s.progress("evolution", o.evolution.generations, o.evolution.generations)
    s.timings["evolution"] = time.perf_counter() - t0
    if not ranked:
        raise UsageError(f"no scheme of the search space fits {o.sram_bytes / KB:.1f} KB")

    # 3. validation of the top genomes (distinct schemes) and the baselines, longer runs
    top: list[_Run] = []
    seen: set[str] = set()
    for sc in ranked:
        run = s.make_run(f"#{len(top) + 1}: {space.describe(sc.genome)}", "validation", space.scheme(sc.genome),
                         predicted=sc.gain)  # fmt: skip
        key = digest(run.canonical)
        if key in seen:
            continue
        seen.add(key)
        top.append(run)
        if len(top) == o.top:
            break
    base = [s.make_run(b, "baseline", get_scheme(b, s.graph)) for b in o.baselines]
    long_images = np.concatenate([train.images[long_idx], train.images[val_idx]])
    long_labels = np.concatenate([train.labels[long_idx], train.labels[val_idx]]).astype(np.int64)
    store = FeatureStore(s.model, long_images, train.sample_shape)
    long_hash = _data_hash(train, long_idx, val_idx)
    final = s.evaluate([*top, *base], store, len(long_idx), long_labels, long_hash, "validation")
    validated = [_candidate(r, final.get(r.name), len(long_idx)) for r in [*top, *base]]
    # the best validation score (accuracy, or minus the loss), then the smaller peak; ties
    # keep the better predicted gain
    best = max(validated[: len(top)], key=lambda c: (_score(c, o.metric), -c.peak_sram))
    return best, (*candidates, *validated), contrib.to_json(space), len(ranked)
