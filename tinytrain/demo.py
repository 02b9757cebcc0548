"""``make demo``: the main job, end to end on the shipped models.

1. Forward: inspect the shipped models, run them on Fashion-MNIST images in the
   simulator through the CLI, and check every output byte against TFLite Micro.
2. Training: compile the shipped pretrained MobileNetV2-w0.35 (Fashion-MNIST classes
   0–4) with TTE's sparse-update scheme and a new 10-class head for a 256 KB device,
   then train it integer-only in the simulator on Fashion-MNIST (the device learns the
   classes it has never seen) and evaluate it.
3. Firmware: build the generated C for the emulated Cortex-M7 board (sizes against the
   plan), then run the same short training run on the simulator, the host-compiled C
   and the firmware in QEMU, and check that the trained weights are the same bytes.
4. Device workflow: emulate a Cortex-M4 board (QEMU, the tinytrain bootloader, serial on
   TCP), flash the training firmware over the serial line, stream the same samples, pull
   the weights, show that they equal the simulator's byte for byte, export the trained
   model as .tflite and print the SRAM / flash / accuracy table.

    python -m tinytrain.demo --out build/demo [--images 64] [--train-samples 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from tinytrain.cli import main as cli
from tinytrain.datasets import fashion_mnist, to_model_input
from tinytrain.frontends.load import load_model
from tinytrain.models.ship import CHECKPOINT, shipped

PRETRAINED = "mbv2-w0.35-128-fmnist04-int8.tflite"


@dataclass(frozen=True)
class DemoRow:
    model: str
    images: int
    output: str
    simulator_ms_per_image: float
    tflm_ms_per_image: float
    bit_exact_samples: int


def _run_one(model_path: Path, out: Path, images: np.ndarray, console: Console) -> DemoRow:
    from tinytrain.frontends.tflite_writer import write_tflite
    from tinytrain.testing.tflm import run_tflm

    console.rule(f"[bold]tinytrain inspect {model_path.name}")
    cli(["inspect", str(model_path)])
    graph = load_model(model_path)
    x_t = graph.tensor(graph.inputs[0])
    _, h, _, c = x_t.shape
    x = to_model_input(images, h, c)
    x_path, y_path = out / f"{model_path.stem}.x.npy", out / f"{model_path.stem}.y.npy"
    np.save(x_path, x)
    console.rule(f"[bold]tinytrain infer {model_path.name} --input {x_path.name} --output {y_path.name}")
    t0 = time.perf_counter()
    status = cli(["infer", str(model_path), "--input", str(x_path), "--output", str(y_path)])
    t_sim = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(status)
    y = np.load(y_path)
    # TFLite Micro is the oracle: it runs the .tflite file (for a checkpoint, its export).
    flatbuffer = model_path.read_bytes() if model_path.suffix == ".tflite" else write_tflite(graph)
    t0 = time.perf_counter()
    ref = run_tflm(flatbuffer, [x])[0]
    t_tflm = time.perf_counter() - t0
    same = int(sum(np.array_equal(a, b) for a, b in zip(y, ref, strict=True)))
    return DemoRow(
        model=model_path.name,
        images=len(x),
        output=f"{y.dtype}{list(y.shape[1:])}",
        simulator_ms_per_image=round(1e3 * t_sim / len(x), 2),
        tflm_ms_per_image=round(1e3 * t_tflm / len(x), 2),
        bit_exact_samples=same,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description="tinytrain demo")
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--train-samples", type=int, default=1000)
    ap.add_argument("--test-samples", type=int, default=500)
    ap.add_argument("--device-samples", type=int, default=20, help="training steps run on every backend")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console()
    images, _ = fashion_mnist("test")
    images = images[: args.images]
    rows = [_run_one(shipped(name), args.out, images, console) for name in (PRETRAINED, CHECKPOINT)]
    summary = Table(title="simulator vs TFLite Micro on Fashion-MNIST test images")
    for col in ("model", "images", "output", "sim ms/img (CLI, incl. load)", "TFLM ms/img", "bit-exact"):
        summary.add_column(col)
    for r in rows:
        summary.add_row(
            r.model,
            str(r.images),
            r.output,
            f"{r.simulator_ms_per_image}",
            f"{r.tflm_ms_per_image}",
            f"{r.bit_exact_samples}/{r.images}",
        )
    console.print(summary)
    payload = [r.__dict__ for r in rows]
    (args.out / "summary.json").write_text(json.dumps(payload, indent=2) + "\n")
    if args.json:
        print(json.dumps(payload, indent=2))
    ok = all(r.bit_exact_samples == r.images for r in rows)
    console.print("[green]all outputs bit-exact with TFLite Micro[/]" if ok else "[red]MISMATCH with TFLite Micro[/]")
    status, accuracy = _train(args, console)
    if status == 0:
        status = _firmware(args, console)
    if status == 0:
        status = _device(args, console, accuracy)
    return 0 if ok and status == 0 else 1


def _train(args: argparse.Namespace, console: Console) -> tuple[int, float | None]:
    """Compiles and trains in the simulator; returns (status, test accuracy)."""
    import contextlib
    import io

    prog = args.out / "tte-program"
    console.rule("[bold]tinytrain compile (TTE sparse update, new 10-class head, 256 KB, 28x28 samples)")
    status = cli(
        [
            "compile",
            str(shipped(PRETRAINED)),
            "--scheme",
            "tte",
            "--classes",
            "10",
            "--sram",
            "256KB",
            "--sample-shape",
            "28x28",
            "-o",
            str(prog),
        ]
    )
    if status != 0:
        return status, None
    console.rule(f"[bold]tinytrain simulate: {args.train_samples} Fashion-MNIST images, 1 epoch, integer-only")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli(
            ["simulate", str(prog), "--data", "fashion-mnist", "--train-samples", str(args.train_samples),
             "--test-samples", str(args.test_samples), "--epochs", "1", "--lr", "0.01", "--seed", "0",
             "--plot", str(prog / "curves.png"), "--save-weights", str(prog / "trained.npz"), "--json"]
        )  # fmt: skip
    if status != 0:
        return status, None
    report = json.loads(out.getvalue())
    acc = report["test_accuracy"]
    console.print(
        f"train loss {report['train_loss'][0]:.3f}, test accuracy {100 * acc:.2f} % on {args.test_samples} "
        f"images (10 classes; the pretrained model knew 5) — curves in {prog / 'curves.png'}"
    )
    return 0, acc


def _firmware(args: argparse.Namespace, console: Console) -> int:
    prog = args.out / "tte-program"
    console.rule("[bold]tinytrain build --target qemu-m7 (generated C, reference kernels)")
    status = cli(["build", str(prog), "--target", "qemu-m7"])
    if status != 0:
        return status
    weights: dict[str, dict[str, np.ndarray]] = {}
    for backend in ("sim", "host", "qemu-m7"):
        n = args.device_samples
        console.rule(f"[bold]tinytrain simulate --backend {backend}: {n} samples, same seed and order")
        path = prog / f"weights-{backend}.npz"
        status = cli(
            [
                "simulate",
                str(prog),
                "--data",
                "fashion-mnist",
                "--train-samples",
                str(args.device_samples),
                "--test-samples",
                "8",
                "--epochs",
                "1",
                "--lr",
                "0.01",
                "--seed",
                "0",
                "--backend",
                backend,
                "--save-weights",
                str(path),
                "--quiet",
            ]
        )
        if status != 0:
            return status
        with np.load(path) as z:
            weights[backend] = {k: z[k] for k in z.files}
    table = Table(title=f"trained tensors after {args.device_samples} steps, compared with the simulator")
    for col in ("backend", "tensors", "bytes", "identical"):
        table.add_column(col)
    ref = weights["sim"]
    same_all = True
    for backend, w in weights.items():
        same = w.keys() == ref.keys() and all(np.array_equal(w[k], ref[k]) for k in ref)
        same_all &= same
        table.add_row(backend, str(len(w)), str(sum(a.nbytes for a in w.values())), "yes" if same else "NO")
    console.print(table)
    agree = "[green]simulator, host C and Cortex-M7 firmware agree on every byte[/]"
    console.print(agree if same_all else "[red]MISMATCH[/]")
    return 0 if same_all else 1


def _device(args: argparse.Namespace, console: Console, accuracy: float | None) -> int:
    """emulate → flash → train → pull → compare → export, through the CLI."""
    import subprocess
    import sys

    from codegen.targets import elf_sizes
    from tinytrain.train.compile import load_artifact

    prog = args.out / "tte-program"
    target = "qemu-m4"
    console.rule(f"[bold]tinytrain emulate --target {target} (QEMU, the tinytrain bootloader, serial on TCP)")
    emu = subprocess.Popen(
        [sys.executable, "-m", "tinytrain.cli", "emulate", str(prog), "--target", target],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert emu.stdout is not None
        url = emu.stdout.readline().strip()
        if not url.startswith("socket://"):
            console.print("[red]the emulator did not start[/]")
            return 1
        console.print(f"serial port: {url}")
        console.rule(f"[bold]tinytrain flash --port {url} (DSP kernels)")
        status = cli(["flash", str(prog), "--port", url, "--kernels", "dsp"])
        n = args.device_samples
        if status == 0:
            console.rule(f"[bold]tinytrain train --port {url}: {n} samples, same seed and order as the simulator")
            status = cli(
                ["train", "--port", url, "--data", "fashion-mnist", "--train-samples", str(n), "--test-samples",
                 "8", "--epochs", "1", "--lr", "0.01", "--seed", "0", "--program", str(prog)]
            )  # fmt: skip
        pulled = prog / "weights-device.npz"
        if status == 0:
            console.rule(f"[bold]tinytrain pull --port {url}")
            status = cli(["pull", "--port", url, "--program", str(prog), "-o", str(pulled)])
    finally:
        emu.terminate()
        emu.wait(timeout=30)
    if status != 0:
        return status
    with np.load(pulled) as a, np.load(prog / "weights-sim.npz") as b:
        same = sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
        tensors, nbytes = len(a.files), sum(a[k].nbytes for k in a.files)
    console.print(
        f"[green]the device's {tensors} trained tensors ({nbytes:,} bytes) equal the simulator's byte for byte[/]"
        if same
        else "[red]MISMATCH between the device and the simulator[/]"
    )
    tfl = prog / "trained.tflite"
    console.rule("[bold]tinytrain export --weights (the device's weights)")
    status = cli(["export", str(prog), "--weights", str(pulled), "-o", str(tfl)])
    if status != 0:
        return status
    compiled = load_artifact(prog)
    elf = next((prog / "firmware" / f"{target}-app").rglob("*.elf"))
    text, data, bss = elf_sizes(target, elf)
    table = Table(title="MobileNetV2-w0.35 @128, tte sparse update, on a 256 KB / 1 MB Cortex-M4 (emulated)")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("SRAM: planned arena", f"{compiled.plan.arena_size / 1024:.1f} KB")
    table.add_row("SRAM: firmware data + bss + stacks", f"{(data + bss) / 1024:.1f} KB of 256 KB")
    table.add_row("flash: firmware text + data", f"{(text + data) / 1024:.1f} KB of 1024 KB")
    table.add_row("trainable bytes (in SRAM)", f"{compiled.memory.trainable_bytes / 1024:.1f} KB")
    acc = "-" if accuracy is None else f"{100 * accuracy:.2f} %"
    table.add_row(f"test accuracy after {args.train_samples} samples (simulator)", acc)
    table.add_row(f"device == simulator after {args.device_samples} steps", "yes" if same else "NO")
    table.add_row("trained model", str(tfl))
    console.print(table)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
