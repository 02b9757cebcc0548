"""A small detection-style CNN with two outputs: a two-scale backbone, a nearest
upsampling (RESIZE_NEAREST_NEIGHBOR) and CONCATENATION neck, per-scale heads whose
maps are RESHAPEd to anchor lists and concatenated, boxes and LOGISTIC scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytrain.models.data import image_like
from tinytrain.models.weights import reestimate_batchnorm, seed_weights

_CALIBRATION_IMAGES = 64


def keras_tiny_detector(
    resolution: int = 64, classes: int = 3, anchors: int = 2, seed: int = 0, *, data: np.ndarray | None = None
) -> Any:
    """Outputs ``boxes`` ``(1, n, 4)`` and ``scores`` ``(1, n, classes)`` (sigmoid), with
    ``n`` = anchors × (cells of the stride-8 map + cells of the stride-16 map)."""
    import keras

    L = keras.layers
    inputs = keras.Input((resolution, resolution, 3), name="image")
    x = _conv_bn(L, inputs, 8, 3, 2, "c1")
    x = _conv_bn(L, x, 16, 3, 2, "c2")
    c3 = _conv_bn(L, x, 24, 3, 2, "c3")  # stride 8
    c4 = _conv_bn(L, c3, 32, 3, 2, "c4")  # stride 16
    # Keras' UpSampling2D lowers to EXPAND_DIMS/TILE; Resizing gives RESIZE_NEAREST_NEIGHBOR.
    size = (int(c3.shape[1]), int(c3.shape[2]))
    up = L.Resizing(*size, interpolation="nearest", name="up")(_conv_bn(L, c4, 24, 1, 1, "lateral"))
    p3 = L.Concatenate(name="fuse")([c3, up])
    p3 = _conv_bn(L, p3, 24, 3, 1, "p3")
    boxes, scores = [], []
    for level, feat in (("p3", p3), ("p4", c4)):
        box = L.Conv2D(anchors * 4, 1, name=f"{level}_box")(feat)
        boxes.append(L.Reshape((-1, 4), name=f"{level}_box_list")(box))
        cls = L.Conv2D(anchors * classes, 1, name=f"{level}_cls")(feat)
        scores.append(L.Reshape((-1, classes), name=f"{level}_cls_list")(cls))
    out_boxes = L.Concatenate(axis=1, name="boxes")(boxes)
    out_scores = L.Activation("sigmoid", name="scores")(L.Concatenate(axis=1, name="cls_all")(scores))
    model = keras.Model(inputs, [out_boxes, out_scores], name=f"tiny_detector_{resolution}")
    seed_weights(model, seed)
    images = detector_calibration(resolution, seed=seed) if data is None else data
    reestimate_batchnorm(model, images)
    return model


def detector_calibration(resolution: int = 64, n: int = _CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    return image_like(n, resolution, 3, seed=seed + 32452843)


def _conv_bn(L: Any, x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = L.BatchNormalization(name=f"{name}_bn")(x)
    return L.ReLU(6.0, name=f"{name}_relu6")(x)
