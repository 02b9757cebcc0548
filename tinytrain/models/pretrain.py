"""The pretrained model tinytrain ships: MobileNetV2-w0.35 @128 trained on Fashion-MNIST 0–4.

    python -m tinytrain.models.pretrain [--out DIR] [--per-class N] [--epochs E] [--seed S]

writes ``mbv2-w0.35-128-fmnist04-int8.tflite`` (and its provenance,
``mbv2-w0.35-128-fmnist04-int8.json``) to ``tinytrain/data/``.

**Source task.** Fashion-MNIST classes 0–4 (T-shirt/top, Trouser, Pullover, Dress,
Coat); the device later learns classes 5–9 (or all ten) as the transfer task.

**Recipe.** ``keras.applications.MobileNetV2(alpha=0.35, weights=None)`` at 128×128×3
with a 5-class logits head (no softmax), trained in float32 from scratch on a balanced
subset (the first ``per_class`` = 2,000 training images of each class, file order),
2 epochs, batch 32, Adam with a learning rate cosine-decayed from 0.002, BatchNorm
momentum 0.9. (Measured with TF 2.21 on 2 CPU cores shared with other jobs:
5.6–9.3 min of training, 7.7–11.3 min in all; float accuracy 87.8 %, int8 87.8 %;
639 KB.) The inputs are made
exactly as on the device (:mod:`tinytrain.train.data`): the integer bilinear resize
28×28 → 128×128, grey replicated to 3 channels, then ``x = p/127.5 − 1`` (the float
version of the int8 lookup table). The sample order is :func:`tinytrain.train.data.epoch_order`.
After training, every BatchNorm's moving statistics are re-estimated on 256 training
images, then the model is converted to full int8 by
:func:`tinytrain.frontends.keras_convert.convert_keras` (int8 input and output) with
128 training images as calibration set.

**Reported.** Float accuracy on the source task's test images (all 5,000), and the
int8 model's accuracy on the same images run through tinytrain's bit-exact simulator
with the integer preprocessing (what the device computes).

**Reproducibility.** Seeds: Keras/TF/numpy (``keras.utils.set_random_seed``), the
sample order (xorshift32), TF op determinism on, 2 intra-op threads. The data subset,
sample order, preprocessing and initial weights are bit-reproducible; the trained
float weights are reproducible on the same machine type, TensorFlow version and thread
count (two runs on the development machine wrote identical ``.tflite`` bytes), but
TF's CPU kernels (oneDNN) may pick different summation orders elsewhere, so the
``.tflite`` bytes can differ slightly between machines (accuracy within noise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.train.data import (
    FASHION_MNIST,
    Dataset,
    ResizeAxis,
    epoch_order,
    first_per_class,
    load_dataset,
    resize_bilinear_u8,
    select_classes,
)

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MODEL_NAME = "mbv2-w0.35-128-fmnist04-int8.tflite"
SOURCE_CLASSES = (0, 1, 2, 3, 4)
RESOLUTION = 128
ALPHA = 0.35
BATCH = 32
BN_MOMENTUM = 0.9
BN_SAMPLES = 256
CALIBRATION_SAMPLES = 128


def to_float_input(images: np.ndarray, resolution: int = RESOLUTION) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` → float32 ``[N, R, R, 3]`` in [−1, 1]: the integer resize of
    :mod:`tinytrain.train.data`, grey → 3 channels, ``p/127.5 − 1``."""
    _, h, w = images.shape
    resized = resize_bilinear_u8(images, ResizeAxis.make(h, resolution), ResizeAxis.make(w, resolution))
    x = resized.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.repeat(x[..., None], 3, axis=3)


