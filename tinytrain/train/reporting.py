"""Tables and plots of training compilation and runs (rich, matplotlib)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from tinytrain.train.compile import KB, Compiled
from tinytrain.train.dgsu import dgsu_plan_summary
from tinytrain.train.loop import TrainReport
from tinytrain.train.memory import saved_activations


def print_compiled(c: Compiled, console: Console) -> None:
    t = Table(title=f"training program: scheme {c.scheme.name}")
    t.add_column("layer")
    t.add_column("update")
    t.add_column("weight channels", justify="right")
    for row in c.scheme.summary():
        text = f"{row['weight_channels']}/{row['in_channels']}"
        if "dgsu" in row:  # DGSU: every input channel; k of the rows (output channels) per step
            d = row["dgsu"]
            text += f", rows {d['k']}/{d['rows']} per step ({d['explore']} by age)"
            if d["candidate"] >= 0:
                text += f", layer candidate {d['candidate']}"
        t.add_row(row["layer"], row["update"], text)
    console.print(t)
    m, plan, o = c.memory, c.plan, c.options
    s = Table(title="summary", show_header=False)
    s.add_column("what")
    s.add_column("value", justify="right")
    s.add_row("steps (forward / loss / backward)", _steps(c))
    s.add_row("SRAM peak (live bytes)", f"{plan.peak_live / KB:.1f} KB of {o.sram_bytes / KB:.0f} KB")
    s.add_row("SRAM arena", f"{plan.arena_size / KB:.1f} KB")
    s.add_row("  of which trainable", f"{m.trainable_bytes / KB:.1f} KB")
    s.add_row("peak at", c.memory.steps[plan.peak_step].text)
    s.add_row("flash (model constants)", f"{m.flash_bytes / KB:.1f} KB of {o.flash_bytes / KB:.0f} KB")
    s.add_row("MACs forward / backward", f"{m.macs_forward:,} / {m.macs_backward:,}")
    dgsu = dgsu_plan_summary(c.scheme).get("dgsu")
    if dgsu is not None:
        frac = f"{dgsu['fraction_per_step']:.2%}"
        s.add_row("DGSU weights updated per step", f"{dgsu['weights_per_step']:,} ({frac} of the conv weights)")
    sa = saved_activations(c.graph, plan)
    s.add_row(
        "saved for backward (masks as bits + inputs)",
        f"{sa.bytes / KB:.1f} KB ({sa.int8_equivalent_bytes / KB:.1f} KB as int8: -{100 * sa.reduction:.0f} %)",
    )
    s.add_row("compile time", f"{c.seconds:.2f} s")
    console.print(s)


def _steps(c: Compiled) -> str:
    counts = {"forward": 0, "loss": 0, "backward": 0}
    for st in c.memory.steps:
        counts[st.phase] += 1
    return f"{counts['forward']} / {counts['loss']} / {counts['backward']}"


def plot_memory(c: Compiled, path: Path) -> None:
    """Live SRAM over the program's steps, split by buffer kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = c.plan
    kinds = sorted({p.request.kind.value for p in plan.buffers})
    series = {k: [0.0] * plan.num_steps for k in kinds}
    for p in plan.buffers:
        for s in range(p.first, p.last + 1):
            series[p.request.kind.value][s] += p.request.size / KB
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.stackplot(range(plan.num_steps), *[series[k] for k in kinds], labels=kinds, step="mid")
    ax.axhline(c.options.sram_bytes / KB, color="red", linestyle="--", label="budget")
    ax.set_xlabel("program step (forward → loss → backward)")
    ax.set_ylabel("live SRAM (KB)")
    ax.set_title(f"memory over the training program ({c.scheme.name}); arena {plan.arena_size / KB:.1f} KB")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_report(report: TrainReport, console: Console) -> None:
    t = Table(title=f"training: {report.steps} steps")
    for col in ("epoch", "train loss", "train accuracy", "test accuracy"):
        t.add_column(col, justify="right")
    for e in report.epochs:
        acc = "-" if e.test_accuracy is None else f"{100 * e.test_accuracy:.2f}%"
        t.add_row(str(e.epoch + 1), f"{e.train_loss:.4f}", f"{100 * e.train_accuracy:.2f}%", acc)
    console.print(t)


def plot_curves(report: TrainReport, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot([100 * (i + 1) for i in range(len(report.loss_curve))], report.loss_curve)
    a.set_xlabel("training step")
    a.set_ylabel("loss (mean over 100 steps)")
    epochs = [e.epoch + 1 for e in report.epochs]
    b.plot(epochs, [100 * e.train_accuracy for e in report.epochs], marker="o", label="train (running)")
    if all(e.test_accuracy is not None for e in report.epochs):
        b.plot(epochs, [100 * (e.test_accuracy or 0.0) for e in report.epochs], marker="o", label="test")
    b.set_xlabel("epoch")
    b.set_xticks(epochs)
    b.set_ylim(0, 100)
    b.set_ylabel("accuracy (%)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
