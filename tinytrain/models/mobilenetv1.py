"""A MobileNet-v1-style CNN that exercises ops MobileNetV2 does not: explicit
symmetric PAD (PyTorch-style, not foldable into SAME padding), TRANSPOSE, a
squeeze-excite MUL with LOGISTIC gate, LEAKY_RELU, AVERAGE_POOL_2D and MAX_POOL_2D."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytrain.models.data import image_like
from tinytrain.models.weights import reestimate_batchnorm, seed_weights, standardize_dense

_CALIBRATION_IMAGES = 64


def keras_mobilenetv1_style(
    resolution: int = 64, width: int = 16, classes: int = 10, seed: int = 0, *, data: np.ndarray | None = None
) -> Any:
    """Builds the model with seeded weights, BatchNorm statistics re-estimated on
    ``data`` (default :func:`mobilenetv1_calibration`) and a standardized head."""
    import keras

    L = keras.layers
    inputs = keras.Input((resolution, resolution, 3), name="image")
    # Stem: symmetric padding then a VALID stride-2 conv (stays an explicit PAD).
    x = L.ZeroPadding2D(((1, 1), (1, 1)), name="stem_pad")(inputs)
    x = L.Conv2D(width, 3, strides=2, padding="valid", use_bias=False, name="stem_conv")(x)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu6")(x)
    x = _separable(L, x, width * 2, stride=1, name="sep1", act="relu")
    x = _separable(L, x, width * 4, stride=2, name="sep2", act="relu6")
    # Spatial transpose (H <-> W): a TRANSPOSE the converter cannot fold.
    x = L.Permute((2, 1, 3), name="transpose_hw")(x)
    x = _separable(L, x, width * 4, stride=1, name="sep3", act="leaky")
    x = _squeeze_excite(L, x, name="se")
    x = L.MaxPooling2D(2, name="max_pool")(x)
    x = _separable(L, x, width * 8, stride=2, name="sep4", act="relu6")
    x = L.AveragePooling2D(2, name="avg_pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(classes, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name=f"mobilenetv1_style_{resolution}")
    seed_weights(model, seed)
    images = mobilenetv1_calibration(resolution, seed=seed) if data is None else data
    reestimate_batchnorm(model, images)
    standardize_dense(model, model.get_layer("head"), images)
    return model


def mobilenetv1_calibration(resolution: int = 64, n: int = _CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    return image_like(n, resolution, 3, seed=seed + 15485863)


def _separable(L: Any, x: Any, filters: int, *, stride: int, name: str, act: str) -> Any:
    if stride == 1:
        x = L.DepthwiseConv2D(3, padding="same", use_bias=False, name=f"{name}_dw")(x)
    else:
        x = L.ZeroPadding2D(((1, 1), (1, 1)), name=f"{name}_pad")(x)
        x = L.DepthwiseConv2D(3, strides=stride, padding="valid", use_bias=False, name=f"{name}_dw")(x)
    x = L.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = _act(L, x, act, f"{name}_dw_act")
    x = L.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = L.BatchNormalization(name=f"{name}_pw_bn")(x)
    return _act(L, x, act, f"{name}_pw_act")


def _act(L: Any, x: Any, act: str, name: str) -> Any:
    if act == "relu":
        return L.ReLU(name=name)(x)
    if act == "relu6":
        return L.ReLU(6.0, name=name)(x)
    return L.LeakyReLU(negative_slope=0.1, name=name)(x)


def _squeeze_excite(L: Any, x: Any, name: str) -> Any:
    channels = int(x.shape[-1])
    s = L.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = L.Conv2D(max(4, channels // 4), 1, activation="relu", name=f"{name}_reduce")(s)
    s = L.Conv2D(channels, 1, activation="sigmoid", name=f"{name}_expand")(s)
    return L.Multiply(name=f"{name}_scale")([x, s])
