"""Drop a trailing SOFTMAX / LOG_SOFTMAX: training works on the logits."""

from __future__ import annotations

from dataclasses import replace

from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.ir.verify import verify


def strip_softmax(graph: Graph) -> Graph:
    """The graph whose output is the input of its final softmax (unchanged when the
    single output is not produced by a SOFTMAX / LOG_SOFTMAX)."""
    if len(graph.outputs) != 1 or not graph.ops:
        return graph
    last = graph.ops[-1]
    if last.kind not in (OpKind.SOFTMAX, OpKind.LOG_SOFTMAX) or last.outputs != graph.outputs:
        return graph
    logits = last.inputs[0]
    assert logits is not None
    kept = graph.ops[:-1]
    used = {n for op in kept for n in (*op.inputs, *op.outputs) if n is not None} | set(graph.inputs)
    out = replace(graph, tensors=tuple(t for t in graph.tensors if t.name in used), ops=kept, outputs=(logits,))
    verify(out)
    return out
