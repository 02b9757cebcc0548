"""A search's report: the results table (rich) and the accuracy / peak-SRAM plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tinytrain.search.result import Candidate, SearchResult

KB = 1024


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (peak, accuracy) points no other point beats on both (≤ peak, ≥ accuracy,
    one strictly), by ascending peak."""
    front: list[tuple[float, float]] = []
    for peak, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((peak, acc))
    return front


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_result(result: SearchResult, console: Console, all_probes: bool = True) -> None:
    table = Table(title=f"tinytrain search: {result.model} @ {result.options.sram_bytes / KB:.0f} KB SRAM")
    for col in ("phase", "candidate", "peak SRAM", "fits", "samples", "val. acc.", "val. loss", "predicted", "cache"):
        table.add_column(col, justify="left" if col in ("phase", "candidate") else "right")
    rows: list[Candidate] = [c for c in result.candidates if all_probes or c.phase != "probe"]
    for c in rows:
        star = " ★" if c is result.best or c == result.best else ""
        table.add_row(
            c.phase,
            c.name + star,
            f"{c.peak_sram / KB:.1f} KB",
            "yes" if c.fits else "no",
            str(c.train_samples) if c.train_samples else "-",
            _pct(c.accuracy),
            "-" if c.loss is None else f"{c.loss:.3f}",
            "-" if c.predicted_gain is None else f"{c.predicted_gain:+.3f}",
            "hit" if c.cached else ("-" if not c.train_samples else "run"),
        )
    console.print(table)
    t = result.timings
    console.print(
        f"best: {result.best.name} — peak {result.best.peak_sram / KB:.1f} KB, validation accuracy "
        f"{_pct(result.best.accuracy)}; {result.evaluations} training runs ({result.cache_hits} cache hits), "
        f"{result.compiles} compiles, {result.searched} fitting genomes; {t.get('total', 0.0):.1f} s "
        f"on {result.workers} {result.executor} worker(s)"
    )


def plot_result(result: SearchResult, path: Path) -> None:
    """Accuracy against peak SRAM: probes (short runs), validated schemes and baselines
    (long runs), the Pareto front of the long runs, the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"probe": ("tab:gray", "o", "probes (short runs)"), "validation": ("tab:blue", "s", "searched"),
              "baseline": ("tab:orange", "^", "baselines")}  # fmt: skip
    for phase, (color, marker, label) in styles.items():
        pts = [(c.peak_sram / KB, 100 * c.accuracy) for c in result.candidates
               if c.phase == phase and c.accuracy is not None]  # fmt: skip
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.scatter(xs, ys, c=color, marker=marker, label=label, alpha=0.8, s=28)
    long_runs = [(c.peak_sram / KB, 100 * c.accuracy) for c in result.candidates
                 if c.phase != "probe" and c.accuracy is not None and c.fits]  # fmt: skip
    front = pareto_front(long_runs)
    if front:
        xs, ys = [p[0] for p in front], [p[1] for p in front]
        ax.step(xs, ys, where="post", color="tab:green", label="Pareto front (long runs)")
    if result.best.accuracy is not None:
        ax.scatter([result.best.peak_sram / KB], [100 * result.best.accuracy], marker="*", s=220, c="tab:red",
                   label="chosen", zorder=5)  # fmt: skip
    ax.axvline(result.options.sram_bytes / KB, color="k", ls="--", lw=1, label="SRAM budget")
    ax.set_xlabel("peak SRAM (KB)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"scheme search: {Path(result.model).name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
