"""Shared fixtures: converter-made models, built once per test session."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import numpy as np
import pytest


def _small_cnn(int8_io: bool) -> bytes:
    import keras

    from tinytrain.frontends.keras_convert import convert_keras

    keras.utils.set_random_seed(7)
    inp = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu6")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(4)(x)
    x = keras.layers.Softmax()(x)
    model = keras.Model(inp, x)
    calib = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    return convert_keras(model, calib, int8_io=int8_io)


@pytest.fixture(scope="session")
def small_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small full-int8 CNN (.tflite path): CONV_2D, DEPTHWISE_CONV_2D, MEAN, FULLY_CONNECTED, SOFTMAX."""
    path = tmp_path_factory.mktemp("models") / "small_cnn.tflite"
    path.write_bytes(_small_cnn(int8_io=True))
    return path


@pytest.fixture(scope="session")
def small_cnn_float_io(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same CNN with float32 input and output (QUANTIZE / DEQUANTIZE at the boundary)."""
    path = tmp_path_factory.mktemp("models") / "small_cnn_f.tflite"
    path.write_bytes(_small_cnn(int8_io=False))
    return path


@pytest.fixture(scope="session")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float (non-quantized) .tflite model."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(1)
    inp = keras.Input((8,), batch_size=1)
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path_factory.mktemp("models") / "float.tflite"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="session")
def unsupported_op_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An int8 model with an op tinytrain does not implement (ABS)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(2)
    inp = keras.Input((8,), batch_size=1)
    x = keras.layers.Dense(6)(inp)
    model = keras.Model(inp, keras.layers.Dense(4)(keras.ops.abs(x)))

    def rep():  # type: ignore[no-untyped-def]
        rng = np.random.default_rng(0)
        for _ in range(8):
            yield [rng.uniform(-1, 1, (1, 8)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = tmp_path_factory.mktemp("models") / "abs.tflite"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path.write_bytes(conv.convert())
    return path
