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


def keras_mobilenetv2_variant(
    resolution: int,
    expansion: int,
    kernels: tuple[int, ...],
    seed: int = 0,
    *,
    width: float = 0.35,
    data: np.ndarray | None = None,
    activation: str = "relu6",
) -> tuple[Any, np.ndarray]:
    """A MobileNetV2-class Keras model outside the reference architecture: channels of
    MobileNetV2 at ``width`` (multiples of 8), inverted-residual expansion ``expansion``,
    depthwise kernels cycling over ``kernels``, PAD + VALID stride-2 depthwise as Keras'
    MobileNetV2, fewer repeats, a 10-class head; seeded weights and BatchNorm statistics
    estimated on ``data`` (default: seeded images). ``activation``: ``"relu6"`` (folded into
    the convs' requantization by the converter) or ``"hard_swish"`` (MobileNetV3's; the
    converter emits a HARD_SWISH op after each conv, which then has no fused activation).
    Returns ``(model, calibration images)``."""
    import keras

    if activation not in ("relu6", "hard_swish"):
        raise ValueError(f"activation must be 'relu6' or 'hard_swish', got {activation!r}")

    def bn(x: Any, relu: bool = True) -> Any:
        x = keras.layers.BatchNormalization()(x)
        if not relu:
            return x
        return keras.layers.ReLU(6.0)(x) if activation == "relu6" else keras.layers.Activation("hard_swish")(x)

    def ch(c: int) -> int:
        return max(8, int(c * width / 0.35 + 4) // 8 * 8)

    inp = keras.Input((resolution, resolution, 3), batch_size=1)
    x = bn(keras.layers.Conv2D(ch(16), 3, strides=2, padding="same", use_bias=False)(inp))
    blocks = [(1, 8, 1, 1), (expansion, 8, 2, 2), (expansion, 16, 2, 2), (expansion, 24, 2, 2),
              (expansion, 32, 1, 1), (expansion, 56, 1, 2), (expansion, 112, 1, 1)]  # fmt: skip
    b = 0
    for t, c, n, s in blocks:
        for i in range(n):
            stride, k, cin = (s if i == 0 else 1), kernels[b % len(kernels)], x.shape[-1]
            y = bn(keras.layers.Conv2D(cin * t, 1, use_bias=False)(x)) if t != 1 else x
            if stride == 2:
                y = keras.layers.ZeroPadding2D(((k // 2 - 1, k // 2), (k // 2 - 1, k // 2)))(y)
                y = keras.layers.DepthwiseConv2D(k, strides=2, padding="valid", use_bias=False)(y)
            else:
                y = keras.layers.DepthwiseConv2D(k, padding="same", use_bias=False)(y)
            y = bn(keras.layers.Conv2D(ch(c), 1, use_bias=False)(bn(y)), relu=False)
            x = keras.layers.Add()([x, y]) if stride == 1 and cin == ch(c) else y
            b += 1
    x = bn(keras.layers.Conv2D(1280, 1, use_bias=False)(x))
    x = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, x)
    seed_weights(model, seed)
    images = image_like(8, resolution, 3, seed=seed + 1) if data is None else data
    reestimate_batchnorm(model, images)
    return model, images
