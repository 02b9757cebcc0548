"""Training memory of every preset (deterministic counts from the compiled plan).

For each model and scheme: the arena the plan needs (what the firmware reserves), the
live-bytes peak (the lower bound of any placement), the trainable bytes, flash and MACs,
with the native 28×28 sample streamed into the fused stem (``--sample-shape 28x28``) and
a new 10-class head. The ImageNet checkpoint row is the configuration TTE reports 141 KB for.

    python benchmarks/memory.py [--json]

Writes ``benchmarks/results/memory.json`` and ``memory.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
SHARED_PKL = ROOT.parent.parent / "shared" / "models" / "mbv2-w0.35.pkl"
SCHEMES = ("last-layer", "bias-only", "tte", "last-k:2")
KB = 1024


def models() -> list[tuple[str, Path]]:
    from tinytrain.models.ship import MBV2, shipped

    out = [
        ("MobileNetV2-w0.35 @128, Fashion-MNIST 0-4 pretrained (shipped)",
         shipped("mbv2-w0.35-128-fmnist04-int8.tflite")),
        ("MobileNetV2-w0.35 @96 (shipped, random weights)", shipped(MBV2)),
    ]
    if SHARED_PKL.exists():
        out.insert(0, ("MobileNetV2-w0.35 @128, ImageNet (tiny-training .pkl)", SHARED_PKL))
    return out


def row(path: Path, scheme: str) -> dict[str, Any]:
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    graph = prepare_graph(path, 10, "zero", 0)
    c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=1 << 30, sample_bytes=28 * 28))
    return {
        "scheme": scheme,
        "arena_bytes": c.plan.arena_size,
        "peak_live_bytes": c.plan.peak_live,
        "trainable_bytes": c.memory.trainable_bytes,
        "fits_256kb": c.plan.arena_size <= 256 * KB,
        "flash_bytes": c.memory.flash_bytes,
        "macs_forward": c.memory.macs_forward,
        "macs_backward": c.memory.macs_backward,
        "compile_seconds": round(c.seconds, 2),
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | scheme | arena | live peak | trainable | fits 256 KB | MACs fwd / bwd |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    for block in results:
        for r in block["rows"]:
            lines.append(
                f"| {block['model']} | {r['scheme']} | {r['arena_bytes'] / KB:.1f} KB "
                f"| {r['peak_live_bytes'] / KB:.1f} KB "
                f"| {r['trainable_bytes'] / KB:.1f} KB | {'yes' if r['fits_256kb'] else 'no'} "
                f"| {r['macs_forward'] / 1e6:.1f} M / {r['macs_backward'] / 1e6:.1f} M |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [{"model": name, "rows": [row(path, s) for s in SCHEMES]} for name, path in models()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "memory", "sample": "28x28 streamed", "classes": 10, "results": results}
    (RESULTS / "memory.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / "memory.md").write_text(table(results) + "\n")
    print(json.dumps(payload, indent=2) if args.json else table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
