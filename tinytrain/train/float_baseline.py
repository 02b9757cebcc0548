"""Float32 fine-tuning of the dequantized network: the benchmark's float baseline.

:func:`float_model` turns an int8 IR graph of a MobileNetV2-class network into a Keras
model with the same structure and the dequantized parameters:

* CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED: weights ``s_w[c] · (w_q − z_w)``
  (OHWI → HWIO, 1HW(C·M) → HWCM, [out, in] → [in, out]), biases ``b_q · s_in · s_w[c]``
  (the value the int8 kernel adds), same strides, dilations and SAME/VALID padding;
* PAD (PyTorch-style explicit padding in front of a VALID conv) → ``ZeroPadding2D``
  (int8 pads with the zero point, i.e. real 0); MEAN over H, W → global average
  pooling; AVERAGE_POOL_2D, ADD, RESHAPE, SOFTMAX → their Keras layers;
* **clamps.** An int8 op that requantizes (conv, depthwise, FC, ADD, average pool)
  saturates its output to ``[s·(−128 − z), s·(127 − z)]``. The float model keeps the
  activation that clamp stands for: ReLU6 when the fused activation is RELU6, or when
  the lower bound is exactly 0 (``z = −128``, a ReLU folded into requantization, as
  MCUNet checkpoints store it) and the upper bound is at most 6 (``s ≤ 6/255``); ReLU
  when the fused activation is RELU (or the lower bound is 0) and the upper bound is
  above 6; nothing otherwise. ``clamps="int8"`` additionally saturates every such
  output to its int8 range, the closest float imitation of the int8 network (used to
  measure agreement; fine-tuning uses the default ``"activation"``).

The model's input is the real-valued image ``s_in · (q − z_in)``. Layers are named after
:func:`tinytrain.train.layers.linear_layers` (``conv0``, ``dw1``, …, ``fc52``).

:func:`finetune_float` replaces the classifier by a zero-initialised ``classes``-way
head (:func:`tinytrain.passes.replace_head.replace_head`, dequantized: all zeros) and
trains with SGD (momentum 0.9), batch ``batch``, cross-entropy on the logits, the
samples of each epoch in the order of :func:`tinytrain.train.data.epoch_order`.
``trainable`` selects the variables: ``"full"`` (every weight and bias), ``"bias+head"``
(every bias and the head), ``"head"``, or a sequence of layer references
(``"conv40"`` = its weights and bias, ``"conv40.weight"``, ``"conv40.bias"``, ``"head"``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tinytrain.errors import NotQuantizedError, UnsupportedOpError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import (
    Activation,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    FullyConnectedAttrs,
    Op,
    OpKind,
    Pool2DAttrs,
    ReduceAttrs,
)
from tinytrain.ir.tensor import Tensor
from tinytrain.train.float_vit_ops import VIT_OPS, vit_float_op
from tinytrain.train.layers import linear_layers

Clamps = Literal["activation", "int8"]
ClampKind = Literal["none", "relu", "relu6"]
TRAINABLE_PRESETS = ("full", "bias+head", "head")
MOMENTUM = 0.9
RELU6_TOLERANCE = 1e-4  # relative: 255 · float32(6/255) is 6.0000001
_ACT_OPS = (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED, OpKind.ADD, OpKind.AVERAGE_POOL_2D)


# ----------------------------------------------------------------------------- clamps


def clamp_kind(op: Op, out: Tensor) -> ClampKind:
    """The float activation an int8 op's output clamp stands for (module docstring)."""
    act = getattr(op.attrs, "activation", Activation.NONE)
    if act is Activation.RELU_N1_TO_1:
        raise _unsupported(op, "fused RELU_N1_TO_1 has no float equivalent here")
    if act is Activation.RELU6:
        return "relu6"
    if out.dtype is not DType.INT8 or out.quant is None:
        return "relu" if act is Activation.RELU else "none"
    s, z = out.qparams
    lower_is_zero = z == -128
    upper = s * (127 - z)
    if act is Activation.RELU or lower_is_zero:
        return "relu6" if upper <= 6.0 * (1.0 + RELU6_TOLERANCE) else "relu"
    return "none"


def int8_range(out: Tensor) -> tuple[float, float]:
    """Real values representable by an int8 per-tensor quantized tensor."""
    s, z = out.qparams
    return s * (-128 - z), s * (127 - z)


