"""Shared by the fused-backward tests (numpy and C): the executor's forward pass with the
saves of chosen backward steps, and steps made to also request weight gradients."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tinytrain.sim.kernels import KERNELS
from tinytrain.train.build import BackwardStep, TrainingProgram
from tinytrain.train.grad_rules import Saved, save_forward


def forward_and_save(program: TrainingProgram, steps: dict[int, BackwardStep], x: np.ndarray) -> dict[int, Saved]:
    """The executor's forward pass (original weights) with the saves of ``steps`` (by op index)."""
    graph = program.graph
    values: dict[str, np.ndarray] = {graph.inputs[0]: x}
    saved: dict[int, Saved] = {}
    for i, op in enumerate(graph.ops):
        spec = KERNELS[op.kind]
        params = spec.prepare(op, graph.op_inputs(op), graph.op_outputs(op))
        args = [
            None if n is None else (graph.tensor(n).data if graph.tensor(n).data is not None else values[n])
            for n in op.inputs
        ]
        outs = spec.run(params, args)
        for name, y in zip(op.outputs, outs, strict=True):
            values[name] = y
        st = steps.get(i)
        if st is not None:
            src = st.target(0)
            if src is not None and src != op.inputs[0]:
                args = [values[src], *args[1:]]
            saved[i] = save_forward(st.params, args, outs)
    return saved


def with_weights(step: BackwardStep, n: int) -> BackwardStep:
    """``step`` also requesting the weight gradient of (at most) ``n`` input channels: 0, 2, 4, ..."""
    kernel = step.params.kernel
    req = replace(step.params.request, weight_channels=tuple(range(0, kernel.in_channels, 2))[:n])
    return replace(step, params=replace(step.params, request=req))
