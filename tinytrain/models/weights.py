"""Seeded weights and data-driven statistics for untrained Keras test models.

A network with random weights quantizes badly: activations drift layer after layer
until they saturate or collapse to a constant, and the int8 model then outputs the
same bytes for every input, which tests nothing. Three steps avoid that:

* :func:`seed_weights` draws every variable from a seeded generator (He-scaled
  kernels with unequal per-channel magnitudes, mostly positive depthwise filters,
  non-zero biases, BatchNorm gammas and betas around 1 and 0), independent of Keras'
  own initializer seeds;
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
    """Overwrites every variable of ``model`` with seeded values chosen by its role."""
    import keras

    depthwise = {id(layer.kernel) for layer in _all_layers(model) if isinstance(layer, keras.layers.DepthwiseConv2D)}
    for index, var in enumerate(model.weights):
        path = str(getattr(var, "path", var.name))
        shape = tuple(int(d) for d in var.shape)
        rng = np.random.default_rng([seed, index, zlib.crc32(path.encode())])
        if id(var) in depthwise:
            value = _depthwise_kernel(shape, rng)
        else:
            value = _initial_value(path, shape, rng)
        var.assign(value.astype(np.float32))


def _depthwise_kernel(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """(kh, kw, channels, multiplier) filters that are mostly positive (blur-like, as
    trained depthwise filters mostly are), with one tap in five negated.

    Zero-mean random depthwise filters make a deep BN network chaotic: a perturbation
    of half an int8 step at the input changes MobileNetV2's logits completely (their
    correlation drops to ~0.5), so the int8 model's outputs would be noise around the
    float model's. Mostly positive filters keep it ordered (correlation > 0.99).
    """
    fan_in = max(1, shape[0] * shape[1])
    value = np.abs(rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape))
    value *= np.where(rng.uniform(size=shape) < 0.2, -1.0, 1.0)
    return value * rng.uniform(0.5, 1.5, size=shape[-2:])  # unequal per-channel ranges


def _initial_value(path: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "moving_mean":
        return np.zeros(shape)
    if leaf == "moving_variance":
        return np.ones(shape)
    if leaf == "gamma":
        return rng.uniform(0.6, 1.4, size=shape)
    if leaf in ("beta", "bias"):
        return rng.normal(0.0, 0.1, size=shape)
    if leaf == "kernel":
        value = rng.normal(0.0, np.sqrt(2.0 / _fan_in(path, shape)), size=shape)
        return value * rng.uniform(0.5, 1.5, size=shape[-1:])  # unequal per-channel ranges
    return rng.normal(0.0, 0.2, size=shape)  # embeddings, tokens and other learned tensors


def _fan_in(path: str, shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return max(1, shape[0] if shape else 1)
    parts = path.split("/")
    if len(shape) == 3 and any(p in ("query", "key", "value") for p in parts):
        return shape[0]  # attention projection kernel (dim, heads, head_dim)
    return max(1, int(np.prod(shape[:-1])))


def reestimate_batchnorm(model: Any, data: np.ndarray) -> int:
    """Sets every BatchNormalization's moving mean and variance to the statistics of
    its input on ``data``, layer by layer, and returns how many BN layers it set.

    ``data`` is used as one batch (a few dozen to a few hundred samples: the whole
    batch's activations are held in memory). One forward pass in training mode, with
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
