"""benchmarks/train_vit.py without training: the tokens per step of the compiled programs and
the BSR target ratios it reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_vit


def test_tokens_per_step_counts_the_kept_tokens() -> None:
    assert train_vit.tokens_per_step("vit-blocks:2+3") == 4 * 65
    # drops after blocks 0 and 1 (keep 0.5, the class token always kept): 65 + 33 + 17 + 17
    assert train_vit.tokens_per_step(train_vit.BSR) == 65 + 33 + 17 + 17


def test_targets_and_table() -> None:
    def row(scheme: str, acc: float, peak: int, fwd: int, bwd: int, lr: float = 0.003) -> dict[str, object]:
        return {"scheme": scheme, "kind": "int8", "lr": lr, "test_accuracy": acc, "peak_sram_bytes": peak,
                "macs_forward": fwd, "macs_backward": bwd, "wall_seconds": 1.0}  # fmt: skip

    rows = [
        row(train_vit.SAME_BLOCKS, 0.80, 250_000, 10_000_000, 12_000_000),
        row(train_vit.SAME_BLOCKS, 0.70, 250_000, 10_000_000, 12_000_000, lr=0.01),
        row(train_vit.BSR, 0.79, 100_000, 5_000_000, 3_000_000),
        row(train_vit.ALAST, 0.78, 200_000, 6_000_000, 8_000_000),
        {**row(train_vit.ALL_BLOCKS, 0.785, 480_000, 10_000_000, 20_000_000), "instructions_per_step_m7": 300_000_000},
        {"scheme": "float32 full fine-tuning (TensorFlow)", "kind": "float32", "lr": 0.003, "test_accuracy": 0.785,
         "wall_seconds": 1.0},
    ]  # fmt: skip
    targets = train_vit.targets(rows, instructions=False)
    (t,) = targets["bsr_vs_same_blocks"]
    assert t["bsr"] == train_vit.BSR
    assert t["sram_ratio"] == pytest.approx(2.5) and t["training_macs_ratio"] == pytest.approx(22 / 8)
    assert t["accuracy_delta_points"] == pytest.approx(-1.0)  # against the best rate of the same blocks
    (a,) = targets["alast_vs_all_blocks"]
    assert a["accuracy_delta_vs_all_blocks_points"] == pytest.approx(-0.5)
    assert a["accuracy_delta_vs_float_full_points"] == pytest.approx(-0.5)
    assert a["accuracy_delta_vs_same_blocks_points"] == pytest.approx(-2.0) and "instructions_ratio" not in a
    profiled = train_vit.targets([*rows[:3], {**rows[3], "instructions_per_step_m7": 100_000_000}, *rows[4:]], False)
    assert profiled["alast_vs_all_blocks"][0]["instructions_ratio"] == pytest.approx(3.0)
    assert train_vit.targets(rows[:2], instructions=False) == {}
    text = train_vit.render({"results": [{"rows": rows}], "targets": targets})
    assert "2.50x lower peak SRAM" in text and "2.75x fewer training MACs" in text and "-1.00 points" in text
    assert "-0.50 points against float32 full fine-tuning" in text and "not profiled" in text
    assert "-0.50 points against `vit-blocks:0+1+2+3` (int8, every block)" in text
