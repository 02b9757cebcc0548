"""The pretrained tiny ViT tinytrain ships: :class:`~tinytrain.models.vit.TinyViTConfig` (32×32×3,
patch 4, dim 64, 4 blocks, 4 heads, hard-swish MLP) trained on Fashion-MNIST 0–4.

    python -m tinytrain.models.pretrain_vit [--out DIR] [--per-class N] [--epochs E] [--seed S]

writes ``vit-d64-32-fmnist04-int8.tflite`` (and its provenance ``vit-d64-32-fmnist04-int8.json``)
to ``tinytrain/data/``: the ViT twin of :mod:`tinytrain.models.pretrain` (same source task, same
sample order, same integer preprocessing, here to 32×32), the backbone that the ViT training
schemes (``vit-last:K``, ``bsr:…``) fine-tune on all ten classes.

**Recipe.** :func:`~tinytrain.models.vit.keras_tiny_vit` with a 5-class logits head, trained in
float32 from its seeded initial weights on the first ``per_class`` = 2,000 training images of
each class (file order), ``epochs`` = 10, batch 32, AdamW (weight decay 0.05) with a learning
rate cosine-decayed from 0.001; augmentation: a horizontal flip of every other batch (seeded,
deterministic; Fashion-MNIST garments are left-right symmetric). Inputs as on the device: the
integer bilinear resize 28×28 → 32×32, grey replicated to 3 channels, ``x = p/127.5 − 1``.
Converted to full int8 by :func:`tinytrain.frontends.keras_convert.convert_keras` (int8 input
and output) with 128 training images as calibration set.

**Reported.** Float accuracy on the source task's 5,000 test images, and the int8 model's
accuracy on the same images through tinytrain's bit-exact simulator with the integer
preprocessing (what the device computes). The figures of the shipped file are in its ``.json``.

**Reproducibility.** As :mod:`tinytrain.models.pretrain`: seeded Keras/TF/numpy, xorshift32
sample order, TF op determinism, 2 intra-op threads; the ``.tflite`` bytes can differ slightly
on other machines or TensorFlow versions (TF's CPU kernels may sum in other orders).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.models.pretrain import (
    CALIBRATION_SAMPLES,
    SOURCE_CLASSES,
    Recipe,
    configure_tensorflow,
    float_accuracy,
    run_cli,
    to_float_input,
    train,
    write_shipped,
)
from tinytrain.train.data import FASHION_MNIST, epoch_order, first_per_class, load_dataset, select_classes

MODEL_NAME = "vit-d64-32-fmnist04-int8.tflite"
WEIGHT_DECAY = 0.05


def vit_config(seed: int) -> Any:
    from tinytrain.models.vit import TinyViTConfig

    return TinyViTConfig(classes=len(SOURCE_CLASSES), seed=seed)


def flip_every_other(images: np.ndarray, step: int) -> np.ndarray:
    """Horizontal flip of the odd batches (uint8 ``[N, H, W]``): deterministic augmentation."""
    return images[:, :, ::-1] if step % 2 else images


def pretrain(
    out_dir: Path, *, per_class: int, epochs: int, seed: int, lr: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Trains, converts and writes the tiny ViT; returns the provenance record."""
    import keras

    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.vit import keras_tiny_vit

    t_start = time.time()
    configure_tensorflow(seed)
    cfg = vit_config(seed)
    train_ds = first_per_class(select_classes(load_dataset(FASHION_MNIST, "train"), SOURCE_CLASSES), per_class)
    test_ds = select_classes(load_dataset(FASHION_MNIST, "test"), SOURCE_CLASSES)
    log(f"training on {len(train_ds)} images ({per_class}/class), {epochs} epochs; testing on {len(test_ds)}")
    calib = to_float_input(train_ds.images[epoch_order(len(train_ds), seed + 1, 0)[:CALIBRATION_SAMPLES]], 32)
    model = keras_tiny_vit(cfg, data=calib)

    def adamw(schedule: Any) -> Any:
        return keras.optimizers.AdamW(schedule, weight_decay=WEIGHT_DECAY)

    train(
        model, train_ds, epochs=epochs, seed=seed, lr=lr, log=log, resolution=cfg.image_size,
        optimizer=adamw, augment=flip_every_other,
    )  # fmt: skip
    t_train = time.time() - t_start
    acc_float = float_accuracy(model, test_ds, resolution=cfg.image_size)
    log(f"float accuracy on classes 0-4 (test): {acc_float:.4f}")
    recipe = Recipe(
        model=MODEL_NAME,
        architecture=(
            f"tinytrain.models.vit.keras_tiny_vit: {cfg.image_size}x{cfg.image_size}x{cfg.channels}, "
            f"patch {cfg.patch}, "
            f"dim {cfg.dim}, {cfg.depth} blocks, {cfg.heads} heads, MLP x{cfg.mlp_ratio} {cfg.activation}, "
            f"{cfg.tokens} tokens, logits head"
        ),
        optimizer=f"AdamW (weight decay {WEIGHT_DECAY}), cosine-decayed lr from {lr}",
        augmentation="horizontal flip of every other batch",
    )
    return write_shipped(out_dir, convert_keras(model, calib), recipe, train_ds, test_ds, per_class, epochs, seed,
                         acc_float, t_train, t_start, log)  # fmt: skip


def main() -> int:
    return run_cli("train and convert tinytrain's shipped Fashion-MNIST 0-4 tiny ViT", 10, 1e-3, pretrain)


if __name__ == "__main__":
    raise SystemExit(main())
