"""The .tflite frontend reads real converter output and refuses bad models clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinytrain.errors import ModelFormatError, NotQuantizedError, UnsupportedOpError
from tinytrain.frontends.load import load_model
from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir import DType, OpKind, TensorKind


def test_reads_full_int8_model(small_cnn: Path) -> None:
    g = load_tflite(small_cnn)
    kinds = [op.kind for op in g.ops]
    assert kinds == [OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.MEAN, OpKind.FULLY_CONNECTED, OpKind.SOFTMAX]
    x = g.tensor(g.inputs[0])
    assert x.dtype is DType.INT8 and x.kind is TensorKind.INPUT and x.shape == (1, 16, 16, 3)
    w = g.tensor(g.ops[0].inputs[1] or "")
    assert w.kind is TensorKind.CONSTANT and w.quant is not None and w.quant.axis == 0
    assert w.quant is not None and len(w.quant.scale) == 8


def test_reads_float_io_model(small_cnn_float_io: Path) -> None:
    g = load_model(small_cnn_float_io)
    assert g.ops[0].kind is OpKind.QUANTIZE and g.ops[-1].kind is OpKind.DEQUANTIZE
    assert g.tensor(g.inputs[0]).dtype is DType.FLOAT32
    assert g.tensor(g.outputs[0]).dtype is DType.FLOAT32


def test_float_model_is_refused(float_model: Path) -> None:
    with pytest.raises(NotQuantizedError, match="float"):
        load_model(float_model)


def test_unsupported_op_names_op_index_and_tensors(unsupported_op_model: Path) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        load_model(unsupported_op_model)
    err = info.value
    assert err.op_name == "ABS" and err.index >= 0 and err.tensors
    assert "ABS" in str(err) and f"#{err.index}" in str(err) and err.tensors[0] in str(err)


def test_not_a_model(tmp_path: Path) -> None:
    p = tmp_path / "x.tflite"
    p.write_bytes(b"hello world, not a model at all")
    with pytest.raises(ModelFormatError):
        load_model(p)
    with pytest.raises(ModelFormatError, match="cannot read"):
        load_model(tmp_path / "missing.tflite")
