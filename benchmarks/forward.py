"""Forward-pass speed: tinytrain's simulator vs TFLite Micro vs LiteRT, side by side.

Model: MobileNetV2-w0.35 @128×128, 1000 classes, int8 (Keras, seeded weights,
BatchNorm re-estimated, converted with the TFLite converter). When the tiny-training
checkpoint ``../shared/models/mbv2-w0.35.pkl`` is present, its export is measured too.

Per-image times; all engines run in this one process on the same images. The
simulator runs the whole batch at once (as ``tinytrain infer`` does) and, for
latency, one image at a time. Writes ``benchmarks/results/forward.json`` and prints
a markdown table (pasted into the README).

    python benchmarks/forward.py [--images 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "cache"
RESULTS = ROOT / "results"
SHARED_PKL = ROOT.parent.parent / "shared" / "models" / "mbv2-w0.35.pkl"


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def keras_model() -> bytes:
    path = CACHE / "mbv2_w035_128_1000_int8.tflite"
    if path.exists():
        return path.read_bytes()
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.mobilenetv2 import keras_mobilenetv2, mobilenetv2_calibration

    model = keras_mobilenetv2(alpha=0.35, resolution=128, classes=1000, seed=0)
    data = convert_keras(model, mobilenetv2_calibration(128, n=32))
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def checkpoint_model() -> bytes | None:
    if not SHARED_PKL.exists():
        return None
    from tinytrain.frontends.mcunet import load_mcunet
    from tinytrain.frontends.tflite_writer import write_tflite

    return write_tflite(load_mcunet(SHARED_PKL))


def measure(name: str, model: bytes, images: int, repeat: int) -> dict[str, object]:
    from ai_edge_litert.interpreter import Interpreter as LiteRT

    from tinytrain.frontends.tflite import load_tflite
    from tinytrain.sim.forward import Simulator
    from tinytrain.testing.tflm import run_tflm

    graph = load_tflite(model)
    x_t = graph.tensor(graph.inputs[0])
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (images, *x_t.shape[1:]), dtype=np.int8)
    sim = Simulator(graph)
    ours = sim.run([x])[0]  # warm-up + result
    ref = run_tflm(model, [x])[0]
    t_sim = _best(lambda: sim.run([x]), repeat) / images
    single = max(1, images // 8)
    t_sim1 = _best(lambda: [sim.run([x[i : i + 1]]) for i in range(single)], repeat) / single
    t_tflm = _best(lambda: run_tflm(model, [x]), repeat) / images

    lite = LiteRT(model_content=model, num_threads=2)
    lite.allocate_tensors()
    inp, out = lite.get_input_details()[0]["index"], lite.get_output_details()[0]["index"]

    def run_lite() -> None:
        for i in range(images):
            lite.set_tensor(inp, x[i : i + 1])
            lite.invoke()
            lite.get_tensor(out)

    t_lite = _best(run_lite, repeat) / images
    return {
        "model": name,
        "images": images,
        "bit_exact_with_tflm": bool(np.array_equal(ours, ref)),
        "simulator_batched_ms_per_image": round(t_sim * 1e3, 3),
        "simulator_single_ms_per_image": round(t_sim1 * 1e3, 3),
        "tflm_reference_ms_per_image": round(t_tflm * 1e3, 3),
        "litert_default_ms_per_image": round(t_lite * 1e3, 3),
        "simulator_speedup_vs_tflm": round(t_tflm / t_sim, 2),
    }


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | simulator, batched (ms/img) | simulator, one at a time (ms/img) | TFLite Micro ref. (ms/img) "
        "| LiteRT default (ms/img) | simulator vs TFLM | bit-exact |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['simulator_batched_ms_per_image']} | {r['simulator_single_ms_per_image']} "
            f"| {r['tflm_reference_ms_per_image']} | {r['litert_default_ms_per_image']} "
            f"| {r['simulator_speedup_vs_tflm']}× faster | {'yes' if r['bit_exact_with_tflm'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    args = ap.parse_args()
    rows = [measure("MobileNetV2-w0.35 @128 (Keras, int8)", keras_model(), args.images, args.repeat)]
    ckpt = checkpoint_model()
    if ckpt is not None:
        rows.append(measure("MobileNetV2-w0.35 @128 (tiny-training .pkl, exported)", ckpt, args.images, args.repeat))
    result = {
        "benchmark": "forward",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "forward.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "forward.md").write_text(table(rows) + "\n")
    print(json.dumps(result, indent=2) if args.json else table(rows))
    return 0 if all(r["bit_exact_with_tflm"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
