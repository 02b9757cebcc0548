"""Regenerates the small models shipped in ``tinytrain/data/`` (deterministic, seeded).

    python -m tinytrain.models.ship

* ``mbv2-w0.35-96-int8.tflite``: Keras MobileNetV2 alpha 0.35, 96×96×3, 10 classes,
  seeded weights with BatchNorm statistics re-estimated on image-like data, converted
  to full int8 with the TFLite converter.
* ``mcunet-synthetic.pkl``: a tiny-training-format checkpoint (first 5 MobileNetV2-w0.35
  blocks at 48×48, 10 classes, with dead channels), made by
  :func:`tinytrain.frontends.mcunet_synthetic.make_synthetic_checkpoint`.

The models have random (seeded) weights: they demonstrate and test the pipeline, they
classify nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MBV2 = "mbv2-w0.35-96-int8.tflite"
CHECKPOINT = "mcunet-synthetic.pkl"


def shipped(name: str) -> Path:
    """Path of a shipped model file."""
    return DATA_DIR / name


def make_mbv2(path: Path) -> None:
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.mobilenetv2 import keras_mobilenetv2, mobilenetv2_calibration

    model = keras_mobilenetv2(alpha=0.35, resolution=96, classes=10, seed=0)
    path.write_bytes(convert_keras(model, mobilenetv2_calibration(96, n=32)))


def make_checkpoint(path: Path) -> None:
    from tinytrain.frontends.mcunet_synthetic import make_synthetic_checkpoint

    make_synthetic_checkpoint(path, width=0.35, resolution=48, num_classes=10, seed=0, num_blocks=5)


def main() -> int:
    ap = argparse.ArgumentParser(description="regenerate tinytrain's shipped models")
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_mbv2(args.out / MBV2)
    make_checkpoint(args.out / CHECKPOINT)
    for name in (MBV2, CHECKPOINT):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
