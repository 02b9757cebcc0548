"""Keras model definitions with seeded weights, for tests, benchmarks and examples.

Each builder imports Keras lazily, seeds every weight, and fixes data-dependent
statistics (BatchNorm moving statistics, head scale) on seeded synthetic data, so the
int8 models the converter makes from them produce outputs that vary across inputs.
"""

from __future__ import annotations

from tinytrain.models.data import image_like, vector_like
from tinytrain.models.detector import detector_calibration, keras_tiny_detector
from tinytrain.models.mlp import keras_mlp, mlp_calibration
from tinytrain.models.mobilenetv1 import keras_mobilenetv1_style, mobilenetv1_calibration
from tinytrain.models.mobilenetv2 import keras_mobilenetv2, mobilenetv2_calibration
from tinytrain.models.vit import TinyViTConfig, keras_tiny_vit, vit_calibration
from tinytrain.models.weights import reestimate_batchnorm, seed_weights, standardize_dense

__all__ = [
    "TinyViTConfig",
    "detector_calibration",
    "image_like",
    "keras_mlp",
    "keras_mobilenetv1_style",
    "keras_mobilenetv2",
    "keras_tiny_detector",
    "keras_tiny_vit",
    "mlp_calibration",
    "mobilenetv1_calibration",
    "mobilenetv2_calibration",
    "reestimate_batchnorm",
    "seed_weights",
    "standardize_dense",
    "vector_like",
    "vit_calibration",
]
