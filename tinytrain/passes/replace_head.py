"""Replace a model's classifier by a new N-class int8 FULLY_CONNECTED (transfer learning).

The classifier is found from the graph's (single) output, walking back:

* a trailing SOFTMAX / LOG_SOFTMAX is dropped (training works on the logits);
* the logits must come from a FULLY_CONNECTED, or from a RESHAPE of a 1×1 CONV_2D on a
  1×1 feature map (the form some MCUNet exports use); those ops are removed.

The new head reads the classifier's input (the pooled features; a ``[1, 1, 1, C]``
conv input is first reshaped to ``[1, C]``) and computes ``[1, classes]`` logits:

* **weights** int8 ``[classes, C]``, per-channel symmetric (axis 0). Every channel's
  scale is the median of the old head's weight scales, so updates have the resolution
  the pretrained head had. ``init="zero"``: all zeros (the usual start for a new head);
  ``init="seeded"``: small random integers, ``round(4·N(0, 1))`` clipped to ±127 from
  ``numpy.random.default_rng(seed)`` (host-side, compile time);
* **bias** int32 zeros, scale ``s_features · s_w`` per channel;
* **logits** quantization: scale ``8/128 = 0.0625``, zero point 0. The int8 range then
  spans real logits ``[−8, 7.94]``: zero (the start of training) is exact, a margin of 8
  already means ≥ 99.7 % confidence among 10 classes, and a step of 1/16 is fine enough
  for the softmax gradient at the start, when all logits are near 0.

The result keeps every other op and tensor (unused tensors are dropped) and passes
:func:`tinytrain.ir.verify.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tinytrain.errors import GraphError, NotQuantizedError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, FullyConnectedAttrs, Op, OpKind, ReshapeAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.ir.verify import verify

HeadInit = Literal["zero", "seeded"]

LOGIT_RANGE = 8.0  # real logits representable in [-LOGIT_RANGE, LOGIT_RANGE)
LOGIT_SCALE = LOGIT_RANGE / 128.0
SEEDED_STD_LSB = 4.0
_SOFTMAX_KINDS = (OpKind.SOFTMAX, OpKind.LOG_SOFTMAX)


def replace_head(graph: Graph, classes: int, init: HeadInit = "zero", seed: int = 0) -> Graph:
    """A copy of ``graph`` whose classifier is a new ``classes``-way int8 FULLY_CONNECTED
    producing logits (see the module docstring)."""
    if not isinstance(classes, int) or classes < 1:
        raise UsageError(f"classes must be a positive integer, got {classes!r}")
    if init not in ("zero", "seeded"):
        raise UsageError(f"head init must be 'zero' or 'seeded', got {init!r}")
    head = find_head(graph)
    features = graph.tensor(head.features)
    if features.dtype is not DType.INT8 or features.quant is None or features.quant.per_channel:
        raise NotQuantizedError(f"classifier input {features.name!r} must be int8 with per-tensor quantization")
    s_in = features.scale
    w_scale = head_weight_scale(graph.tensor(head.weight))
    depth = features.shape[-1]
    if features.size != depth:
        raise UsageError(f"classifier input {features.name!r} has shape {list(features.shape)}; expected one vector")

    taken = {t.name for t in graph.tensors}
    new_tensors: list[Tensor] = []
    new_ops: list[Op] = []
    fc_in = features.name
    if len(features.shape) != 2:
        shape_name = _fresh("head.flat.shape", taken)
        flat_name = _fresh("head.flat", taken)
        new_tensors += [
            Tensor(shape_name, (2,), DType.INT32, TensorKind.CONSTANT, None, np.array([1, depth], np.int32)),
            Tensor(flat_name, (1, depth), DType.INT8, TensorKind.ACTIVATION, features.quant),
        ]
        new_ops.append(Op(OpKind.RESHAPE, (fc_in, shape_name), (flat_name,), ReshapeAttrs((1, depth)), head.index))
        fc_in = flat_name

    weights = _initial_weights(classes, depth, init, seed)
    w_name, b_name, y_name = (_fresh(n, taken) for n in ("head.weight", "head.bias", "head.logits"))
    new_tensors += [
        Tensor(
            w_name, (classes, depth), DType.INT8, TensorKind.CONSTANT,
            Quantization((w_scale,) * classes, (0,) * classes, 0), weights,
        ),
        Tensor(
            b_name, (classes,), DType.INT32, TensorKind.CONSTANT,
            Quantization((s_in * w_scale,) * classes, (0,) * classes, 0), np.zeros(classes, np.int32),
        ),
        Tensor(y_name, (1, classes), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(LOGIT_SCALE, 0)),
    ]
    new_ops.append(
        Op(OpKind.FULLY_CONNECTED, (fc_in, w_name, b_name), (y_name,), FullyConnectedAttrs(Activation.NONE), head.index)
    )

    ops = tuple(op for i, op in enumerate(graph.ops) if i not in head.removed) + tuple(new_ops)
    used = set(graph.inputs) | {y_name} | {n for op in ops for n in (*op.inputs, *op.outputs) if n is not None}
    tensors = tuple(t for t in graph.tensors if t.name in used) + tuple(new_tensors)
    result = Graph(graph.name, tensors, ops, graph.inputs, (y_name,))
    verify(result)
    return result


@dataclass(frozen=True)
class Head:
    """Where the classifier is: its input and weight tensors, the source index of its
    (first) op, and the positions in ``graph.ops`` of the ops to remove."""

    features: str
    weight: str
    index: int
    removed: frozenset[int]


def find_head(graph: Graph) -> Head:
    """Locates the classifier (see the module docstring) or raises :class:`UsageError`."""
    if len(graph.outputs) != 1:
        raise UsageError(f"head replacement needs a model with one output, {graph.name!r} has {len(graph.outputs)}")
    producer = graph.producer()
    consumers = graph.consumers()
    removed: list[int] = []

    def producer_of(name: str) -> Op:
        if name not in producer:
            raise UsageError(f"cannot find the classifier: output {name!r} is not computed by an op")
        return graph.ops[producer[name]]

    def drop(op: Op) -> None:
        i = producer[op.outputs[0]]
        outside = [c for c in consumers.get(op.outputs[0], ()) if c not in removed]
        if outside:
            raise UsageError(
                f"cannot replace the classifier: {op.describe()} feeds {graph.ops[outside[0]].describe()} too"
            )
        removed.append(i)

    op = producer_of(graph.outputs[0])
    if op.kind in _SOFTMAX_KINDS:
        drop(op)
        op = producer_of(_first_input(op))
    if op.kind is OpKind.FULLY_CONNECTED:
        drop(op)
        return Head(_first_input(op), _input(op, 1), op.index, frozenset(removed))
    if op.kind is OpKind.RESHAPE:
        conv = producer_of(_first_input(op))
        if conv.kind is OpKind.CONV_2D:
            w = graph.tensor(_input(conv, 1))
            x = graph.tensor(_first_input(conv))
            if len(w.shape) == 4 and w.shape[1:3] == (1, 1) and x.shape[1:3] == (1, 1):
                drop(op)
                drop(conv)
                return Head(x.name, w.name, conv.index, frozenset(removed))
    raise UsageError(
        f"cannot find the classifier: the logits come from {op.describe()} "
        "(expected FULLY_CONNECTED, or a 1x1 CONV_2D + RESHAPE, optionally followed by SOFTMAX)"
    )


def head_weight_scale(weight: Tensor) -> float:
    """The median of a weight tensor's scales (as float32, as a .tflite file stores it)."""
    if weight.quant is None:
        raise NotQuantizedError(f"classifier weights {weight.name!r} are not quantized")
    return float(np.float32(np.median(np.asarray(weight.quant.scale, np.float64))))


def _initial_weights(classes: int, depth: int, init: HeadInit, seed: int) -> np.ndarray:
    if init == "zero":
        return np.zeros((classes, depth), np.int8)
    rng = np.random.default_rng(seed)
    q = np.rint(SEEDED_STD_LSB * rng.standard_normal((classes, depth)))
    return np.clip(q, -127, 127).astype(np.int8)


def _first_input(op: Op) -> str:
    return _input(op, 0)


def _input(op: Op, k: int) -> str:
    name = op.inputs[k] if k < len(op.inputs) else None
    if name is None:
        raise GraphError(f"{op.describe()} has no input {k}")
    return name


def _fresh(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name
