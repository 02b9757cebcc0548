"""Every supported op, alone in a small converter-made model, equals TFLite Micro byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from tinytrain.frontends.tflite import load_tflite
from tinytrain.sim.forward import Simulator
from tinytrain.testing.opmodels import OP_MODELS, build_all
from tinytrain.testing.tflm import run_tflm

from .sample_inputs import random_inputs

SAMPLES = 24


@pytest.fixture(scope="session")
def op_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_all(tmp_path_factory.mktemp("opmodels"))


@pytest.mark.parametrize("spec", OP_MODELS, ids=[s.name for s in OP_MODELS])
def test_op_bit_exact_with_tflm(spec, op_models: dict[str, bytes]) -> None:  # type: ignore[no-untyped-def]
    model = op_models[spec.name]
    graph = load_tflite(model)
    assert spec.expected_op in {op.kind.value for op in graph.ops}
    xs = random_inputs(graph, SAMPLES, seed=len(spec.name))
    ours = Simulator(graph).run(xs)
    ref = run_tflm(model, xs)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), (
            f"{spec.name}: {np.count_nonzero(a != b)} of {a.size} values differ"
        )


def test_every_op_kind_has_an_op_model() -> None:
    """The op list of the foundation issue is covered by converter-made models."""
    covered = {s.expected_op for s in OP_MODELS}
    required = {
        "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D", "MAX_POOL_2D",
        "PAD", "RESHAPE", "TRANSPOSE", "CONCATENATION", "SOFTMAX", "LOG_SOFTMAX", "HARD_SWISH",
        "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "SLICE", "GATHER", "QUANTIZE", "DEQUANTIZE", "BATCH_MATMUL",
        "SQUARED_DIFFERENCE", "RSQRT", "SUB",
    }
    assert required <= covered, required - covered
