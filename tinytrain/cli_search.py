"""``tinytrain search``: an update scheme for a model under a memory budget (docs/search.md)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tinytrain.errors import UsageError

PHASE_LABELS = {
    "compile": "planning probes",
    "features": "frozen features",
    "probes": "contribution runs",
    "evolution": "evolution",
    "validation": "validation runs",
}


def _shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--sample-shape must look like 28x28 or 32x32x3, got {text!r}") from None
    if not dims or min(dims) < 1:
        raise UsageError(f"--sample-shape must be positive, got {text!r}")
    return dims


def _ratios(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(eval_fraction(v)) for v in text.split(",") if v)
    except ValueError:
        raise UsageError(f"--ratios must be numbers or fractions joined by ',', got {text!r}") from None


def eval_fraction(text: str) -> float:
    num, sep, den = text.partition("/")
    return float(num) / float(den) if sep else float(num)


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One rich progress bar per phase, on stderr (silent when quiet or not a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if quiet or not console.is_terminal:
        yield lambda phase, done, total: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as prog:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = prog.add_task(PHASE_LABELS.get(phase, phase), total=max(total, 1))
            prog.update(tasks[phase], completed=done, total=max(total, 1))

        yield update


def cmd_search(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tinytrain.search import EvolutionConfig, SearchOptions, search
    from tinytrain.search.report import plot_result, print_result
    from tinytrain.train.compile import parse_size

    if not Path(args.model).exists():
        raise UsageError(f"model file not found: {args.model}")
    sram, flash = parse_size(args.sram), parse_size(args.flash)
    baselines = tuple(b for b in args.baselines.split(",") if b)
    options = SearchOptions(
        blocks=args.blocks,
        ratios=_ratios(args.ratios),
        probe_samples=args.probe_samples,
        val_samples=args.val_samples,
        long_samples=args.long_samples,
        epochs=args.epochs,
        lr=args.lr,
        metric=args.metric,
        top=args.top,
        baselines=baselines,
        evolution=EvolutionConfig(population=args.population, generations=args.generations, elite=args.elite),
    )
    cache = None if args.no_cache else args.cache
    t0 = time.perf_counter()
    with _progress(args.json or args.quiet) as progress:
        result = search(
            args.model,
            args.data,
            sram=sram,
            flash=flash,
            classes=args.classes,
            sample_shape=_shape(args.sample_shape),
            seed=args.seed,
            evals=args.evals,
            executor=args.executor,
            jobs=args.jobs,
            ray_address=args.ray_address,
            cache_dir=cache,
            options=options,
            progress=progress,
        )
    out = result.write_scheme(args.output)
    report = Path(args.report) if args.report else out.with_suffix(".search.json")
    report.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    plot = Path(args.plot) if args.plot else out.with_suffix(".search.png")
    plot_result(result, plot)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif not args.quiet:
        console = Console()
        print_result(result, console)
        console.print(f"wrote {out} (scheme), {report} (report), {plot} (plot) in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "search", help="search an update scheme that fits a memory budget (contribution analysis + evolution)"
    )
    s.add_argument("model", help=".tflite model or MCUNet .pkl checkpoint")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an .npz with x (uint8 images) and y")
    s.add_argument("--sram", default="256KB", help="SRAM budget (default 256KB)")
    s.add_argument("--flash", default="1MB", help="flash budget (default 1MB)")
    s.add_argument("--classes", type=int, help="replace the classifier by an N-class head (as compile --classes)")
    s.add_argument("--sample-shape", help="native sample shape streamed by the device (as compile), e.g. 28x28")
    s.add_argument("--evals", type=int, help="at most N contribution-analysis runs (default: the whole space)")
    s.add_argument("--executor", choices=("local", "ray"), default="local")
    s.add_argument("--jobs", type=int, help="worker processes / Ray tasks in flight (default: 2 local, all Ray CPUs)")
    s.add_argument("--ray-address", help="Ray cluster to use (e.g. auto, ray://host:10001); default: a local Ray")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--blocks", type=int, default=4, help="candidate layers: the last N blocks (default 4)")
    s.add_argument("--ratios", default="1/8,1/4,1/2,1", help="input-channel ratios of weight updates")
    s.add_argument("--probe-samples", type=int, default=500, help="training samples of a probe run (default 500)")
    s.add_argument("--val-samples", type=int, default=500, help="validation samples (held out of train; default 500)")
    s.add_argument("--long-samples", type=int, default=2000, help="training samples of a validation run")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--metric", choices=("accuracy", "loss"), default="accuracy")
    s.add_argument("--top", type=int, default=3, help="searched schemes validated with long runs (default 3)")
    s.add_argument("--baselines", default="tte", help="presets validated alongside (comma-separated; none: '')")
    s.add_argument("--population", type=int, default=24)
    s.add_argument("--generations", type=int, default=20)
    s.add_argument("--elite", type=int, default=8, help="genomes kept from one generation to the next (default 8)")
    s.add_argument("--cache", default="~/.cache/tinytrain/search", help="evaluation cache directory")
    s.add_argument("--no-cache", action="store_true", help="keep the cache in memory only")
    s.add_argument("-o", "--output", required=True, help="the chosen scheme (YAML, for compile --scheme)")
    s.add_argument("--report", help="JSON report (default: OUTPUT with .search.json)")
    s.add_argument("--plot", help="PNG of accuracy against peak SRAM (default: OUTPUT with .search.png)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_search)
