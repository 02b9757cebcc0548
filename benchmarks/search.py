"""Scheme search benchmark (issue 8): MobileNetV2-w0.35 @128 at 256 KB on Fashion-MNIST.

For each model (the shipped Fashion-MNIST-0–4 pretrained .tflite and, when present, the
tiny-training ImageNet checkpoint ``../shared/models/mbv2-w0.35.pkl``): a full search
(28×28 samples streamed, a new 10-class head, Ray with ``--workers`` workers, a fresh
cache) — wall time, training runs, runs/s, the chosen scheme's peak SRAM against the
``tte`` preset's — then Ray's scaling: the same first ``--scaling-evals`` contribution
runs with 1 and with 2 workers (fresh in-memory caches), runs/s each.

    python benchmarks/search.py [--models shipped,imagenet] [--workers 2] [--scaling-evals 8]
    python benchmarks/search.py --tiny   # a smoke run with tiny settings (minutes)

Writes ``benchmarks/results/search.json`` (``search_tiny.json`` with ``--tiny``) and the
chosen schemes ``benchmarks/results/search_<model>.yaml``, which train with
``python benchmarks/train_fmnist.py --schemes tte,benchmarks/results/search_shipped.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
KB = 1024
sys.path.insert(0, str(ROOT))
from train_fmnist import MODELS, model_path  # noqa: E402  (the same two models as the training benchmark)


def options(args: argparse.Namespace) -> Any:
    from tinytrain.search import EvolutionConfig, SearchOptions

    if args.tiny:
        return SearchOptions(blocks=1, ratios=(0.25, 1.0), probe_samples=16, val_samples=32, long_samples=32,
                             lr=args.lr, top=1, baselines=("tte",),
                             evolution=EvolutionConfig(population=8, generations=3, elite=3))  # fmt: skip
    return SearchOptions(blocks=args.blocks, probe_samples=args.probe_samples, val_samples=args.val_samples,
                         long_samples=args.long_samples, lr=args.lr, top=args.top, baselines=("tte",))  # fmt: skip


def peak_of(model: Path, scheme: str) -> int:
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    graph = prepare_graph(model, 10, "zero", 0)
    c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=1 << 30, sample_bytes=28 * 28))
    return int(c.plan.peak_live)


def run_model(key: str, args: argparse.Namespace) -> dict[str, Any]:
    from tinytrain.search import search

    path = model_path(key)
    assert path is not None
    opts = options(args)
    common: dict[str, Any] = {"sram": 256 * KB, "classes": 10, "sample_shape": (28, 28), "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="tinytrain-search-bench-") as cache:
        t0 = time.perf_counter()
        r = search(path, "fashion-mnist", executor="ray", jobs=args.workers, cache_dir=cache, options=opts, **common)
        wall = time.perf_counter() - t0
    suffix = "_tiny" if args.tiny else ""
    scheme_file = r.write_scheme(RESULTS / f"search_{key}{suffix}.yaml")
    (RESULTS / f"search_{key}{suffix}.report.json").write_text(json.dumps(r.to_json(), indent=2) + "\n")
    tte_peak = peak_of(path, "tte")
    scaling = {}
    n = min(args.scaling_evals, 1 + len(r.space["depths"]) + 4 * len(r.space["weight_layers"]))
    small = replace(opts, top=1, baselines=())
    for workers in (1, 2):
        t0 = time.perf_counter()
        s = search(path, "fashion-mnist", executor="ray", jobs=workers, cache_dir=None, evals=n, options=small,
                   **common)  # fmt: skip
        secs = s.timings.get("probes", 0.0)
        probes = sum(1 for c in s.candidates if c.phase == "probe" and c.train_samples)
        scaling[str(workers)] = {
            "probe_runs": probes,
            "probe_seconds": round(secs, 2),
            "runs_per_second": round(probes / secs, 4) if secs else None,
            "search_wall_seconds": round(time.perf_counter() - t0, 1),
        }
    best = r.best
    base = {c.name: c for c in r.baselines}
    return {
        "model": MODELS[key],
        "scheme_file": str(scheme_file.relative_to(ROOT.parent)),
        "search_wall_seconds": round(wall, 1),
        "training_runs": r.evaluations,
        "runs_per_second": round(r.evaluations / wall, 4),
        "compiles": r.compiles,
        "timings_seconds": {k: round(v, 1) for k, v in r.timings.items()},
        "workers": r.workers,
        "chosen": {
            "name": best.name,
            "peak_sram_bytes": best.peak_sram,
            "validation_accuracy": best.accuracy,
            "validation_loss": best.loss,
            "scheme": best.scheme,
        },
        "tte": {"peak_sram_bytes": tte_peak, "validation_accuracy": base["tte"].accuracy if "tte" in base else None},
        "chosen_peak_le_tte": best.peak_sram <= tte_peak,
        "ray_scaling": scaling,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | search wall | runs | runs/s | chosen peak SRAM | tte peak SRAM | chosen val. acc. | tte val. acc. "
        "| Ray runs/s (1 / 2 workers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sc = r["ray_scaling"]
        acc = r["chosen"]["validation_accuracy"]
        tacc = r["tte"]["validation_accuracy"]
        lines.append(
            f"| {r['model']} | {r['search_wall_seconds']} s | {r['training_runs']} | {r['runs_per_second']} "
            f"| {r['chosen']['peak_sram_bytes'] / KB:.1f} KB | {r['tte']['peak_sram_bytes'] / KB:.1f} KB "
            f"| {'-' if acc is None else f'{100 * acc:.1f}%'} | {'-' if tacc is None else f'{100 * tacc:.1f}%'} "
            f"| {sc['1']['runs_per_second']} / {sc['2']['runs_per_second']} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="shipped,imagenet")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scaling-evals", type=int, default=8, help="contribution runs timed at 1 and 2 workers")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--probe-samples", type=int, default=500)
    ap.add_argument("--val-samples", type=int, default=500)
    ap.add_argument("--long-samples", type=int, default=1000)
    ap.add_argument("--top", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.003)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a smoke run with tiny settings")
    args = ap.parse_args()
    import ray

    keys = [k for k in args.models.split(",") if k in MODELS and model_path(k) is not None]
    ray.init(num_cpus=max(2, args.workers), include_dashboard=False, log_to_driver=False)
    try:
        rows = []
        for k in keys:
            print(f"[{k}] searching ...", file=sys.stderr, flush=True)
            rows.append(run_model(k, args))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    out = RESULTS / ("search_tiny.json" if args.tiny else "search.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "search", "budget_bytes": 256 * KB, "rows": rows}, indent=2) + "\n")
    out.with_suffix(".md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
