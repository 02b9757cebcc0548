"""The row-streamed fused backward of projection P ← depthwise D ← expansion E is
byte-identical to the unfused rules (P's backward, then D's, then E's): on random
geometries, on the fused blocks of the shipped synthetic MCUNet checkpoint, and in the
executor; and with it bias-only on 128×128 MobileNetV2-class models fits 256 KB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers_fused import (
    PdeCase,
    backward_params,
    forward_and_save,
    geometry,
    pde_case_id,
    pde_kernels,
    pde_params,
    pde_saved_and_grad,
    with_weights,
)
from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.train.build import BackwardStep, build_training_program
from tinytrain.train.grad_rules import (
    BackwardParams,
    BackwardRequest,
    BackwardResult,
    Saved,
    run_backward,
)
from tinytrain.train.kernels.fused_bwd import dw_reads, prepare_fused_expand_dw_backward
from tinytrain.train.kernels.fused_bwd_project import (
    FusedProjectParams,
    prepare_fused_project_backward,
    project_scratch_bytes,
    run_fused_project_backward,
)
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.linear_bwd import make_linear_backward

DATA = Path(__file__).resolve().parents[1] / "tinytrain" / "data"
CHECKPOINT = DATA / "mcunet-synthetic.pkl"
MBV2_128 = DATA / "mbv2-w0.35-128-fmnist04-int8.tflite"
KB = 1024


# ------------------------------------------------------------------ helpers


def _assert_array_equal(a: np.ndarray | None, b: np.ndarray | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def _assert_result_equal(fused: BackwardResult, unfused: BackwardResult, with_inputs: bool) -> None:
    _assert_array_equal(fused.bias_grad, unfused.bias_grad)
    _assert_array_equal(fused.weight_grad, unfused.weight_grad)
    assert fused.param_exponent == unfused.param_exponent
    if with_inputs:
        assert set(fused.input_grads) == set(unfused.input_grads)
        for k, g in fused.input_grads.items():
            ref = unfused.input_grads[k]
            assert g.e == ref.e and g.g.dtype == ref.g.dtype == np.int16 and np.array_equal(g.g, ref.g)
    else:
        assert fused.input_grads == {}


def _compare(
    p: BackwardParams,
    d: BackwardParams,
    e: BackwardParams,
    g_p: Grad,
    saved: tuple[Saved, Saved, Saved],
    weights: tuple[np.ndarray, np.ndarray, np.ndarray],
    ring: bool,
) -> FusedProjectParams:
    """Fused vs unfused: every gradient byte and exponent of P, D and E."""
    sp, sd, se = saved
    w_p, w_d, w_e = weights
    ref_p = run_backward(p, g_p, sp, w_p)
    ref_d = run_backward(d, ref_p.input_grads[0], sd, w_d)
    ref_e = run_backward(e, ref_d.input_grads[0], se, w_e)
    fp = prepare_fused_project_backward(p, prepare_fused_expand_dw_backward(e, d), ring=ring)
    g_in, res_p, res_d, res_e = run_fused_project_backward(fp, g_p, sp, sd, se, w_p, w_d, w_e)
    _assert_result_equal(res_p, ref_p, with_inputs=False)
    _assert_result_equal(res_d, ref_d, with_inputs=False)
    _assert_result_equal(res_e, ref_e, with_inputs=True)
    assert (g_in is None) == (0 not in e.request.input_grads)
    if g_in is not None:
        assert g_in is res_e.input_grads[0]
    return fp


def _pointwise(h: int, w: int) -> Geometry:
    return Geometry(1, 1, 1, 1, 1, 1, 0, 0, 0, 0, h, w)


CASES = [
    PdeCase(9, 9, 12, 5, 4, 3, 1, None),
    PdeCase(10, 8, 8, 4, 6, 3, 2, None, weights=(3, 2, 2)),
    PdeCase(11, 13, 6, 3, 5, 5, 1, None, e_grad=False, weights=(1, 0, 2)),
    PdeCase(12, 12, 7, 5, 3, 5, 2, None, weights=(0, 3, 0), masks=(False, True, False)),
    PdeCase(14, 10, 5, 4, 4, 7, 1, None, masks=(True, False, True), bias=False, weights=(2, 0, 0)),
    PdeCase(15, 15, 4, 3, 6, 7, 2, None, weights=(0, 2, 1)),
    PdeCase(10, 10, 8, 6, 4, 3, 2, (0, 1), weights=(2, 1, 0)),
    PdeCase(9, 11, 5, 4, 3, 3, 2, (1, 1), e_grad=False),
    PdeCase(13, 9, 4, 3, 5, 5, 2, (1, 2), weights=(0, 1, 2)),
    PdeCase(16, 12, 5, 3, 4, 7, 2, (2, 3), masks=(False, False, False)),
    PdeCase(8, 8, 6, 3, 4, 3, 1, None, e_stem=True, weights=(1, 1, 2)),
    PdeCase(7, 5, 4, 3, 3, 3, 1, (0, 3), weights=(1, 2, 0)),  # D's last output row reads only padding
    PdeCase(7, 6, 5, 4, 3, 3, 1, None, scale=3),
    PdeCase(6, 6, 4, 3, 3, 5, 1, None, scale=0),  # an all-zero gradient
]


def _random_case(case: PdeCase, rng: np.random.Generator, ring: bool) -> FusedProjectParams:
    c = case.c
    k = pde_kernels(case, rng)
    p, d, e = pde_params(case, k, tuple(range(case.weights[2])))
    w_p = rng.integers(-127, 128, (case.cp, 1, 1, c)).astype(np.int8)
    w_d = rng.integers(-127, 128, (1, case.dk, case.dk, c)).astype(np.int8)
    w_e = rng.integers(-127, 128, (c, k.ek, k.ek, case.cin)).astype(np.int8)
    saved, g = pde_saved_and_grad(case, k, rng)
    return _compare(p, d, e, g, saved, (w_p, w_d, w_e), ring)


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "one-row"])
@pytest.mark.parametrize("case", CASES, ids=pde_case_id)
def test_random_geometries_byte_identical(case: PdeCase, ring: bool) -> None:
    rng = np.random.default_rng(CASES.index(case))
    fp = _random_case(case, rng, ring)
    # The ring holds one window of D's output rows; without it, one row.
    geom = fp.inner.kd.geom
    assert geom is not None
    reads = dw_reads(geom, case.h)
    assert fp.ring_rows == (max(1, reads.window) if ring else 1)
    if ring and fp.ring_rows > 1:
        # Each row computed once per sweep (plus pass 0) instead of once per read.
        unringed = prepare_fused_project_backward(fp.p, fp.inner, ring=False)
        assert fp.p_rows < unringed.p_rows and fp.scratch_bytes > unringed.scratch_bytes


def test_scratch_formula() -> None:
    # MobileNetV2-w0.35 @128, block 1: D 64×64×48 → 32×32×48 (3×3, stride 2), bias-only.
    inner_scratch = 4 * 64 * 48 + 4 * 64 * 16 + 8 * 48
    n = project_scratch_bytes(inner_scratch, 2, 32, 48, d_bias=True, d_weight_taps=9, d_weight_channels=0)
    assert n == inner_scratch + 2 * 2 * 32 * 48 + 8 * 48
    assert n < (2 * 32 * 32 * 48) // 4  # far below the 96 KB gradient it replaces
    base = project_scratch_bytes(0, 1, 5, 3, False, 9, 0)
    assert base == 2 * 5 * 3
    assert project_scratch_bytes(0, 1, 5, 3, False, 9, 2) - base == 8 * 9 * 2
    assert project_scratch_bytes(0, 3, 5, 3, True, 9, 0) - base == 2 * 2 * 5 * 3 + 8 * 3


def test_rejects_unfusable_projections() -> None:
    g6 = geometry(6, 6, 3, 1, None)
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, 6, 6, 4), (1, 6, 6, 4), (1, 3, 3, 4), [0.01] * 4, 0, g6)
    ke = make_linear_backward(OpKind.CONV_2D, (1, 6, 6, 2), (1, 6, 6, 4), (4, 1, 1, 2), [0.01] * 4, 0, _pointwise(6, 6))
    d = backward_params(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0}), (), True), True, 2)
    e = backward_params(OpKind.CONV_2D, ke, BackwardRequest(frozenset({0}), (), True), True, 1)
    inner = prepare_fused_expand_dw_backward(e, d)
    k3 = make_linear_backward(OpKind.CONV_2D, (1, 6, 6, 4), (1, 6, 6, 3), (3, 3, 3, 4), [0.01] * 3, 0, g6)
    k1 = make_linear_backward(OpKind.CONV_2D, (1, 6, 6, 4), (1, 6, 6, 3), (3, 1, 1, 4), [0.01] * 3, 0, _pointwise(6, 6))
    k1_other = make_linear_backward(
        OpKind.CONV_2D, (1, 5, 5, 4), (1, 5, 5, 3), (3, 1, 1, 4), [0.01] * 3, 0, _pointwise(5, 5)
    )
    grad = BackwardRequest(frozenset({0}), (), True)
    with pytest.raises(UsageError, match="1×1"):  # a 3×3 conv's input gradient is not row-local
        prepare_fused_project_backward(backward_params(OpKind.CONV_2D, k3, grad, True, 3), inner)
    with pytest.raises(UsageError, match="is not the output"):
        prepare_fused_project_backward(backward_params(OpKind.CONV_2D, k1_other, grad, True, 3), inner)
    with pytest.raises(UsageError, match="nothing to fuse"):
        prepare_fused_project_backward(
            backward_params(OpKind.CONV_2D, k1, BackwardRequest(frozenset(), (), True), True, 3), inner
        )
    with pytest.raises(UsageError, match="needs a CONV_2D"):
        prepare_fused_project_backward(d, inner)
    fp = prepare_fused_project_backward(backward_params(OpKind.CONV_2D, k1, grad, True, 3), inner)
    g = Grad(np.zeros((1, 6, 6, 3), np.int16), 0)
    w = (np.zeros((3, 1, 1, 4), np.int8), np.zeros((1, 3, 3, 4), np.int8), np.zeros((4, 1, 1, 2), np.int8))
    with pytest.raises(UsageError, match="clamp mask"):
        run_fused_project_backward(fp, g, Saved(), Saved(), Saved(), *w)
    with pytest.raises(UsageError, match="output gradient"):
        run_fused_project_backward(fp, Grad(np.zeros((1, 6, 6, 4), np.int16), 0), Saved(), Saved(), Saved(), *w)


# ------------------------------------------------------------------ shipped checkpoint


def _weight(graph: Graph, step: BackwardStep) -> np.ndarray:
    w = graph.tensor(str(step.op.inputs[1])).data
    assert w is not None
    return w


def test_checkpoint_triples_byte_identical() -> None:
    from tinytrain.frontends.load import load_model
    from tinytrain.train.scheme import get_scheme, resolve

    graph = load_model(CHECKPOINT)
    program = build_training_program(graph, resolve(get_scheme("bias-only", graph), graph))
    steps = program.all_steps
    triples = [
        (p, d, e)
        for p, d, e in zip(steps, steps[1:], steps[2:], strict=False)
        if (p.op.kind, d.op.kind, e.op.kind) == (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.CONV_2D)
        and p.target(0) == d.op.outputs[0]
        and d.target(0) == e.op.outputs[0]
        and 0 in p.params.request.input_grads
        and 0 in d.params.request.input_grads
    ]
    fused = {b.op_index for b in program.backward if b.fused_project is not None}
    # the triples the program fuses (with a folded pad and E's input gradient; the stem as
    # E) and one it leaves unfused (small)
    assert len(fused) >= 2 and any(d.op_index not in fused for _, d, _ in triples)
    kinds = {(bool(d.targets), bool(e.params.request.input_grads), d.op_index in fused) for _, d, e in triples}
    assert {(True, True, True), (False, False, True), (False, True, False)} <= kinds
    trained = [(with_weights(p, 2), with_weights(d, 3), with_weights(e, 2)) for p, d, e in triples]
    to_save = {s.op_index: s for t in trained for s in t}
    x = np.random.default_rng(3).integers(-128, 128, graph.tensor(graph.inputs[0]).shape).astype(np.int8)
    saved = forward_and_save(program, to_save, x)
    rng = np.random.default_rng(11)
    for triple, triple_w in zip(triples, trained, strict=True):
        for sp, sd, se in (triple, triple_w):
            sv = tuple(saved[s.op_index] if s.params.request.weight_channels else Saved(saved[s.op_index].mask)
                       for s in (sp, sd, se))  # fmt: skip
            shape = graph.tensor(sp.op.outputs[0]).shape
            g = rng.integers(-(2**14), 2**14 + 1, shape).astype(np.int16)
            ws = (_weight(graph, sp), _weight(graph, sd), _weight(graph, se))
            for ring in (True, False):
                _compare(sp.params, sd.params, se.params, Grad(g, -18), (sv[0], sv[1], sv[2]), ws, ring)


def test_executor_row_streamed_gives_the_same_bytes() -> None:
    """The device's row-streamed P→D→E (and E→D) kernels and the simulator's vectorised
    unfused kernels train to the same bytes, with biases and with weights in a fused block."""
    from tinytrain.frontends.load import load_model
    from tinytrain.models.ship import shipped
    from tinytrain.passes.replace_head import replace_head
    from tinytrain.train.data import Dataset, load_dataset
    from tinytrain.train.executor import Executor
    from tinytrain.train.layers import linear_layers
    from tinytrain.train.loop import TrainConfig, Trainer
    from tinytrain.train.scheme import get_scheme, resolve, scheme_from_mapping

    graph = replace_head(load_model(shipped(CHECKPOINT.name)), 10, "zero", 0)
    bias_only = build_training_program(graph, resolve(get_scheme("bias-only", graph), graph))
    triple = next(b for b in bias_only.backward if b.fused_from is not None and not b.targets)
    by_op = {lay.op_index: lay.index for lay in linear_layers(graph)}
    assert triple.fused_with is not None and triple.fused_from is not None
    layers = [
        {"layer": by_op[triple.fused_from.op_index], "update": "channels", "count": 3},
        {"layer": by_op[triple.op_index], "update": "channels", "count": 4},
        {"layer": -1, "update": "full"},
    ]
    mixed = scheme_from_mapping({"name": "mixed", "default": "bias", "layers": layers})
    weights = build_training_program(graph, resolve(mixed, graph))
    fused = [b for b in weights.backward if b.fused_project is not None]
    assert any(b.trains and b.params.request.weight_channels for f in fused for b in f.parts)
    tr = load_dataset("fashion-mnist", "train")
    small = Dataset("s", tr.images[:3], tr.labels[:3])
    for program in (bias_only, weights):
        trainers = [Trainer(program, tr.sample_shape, seed=5) for _ in range(2)]
        trainers[1].executor = Executor(program, 5, row_streamed=True)
        for t in trainers:
            t.fit(small, None, TrainConfig(epochs=1, lr=0.05, seed=5))
        a, b = (t.executor.trained_tensors() for t in trainers)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        initial = Executor(program, 5).trained_tensors()
        assert any(not np.array_equal(a[k], initial[k]) for k in a)


# ------------------------------------------------------------------ 256 KB


@pytest.fixture(scope="session")
def keras_variant(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128×128 MobileNetV2-class variant with expansion 4 and 5×5 / 7×7 depthwise kernels."""
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.mobilenetv2 import keras_mobilenetv2_variant

    model, images = keras_mobilenetv2_variant(128, 4, (5, 7))
    path = tmp_path_factory.mktemp("models") / "mbv2-k57-t4-128.tflite"
    path.write_bytes(convert_keras(model, images[:4]))
    return path


