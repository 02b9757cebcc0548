"""On-device training accuracy and cost on Fashion-MNIST (the training issue's protocol).

Protocol: train on the first N (default 6,000) Fashion-MNIST training images, test on
the first M (default 2,000) test images; 28×28 → bilinear 128×128, grey → 3 channels,
[−1, 1] (tinytrain's integer preprocessing); a zero-initialised 10-class head; E epochs
(default 3); batch 1, integer-only training in the simulator (bit-exact with the
device). Rows: the int8 schemes (default last-layer, bias-only, tte) and float32 full
fine-tuning of the same dequantized network in TensorFlow (same data and epochs,
batch 32, SGD momentum 0.9), measured in this script.

Models: the shipped pretrained MobileNetV2-w0.35 (Fashion-MNIST classes 0–4) and, when
present, the ImageNet tiny-training checkpoint ``../shared/models/mbv2-w0.35.pkl``.

    python benchmarks/train_fmnist.py [--train-samples 6000] [--test-samples 2000] [--epochs 3] [--jobs 2]
        [--resume]  # an interrupted run goes on from its finished rows (benchmarks/results/train_fmnist.partial/)
    python benchmarks/train_fmnist.py --refresh-memory  # new memory columns after a planner change
    python benchmarks/train_fmnist.py --collect --instructions  # the table of the finished rows, + qemu-m7 counts

The DGSU / MobileTL rows (issue 6): ``--schemes tte,dgsu:ratio=0.02,dgsu:ratio=0.02,weights=50,
mobiletl:blocks=2,mobiletl:blocks=4,bias-only,last-layer`` (a ``key=value`` piece continues the
preset before it). Every int8 row records the fraction of the conv weights updated per step and
over the run; ``--plot`` draws test accuracy against peak SRAM.

Writes ``benchmarks/results/train_fmnist.json`` and a markdown table.

The README table (learning-rate grids; ``--collect`` gathers the finished rows)::

    python benchmarks/train_fmnist.py --collect --schedule cosine --lr 0.01 \
      --lr-for tte=0.003+0.001 --lr-for bias-only=0.003 --lr-for dgsu:ratio=0.02=0.003+0.001 \
      --lr-for dgsu:ratio=0.02,weights=50=0.003+0.001+0.01 --lr-for mobiletl:blocks=2=0.003+0.001 \
      --lr-for mobiletl:blocks=4=0.003+0.001 \
      --lr-for dgsu:ratio=0.02,weights=48,bias=16=0.003 --lr-for dgsu:ratio=0.05,weights=48,bias=16=0.003+0.01 \
      --schemes last-layer,bias-only,tte,dgsu:ratio=0.02,dgsu:ratio=0.02,weights=50,\
    dgsu:ratio=0.02,weights=48,bias=16,dgsu:ratio=0.05,weights=48,bias=16,mobiletl:blocks=2,mobiletl:blocks=4

(the ``--schemes`` value is one word; it is broken here for width). The ViT rows of the same
protocol come from ``benchmarks/train_vit.py`` (model key ``vit``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED_PKL = ROOT.parent.parent / "shared" / "models" / "mbv2-w0.35.pkl"
KB = 1024


def int8_row(model: Path, scheme: str, lr: float, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph
    from tinytrain.train.kernels.schedule import Schedule
    from tinytrain.train.loop import TrainConfig, Trainer

    train, test = data
    graph = prepare_graph(model, 10, "zero", 0)
    # Compile without a budget cap to report the real peak; fits = peak ≤ 256 KB.
    c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=1 << 30, sample_bytes=28 * 28))
    from tinytrain.train.dgsu import RowCoverage

    t0 = time.perf_counter()
    trainer = Trainer(c.program, train.sample_shape, seed=args.seed)
    coverage = RowCoverage(c.scheme)
    trainer.executor.observer = coverage
    config = TrainConfig(epochs=args.epochs, lr=lr, schedule=Schedule(args.schedule), seed=args.seed)
    report = trainer.fit(train, test, config)
    wall = time.perf_counter() - t0
    return {
        "scheme": scheme,
        "kind": "int8 on-device (simulated)",
        "lr": lr,
        "schedule": args.schedule,
        "test_accuracy": report.test_accuracy,
        "test_accuracy_per_epoch": [e.test_accuracy for e in report.epochs],
        "train_loss_per_epoch": [e.train_loss for e in report.epochs],
        "train_accuracy_per_epoch": [e.train_accuracy for e in report.epochs],
        "loss_curve_per_100_steps": [round(v, 4) for v in report.loss_curve],
        **memory_columns(c),
        "conv_fraction_per_step": coverage.fraction_per_step(report.steps),
        "conv_fraction_over_run": coverage.fraction_over_run(),
        "wall_seconds": round(wall, 1),
    }


def static_fractions(c: Any) -> dict[str, float]:
    """The conv-weight fractions of a scheme without run-time selection (the same every step)."""
    from tinytrain.train.dgsu import RowCoverage

    cov = RowCoverage(c.scheme)
    return {"conv_fraction_per_step": cov.fraction_per_step(1), "conv_fraction_over_run": cov.fraction_over_run()}


EMULATOR_SRAM = 1024 * KB  # QEMU's mps2 boards have 4 MiB of RAM: reference programs over 256 KB link into this


def instructions_columns(model: Path, scheme: str, sram_bytes: int = 256 * KB) -> dict[str, Any]:
    """Executed instructions per training step and per inference on the emulated Cortex-M7
    (dsp kernels; QEMU -icount, deterministic): the mean over 4 training steps, since run-time
    selection (DGSU) may vary them. Compiled with the 256 KB budget the firmware links into
    (``sram_bytes``: a larger one for a reference program that only the emulator's 4 MiB hold);
    a program whose firmware overflows 256 KB is profiled again with :data:`EMULATOR_SRAM`
    (``instructions_sram_bytes`` says so: the count exists, no 256 KB part runs it)."""
    import numpy as np

    from codegen.backends import RunSpec
    from codegen.profile import profile
    from codegen.targets import RegionOverflowError
    from tinytrain.datasets import fashion_mnist
    from tinytrain.errors import TinytrainError
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    graph = prepare_graph(model, 10, "zero", 0)
    x, y = fashion_mnist("train")
    t, _ = fashion_mnist("test")
    spec = RunSpec(x[:4], y[:4].astype(np.int64), t[:1], seed=0, lr=0.003)
    extra: dict[str, Any] = {}
    try:
        try:
            c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=sram_bytes, sample_bytes=28 * 28))
            prof = profile(c, "qemu-m7", spec, kernels="dsp", timeout=1800)
        except RegionOverflowError as exc:  # plans within the budget, links over it: count it on the emulator
            extra = {"instructions_sram_bytes": EMULATOR_SRAM, "instructions_note": str(exc).splitlines()[0]}
            c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=EMULATOR_SRAM, sample_bytes=28 * 28))
            prof = profile(c, "qemu-m7", spec, kernels="dsp", timeout=1800)
        if sram_bytes > 256 * KB:
            extra["instructions_sram_bytes"] = sram_bytes
    except TinytrainError as exc:  # does not fit or does not build: no device figure
        return {"instructions_per_step_m7": None, "instructions_note": str(exc).splitlines()[0]}
    steps = prof.step_instructions
    infer = prof.inference_instructions_each
    return {
        "instructions_per_step_m7": int(sum(steps) // len(steps)),
        "instructions_per_inference_m7": int(sum(infer) // len(infer)),
        **extra,
    }


def memory_columns(c: Any) -> dict[str, Any]:
    return {
        "peak_sram_bytes": c.plan.peak_live,
        "arena_bytes": c.plan.arena_size,
        "trainable_bytes": c.memory.trainable_bytes,
        "fits_256kb": c.plan.arena_size <= 256 * KB,
        "flash_bytes": c.memory.flash_bytes,
        "macs_forward": c.memory.macs_forward,
        "macs_backward": c.memory.macs_backward,
        "compile_seconds": round(c.seconds, 3),
    }


def float_row(model: Path, lr: float, args: argparse.Namespace, data: Any) -> dict[str, Any]:
    from tinytrain.frontends.load import load_model
    from tinytrain.train.float_baseline import finetune_float

    train, test = data
    t0 = time.perf_counter()
    res = finetune_float(
        load_model(model),
        train.images,
        train.labels,
        test.images,
        test.labels,
        classes=10,
        epochs=args.epochs,
        batch=32,
        lr=lr,
        trainable="full",
        seed=args.seed,
    )
    return {
        "scheme": "float32 full fine-tuning (TensorFlow)",
        "kind": "float32",
        "lr": lr,
        "test_accuracy": float(res["test_accuracy"]),
        "trainable_parameters": int(res.get("trainable_parameters", 0)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


# Rows without a ``code_rev`` were measured before commit 9a13caf made the loss gradient
# one-sided at saturated logits (docs/numerics.md, "Loss"); the table marks them with †.
BEFORE_ONE_SIDED_LOSS = "†"


def code_rev() -> str:
    """The repository's commit (short hash) the row was measured at; "unknown" outside git."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | scheme | test acc. | after each epoch | SRAM (arena) | fits 256 KB | flash | MACs fwd / bwd "
        "| conv weights updated per step / over the run | M7 instructions per step | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for block in results:
        for r in block["rows"]:
            acc = f"{100 * r['test_accuracy']:.2f}%" if r.get("test_accuracy") is not None else "-"
            if r["kind"] != "float32" and "code_rev" not in r:
                acc += f" {BEFORE_ONE_SIDED_LOSS}"
            if r["kind"] == "float32":
                name = f"{r['scheme']} (lr {r['lr']})"
                dash = " – |" * 7
                lines.append(f"| {block['model']} | {name} | {acc} |{dash} {r['wall_seconds']} s |")
                continue
            lines.append(
                f"| {block['model']} | {r['scheme']} (lr {r['lr']}, {r.get('schedule', 'constant')}) | {acc} "
                f"| {' / '.join(f'{100 * a:.1f}' for a in r.get('test_accuracy_per_epoch', []))} "
                f"| {r['arena_bytes'] / KB:.1f} KB "
                f"| {'yes' if r['fits_256kb'] else 'no'} | {r['flash_bytes'] / KB:.0f} KB "
                f"| {r['macs_forward'] / 1e6:.1f} M / {r['macs_backward'] / 1e6:.1f} M | {fractions(r)} "
                f"| {instructions(r)} | {r['wall_seconds']} s |"
            )
    return "\n".join(lines)


def fractions(r: dict[str, Any]) -> str:
    if "conv_fraction_per_step" not in r:
        return "–"
    return f"{100 * r['conv_fraction_per_step']:.2f} % / {100 * r['conv_fraction_over_run']:.1f} %"


def instructions(r: dict[str, Any]) -> str:
    v = r.get("instructions_per_step_m7")
    if not v:
        return "–"
    ram = r.get("instructions_sram_bytes")
    return f"{v / 1e6:.1f} M" + (f" ({ram // (1024 * KB)} MB RAM, emulator only)" if ram else "")


def best_per_scheme(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The finished int8 rows, one per scheme: the learning rate of its grid with the best test
    accuracy (as the float32 reference's best rate is chosen)."""
    best: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("test_accuracy") is None or r["kind"] == "float32":
            continue
        if r["scheme"] not in best or r["test_accuracy"] > best[r["scheme"]]["test_accuracy"]:
            best[r["scheme"]] = r
    return list(best.values())


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Test accuracy against peak SRAM, one point per int8 scheme at its best learning rate
    (one panel per model); the float32 rows as horizontal lines (they have no MCU memory figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = [b for b in results if b["rows"]]
    if not blocks:
        return
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.8), squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        floats = [r for r in block["rows"] if r["kind"] == "float32" and r.get("test_accuracy") is not None]
        if floats:  # the best learning rate of the float32 reference
            best = max(floats, key=lambda r: r["test_accuracy"])
            acc = 100 * best["test_accuracy"]
            ax.axhline(acc, ls="--", lw=0.8, color="grey")
            label = f"float32 full FT (lr {best['lr']})"
            ax.annotate(label, (0.01, acc), xycoords=("axes fraction", "data"), fontsize=7)
        for r in best_per_scheme(block["rows"]):
            acc = 100 * r["test_accuracy"]
            kb = r["peak_sram_bytes"] / KB
            ax.scatter([kb], [acc], s=30)
            ax.annotate(r["scheme"], (kb, acc), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.axvline(256, color="red", lw=0.8)
        ax.set_xlabel("peak SRAM of the training program (KB)")
        ax.set_ylabel("Fashion-MNIST test accuracy (%)")
        ax.set_title(block["model"], fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


MODELS = {
    "shipped": "MobileNetV2-w0.35 @128, Fashion-MNIST 0-4 pretrained (shipped)",
    "imagenet": "MobileNetV2-w0.35 @128, ImageNet (tiny-training .pkl)",
    "vit": "tiny ViT (dim 64, 4 blocks) @32, Fashion-MNIST 0-4 pretrained (shipped)",  # benchmarks/train_vit.py
}


def model_path(key: str) -> Path | None:
    from tinytrain.models.ship import shipped

    if key == "shipped":
        return shipped("mbv2-w0.35-128-fmnist04-int8.tflite")
    if key == "vit":
        return shipped("vit-d64-32-fmnist04-int8.tflite")
    return SHARED_PKL if SHARED_PKL.exists() else None


def run_model(key: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row of one model; each finished row is also kept in ``--partial`` so that an
    interrupted run resumes where it stopped (``--resume``)."""
    from tinytrain.train.data import Dataset, load_dataset

    path = model_path(key)
    assert path is not None
    tr, te = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    data = (
        Dataset("train", tr.images[: args.train_samples], tr.labels[: args.train_samples]),
        Dataset("test", te.images[: args.test_samples], te.labels[: args.test_samples]),
    )
    rows = []
    for scheme, lr, is_float in row_jobs(args):
        keep = row_file(args.partial, key, scheme, lr, is_float)
        if args.resume and keep.exists():
            row = json.loads(keep.read_text())
            same = row.get("lr") == lr and (is_float or row.get("schedule", "constant") == args.schedule)
            if row.get("protocol") == protocol(args, key) and same:
                rows.append(row)
                continue
        print(f"[{key}] {scheme} (lr {lr:g}) ...", file=sys.stderr, flush=True)
        row = float_row(path, lr, args, data) if is_float else int8_row(path, scheme, lr, args, data)
        row["protocol"] = protocol(args, key)
        row["code_rev"] = code_rev()
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def scheme_list(text: str) -> list[str]:
    """``--schemes``, comma-separated; a piece ``key=value`` without ':' continues the
    previous preset's parameters (``tte,dgsu:ratio=0.02,weights=50,bias-only``)."""
    out: list[str] = []
    for piece in (v for v in text.split(",") if v):
        if out and "=" in piece and ":" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def row_name(scheme: str) -> str:
    """A scheme's name in file names: a preset with ':' → '_', a scheme file path → its stem
    (``--schemes tte,build/best_scheme.yaml`` trains a searched scheme too)."""
    if Path(scheme).suffix in (".yaml", ".yml", ".json"):
        return "file_" + Path(scheme).stem
    return scheme.replace(":", "_").replace(",", "_")


def scheme_lrs(args: argparse.Namespace, scheme: str) -> list[float]:
    """The int8 learning rates of ``scheme`` (one row each): its ``--lr-for`` entry
    (``SCHEME=LR`` or a grid ``SCHEME=LR1+LR2``), else ``--lr``."""
    for item in args.lr_for:
        name, _, value = item.rpartition("=")
        if name == scheme:
            return [float(v) for v in value.split("+") if v]
    return [float(args.lr)]


def row_jobs(args: argparse.Namespace) -> list[tuple[str, float, bool]]:
    """Every row of one model as ``(scheme, lr, is_float)``: each int8 scheme at each of its
    learning rates, then the float32 rows."""
    float_lrs = [] if args.no_float else [float(v) for v in args.float_lr.split(",") if v]
    jobs = [(scheme, lr, False) for scheme in scheme_list(args.schemes) for lr in scheme_lrs(args, scheme)]
    return jobs + [(f"float@{lr:g}", lr, True) for lr in float_lrs]


def row_file(partial: Path, key: str, scheme: str, lr: float, is_float: bool) -> Path:
    """Where a finished row is kept: ``KEY-SCHEME@LR.json`` for an int8 row (a learning-rate grid
    keeps one file per rate), ``KEY-float@LR.json`` for a float32 row. A row kept by an older
    run without the rate in its name is moved to the new name when its rate matches."""
    if is_float:
        return partial / f"{key}-{row_name(scheme)}.json"
    path = partial / f"{key}-{row_name(scheme)}@{lr:g}.json"
    legacy = partial / f"{key}-{row_name(scheme)}.json"
    if not path.exists() and legacy.exists() and json.loads(legacy.read_text()).get("lr") == lr:
        legacy.rename(path)
    return path


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """The finished rows of ``--partial`` that match the arguments (protocol, lr, schedule),
    without training: the table of a run still in progress; ``missing`` lists the rest."""
    results, missing = [], []
    profiled: dict[tuple[str, str], dict[str, Any]] = {}  # (model, scheme) -> its instruction columns
    for key in [k for k in args.models.split(",") if k in MODELS and model_path(k) is not None]:
        rows = []
        for scheme, lr, is_float in row_jobs(args):
            keep = row_file(args.partial, key, scheme, lr, is_float)
            row = json.loads(keep.read_text()) if keep.exists() else None
            ok = row is not None and row.get("protocol") == protocol(args, key) and row.get("lr") == lr
            if ok and row is not None and (is_float or row.get("schedule", "constant") == args.schedule):
                if not is_float and enrich(row, key, scheme, args, profiled):
                    keep.write_text(json.dumps(row, indent=2) + "\n")
                rows.append(row)
            else:
                missing.append(f"{key}: {scheme} (lr {lr:g})")
        results.append({"model": MODELS[key], "rows": rows})
    keys = [k for k in args.models.split(",") if k in MODELS]
    return {"benchmark": "train_fmnist", "protocol": protocol(args, keys[0] if keys else "shipped"), "results": results,
            "missing": missing}  # fmt: skip


def enrich(
    row: dict[str, Any],
    key: str,
    scheme: str,
    args: argparse.Namespace,
    profiled: dict[tuple[str, str], dict[str, Any]],
) -> bool:
    """Adds the columns a finished int8 row lacks (rows from before they existed): the
    conv-weight fractions of a scheme without run-time selection, and with
    ``--instructions`` the Cortex-M7 instruction counts (profiled once per model and scheme:
    the learning rate does not change the program; a row planned over 256 KB with
    :data:`EMULATOR_SRAM`, marked so). True when the row changed."""
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    path = model_path(key)
    assert path is not None
    changed = False
    if "conv_fraction_per_step" not in row:
        c = compile_graph(
            prepare_graph(path, 10, "zero", 0), scheme, CompileOptions(scheme, sram_bytes=1 << 30, sample_bytes=784)
        )
        if not any(p.dynamic is not None for p in c.scheme.layers):
            row.update(static_fractions(c))
            changed = True
    if args.instructions and "instructions_per_step_m7" not in row:
        if (key, scheme) not in profiled:
            print(f"[{key}] {scheme}: profiling on qemu-m7 ...", file=sys.stderr, flush=True)
            over = row.get("peak_sram_bytes", 0) > 256 * KB  # a reference row (e.g. every ViT block)
            profiled[key, scheme] = instructions_columns(path, scheme, EMULATOR_SRAM if over else 256 * KB)
        row.update(profiled[key, scheme])
        changed = True
    return changed


def protocol(args: argparse.Namespace, key: str = "shipped") -> dict[str, Any]:
    size = 32 if key == "vit" else 128
    return {
        "train_samples": args.train_samples,
        "test_samples": args.test_samples,
        "epochs": args.epochs,
        "input": f"28x28 -> bilinear {size}x{size}, grey -> 3 channels, [-1, 1]",
        "head": "zero-initialised, 10 classes",
        "int8": "batch 1, integer-only, simulator",
        "seed": args.seed,
    }


def refresh_memory(results: list[dict[str, Any]]) -> None:
    """Recompiles every int8 row (a fraction of a second each) and updates its memory
    and MAC columns, keeping the measured accuracy and time: the trained bytes do not
    depend on the memory plan."""
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    for block in results:
        key = next(k for k, v in MODELS.items() if v == block["model"])
        path = model_path(key)
        if path is None:
            continue
        for r in block["rows"]:
            if r["kind"] == "float32":
                continue
            graph = prepare_graph(path, 10, "zero", 0)
            c = compile_graph(graph, r["scheme"], CompileOptions(r["scheme"], sram_bytes=1 << 30, sample_bytes=28 * 28))
            r.update(memory_columns(c))


def main(argv: list[str] | None = None, description: str | None = None) -> int:
    ap = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    ap.add_argument("--train-samples", type=int, default=6000)
    ap.add_argument("--test-samples", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument(
        "--schemes", default="last-layer,bias-only,tte", help="presets and/or scheme files (e.g. from tinytrain search)"
    )
    ap.add_argument("--lr", type=float, default=0.01, help="int8 learning rate")
    ap.add_argument(
        "--lr-for",
        action="append",
        default=[],
        metavar="SCHEME=LR",
        help="the int8 learning rate of one scheme (repeatable), e.g. bias-only=0.003",
    )
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant", help="int8 lr schedule")
    ap.add_argument(
        "--float-lr",
        default="0.001,0.003,0.01",
        help="learning rates of the float32 rows (comma-separated, one row each)",
    )
    ap.add_argument("--no-float", action="store_true")
    ap.add_argument("--models", default="shipped,imagenet", help="shipped and/or imagenet (needs ../shared)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=1, help="models trained in parallel processes")
    ap.add_argument("--resume", action="store_true", help="reuse finished rows of an interrupted run")
    ap.add_argument(
        "--refresh-memory", action="store_true", help="only recompile the rows of --out and update their memory columns"
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="only gather the finished rows of --partial into --out (a run still in progress)",
    )
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="with --collect: add Cortex-M7 instructions per step (QEMU, dsp kernels) to rows that lack them",
    )
    ap.add_argument("--plot", type=Path, default=RESULTS / "train_fmnist_acc_sram.png", help="accuracy vs peak SRAM")
    ap.add_argument("--out", type=Path, default=RESULTS / "train_fmnist.json")
    ap.add_argument("--partial", type=Path, default=RESULTS / "train_fmnist.partial")
    args = ap.parse_args(argv)

    if args.refresh_memory:
        payload = json.loads(args.out.read_text())
        refresh_memory(payload["results"])
    elif args.collect:
        payload = collect(args)
    else:
        keys = [k for k in args.models.split(",") if k in MODELS and model_path(k) is not None]
        with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            blocks = list(pool.map(run_model, keys, [args] * len(keys)))
        results = [{"model": MODELS[k], "rows": rows} for k, rows in zip(keys, blocks, strict=True)]
        payload = {"benchmark": "train_fmnist", "protocol": protocol(args, keys[0] if keys else "shipped"),
                   "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    note = (
        f"\n{BEFORE_ONE_SIDED_LOSS} measured before the loss gradient became one-sided at saturated logits "
        "(commit 9a13caf); the other int8 rows after it.\n"
    )
    args.out.with_suffix(".md").write_text(table(payload["results"]) + "\n" + note)
    plot(payload["results"], args.plot)
    print(table(payload["results"]))
    if payload.get("missing"):
        print("not finished: " + ", ".join(payload["missing"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
