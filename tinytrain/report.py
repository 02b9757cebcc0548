"""Terminal presentation: summary tables and progress bars (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tinytrain.ir.dump import dump
from tinytrain.ir.graph import Graph
from tinytrain.stats import GraphStats, human_bytes


def print_inspect(graph: Graph, stats: GraphStats, dump_ir: bool = False) -> None:
    console = Console()
    ops = Table(title=f"{graph.name}: {stats.num_ops} ops", show_lines=False)
    for col in ("#", "op", "output", "shape", "MACs"):
        ops.add_column(col, justify="right" if col in ("#", "MACs") else "left")
    for o in stats.ops:
        shape = "x".join(str(d) for d in o.output_shapes[0]) if o.output_shapes else ""
        ops.add_row(str(o.index), o.kind, o.outputs[0] if o.outputs else "", shape, f"{o.macs:,}" if o.macs else "")
    console.print(ops)
    summary = Table(title="summary", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    for name in graph.inputs:
        t = graph.tensor(name)
        summary.add_row(f"input {name}", f"{t.dtype.value}{list(t.shape)}")
    for name in graph.outputs:
        t = graph.tensor(name)
        summary.add_row(f"output {name}", f"{t.dtype.value}{list(t.shape)}")
    summary.add_row("tensors", str(stats.num_tensors))
    summary.add_row("parameters", f"{stats.parameters:,} ({human_bytes(stats.parameter_bytes)})")
    summary.add_row("MACs", f"{stats.macs:,}")
    summary.add_row("naive peak activations", f"{human_bytes(stats.peak_activation_bytes)} (at op #{stats.peak_at_op})")
    summary.add_row("op mix", ", ".join(f"{k}×{v}" for k, v in stats.op_histogram))
    console.print(summary)
    if dump_ir:
        console.print(dump(graph), markup=False, highlight=False)


@contextmanager
def progress_bar(label: str, total: int, quiet: bool = False) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; yields ``advance(k)``. Silent when quiet or not a TTY."""
    with status_progress_bar(label, total, quiet) as advance:
        yield lambda k: advance(k, None)


@contextmanager
def status_progress_bar(label: str, total: int, quiet: bool = False) -> Iterator[Callable[[int, str | None], None]]:
    """:func:`progress_bar` whose ``advance(k, status)`` also shows ``status`` (e.g. the
    running loss and accuracy) after the label when it is not None."""
    console = Console(stderr=True)
    if quiet or not console.is_terminal or total <= 0:
        yield lambda k, status: None
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as prog:
        task = prog.add_task(label, total=total)

        def advance(k: int, status: str | None) -> None:
            if status is None:
                prog.advance(task, k)
            else:
                prog.update(task, advance=k, description=f"{label} {status}")

        yield advance
