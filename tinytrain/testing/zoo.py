"""Whole converter-made int8 models for tests and benchmarks, cached on disk.

Every builder takes a cache directory and its parameters, and returns ``.tflite``
bytes. A model is built once per cache key (builder name + parameters + recipe
version + TensorFlow version): Keras model with seeded weights and data-estimated
statistics (:mod:`tinytrain.models`), converted by
:func:`tinytrain.frontends.keras_convert.convert_keras` on seeded calibration data,
written to ``<cache_dir>/<key>.tflite`` with a ``<key>.json`` sidecar recording
the op list and the build and conversion times.

:data:`ZOO` names the standard set (MobileNetV2-w0.35 at 96 and 128, a float-I/O
MobileNetV2, the tiny ViT, and three "unseen-style" models); :func:`sample_inputs`
gives float test inputs from the same distribution as the calibration data, but
other samples.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.frontends.keras_convert import tensorflow_version

# Bump when a model recipe changes, so cached models are rebuilt.
RECIPE_VERSION = 3


def mobilenetv2(
    cache_dir: str | Path,
    *,
    alpha: float = 0.35,
    resolution: int = 128,
    classes: int = 10,
    int8_io: bool = True,
    seed: int = 0,
) -> bytes:
    """``keras.applications.MobileNetV2`` (seeded, BN re-estimated), int8 or float I/O."""

    def make() -> tuple[Any, np.ndarray]:
        from tinytrain.models.mobilenetv2 import keras_mobilenetv2, mobilenetv2_calibration

        return keras_mobilenetv2(alpha, resolution, classes, seed), mobilenetv2_calibration(resolution, seed=seed)

    key = _key("mobilenetv2", alpha=alpha, res=resolution, classes=classes, int8io=int8_io, seed=seed)
    return _cached(cache_dir, key, make, int8_io=int8_io)


def tiny_vit(cache_dir: str | Path, config: Any = None) -> bytes:
    """The tiny ViT of :mod:`tinytrain.models.vit` (default :class:`TinyViTConfig`)."""
    from tinytrain.models.vit import TinyViTConfig

    cfg = config or TinyViTConfig()

    def make() -> tuple[Any, np.ndarray]:
        from tinytrain.models.vit import keras_tiny_vit, vit_calibration

        return keras_tiny_vit(cfg), vit_calibration(cfg)

    key = _key(
        "tiny_vit",
        img=cfg.image_size,
        ch=cfg.channels,
        patch=cfg.patch,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        mlp=cfg.mlp_ratio,
        act=cfg.activation,
        classes=cfg.classes,
        seed=cfg.seed,
    )
    return _cached(cache_dir, key, make)


def mobilenetv1_style(cache_dir: str | Path, *, resolution: int = 64, classes: int = 10, seed: int = 0) -> bytes:
    """MobileNet-v1-style CNN with explicit PAD, TRANSPOSE, SE-style MUL/LOGISTIC."""

    def make() -> tuple[Any, np.ndarray]:
        from tinytrain.models.mobilenetv1 import keras_mobilenetv1_style, mobilenetv1_calibration

        return keras_mobilenetv1_style(resolution, classes=classes, seed=seed), mobilenetv1_calibration(
            resolution, seed=seed
        )

    return _cached(cache_dir, _key("mobilenetv1_style", res=resolution, classes=classes, seed=seed), make)


def tiny_detector(cache_dir: str | Path, *, resolution: int = 64, classes: int = 3, seed: int = 0) -> bytes:
    """Two-output detection-style CNN (RESIZE_NEAREST_NEIGHBOR, CONCATENATION, RESHAPE, LOGISTIC)."""

    def make() -> tuple[Any, np.ndarray]:
        from tinytrain.models.detector import detector_calibration, keras_tiny_detector

        return keras_tiny_detector(resolution, classes, seed=seed), detector_calibration(resolution, seed=seed)

    return _cached(cache_dir, _key("tiny_detector", res=resolution, classes=classes, seed=seed), make)


def mlp(cache_dir: str | Path, *, features: int = 64, classes: int = 10, seed: int = 0) -> bytes:
    """Multilayer perceptron on feature vectors (FULLY_CONNECTED, TANH, SOFTMAX)."""

    def make() -> tuple[Any, np.ndarray]:
        from tinytrain.models.mlp import keras_mlp, mlp_calibration

        return keras_mlp(features, classes=classes, seed=seed), mlp_calibration(features, seed=seed)

    return _cached(cache_dir, _key("mlp", features=features, classes=classes, seed=seed), make)


@dataclass(frozen=True)
class ZooModel:
    """A named zoo model: ``build(cache_dir)`` → bytes; ``sample(n, seed)`` → float inputs
    (one array per model input; ``n`` samples stacked on axis 0, the model's batch axis)."""

    name: str
    build: Callable[[str | Path], bytes]
    sample: Callable[[int, int], list[np.ndarray]]


def _images(resolution: int, channels: int = 3) -> Callable[[int, int], list[np.ndarray]]:
    def sample(n: int, seed: int) -> list[np.ndarray]:
        from tinytrain.models.data import image_like

        return [image_like(n, resolution, channels, seed=seed)]

    return sample


def _vectors(features: int) -> Callable[[int, int], list[np.ndarray]]:
    def sample(n: int, seed: int) -> list[np.ndarray]:
        from tinytrain.models.data import vector_like

        return [vector_like(n, features, seed=seed)]

    return sample


ZOO: tuple[ZooModel, ...] = (
    ZooModel("mobilenetv2_w0.35_96", functools.partial(mobilenetv2, resolution=96), _images(96)),
    ZooModel("mobilenetv2_w0.35_128", functools.partial(mobilenetv2, resolution=128), _images(128)),
    ZooModel(
        "mobilenetv2_w0.35_96_float_io", functools.partial(mobilenetv2, resolution=96, int8_io=False), _images(96)
    ),
    ZooModel("tiny_vit", tiny_vit, _images(32)),
    ZooModel("mobilenetv1_style", mobilenetv1_style, _images(64)),
    ZooModel("tiny_detector", tiny_detector, _images(64)),
    ZooModel("mlp", mlp, _vectors(64)),
)


def zoo_model(name: str) -> ZooModel:
    for entry in ZOO:
        if entry.name == name:
            return entry
    raise UsageError(f"no zoo model {name!r}; known: {', '.join(e.name for e in ZOO)}")


def build_zoo(cache_dir: str | Path, names: Sequence[str] | None = None) -> dict[str, bytes]:
    """Builds (or reads from the cache) the zoo models, or those named; name → bytes."""
    entries = ZOO if names is None else tuple(zoo_model(n) for n in names)
    return {e.name: e.build(cache_dir) for e in entries}


def sample_inputs(name: str, n: int, seed: int = 1) -> list[np.ndarray]:
    """Float test inputs for zoo model ``name`` (quantize them with the model's input
    parameters for int8-input models)."""
    return zoo_model(name).sample(n, seed)


def cache_info(cache_dir: str | Path, model: bytes) -> dict[str, Any] | None:
    """The sidecar record (ops, times) of a cached model, found by its bytes."""
    for path in Path(cache_dir).glob("*.tflite"):
        if path.stat().st_size == len(model) and path.read_bytes() == model:
            side = path.with_suffix(".json")
            if side.is_file():
                info: dict[str, Any] = json.loads(side.read_text())
                return info
    return None


# ----------------------------------------------------------------------------- cache


def _key(function: str, **params: object) -> str:
    parts = [f"{k}{_fmt(v)}" for k, v in params.items()]
    return "-".join([function, *parts, f"r{RECIPE_VERSION}", f"tf{tensorflow_version()}"])


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _cached(
    cache_dir: str | Path, key: str, make: Callable[[], tuple[Any, np.ndarray]], *, int8_io: bool = True
) -> bytes:
    directory = Path(cache_dir)
    path = directory / f"{key}.tflite"
    if path.is_file():
        return path.read_bytes()
    from tinytrain.frontends.keras_convert import convert_keras, model_op_names

    start = time.perf_counter()
    keras_model, calibration = make()
    built = time.perf_counter()
    model = convert_keras(keras_model, calibration, int8_io=int8_io)
    converted = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    record = {
        "key": key,
        "ops": list(model_op_names(model)),
        "build_seconds": round(built - start, 2),
        "convert_seconds": round(converted - built, 2),
        "calibration_samples": len(calibration),
        "bytes": len(model),
    }
    _write_atomic(path.with_suffix(".json"), json.dumps(record, indent=1).encode())
    _write_atomic(path, model)
    return model


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
