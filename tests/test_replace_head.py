"""Head replacement: structure, quantization, and simulator == TFLite Micro on the result."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.frontends.load import load_model
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Conv2DAttrs, Op, OpKind, Padding, ReshapeAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.ir.verify import verify
from tinytrain.passes.replace_head import LOGIT_SCALE, find_head, replace_head
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm

DATA = Path(__file__).resolve().parent.parent / "tinytrain" / "data"


@pytest.fixture(scope="module")
def checkpoint() -> Graph:
    return load_model(DATA / "mcunet-synthetic.pkl")


def _inputs(graph: Graph, n: int = 4, seed: int = 0) -> np.ndarray:
    t = graph.tensor(graph.inputs[0])
    return np.random.default_rng(seed).integers(-128, 128, (n, *t.shape[1:]), dtype=np.int8)


def _check_against_tflm(graph: Graph) -> np.ndarray:
    x = _inputs(graph)
    (ours,) = Simulator(graph).run([x])
    (ref,) = run_tflm(write_tflite(graph), [x])
    assert np.array_equal(ours, ref)
    return ours


def _fc(graph: Graph) -> tuple[Op, Tensor, Tensor, Tensor]:
    op = graph.ops[-1]
    assert op.kind is OpKind.FULLY_CONNECTED
    w, b, y = (graph.tensor(n) for n in (op.inputs[1], op.inputs[2], op.outputs[0]))  # type: ignore[arg-type]
    return op, w, b, y


@pytest.mark.parametrize("classes", [10, 3])
def test_zero_head_on_checkpoint(checkpoint: Graph, classes: int) -> None:
    new = replace_head(checkpoint, classes, "zero")
    verify(new)
    op, w, b, y = _fc(new)
    old_w = checkpoint.tensor("classifier.weight")
    assert new.outputs == (y.name,) and y.shape == (1, classes) and y.dtype is DType.INT8
    assert y.quant == Quantization.per_tensor(LOGIT_SCALE, 0)
    assert w.shape == (classes, old_w.shape[1]) and not np.any(w.data)
    assert w.quant is not None and w.quant.axis == 0 and len(set(w.quant.scale)) == 1
    assert w.quant.scale[0] == pytest.approx(float(np.median(old_w.quant.scale)), rel=1e-6)  # type: ignore[union-attr]
    feat = new.tensor(op.inputs[0])  # type: ignore[arg-type]
    assert b.dtype is DType.INT32 and not np.any(b.data)
    assert b.quant is not None and b.quant.scale[0] == pytest.approx(feat.scale * w.quant.scale[0])
    assert not new.has_tensor("classifier.weight") and not new.has_tensor("logits")
    assert [o.kind for o in new.ops[:-1]] == [o.kind for o in checkpoint.ops[:-1]]
    out = _check_against_tflm(new)
    assert np.all(out == 0)


def test_seeded_head_is_reproducible_and_runs_in_tflm(checkpoint: Graph) -> None:
    a = replace_head(checkpoint, 10, "seeded", seed=1)
    b = replace_head(checkpoint, 10, "seeded", seed=1)
    c = replace_head(checkpoint, 10, "seeded", seed=2)
    wa, wb, wc = (_fc(g)[1].data for g in (a, b, c))
    assert wa is not None and wb is not None and wc is not None
    assert np.array_equal(wa, wb) and not np.array_equal(wa, wc)
    assert 0 < np.abs(wa.astype(np.int32)).max() <= 127 and np.any(wa)
    out = _check_against_tflm(a)
    assert np.any(out != 0)


def test_softmax_is_dropped(small_cnn: Path) -> None:
    graph = load_model(small_cnn)
    assert graph.ops[-1].kind is OpKind.SOFTMAX
    new = replace_head(graph, 6, "seeded", seed=0)
    assert all(op.kind is not OpKind.SOFTMAX for op in new.ops)
    assert sum(op.kind is OpKind.FULLY_CONNECTED for op in new.ops) == 1
    assert new.tensor(new.outputs[0]).shape == (1, 6)
    _check_against_tflm(new)


def _conv_head(graph: Graph) -> Graph:
    """The checkpoint with its classifier written as a 1x1 CONV_2D + RESHAPE."""
    fc = graph.ops[-1]
    reshape_in = graph.ops[-2]  # pool [1,1,1,C] -> [1,C]
    w = graph.tensor("classifier.weight")
    pooled = reshape_in.inputs[0]
    assert pooled is not None and w.data is not None
    cout, cin = w.shape
    conv_w = replace(w, name="cls.conv.weight", shape=(cout, 1, 1, cin), data=w.data.reshape(cout, 1, 1, cin))
    logits = graph.tensor("logits")
    conv_y = replace(logits, name="cls.conv.y", shape=(1, 1, 1, logits.shape[1]))
    shape = Tensor("cls.shape", (2,), DType.INT32, TensorKind.CONSTANT, None, np.array([1, logits.shape[1]], np.int32))
    conv_attrs = Conv2DAttrs(1, 1, padding=Padding.VALID)
    ops = (
        *graph.ops[:-2],
        Op(OpKind.CONV_2D, (pooled, conv_w.name, fc.inputs[2]), (conv_y.name,), conv_attrs, 90),
        Op(OpKind.RESHAPE, (conv_y.name, shape.name), (logits.name,), ReshapeAttrs((1, logits.shape[1])), 91),
    )
    drop = {"classifier.weight", reshape_in.outputs[0], "pool.flat.shape"}
    tensors = (*(t for t in graph.tensors if t.name not in drop), conv_w, conv_y, shape)
    g = Graph(graph.name, tensors, ops, graph.inputs, graph.outputs)
    verify(g)
    return g


def test_conv_reshape_head(checkpoint: Graph) -> None:
    conv_graph = _conv_head(checkpoint)
    _check_against_tflm(conv_graph)
    head = find_head(conv_graph)
    assert head.weight == "cls.conv.weight" and len(head.removed) == 2
    new = replace_head(conv_graph, 4, "seeded", seed=3)
    assert [op.kind for op in new.ops[-2:]] == [OpKind.RESHAPE, OpKind.FULLY_CONNECTED]
    assert all(op.kind is not OpKind.CONV_2D or op.index != 90 for op in new.ops)
    assert new.tensor(new.ops[-1].inputs[0]).shape == (1, 16)  # type: ignore[arg-type]
    _check_against_tflm(new)


def test_errors(checkpoint: Graph) -> None:
    with pytest.raises(UsageError, match="classes"):
        replace_head(checkpoint, 0)
    with pytest.raises(UsageError, match="init"):
        replace_head(checkpoint, 3, "random")  # type: ignore[arg-type]
    # A graph cut after the residual ADD has no classifier at its end.
    add = next(i for i, op in enumerate(checkpoint.ops) if op.kind is OpKind.ADD)
    ops = checkpoint.ops[: add + 1]
    keep = set(checkpoint.inputs) | {n for op in ops for n in (*op.inputs, *op.outputs) if n is not None}
    cut = Graph("cut", tuple(t for t in checkpoint.tensors if t.name in keep), ops, checkpoint.inputs, ops[-1].outputs)
    with pytest.raises(UsageError, match="ADD"):
        replace_head(cut, 3)
    # Logits that also feed another op cannot be removed.
    logits = checkpoint.tensor("logits")
    extra = replace(logits, name="logits2")
    used = checkpoint.with_changes(
        tensors=(*checkpoint.tensors, extra),
        ops=(*checkpoint.ops, Op(OpKind.RESHAPE, ("logits", "pool.flat.shape"), ("logits2",), ReshapeAttrs((1, 10)))),
    )
    with pytest.raises(UsageError):
        replace_head(used, 3)
    two = checkpoint.with_changes(outputs=("logits", "pool.y"))
    with pytest.raises(UsageError, match="one output"):
        replace_head(two, 3)
