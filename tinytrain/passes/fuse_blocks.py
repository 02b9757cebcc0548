"""Fuse the inverted-residual blocks of a graph's frozen stage into row-streamed kernels.

``fuse_frozen_blocks(graph, frozen_until_op)`` scans ``graph.ops[:frozen_until_op]``
(the ops that need no gradient: nothing before that index is trained or saved for the
backward pass) for runs of consecutive ops of the form

    [PAD] → [CONV_2D] → [PAD] → DEPTHWISE_CONV_2D → CONV_2D 1×1 → [ADD(block input, ·)]

— the op order of both the MCUNet frontend (explicit PAD before a stride-2 depthwise
on an even size, PAD before the stem) and the TFLite converter (padding folded into
SAME) — and records each as a :class:`FusedBlock` (an op index range; the IR is not
changed). The leading CONV_2D is the 1×1 expansion; with ``fuse_stem`` (default) any
other CONV_2D may lead too, e.g. MobileNetV2's 3×3 stride-2 stem in front of block 0,
whose output then never exists either. A run is fused only when every intermediate
tensor is read by the next op of the run alone, is not a graph output nor in ``keep``
(tensors the caller needs, e.g. saved for a backward pass), the fused kernel
accepts the ops (int8, depth multiplier 1, ...), and its scratch is smaller than the
tensors it removes. Runs are matched left to right,
longest first.

:class:`FusedSimulator` runs the graph with those ranges executed by
:func:`tinytrain.sim.kernels.fused_block.run_fused_block` (same bytes as the plain
simulator), and :func:`activation_requests` lists the activation buffers (and the
fused kernels' scratch) of the stage for :mod:`tinytrain.train.planner`, so the peak of
the fused and the unfused stage can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.errors import GraphError, TinytrainError, UnsupportedOpError, UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Conv2DAttrs, Op
from tinytrain.ir.verify import verify
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.fused_block import (
    ChainOps,
    FusedBlockParams,
    Scratch,
    chain_roles,
    prepare_fused_block,
    run_fused_block,
)
from tinytrain.train.planner import DEFAULT_ALIGNMENT, BufferKind, BufferRequest

MAX_CHAIN = 6


@dataclass(frozen=True)
class FusedBlock:
    """Ops ``start … stop − 1`` of the graph, run as one fused kernel from ``input`` to ``output``."""

    start: int
    stop: int
    input: str
    output: str
    chain: ChainOps
    internal: tuple[str, ...]  # tensors the fused kernel never materializes
    removed_bytes: int  # their total size (per sample)
    scratch: Scratch  # bytes per sample
    inplace_ok: bool  # the output may overwrite the input (see fused_block)

    @property
    def scratch_bytes(self) -> int:
        return self.scratch.total

    @property
    def op_indices(self) -> range:
        return range(self.start, self.stop)

    def describe(self, graph: Graph) -> str:
        kinds = " → ".join(graph.ops[i].kind.value for i in self.op_indices)
        return f"ops #{self.start}–#{self.stop - 1} ({kinds}): {self.input} → {self.output}"


@dataclass(frozen=True)
class FusedGraph:
    """A graph and the fused blocks of its frozen stage (ops before ``frozen_until_op``)."""

    graph: Graph
    blocks: tuple[FusedBlock, ...]
    frozen_until_op: int

    def units(self, stop_op: int | None = None) -> tuple[int | FusedBlock, ...]:
        """The execution order: op indices, and a fused block in place of its ops."""
        stop = len(self.graph.ops) if stop_op is None else stop_op
        starts = {b.start: b for b in self.blocks}
        out: list[int | FusedBlock] = []
        i = 0
        while i < stop:
            b = starts.get(i)
            if b is not None:
                out.append(b)
                i = b.stop
            else:
                out.append(i)
                i += 1
        return tuple(out)

    @property
    def internal_tensors(self) -> frozenset[str]:
        return frozenset(n for b in self.blocks for n in b.internal)


def unfused(graph: Graph, frozen_until_op: int | None = None) -> FusedGraph:
    """The graph with no fused block (for comparisons)."""
    return FusedGraph(graph, (), len(graph.ops) if frozen_until_op is None else frozen_until_op)


def fuse_frozen_blocks(
    graph: Graph, frozen_until_op: int, *, fuse_stem: bool = True, keep: Collection[str] = ()
) -> FusedGraph:
    """Finds the fusable inverted-residual runs among ``graph.ops[:frozen_until_op]``."""
    if not 0 <= frozen_until_op <= len(graph.ops):
        raise UsageError(f"frozen_until_op {frozen_until_op} outside 0..{len(graph.ops)}")
    consumers = graph.consumers()
    protected = set(graph.outputs) | set(keep)
    blocks: list[FusedBlock] = []
    i = 0
    while i < frozen_until_op:
        block = None
        for length in range(min(MAX_CHAIN, frozen_until_op - i), 1, -1):
            block = _try_block(graph, range(i, i + length), consumers, protected, fuse_stem)
            if block is not None:
                break
        if block is None:
            i += 1
        else:
            blocks.append(block)
            i = block.stop
    return FusedGraph(graph, tuple(blocks), frozen_until_op)


def _try_block(
    graph: Graph, idx: range, consumers: Any, protected: Collection[str], fuse_stem: bool
) -> FusedBlock | None:
    try:
        chain = chain_roles(graph, list(idx))
    except GraphError:
        return None
    if chain.lead is not None and not fuse_stem and not _is_pointwise(graph, graph.ops[chain.lead]):
        return None
    internal = [graph.ops[i].outputs[0] for i in idx[:-1]]
    for k, name in enumerate(internal):
        if name in protected or tuple(consumers.get(name, ())) != (idx[k + 1],) or len(graph.ops[idx[k]].outputs) != 1:
            return None
    try:
        params = prepare_fused_block(graph, list(idx))
    except TinytrainError:
        return None
    removed = sum(graph.tensor(n).nbytes for n in internal)
    if params.scratch_bytes >= removed:
        return None  # no memory gain (e.g. a small stride-2 depthwise without expansion)
    return FusedBlock(
        start=idx.start,
        stop=idx.stop,
        input=params.input_name,
        output=params.output_name,
        chain=chain,
        internal=tuple(internal),
        removed_bytes=removed,
        scratch=params.scratch,
        inplace_ok=params.inplace_ok,
    )


def _is_pointwise(graph: Graph, op: Op) -> bool:
    """A 1×1 stride-1 CONV_2D (an expansion, not a stem)."""
    a = op.attrs
    w = op.inputs[1]
    return (
        isinstance(a, Conv2DAttrs)
        and (a.stride_h, a.stride_w) == (1, 1)
        and w is not None
        and graph.tensor(w).shape[1:3] == (1, 1)
    )


# ------------------------------------------------------------------------------- runner


@dataclass(frozen=True)
class _OpUnit:
    op: Op
    spec: KernelSpec
    params: Any
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class _BlockUnit:
    params: FusedBlockParams
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


class FusedSimulator:
    """Runs a :class:`FusedGraph`: plain simulator kernels, fused blocks by the fused kernel."""

    def __init__(self, fused: FusedGraph, chunk: int = 32) -> None:
        graph = fused.graph
        verify(graph)
        self.graph = graph
        self.chunk = max(1, chunk)
        units: list[_OpUnit | _BlockUnit] = []
        batch_safe = all(graph.tensor(n).shape[:1] == (1,) for n in graph.inputs)
        for u in fused.units():
            if isinstance(u, FusedBlock):
                p = prepare_fused_block(graph, list(u.op_indices))
                units.append(_BlockUnit(p, (u.input,), (u.output,)))
                continue
            op = graph.ops[u]
            spec = KERNELS.get(op.kind)
            if spec is None:
                names = tuple(n for n in (*op.inputs, *op.outputs) if n is not None)
                raise UnsupportedOpError(op.kind.value, op.index, names, "no simulator kernel")
            ins, outs = graph.op_inputs(op), graph.op_outputs(op)
            batch_safe = batch_safe and spec.batch_safe(op, ins, outs)
            units.append(_OpUnit(op, spec, spec.prepare(op, ins, outs), op.inputs, op.outputs))
        self._units = tuple(units)
        self.batch_safe = batch_safe
        last: dict[str, int] = {}
        for k, unit in enumerate(units):
            for n in unit.inputs:
                if n is not None:
                    last[n] = k
        self._frees = tuple(
            tuple(n for n in dict.fromkeys(unit.inputs) if n is not None and last.get(n) == k
                  and n not in graph.outputs and graph.tensor(n).data is None)
            for k, unit in enumerate(units)
        )  # fmt: skip

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every graph output for the N samples stacked on axis 0 of each input."""
        graph = self.graph
        if len(inputs) != len(graph.inputs):
            raise UsageError(f"the model takes {len(graph.inputs)} input(s), got {len(inputs)}")
        n = int(inputs[0].shape[0]) if inputs else 0
        for x, name in zip(inputs, graph.inputs, strict=True):
            t = graph.tensor(name)
            if x.dtype != t.dtype.np or tuple(x.shape[1:]) != t.shape[1:] or x.shape[0] != n:
                raise UsageError(f"input {name!r} must be {t.dtype.value} (N, {t.shape[1:]}), got {x.shape}")
        fixed_batch = any(graph.tensor(name).shape[:1] != (1,) for name in graph.inputs)
        step = max(n, 1) if fixed_batch else (self.chunk if self.batch_safe else 1)
        parts: list[list[np.ndarray]] = [[] for _ in graph.outputs]
        for start in range(0, n, step):
            for acc, y in zip(parts, self._run_once([x[start : start + step] for x in inputs]), strict=True):
                acc.append(y)
        if n == 0:
            return [np.zeros((0, *t.shape[1:]), t.dtype.np) for t in map(graph.tensor, graph.outputs)]
        return [np.concatenate(p, axis=0) for p in parts]

    def _run_once(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        graph = self.graph
        values: dict[str, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))

        def arg(name: str | None) -> np.ndarray | None:
            if name is None:
                return None
            data = graph.tensor(name).data
            return data if data is not None else values[name]

        for unit, frees in zip(self._units, self._frees, strict=True):
            if isinstance(unit, _BlockUnit):
                values[unit.outputs[0]] = run_fused_block(unit.params, values[unit.inputs[0]])
            else:
                outs = unit.spec.run(unit.params, [arg(n) for n in unit.inputs])
                for name, y in zip(unit.outputs, outs, strict=True):
                    values[name] = y
            for name in frees:
                values.pop(name, None)
        return [values[n] if n in values else np.asarray(graph.tensor(n).data) for n in graph.outputs]


