"""The ``tinytrain`` command line.

Every error caused by bad input is one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytrain import __version__
from tinytrain.errors import TinytrainError, UsageError


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.report import print_inspect
    from tinytrain.stats import graph_stats

    graph = load_model(args.model)
    stats = graph_stats(graph)
    if args.json:
        payload = {
            "model": str(args.model),
            "name": graph.name,
            "inputs": [_tensor_json(graph, n) for n in graph.inputs],
            "outputs": [_tensor_json(graph, n) for n in graph.outputs],
            **{k: v for k, v in dataclasses.asdict(stats).items() if k not in ("ops", "op_histogram")},
            "op_histogram": dict(stats.op_histogram),
            "ops": [dataclasses.asdict(o) for o in stats.ops],
            "tensors": [_tensor_json(graph, t.name) for t in graph.tensors],
        }
        print(json.dumps(payload, indent=2))
    else:
        print_inspect(graph, stats, dump_ir=args.ir)
    return 0


def _tensor_json(graph: object, name: str) -> dict[str, object]:
    from tinytrain.ir.graph import Graph

    assert isinstance(graph, Graph)
    t = graph.tensor(name)
    q = None
    if t.quant is not None:
        q = {"scale": list(t.quant.scale), "zero_point": list(t.quant.zero_point), "axis": t.quant.axis}
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype.value, "kind": t.kind.value, "quantization": q}


def _cmd_infer(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.report import progress_bar
    from tinytrain.sim.forward import Simulator

    graph = load_model(args.model)
    try:
        x = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read input array {args.input}: {exc}") from None
    sim = Simulator(graph)
    n = int(x.shape[0]) if x.ndim else 0
    with progress_bar("infer", n, quiet=args.quiet) as advance:
        y = sim.run([x], progress=advance)[0]
    out = Path(args.output)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, y)
    if not args.quiet:
        print(f"wrote {out}: {y.dtype}{list(y.shape)}", file=sys.stderr)
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from tinytrain.frontends.keras_convert import convert_keras, load_calibration

    calib = load_calibration(args.calibration)
    data = convert_keras(args.keras_model, calib, int8_io=not args.float_io)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    # Read it back: the converted model must be one tinytrain can run.
    from tinytrain.frontends.tflite import load_tflite
    from tinytrain.sim.forward import Simulator

    Simulator(load_tflite(data))
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.frontends.tflite_writer import write_tflite

    data = write_tflite(load_model(args.model))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


def _cmd_compile(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tinytrain.train.compile import CompileOptions, compile_model, parse_size, plan_json, write_artifact
    from tinytrain.train.reporting import plot_memory, print_compiled

    sample = None
    if args.sample_shape:
        try:
            dims = [int(v) for v in args.sample_shape.lower().split("x")]
        except ValueError:
            raise UsageError(f"--sample-shape must look like 28x28 or 32x32x3, got {args.sample_shape!r}") from None
        sample = int(np.prod(dims))
    options = CompileOptions(
        scheme=args.scheme,
        classes=args.classes,
        head_init=args.head_init,
        seed=args.seed,
        sram_bytes=parse_size(args.sram),
        flash_bytes=parse_size(args.flash),
        sample_bytes=sample,
        batch=args.batch,
    )
    compiled = compile_model(args.model, options)
    out = Path(args.output)
    write_artifact(compiled, out)
    plot_memory(compiled, out / "memory.png")
    if args.json:
        info = plan_json(compiled)
        print(json.dumps({k: v for k, v in info.items() if k not in ("plan", "steps")}, indent=2))
    else:
        console = Console()
        print_compiled(compiled, console)
        console.print(f"wrote {out}/ (model.tflite, scheme.json, plan.json, program.txt, memory.png)")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from tinytrain.report import progress_bar
    from tinytrain.train.compile import load_artifact
    from tinytrain.train.data import Dataset, load_dataset
    from tinytrain.train.kernels.schedule import Schedule
    from tinytrain.train.loop import TrainConfig, Trainer
    from tinytrain.train.reporting import plot_curves, print_report

    compiled = load_artifact(Path(args.out))
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    if args.train_samples < 1 or args.test_samples < 0:
        raise UsageError("--train-samples must be >= 1 and --test-samples >= 0")
    train = Dataset(train.name, train.images[: args.train_samples], train.labels[: args.train_samples])
    test_ds = Dataset(test.name, test.images[: args.test_samples], test.labels[: args.test_samples])
    config = TrainConfig(epochs=args.epochs, lr=args.lr, schedule=Schedule(args.schedule), seed=args.seed)
    trainer = Trainer(compiled.program, train.sample_shape, seed=args.seed, batch=compiled.options.batch)
    total = args.epochs * len(train)
    quiet = args.json or args.quiet
    with progress_bar("train", total, quiet=quiet) as advance:
        report = trainer.fit(train, test_ds if len(test_ds) else None, config, lambda *_: advance(1))
    if args.save_weights:
        np.savez(args.save_weights, **trainer.executor.trained_tensors())  # type: ignore[arg-type]
    if args.plot:
        plot_curves(report, Path(args.plot), f"{compiled.scheme.name}: {len(train)} samples, lr {args.lr}")
    if args.json:
        print(
            json.dumps(
                {
                    "test_accuracy": report.test_accuracy,
                    "train_loss": [e.train_loss for e in report.epochs],
                    "train_accuracy": [e.train_accuracy for e in report.epochs],
                    "test_accuracy_per_epoch": [e.test_accuracy for e in report.epochs],
                    "steps": report.steps,
                    "scheme": compiled.scheme.name,
                }
            )
        )
    elif not args.quiet:
        print_report(report, Console())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinytrain", description="On-device training for microcontrollers.")
    p.add_argument("--version", action="version", version=f"tinytrain {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("inspect", help="ops, tensors, parameters, MACs and naive peak memory of a model")
    s.add_argument("model", help=".tflite model or MCUNet .pkl checkpoint")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--ir", action="store_true", help="also print the IR text dump")
    s.set_defaults(func=_cmd_inspect)

    s = sub.add_parser("infer", help="run the model in tinytrain's bit-exact simulator")
    s.add_argument("model")
    s.add_argument("--input", required=True, help=".npy of shape (N, *input_shape[1:]) in the model's input dtype")
    s.add_argument("--output", required=True, help=".npy written with the model's first output per sample")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_infer)

    s = sub.add_parser("convert", help="Keras model -> int8 .tflite (TFLite converter, representative data)")
    s.add_argument("keras_model", help=".keras or .h5 file")
    s.add_argument("--calibration", required=True, help=".npy/.npz of calibration inputs (float32, N x input shape)")
    s.add_argument("-o", "--output", required=True)
    s.add_argument(
        "--float-io", action="store_true", help="keep float32 input/output (QUANTIZE/DEQUANTIZE at the edges)"
    )
    s.set_defaults(func=_cmd_convert)

    s = sub.add_parser("compile", help="build a static training program and its memory plan")
    s.add_argument("model", help=".tflite model or MCUNet .pkl checkpoint")
    s.add_argument(
        "--scheme", required=True, help="preset (last-layer, bias-only, last-k:K, tte, full) or a YAML/JSON file"
    )
    s.add_argument("--classes", type=int, help="replace the classifier by an N-class head")
    s.add_argument("--head-init", choices=("zero", "seeded"), default="zero")
    s.add_argument("--seed", type=int, default=0, help="seed of a seeded head")
    s.add_argument("--sram", default="256KB", help="SRAM budget (default 256KB)")
    s.add_argument("--flash", default="1MB", help="flash budget (default 1MB)")
    s.add_argument("--sample-shape", help="native sample shape (e.g. 28x28) when the device preprocesses on the fly")
    s.add_argument(
        "--batch", type=int, default=1, help="accumulate the gradients of B samples per update (default 1)"
    )
    s.add_argument("-o", "--output", required=True, help="output directory")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_compile)

    s = sub.add_parser("simulate", help="train a compiled program in the bit-exact simulator")
    s.add_argument("out", help="a `tinytrain compile` output directory")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an .npz with x (uint8 images) and y")
    s.add_argument("--train-samples", type=int, default=1000)
    s.add_argument("--test-samples", type=int, default=500)
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--save-weights", help=".npz of every trained tensor, by name")
    s.add_argument("--plot", help="PNG of the training curves")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("export", help="write a model (e.g. an MCUNet checkpoint) as .tflite")
    s.add_argument("model")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=_cmd_export)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except TinytrainError as exc:
        if args.debug:
            raise
        print(f"tinytrain: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinytrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
