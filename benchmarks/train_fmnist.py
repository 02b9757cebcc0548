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

Writes ``benchmarks/results/train_fmnist.json`` and a markdown table.
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
    t0 = time.perf_counter()
    trainer = Trainer(c.program, train.sample_shape, seed=args.seed)
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
        "wall_seconds": round(wall, 1),
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


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | scheme | test acc. | after each epoch | SRAM (arena) | fits 256 KB | flash | MACs fwd / bwd "
        "| wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for block in results:
        for r in block["rows"]:
            acc = f"{100 * r['test_accuracy']:.2f}%" if r.get("test_accuracy") is not None else "-"
            if r["kind"] == "float32":
                name = f"{r['scheme']} (lr {r['lr']})"
                lines.append(f"| {block['model']} | {name} | {acc} | – | – | – | – | – | {r['wall_seconds']} s |")
                continue
            lines.append(
                f"| {block['model']} | {r['scheme']} (lr {r['lr']}, {r.get('schedule', 'constant')}) | {acc} "
                f"| {' / '.join(f'{100 * a:.1f}' for a in r.get('test_accuracy_per_epoch', []))} "
                f"| {r['arena_bytes'] / KB:.1f} KB "
                f"| {'yes' if r['fits_256kb'] else 'no'} | {r['flash_bytes'] / KB:.0f} KB "
                f"| {r['macs_forward'] / 1e6:.1f} M / {r['macs_backward'] / 1e6:.1f} M | {r['wall_seconds']} s |"
            )
    return "\n".join(lines)


MODELS = {
    "shipped": "MobileNetV2-w0.35 @128, Fashion-MNIST 0-4 pretrained (shipped)",
    "imagenet": "MobileNetV2-w0.35 @128, ImageNet (tiny-training .pkl)",
}


def model_path(key: str) -> Path | None:
    from tinytrain.models.ship import shipped

    if key == "shipped":
        return shipped("mbv2-w0.35-128-fmnist04-int8.tflite")
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
    float_lrs = [] if args.no_float else [float(v) for v in args.float_lr.split(",") if v]
    names = [s for s in args.schemes.split(",") if s] + [f"float@{lr:g}" for lr in float_lrs]
    rows = []
    for scheme in names:
        is_float = scheme.startswith("float@")
        lr = float(scheme.partition("@")[2]) if is_float else scheme_lr(args, scheme)
        keep = args.partial / f"{key}-{row_name(scheme)}.json"
        if args.resume and keep.exists():
            row = json.loads(keep.read_text())
            same = row.get("lr") == lr and (is_float or row.get("schedule", "constant") == args.schedule)
            if row.get("protocol") == protocol(args) and same:
                rows.append(row)
                continue
        print(f"[{key}] {scheme} ...", file=sys.stderr, flush=True)
        row = float_row(path, lr, args, data) if is_float else int8_row(path, scheme, lr, args, data)
        row["protocol"] = protocol(args)
        keep.parent.mkdir(parents=True, exist_ok=True)
        keep.write_text(json.dumps(row, indent=2) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def row_name(scheme: str) -> str:
    """A scheme's name in file names: a preset with ':' → '_', a scheme file path → its stem
    (``--schemes tte,build/best_scheme.yaml`` trains a searched scheme too)."""
    if Path(scheme).suffix in (".yaml", ".yml", ".json"):
        return "file_" + Path(scheme).stem
    return scheme.replace(":", "_")


def scheme_lr(args: argparse.Namespace, scheme: str) -> float:
    """The int8 learning rate of ``scheme``: its ``--lr-for`` entry, else ``--lr``."""
    for item in args.lr_for:
        name, _, value = item.partition("=")
        if name == scheme:
            return float(value)
    return float(args.lr)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """The finished rows of ``--partial`` that match the arguments (protocol, lr, schedule),
    without training: the table of a run still in progress; ``missing`` lists the rest."""
    results, missing = [], []
    for key in [k for k in args.models.split(",") if k in MODELS and model_path(k) is not None]:
        float_lrs = [] if args.no_float else [float(v) for v in args.float_lr.split(",") if v]
        rows = []
        for scheme in [s for s in args.schemes.split(",") if s] + [f"float@{lr:g}" for lr in float_lrs]:
            is_float = scheme.startswith("float@")
            lr = float(scheme.partition("@")[2]) if is_float else scheme_lr(args, scheme)
            keep = args.partial / f"{key}-{row_name(scheme)}.json"
            row = json.loads(keep.read_text()) if keep.exists() else None
            ok = row is not None and row.get("protocol") == protocol(args) and row.get("lr") == lr
            if ok and row is not None and (is_float or row.get("schedule", "constant") == args.schedule):
                rows.append(row)
            else:
                missing.append(f"{key}: {scheme}")
        results.append({"model": MODELS[key], "rows": rows})
    return {"benchmark": "train_fmnist", "protocol": protocol(args), "results": results, "missing": missing}


def protocol(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "train_samples": args.train_samples,
        "test_samples": args.test_samples,
        "epochs": args.epochs,
        "input": "28x28 -> bilinear 128x128, grey -> 3 channels, [-1, 1]",
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    ap.add_argument("--out", type=Path, default=RESULTS / "train_fmnist.json")
    ap.add_argument("--partial", type=Path, default=RESULTS / "train_fmnist.partial")
    args = ap.parse_args()

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
        payload = {"benchmark": "train_fmnist", "protocol": protocol(args), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(payload["results"]) + "\n")
    print(table(payload["results"]))
    if payload.get("missing"):
        print("not finished: " + ", ".join(payload["missing"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
