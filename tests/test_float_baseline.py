"""The dequantized float model and the float32 fine-tuning baseline (shipped synthetic checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinytrain.errors import UnsupportedOpError, UsageError
from tinytrain.frontends.load import load_model
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, Conv2DAttrs, Op, OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.train.layers import linear_layers

pytest.importorskip("keras")

from tinytrain.train.float_baseline import (
    agreement,
    clamp_kind,
    dequantized,
    finetune_float,
    float_model,
    select_variables,
    trainable_selection,
)

DATA = Path(__file__).resolve().parent.parent / "tinytrain" / "data"


@pytest.fixture(scope="module")
def checkpoint() -> Graph:
    return load_model(DATA / "mcunet-synthetic.pkl")


def _image_inputs(graph: Graph, n: int, seed: int) -> np.ndarray:
    from tinytrain.models.data import image_like

    t = graph.tensor(graph.inputs[0])
    s, z = t.qparams
    real = image_like(n, (t.shape[1], t.shape[2]), t.shape[3], seed=seed)
    return np.clip(np.round(real / s) + z, -128, 127).astype(np.int8)


def _out(scale: float, zero: int) -> Tensor:
    return Tensor("y", (1, 4, 4, 8), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zero))


def _conv(act: Activation) -> Op:
    return Op(OpKind.CONV_2D, ("x", "w", "b"), ("y",), Conv2DAttrs(1, 1, activation=act), 7)


def test_clamp_kind_rules() -> None:
    relu6_scale = float(np.float32(6 / 255))
    assert clamp_kind(_conv(Activation.NONE), _out(relu6_scale, -128)) == "relu6"
    assert clamp_kind(_conv(Activation.NONE), _out(0.005, -128)) == "relu6"  # calibrated below 6
    assert clamp_kind(_conv(Activation.NONE), _out(0.05, -128)) == "relu"  # lower bound 0, upper above 6
    assert clamp_kind(_conv(Activation.NONE), _out(0.05, -3)) == "none"
    assert clamp_kind(_conv(Activation.RELU), _out(0.05, -3)) == "relu"
    assert clamp_kind(_conv(Activation.RELU6), _out(0.05, -3)) == "relu6"
    with pytest.raises(UnsupportedOpError, match="RELU_N1_TO_1"):
        clamp_kind(_conv(Activation.RELU_N1_TO_1), _out(0.05, 0))


def test_float_model_weights_and_clamps(checkpoint: Graph) -> None:
    model = float_model(checkpoint)
    layers = linear_layers(checkpoint)
    for lay in layers:
        w = checkpoint.tensor(lay.weight)
        kernel = np.asarray(model.get_layer(lay.name).get_weights()[0])
        if lay.kind is OpKind.CONV_2D:
            expected = dequantized(w).transpose(1, 2, 3, 0)
        elif lay.kind is OpKind.DEPTHWISE_CONV_2D:
            expected = dequantized(w)[0][..., None]
        else:
            expected = dequantized(w).T
        assert np.allclose(kernel, expected, rtol=1e-6, atol=0)
    relu6 = [layer for layer in model.layers if layer.name.endswith("_relu6")]
    folded = [
        op for op in checkpoint.ops
        if op.kind in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D) and checkpoint.tensor(op.outputs[0]).zero_point == -128
    ]
    assert len(relu6) == len(folded) > 0
    assert sum(isinstance(layer, type(model.get_layer("conv0"))) for layer in model.layers) > 0


def test_float_model_agrees_with_int8_simulator(checkpoint: Graph) -> None:
    x = _image_inputs(checkpoint, 16, seed=3)
    a = agreement(checkpoint, x)
    assert a.samples == 16
    assert a.correlation > 0.99 and a.top1 >= 0.9
    assert a.mean_abs < 2 * a.output_scale and a.max_abs < 0.2 * a.logit_span
    tight = agreement(checkpoint, x, clamps="int8")
    assert tight.correlation > 0.99


def _toy_task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 12x12 images: class 1 bright, class 0 dark, random texture."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    base = np.where(y == 1, 190, 50)[:, None, None]
    x = np.clip(base + rng.integers(-40, 41, (n, 12, 12)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def _weights(model: Any, names: list[str]) -> list[np.ndarray]:
    return [np.array(w) for name in names for w in model.get_layer(name).get_weights()]


def test_finetune_head_only_learns_and_freezes_the_body(checkpoint: Graph) -> None:
    xtr, ytr = _toy_task(96, 0)
    xte, yte = _toy_task(64, 1)
    body = [lay.name for lay in linear_layers(checkpoint)[:-1]]
    before = _weights(float_model(checkpoint), body)
    res = finetune_float(checkpoint, xtr, ytr, xte, yte, classes=2, epochs=3, batch=16, lr=0.05, trainable="head")
    after = _weights(res["model"], body)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    head = res["model"].get_layer(linear_layers(checkpoint)[-1].name)
    assert np.any(head.get_weights()[0] != 0)
    assert res["trainable_parameters"] == 2 * (16 + 1)
    assert res["epoch_loss"][-1] < res["epoch_loss"][0]
    assert res["test_accuracy"] >= 0.9


def test_trainable_selections(checkpoint: Graph) -> None:
    layers = linear_layers(checkpoint)
    model = float_model(checkpoint)

    def count(trainable: str | list[str]) -> int:
        chosen = select_variables(model, trainable_selection(checkpoint, trainable))
        return sum(int(np.prod(v.shape)) for v in chosen)

    head = 10 * 16 + 10
    weights = sum(int(np.prod(checkpoint.tensor(lay.weight).shape)) for lay in layers)
    assert count("head") == head
    assert count("bias+head") == sum(lay.out_channels for lay in layers[:-1]) + head
    assert count("full") == weights + sum(lay.out_channels for lay in layers)
    assert count(["head", f"{layers[3].name}.bias"]) == head + layers[3].out_channels
    conv3 = checkpoint.tensor(layers[3].weight).size + layers[3].out_channels
    assert count([layers[3].name, "dw1.weight"]) == conv3 + 16 * 9
    with pytest.raises(UsageError, match="unknown trainable"):
        trainable_selection(checkpoint, ["conv3.gamma"])


def test_finetune_usage_errors(checkpoint: Graph) -> None:
    xtr, ytr = _toy_task(8, 3)
    with pytest.raises(UsageError, match=r"\[0, 2\)"):
        finetune_float(checkpoint, xtr, ytr + 5, xtr, ytr, classes=2, epochs=1)
    with pytest.raises(UsageError, match="inputs must be"):
        finetune_float(checkpoint, xtr.astype(np.int16), ytr, xtr, ytr, classes=2, epochs=1)
    with pytest.raises(UsageError, match="trainable"):
        finetune_float(checkpoint, xtr, ytr, xtr, ytr, classes=2, epochs=1, trainable="everything")
    with pytest.raises(UsageError, match="unknown trainable"):
        finetune_float(checkpoint, xtr, ytr, xtr, ytr, classes=2, epochs=1, trainable=["conv999"])


def test_converted_keras_model_same_padding_mean_softmax(small_cnn: Path) -> None:
    graph = load_model(small_cnn)
    assert graph.ops[-1].kind is OpKind.SOFTMAX
    model = float_model(graph)
    assert model.output.shape[-1] == 4 and any("softmax" in layer.name for layer in model.layers)
    # Inputs like its calibration data (uniform noise), so the int8 ranges hold them.
    x = np.random.default_rng(4).integers(-128, 128, (16, 16, 16, 3), dtype=np.int8)
    a = agreement(graph, x)  # compares the logits before the SOFTMAX
    assert a.correlation > 0.99 and a.top1 >= 0.9 and a.mean_abs < 2 * a.output_scale


def test_vit_float_model_agrees_and_full_finetuning_trains_its_constants() -> None:
    """The shipped tiny ViT (transformer ops: float_vit_ops): its float model tracks the int8
    simulator, and full fine-tuning also trains the class token and the position embedding."""
    from tinytrain.models.ship import shipped
    from tinytrain.train.data import load_dataset, preprocess_for_graph

    graph = load_model(shipped("vit-d64-32-fmnist04-int8.tflite"))
    test = load_dataset("fashion-mnist", "test")
    a = agreement(graph, preprocess_for_graph(graph, test.sample_shape)(test.images[:64]))
    assert a.correlation > 0.99 and a.top1 >= 0.9 and a.mean_abs < 4 * a.output_scale
    xtr, ytr = test.images[:64], test.labels[:64].astype(np.int64)
    res = finetune_float(graph, xtr, ytr, xtr, ytr, classes=10, epochs=1, batch=16, lr=0.01)
    model = res["model"]
    names = [v.path for v in model.trainable_variables]
    assert any("concatenation" in n for n in names) and res["trainable_parameters"] == sum(
        int(np.prod(v.shape)) for v in model.trainable_variables
    )
    before = float_model(graph)
    for v in model.trainable_variables:
        if "concatenation" in v.path:  # the class token moved
            ref = next(w for w in before.trainable_variables if w.path == v.path)
            assert not np.array_equal(np.asarray(v), np.asarray(ref))
