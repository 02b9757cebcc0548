"""IR invariants: the verifier rejects broken graphs, the dump is stable."""

from __future__ import annotations

import numpy as np
import pytest

from tinytrain.errors import GraphError
from tinytrain.ir import DType, Graph, Op, OpKind, Quantization, Tensor, TensorKind
from tinytrain.ir.dump import dump
from tinytrain.ir.ops import ElementwiseAttrs
from tinytrain.ir.verify import verify


def _t(name: str, kind: TensorKind = TensorKind.ACTIVATION, data: np.ndarray | None = None) -> Tensor:
    return Tensor(name, (1, 4), DType.INT8, kind, Quantization.per_tensor(0.1, 0), data)


def _graph(ops: tuple[Op, ...], extra: tuple[Tensor, ...] = ()) -> Graph:
    tensors = (_t("x", TensorKind.INPUT), _t("c", TensorKind.CONSTANT, np.ones((1, 4), np.int8)), _t("y"), *extra)
    return Graph("g", tensors, ops, ("x",), ("y",))


def test_valid_graph_verifies_and_dumps_stably() -> None:
    g = _graph((Op(OpKind.ADD, ("x", "c"), ("y",), ElementwiseAttrs(), 0),))
    verify(g)
    text = dump(g)
    assert text == dump(_graph((Op(OpKind.ADD, ("x", "c"), ("y",), ElementwiseAttrs(), 0),)))
    assert "ADD(%x, %c)" in text and "sha1=" in text


def test_use_before_definition_is_rejected() -> None:
    ops = (
        Op(OpKind.ADD, ("x", "z"), ("y",), ElementwiseAttrs(), 0),
        Op(OpKind.ADD, ("x", "c"), ("z",), ElementwiseAttrs(), 1),
    )
    with pytest.raises(GraphError, match="before any op writes it"):
        verify(_graph(ops, (_t("z"),)))


def test_double_write_and_const_overwrite_are_rejected() -> None:
    ops = (
        Op(OpKind.ADD, ("x", "c"), ("y",), ElementwiseAttrs(), 0),
        Op(OpKind.ADD, ("x", "c"), ("y",), ElementwiseAttrs(), 1),
    )
    with pytest.raises(GraphError, match="already defined"):
        verify(_graph(ops))
    with pytest.raises(GraphError, match="already defined"):
        verify(_graph((Op(OpKind.ADD, ("x", "x"), ("c",), ElementwiseAttrs(), 0),)))


def test_unknown_tensor_and_missing_output() -> None:
    with pytest.raises(GraphError, match="no tensor"):
        verify(_graph((Op(OpKind.ADD, ("x", "nope"), ("y",), ElementwiseAttrs(), 0),)))
    with pytest.raises(GraphError, match="never computed"):
        verify(_graph(()))


def test_tensor_invariants() -> None:
    with pytest.raises(GraphError):
        Tensor("bad", (2,), DType.INT8, TensorKind.CONSTANT, None, np.zeros((3,), np.int8))
    with pytest.raises(GraphError):
        Quantization((0.0,), (0,))
    with pytest.raises(GraphError):
        Quantization((1.0, 2.0), (0, 0), None)
    with pytest.raises(GraphError, match="duplicate"):
        Graph("g", (_t("a"), _t("a")), (), ("a",), ("a",))
    data = np.arange(4, dtype=np.int8).reshape(1, 4)
    t = _t("k", TensorKind.CONSTANT, data)
    data[0, 0] = 99  # the IR keeps its own read-only copy
    assert t.data is not None and t.data[0, 0] == 0 and not t.data.flags.writeable
