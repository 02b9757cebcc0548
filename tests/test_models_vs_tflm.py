"""Whole converter-made models equal TFLite Micro byte for byte on ≥ 20 inputs each.

MobileNetV2 alpha 0.35 at 96 and 128 (seeded weights, BatchNorm statistics
re-estimated on data), a float-I/O variant, a tiny ViT, and three model styles the
simulator was not written against (MobileNet-v1 style with PAD/TRANSPOSE/MUL, a
detection-style CNN with several outputs, an MLP).
"""

from __future__ import annotations

import numpy as np
import pytest

from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir import Graph
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm
from tinytrain.testing.zoo import ZOO, build_zoo, sample_inputs

from .sample_inputs import random_inputs

SAMPLES = 20


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_zoo(tmp_path_factory.mktemp("zoo"))


def _quantize_like(graph: Graph, xs: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for name, x in zip(graph.inputs, xs, strict=True):
        t = graph.tensor(name)
        if t.dtype.is_float:
            out.append(x.astype(np.float32))
        else:
            scale, zp = t.qparams
            q = np.clip(np.round(x / scale) + zp, -128, 127)
            out.append(q.astype(t.dtype.np))
    return out


@pytest.mark.parametrize("name", [m.name for m in ZOO])
def test_model_bit_exact_with_tflm(name: str, zoo: dict[str, bytes]) -> None:
    model = zoo[name]
    graph = load_tflite(model)
    # Realistic inputs (the calibration distribution, other samples) and random ones.
    xs = _quantize_like(graph, sample_inputs(name, SAMPLES, seed=11))
    xr = random_inputs(graph, 4, seed=3)
    xs = [np.concatenate([a, b], axis=0) for a, b in zip(xs, xr, strict=True)]
    ours = Simulator(graph).run(xs)
    ref = run_tflm(model, xs)
    assert len(ours) == len(ref) == len(graph.outputs)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.shape[0] == SAMPLES + 4
        assert np.array_equal(a, b), f"{name}: {np.count_nonzero(a != b)} of {a.size} values differ"
    # Meaningful models: the first output is not the same for every input.
    assert len({ours[0][i].tobytes() for i in range(SAMPLES)}) > 1


def test_vit_is_full_int8(zoo: dict[str, bytes]) -> None:
    graph = load_tflite(zoo["tiny_vit"])
    kinds = {op.kind.value for op in graph.ops}
    assert {"BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED"} <= kinds
    floats = [t.name for t in graph.tensors if t.dtype.is_float]
    assert not floats, floats