# ----------------------------------------------------------------------------- float model


def dequantized(t: Tensor) -> np.ndarray:
    """``scale · (q − zero_point)`` of a constant int8 tensor (per-tensor or per-channel), float64."""
    if t.data is None or t.quant is None:
        raise NotQuantizedError(f"tensor {t.name!r} is not a quantized constant")
    q = t.data.astype(np.float64)
    scale = np.asarray(t.quant.scale, np.float64)
    zero = np.asarray(t.quant.zero_point, np.float64)
    if t.quant.axis is not None:
        shape = [1] * q.ndim
        shape[t.quant.axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return np.asarray(scale * (q - zero), np.float64)


def float_model(graph: Graph, *, clamps: Clamps = "activation") -> Any:
    """The dequantized float Keras model of ``graph`` (module docstring)."""
    import keras

    if clamps not in ("activation", "int8"):
        raise UsageError(f"clamps must be 'activation' or 'int8', got {clamps!r}")
    if len(graph.inputs) != 1:
        raise UsageError(f"the float model supports one input, {graph.name!r} has {len(graph.inputs)}")
    inp_t = graph.tensor(graph.inputs[0])
    names = {layer.op_index: layer.name for layer in linear_layers(graph)}
    inp = keras.Input(shape=inp_t.shape[1:], name="input")
    values: dict[str, Any] = {inp_t.name: inp}
    for i, (op, ins, outs) in enumerate(graph.iter_ops()):
        name = names.get(i, f"op{i}_{op.kind.value.lower()}")
        args = [None if t is None or t.data is not None else values[t.name] for t in ins]
        y = _float_op(keras, op, ins, outs[0], args, name)
        if op.kind in _ACT_OPS:
            y = _clamp(keras, op, outs[0], y, name, clamps)
        values[outs[0].name] = y
    outputs = [values[n] for n in graph.outputs]
    name = f"{graph.name}_float".replace("/", "_")
    return keras.Model(inp, outputs[0] if len(outputs) == 1 else outputs, name=name)


def _float_op(keras: Any, op: Op, ins: Sequence[Tensor | None], out: Tensor, args: list[Any], name: str) -> Any:
    x = args[0]
    k = op.kind
    if k in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
        return _linear(keras, op, ins, out, x, name)
    same = len(ins) > 1 and ins[0] is not None and ins[1] is not None and ins[0].shape == ins[1].shape
    if k is OpKind.ADD and isinstance(op.attrs, ElementwiseAttrs) and same and None not in args[:2]:
        return keras.layers.Add(name=name)([args[0], args[1]])
    if k is OpKind.PAD:
        pads = _const(op, ins, 1).astype(np.int64).reshape(-1, 2)
        if pads.shape != (4, 2) or pads[0].any() or pads[3].any():
            raise _unsupported(op, "only spatial padding of NHWC tensors")
        spatial = ((int(pads[1, 0]), int(pads[1, 1])), (int(pads[2, 0]), int(pads[2, 1])))
        return keras.layers.ZeroPadding2D(spatial, name=name)(x)
    if k is OpKind.MEAN and ins[0] is not None and len(ins[0].shape) == 4:
        axes = sorted(int(a) % 4 for a in _const(op, ins, 1).reshape(-1))
        if axes == [1, 2] and isinstance(op.attrs, ReduceAttrs):
            return keras.layers.GlobalAveragePooling2D(keepdims=op.attrs.keep_dims, name=name)(x)
    if k is OpKind.AVERAGE_POOL_2D:
        a = op.attrs
        assert isinstance(a, Pool2DAttrs)
        return keras.layers.AveragePooling2D(
            (a.filter_h, a.filter_w), (a.stride_h, a.stride_w), a.padding.value.lower(), name=name
        )(x)
    if k is OpKind.RESHAPE:
        return keras.layers.Reshape(out.shape[1:], name=name)(x)
    if k is OpKind.SOFTMAX:
        return keras.layers.Softmax(name=name)(x)
    if k in VIT_OPS:  # the transformer ops (and ADD / MEAN beyond the CNN forms above)
        return vit_float_op(keras, op, ins, args, name)
    raise _unsupported(op, "no float equivalent in the baseline")


def _linear(keras: Any, op: Op, ins: Sequence[Tensor | None], out: Tensor, x: Any, name: str) -> Any:
    inp, w = ins[0], ins[1]
    if inp is None or w is None or w.data is None:
        raise _unsupported(op, "weights must be constant")
    if inp.dtype is not DType.INT8 or inp.quant is None:
        raise NotQuantizedError(f"{op.describe()}: input must be int8")
    s_in = inp.scale
    wf = dequantized(w)
    bias_t = ins[2] if len(ins) > 2 else None
    channels = w.shape[0] if op.kind is not OpKind.DEPTHWISE_CONV_2D else w.shape[3]
    w_scale = np.broadcast_to(np.asarray(w.quant.scale if w.quant else (1.0,), np.float64), (channels,))
    bias = np.zeros(channels)
    if bias_t is not None:
        if bias_t.data is None:
            raise _unsupported(op, "bias must be constant")
        bias = bias_t.data.reshape(-1).astype(np.float64) * s_in * w_scale
    a = op.attrs
    if isinstance(a, Conv2DAttrs):
        layer = keras.layers.Conv2D(
            w.shape[0], w.shape[1:3], strides=(a.stride_h, a.stride_w), padding=a.padding.value.lower(),
            dilation_rate=(a.dilation_h, a.dilation_w), use_bias=bias_t is not None, name=name,
        )
        kernel = wf.transpose(1, 2, 3, 0)
    elif isinstance(a, DepthwiseConv2DAttrs):
        cin = inp.shape[3]
        layer = keras.layers.DepthwiseConv2D(
            w.shape[1:3], strides=(a.stride_h, a.stride_w), padding=a.padding.value.lower(),
            depth_multiplier=a.depth_multiplier, dilation_rate=(a.dilation_h, a.dilation_w),
            use_bias=bias_t is not None, name=name,
        )
        kernel = wf[0].reshape(w.shape[1], w.shape[2], cin, w.shape[3] // cin)
    elif isinstance(a, FullyConnectedAttrs) and a.keep_num_dims and len(inp.shape) == len(out.shape):
        layer = keras.layers.Dense(w.shape[0], use_bias=bias_t is not None, name=name)  # over the last axis
        kernel = wf.T
    elif isinstance(a, FullyConnectedAttrs):
        if len(inp.shape) != 2:
            x = keras.layers.Reshape((w.shape[1],), name=f"{name}_flatten")(x)
        layer = keras.layers.Dense(w.shape[0], use_bias=bias_t is not None, name=name)
        kernel = wf.T
    else:
        raise _unsupported(op, "unexpected attributes")
    y = layer(x)
    layer.set_weights([kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias_t is not None else []))
    if isinstance(a, FullyConnectedAttrs) and len(out.shape) != 2 and not a.keep_num_dims:
        y = keras.layers.Reshape(out.shape[1:], name=f"{name}_reshape")(y)
    return y


def _clamp(keras: Any, op: Op, out: Tensor, y: Any, name: str, clamps: Clamps) -> Any:
    kind = clamp_kind(op, out)
    if clamps == "int8" and out.dtype is DType.INT8 and out.quant is not None:
        lo, hi = int8_range(out)
        if kind != "none":
            lo, hi = max(lo, 0.0), min(hi, 6.0) if kind == "relu6" else hi
        return keras.layers.Lambda(lambda t: keras.ops.clip(t, lo, hi), name=f"{name}_clamp")(y)
    if kind == "relu6":
        return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(y)
    if kind == "relu":
        return keras.layers.ReLU(name=f"{name}_relu")(y)
    return y


def _const(op: Op, ins: Sequence[Tensor | None], k: int) -> np.ndarray:
    t = ins[k] if k < len(ins) else None
    if t is None or t.data is None:
        raise _unsupported(op, f"input {k} must be constant")
    return t.data


def _unsupported(op: Op, detail: str) -> UnsupportedOpError:
    names = tuple(n for n in (*op.inputs, *op.outputs) if n is not None)
    return UnsupportedOpError(op.kind.value, op.index, names, detail)


# ----------------------------------------------------------------------------- agreement


@dataclass(frozen=True)
class Agreement:
    """Float model vs int8 simulator on the same inputs, on real-valued logits."""

    samples: int
    max_abs: float  # max |float − int8| over all logits
    mean_abs: float
    logit_span: float  # max − min of the int8 logits (for scale)
    output_scale: float  # one LSB of the int8 logits
    correlation: float  # Pearson, over all logits
    top1: float  # fraction of samples with the same arg max


def logits_graph(graph: Graph) -> Graph:
    """``graph`` without a trailing SOFTMAX (its output becomes the logits)."""
    if len(graph.outputs) != 1:
        return graph
    last = [op for op in graph.ops if graph.outputs[0] in op.outputs]
    if not last or last[0].kind is not OpKind.SOFTMAX or last[0].inputs[0] is None:
        return graph
    ops = tuple(op for op in graph.ops if op is not last[0])
    keep = set(graph.inputs) | {n for op in ops for n in (*op.inputs, *op.outputs) if n is not None}
    return Graph(graph.name, tuple(t for t in graph.tensors if t.name in keep), ops, graph.inputs, (last[0].inputs[0],))


def agreement(graph: Graph, x: np.ndarray, *, clamps: Clamps = "activation", model: Any = None) -> Agreement:
    """Compares the float model's logits with the int8 simulator's (dequantized) on int8
    model inputs ``x`` (``[N, H, W, C]``). A trailing SOFTMAX is left out."""
    from tinytrain.sim.forward import Simulator

    g = logits_graph(graph)
    out_t = g.tensor(g.outputs[0])
    (yq,) = Simulator(g).run([x])
    s, z = out_t.qparams
    ref = s * (yq.astype(np.float64) - z)
    fm = model if model is not None else float_model(g, clamps=clamps)
    got = np.asarray(fm.predict(_dequantize_input(g, x), verbose=0, batch_size=32), np.float64).reshape(ref.shape)
    diff = np.abs(got - ref)
    corr = float(np.corrcoef(got.reshape(-1), ref.reshape(-1))[0, 1]) if ref.std() > 0 and got.std() > 0 else 0.0
    return Agreement(
        samples=int(x.shape[0]),
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        logit_span=float(ref.max() - ref.min()),
        output_scale=float(s),
        correlation=corr,
        top1=float(np.mean(np.argmax(got, axis=-1) == np.argmax(ref, axis=-1))),
    )


def _dequantize_input(graph: Graph, x: np.ndarray) -> np.ndarray:
    t = graph.tensor(graph.inputs[0])
    s, z = t.qparams
    return (np.float32(s) * (x.astype(np.float32) - np.float32(z))).astype(np.float32)


# ----------------------------------------------------------------------------- fine-tuning


def trainable_selection(graph: Graph, trainable: str | Sequence[str]) -> dict[str, frozenset[str]]:
    """Layer name -> the parts (``"weight"``, ``"bias"``) that ``trainable`` selects
    (module docstring); the head is the graph's last linear layer."""
    layers = linear_layers(graph)
    if not layers:
        raise UsageError(f"graph {graph.name!r} has no trainable layer")
    head = layers[-1].name
    kinds: dict[str, set[str]] = {}
    if isinstance(trainable, str):
        if trainable not in TRAINABLE_PRESETS:
            raise UsageError(f"trainable must be one of {', '.join(TRAINABLE_PRESETS)} or a list of layers")
        for layer in layers:
            if trainable == "full":
                kinds[layer.name] = {"weight", "bias"}
            elif trainable == "bias+head" and layer.bias is not None:
                kinds[layer.name] = {"bias"}
        kinds[head] = {"weight", "bias"}
    else:
        known = {layer.name for layer in layers}
        for ref in trainable:
            base, _, part = str(ref).partition(".")
            base = head if base == "head" else base
            if base not in known or part not in ("", "weight", "bias"):
                raise UsageError(f"unknown trainable layer reference {ref!r} (e.g. 'conv40', 'conv40.bias', 'head')")
            kinds.setdefault(base, set()).update({"weight", "bias"} if part == "" else {part})
    return {name: frozenset(parts) for name, parts in kinds.items()}


def select_variables(model: Any, selection: dict[str, frozenset[str]]) -> list[Any]:
    """The Keras variables of :func:`float_model`'s layers named in ``selection`` (a
    layer without bias contributes its weights only)."""
    chosen: list[Any] = []
    for name, parts in selection.items():
        layer = model.get_layer(name)
        if "weight" in parts:
            chosen.append(layer.depthwise_kernel if hasattr(layer, "depthwise_kernel") else layer.kernel)
        if "bias" in parts and layer.bias is not None:
            chosen.append(layer.bias)
    return chosen


def finetune_float(
    graph: Graph,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    classes: int = 10,
    epochs: int = 3,
    batch: int = 32,
    lr: float = 0.003,
    trainable: str | Sequence[str] = "full",
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tunes the dequantized float model of ``graph`` with a new zero-initialised
    ``classes``-way head and returns ``test_accuracy`` and the run's details
    (``epoch_loss``, ``trainable_parameters``, the settings, ``train_seconds``, and the
    trained Keras ``model``).

    ``*_x`` are int8 model inputs ``[N, H, W, C]`` (dequantized with the input
    quantization), uint8 native images (``[N, h, w]`` or ``[N, h, w, c]``, run through
    :mod:`tinytrain.train.data`'s integer preprocessing batch by batch), or float32
    real-valued inputs. Labels are integers in ``[0, classes)``.
    """
    import keras
    import tensorflow as tf

    from tinytrain.passes.replace_head import replace_head
    from tinytrain.train.data import epoch_order

    if epochs < 0 or batch < 1 or not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"need epochs >= 0, batch >= 1 and lr > 0 (got {epochs}, {batch}, {lr})")
    g = replace_head(logits_graph(graph), classes, "zero")
    selection = trainable_selection(g, trainable)
    to_input = _input_feeder(g, train_x)
    to_test_input = _input_feeder(g, test_x)
    ytr, yte = _labels(train_y, len(train_x), classes, "train"), _labels(test_y, len(test_x), classes, "test")

    keras.utils.set_random_seed(seed)
    model = float_model(g)
    # "full": every variable, including the constant parameters of a ViT (float_vit_ops)
    variables = list(model.trainable_variables) if trainable == "full" else select_variables(model, selection)
    optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=MOMENTUM)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    t0 = time.time()
    epoch_losses: list[float] = []
    for epoch in range(epochs):
        order = epoch_order(len(ytr), seed, epoch)
        total, count = 0.0, 0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            total += float(step(to_input(train_x[idx]), ytr[idx])) * len(idx)
            count += len(idx)
        epoch_losses.append(total / max(count, 1))
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {epoch_losses[-1]:.4f} ({time.time() - t0:.0f} s)")
    train_seconds = time.time() - t0
    correct = 0
    for start in range(0, len(yte), 256):
        logits = np.asarray(model(to_test_input(test_x[start : start + 256]), training=False))
        correct += int(np.sum(np.argmax(logits, axis=-1) == yte[start : start + 256]))
    return {
        "test_accuracy": correct / max(len(yte), 1),
        "epoch_loss": tuple(epoch_losses),
        "trainable_parameters": int(sum(math.prod(v.shape) for v in variables)),
        "trainable": trainable if isinstance(trainable, str) else tuple(trainable),
        "classes": classes,
        "epochs": epochs,
        "batch": batch,
        "lr": lr,
        "momentum": MOMENTUM,
        "seed": seed,
        "train_samples": len(ytr),
        "test_samples": len(yte),
        "train_seconds": train_seconds,
        "model": model,
    }


def _labels(y: np.ndarray, n: int, classes: int, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n or arr.dtype.kind not in "iu":
        raise UsageError(f"{what} labels must be {n} integers, got {arr.dtype} {arr.shape}")
    if n and (arr.min() < 0 or arr.max() >= classes):
        raise UsageError(f"{what} labels must lie in [0, {classes}), found {int(arr.min())}..{int(arr.max())}")
    return arr.astype(np.int64)


def _input_feeder(graph: Graph, x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    t = graph.tensor(graph.inputs[0])
    want = t.shape[1:]
    if x.ndim < 1 or x.shape[0] == 0:
        raise UsageError("no samples given")
    if x.dtype == np.int8 and x.shape[1:] == want:
        return lambda b: _dequantize_input(graph, b)
    if x.dtype == np.float32 and x.shape[1:] == want:
        return lambda b: b
    if x.dtype == np.uint8:
        from tinytrain.train.data import preprocess_for_graph

        prep = preprocess_for_graph(graph, x.shape[1:])
        return lambda b: _dequantize_input(graph, prep(b))
    raise UsageError(
        f"inputs must be int8 or float32 of shape {('N', *want)}, or uint8 native images; got {x.dtype} {x.shape}"
    )
