"""Keras model zoo: seeded weights, BatchNorm re-estimation, the converted int8 models.

Whole-model conversions are the slow part; each zoo model is built at most once per
session into a session cache directory (the end-to-end simulator == TFLite Micro tests
of these models live elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tinytrain.frontends.keras_convert import float_op_names, model_op_names
from tinytrain.models import (
    TinyViTConfig,
    image_like,
    keras_mlp,
    mlp_calibration,
    reestimate_batchnorm,
    seed_weights,
)
from tinytrain.testing import zoo
from tinytrain.testing.tflm import run_tflm

VIT_OPS = {
    "CONV_2D", "RESHAPE", "CONCATENATION", "ADD", "MEAN", "SUB", "MUL", "RSQRT", "FULLY_CONNECTED",
    "BATCH_MATMUL", "SOFTMAX", "TRANSPOSE", "STRIDED_SLICE", "HARD_SWISH",
}  # fmt: skip


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def _tflm_outputs(model: bytes, name: str, n: int = 6) -> list[np.ndarray]:
    """Runs zoo model ``name`` in TFLite Micro on ``n`` fresh sample inputs."""
    from tinytrain.frontends.tflite_schema import schema

    x = zoo.sample_inputs(name, n, seed=11)[0]
    sg = schema().Model.GetRootAs(model, 0).Subgraphs(0)
    t = sg.Tensors(sg.Inputs(0))
    if t.Type() == 9:  # int8 input: quantize with the model's parameters
        q = t.Quantization()
        x = np.clip(np.round(x / q.Scale(0)) + q.ZeroPoint(0), -128, 127).astype(np.int8)
    return run_tflm(model, [x])


def _assert_varies(outputs: list[np.ndarray]) -> None:
    for y in outputs:
        rows = {y[i].tobytes() for i in range(y.shape[0])}
        assert len(rows) == y.shape[0], "some inputs gave identical outputs"
        assert int(y.max()) - int(y.min()) > 20


# --------------------------------------------------------------------------- Keras-level (no conversion)


def test_image_like_is_seeded_smooth_and_in_range() -> None:
    a = image_like(4, 24, 3, seed=5)
    assert a.shape == (4, 24, 24, 3) and a.dtype == np.float32
    assert np.array_equal(a, image_like(4, 24, 3, seed=5))
    assert not np.array_equal(a, image_like(4, 24, 3, seed=6))
    assert a.min() >= -1.0 and a.max() <= 1.0 and a.std() > 0.1
    neighbour = np.corrcoef(a[:, :, :-1].ravel(), a[:, :, 1:].ravel())[0, 1]
    assert neighbour > 0.9  # smooth, like photos, unlike white noise


def test_seed_weights_is_deterministic() -> None:
    a, b, c = keras_mlp(seed=3), keras_mlp(seed=3), keras_mlp(seed=4)
    for wa, wb, wc in zip(a.get_weights(), b.get_weights(), c.get_weights(), strict=True):
        assert np.array_equal(wa, wb)
        assert not np.array_equal(wa, wc)


def test_batchnorm_reestimation_matches_input_statistics() -> None:
    """After re-estimation each BN's moving stats equal the statistics of its input,
    computed with the BNs before it already re-estimated (layer by layer)."""
    import keras

    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(6, 3, padding="same")(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3)(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))
    seed_weights(model, 1)
    data = image_like(16, 12, 3, seed=2)
    assert reestimate_batchnorm(model, data) == 2
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        feed = np.asarray(keras.Model(model.input, bn.input)(data, training=False), dtype=np.float64)
        np.testing.assert_allclose(bn.moving_mean.numpy(), feed.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), feed.var(axis=(0, 1, 2)), rtol=1e-3, atol=1e-5)
        assert bn.momentum == 0.99  # restored
    bn2 = model.get_layer("bn2")
    normalized = np.asarray(bn2(keras.Model(model.input, bn2.input)(data), training=False))
    np.testing.assert_allclose(normalized.std(axis=(0, 1, 2)), bn2.gamma.numpy(), rtol=0.02)


def test_mlp_head_is_standardized() -> None:
    import keras

    data = mlp_calibration()
    model = keras_mlp()
    head = model.get_layer("head")
    pre = keras.Model(model.input, head.input)(data)
    z = np.asarray(pre) @ head.kernel.numpy() + head.bias.numpy()
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(z.std(axis=0), 1.5, rtol=1e-3)


def test_vit_config_validation() -> None:
    with pytest.raises(ValueError, match="multiple of the patch"):
        TinyViTConfig(image_size=30, patch=4)
    with pytest.raises(ValueError, match="heads"):
        TinyViTConfig(dim=50, heads=4)
    with pytest.raises(ValueError, match="activation"):
        TinyViTConfig(activation="gelu")
    assert TinyViTConfig(image_size=64, patch=8).tokens == 65


# --------------------------------------------------------------------------- converted zoo models


def test_tiny_vit_is_full_int8(zoo_dir: Path) -> None:
    model = zoo.tiny_vit(zoo_dir)
    ops = model_op_names(model)
    assert float_op_names(model) == ()
    assert set(ops) == VIT_OPS, set(ops) ^ VIT_OPS
    depth = TinyViTConfig().depth
    assert ops.count("BATCH_MATMUL") == 2 * depth and ops.count("SOFTMAX") == depth
    assert ops.count("HARD_SWISH") == depth and ops.count("RSQRT") == 2 * depth + 1
    assert ops[:3] == ("CONV_2D", "RESHAPE", "CONCATENATION")  # patches, tokens, class token
    assert ops[-2:] == ("STRIDED_SLICE", "FULLY_CONNECTED")  # class-token slice, head
    _assert_varies(_tflm_outputs(model, "tiny_vit"))


def test_mobilenetv2_int8_outputs_vary(zoo_dir: Path) -> None:
    model = zoo.mobilenetv2(zoo_dir, resolution=96)
    ops = model_op_names(model)
    assert float_op_names(model) == ()
    assert {op: ops.count(op) for op in set(ops)} == {
        "CONV_2D": 35, "DEPTHWISE_CONV_2D": 17, "ADD": 10, "MEAN": 1, "FULLY_CONNECTED": 1, "SOFTMAX": 1,
    }  # fmt: skip
    outputs = _tflm_outputs(model, "mobilenetv2_w0.35_96", n=8)
    _assert_varies(outputs)
    assert len(set(outputs[0].argmax(axis=1).tolist())) >= 3  # not one class for everything


def test_unseen_style_models(zoo_dir: Path) -> None:
    v1 = zoo.mobilenetv1_style(zoo_dir)
    assert {"PAD", "TRANSPOSE", "MUL", "LOGISTIC", "LEAKY_RELU", "MAX_POOL_2D", "AVERAGE_POOL_2D"} <= set(
        model_op_names(v1)
    )
    det = zoo.tiny_detector(zoo_dir)
    assert set(model_op_names(det)) == {"CONV_2D", "RESIZE_NEAREST_NEIGHBOR", "CONCATENATION", "RESHAPE", "LOGISTIC"}
    mlp = zoo.mlp(zoo_dir)
    assert model_op_names(mlp) == ("FULLY_CONNECTED", "FULLY_CONNECTED", "TANH", "FULLY_CONNECTED", "SOFTMAX")
    for name, model in (("mobilenetv1_style", v1), ("tiny_detector", det), ("mlp", mlp)):
        assert float_op_names(model) == ()
        outputs = _tflm_outputs(model, name)
        _assert_varies(outputs)
        if name == "tiny_detector":  # boxes (n, 4) then sigmoid scores (n, 3), as in Keras
            assert [y.shape[1:] for y in outputs] == [(160, 4), (160, 3)]


def test_int8_models_track_their_float_models(zoo_dir: Path) -> None:
    """Seeded weights keep the networks out of the chaotic regime: the int8 outputs
    (dequantized) follow the float Keras outputs instead of being rounding noise."""
    from tinytrain.frontends.tflite_schema import schema
    from tinytrain.models import keras_mobilenetv1_style, keras_tiny_vit

    for name, model, keras_model in (
        ("tiny_vit", zoo.tiny_vit(zoo_dir), keras_tiny_vit()),
        ("mobilenetv1_style", zoo.mobilenetv1_style(zoo_dir), keras_mobilenetv1_style()),
    ):
        x = zoo.sample_inputs(name, 6, seed=11)[0]
        want = np.asarray(keras_model(x, training=False), dtype=np.float64)
        sg = schema().Model.GetRootAs(model, 0).Subgraphs(0)
        q = sg.Tensors(sg.Outputs(0)).Quantization()
        got = (_tflm_outputs(model, name)[0].astype(np.float64) - q.ZeroPoint(0)) * q.Scale(0)
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.95, name


def test_zoo_cache_and_sidecar(zoo_dir: Path) -> None:
    first = zoo.mlp(zoo_dir)
    files = sorted(zoo_dir.glob("mlp-*.tflite"))
    assert len(files) == 1 and files[0].read_bytes() == first
    record: dict[str, Any] = json.loads(files[0].with_suffix(".json").read_text())
    assert record["ops"] == list(model_op_names(first)) and record["bytes"] == len(first)
    assert zoo.cache_info(zoo_dir, first) == record
    files[0].write_bytes(b"sentinel")  # a second call must read the cache, not rebuild
    assert zoo.mlp(zoo_dir) == b"sentinel"
    files[0].write_bytes(first)
    assert zoo.mlp(zoo_dir, seed=1) != first  # other parameters, other key


def test_zoo_registry() -> None:
    names = [e.name for e in zoo.ZOO]
    assert len(names) == len(set(names)) == 7
    with pytest.raises(Exception, match="no zoo model"):
        zoo.zoo_model("resnet")
    x = zoo.sample_inputs("mlp", 3)[0]
    assert x.shape == (3, 64) and x.dtype == np.float32
