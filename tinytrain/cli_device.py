"""The device commands of the ``tinytrain`` command line: ``train`` and ``pull`` talk to a
training firmware over a serial port (``host_tools``: frames, retransmission, the
application's commands); ``export --weights`` writes a trained ``.tflite``.

A serial port is any pyserial URL: ``/dev/ttyACM0``, ``socket://127.0.0.1:N`` (``tinytrain
emulate``), ``loop://``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinytrain.errors import UsageError

if TYPE_CHECKING:
    from host_tools.device import Device
    from host_tools.firmware import AppProgram
    from tinytrain.ir.graph import Graph
    from tinytrain.train.compile import Compiled


@contextmanager
def open_device(url: str, program: AppProgram | None = None, timeout: float = 1.0) -> Iterator[Device]:
    """A :class:`host_tools.device.Device` on the serial port ``url`` (closed on exit);
    identified at once, so a wrong port or firmware fails before anything is sent."""
    from host_tools.device import Device
    from host_tools.link import Link, open_port

    link = Link(open_port(url), timeout=timeout)
    try:
        dev = Device(link, program)
        dev.identify()
        yield dev
    finally:
        link.close()


def _program(out: str | None) -> tuple[Compiled | None, AppProgram | None]:
    if out is None:
        return None, None
    from host_tools.firmware import app_program, default_sample_shape
    from tinytrain.train.compile import load_artifact

    compiled = load_artifact(Path(out))
    return compiled, app_program(compiled, default_sample_shape(compiled))


def cmd_train(args: argparse.Namespace) -> int:
    """Streams samples to the device in the order ``simulate`` uses with the same seed (the
    device preprocesses them), then evaluates the test samples on the device."""
    from rich.console import Console

    from tinytrain.report import progress_bar, status_progress_bar
    from tinytrain.train.data import Dataset, epoch_order, load_dataset
    from tinytrain.train.kernels.schedule import Schedule

    if args.train_samples < 1 or args.test_samples < 0 or args.epochs < 1:
        raise UsageError("--train-samples and --epochs must be >= 1, --test-samples >= 0")
    train = load_dataset(args.data, "train")
    train = Dataset(train.name, train.images[: args.train_samples], train.labels[: args.train_samples])
    test = load_dataset(args.data, "test") if args.test_samples else None
    _, program = _program(args.program)
    quiet = args.json or args.quiet
    losses: list[float] = []
    correct: list[int] = []
    epoch_loss: list[float] = []
    with open_device(args.port, program) as dev:
        ident = dev.identity
        if int(np.prod(train.sample_shape)) != ident.input_bytes:
            raise UsageError(
                f"samples of shape {list(train.sample_shape)} ({int(np.prod(train.sample_shape))} bytes); "
                f"the device's program takes {ident.input_bytes}-byte samples"
            )
        total = args.epochs * len(train)
        if not args.resume:
            dev.reset(args.seed)
        dev.clear_stats()
        dev.set_lr(args.lr)
        dev.set_schedule(Schedule(args.schedule), total)
        with status_progress_bar(f"train on {ident.board}", total, quiet=quiet) as advance:
            for epoch in range(args.epochs):
                start = len(losses)
                for idx in epoch_order(len(train), args.seed, epoch):
                    r = dev.train(train.images[idx], int(train.labels[idx]))
                    losses.append(-math.log(max(r.p_label, 1) / 65536.0))
                    correct.append(int(r.correct))
                    window = slice(max(start, len(losses) - 100), len(losses))  # the last 100 steps
                    advance(1, f"loss {np.mean(losses[window]):.3f} acc {100 * np.mean(correct[window]):.0f}%")
                epoch_loss.append(float(np.mean(losses[start:])))
        acc = None
        if test is not None:
            n = args.test_samples
            hits = 0
            with progress_bar("evaluate", n, quiet=quiet) as advance:
                for k in range(n):
                    hits += int(np.argmax(dev.eval(test.images[k])) == int(test.labels[k]))
                    advance(1)
            acc = hits / n
        stats = dev.stats()
    summary = {
        "device": ident.describe(),
        "steps": len(losses),
        "train_loss": epoch_loss,
        "train_accuracy": float(np.mean(correct)),
        "test_accuracy": acc,
        "instructions_or_cycles_per_step": stats.counter_last_step,
        "counter_unit": stats.counter_unit,
    }
    if args.json:
        print(json.dumps(summary))
    elif not args.quiet:
        _print_summary(summary, Console())
    return 0


def _print_summary(summary: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(title="training on the device")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("device", str(summary["device"]))
    table.add_row("steps", str(summary["steps"]))
    table.add_row("train loss per epoch", ", ".join(f"{v:.3f}" for v in summary["train_loss"]))
    table.add_row("running train accuracy", f"{100 * summary['train_accuracy']:.1f} %")
    acc = summary["test_accuracy"]
    table.add_row("test accuracy (on the device)", "-" if acc is None else f"{100 * acc:.2f} %")
    table.add_row(f"last step ({summary['counter_unit']})", f"{summary['instructions_or_cycles_per_step']:,}")
    console.print(table)


def _registry() -> Path:
    """Where ``flash`` remembers the compile output of each program it wrote, by program
    identity (``$XDG_CACHE_HOME/tinytrain/programs``, default ``~/.cache/...``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinytrain" / "programs"


def remember_program(program: AppProgram, out: Path) -> None:
    d = _registry()
    d.mkdir(parents=True, exist_ok=True)
    record = {"out": str(out.resolve()), "model": program.model, "scheme": program.scheme}
    (d / f"{program.model_id:08x}.json").write_text(json.dumps(record) + "\n")


def recall_program(model_id: int) -> str | None:
    """The compile output flashed from this machine with identity ``model_id``, if any."""
    path = _registry() / f"{model_id:08x}.json"
    try:
        out = json.loads(path.read_text())["out"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(out) if Path(out).is_dir() else None


def cmd_pull(args: argparse.Namespace) -> int:
    """Reads every trained tensor back; the file has the names, shapes and dtypes of
    ``simulate --save-weights`` (the untrained channels of a partly trained weight come
    from the compiled program: ``--program OUT``, or the one ``flash`` wrote to the device
    from this machine, found by the device's program identity)."""
    _, program = _program(args.program)
    with open_device(args.port, program) as dev:
        if program is None:
            ident = dev.identity
            found = recall_program(ident.model_id)
            if found is None:
                raise UsageError(
                    f"the device runs {ident.describe()}, which was not flashed from this machine: "
                    "pass --program OUT (the compile output it was built from)"
                )
            _, program = _program(found)
            dev.program = program
            dev.identify()  # checks the program against the device
        tensors = dev.pull()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(out, tensors)
    total = sum(t.nbytes for t in tensors.values())
    print(f"wrote {out} ({len(tensors)} tensors, {total:,} bytes)", file=sys.stderr)
    return 0


def save_weights(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    """The ``--save-weights`` format: one array per trained tensor, by model tensor name."""
    np.savez(path, **{k: np.asarray(tensors[k]) for k in sorted(tensors)})  # type: ignore[arg-type]


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """A weights file of :func:`save_weights`; a clear error for a missing or corrupt file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: np.array(f[k]) for k in f.files}
    except FileNotFoundError:
        raise UsageError(f"weights file {path} not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UsageError(f"weights file {path} is not a readable .npz ({e})") from None


def export_trained(compiled: Compiled, weights: Mapping[str, np.ndarray]) -> bytes:
    """The ``.tflite`` of ``compiled``'s model (with its new head) holding ``weights``:
    every trained tensor, checked by name, shape and dtype before anything is written."""
    from tinytrain.frontends.tflite_writer import write_tflite
    from tinytrain.train.executor import Executor

    ex = Executor(compiled.program, 0)
    want = ex.trained_tensors()
    unknown = sorted(set(weights) - set(want))
    if unknown:
        raise UsageError(f"the weights file has tensors the program does not train: {', '.join(unknown[:5])}")
    missing = sorted(set(want) - set(weights))
    if missing:
        raise UsageError(f"the weights file lacks trained tensors: {', '.join(missing[:5])}")
    for name, ref in want.items():
        got = weights[name]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise UsageError(
                f"tensor {name!r} is {got.dtype}{list(got.shape)} in the weights file; "
                f"the program trains {ref.dtype}{list(ref.shape)}"
            )
    ex.load_tensors(weights)
    return write_tflite(ex.current_graph())


def with_weights(graph: Graph, weights: Mapping[str, np.ndarray]) -> Graph:
    """``graph`` with the constant tensors named in ``weights`` replaced (same shape and
    dtype, checked before anything changes): trained weights of a program compiled without
    a new head, on the model file itself."""
    from dataclasses import replace

    from tinytrain.train.dgsu import is_state_name

    weights = {k: v for k, v in weights.items() if not is_state_name(k)}  # DGSU selection state: not a weight
    by_name = {t.name: t for t in graph.tensors}
    for name, arr in weights.items():
        t = by_name.get(name)
        if t is None or t.data is None:
            raise UsageError(
                f"the model has no constant tensor {name!r}: a program with a new head (--classes) "
                "exports from its compile output directory"
            )
        if tuple(arr.shape) != tuple(t.shape) or arr.dtype != t.data.dtype:
            raise UsageError(
                f"tensor {name!r} is {arr.dtype}{list(arr.shape)} in the weights file; "
                f"the model has {t.data.dtype}{list(t.shape)}"
            )
    tensors = tuple(replace(t, data=np.array(weights[t.name])) if t.name in weights else t for t in graph.tensors)
    return replace(graph, tensors=tensors)


def cmd_export(args: argparse.Namespace) -> int:
    from tinytrain.frontends.load import load_model
    from tinytrain.frontends.tflite_writer import write_tflite

    src = Path(args.model)
    if args.weights is not None and src.is_dir():
        compiled, _ = _program(str(src))
        assert compiled is not None
        data = export_trained(compiled, load_weights(Path(args.weights)))
    elif args.weights is not None:
        data = write_tflite(with_weights(load_model(src), load_weights(Path(args.weights))))
    else:
        data = write_tflite(load_model(src / "model.tflite" if src.is_dir() else src))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes)", file=sys.stderr)
    return 0


EMULATOR_FILE = "emulator.json"
"""Written into OUT by ``emulate`` while it runs: the URL and target, so that ``flash OUT
--port URL`` knows which board the firmware is for."""


def cmd_emulate(args: argparse.Namespace) -> int:
    """Builds the bootloader of ``--target``, starts QEMU with UART0 on TCP, prints the
    pyserial URL on stdout and runs until interrupted (Ctrl-C or SIGTERM). The checkpoint
    storage of the emulated board is OUT/storage-<target>.bin (kept across runs)."""
    import signal

    from host_tools.bootloader import build_bootloader
    from host_tools.emulate import start_emulator

    out = Path(args.out)
    _program(args.out)  # a clear error now if OUT is not a compile output
    info = build_bootloader(args.target, out / "firmware" / f"{args.target}-bootloader")
    storage = out / f"storage-{args.target}.bin"
    state = out / EMULATOR_FILE

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    emu = start_emulator(args.target, info.elf, args.port, storage=storage)
    try:
        state.write_text(json.dumps({"url": emu.url, "target": args.target}) + "\n")
        print(emu.url, flush=True)
        print(f"QEMU {args.target} runs the tinytrain bootloader; stop with Ctrl-C", file=sys.stderr, flush=True)
        status = emu.wait()
        print(f"QEMU exited with status {status}", file=sys.stderr)
        return 0 if status == 0 else 1
    except KeyboardInterrupt:
        return 0
    finally:
        emu.stop()
        state.unlink(missing_ok=True)
        signal.signal(signal.SIGTERM, previous)


def _flash_target(out: Path, port: str, target: str | None) -> str:
    if target is not None:
        return target
    state = out / EMULATOR_FILE
    if state.exists():
        try:
            info = json.loads(state.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("url") == port and isinstance(info.get("target"), str):
            return str(info["target"])
    raise UsageError(f"which board is on {port}? pass --target (qemu-m4, qemu-m7, stm32f746g-disco, nrf52840)")


def cmd_flash(args: argparse.Namespace) -> int:
    """Builds the training application of OUT for the board on ``--port`` and writes it
    through the tinytrain bootloader (or the STM32 ROM bootloader, ``--method stm32``)."""
    from host_tools.firmware import build_app
    from host_tools.flash import flash
    from tinytrain.report import progress_bar

    out = Path(args.out)
    compiled, _ = _program(args.out)
    assert compiled is not None
    target = _flash_target(out, args.port, args.target)
    # the tinytrain bootloader boots an image linked at its application region; the STM32 ROM
    # bootloader writes a stand-alone image at the start of flash
    app = build_app(
        compiled,
        target,
        out / "firmware" / f"{target}-app",
        kernels=args.kernels,
        for_bootloader=args.method == "tinytrain",
    )
    if app.info.bin is None:
        raise UsageError(f"target {target} produced no flash image")
    image = app.info.bin.read_bytes()
    with progress_bar(f"flash {target}", len(image), quiet=args.quiet) as advance:
        done = [0]

        def progress(sent: int, total: int) -> None:
            advance(sent - done[0])
            done[0] = sent

        res = flash(args.port, image, method=args.method, progress=progress)
    remember_program(app.program, out)
    who = res.identity.describe() if res.identity is not None else "written"
    print(f"flashed {res.size:,} bytes in {res.chunks} chunks ({res.retransmissions} retransmitted), "
          f"{res.seconds:.1f} s: {who}", file=sys.stderr)  # fmt: skip
    return 0


def add_parsers(sub: Any) -> None:
    """The device subcommands (``emulate``, ``flash``, ``train``, ``pull``, ``export``)."""
    s = sub.add_parser("emulate", help="run a QEMU board with the tinytrain bootloader; prints its serial URL")
    s.add_argument("out", help="a `tinytrain compile` output directory (builds and storage go there)")
    s.add_argument("--target", required=True, choices=("qemu-m4", "qemu-m7"))
    s.add_argument("--port", type=int, help="TCP port of the serial line (default: a free one)")
    s.set_defaults(func=cmd_emulate)

    s = sub.add_parser("flash", help="build the training firmware of OUT and flash it over the serial port")
    s.add_argument("out", help="a `tinytrain compile` output directory")
    s.add_argument("--port", required=True, help="pyserial URL (tinytrain method) or serial device (stm32 method)")
    s.add_argument("--method", choices=("tinytrain", "stm32"), default="tinytrain")
    s.add_argument("--target", help="the board (default: the one `tinytrain emulate OUT` runs on --port)")
    s.add_argument("--kernels", choices=("ref", "dsp"), default="ref", help="runtime kernels (default ref)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_flash)

    s = sub.add_parser("train", help="train on a device over a serial port (samples streamed as simulate orders them)")
    s.add_argument("--port", required=True, help="pyserial URL: /dev/ttyACM0, socket://127.0.0.1:N, ...")
    s.add_argument("--data", default="fashion-mnist", help="fashion-mnist or an .npz with x (uint8 images) and y")
    s.add_argument("--train-samples", type=int, default=1000)
    s.add_argument("--test-samples", type=int, default=0, help="evaluated on the device at the end (default 0)")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--lr", type=float, default=0.01)
    s.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--program", help="the compile output the firmware was built from (checked by IDENTIFY)")
    s.add_argument("--resume", action="store_true", help="keep the device's weights (default: reset with --seed)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("pull", help="read the trained tensors of a device into an .npz (simulate --save-weights names)")
    s.add_argument("--port", required=True)
    s.add_argument("--program", help="the compile output the firmware was built from (default: found by identity)")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("export", help="write a model (an MCUNet checkpoint, or a compile output) as .tflite")
    s.add_argument("model", help="a model file, or a `tinytrain compile` output directory")
    s.add_argument("--weights", help="trained tensors (.npz from simulate --save-weights or pull)")
    s.add_argument("-o", "--output", required=True)
    s.set_defaults(func=cmd_export)
