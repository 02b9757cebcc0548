"""A tiny Vision Transformer in Keras, sized for microcontrollers.

Patch embedding by a strided Conv2D, a learned class token concatenated in front of
the patch tokens, a learned position embedding, pre-LayerNorm blocks
(``keras.layers.MultiHeadAttention`` and a two-layer MLP with ReLU or hard-swish),
a final LayerNorm, the class token's slice and a Dense head.

LayerNorm is written out as ``(x - mean) * rsqrt(var + eps) * gamma + beta``, which
converts to MEAN, SUB, MUL, MEAN, ADD, RSQRT, MUL (the converter folds gamma and beta
into the FULLY_CONNECTED that follows; the final LayerNorm keeps a MUL and an ADD for
them). Keras' own LayerNormalization computes ``-mean * inv``, and the converter has
no int8 NEG, so it would leave float DEQUANTIZE/NEG/QUANTIZE in every LayerNorm.

The class token is broadcast to the batch size; :func:`convert_keras` traces the model
at batch 1, so the token becomes a constant that the converter concatenates without
SHAPE/BROADCAST_TO ops, and the whole graph quantizes to int8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.models.data import image_like
from tinytrain.models.weights import seed_weights, standardize_dense

_CALIBRATION_IMAGES = 64
ACTIVATIONS = ("relu", "hard_swish")


@dataclass(frozen=True)
class TinyViTConfig:
    image_size: int = 32
    channels: int = 3
    patch: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 2
    activation: str = "hard_swish"
    classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch:
            raise ValueError(f"image size {self.image_size} is not a multiple of the patch size {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, not {self.activation!r}")
        if min(self.image_size, self.channels, self.patch, self.dim, self.depth, self.heads, self.mlp_ratio) < 1:
            raise ValueError(f"every size must be positive: {self}")

    @property
    def tokens(self) -> int:
        """Sequence length: the patches plus the class token."""
        return (self.image_size // self.patch) ** 2 + 1


def keras_tiny_vit(config: TinyViTConfig | None = None, *, data: np.ndarray | None = None) -> Any:
    """Builds the tiny ViT with seeded weights and a head standardized on ``data``
    (default: :func:`vit_calibration`) so that its logits vary across inputs."""
    import keras

    cfg = config or TinyViTConfig()
    layers = keras.layers
    inputs = keras.Input((cfg.image_size, cfg.image_size, cfg.channels), name="image")
    grid = cfg.image_size // cfg.patch
    x = layers.Conv2D(cfg.dim, cfg.patch, strides=cfg.patch, padding="valid", name="patch_embed")(inputs)
    x = layers.Reshape((grid * grid, cfg.dim), name="patch_tokens")(x)
    x = _class_token_layer(cfg.dim)(x)
    x = _position_embedding_layer(cfg.tokens, cfg.dim)(x)
    for b in range(cfg.depth):
        h = _layer_norm(f"block{b}_ln1")(x)
        h = layers.MultiHeadAttention(cfg.heads, cfg.dim // cfg.heads, name=f"block{b}_attn")(h, h)
        x = layers.Add(name=f"block{b}_res1")([x, h])
        h = _layer_norm(f"block{b}_ln2")(x)
        h = layers.Dense(cfg.dim * cfg.mlp_ratio, activation=cfg.activation, name=f"block{b}_mlp1")(h)
        h = layers.Dense(cfg.dim, name=f"block{b}_mlp2")(h)
        x = layers.Add(name=f"block{b}_res2")([x, h])
    x = _layer_norm("final_ln")(x)
    x = layers.Lambda(lambda t: t[:, 0], name="class_slice")(x)
    outputs = layers.Dense(cfg.classes, name="head")(x)
    model = keras.Model(inputs, outputs, name=f"tiny_vit_{cfg.image_size}_{cfg.dim}x{cfg.depth}")
    seed_weights(model, cfg.seed)
    images = vit_calibration(cfg) if data is None else data
    standardize_dense(model, model.get_layer("head"), images)
    return model


def vit_calibration(config: TinyViTConfig | None = None, n: int = _CALIBRATION_IMAGES) -> np.ndarray:
    """Seeded image-like calibration samples in [-1, 1] for the tiny ViT."""
    cfg = config or TinyViTConfig()
    return image_like(n, cfg.image_size, cfg.channels, seed=cfg.seed + 104729)


def _class_token_layer(dim: int) -> Any:
    import keras

    class ClassToken(keras.layers.Layer):
        """Prepends one learned token to the sequence."""

        def build(self, input_shape: Any) -> None:
            self.token = self.add_weight(shape=(1, 1, dim), initializer="zeros", name="token")

        def call(self, x: Any) -> Any:
            ops = keras.ops
            batch = ops.shape(x)[0]
            token = ops.broadcast_to(self.token, (batch, 1, dim))
            return ops.concatenate([ops.cast(token, x.dtype), x], axis=1)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return (input_shape[0], input_shape[1] + 1, input_shape[2])

    return ClassToken(name="class_token")


def _position_embedding_layer(tokens: int, dim: int) -> Any:
    import keras

    class PositionEmbedding(keras.layers.Layer):
        """Adds a learned embedding per position."""

        def build(self, input_shape: Any) -> None:
            self.embedding = self.add_weight(shape=(1, tokens, dim), initializer="zeros", name="embedding")

        def call(self, x: Any) -> Any:
            return x + keras.ops.cast(self.embedding, x.dtype)

    return PositionEmbedding(name="position_embedding")


def _layer_norm(name: str, epsilon: float = 1e-5) -> Any:
    import keras

    class LayerNorm(keras.layers.Layer):
        """LayerNorm over the last axis in int8-convertible ops."""

        def build(self, input_shape: Any) -> None:
            dim = int(input_shape[-1])
            self.gamma = self.add_weight(shape=(dim,), initializer="ones", name="gamma")
            self.beta = self.add_weight(shape=(dim,), initializer="zeros", name="beta")

        def call(self, x: Any) -> Any:
            ops = keras.ops
            centred = x - ops.mean(x, axis=-1, keepdims=True)
            var = ops.mean(centred * centred, axis=-1, keepdims=True)
            return centred * ops.rsqrt(var + epsilon) * self.gamma + self.beta

    return LayerNorm(name=name)
