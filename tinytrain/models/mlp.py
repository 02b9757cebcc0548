"""A small multilayer perceptron on feature vectors (FULLY_CONNECTED, TANH, SOFTMAX)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tinytrain.models.data import vector_like
from tinytrain.models.weights import seed_weights, standardize_dense

_CALIBRATION_SAMPLES = 128


def keras_mlp(
    features: int = 64,
    hidden: tuple[int, ...] = (96, 48),
    classes: int = 10,
    seed: int = 0,
    *,
    data: np.ndarray | None = None,
) -> Any:
    """Dense layers with ReLU (the last hidden one with tanh), seeded weights, every
    Dense standardized on ``data`` (default :func:`mlp_calibration`), softmax output."""
    import keras

    L = keras.layers
    inputs = keras.Input((features,), name="features")
    x = inputs
    dense = []
    for i, units in enumerate(hidden):
        layer = L.Dense(units, activation="tanh" if i == len(hidden) - 1 else "relu", name=f"dense{i}")
        dense.append(layer)
        x = layer(x)
    head = L.Dense(classes, activation="softmax", name="head")
    outputs = head(x)
    model = keras.Model(inputs, outputs, name=f"mlp_{features}")
    seed_weights(model, seed)
    samples = mlp_calibration(features, seed=seed) if data is None else data
    for layer in [*dense, head]:  # in order: each sees the already standardized ones
        standardize_dense(model, layer, samples, spread=1.5)
    return model


def mlp_calibration(features: int = 64, n: int = _CALIBRATION_SAMPLES, seed: int = 0) -> np.ndarray:
    return vector_like(n, features, seed=seed + 49979687)
