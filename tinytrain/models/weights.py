"""Seeded weights and data-driven statistics for untrained Keras test models.

A network with random weights quantizes badly: activations drift layer after layer
until they saturate or collapse to a constant, and the int8 model then outputs the
same bytes for every input, which tests nothing. Three steps avoid that:

* :func:`seed_weights` draws every variable from a seeded generator (He-scaled
  kernels with unequal per-channel magnitudes, non-zero biases, BatchNorm gammas and
  betas around 1 and 0), independent of Keras' own initializer seeds;
* :func:`reestimate_batchnorm` sets each BatchNormalization's moving mean and variance
  to the statistics of its input on real-looking data, one layer after another, so
  every BN output is normalized as in a trained network;
* :func:`standardize_dense` rescales a (classifier) Dense layer so that its outputs
  vary across the data with a chosen spread and zero mean.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np

_BATCH = 32


def seed_weights(model: Any, seed: int) -> None:
    """Overwrites every variable of ``model`` with seeded values chosen by its name."""
    for index, var in enumerate(model.weights):
        path = str(getattr(var, "path", var.name))
        shape = tuple(int(d) for d in var.shape)
        rng = np.random.default_rng([seed, index, zlib.crc32(path.encode())])
        var.assign(_initial_value(path, shape, rng))


def _initial_value(path: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "moving_mean":
        value = np.zeros(shape)
    elif leaf == "moving_variance":
        value = np.ones(shape)
    elif leaf == "gamma":
        value = rng.uniform(0.6, 1.4, size=shape)
    elif leaf in ("beta", "bias"):
        value = rng.normal(0.0, 0.1, size=shape)
    elif leaf in ("kernel", "depthwise_kernel"):
        value = rng.normal(0.0, np.sqrt(2.0 / _fan_in(path, shape)), size=shape)
        value *= rng.uniform(0.5, 1.5, size=shape[-1:])  # unequal per-channel ranges
    else:  # embeddings, tokens and other learned tensors
        value = rng.normal(0.0, 0.2, size=shape)
    return value.astype(np.float32)


def _fan_in(path: str, shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return max(1, shape[0] if shape else 1)
    if path.endswith("depthwise_kernel"):
        return max(1, int(np.prod(shape[:-2])))
    parts = path.split("/")
    if len(shape) == 3 and any(p in ("query", "key", "value") for p in parts):
        return shape[0]  # attention projection kernel (dim, heads, head_dim)
    return max(1, int(np.prod(shape[:-1])))


def reestimate_batchnorm(model: Any, data: np.ndarray) -> int:
    """Sets every BatchNormalization's moving mean and variance to the statistics of
    its input on ``data``, layer by layer, and returns how many BN layers it set.

    One forward pass in training mode over the whole of ``data`` as a single batch, with
    every BN's momentum at 0: each BN normalizes with (and stores) the batch statistics
    of its input, and that input already reflects the re-estimated BNs before it. (The
    model must have no other layer that behaves differently in training, e.g. Dropout.)
    """
    import keras

    layers = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0
        model(data, training=True)
    finally:
        for layer, momentum in zip(layers, saved, strict=True):
            layer.momentum = momentum
    return len(layers)


def _all_layers(model: Any) -> list[Any]:
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        if hasattr(layer, "layers"):
            out.extend(_all_layers(layer))
    return out


def standardize_dense(model: Any, layer: Any, data: np.ndarray, spread: float = 2.0, batch_size: int = _BATCH) -> None:
    """Rescales ``layer`` (a Dense with bias) so that, on ``data``, each output unit has
    mean 0 and standard deviation ``spread`` (before any activation of the layer)."""
    import keras

    probe = keras.Model(model.input, layer.input)
    feats = _collect(probe, data, batch_size)
    feats = feats.reshape(-1, feats.shape[-1]).astype(np.float64)
    kernel = np.asarray(layer.kernel.numpy(), dtype=np.float64)
    centred = (feats - feats.mean(axis=0)) @ kernel
    std = centred.std(axis=0)
    scale = spread / np.maximum(std, 1e-6)
    kernel = kernel * scale
    bias = -(feats.mean(axis=0) @ kernel)
    layer.kernel.assign(kernel.astype(np.float32))
    layer.bias.assign(bias.astype(np.float32))


def _collect(probe: Any, data: np.ndarray, batch_size: int) -> np.ndarray:
    outs = [np.asarray(probe(data[i : i + batch_size], training=False)) for i in range(0, len(data), batch_size)]
    return np.concatenate(outs, axis=0)
