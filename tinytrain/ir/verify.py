"""The IR verifier, run after the frontends and after every transformation.

It checks graph-level invariants only (names resolve, single assignment, execution
order, kinds and constant data agree, size limits). Op-specific shape rules are checked
by each kernel's ``prepare`` (the simulator runs it for every op at construction).
"""

from __future__ import annotations

from tinytrain.errors import GraphError
from tinytrain.ir.graph import Graph
from tinytrain.ir.tensor import TensorKind

# One tensor of more elements than this is refused: no MCU model comes close, and a
# corrupt file claiming such a shape must not make the host allocate gigabytes.
MAX_TENSOR_ELEMENTS = 1 << 26


def verify(graph: Graph) -> None:
    """Raises :class:`GraphError` describing the first violated invariant."""
    if not graph.inputs:
        raise GraphError(f"graph {graph.name!r} has no input")
    if not graph.outputs:
        raise GraphError(f"graph {graph.name!r} has no output")
    for t in graph.tensors:
        if t.size > MAX_TENSOR_ELEMENTS:
            raise GraphError(f"tensor {t.name!r} has {t.size} elements (limit {MAX_TENSOR_ELEMENTS})")
        if t.kind in (TensorKind.CONSTANT, TensorKind.TRAINABLE) and t.data is None:
            raise GraphError(f"{t.kind.value} tensor {t.name!r} has no data")
        if t.kind in (TensorKind.INPUT, TensorKind.ACTIVATION) and t.data is not None:
            raise GraphError(f"{t.kind.value} tensor {t.name!r} must not carry constant data")
        if t.quant is not None and t.quant.axis is not None and t.quant.axis >= len(t.shape):
            raise GraphError(f"tensor {t.name!r}: quantized dimension {t.quant.axis} out of range")
    for name in graph.inputs:
        if graph.tensor(name).kind is not TensorKind.INPUT:
            raise GraphError(f"graph input {name!r} is not of kind input")
    defined = {t.name for t in graph.tensors if t.data is not None} | set(graph.inputs)
    written: set[str] = set()
    for op in graph.ops:
        if not op.outputs:
            raise GraphError(f"{op.describe()} has no output")
        for maybe in op.inputs:
            if maybe is None:
                continue
            graph.tensor(maybe)
            if maybe not in defined:
                raise GraphError(f"{op.describe()} reads {maybe!r} before any op writes it")
        for name in op.outputs:
            t = graph.tensor(name)
            if name in written or t.data is not None or t.kind is TensorKind.INPUT:
                raise GraphError(f"{op.describe()} writes {name!r}, which is already defined")
            written.add(name)
            defined.add(name)
    for name in graph.outputs:
        if name not in defined:
            raise GraphError(f"graph output {name!r} is never computed")
