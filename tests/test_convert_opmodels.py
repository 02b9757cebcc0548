"""The single-op test models: coverage of the op list, verification, caching, options.

(Their bit-exactness against TFLite Micro is tested in test_ops_vs_tflm.py, which
builds every op model once per session.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorflow")

from tinytrain.errors import ModelFormatError
from tinytrain.frontends.keras_convert import float_op_names, model_op_names
from tinytrain.frontends.tflite_schema import schema
from tinytrain.testing.opmodels import OP_MODELS, OpModelSpec, build_all, cache_key, check_ops

BRIEF_OPS = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "SUB", "SQUARED_DIFFERENCE", "RSQRT", "MEAN",
    "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD", "RESHAPE", "TRANSPOSE", "CONCATENATION", "SOFTMAX", "LOG_SOFTMAX",
    "HARD_SWISH", "LOGISTIC", "TANH", "RESIZE_NEAREST_NEIGHBOR", "STRIDED_SLICE", "SLICE", "GATHER", "BATCH_MATMUL",
    "QUANTIZE", "DEQUANTIZE", "RELU", "RELU6", "LEAKY_RELU",
}  # fmt: skip
# A cheap sample that exercises options: depth multipliers, float interface, broadcasting.
SAMPLE = ("depthwise_m1", "depthwise_m2", "quantize", "dequantize", "mul_broadcast", "resize_nearest_align_corners")


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    return build_all(tmp_path_factory.mktemp("opmodels_sample"), names=SAMPLE)


def _spec(name: str) -> OpModelSpec:
    return next(s for s in OP_MODELS if s.name == name)


def _depth_multiplier(model: bytes) -> int:
    s = schema()
    m = s.Model.GetRootAs(model, 0)
    op = m.Subgraphs(0).Operators(0)
    opts = s.DepthwiseConv2DOptions()
    table = op.BuiltinOptions()
    opts.Init(table.Bytes, table.Pos)
    return int(opts.DepthMultiplier())


def _tensor_types(model: bytes) -> tuple[list[int], list[int]]:
    sg = schema().Model.GetRootAs(model, 0).Subgraphs(0)
    return (
        [sg.Tensors(sg.Inputs(i)).Type() for i in range(sg.InputsLength())],
        [sg.Tensors(sg.Outputs(i)).Type() for i in range(sg.OutputsLength())],
    )


def test_every_op_of_the_brief_has_a_model() -> None:
    covered = {s.expected_op for s in OP_MODELS}
    assert covered >= BRIEF_OPS, BRIEF_OPS - covered
    names = [s.name for s in OP_MODELS]
    assert len(names) == len(set(names))
    assert all(isinstance(s, OpModelSpec) and callable(s.build) for s in OP_MODELS)


def test_sample_models_hold_their_op_and_nothing_else(sample_models: dict[str, bytes]) -> None:
    assert set(sample_models) == set(SAMPLE)
    for name, model in sample_models.items():
        spec = _spec(name)
        ops = model_op_names(model)
        assert spec.expected_op in ops
        assert set(ops) <= {spec.expected_op, "QUANTIZE", "DEQUANTIZE", *spec.carrier_ops}
        assert float_op_names(model) == ()


def test_depth_multipliers(sample_models: dict[str, bytes]) -> None:
    assert _depth_multiplier(sample_models["depthwise_m1"]) == 1
    assert _depth_multiplier(sample_models["depthwise_m2"]) == 2


def test_float_interface_models(sample_models: dict[str, bytes]) -> None:
    int8, float32 = 9, 0
    assert model_op_names(sample_models["quantize"])[0] == "QUANTIZE"
    assert _tensor_types(sample_models["quantize"]) == ([float32], [int8])
    assert model_op_names(sample_models["dequantize"])[-1] == "DEQUANTIZE"
    assert _tensor_types(sample_models["dequantize"]) == ([int8], [float32])
    assert _tensor_types(sample_models["mul_broadcast"]) == ([int8, int8], [int8])


def test_check_ops_rejects_other_ops(sample_models: dict[str, bytes]) -> None:
    model = sample_models["mul_broadcast"]
    assert check_ops("mul", model, "MUL") == ("MUL",)
    with pytest.raises(ModelFormatError, match="expected ADD"):
        check_ops("mul", model, "ADD")
    with pytest.raises(ModelFormatError, match="RESHAPE"):
        check_ops("q", sample_models["quantize"], "QUANTIZE")  # without its carrier op


def test_build_all_reads_the_cache(tmp_path: Path) -> None:
    first = build_all(tmp_path, names=["relu"])
    cached = tmp_path / f"{cache_key('relu')}.tflite"
    assert cached.read_bytes() == first["relu"]
    cached.write_bytes(b"sentinel")
    assert build_all(tmp_path, names=["relu"]) == {"relu": b"sentinel"}


def test_build_is_deterministic(sample_models: dict[str, bytes]) -> None:
    assert _spec("depthwise_m2").build() == sample_models["depthwise_m2"]