def _check_fits(path: Path) -> None:
    from tinytrain.frontends.load import load_model
    from tinytrain.passes.replace_head import replace_head
    from tinytrain.train.compile import CompileOptions, compile_graph
    from tinytrain.train.planner import BufferKind

    graph = replace_head(load_model(path), 10, "zero", 0)
    c = compile_graph(graph, "bias-only", CompileOptions("bias-only", sram_bytes=256 * KB, sample_bytes=784))
    assert c.plan.arena_size <= 230 * KB, f"{path.name}: {c.plan.arena_size / KB:.1f} KB"
    program, names = c.program, {r.name: r for r in c.memory.requests}
    fused = [b for b in program.backward if b.fused_project is not None]
    assert fused, "no projection is fused"
    for b in fused:  # D's output gradient never exists; the fused scratch holds the ring
        assert f"grad:{b.op.outputs[0]}" not in names
        assert b.fused_project is not None
        assert names[f"scratch:fused-bwd:{b.op_index}"].size == b.fused_project.scratch_bytes
        assert b.fused_project.scratch_bytes < graph.tensor(b.op.outputs[0]).size
    assert [s.op_index for s in program.all_steps] == sorted((s.op_index for s in program.all_steps), reverse=True)
    assert all(program.backward_of(s.op_index) is s for s in program.all_steps)
    # the independent overlap check of the plan
    n = c.plan.num_steps
    spans = []
    for r in c.memory.requests:
        first, last = (0, n - 1) if r.kind in (BufferKind.TRAINABLE, BufferKind.STATE) else (r.first, r.last)
        off = c.plan.offset(r.name)
        spans.append((first, last, off, off + r.size))
    spans.sort(key=lambda t: t[2])
    for i, (f1, l1, o1, e1) in enumerate(spans):
        for f2, l2, o2, e2 in spans[i + 1 :]:
            if o2 >= e1:
                break
            assert not (f1 <= l2 and f2 <= l1 and o1 < e2 and e1 > o1 and e2 > o2)


def test_bias_only_fits_on_the_shipped_128_mobilenetv2() -> None:
    _check_fits(MBV2_128)


def test_bias_only_fits_on_a_keras_mobilenetv2_variant(keras_variant: Path) -> None:
    _check_fits(keras_variant)
