"""A stable, human-readable text dump of an IR graph (diffable across runs)."""

from __future__ import annotations

import dataclasses
import hashlib

from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op
from tinytrain.ir.tensor import Quantization, Tensor


def _quant(q: Quantization | None) -> str:
    if q is None:
        return ""
    if q.axis is None:
        return f" q(scale={q.scale[0]:.9g}, zp={q.zero_point[0]})"
    return f" q(axis={q.axis}, n={len(q.scale)}, scale[0]={q.scale[0]:.9g}, zp[0]={q.zero_point[0]})"


def tensor_line(t: Tensor) -> str:
    shape = "x".join(str(d) for d in t.shape) or "scalar"
    digest = ""
    if t.data is not None:
        digest = " sha1=" + hashlib.sha1(t.data.tobytes()).hexdigest()[:12]
    return f"%{t.name}: {t.dtype.value}[{shape}] {t.kind.value}{_quant(t.quant)}{digest}"


def _attrs(op: Op) -> str:
    fields = dataclasses.fields(op.attrs)
    if not fields:
        return ""
    parts = []
    for f in fields:
        v = getattr(op.attrs, f.name)
        parts.append(f"{f.name}={getattr(v, 'value', v)}")
    return " {" + ", ".join(parts) + "}"


def op_line(op: Op) -> str:
    ins = ", ".join("-" if n is None else f"%{n}" for n in op.inputs)
    outs = ", ".join(f"%{n}" for n in op.outputs)
    return f"{outs} = {op.kind.value}({ins}){_attrs(op)}"


def dump(graph: Graph) -> str:
    lines = [f"graph {graph.name} ("]
    lines += [f"  in  {tensor_line(graph.tensor(n))}" for n in graph.inputs]
    lines.append(") {")
    for t in graph.tensors:
        if t.data is not None:
            lines.append(f"  const {tensor_line(t)}")
    for i, op in enumerate(graph.ops):
        lines.append(f"  [{i:3d}] {op_line(op)}")
    for t in graph.tensors:
        if t.data is None and t.name not in graph.inputs:
            lines.append(f"  value {tensor_line(t)}")
    lines.append("} -> (" + ", ".join(f"%{n}" for n in graph.outputs) + ")")
    return "\n".join(lines) + "\n"
