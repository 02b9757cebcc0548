"""The transformer blocks of a Vision Transformer graph, from its tensor names.

The TFLite converter keeps the Keras layer names in the tensor names
(``tiny_vit_32_64x4_1/block3_attn_1/Softmax``, ``.../block3_mlp1_1/BiasAdd``; see
:mod:`tinytrain.models.vit`, whose blocks are the layers ``block<b>_ln1``, ``block<b>_attn``,
``block<b>_res1``, ``block<b>_ln2``, ``block<b>_mlp1``, ``block<b>_mlp2``, ``block<b>_res2``).
An op belongs to block ``b`` when the name of its first output holds a path component
``block<b>_…`` (the first such component when the converter fused several names into one,
``a;b;c``); ops outside every block (patch embedding, class token, position embedding, the
final LayerNorm, the class-token slice, the head) belong to none.

Block numbers are the model's own (``block0`` … ``block<depth−1>``); a scheme may also count
them from the end (``-1`` is the last block).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.train.layers import Layer, linear_layers

BLOCK_NAME = re.compile(r"(?:^|[/;])block(\d+)_")


@dataclass(frozen=True)
class ViTBlocks:
    """``op_block[i]``: the block of op ``i`` (None outside every block); ``blocks``: the
    block numbers, ascending; ``layers``: per block, the indices of its trainable layers
    (FULLY_CONNECTED: query, key, value, attention output, MLP; numbered as in
    :func:`tinytrain.train.layers.linear_layers`)."""

    op_block: tuple[int | None, ...]
    blocks: tuple[int, ...]
    layers: Mapping[int, tuple[int, ...]]

    def resolve(self, ref: int) -> int:
        """A block by its number, or counted from the end when negative (``-1``: the last)."""
        n = len(self.blocks)
        if -n <= ref < 0:
            return self.blocks[ref]
        if ref in self.blocks:
            return ref
        raise UsageError(
            f"block {ref} does not exist: the model has blocks {self.blocks[0]}..{self.blocks[-1]} "
            f"(or -1..-{n} from the end)"
        )


def op_block(name: str) -> int | None:
    """The block number a tensor name carries (None: no ``block<b>_`` component)."""
    m = BLOCK_NAME.search(name)
    return int(m.group(1)) if m else None


def vit_blocks(graph: Graph) -> ViTBlocks:
    """The blocks of ``graph``; a UsageError when it has none with a trainable layer."""
    per_op = tuple(op_block(op.outputs[0]) if op.outputs else None for op in graph.ops)
    layers: dict[int, list[int]] = {}
    for lay in linear_layers(graph):
        b = per_op[lay.op_index]
        if b is not None and lay.kind is OpKind.FULLY_CONNECTED:
            layers.setdefault(b, []).append(lay.index)
    if not layers:
        raise UsageError(
            f"model {graph.name!r} has no recognisable transformer blocks: no FULLY_CONNECTED op's output "
            "is named '.../block<N>_...' (the Keras layer names of tinytrain.models.vit, kept by the converter)"
        )
    blocks = tuple(sorted(layers))
    return ViTBlocks(per_op, blocks, MappingProxyType({b: tuple(v) for b, v in sorted(layers.items())}))


def head_layer(graph: Graph, blocks: ViTBlocks) -> Layer:
    """The classifier: the last trainable layer, which must lie after every block."""
    layers = linear_layers(graph)
    head = layers[-1]
    last_block_op = max(i for i, b in enumerate(blocks.op_block) if b is not None)
    if blocks.op_block[head.op_index] is not None or head.op_index < last_block_op:
        raise UsageError(f"model {graph.name!r}: its last trainable layer {head.name} is not a head after the blocks")
    return head
