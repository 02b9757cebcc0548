"""Static figures of a graph: parameters, MACs per op, naive peak activation memory."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind


@dataclass(frozen=True)
class OpStats:
    index: int
    kind: str
    outputs: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int


@dataclass(frozen=True)
class GraphStats:
    num_ops: int
    num_tensors: int
    parameters: int
    parameter_bytes: int
    macs: int
    peak_activation_bytes: int
    peak_at_op: int
    ops: tuple[OpStats, ...]
    op_histogram: tuple[tuple[str, int], ...]


def op_macs(graph: Graph, op: Op) -> int:
    """Multiply-accumulates of one op (0 for ops that do no dot products)."""
    outs = graph.op_outputs(op)
    ins = graph.op_inputs(op)
    if not outs or not ins or ins[0] is None:
        return 0
    out = outs[0]
    if op.kind is OpKind.CONV_2D and len(ins) > 1 and ins[1] is not None:
        _, kh, kw, cin = ins[1].shape if len(ins[1].shape) == 4 else (0, 0, 0, 0)
        return out.size * kh * kw * cin
    if op.kind is OpKind.DEPTHWISE_CONV_2D and len(ins) > 1 and ins[1] is not None and len(ins[1].shape) == 4:
        return out.size * ins[1].shape[1] * ins[1].shape[2]
    if op.kind is OpKind.FULLY_CONNECTED and len(ins) > 1 and ins[1] is not None and ins[1].shape:
        return out.size * ins[1].shape[-1]
    if op.kind is OpKind.BATCH_MATMUL and ins[0].shape:
        return out.size * ins[0].shape[-1]
    return 0


def _is_parameter(graph: Graph, name: str) -> bool:
    t = graph.tensor(name)
    return t.data is not None and (t.quant is not None or t.dtype.is_float)


def naive_peak(graph: Graph) -> tuple[int, int]:
    """Peak bytes of live activations when every tensor has its own buffer from the op
    that writes it to the last op that reads it (no arena sharing, no in-place ops).
    Returns (bytes, index of the op at the peak)."""
    last: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for n in op.inputs:
            if n is not None:
                last[n] = i
    end = len(graph.ops)
    for n in graph.outputs:
        last[n] = end
    first: dict[str, int] = {n: 0 for n in graph.inputs}
    for i, op in enumerate(graph.ops):
        for n in op.outputs:
            first.setdefault(n, i)
    peak, at = 0, 0
    for i in range(len(graph.ops)):
        live = sum(
            graph.tensor(n).nbytes
            for n, s in first.items()
            if s <= i <= last.get(n, s) and graph.tensor(n).data is None
        )
        if live > peak:
            peak, at = live, i
    return peak, at


def graph_stats(graph: Graph) -> GraphStats:
    ops = tuple(
        OpStats(
            index=i,
            kind=op.kind.value,
            outputs=op.outputs,
            output_shapes=tuple(graph.tensor(n).shape for n in op.outputs),
            macs=op_macs(graph, op),
        )
        for i, op in enumerate(graph.ops)
    )
    param_names = {n for op in graph.ops for n in op.inputs if n is not None and _is_parameter(graph, n)}
    params = sum(graph.tensor(n).size for n in param_names)
    param_bytes = sum(graph.tensor(n).nbytes for n in param_names)
    hist: dict[str, int] = {}
    for op in graph.ops:
        hist[op.kind.value] = hist.get(op.kind.value, 0) + 1
    peak, at = naive_peak(graph)
    return GraphStats(
        num_ops=len(graph.ops),
        num_tensors=len(graph.tensors),
        parameters=params,
        parameter_bytes=param_bytes,
        macs=sum(o.macs for o in ops),
        peak_activation_bytes=peak,
        peak_at_op=at,
        ops=ops,
        op_histogram=tuple(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
    )


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024**exp:.1f} {('B', 'KiB', 'MiB', 'GiB')[exp]}"
