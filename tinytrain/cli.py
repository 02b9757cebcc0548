"""The ``tinytrain`` command line.

Every error caused by bad input is one line on stderr and exit status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytrain import __version__
from tinytrain.cli_device import add_parsers as add_device_parsers
from tinytrain.cli_device import save_weights
from tinytrain.cli_search import add_parser as add_search_parser
from tinytrain.errors import TinytrainError, UsageError

if TYPE_CHECKING:
    from codegen.backends import RunResult, RunSpec
    from tinytrain.train.compile import Compiled
    from tinytrain.train.data import Dataset
    from tinytrain.train.dgsu import RowCoverage
    from tinytrain.train.loop import TrainConfig, TrainReport

BUILD_TARGETS = ("host", "qemu-m4", "qemu-m7", "stm32f746g-disco", "nrf52840")
SIMULATE_BACKENDS = ("sim", "host", "qemu-m4", "qemu-m7")
"""``simulate --backend`` values; ``codegen.backends.run_backend`` refuses those it does not run yet."""


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
        momentum=args.momentum,
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
    from tinytrain.train.dgsu import RowCoverage
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
    total = args.epochs * len(train)
    quiet = args.json or args.quiet
    tensors: dict[str, np.ndarray]
    coverage: RowCoverage | None = None
    if args.backend == "sim":
        trainer = Trainer(
            compiled.program, train.sample_shape, seed=args.seed, batch=compiled.options.batch,
            momentum_q15=compiled.options.momentum_q15,
        )
        if compiled.scheme.dynamic:  # DGSU: count the rows the run trains (plan.json has the static figures)
            coverage = RowCoverage(compiled.scheme)
            trainer.executor.observer = coverage
        with progress_bar("train", total, quiet=quiet) as advance:
            report = trainer.fit(train, test_ds if len(test_ds) else None, config, lambda *_: advance(1))
        tensors = trainer.executor.trained_tensors()
    else:
        with progress_bar(f"train ({args.backend})", total, quiet=quiet) as advance, contextlib.ExitStack() as stack:
            report, tensors = _fit_backend(args.backend, compiled, train, test_ds, config, advance, stack)
    if args.save_weights:
        save_weights(Path(args.save_weights), tensors)
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
                    **_dgsu_json(coverage, report.steps),
                }
            )
        )
    elif not args.quiet:
        print_report(report, Console())
    return 0


def _dgsu_json(coverage: RowCoverage | None, steps: int) -> dict[str, Any]:
    """The DGSU figures of a simulated run: conv weights updated per step (mean) and over the run."""
    if coverage is None:
        return {}
    return {
        "dgsu": {
            "fraction_per_step": coverage.fraction_per_step(steps),
            "fraction_over_run": coverage.fraction_over_run(),
        }
    }


def _sample_shape(compiled: Compiled, text: str | None) -> tuple[int, ...]:
    """The native sample shape of a program compiled with ``--sample-shape``: ``text``
    (e.g. ``28x28``) or, when absent, the square gray or RGB image of its byte count."""
    n = compiled.options.sample_bytes
    if n is None:
        raise UsageError("the program was compiled without --sample-shape: the C code generator needs it")
    if text:
        try:
            dims = tuple(int(v) for v in text.lower().split("x"))
        except ValueError:
            raise UsageError(f"--sample-shape must look like 28x28 or 32x32x3, got {text!r}") from None
        return dims
    for c in (1, 3):
        side = round((n // c) ** 0.5)
        if side * side * c == n:
            return (side, side) if c == 1 else (side, side, c)
    raise UsageError(f"cannot infer the shape of {n}-byte samples: pass --sample-shape")


def _build_sources(gen: object, kernels: str) -> list[Path]:
    """The generated project's sources for runtime backend ``kernels`` ("ref" or "dsp"); the
    dsp replacements are copied into the project's ``runtime/dsp/``."""
    import shutil

    from codegen.emit import MODEL_SOURCES, Generated

    assert isinstance(gen, Generated)
    model = [gen.out_dir / s for s in MODEL_SOURCES]
    if kernels == "ref":
        return [*gen.sources, gen.driver]
    try:
        from codegen.runtime_sources import runtime_sources
    except ImportError:
        raise UsageError(
            "--backend-kernels dsp: this tinytrain has no optimized runtime (codegen.runtime_sources)"
        ) from None
    dsp_dir = gen.out_dir / "runtime" / "dsp"
    dsp_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for src in runtime_sources("dsp"):
        if src.parent.name == "dsp":
            shutil.copyfile(src, dsp_dir / src.name)
            out.append(dsp_dir / src.name)
        else:
            out.append(gen.out_dir / "runtime" / "src" / src.name)
    return [*model, *out, gen.driver]


