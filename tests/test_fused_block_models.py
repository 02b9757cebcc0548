"""The fusion pass on whole models: the shipped MCUNet-format checkpoint and the shipped
converter-made Keras MobileNetV2 (alpha 0.35, 96×96); fused == unfused byte for byte,
the blocks found, and the memory of the frozen stage."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.frontends.load import load_model
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
from tinytrain.passes.fuse_blocks import (
    FusedBlock,
    FusedSimulator,
    activation_requests,
    fuse_frozen_blocks,
    unfused,
)
from tinytrain.sim.forward import Simulator
from tinytrain.train.planner import BufferKind, plan_buffers


@cache
def _model(name: str) -> Graph:
    return load_model(shipped(name))


@cache
def _reference(name: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    g = _model(name)
    shape = g.tensor(g.inputs[0]).shape
    x = np.random.default_rng(42).integers(-128, 128, (4, *shape[1:]), dtype=np.int8)
    return x, tuple(Simulator(g).run([x]))


def _kinds(g: Graph, b: FusedBlock) -> list[str]:
    return [g.ops[i].kind.value for i in b.op_indices]


def _assert_same(name: str, fused_graph: object) -> None:
    x, want = _reference(name)
    got = FusedSimulator(fused_graph).run([x])  # type: ignore[arg-type]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_mcunet_checkpoint_blocks_and_bytes() -> None:
    g = _model(CHECKPOINT)
    fused = fuse_frozen_blocks(g, len(g.ops))
    kinds = [_kinds(g, b) for b in fused.blocks]
    # the stem (with its explicit PAD) leads block 0; stride-2 blocks carry their PAD; residual blocks their ADD
    assert kinds[0] == ["PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert ["CONV_2D", "PAD", "DEPTHWISE_CONV_2D", "CONV_2D"] in kinds
    assert ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "ADD"] in kinds
    n_dw = sum(op.kind is OpKind.DEPTHWISE_CONV_2D for op in g.ops)
    assert len(fused.blocks) == n_dw  # every block of the checkpoint
    for b in fused.blocks:
        assert b.inplace_ok == (_kinds(g, b)[-1] == "ADD")
        assert b.removed_bytes == sum(g.tensor(n).nbytes for n in b.internal) > b.scratch_bytes
    _assert_same(CHECKPOINT, fused)


def test_mcunet_without_stem_fusion() -> None:
    g = _model(CHECKPOINT)
    fused = fuse_frozen_blocks(g, len(g.ops), fuse_stem=False)
    assert _kinds(g, fused.blocks[0]) == ["DEPTHWISE_CONV_2D", "CONV_2D"]
    assert fused.blocks[0].start == 2
    _assert_same(CHECKPOINT, fused)


def test_keras_mobilenetv2_blocks_and_bytes() -> None:
    g = _model(MBV2)
    fused = fuse_frozen_blocks(g, len(g.ops))
    # stem + block 0, and the expanded blocks but the last (3×3 map, no residual: the ring and the
    # depthwise row weigh exactly what the fusion would remove, so it is left unfused)
    assert len(fused.blocks) == 16
    dws = [i for i, op in enumerate(g.ops) if op.kind is OpKind.DEPTHWISE_CONV_2D]
    assert [b.chain.depthwise for b in fused.blocks] == dws[:-1]
    assert g.tensor(g.ops[dws[-1]].outputs[0]).shape[1:3] == (3, 3)
    assert _kinds(g, fused.blocks[0]) == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    assert sum(_kinds(g, b)[-1] == "ADD" for b in fused.blocks) == 10
    strides = {g.ops[b.chain.depthwise].attrs.stride_h for b in fused.blocks}  # type: ignore[union-attr]
    assert strides == {1, 2}
    _assert_same(MBV2, fused)


def test_frozen_boundary_and_kept_tensors() -> None:
    g = _model(MBV2)
    # stop inside block 2 (ops 6..9): blocks 0-1 fused, block 2 left to the plain kernels
    fused = fuse_frozen_blocks(g, 8)
    assert [(b.start, b.stop) for b in fused.blocks] == [(0, 3), (3, 6)]
    _assert_same(MBV2, fused)
    # a tensor kept for the backward pass stops the fusion of its block only
    keep = g.ops[4].outputs[0]  # block 1's depthwise output
    kept = fuse_frozen_blocks(g, len(g.ops), keep={keep})
    assert all(keep not in b.internal for b in kept.blocks)
    assert (3, 6) not in [(b.start, b.stop) for b in kept.blocks]
    assert len(kept.blocks) == 15
    _assert_same(MBV2, kept)
    assert fuse_frozen_blocks(g, 0).blocks == ()
    with pytest.raises(UsageError):
        fuse_frozen_blocks(g, len(g.ops) + 1)


def test_activation_requests_unfused_follow_the_graph() -> None:
    g = _model(CHECKPOINT)
    stop = 12
    reqs = {r.name: r for r in activation_requests(unfused(g, stop))}
    later = {n for op in g.ops[stop:] for n in op.inputs if n is not None}
    for i, op in enumerate(g.ops[:stop]):
        for name in op.outputs:
            r = reqs[name]
            readers = [j for j, o in enumerate(g.ops[:stop]) if name in o.inputs]
            assert r.first == i and r.size == g.tensor(name).nbytes
            assert r.last == (stop - 1 if name in later else max(readers, default=i))
    assert reqs["input"].first == 0
    assert not any(r.kind is BufferKind.SCRATCH for r in reqs.values())


@pytest.mark.parametrize("name", [CHECKPOINT, MBV2])
def test_fusion_lowers_the_frozen_stage_peak(name: str) -> None:
    g = _model(name)
    stop = len(g.ops) - 3  # the head stays trainable
    fused = fuse_frozen_blocks(g, stop)
    reqs = activation_requests(fused)
    names = {r.name for r in reqs}
    assert not names & fused.internal_tensors
    scratch = {r.name: r.size for r in reqs if r.kind is BufferKind.SCRATCH}
    assert scratch == {f"{b.output}.scratch": b.scratch_bytes for b in fused.blocks}
    before = plan_buffers(activation_requests(unfused(g, stop)))
    after = plan_buffers(reqs)
    assert after.peak_live < before.peak_live / 2
    assert after.num_steps == len(fused.units(stop))
    # the biggest tensor the unfused stage holds at its peak is gone
    biggest = before.live_at(before.peak_step)[0].name
    assert biggest in fused.internal_tensors


def test_fused_simulator_edge_inputs() -> None:
    g = _model(CHECKPOINT)
    sim = FusedSimulator(fuse_frozen_blocks(g, len(g.ops)))
    x, want = _reference(CHECKPOINT)
    (empty,) = sim.run([x[:0]])
    assert empty.shape == (0, *want[0].shape[1:]) and empty.dtype == want[0].dtype
    # one chunk of 1 sample at a time gives the same bytes
    assert np.array_equal(FusedSimulator(fuse_frozen_blocks(g, len(g.ops)), chunk=1).run([x])[0], want[0])
    with pytest.raises(UsageError):
        sim.run([x.astype(np.int16)])
    with pytest.raises(UsageError):
        sim.run([x, x])