def build_model(seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(
        input_shape=(RESOLUTION, RESOLUTION, 3),
        alpha=ALPHA,
        include_top=True,
        weights=None,
        classes=len(SOURCE_CLASSES),
        classifier_activation=None,
        name="mbv2_w035_128_fmnist04",
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM
    return model


def train(
    model: Any,
    ds: Dataset,
    *,
    epochs: int,
    seed: int,
    lr: float,
    log: Callable[[str], None],
    resolution: int = RESOLUTION,
    optimizer: Callable[[Any], Any] | None = None,
    augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
) -> None:
    """Mini-batch training in the sample order of :func:`epoch_order`; ``optimizer`` maps the
    learning-rate schedule to a Keras optimizer (default Adam), ``augment(images, step)``
    transforms each uint8 batch before preprocessing (default none)."""
    import keras

    steps_per_epoch = -(-len(ds) // BATCH)
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, epochs * steps_per_epoch))
    model.compile(
        optimizer=keras.optimizers.Adam(schedule) if optimizer is None else optimizer(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=False,
    )
    t0 = time.time()
    for epoch in range(epochs):
        order = epoch_order(len(ds), seed, epoch)
        loss_sum = acc_sum = 0.0
        for k, start in enumerate(range(0, len(order), BATCH)):
            idx = order[start : start + BATCH]
            images = ds.images[idx] if augment is None else augment(ds.images[idx], epoch * steps_per_epoch + k)
            loss, acc = model.train_on_batch(to_float_input(images, resolution), ds.labels[idx])
            loss_sum += float(loss)
            acc_sum += float(acc)
            if (k + 1) % 50 == 0 or start + BATCH >= len(order):
                log(
                    f"epoch {epoch + 1}/{epochs} step {k + 1}/{steps_per_epoch}: mean loss {loss_sum / (k + 1):.3f}, "
                    f"mean train accuracy {acc_sum / (k + 1):.3f} ({time.time() - t0:.0f} s)"
                )


def float_accuracy(model: Any, ds: Dataset, batch: int = 100, resolution: int = RESOLUTION) -> float:
    correct = 0
    for start in range(0, len(ds), batch):
        logits = np.asarray(model(to_float_input(ds.images[start : start + batch], resolution), training=False))
        correct += int(np.sum(np.argmax(logits, axis=1) == ds.labels[start : start + batch]))
    return correct / len(ds)


def int8_accuracy(model_bytes: bytes, ds: Dataset) -> float:
    from tinytrain.frontends.tflite import load_tflite
    from tinytrain.sim.forward import Simulator
    from tinytrain.train.data import preprocess_for_graph

    graph = load_tflite(model_bytes)
    prep = preprocess_for_graph(graph, ds.sample_shape)
    sim = Simulator(graph)
    correct = 0
    for start in range(0, len(ds), 250):
        (logits,) = sim.run([prep(ds.images[start : start + 250])])
        correct += int(np.sum(np.argmax(logits.astype(np.int32), axis=1) == ds.labels[start : start + 250]))
    return correct / len(ds)


def configure_tensorflow(seed: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)


def pretrain(
    out_dir: Path, *, per_class: int, epochs: int, seed: int, lr: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Trains, converts and writes the model; returns the provenance record."""
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.weights import reestimate_batchnorm

    t_start = time.time()
    configure_tensorflow(seed)
    train_all = load_dataset(FASHION_MNIST, "train")
    test_all = load_dataset(FASHION_MNIST, "test")
    train_ds = first_per_class(select_classes(train_all, SOURCE_CLASSES), per_class)
    test_ds = select_classes(test_all, SOURCE_CLASSES)
    log(f"training on {len(train_ds)} images ({per_class}/class), {epochs} epochs; testing on {len(test_ds)}")

    model = build_model(seed)
    train(model, train_ds, epochs=epochs, seed=seed, lr=lr, log=log)
    t_train = time.time() - t_start
    reestimate_batchnorm(model, to_float_input(train_ds.images[epoch_order(len(train_ds), seed, epochs)[:BN_SAMPLES]]))
    acc_float = float_accuracy(model, test_ds)
    log(f"float accuracy on classes 0-4 (test): {acc_float:.4f}")

    calib_idx = epoch_order(len(train_ds), seed + 1, 0)[:CALIBRATION_SAMPLES]
    model_bytes = convert_keras(model, to_float_input(train_ds.images[calib_idx]))
    recipe = Recipe(
        model=MODEL_NAME,
        architecture=f"keras.applications.MobileNetV2(alpha={ALPHA}, {RESOLUTION}x{RESOLUTION}x3, logits head)",
        optimizer=f"Adam, cosine-decayed lr from {lr}",
    )
    return write_shipped(out_dir, model_bytes, recipe, train_ds, test_ds, per_class, epochs, seed, acc_float,
                         t_train, t_start, log)  # fmt: skip


@dataclass(frozen=True)
class Recipe:
    """How a shipped model was made, in words, for its provenance record."""

    model: str  # file name under tinytrain/data/
    architecture: str
    optimizer: str
    augmentation: str | None = None


def write_shipped(
    out_dir: Path,
    model_bytes: bytes,
    recipe: Recipe,
    train_ds: Dataset,
    test_ds: Dataset,
    per_class: int,
    epochs: int,
    seed: int,
    acc_float: float,
    t_train: float,
    t_start: float,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Writes the converted model and its provenance ``.json`` (with the int8 accuracy through
    tinytrain's simulator and integer preprocessing); returns the record."""
    from tinytrain.frontends.keras_convert import tensorflow_version

    path = out_dir / recipe.model
    path.write_bytes(model_bytes)
    acc_int8 = int8_accuracy(model_bytes, test_ds)
    log(f"int8 accuracy (tinytrain simulator, integer preprocessing): {acc_int8:.4f}")
    record: dict[str, Any] = {
        "model": recipe.model,
        "architecture": recipe.architecture,
        "source_task": "fashion-mnist classes 0-4 (T-shirt/top, Trouser, Pullover, Dress, Coat)",
        "train_images": len(train_ds),
        "per_class": per_class,
        "epochs": epochs,
        "batch": BATCH,
        "optimizer": recipe.optimizer,
    }
    if recipe.augmentation is not None:
        record["augmentation"] = recipe.augmentation
    record |= {
        "seed": seed,
        "test_images": len(test_ds),
        "float_test_accuracy": round(acc_float, 4),
        "int8_test_accuracy": round(acc_int8, 4),
        "bytes": len(model_bytes),
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "tensorflow": tensorflow_version(),
        "train_seconds": round(t_train, 1),
        "total_seconds": round(time.time() - t_start, 1),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run_cli(description: str, epochs: int, lr: float, make: Callable[..., dict[str, Any]]) -> int:
    """The command line of a pretraining script: ``make`` is its ``pretrain`` function."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    ap.add_argument("--per-class", type=int, default=2000, help="training images per class (default 2000)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    record = make(args.out, per_class=args.per_class, epochs=args.epochs, seed=args.seed, lr=args.lr, log=print)
    print(json.dumps(record, indent=2))
    return 0


def main() -> int:
    return run_cli("train and convert tinytrain's shipped Fashion-MNIST 0-4 MobileNetV2", 2, 2e-3, pretrain)


if __name__ == "__main__":
    raise SystemExit(main())
