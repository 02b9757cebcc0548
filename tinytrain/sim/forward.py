"""The forward simulator: runs an IR graph in numpy, bit-exact with TFLite Micro.

``Simulator(graph)`` prepares every op once (validation and fixed-point parameters);
``run(inputs)`` executes the ops in order on N samples at once when every op is batch
safe (see :mod:`tinytrain.sim.kernel_spec`), one sample at a time otherwise. Values are
dropped after their last use, so memory stays near the naive activation peak × N.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.errors import GraphError, TinytrainError, UnsupportedOpError, UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op
from tinytrain.ir.verify import verify
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels import KERNELS

DEFAULT_CHUNK = 32


@dataclass(frozen=True)
class _Step:
    op: Op
    spec: KernelSpec
    params: Any
    frees: tuple[str, ...]  # values whose last use is this op


def _prepare(op: Op, spec: KernelSpec, graph: Graph) -> Any:
    ins, outs = graph.op_inputs(op), graph.op_outputs(op)
    try:
        return spec.prepare(op, ins, outs)
    except TinytrainError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError, ArithmeticError) as exc:
        raise GraphError(f"{op.describe()}: invalid op ({type(exc).__name__}: {exc})") from None


class Simulator:
    """Runs a graph's forward pass with tinytrain's numpy kernels."""

    def __init__(self, graph: Graph, chunk: int = DEFAULT_CHUNK) -> None:
        verify(graph)
        self.graph = graph
        self.chunk = max(1, chunk)
        last_use: dict[str, int] = {}
        for i, op in enumerate(graph.ops):
            for name in op.inputs:
                if name is not None:
                    last_use[name] = i
        keep = set(graph.outputs)
        steps = []
        batch_safe = all(graph.tensor(n).shape[:1] == (1,) for n in graph.inputs)
        for i, op in enumerate(graph.ops):
            spec = KERNELS.get(op.kind)
            if spec is None:
                names = tuple(n for n in (*op.inputs, *op.outputs) if n is not None)
                raise UnsupportedOpError(op.kind.value, op.index, names, "no simulator kernel")
            params = _prepare(op, spec, graph)
            batch_safe = batch_safe and spec.batch_safe(op, graph.op_inputs(op), graph.op_outputs(op))
            frees = tuple(
                n for n in dict.fromkeys(op.inputs)
                if n is not None and last_use.get(n) == i and n not in keep and graph.tensor(n).data is None
            )
            steps.append(_Step(op, spec, params, frees))
        self._steps = tuple(steps)
        self.batch_safe = batch_safe

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> int:
        if len(inputs) != len(self.graph.inputs):
            raise UsageError(f"the model takes {len(self.graph.inputs)} input(s), got {len(inputs)}")
        n = -1
        for x, name in zip(inputs, self.graph.inputs, strict=True):
            t = self.graph.tensor(name)
            if x.dtype != t.dtype.np:
                raise UsageError(f"input {name!r} must be {t.dtype.value}, got {x.dtype}")
            if x.ndim != len(t.shape) or tuple(x.shape[1:]) != t.shape[1:]:
                want = ("N", *t.shape[1:])
                raise UsageError(f"input {name!r} must have shape {want}, got {tuple(x.shape)}")
            if t.shape[:1] != (1,) and x.shape[0] != t.shape[0]:
                raise UsageError(f"input {name!r} has a fixed batch of {t.shape[0]}, got {x.shape[0]}")
            if n not in (-1, x.shape[0]):
                raise UsageError("all inputs must hold the same number of samples")
            n = x.shape[0]
        return n

    def run(self, inputs: Sequence[np.ndarray], progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Returns every graph output for the N samples stacked on axis 0 of each input."""
        n = self._check_inputs(inputs)
        fixed_batch = any(self.graph.tensor(nm).shape[:1] != (1,) for nm in self.graph.inputs)
        step = n if fixed_batch else (self.chunk if self.batch_safe else 1)
        parts: list[list[np.ndarray]] = [[] for _ in self.graph.outputs]
        for start in range(0, n, max(step, 1)):
            outs = self._run_once([x[start : start + step] for x in inputs])
            for acc, y in zip(parts, outs, strict=True):
                acc.append(y)
            if progress is not None:
                progress(min(step, n - start))
        if n == 0:
            return [np.zeros((0, *t.shape[1:]), t.dtype.np) for t in map(self.graph.tensor, self.graph.outputs)]
        return [np.concatenate(p, axis=0) for p in parts]

    def _run_once(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        graph = self.graph
        values: dict[str, np.ndarray] = dict(zip(graph.inputs, inputs, strict=True))
        for step in self._steps:
            args: list[np.ndarray | None] = []
            for name in step.op.inputs:
                if name is None:
                    args.append(None)
                else:
                    t = graph.tensor(name)
                    args.append(t.data if t.data is not None else values[name])
            outs = step.spec.run(step.params, args)
            if len(outs) != len(step.op.outputs):
                raise GraphError(f"{step.op.describe()}: kernel returned {len(outs)} outputs")
            for name, y in zip(step.op.outputs, outs, strict=True):
                t = graph.tensor(name)
                if y.dtype != t.dtype.np or tuple(y.shape[1:]) != t.shape[1:]:
                    raise GraphError(
                        f"{step.op.describe()}: kernel produced {y.dtype}{list(y.shape)} for {name!r}, "
                        f"IR says {t.dtype.value}{list(t.shape)}"
                    )
                values[name] = y
            for name in step.frees:
                values.pop(name, None)
        return [values[name] if name in values else np.asarray(graph.tensor(name).data) for name in graph.outputs]


def run_graph(graph: Graph, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Convenience: ``Simulator(graph).run(inputs)``."""
    return Simulator(graph).run(inputs)
