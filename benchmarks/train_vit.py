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
frozen blocks 0 and 1: blocks 1, 2, 3 run on 33, 17, 17 tokens) and two other BSR
configurations that meet the SRAM and MAC ratios, ``alast:blocks=1+2+3,train_layers=2,drop_at=0,keep=0.5``
(ALaST: 2 of the blocks 1–3 train per step, chosen by their class-token change; blocks 1–3 on
33 tokens) and ``alast:blocks=2+3,train_layers=1,keep=0.75`` (1 of blocks 2, 3 per step, 49
tokens after block 1), and ``vit-blocks:0+1+2+3`` (every block: ALaST's reference, 471 KB, so
its instructions are profiled with 1 MB of RAM, which only the emulator has). Extra columns: the
tokens the transformer blocks process per training step, the target ratios of each BSR row
against the same blocks without dropping (peak SRAM, training MACs, accuracy) and of each ALaST
row against training every block (instructions, accuracy).

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
BSR_VARIANTS = ("bsr:blocks=2+3,drop_at=1,keep=0.25", "bsr:blocks=2+3,drop_at=0+1,keep=0.6")
SAME_BLOCKS = "vit-blocks:2+3"  # what BSR trains, without token dropping
ALAST = "alast:blocks=1+2+3,train_layers=2,drop_at=0,keep=0.5"
ALAST_VARIANTS = ("alast:blocks=2+3,train_layers=1,keep=0.75",)  # 1 of blocks 2, 3 per step, 49 tokens after block 1
ALL_BLOCKS = "vit-blocks:0+1+2+3"  # ALaST's reference: every block trains (471 KB: emulator only)
DEFAULTS = [
    "--models", "vit",
    "--schemes", ",".join(["last-layer", SAME_BLOCKS, BSR, *BSR_VARIANTS, ALAST, *ALAST_VARIANTS, ALL_BLOCKS]),
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


def targets(rows: list[dict[str, Any]], instructions: bool) -> dict[str, Any]:
    """Issue 7's target figures from the finished rows (best learning rate of each): every BSR
    row against the same blocks without dropping; every ALaST row against training every block
    (``ALL_BLOCKS``: its row's accuracy and instructions, profiled with
    ``train_fmnist.EMULATOR_SRAM``; without that row its instructions are profiled here when
    ``instructions``), against the float32 full fine-tuning and against the fixed blocks 2+3."""
    best = {r["scheme"]: r for r in train_fmnist.best_per_scheme(rows)}
    out: dict[str, Any] = {}
    bsr = []
    for name, b in best.items():
        if not name.startswith("bsr:") or SAME_BLOCKS not in best:
            continue
        s = best[SAME_BLOCKS]
        bsr.append({
            "bsr": name,
            "same_blocks": SAME_BLOCKS,
            "sram_ratio": s["peak_sram_bytes"] / b["peak_sram_bytes"],
            "training_macs_ratio": (s["macs_forward"] + s["macs_backward"]) / (b["macs_forward"] + b["macs_backward"]),
            "accuracy_delta_points": 100 * (b["test_accuracy"] - s["test_accuracy"]),
            "targets": ">= 1.4x lower peak SRAM, >= 2x fewer training MACs, <= 1 point accuracy loss",
        })  # fmt: skip
    if bsr:
        out["bsr_vs_same_blocks"] = bsr
    alast = [(name, a) for name, a in best.items() if name.startswith("alast")]
    ref_steps = best[ALL_BLOCKS].get("instructions_per_step_m7") if ALL_BLOCKS in best else None
    model = train_fmnist.model_path("vit")
    if alast and instructions and not ref_steps and model is not None:
        ref = train_fmnist.instructions_columns(model, ALL_BLOCKS, train_fmnist.EMULATOR_SRAM)
        ref_steps = ref.get("instructions_per_step_m7")
    floats = [r for r in rows if r["kind"] == "float32"]
    entries = []
    for name, a in alast:
        entry: dict[str, Any] = {
            "alast": name,
            "all_blocks": ALL_BLOCKS,
            "targets": ">= 1.5x fewer instructions per training step than training all blocks, <= 1 point loss",
        }
        refs = [
            ("accuracy_delta_vs_all_blocks_points", best.get(ALL_BLOCKS)),
            ("accuracy_delta_vs_float_full_points", max(floats, key=lambda r: r["test_accuracy"]) if floats else None),
            ("accuracy_delta_vs_same_blocks_points", best.get(SAME_BLOCKS)),
        ]
        for key, ref_row in refs:
            if ref_row is not None:
                entry[key] = 100 * (a["test_accuracy"] - ref_row["test_accuracy"])
        if ref_steps and a.get("instructions_per_step_m7"):
            entry["all_blocks_instructions_per_step_m7"] = ref_steps
            entry["instructions_ratio"] = ref_steps / a["instructions_per_step_m7"]
        entries.append(entry)
    if entries:
        out["alast_vs_all_blocks"] = entries
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
    for t in payload.get("targets", {}).get("bsr_vs_same_blocks", []):
        lines += [
            "",
            f"BSR (`{t['bsr']}`) against the same blocks without dropping (`{t['same_blocks']}`): "
            f"{t['sram_ratio']:.2f}x lower peak SRAM, {t['training_macs_ratio']:.2f}x fewer training MACs, "
            f"{t['accuracy_delta_points']:+.2f} points of accuracy (targets: {t['targets']}).",
        ]
    for a in payload.get("targets", {}).get("alast_vs_all_blocks", []):
        ratio = a.get("instructions_ratio")
        inst = (
            f"{ratio:.2f}x fewer M7 instructions per step than `{a['all_blocks']}` "
            f"({a['all_blocks_instructions_per_step_m7'] / 1e6:.1f} M, linked with 1 MB of RAM for the emulator)"
            if ratio
            else "instructions of training every block not profiled (--instructions)"
        )
        deltas = ", ".join(
            f"{a[k]:+.2f} points {what}"
            for k, what in (
                ("accuracy_delta_vs_all_blocks_points", f"against `{a['all_blocks']}` (int8, every block)"),
                ("accuracy_delta_vs_float_full_points", "against float32 full fine-tuning"),
                ("accuracy_delta_vs_same_blocks_points", f"against `{SAME_BLOCKS}`"),
            )
            if k in a
        )
        lines += ["", f"ALaST (`{a['alast']}`): {inst}; {deltas} (targets: {a['targets']})."]
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
        payload["targets"] = targets(block["rows"], "--instructions" in args)
    payload["benchmark"] = "train_vit"
    out.write_text(json.dumps(payload, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(payload))
    print(render(payload))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