def _cmd_build(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from codegen.emit import RunConfig, generate
    from codegen.targets import RegionOverflowError, build_firmware, get_target
    from tinytrain.train.compile import load_artifact

    out = Path(args.out)
    compiled = load_artifact(out)
    target = get_target(args.target)
    shape = _sample_shape(compiled, args.sample_shape)
    project = out / "firmware" / target.name
    gen = generate(compiled, project, shape, RunConfig())
    sources = _build_sources(gen, args.backend_kernels)
    arm = target.is_arm
    try:
        info = build_firmware(
            target,
            sources,
            gen.include_dirs,
            project / "build",
            sram_bytes=compiled.options.sram_bytes if arm else None,
            flash_bytes=compiled.options.flash_bytes if arm else None,
            name="tt_" + target.name.replace("-", "_"),
        )
    except RegionOverflowError as exc:
        lines = [ln.strip() for ln in exc.log.splitlines() if "overflowed by" in ln or "will not fit" in ln]
        first = str(exc).splitlines()[0]
        raise UsageError("\n".join([first, *dict.fromkeys(lines)])) from None
    payload = {
        "target": target.name,
        "backend_kernels": args.backend_kernels,
        "project": str(project),
        "elf": str(info.elf),
        "bin": None if info.bin is None else str(info.bin),
        "text": info.text,
        "data": info.data,
        "bss": info.bss,
        "flash_used": info.flash_used,
        "flash_budget": info.flash_budget,
        "sram_used": info.ram_used,
        "sram_budget": info.sram_budget,
        "stack_bytes": None,
        "arena_bytes": compiled.plan.arena_size,
        "kernel_calls": len(gen.metadata["calls"]),
    }
    if arm:
        from codegen.targets import DEFAULT_STACK_BYTES, HANDLER_STACK_BYTES

        payload["stack_bytes"] = DEFAULT_STACK_BYTES + HANDLER_STACK_BYTES
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0

    def frac(used: int, budget: int | None) -> str:
        if budget is None:
            return f"{used:,} B"
        return f"{used:,} / {budget:,} B ({100.0 * used / budget:.1f} %)"

    table = Table(title=f"{compiled.program.graph.name} ({compiled.scheme.name}) for {target.name}")
    table.add_column("")
    table.add_column("bytes", justify="right")
    table.add_row("text", f"{info.text:,}")
    table.add_row("data", f"{info.data:,}")
    table.add_row("bss" + (" (incl. stacks)" if arm else ""), f"{info.bss:,}")
    table.add_row("flash used (text+data) / budget", frac(info.flash_used, info.flash_budget))
    table.add_row("SRAM used (data+bss+stack) / budget", frac(info.ram_used, info.sram_budget))
    table.add_row("plan arena", f"{compiled.plan.arena_size:,}")
    console = Console()
    console.print(table)
    console.print(f"built {info.elf}" + (f" and {info.bin}" if info.bin else ""))
    return 0


def _cmd_debug_diff(args: argparse.Namespace) -> int:
    import tempfile

    from codegen.bisect import bisect
    from tinytrain.train.compile import load_artifact
    from tinytrain.train.data import load_dataset
    from tinytrain.train.kernels.schedule import Schedule

    compiled = load_artifact(Path(args.out))
    if args.steps < 1:
        raise UsageError("--steps must be >= 1")
    train = load_dataset(args.data, "train")
    if len(train) < args.steps:
        raise UsageError(f"--steps {args.steps}: the data set has {len(train)} training samples")
    x, y = train.images[: args.steps], train.labels[: args.steps].astype(np.int64)
    with tempfile.TemporaryDirectory(prefix="tinytrain-diff-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        report = bisect(compiled, x, y, work, seed=args.seed, lr=args.lr, schedule=Schedule(args.schedule))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.text())
    return 1 if report.divergence is not None else 0


def _fit_backend(
    backend: str,
    compiled: Compiled,
    train: Dataset,
    test: Dataset,
    config: TrainConfig,
    advance: Callable[[int], None],
    stack: contextlib.ExitStack,
) -> tuple[TrainReport, dict[str, np.ndarray]]:
    """``Trainer.fit`` on a code-generation backend (``codegen.backends.run_backend``): the
    same sample order (``epoch_order``), seed, learning rate and schedule; the loss and
    accuracies come from the backend's own step results and inference logits. With a test
    set, epoch ``e`` is one run of the steps of epochs 0..e (the device restarts from
    ``tt_init``), so each epoch's test accuracy is measured on the weights the device holds
    after that epoch; without one, a single run holds every step."""
    import math

    from codegen.backends import RunSpec
    from tinytrain.train.data import epoch_order
    from tinytrain.train.loop import EpochReport, TrainReport

    classes = compiled.program.loss.classes
    for ds in (train, test):
        if len(ds) and int(ds.labels.max()) >= classes:
            raise UsageError(f"data set {ds.name!r} has label {int(ds.labels.max())}; the model has {classes} classes")
    if config.epochs < 0:
        raise UsageError("epochs must be >= 0")
    n, epochs = len(train), config.epochs
    orders = [epoch_order(n, config.seed, e) for e in range(epochs)]
    total = epochs * n
    accs: list[float | None] = [None] * epochs
    result: RunResult | None = None
    run = _backend_runner(backend, compiled, train.sample_shape, stack)
    for epoch in range(epochs):
        if epoch < epochs - 1 and not len(test):
            continue
        order = np.concatenate(orders[: epoch + 1])
        spec = RunSpec(
            train.images[order], train.labels[order].astype(np.int64), test.images,
            seed=config.seed, lr=config.lr, schedule=config.schedule, total_steps=total,
        )  # fmt: skip
        result = run(spec)
        if len(test):
            accs[epoch] = float(np.mean(np.argmax(result.test_logits, axis=1) == test.labels))
        advance(n if len(test) else total)
    if result is None:  # zero epochs
        return TrainReport((), 0, ()), {}
    reports: list[EpochReport] = []
    curve: list[float] = []
    chunk: list[float] = []
    for epoch in range(epochs):
        losses, correct = 0.0, 0
        for k, idx in enumerate(orders[epoch]):
            p_label, predicted = result.steps[epoch * n + k]
            loss = -math.log(max(p_label, 1) / 65536.0)  # as Trainer.fit
            losses += loss
            chunk.append(loss)
            correct += int(predicted == int(train.labels[idx]))
            if len(chunk) == 100:
                curve.append(float(np.mean(chunk)))
                chunk = []
        reports.append(EpochReport(epoch, losses / max(n, 1), correct / max(n, 1), accs[epoch]))
    if chunk:
        curve.append(float(np.mean(chunk)))
    return TrainReport(tuple(reports), total, tuple(curve)), result.tensors


def _backend_runner(
    backend: str, compiled: Compiled, sample_shape: tuple[int, ...], stack: contextlib.ExitStack
) -> Callable[[RunSpec], RunResult]:
    """``spec -> RunResult`` on ``backend``. The host program is generated and built once
    (in a temporary directory closed with ``stack``); other backends go through
    ``codegen.backends.run_backend`` (which refuses those it does not support)."""
    from codegen.backends import run_backend

    if backend != "host":
        return lambda spec: run_backend(backend, compiled, spec)
    import tempfile

    from codegen.backends import build_host, run_generated
    from codegen.targets import ElfInfo, run_firmware

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tinytrain-host-")))
    gen, exe = build_host(compiled, work, sample_shape)
    info = ElfInfo("host", exe, None, exe.with_suffix(".map"), None, 0, 0, 0, None, None)

    def transport(data: bytes) -> bytes:
        r = run_firmware(info, 3600.0, data)
        if r.exit_status != 0:
            raise UsageError(f"the host program exited with status {r.exit_status}")
        return r.uart_output

    return lambda spec: run_generated(compiled, gen, spec, transport)


def _cmd_profile(args: argparse.Namespace) -> int:
    from codegen.backends import RunSpec
    from codegen.profile import profile
    from tinytrain.train.compile import load_artifact
    from tinytrain.train.data import load_dataset

    compiled = load_artifact(Path(args.out))
    if args.steps < 1 or args.test_samples < 1:
        raise UsageError("--steps and --test-samples must be >= 1")
    train = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    sample_bytes = compiled.options.sample_bytes
    if sample_bytes is None:
        raise UsageError(f"{args.out} was compiled without --sample-shape: the device program needs it")
    if int(np.prod(train.sample_shape)) != sample_bytes:
        raise UsageError(
            f"{args.data} samples have shape {list(train.sample_shape)}; the program takes {sample_bytes} bytes"
        )
    spec = RunSpec(
        train.images[: args.steps], train.labels[: args.steps].astype(np.int64), test.images[: args.test_samples],
        seed=args.seed, lr=args.lr,
    )  # fmt: skip
    prof = profile(compiled, args.target, spec, kernels=args.kernels, timeout=args.timeout)
    payload = prof.to_json()
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{compiled.scheme.name} on {args.target} ({args.kernels} kernels): instructions per layer")
    for col in ("layer", "calls", "forward", "backward", "fwd MACs", "MACs/instr"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for la in prof.layers:
        mpi = f"{la.macs_per_instruction_forward:.3f}" if la.macs_per_instruction_forward is not None else "-"
        table.add_row(
            la.layer, str(la.calls), f"{la.forward_instructions:,}", f"{la.backward_instructions:,}",
            f"{la.macs_forward:,}", mpi,
        )  # fmt: skip
    console.print(table)
    console.print(
        f"training step: {payload['train_step_instructions']:,} instructions "
        f"({payload['macs_per_instruction_train']:.3f} MACs/instr); inference: "
        f"{payload['inference_instructions']:,} ({payload['macs_per_instruction_inference']:.3f} MACs/instr); "
        f"resolution {prof.resolution}; ELF text {prof.text:,} data {prof.data:,} bss {prof.bss:,} bytes"
    )
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
        "--scheme",
        required=True,
        help="preset (last-layer, bias-only, last-k:K, tte, full, mobiletl:blocks=K, dgsu:ratio=R, dgsu-layers) "
        "or a YAML/JSON file",
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
    s.add_argument("--momentum", type=float, default=0.0, help="SGD momentum, e.g. 0.9 (default 0: none)")
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
    s.add_argument(
        "--backend",
        choices=SIMULATE_BACKENDS,
        default="sim",
        help="sim: the numpy simulator (default); host: the generated C compiled for this machine",
    )
    s.set_defaults(func=_cmd_simulate)

    s = sub.add_parser("build", help="generate the C training program for a target and build it")
    s.add_argument("out", help="a `tinytrain compile` output directory (firmware goes to OUT/firmware/<target>/)")
    s.add_argument("--target", required=True, choices=BUILD_TARGETS)
    s.add_argument("--backend-kernels", choices=("ref", "dsp"), default="ref", help="runtime kernels (default ref)")
    s.add_argument("--sample-shape", help="native sample shape (default: the square image of the compiled size)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_build)

    s = sub.add_parser(
        "debug-diff", help="first kernel call where the generated C (host, traced) and the simulator diverge"
    )
    s.add_argument("out", help="a `tinytrain compile` output directory")
    s.add_argument("--steps", type=int, default=3, help="training steps to compare (default 3)")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an .npz (first N training samples)")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--work-dir", help="keep the generated and built trace program here")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_debug_diff)

    s = sub.add_parser("profile", help="count instructions per training step, inference and kernel call in QEMU")
    s.add_argument("out", help="a `tinytrain compile` output directory (compiled with --sample-shape)")
    s.add_argument("--target", required=True, choices=("qemu-m4", "qemu-m7"))
    s.add_argument("--kernels", choices=("ref", "dsp"), default="ref", help="runtime kernels (default ref)")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an .npz with x (uint8 images) and y")
    s.add_argument("--steps", type=int, default=2, help="training steps measured (default 2)")
    s.add_argument("--test-samples", type=int, default=1, help="inferences measured (default 1)")
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--timeout", type=float, default=900.0, help="seconds before QEMU is killed (default 900)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_profile)

    add_device_parsers(sub)
    add_search_parser(sub)
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
