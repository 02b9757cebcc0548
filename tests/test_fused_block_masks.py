"""Live fused blocks: the row-streamed kernel emits exactly the clamp masks the backward
pass needs (the same bits as masks taken from the unfused tensors), so a training program
can fuse blocks whose activations the backward only needs as masks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tinytrain.frontends.load import load_model
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.passes.replace_head import replace_head
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels.fused_block import prepare_fused_block, run_fused_block
from tinytrain.train.build import build_training_program
from tinytrain.train.scheme import preset, resolve


@pytest.mark.parametrize("model", [CHECKPOINT, "mbv2-w0.35-128-fmnist04-int8.tflite"])
def test_fused_kernel_emits_the_backward_masks(model: str) -> None:
    graph = replace_head(load_model(shipped(model)), 10, "zero", 0)
    program = build_training_program(graph, resolve(preset("bias-only", graph), graph))
    live = [b for b in program.fused.blocks if any(program.backward_of(i) is not None for i in b.op_indices)]
    assert live, "bias-only should fuse blocks in the live part of the program"
    needed = {n for b in live for n in (b.input, *b.internal)}
    probe = replace(graph, outputs=tuple(sorted(needed)))
    x = np.random.default_rng(4).integers(-128, 128, (3, *graph.tensor(graph.inputs[0]).shape[1:]), dtype=np.int8)
    values = dict(zip(probe.outputs, Simulator(probe).run([x]), strict=True))
    checked = 0
    for block in live:
        roles = {"lead": block.chain.lead, "depthwise": block.chain.depthwise, "project": block.chain.project}
        sinks = {}
        for role, i in roles.items():
            step = program.backward_of(i) if i is not None else None
            if i is None or step is None or step.params.clamp is None:
                continue
            out = graph.ops[i].outputs[0]
            if out not in block.internal:
                continue
            lo, hi = step.params.clamp
            sinks[role] = (lo, hi, np.zeros((3, *graph.tensor(out).shape[1:]), dtype=bool), out)
        params = prepare_fused_block(graph, block.op_indices)
        y = run_fused_block(params, values[block.input], masks={r: v[:3] for r, v in sinks.items()})
        for lo, hi, sink, out in sinks.values():
            expected = (values[out] > lo) & (values[out] < hi)
            assert np.array_equal(sink, expected), out
            checked += 1
        assert y.shape[0] == 3
    assert checked >= 3
