"""Keras MobileNetV2 with seeded weights and data-estimated BatchNorm statistics."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytrain.models.data import image_like
from tinytrain.models.weights import reestimate_batchnorm, seed_weights, standardize_dense

_CALIBRATION_IMAGES = 64


def keras_mobilenetv2(
    alpha: float = 0.35,
    resolution: int = 128,
    classes: int = 10,
    seed: int = 0,
    *,
    data: np.ndarray | None = None,
    softmax: bool = True,
) -> Any:
    """``keras.applications.MobileNetV2`` (no pretrained weights) with seeded weights,
    BatchNorm statistics re-estimated on ``data`` (default: seeded smooth images, see
    :func:`mobilenetv2_calibration`) and a head standardized so its logits vary."""
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=(resolution, resolution, 3),
        alpha=alpha,
        include_top=True,
        weights=None,
        classes=classes,
        classifier_activation="softmax" if softmax else None,
        name=f"mobilenetv2_{alpha:g}_{resolution}".replace(".", "_"),
    )
    seed_weights(model, seed)
    images = mobilenetv2_calibration(resolution, seed=seed) if data is None else data
    reestimate_batchnorm(model, images)
    standardize_dense(model, model.layers[-1], images)
    return model


def mobilenetv2_calibration(resolution: int, n: int = _CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """Seeded image-like calibration samples in [-1, 1] (MobileNetV2's input range)."""
    return image_like(n, resolution, 3, seed=seed + 7919)
