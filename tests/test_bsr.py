"""Block Selective Reprogramming (issue 7): the TOKEN_SELECT op (forward kernel, backward rule),
the token-dropping pass, the ``bsr:`` preset, its memory / MACs against ``vit-blocks`` and training.

The converted default tiny ViT (65 tokens of 64, 4 blocks) is built once per module.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_vit import token_select_op, write_tiny_vit
from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind, TokenSelectAttrs
from tinytrain.ir.tensor import Tensor, TensorKind
from tinytrain.ir.verify import verify
from tinytrain.passes.split import prefix_graph
from tinytrain.passes.token_drop import TokenDrop, block_tokens, drop_tokens, kept_count
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels import KERNELS
from tinytrain.testing import zoo
from tinytrain.train.compile import CompileOptions, compile_scheme, plan_json, prepare_graph
from tinytrain.train.executor import Executor
from tinytrain.train.grad_rules import GRAD_RULES, BackwardRequest, prepare_backward, run_backward, save_forward
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.schedule import lr_multiplier
from tinytrain.train.scheme import get_scheme, resolve, scheme_from_mapping, scheme_graph, token_drop_data

KB = 1024
C_ONE = 1 << 15
BSR = "bsr:blocks=2+3,drop_at=1,keep=0.5"


@pytest.fixture(scope="module")
def vit_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_vit(tmp_path_factory.mktemp("bsr"))


@pytest.fixture(scope="module")
def graph(vit_path: Path) -> Graph:
    """The tiny ViT with a new zero 10-class head (``tinytrain compile --classes 10``)."""
    return prepare_graph(vit_path, 10, "zero", 0)


def _inputs(graph: Graph, n: int, seed: int) -> np.ndarray:
    x = zoo.sample_inputs("tiny_vit", n, seed=seed)[0]
    q = graph.tensor(graph.inputs[0]).quant
    assert q is not None
    return np.clip(np.round(x / q.scale[0]) + q.zero_point[0], -128, 127).astype(np.int8)


# ---------------------------------------------------------------- the kernel


def _reference(x: np.ndarray, p: np.ndarray, zp: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain Python: per sample, the score of token j is Σ_h (p[h, 0, j] − zp); the k best of
    1..T−1 by (score descending, index ascending), kept in index order after token 0."""
    ys, idxs = [], []
    for n in range(x.shape[0]):
        t = x.shape[1]
        score = {j: sum(int(p[n, h, 0, j]) - zp for h in range(p.shape[1])) for j in range(1, t)}
        best = sorted(sorted(range(1, t), key=lambda j: (-score[j], j))[:k])
        idxs.append(best)
        ys.append(x[n, [0, *best]])
    return np.stack(ys), np.array(idxs, dtype=np.uint8)


