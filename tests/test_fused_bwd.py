"""The row-streamed fused backward of expansion CONV_2D → DEPTHWISE_CONV_2D is
byte-identical to the unfused rules (D's backward, then E's), on random data for
several geometries and on the blocks of the shipped synthetic MCUNet checkpoint."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from tests.helpers_fused import forward_and_save, with_weights
from tinytrain.errors import UsageError
from tinytrain.ir.ops import NoAttrs, Op, OpKind
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.train.build import BackwardStep, TrainingProgram, build_training_program
from tinytrain.train.grad_rules import (
    GRAD_RULES,
    BackwardParams,
    BackwardRequest,
    BackwardResult,
    Saved,
    run_backward,
)
from tinytrain.train.kernels.fused_bwd import (
    fused_scratch_bytes,
    prepare_fused_expand_dw_backward,
    run_fused_expand_dw_backward,
)
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.linear_bwd import make_linear_backward
from tinytrain.train.kernels.mask import pack_mask

CHECKPOINT = Path(__file__).resolve().parents[1] / "tinytrain" / "data" / "mcunet-synthetic.pkl"


# ------------------------------------------------------------------ helpers


def _assert_grad_equal(a: Grad | None, b: Grad | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.e == b.e
        assert a.g.dtype == b.g.dtype == np.int16
        assert np.array_equal(a.g, b.g)


def _assert_array_equal(a: np.ndarray | None, b: np.ndarray | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)


def _assert_result_equal(fused: BackwardResult, unfused: BackwardResult, with_inputs: bool = True) -> None:
    _assert_array_equal(fused.bias_grad, unfused.bias_grad)
    _assert_array_equal(fused.weight_grad, unfused.weight_grad)
    assert fused.param_exponent == unfused.param_exponent
    if with_inputs:
        assert set(fused.input_grads) == set(unfused.input_grads)
        for k in fused.input_grads:
            _assert_grad_equal(fused.input_grads[k], unfused.input_grads[k])


def _compare(
    e: BackwardParams,
    d: BackwardParams,
    g_d: Grad,
    saved_d: Saved,
    saved_e: Saved,
    w_d: np.ndarray,
    w_e: np.ndarray,
) -> None:
    """Fused vs unfused: every gradient byte and exponent."""
    ref_d = run_backward(d, g_d, saved_d, w_d)
    ref_e = run_backward(e, ref_d.input_grads[0], saved_e, w_e)
    fp = prepare_fused_expand_dw_backward(e, d)
    g_in, res_d, res_e = run_fused_expand_dw_backward(fp, g_d, saved_d, saved_e, w_d, w_e)
    assert res_d.input_grads == {}
    _assert_result_equal(res_d, ref_d, with_inputs=False)
    _assert_result_equal(res_e, ref_e)
    _assert_grad_equal(g_in, ref_e.input_grads.get(0))


def _same_geometry(size: int, k: int, s: int) -> Geometry:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return Geometry(k, k, s, s, 1, 1, total // 2, total // 2, total - total // 2, total - total // 2, out, out)


def _explicit_geometry(size: int, k: int, s: int, before: int, after: int) -> Geometry:
    """A VALID conv over a PAD folded into the backward (``build._fold_pads``)."""
    out = (size + before + after - k) // s + 1
    return Geometry(k, k, s, s, 1, 1, before, before, after, after, out, out)


def _bp(kind: OpKind, kernel: object, request: BackwardRequest, clamp: bool, index: int) -> BackwardParams:
    op = Op(kind, (f"x{index}", f"w{index}", f"b{index}"), (f"y{index}",), NoAttrs(), index)
    return BackwardParams(op, GRAD_RULES[kind], request, kernel, (-128, 127) if clamp else None, None)


@dataclass(frozen=True)
class Case:
    size: int  # H = W of D's input (= E's output)
    c: int  # channels of E's output
    cin: int  # E's input channels
    dk: int  # D's kernel
    ds: int  # D's stride
    pads: tuple[int, int] | None  # folded explicit pad of D (None: SAME)
    e_grad: bool  # E's input gradient
    e_weights: tuple[int, ...]  # E's trained input channels
    d_weights: tuple[int, ...]  # D's trained channels
    e_geom: tuple[int, int] = (1, 1)  # E's kernel and stride (no input gradient unless 1×1 s1)
    zero: bool = False  # an all-masked output gradient


CASES = [
    Case(9, 12, 5, 3, 1, None, True, (), ()),
    Case(10, 8, 4, 3, 2, None, True, (0, 3), (1, 5)),
    Case(11, 6, 3, 5, 1, None, False, (2,), (0,)),
    Case(12, 7, 5, 5, 2, None, True, (), (6, 2, 0)),
    Case(10, 8, 6, 3, 2, (0, 1), True, (1,), ()),
    Case(9, 5, 4, 3, 2, (1, 1), False, (), ()),
    Case(13, 4, 3, 5, 2, (1, 2), True, (2, 0), (3,)),
    Case(8, 6, 3, 3, 1, None, False, (0, 2), (), e_geom=(3, 2)),
    Case(7, 5, 4, 3, 1, None, True, (), (), zero=True),
]


def _random_case(case: Case, rng: np.random.Generator) -> None:
    h = case.size
    dgeom = (
        _same_geometry(h, case.dk, case.ds)
        if case.pads is None
        else _explicit_geometry(h, case.dk, case.ds, *case.pads)
    )
    ek, es = case.e_geom
    e_in_size = h * es
    egeom = _same_geometry(e_in_size, ek, es)
    assert egeom.out_h == h
    c, cin = case.c, case.cin
    kd = make_linear_backward(
        OpKind.DEPTHWISE_CONV_2D,
        (1, h, h, c),
        (1, dgeom.out_h, dgeom.out_w, c),
        (1, case.dk, case.dk, c),
        list(rng.uniform(0.002, 0.05, c)),
        int(rng.integers(-128, 128)),
        dgeom,
    )
    ke = make_linear_backward(
        OpKind.CONV_2D,
        (1, e_in_size, e_in_size, cin),
        (1, h, h, c),
        (c, ek, ek, cin),
        list(rng.uniform(0.001, 0.08, c)),
        int(rng.integers(-128, 128)),
        egeom,
    )
    d = _bp(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0}), case.d_weights, True), True, 2)
    e = _bp(
        OpKind.CONV_2D,
        ke,
        BackwardRequest(frozenset({0}) if case.e_grad else frozenset(), case.e_weights, True),
        True,
        1,
    )
    w_d = rng.integers(-127, 128, (1, case.dk, case.dk, c)).astype(np.int8)
    w_e = rng.integers(-127, 128, (c, ek, ek, cin)).astype(np.int8)
    n_out = dgeom.out_h * dgeom.out_w * c
    g = rng.integers(-(2**14), 2**14 + 1, (1, dgeom.out_h, dgeom.out_w, c)).astype(np.int16)
    keep_d = np.zeros(n_out, bool) if case.zero else rng.random(n_out) < 0.7
    saved_d = Saved(
        pack_mask(keep_d),
        rng.integers(-128, 128, (1, h, h, len(case.d_weights))).astype(np.int8) if case.d_weights else None,
    )
    saved_e = Saved(
        pack_mask(rng.random(h * h * c) < 0.6),
        rng.integers(-128, 128, (1, e_in_size, e_in_size, len(case.e_weights))).astype(np.int8)
        if case.e_weights
        else None,
    )
    _compare(e, d, Grad(g, int(rng.integers(-30, -5))), saved_d, saved_e, w_d, w_e)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"h{c.size}-k{c.dk}s{c.ds}-pad{c.pads}-eg{int(c.e_grad)}")
def test_random_geometries_byte_identical(case: Case) -> None:
    rng = np.random.default_rng(CASES.index(case))
    for _ in range(2):
        _random_case(case, rng)


def test_small_gradients_shift_left() -> None:
    """Tiny gradients make both normalizations shift left (r < 0)."""
    rng = np.random.default_rng(7)
    h, c, cin = 6, 4, 3
    geom = _same_geometry(h, 3, 1)
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, h, h, c), (1, h, h, c), (1, 3, 3, c), [0.01] * c, 0, geom)
    ke = make_linear_backward(
        OpKind.CONV_2D, (1, h, h, cin), (1, h, h, c), (c, 1, 1, cin), [0.02] * c, 0, _same_geometry(h, 1, 1)
    )
    d = _bp(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0})), False, 2)
    e = _bp(OpKind.CONV_2D, ke, BackwardRequest(frozenset({0}), (), True), False, 1)
    g = rng.integers(-(2**14), 2**14, (1, h, h, c)).astype(np.int16)
    w_d = rng.integers(-127, 128, (1, 3, 3, c)).astype(np.int8)
    w_e = rng.integers(-2, 3, (c, 1, 1, cin)).astype(np.int8)
    ref = run_backward(d, Grad(g, -20), Saved(), w_d).input_grads[0]
    assert int(np.abs(ref.g).max()) < 2**14  # not already at full scale ...
    _compare(e, d, Grad(g, -20), Saved(), Saved(), w_d, w_e)


# ------------------------------------------------------------------ shipped checkpoint


@dataclass(frozen=True)
class Forward:
    program: TrainingProgram
    saved: dict[int, Saved]
    pairs: tuple[tuple[BackwardStep, BackwardStep], ...]  # (D, E)


@pytest.fixture(scope="module")
def synthetic() -> Forward:
    from tinytrain.frontends.load import load_model
    from tinytrain.train.scheme import get_scheme, resolve

    graph = load_model(CHECKPOINT)
    program = build_training_program(graph, resolve(get_scheme("bias-only", graph), graph))
    bwd = list(program.backward)
    pairs = []
    for b in bwd:  # pairs the program already fuses (large gradients) ...
        if b.fused_with is not None:
            pairs.append((with_weights(replace(b, fused=None, fused_with=None), 3), with_weights(b.fused_with, 2)))
    for d, e in itertools.pairwise(bwd):  # ... and those it leaves unfused (small ones)
        if (
            d.op.kind is OpKind.DEPTHWISE_CONV_2D
            and e.op.kind is OpKind.CONV_2D
            and 0 in d.params.request.input_grads
            and d.target(0) == e.op.outputs[0]
        ):
            pairs.append((with_weights(d, 3), with_weights(e, 2)))
    steps = {s.op_index: s for pair in pairs for s in pair}
    x = np.random.default_rng(3).integers(-128, 128, graph.tensor(graph.inputs[0]).shape).astype(np.int8)
    return Forward(program, forward_and_save(program, steps, x), tuple(pairs))


def test_checkpoint_pairs_byte_identical(synthetic: Forward) -> None:
    program, pairs = synthetic.program, synthetic.pairs
    kinds = {(len(d.targets) > 0, 0 in e.params.request.input_grads) for d, e in pairs}
    assert (True, True) in kinds and (False, True) in kinds and (False, False) in kinds  # folded pad, stem pair
    graph = program.graph
    rng = np.random.default_rng(11)
    for d, e in pairs:
        for variant in (
            (d, e),
            (
                replace(d, params=replace(d.params, request=replace(d.params.request, weight_channels=()))),
                replace(e, params=replace(e.params, request=replace(e.params.request, weight_channels=()))),
            ),
        ):
            dv, ev = variant
            shape = graph.tensor(dv.op.outputs[0]).shape
            g = rng.integers(-(2**14), 2**14 + 1, shape).astype(np.int16)
            w_d = graph.tensor(str(dv.op.inputs[1])).data
            w_e = graph.tensor(str(ev.op.inputs[1])).data
            assert w_d is not None and w_e is not None
            sd, se = synthetic.saved[dv.op_index], synthetic.saved[ev.op_index]
            if not dv.params.request.weight_channels:
                sd = Saved(sd.mask)
            if not ev.params.request.weight_channels:
                se = Saved(se.mask)
            _compare(ev.params, dv.params, Grad(g, -18), sd, se, w_d, w_e)


def test_checkpoint_scratch_is_rows(synthetic: Forward) -> None:
    """The scratch is a few rows, far below the gradient tensor it replaces."""
    graph = synthetic.program.graph
    for d, e in synthetic.pairs:
        fp = prepare_fused_expand_dw_backward(e.params, d.params)
        _, h, w, c = graph.tensor(e.op.outputs[0]).shape
        ke = e.params.kernel
        expect = 4 * w * c
        if 0 in e.params.request.input_grads:
            expect += 4 * w * ke.in_channels
        if e.params.request.bias:
            expect += 8 * c
        expect += 8 * c * ke.geom.kh * ke.geom.kw * len(e.params.request.weight_channels)
        assert fp.scratch_bytes == expect
        assert (fp.height, fp.width, fp.channels) == (h, w, c)
        assert fp.scratch_bytes < 2 * h * w * c


# ------------------------------------------------------------------ scratch and errors


def test_scratch_formula() -> None:
    # MobileNetV2-w0.35 @128, block 1: 64×64×48 expansion output, 16 input channels, bias-only.
    n = fused_scratch_bytes(64, 48, 16, e_input_grad=True, e_bias=True, e_weight_taps=1, e_weight_channels=0)
    assert n == 4 * 64 * 48 + 4 * 64 * 16 + 8 * 48
    assert n < (2 * 64 * 64 * 48) // 20
    base = fused_scratch_bytes(5, 3, 2, False, False, 1, 0)
    assert base == 4 * 5 * 3
    assert fused_scratch_bytes(5, 3, 2, False, False, 9, 4) - base == 8 * 3 * 9 * 4


def test_rejects_unfusable_pairs() -> None:
    geom = _same_geometry(6, 3, 1)
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, 6, 6, 4), (1, 6, 6, 4), (1, 3, 3, 4), [0.01] * 4, 0, geom)
    k3 = make_linear_backward(OpKind.CONV_2D, (1, 6, 6, 2), (1, 6, 6, 4), (4, 3, 3, 2), [0.01] * 4, 0, geom)
    k1 = make_linear_backward(
        OpKind.CONV_2D, (1, 5, 5, 2), (1, 5, 5, 4), (4, 1, 1, 2), [0.01] * 4, 0, _same_geometry(5, 1, 1)
    )
    d = _bp(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0})), True, 2)
    grad_e = BackwardRequest(frozenset({0}), (), True)
    with pytest.raises(UsageError, match="1×1"):  # a 3×3 conv's input gradient is not row-local
        prepare_fused_expand_dw_backward(_bp(OpKind.CONV_2D, k3, grad_e, True, 1), d)
    with pytest.raises(UsageError, match="is not the output"):
        prepare_fused_expand_dw_backward(_bp(OpKind.CONV_2D, k1, grad_e, True, 1), d)
    d_nograd = _bp(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset(), (), True), True, 2)
    with pytest.raises(UsageError, match="nothing to fuse"):
        prepare_fused_expand_dw_backward(
            _bp(OpKind.CONV_2D, k3, BackwardRequest(frozenset(), (), True), True, 1), d_nograd
        )
    with pytest.raises(UsageError, match="DEPTHWISE"):
        prepare_fused_expand_dw_backward(d, d)
    e_ok = _bp(OpKind.CONV_2D, k3, BackwardRequest(frozenset(), (), True), True, 1)
    fp = prepare_fused_expand_dw_backward(e_ok, d)
    g = Grad(np.zeros((1, 6, 6, 4), np.int16), 0)
    with pytest.raises(UsageError, match="clamp mask"):
        run_fused_expand_dw_backward(fp, g, Saved(), Saved(), np.zeros((1, 3, 3, 4), np.int8), None)
    assert math.prod(g.shape) == 144
