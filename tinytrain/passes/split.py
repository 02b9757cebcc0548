"""Split a graph at an op index into a prefix and a suffix graph.

The *boundary* is the set of tensors the suffix reads that the prefix (or the graph
input) produces. The prefix graph outputs the boundary; the suffix graph takes the
boundary as its inputs. Running the prefix then the suffix gives exactly the bytes of
the whole graph (same ops, same kernels). Training uses it to compute the frozen
stage once per sample and to evaluate with the current weights.
"""

from __future__ import annotations

from dataclasses import replace

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.tensor import TensorKind
from tinytrain.ir.verify import verify


def boundary(graph: Graph, at: int) -> tuple[str, ...]:
    """Non-constant tensors read by ``graph.ops[at:]`` (or graph outputs) and produced
    before ``at`` (or graph inputs), in first-use order."""
    produced_before = set(graph.inputs) | {n for op in graph.ops[:at] for n in op.outputs}
    out: dict[str, None] = {}
    for op in graph.ops[at:]:
        for n in op.inputs:
            if n is not None and n in produced_before and graph.tensor(n).data is None:
                out[n] = None
    for n in graph.outputs:
        if n in produced_before:
            out[n] = None
    return tuple(out)


def prefix_graph(graph: Graph, at: int) -> Graph:
    if not 0 <= at <= len(graph.ops):
        raise UsageError(f"split point {at} outside 0..{len(graph.ops)}")
    outs = boundary(graph, at)
    used = {n for op in graph.ops[:at] for n in (*op.inputs, *op.outputs) if n is not None} | set(graph.inputs)
    g = Graph(
        name=f"{graph.name}[:{at}]",
        tensors=tuple(t for t in graph.tensors if t.name in used),
        ops=graph.ops[:at],
        inputs=graph.inputs,
        outputs=outs,
    )
    verify(g)
    return g


def suffix_graph(graph: Graph, at: int) -> Graph:
    if not 0 <= at <= len(graph.ops):
        raise UsageError(f"split point {at} outside 0..{len(graph.ops)}")
    ins = boundary(graph, at)
    used = {n for op in graph.ops[at:] for n in (*op.inputs, *op.outputs) if n is not None} | set(ins)
    used |= set(graph.outputs)
    tensors = tuple(
        replace(t, kind=TensorKind.INPUT) if t.name in ins else t for t in graph.tensors if t.name in used
    )
    g = Graph(name=f"{graph.name}[{at}:]", tensors=tensors, ops=graph.ops[at:], inputs=ins, outputs=graph.outputs)
    verify(g)
    return g
