"""The trainable layers of a graph: its linear ops (conv, depthwise, fully connected).

Layers are numbered in execution order (``0 … n−1``); a scheme may refer to a layer
by that index, by a negative index counted from the end (``-1`` is the classifier),
or by its name. A layer's name is its kind and index (``conv12``, ``dw5``, ``fc52``),
stable for a given model whatever its tensor names are.
"""

from __future__ import annotations

from dataclasses import dataclass

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind

LINEAR_OPS = {OpKind.CONV_2D: "conv", OpKind.DEPTHWISE_CONV_2D: "dw", OpKind.FULLY_CONNECTED: "fc"}


@dataclass(frozen=True)
class Layer:
    index: int  # position among the linear layers
    name: str  # e.g. "conv12"
    op_index: int  # position of the op in graph.ops
    kind: OpKind
    input: str  # tensor names
    weight: str
    bias: str | None
    output: str
    in_channels: int  # input channels of the weight (for depthwise: the channels)
    out_channels: int
    kernel: tuple[int, int]  # (kh, kw); (1, 1) for fully connected

    @property
    def is_pointwise(self) -> bool:
        return self.kind is OpKind.CONV_2D and self.kernel == (1, 1)


def linear_layers(graph: Graph) -> tuple[Layer, ...]:
    out: list[Layer] = []
    for i, op in enumerate(graph.ops):
        prefix = LINEAR_OPS.get(op.kind)
        if prefix is None:
            continue
        x, w = op.inputs[0], op.inputs[1]
        assert x is not None and w is not None
        b = op.inputs[2] if len(op.inputs) > 2 else None
        wt = graph.tensor(w)
        if op.kind is OpKind.CONV_2D:
            cout, kh, kw, cin = wt.shape
        elif op.kind is OpKind.DEPTHWISE_CONV_2D:
            _, kh, kw, cout = wt.shape
            cin = cout
        else:
            cout, cin = wt.shape
            kh = kw = 1
        n = len(out)
        out.append(Layer(n, f"{prefix}{n}", i, op.kind, x, w, b, op.outputs[0], cin, cout, (kh, kw)))
    return tuple(out)


def resolve_layer(layers: tuple[Layer, ...], ref: str | int) -> Layer:
    """A layer by index, negative index or name; a clear error otherwise."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.lstrip("-").isdigit()):
        idx = int(ref)
        if -len(layers) <= idx < len(layers):
            return layers[idx]
        raise UsageError(f"layer index {idx} out of range: the model has {len(layers)} trainable layers")
    for layer in layers:
        if layer.name == ref:
            return layer
    names = ", ".join(lay.name for lay in layers[:4]) + (", …" if len(layers) > 4 else "")
    raise UsageError(f"unknown layer {ref!r} (layers are named {names}; or use an index)")
