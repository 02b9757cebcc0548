"""Device benchmark: the generated C of MobileNetV2-w0.35 @128 (tte scheme, Fashion-MNIST
28x28 native samples, 10 classes) on the emulated Cortex-M7 / Cortex-M4 and on the host.

Sections (each cached in ``benchmarks/results/device.partial.json``; ``--resume`` skips the
finished ones):

* ``qemu-<m7|m4>-<ref|dsp>``: instructions per training step and per inference
  (``codegen.profile``: QEMU ``-icount shift=0``, resolution 40, deterministic), MACs per
  instruction, ELF text/data/bss against the plan (arena, flash constants);
* ``firmware-<m7|m4>-<ref|dsp>``: the firmware a user flashes (``tinytrain build``: the run
  driver, no profiling instrumentation), its flash (text + data) and static SRAM (data + bss,
  stacks included) from the ELF, against the issue's ≤ 128 KB SRAM / ≤ 1 MB flash;
* ``host``: training throughput (samples/s) of the generated C built for the host (x86
  kernels, -O3 -march=native; one process, timed inside by difference of two runs so that start-up cancels) and its
  inference time per sample;
* ``keras``: float32 fine-tuning in TensorFlow/Keras of the same layers (the tte scheme's
  trained layers, whole weights — Keras has no channel subset — plus their biases and the
  head), batch 32, samples/s measured in this run;
* ``tflm``: inference time per sample of the same int8 model in the TFLite Micro
  interpreter (``tinytrain.testing.tflm``) on the same preprocessed samples.

    python benchmarks/device.py [--resume] [--host-samples 200] [--keras-samples 640]

Writes ``benchmarks/results/device.json`` and ``device.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from codegen.backends import RunSpec, build_device, build_host, encode_run  # noqa: E402
from codegen.profile import profile  # noqa: E402
from codegen.targets import run_host  # noqa: E402
from tinytrain.datasets import fashion_mnist  # noqa: E402
from tinytrain.train.compile import Compiled, CompileOptions, compile_model  # noqa: E402

MODEL = ROOT / "tinytrain" / "data" / "mbv2-w0.35-128-fmnist04-int8.tflite"
SCHEME = "tte"
RESULTS = ROOT / "benchmarks" / "results"
PARTIAL = RESULTS / "device.partial.json"


def _compiled() -> Compiled:
    return compile_model(MODEL, CompileOptions(SCHEME, classes=10, sample_bytes=784))


def qemu_section(c: Compiled, target: str, kernels: str) -> dict[str, Any]:
    x, y = fashion_mnist("train")
    t, _ = fashion_mnist("test")
    spec = RunSpec(x[:2], y[:2].astype(np.int64), t[:1], seed=0, lr=0.01)
    t0 = time.time()
    p = profile(c, target, spec, kernels=kernels, timeout=1200)  # type: ignore[arg-type]
    j = p.to_json()
    top = sorted(p.layers, key=lambda la: -(la.forward_instructions + la.backward_instructions))[:8]
    return {
        "target": target,
        "kernels": kernels,
        "train_step_instructions": j["train_step_instructions"],
        "inference_instructions": j["inference_instructions"],
        "macs_train_step": j["macs_train_step"],
        "macs_forward": j["macs_forward"],
        "macs_per_instruction_train": j["macs_per_instruction_train"],
        "macs_per_instruction_inference": j["macs_per_instruction_inference"],
        "elf": j["elf"],
        "arena_bytes": j["arena_bytes"],
        "top_layers": [
            {"layer": la.layer, "forward": la.forward_instructions, "backward": la.backward_instructions}
            for la in top
        ],
        "seconds": time.time() - t0,
    }


def host_section(c: Compiled, n: int) -> dict[str, Any]:
    x, y = fashion_mnist("train")
    t, _ = fashion_mnist("test")
    with tempfile.TemporaryDirectory() as tmp:
        _, exe = build_host(c, Path(tmp), (28, 28), kernels="x86")

        def timed(spec: RunSpec) -> float:
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                r = run_host(exe, 600, encode_run(spec))
                best = min(best, time.perf_counter() - t0)
                assert r.exit_status == 0, r.exit_status
            return best

        base = timed(RunSpec(x[:1], y[:1].astype(np.int64), t[:0]))
        train = timed(RunSpec(x[: n + 1], y[: n + 1].astype(np.int64), t[:0]))
        infer = timed(RunSpec(x[:1], y[:1].astype(np.int64), t[:n]))
    return {
        "samples": n,
        "train_samples_per_s": n / max(train - base, 1e-9),
        "train_ms_per_sample": 1000 * (train - base) / n,
        "inference_ms_per_sample": 1000 * (infer - base) / n,
        "build": "gcc -O3 -march=native, x86 kernels (AVX2; host target, codegen.backends.build_host)",
    }


def keras_section(c: Compiled, n: int) -> dict[str, Any]:
    from tinytrain.train.float_baseline import finetune_float

    x, y = fashion_mnist("train")
    t, ty = fashion_mnist("test")
    last = c.scheme.layers[-1].layer.index
    refs = []
    for p in c.scheme.trained:
        if p.layer.index == last:
            refs.append("head")
        elif p.trains_weights:
            refs.append(p.layer.name)
        else:
            refs.append(f"{p.layer.name}.bias")
    # one warm-up epoch on 64 samples (graph tracing), then the timed run
    finetune_float(c.graph, x[:64], y[:64], t[:32], ty[:32], epochs=1, batch=32, trainable=refs)
    res = finetune_float(c.graph, x[:n], y[:n], t[:32], ty[:32], epochs=1, batch=32, trainable=refs)
    return {
        "samples": n,
        "batch": 32,
        "trainable": refs,
        "trainable_parameters": res["trainable_parameters"],
        "train_samples_per_s": n / res["train_seconds"],
        "train_ms_per_sample": 1000 * res["train_seconds"] / n,
        "note": "float32 SGD (momentum 0.9), TensorFlow CPU, preprocessing included",
    }


def tflm_section(c: Compiled, n: int) -> dict[str, Any]:
    from tinytrain.testing.tflm import run_tflm
    from tinytrain.train.data import preprocess_for_graph

    t, _ = fashion_mnist("test")
    pre = preprocess_for_graph(c.graph, (28, 28))
    xs = np.asarray(pre(t[:n]))
    data = MODEL.read_bytes()
    run_tflm(data, [xs[:1]])  # warm-up (interpreter set-up)
    t0 = time.perf_counter()
    run_tflm(data, [xs])
    dt = time.perf_counter() - t0
    return {
        "samples": n,
        "inference_ms_per_sample": 1000 * dt / n,
        "note": "tflite-micro Python interpreter (reference kernels), one invoke per sample, the shipped "
        "model file (its own head; same backbone and input)",
    }


def firmware_section(c: Compiled, target: str, kernels: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        _, info = build_device(c, target, Path(tmp), (28, 28), kernels)  # type: ignore[arg-type]
    return {
        "target": target,
        "kernels": kernels,
        "text": info.text,
        "data": info.data,
        "bss": info.bss,
        "flash_used": info.flash_used,
        "sram_used": info.ram_used,
    }


def plan_section(c: Compiled) -> dict[str, Any]:
    m = c.memory
    return {
        "arena_bytes_plan": int(c.plan.arena_size),
        "flash_bytes_plan": int(m.flash_bytes),
        "sram_budget": c.options.sram_bytes,
        "flash_budget": c.options.flash_bytes,
        "macs_forward": m.macs_forward,
        "macs_backward": m.macs_backward,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--host-samples", type=int, default=200)
    ap.add_argument("--keras-samples", type=int, default=640)
    ap.add_argument("--tflm-samples", type=int, default=20)
    ap.add_argument(
        "--sections",
        default="plan,firmware-m7-ref,firmware-m7-dsp,firmware-m4-dsp,qemu-m7-ref,qemu-m4-ref,qemu-m7-dsp,qemu-m4-dsp,"
        "host,keras,tflm",
    )
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = json.loads(PARTIAL.read_text()) if args.resume and PARTIAL.exists() else {}
    c = _compiled()
    for name in [s for s in args.sections.split(",") if s]:
        if name in done:
            continue
        print(f"[device] {name} ...", file=sys.stderr, flush=True)
        t0 = time.time()
        if name == "plan":
            done[name] = plan_section(c)
        elif name.startswith("firmware-"):
            _, core, kernels = name.split("-")
            done[name] = firmware_section(c, f"qemu-{core}", kernels)
        elif name.startswith("qemu-"):
            _, core, kernels = name.split("-")
            done[name] = qemu_section(c, f"qemu-{core}", kernels)
        elif name == "host":
            done[name] = host_section(c, args.host_samples)
        elif name == "keras":
            done[name] = keras_section(c, args.keras_samples)
        elif name == "tflm":
            done[name] = tflm_section(c, args.tflm_samples)
        else:
            raise SystemExit(f"unknown section {name}")
        print(f"[device] {name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        PARTIAL.write_text(json.dumps(done, indent=2))
    out = {"model": MODEL.name, "scheme": SCHEME, "sample_shape": [28, 28], "classes": 10, **done}
    (RESULTS / "device.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / "device.md").write_text(markdown(out))
    print(markdown(out))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Device benchmark: {r['model']}, scheme {r['scheme']}, 28x28 samples, {r['classes']} classes",
        "",
        "Instructions counted in QEMU (`-icount shift=0`, resolution 40; not Cortex-M cycles: QEMU models",
        "no pipeline or cache). Generated by `benchmarks/device.py`.",
        "",
        "| target | kernels | instr / train step | instr / inference | MACs/instr (train) "
        "| text | data | bss | arena |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in r.items():
        if isinstance(v, dict) and k.startswith("qemu-"):
            e = v["elf"]
            lines.append(
                f"| {v['target']} | {v['kernels']} | {v['train_step_instructions']:,} "
                f"| {v['inference_instructions']:,} "
                f"| {v['macs_per_instruction_train']:.3f} | {e['text']:,} | {e['data']:,} | {e['bss']:,} "
                f"| {v['arena_bytes']:,} |"
            )
    fw = [v for k, v in r.items() if isinstance(v, dict) and k.startswith("firmware-")]
    if fw:
        lines += [
            "",
            "Firmware as flashed (`tinytrain build`, run driver, no profiling instrumentation):",
            "",
            "| target | kernels | text | data | bss (incl. stacks) | flash used | static SRAM used |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {v['target']} | {v['kernels']} | {v['text']:,} | {v['data']:,} | {v['bss']:,} | {v['flash_used']:,} "
            f"| {v['sram_used']:,} |"
            for v in fw
        ]
    if "plan" in r:
        p = r["plan"]
        lines += [
            "",
            f"Plan: arena {p['arena_bytes_plan']:,} B, flash constants {p['flash_bytes_plan']:,} B "
            f"(budget {p['flash_budget']:,}), SRAM budget "
            f"{p['sram_budget']:,} B; MACs forward {p['macs_forward']:,}, backward {p['macs_backward']:,}.",
        ]
    lines += ["", "| host comparison | train samples/s | train ms/sample | inference ms/sample |"]
    lines += ["|---|---:|---:|---:|"]
    if "host" in r:
        h = r["host"]
        lines.append(
            f"| generated C, host gcc -O3 -march=native, x86 kernels (int8, batch 1) | "
            f"{h['train_samples_per_s']:.1f} | {h['train_ms_per_sample']:.2f} | {h['inference_ms_per_sample']:.2f} |"
        )
    if "keras" in r:
        k = r["keras"]
        lines.append(
            f"| TensorFlow/Keras float32, same layers, batch 32 | {k['train_samples_per_s']:.1f} | "
            f"{k['train_ms_per_sample']:.2f} | - |"
        )
    if "tflm" in r:
        lines.append(f"| TFLite Micro interpreter (int8) | - | - | {r['tflm']['inference_ms_per_sample']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
