"""ALaST's class-token signal, resolved against a graph (docs/schemes.md, "ALaST").

Every step, each candidate transformer block gets an importance score, how much it changed
the class token in this step's forward pass (tinytrain/train/kernels/cls_change.py); the
``budget`` blocks of the largest score (``explore`` of them by age instead) update their
weights in the backward pass of the same step, the others only their biases. The blocks' layers
are DGSU layers with every row (tinytrain/train/scheme.py, ``DynamicRows``) grouped by block,
so the row loops of a frozen block run zero times.

The forward copies the class-token row (token 0) of each residual-stream tensor a
candidate block reads or writes into the buffer :data:`CLS_BUFFER` (``[rows, dim]`` int8,
one row per tensor in :attr:`ClsSignal.tensors` order), right after the op that makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.train.kernels.cls_change import cls_change, common_multipliers
from tinytrain.train.vit_blocks import vit_blocks

CLS_BUFFER = "alast:cls"


@dataclass(frozen=True)
class ClsSignal:
    """``blocks``: the candidate blocks (model numbers, ascending); ``tensors``: the distinct
    residual-stream tensors they read or write, in forward order; block ``blocks[j]`` reads
    ``tensors[src[j]]`` and writes ``tensors[dst[j]]``; ``zero_points``/``mults``: per
    tensor, for the common scale (kernels/cls_change.py); ``dim``: the embedding width."""

    blocks: tuple[int, ...]
    tensors: tuple[str, ...]
    src: tuple[int, ...]
    dst: tuple[int, ...]
    zero_points: tuple[int, ...]
    mults: tuple[int, ...]
    dim: int

    @property
    def buffer_bytes(self) -> int:
        return len(self.tensors) * self.dim

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """int64 ``[len(blocks)]`` from the copied class-token rows."""
        return cls_change(rows, self.zero_points, self.mults, self.src, self.dst)


def cls_signal(graph: Graph, blocks: tuple[int, ...]) -> ClsSignal:
    """The signal of ``blocks`` of a ViT graph: each block's input is the activation its
    first op reads (the residual stream, as the first LayerNorm's MEAN), its output is the
    output of its last op (the second residual ADD)."""
    vb = vit_blocks(graph)
    ends: list[tuple[str, str]] = []
    for b in blocks:
        ops = [i for i, ob in enumerate(vb.op_block) if ob == b]
        first, last = graph.ops[ops[0]], graph.ops[ops[-1]]
        src, dst = first.inputs[0], last.outputs[0]
        if src is None or not dst:
            raise UsageError(f"alast: block {b} has no residual-stream input or output")
        ends.append((str(src), str(dst)))
    names: list[str] = []
    for pair in ends:
        for n in pair:
            if n not in names:
                names.append(n)
    tensors = [graph.tensor(n) for n in names]
    for t in tensors:
        if t.quant is None or t.dtype is not DType.INT8 or len(t.shape) != 3 or t.quant.axis is not None:
            raise UsageError(
                f"alast: the residual-stream tensor {t.name!r} must be per-tensor quantized int8 [1, tokens, dim], "
                f"got {t.dtype.value} {list(t.shape)}"
            )
    dims = {t.shape[2] for t in tensors}
    if len(dims) != 1:
        raise UsageError(f"alast: the residual stream changes width across blocks {list(blocks)} ({sorted(dims)})")
    return ClsSignal(
        blocks=tuple(blocks),
        tensors=tuple(names),
        src=tuple(names.index(s) for s, _ in ends),
        dst=tuple(names.index(d) for _, d in ends),
        zero_points=tuple(int(t.quant.zero_point[0]) for t in tensors if t.quant is not None),
        mults=common_multipliers([float(t.quant.scale[0]) for t in tensors if t.quant is not None]),
        dim=dims.pop(),
    )