def run_fused(fused: FusedGraph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Convenience: ``FusedSimulator(fused).run(inputs)``."""
    return FusedSimulator(fused).run(inputs)


# ------------------------------------------------------------------------------- memory


def activation_requests(
    fused: FusedGraph,
    stop_op: int | None = None,
    *,
    alignment: int = DEFAULT_ALIGNMENT,
    size_of: Callable[[str], int] | None = None,
) -> tuple[BufferRequest, ...]:
    """The activation buffers of ``graph.ops[:stop_op]`` (default: the frozen stage), one
    step per execution unit (an op, or a fused block), for :func:`plan_buffers`.

    A tensor lives from the step that writes it (graph inputs: step 0) to the last step
    that reads it; a tensor still needed after the stage (read by a later op, or a
    graph output) lives until the last step. Each fused block adds its scratch
    (``<output>.scratch``, kind ``scratch``) for its own step. Tensors inside fused
    blocks do not exist. ``size_of(name)`` overrides a tensor's size (default: its bytes).
    """
    graph = fused.graph
    units = fused.units(fused.frozen_until_op if stop_op is None else stop_op)
    last_step = max(len(units) - 1, 0)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for name in graph.inputs:
        first[name] = 0
    scratch: list[BufferRequest] = []
    for step, u in enumerate(units):
        if isinstance(u, FusedBlock):
            reads: Sequence[str | None] = (u.input,)
            writes: Sequence[str] = (u.output,)
            scratch.append(BufferRequest(f"{u.output}.scratch", u.scratch_bytes, step, step, BufferKind.SCRATCH,
                                         alignment))  # fmt: skip
        else:
            reads, writes = graph.ops[u].inputs, graph.ops[u].outputs
        for n in reads:
            if n is not None and graph.tensor(n).data is None:
                last[n] = step
        for n in writes:
            first.setdefault(n, step)
            last.setdefault(n, step)
    tail = units[-1] if units else -1
    stop = tail.stop if isinstance(tail, FusedBlock) else tail + 1
    later = {n for op in graph.ops[stop:] for n in op.inputs if n is not None} | set(graph.outputs)
    out = []
    for name, f in first.items():
        size = size_of(name) if size_of is not None else graph.tensor(name).nbytes
        lst = last_step if name in later else max(last.get(name, f), f)
        out.append(BufferRequest(name, size, f, lst, BufferKind.ACTIVATION, alignment))
    return (*out, *scratch)
