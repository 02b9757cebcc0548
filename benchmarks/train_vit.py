"""Tiny-ViT on-device training benchmark (issue 7): the shipped pretrained tiny ViT
(``tinytrain/data/vit-d64-32-fmnist04-int8.tflite``: 32×32×3, patch 4, dim 64, 4 blocks, 65
tokens; Fashion-MNIST classes 0–4) fine-tuned on all ten classes with the CNN benchmark's
protocol (``benchmarks/train_fmnist.py``, whose rows, partial files, learning-rate grids,
``--collect`` and ``--instructions`` this script reuses with the model key ``vit``): the first
6,000 training / 2,000 test images, 28×28 → 32×32 integer bilinear, a zero-initialised
10-class head, 3 epochs, batch 1, integer-only training in the simulator; float32 rows fine-tune
every parameter of the dequantized network in TensorFlow (``tinytrain.train.float_vit_ops``).

Rows: float32 full fine-tuning, ``last-layer``, ``vit-last:K`` (a fixed last-k-blocks
baseline), ``vit-blocks:2+3`` (the blocks BSR trains, without token dropping) and
``bsr:blocks=2+3,drop_at=0+1,keep=0.5`` (tokens dropped by the class-token attention of the
frozen blocks 0 and 1: blocks 1, 2, 3 run on 33, 17, 17 tokens). Extra columns: the tokens the
transformer blocks process per training step, and the target ratios of BSR against the same
blocks without dropping (peak SRAM, training MACs, accuracy).

    python benchmarks/train_vit.py                      # every row (resumable: --resume)
    python benchmarks/train_vit.py --collect [--instructions]   # the table of the finished rows
    python benchmarks/train_vit.py --train-samples 60 --test-samples 20 --epochs 1 --no-float  # a smoke run

Any option of train_fmnist.py applies (``--schemes``, ``--lr-for SCHEME=LR``, ...). Writes
``benchmarks/results/train_vit.json`` / ``.md`` and ``train_vit_acc_sram.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
import train_fmnist  # noqa: E402  (the protocol, rows and table of the CNN benchmark)

RESULTS = ROOT / "results"
KB = 1024
BSR = "bsr:blocks=2+3,drop_at=0+1,keep=0.5"
SAME_BLOCKS = "vit-blocks:2+3"  # what BSR trains, without token dropping
DEFAULTS = [
    "--models", "vit",
    "--schemes", f"last-layer,vit-last:1,vit-last:2,{SAME_BLOCKS},{BSR}",
    "--schedule", "cosine",
    "--lr", "0.003",
    "--lr-for", "last-layer=0.01",
    "--float-lr", "0.003,0.001",
    "--out", str(RESULTS / "train_vit.json"),
    "--partial", str(RESULTS / "train_vit.partial"),
    "--plot", str(RESULTS / "train_vit_acc_sram.png"),
]  # fmt: skip


def tokens_per_step(scheme: str) -> int:
    """Tokens the transformer blocks process in one forward pass of the training program."""
    from tinytrain.passes.token_drop import block_tokens
    from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph

    model = train_fmnist.model_path("vit")
    assert model is not None
    c = compile_graph(
        prepare_graph(model, 10, "zero", 0), scheme, CompileOptions(scheme, sram_bytes=1 << 30, sample_bytes=784)
    )
    return sum(block_tokens(c.graph).values())


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 7's BSR target figures from the finished rows (best learning rate of each)."""
    best = {r["scheme"]: r for r in train_fmnist.best_per_scheme(rows)}
    out: dict[str, Any] = {}
    if BSR in best and SAME_BLOCKS in best:
        b, s = best[BSR], best[SAME_BLOCKS]
        out["bsr_vs_same_blocks"] = {
            "bsr": BSR,
            "same_blocks": SAME_BLOCKS,
            "sram_ratio": s["peak_sram_bytes"] / b["peak_sram_bytes"],
            "training_macs_ratio": (s["macs_forward"] + s["macs_backward"]) / (b["macs_forward"] + b["macs_backward"]),
            "accuracy_delta_points": 100 * (b["test_accuracy"] - s["test_accuracy"]),
            "targets": ">= 1.4x lower peak SRAM, >= 2x fewer training MACs, <= 1 point accuracy loss",
        }
    return out


def render(payload: dict[str, Any]) -> str:
    lines = [
        "| scheme | test acc. | after each epoch | SRAM (peak) | fits 256 KB | MACs fwd / bwd | tokens / step "
        "| M7 instructions per step | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for block in payload["results"]:
        for r in block["rows"]:
            acc = f"{100 * r['test_accuracy']:.2f}%"
            if r["kind"] == "float32":
                lines.append(f"| {r['scheme']} (lr {r['lr']}) | {acc} |{' – |' * 6} {r['wall_seconds']} s |")
                continue
            epochs = " / ".join(f"{100 * a:.1f}" for a in r.get("test_accuracy_per_epoch", []))
            lines.append(
                f"| {r['scheme']} (lr {r['lr']}, {r.get('schedule', 'constant')}) | {acc} | {epochs} "
                f"| {r['peak_sram_bytes'] / KB:.1f} KB | {'yes' if r['peak_sram_bytes'] <= 256 * KB else 'no'} "
                f"| {r['macs_forward'] / 1e6:.2f} M / {r['macs_backward'] / 1e6:.2f} M "
                f"| {r.get('tokens_per_step', '–')} "
                f"| {train_fmnist.instructions(r)} | {r['wall_seconds']} s |"
            )
    t = payload.get("targets", {}).get("bsr_vs_same_blocks")
    if t:
        lines += [
            "",
            f"BSR (`{t['bsr']}`) against the same blocks without dropping (`{t['same_blocks']}`): "
            f"{t['sram_ratio']:.2f}x lower peak SRAM, {t['training_macs_ratio']:.2f}x fewer training MACs, "
            f"{t['accuracy_delta_points']:+.2f} points of accuracy (targets: {t['targets']}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = DEFAULTS + list(sys.argv[1:] if argv is None else argv)  # later options win
    status = train_fmnist.main(args, description=__doc__.splitlines()[0])
    out = Path(args[len(args) - 1 - args[::-1].index("--out") + 1])
    payload = json.loads(out.read_text())
    for block in payload["results"]:
        for r in block["rows"]:
            if r["kind"] != "float32" and "tokens_per_step" not in r:
                r["tokens_per_step"] = tokens_per_step(r["scheme"])
        payload["targets"] = targets(block["rows"])
    payload["benchmark"] = "train_vit"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(payload))
    print(render(payload))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