@pytest.mark.parametrize(("t", "heads", "k", "levels"), [(9, 2, 4, 3), (17, 4, 1, 2), (65, 4, 32, 256), (5, 1, 4, 1)])
def test_token_select_kernel_matches_reference(t: int, heads: int, k: int, levels: int) -> None:
    """Few distinct probability codes (``levels``) force ties: they go to the lower index."""
    rng = np.random.default_rng(t * 7 + k)
    op, ins, outs = token_select_op(t, 8, heads, k)
    spec = KERNELS[OpKind.TOKEN_SELECT]
    params = spec.prepare(op, ins, outs)
    n = 3
    x = rng.integers(-128, 128, size=(n, t, 8), dtype=np.int8)
    p = (rng.integers(0, levels, size=(n, heads, t, t)) * (255 // max(1, levels - 1)) - 128).astype(np.int8)
    y, idx = spec.run(params, [x, p])
    y_ref, idx_ref = _reference(x, p, -128, k)
    assert idx.dtype == np.uint8 and y.dtype == np.int8
    assert np.array_equal(idx, idx_ref)
    assert np.array_equal(y, y_ref)
    one = [spec.run(params, [x[s : s + 1], p[s : s + 1]]) for s in range(n)]  # batched == one by one
    assert np.array_equal(np.concatenate([o[0] for o in one]), y)


def test_token_select_prepare_refuses_bad_shapes() -> None:
    op, ins, outs = token_select_op(9, 8, 2, 4)
    spec = KERNELS[OpKind.TOKEN_SELECT]
    for bad in (
        (op, ins, (outs[0], Tensor("idx", (1, 3), DType.UINT8, TensorKind.ACTIVATION))),
        (op, ins, (outs[0], Tensor("idx", (1, 4), DType.INT32, TensorKind.ACTIVATION))),
        (Op(op.kind, op.inputs, op.outputs, TokenSelectAttrs(9)), ins, outs),
        (op, (ins[0], Tensor("p", (1, 2, 8, 8), DType.INT8, TensorKind.ACTIVATION, ins[1].quant)), outs),
    ):
        with pytest.raises(Exception, match="TOKEN_SELECT"):
            spec.prepare(*bad)
    with pytest.raises(Exception, match="at most 256"):
        spec.prepare(*token_select_op(257, 2, 1, 4))


def test_backward_scatters_into_the_kept_rows() -> None:
    """Rule table: x gets g(x') in the kept rows (zeros elsewhere, same exponent), p nothing;
    the indices (output 1) are saved whole by the forward."""
    rng = np.random.default_rng(5)
    t, k = 9, 3
    op, ins, outs = token_select_op(t, 8, 2, k)
    assert GRAD_RULES[OpKind.TOKEN_SELECT].grad_inputs == (0,)
    with pytest.raises(UsageError, match="no gradient"):
        prepare_backward(op, ins, outs, BackwardRequest(input_grads=frozenset({0, 1})))
    bp = prepare_backward(op, ins, outs, BackwardRequest())
    assert bp.saves == ("out1",)
    x = rng.integers(-128, 128, size=(1, t, 8), dtype=np.int8)
    p = rng.integers(-128, 128, size=(1, 2, t, t), dtype=np.int8)
    fwd = KERNELS[OpKind.TOKEN_SELECT]
    y, idx = fwd.run(fwd.prepare(op, ins, outs), [x, p])
    saved = save_forward(bp, [x, p], [y, idx])
    g = rng.integers(-(1 << 14), 1 << 14, size=(1, 1 + k, 8)).astype(np.int16)
    res = run_backward(bp, Grad(g, -11), saved)
    assert set(res.input_grads) == {0}
    gx = res.input_grads[0]
    assert gx.e == -11 and gx.shape == (1, t, 8)
    want = np.zeros((1, t, 8), dtype=np.int16)
    for row, src in enumerate([0, *idx[0].tolist()]):
        want[0, src] = g[0, row]
    assert np.array_equal(gx.g, want)


# ---------------------------------------------------------------- the pass


def test_keep_one_gives_identical_outputs(graph: Graph) -> None:
    g2 = drop_tokens(graph, TokenDrop((0, 1, 2, 3), 1.0))
    verify(g2)
    assert sum(op.kind is OpKind.TOKEN_SELECT for op in g2.ops) == 4
    xs = _inputs(graph, 6, seed=3)
    assert np.array_equal(Simulator(g2).run([xs])[0], Simulator(graph).run([xs])[0])


def test_dropped_tokens_flow_through_later_blocks(graph: Graph) -> None:
    g2 = drop_tokens(graph, TokenDrop((1, 2), 0.5))
    verify(g2)
    assert block_tokens(graph) == {0: 65, 1: 65, 2: 65, 3: 65}
    assert block_tokens(g2) == {0: 65, 1: 65, 2: 33, 3: 17}
    sel = [i for i, op in enumerate(g2.ops) if op.kind is OpKind.TOKEN_SELECT]
    assert len(sel) == 2
    # every activation written after the first drop runs on 33 (then 17) tokens
    for i, op in enumerate(g2.ops[sel[0] + 1 :], start=sel[0] + 1):
        want = 33 if i < sel[1] else 17
        for name in op.outputs:
            shape = g2.tensor(name).shape
            if name == g2.ops[sel[1]].outputs[1]:
                continue
            assert 65 not in shape, (op.describe(), shape)
            if len(shape) >= 3 and op.kind is not OpKind.TOKEN_SELECT:
                assert want in shape, (op.describe(), shape)
    # the shared RESHAPE constants of blocks 0/1 are untouched, later blocks read new ones
    shared = [op for op in graph.ops if op.kind is OpKind.RESHAPE and op.inputs[1] == "arith.constant5"]
    assert shared and np.asarray(graph.tensor("arith.constant5").data).tolist() == [-1, 65, 4, 16]
    later = {str(op.inputs[1]) for op in g2.ops[sel[0] :] if op.kind is OpKind.RESHAPE}
    assert "arith.constant5" not in later
    # the first TOKEN_SELECT is exactly the reference selection on the simulated x and p
    first = g2.ops[sel[0]]
    xs = _inputs(graph, 4, seed=8)
    probe = g2.with_changes(outputs=(*g2.outputs, *first.inputs, *first.outputs))
    logits, x, p, y, idx = Simulator(probe).run([xs])
    zp = g2.tensor(str(first.inputs[1])).zero_point
    y_ref, idx_ref = _reference(x, p, zp, kept_count(0.5, 64))
    assert np.array_equal(idx, idx_ref) and np.array_equal(y, y_ref)
    assert logits.shape == (4, 10)


# ---------------------------------------------------------------- the preset


def test_bsr_fits_256kb_with_less_memory_and_macs_than_vit_blocks(graph: Graph) -> None:
    base = compile_scheme(
        graph, get_scheme("vit-blocks:2+3", graph), CompileOptions("vit-blocks:2+3", sram_bytes=1 << 30)
    )
    sch = get_scheme(BSR, graph)
    g2 = scheme_graph(sch, graph)
    c = compile_scheme(g2, sch, CompileOptions(BSR, classes=10))  # the 256 KB default budget
    assert c.plan.peak_live <= 256 * KB and c.plan.arena_size <= 256 * KB
    peak_ratio = base.plan.peak_live / c.plan.peak_live
    bwd_ratio = base.memory.macs_backward / c.memory.macs_backward
    total_ratio = (base.memory.macs_forward + base.memory.macs_backward) / (
        c.memory.macs_forward + c.memory.macs_backward
    )
    print(
        f"vit-blocks:2+3 peak {base.plan.peak_live} B, {BSR} peak {c.plan.peak_live} B ({peak_ratio:.2f}x); "
        f"backward MACs {base.memory.macs_backward} vs {c.memory.macs_backward} ({bwd_ratio:.2f}x); "
        f"training MACs {total_ratio:.2f}x; tokens {c.scheme.token_summary()}"
    )
    assert peak_ratio > 1.4 and bwd_ratio > 1.8 and total_ratio > 1.4
    assert [p.layer.index for p in c.scheme.trained] == [p.layer.index for p in base.scheme.trained]
    info = c.scheme.token_summary()
    assert info["block_tokens"] == {"0": 65, "1": 65, "2": 33, "3": 33} and info["tokens_per_step"] == 196
    layers = plan_json(c)["scheme"]["layers"]
    assert [e["tokens"] for e in layers] == [33] * 12 + [1]
    # the program really holds the drop, and the same scheme resolves only on the rewritten graph
    assert any(op.kind is OpKind.TOKEN_SELECT for op in c.graph.ops)
    with pytest.raises(UsageError, match="scheme_graph"):
        resolve(sch, graph)
    assert scheme_graph(sch, g2) is g2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bsr:blocks=2+3,drop_at=2,keep=0.5", "also train"),
        ("bsr:blocks=2+3,drop_at=1,keep=0", r"\(0, 1\]"),
        ("bsr:blocks=2+3,drop_at=1,keep=1.5", r"\(0, 1\]"),
        ("bsr:blocks=2+3,drop_at=1,keep=half", "keep must be a number"),
        ("bsr:blocks=2+3,drop_at=7", "block 7 does not exist"),
        ("bsr:blocks=2+9,drop_at=1", "block 9 does not exist"),
        ("bsr:blocks=2+3", "needs drop_at"),
        ("bsr:drop_at=1", "needs blocks"),
        ("bsr:blocks=3,drop_at=1+1", "twice"),
        ("bsr:blocks=3,drop_at=1,ratio=2", "bad parameter"),
    ],
)
def test_bad_parameters_are_refused(graph: Graph, spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        get_scheme(spec, graph)


def test_token_drop_in_a_scheme_file(graph: Graph) -> None:
    data = {"name": "f", "layers": [{"layer": -1, "update": "full"}], "token_drop": {"drop_at": [1], "keep": 0.25}}
    sch = scheme_from_mapping(data)
    assert sch.token_drop == TokenDrop((1,), 0.25)
    assert block_tokens(scheme_graph(sch, graph))[2] == 1 + 16
    assert token_drop_data(sch.token_drop) == data["token_drop"]
    for bad in ({"drop_at": 1}, {"keep": 0.5}, {"drop_at": [1], "keep": 0}, {"drop_at": [2, 1]}):
        with pytest.raises(UsageError):
            scheme_from_mapping({**data, "token_drop": bad})


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("spec", [BSR, "bsr:blocks=0+3,drop_at=1+2,keep=0.5"])
def test_loss_decreases_on_a_small_task(vit_path: Path, spec: str) -> None:
    """4 images, one per class, a zero 4-class head: the int8 loss on them drops well below
    ln 4. The second scheme trains block 0 *before* both drops: its gradient passes through
    the TOKEN_SELECT backward (scatter into the kept rows) twice."""
    g = prepare_graph(vit_path, 4, "zero", 0)
    sch = get_scheme(spec, g)
    c = compile_scheme(scheme_graph(sch, g), sch, CompileOptions(spec, classes=4))
    program = c.program
    sel = [i for i, op in enumerate(program.graph.ops) if op.kind is OpKind.TOKEN_SELECT]
    through = [program.backward_of(i) is not None for i in sel]
    assert through == ([False] if spec == BSR else [True, True])
    xs = _inputs(g, 4, seed=21)
    labels = np.arange(4)
    pre = Simulator(prefix_graph(program.graph, program.first_live_op))
    lives = [dict(zip(pre.graph.outputs, pre.run([xs[n : n + 1]]), strict=True)) for n in range(4)]
    ex = Executor(program, 1)
    for n in range(40):
        ex.step(lives[n % 4], int(labels[n % 4]), lr_multiplier(0.05), C_ONE)
    loss = _loss(ex.current_graph(), xs, labels)
    print(spec, "loss after 40 steps:", loss, "(ln 4 =", math.log(4), ")")
    assert loss < 0.5 * math.log(4), loss
    moved = {
        i
        for i, w in ex.weights.items()
        if not np.array_equal(w, np.asarray(program.graph.tensor(str(program.graph.ops[i].inputs[1])).data))
    }
    assert len(moved) == 13  # the 6 FCs of both trained blocks and the head


def _loss(graph: Graph, xs: np.ndarray, labels: np.ndarray) -> float:
    logits = Simulator(graph).run([xs])[0].astype(np.float64)
    q = graph.tensor(graph.outputs[0]).quant
    assert q is not None
    z = (logits - q.zero_point[0]) * q.scale[0]
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def test_bsr_artifact_round_trip(vit_path: Path, tmp_path: Path) -> None:
    """`tinytrain compile --scheme bsr:…` writes the model as read (no TOKEN_SELECT in the
    .tflite) and a scheme file whose token_drop re-applies the drop when the artifact loads."""
    from tinytrain.frontends.tflite import load_tflite
    from tinytrain.train.compile import compile_model, load_artifact, write_artifact

    c = compile_model(vit_path, CompileOptions(BSR, classes=10))
    assert any(op.kind is OpKind.TOKEN_SELECT for op in c.graph.ops)
    write_artifact(c, tmp_path / "out")
    written = load_tflite((tmp_path / "out" / "model.tflite").read_bytes())
    assert not any(op.kind is OpKind.TOKEN_SELECT for op in written.ops)
    back = load_artifact(tmp_path / "out")
    assert back.scheme.token_summary() == c.scheme.token_summary()
    assert back.plan.peak_live == c.plan.peak_live and back.memory.macs_backward == c.memory.macs_backward
    assert plan_json(back)["scheme"]["tokens_per_step"] == 196
