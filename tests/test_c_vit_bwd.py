"""The C backward kernels of the tiny-ViT ops (tt_vit_bwd.c) against their numpy twins in
tinytrain/train/kernels/{attn_bwd,norm_bwd,layout_bwd}.py, byte for byte (mantissas and exponent):
random ops over the legal ranges (broadcasts, constants, x·x, adj_x / adj_y, masks of
STRIDED_SLICE), gradient edge cases (zero, ±2^14, any int16), in-place calls (SOFTMAX, RSQRT,
MUL, SUB), refusals, and every such op instance of the tiny ViT on real saved activations.
Random cases also run in a UBSan build (no recovery: undefined behaviour aborts)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from tests.helpers_vit import VitRun, act, const
from tests.helpers_vit import op_of as build_op
from tests.helpers_vit import vit_run as run_vit
from tinytrain.errors import TinytrainError
from tinytrain.ir.ops import (
    Activation,
    BatchMatMulAttrs,
    ConcatenationAttrs,
    ElementwiseAttrs,
    NoAttrs,
    Op,
    OpKind,
    ReduceAttrs,
    SoftmaxAttrs,
    StridedSliceAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.testing import c_vit as cv
from tinytrain.testing.cbuild import RUNTIME_SRC, build_shared
from tinytrain.train.kernels import attn_bwd, layout_bwd, norm_bwd
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad

SOURCES = ("tt_vit_fwd.c", "tt_vit_bwd.c")
G_MAX = 1 << GRAD_BITS
TT_ERR_ARG, TT_ERR_SHAPE, TT_ERR_RANGE = 1, 2, 3
Libs = tuple[ctypes.CDLL, ...]


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> Libs:
    d = tmp_path_factory.mktemp("cvitb")
    src = [RUNTIME_SRC / s for s in SOURCES]
    plain = cv.declare_vit(ctypes.CDLL(str(build_shared(src, d, name="ttvit"))))
    flags = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
    ubsan = cv.declare_vit(ctypes.CDLL(str(build_shared(src, d, extra_flags=flags, name="ttvitub"))))
    return plain, ubsan


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> VitRun:
    return run_vit(tmp_path_factory.mktemp("vit"), seed=6)


def op_of(kind: OpKind, ins: Sequence[Tensor], outs: Sequence[Tensor], attrs: Any) -> Op:
    return build_op(kind, ins, outs, attrs, index=9)


def i8(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    return rng.integers(-128, 128, tuple(shape)).astype(np.int8)


def rand_zp(rng: np.random.Generator) -> int:
    return int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128))]))


MODES = ("random", "random", "max", "zero", "full", "small")


def rand_grad(rng: np.random.Generator, shape: Sequence[int], mode: str) -> Grad:
    shape = tuple(shape)
    e = int(rng.integers(-40, 10))
    if mode == "zero":
        return Grad(np.zeros(shape, np.int16), e)
    if mode == "max":
        return Grad(rng.choice(np.array([-G_MAX, G_MAX], np.int16), shape), e)
    if mode == "full":
        return Grad(rng.integers(-(1 << 15), 1 << 15, shape).astype(np.int16), e)
    if mode == "small":
        return Grad(rng.integers(-3, 4, shape).astype(np.int16), e)
    g = rng.integers(-G_MAX, G_MAX + 1, shape)
    return Grad(np.where(rng.random(shape) < 0.3, 0, g).astype(np.int16), e)


def same(a: Grad, b: Grad) -> bool:
    return a.e == b.e and a.g.shape == b.g.shape and np.array_equal(a.g, b.g)


def saved_of(names: Sequence[str], ins: Sequence[np.ndarray], out: np.ndarray) -> dict[str, np.ndarray]:
    vals = {f"in{i}": v for i, v in enumerate(ins)}
    vals["out0"] = out
    return {n: vals[n] for n in names}


# One checker per op: (libs, op, ins, outs, input values, output value, g_y, in_place) -> number of grads compared.
Checker = Callable[[Libs, Op, Inputs, Outputs, Sequence[np.ndarray], np.ndarray, Grad, bool], int]


def check_mul(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = norm_bwd.prepare_mul_backward(op, ins, outs)
    saved = saved_of(norm_bwd.mul_saves(p, frozenset({0, 1})), xs, y)
    cp = cv.mul_bwd_c_params(p)
    n = 0
    for i in p.grad_inputs:
        (want,) = norm_bwd.mul_input_grads(p, g, saved, frozenset({i})).values()
        j = 0 if p.square else 1 - i
        c = p.consts[j]
        other = c if c is not None else xs[j]
        full = tuple(p.in_shapes[i]) == tuple(p.out_shape)
        for lib in libs:
            got = cv.c_mul_input_grad(lib, cp, i, g, other, p.in_shapes[i], in_place=in_place and full)
            assert same(got, want), (op.describe(), i)
        n += 1
    return n


def check_sub(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = norm_bwd.prepare_sub_backward(op, ins, outs)
    cp = cv.sub_bwd_c_params(p)
    n = 0
    for i in p.grad_inputs:
        (want,) = norm_bwd.sub_input_grads(p, g, {}, frozenset({i})).values()
        full = tuple(p.in_shapes[i]) == tuple(p.out_shape)
        for lib in libs:
            got = cv.c_sub_input_grad(lib, cp, i, g, p.in_shapes[i], in_place=in_place and full)
            assert same(got, want), (op.describe(), i)
        n += 1
    return n


def check_mean(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = norm_bwd.prepare_mean_backward(op, ins, outs)
    want = norm_bwd.mean_input_grads(p, g, {}, frozenset({0}))[0]
    for lib in libs:
        assert same(cv.c_mean_input_grad(lib, cv.mean_bwd_c_params(p), g, p.in_shape), want), op.describe()
    return 1


def check_rsqrt(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = norm_bwd.prepare_rsqrt_backward(op, ins, outs)
    want = norm_bwd.rsqrt_input_grads(p, g, {"out0": y}, frozenset({0}))[0]
    for lib in libs:
        assert same(cv.c_rsqrt_input_grad(lib, cv.rsqrt_bwd_c_params(p), g, y, in_place), want), op.describe()
    return 1


def check_softmax(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = attn_bwd.prepare_softmax_backward(op, ins, outs)
    want = attn_bwd.softmax_input_grads(p, g, {"out0": y}, frozenset({0}))[0]
    for lib in libs:
        assert same(cv.c_softmax_input_grad(lib, cv.softmax_bwd_c_params(p), g, y, in_place), want), op.describe()
    return 1


def check_batch_matmul(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = attn_bwd.prepare_batch_matmul_backward(op, ins, outs)
    saved = saved_of(attn_bwd.batch_matmul_saves(p, frozenset({0, 1})), xs, y)
    cp = cv.batch_matmul_bwd_c_params(p)
    n = 0
    for i in p.grad_inputs:
        (want,) = attn_bwd.batch_matmul_input_grads(p, g, saved, frozenset({i})).values()
        j = 1 - i
        c = p.consts[j]
        other = c if c is not None else xs[j]
        for lib in libs:
            got = cv.c_batch_matmul_input_grad(lib, cp, i, g, other, p.in_shapes[i])
            assert same(got, want), (op.describe(), i)
        n += 1
    return n


def check_transpose(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = layout_bwd.prepare_transpose_backward(op, ins, outs)
    want = layout_bwd.transpose_input_grads(p, g, {}, frozenset({0}))[0]
    for lib in libs:
        got = cv.c_transpose_input_grad(lib, cv.transpose_bwd_c_params(p), g)
        assert same(got.reshape(want.shape), want), op.describe()
    return 1


def check_strided_slice(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = layout_bwd.prepare_strided_slice_backward(op, ins, outs)
    want = layout_bwd.strided_slice_input_grads(p, g, {}, frozenset({0}))[0]
    for lib in libs:
        got = cv.c_strided_slice_input_grad(lib, cv.strided_slice_bwd_c_params(p), g, p.in_shape)
        assert same(got, want), op.describe()
    return 1


def check_concat(
    libs: Libs, op: Op, ins: Inputs, outs: Outputs, xs: Sequence[np.ndarray], y: np.ndarray, g: Grad, in_place: bool
) -> int:
    p = layout_bwd.prepare_concatenation_backward(op, ins, outs)
    n = 0
    for i in p.grad_inputs:
        (want,) = layout_bwd.concatenation_input_grads(p, g, {}, frozenset({i})).values()
        for lib in libs:
            assert same(cv.c_concat_input_grad(lib, cv.concat_bwd_c_params(p, i), g, p.in_shapes[i]), want)
        n += 1
    return n


CHECKS: Mapping[OpKind, Checker] = {
    OpKind.MUL: check_mul,
    OpKind.SUB: check_sub,
    OpKind.MEAN: check_mean,
    OpKind.RSQRT: check_rsqrt,
    OpKind.SOFTMAX: check_softmax,
    OpKind.BATCH_MATMUL: check_batch_matmul,
    OpKind.TRANSPOSE: check_transpose,
    OpKind.STRIDED_SLICE: check_strided_slice,
    OpKind.CONCATENATION: check_concat,
}


def run_case(
    libs: Libs, rng: np.random.Generator, op: Op, ins: Sequence[Tensor], out: Tensor, xs: Sequence[np.ndarray],
    mode: str, in_place: bool = False,
) -> int:  # fmt: skip
    y = i8(rng, out.shape)
    g = rand_grad(rng, out.shape, mode)
    return CHECKS[op.kind](libs, op, tuple(ins), (out,), xs, y, g, in_place)


def shapes_broadcasting(rng: np.random.Generator, max_rank: int = 4) -> tuple[list[int], list[int]]:
    rank = int(rng.integers(1, max_rank + 1))
    out = [int(d) for d in rng.integers(1, 5, rank)]
    sa = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, rank)) :]
    sb = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, rank)) :]
    return sa, sb


# ------------------------------------------------------------------------------ MUL / SUB


def test_mul_random(libs: Libs) -> None:
    rng = np.random.default_rng(21)
    done = 0
    for case in range(60):
        sa, sb = shapes_broadcasting(rng)
        out_shape = tuple(np.broadcast_shapes(tuple(sa), tuple(sb)))
        s1, s2 = float(2.0 ** rng.uniform(-8, 2)), float(2.0 ** rng.uniform(-8, 2))
        a, b = act("a", sa, s1, rand_zp(rng)), act("b", sb, s2, rand_zp(rng))
        if case % 5 == 0:  # x * x
            b = a
        elif rng.random() < 0.25:
            b = const("b", i8(rng, sb), b.quant)
        out_shape = tuple(np.broadcast_shapes(a.shape, b.shape))
        y = act("y", out_shape, s1 * s2 * 30, rand_zp(rng))
        op = op_of(OpKind.MUL, (a, b), (y,), ElementwiseAttrs(Activation.NONE))
        xs = [i8(rng, a.shape), b.data if b.data is not None else i8(rng, b.shape)]
        if b is a:
            xs[1] = xs[0]
        done += run_case(libs, rng, op, (a, b), y, xs, MODES[case % len(MODES)], in_place=case % 2 == 1)
    assert done >= 60


def test_sub_random(libs: Libs) -> None:
    rng = np.random.default_rng(22)
    done = 0
    for case in range(50):
        sa, sb = shapes_broadcasting(rng)
        out_shape = tuple(np.broadcast_shapes(tuple(sa), tuple(sb)))
        a, b = act("a", sa, 0.05, rand_zp(rng)), act("b", sb, 0.03, rand_zp(rng))
        if rng.random() < 0.2:
            a = const("a", i8(rng, sa), a.quant)
        y = act("y", out_shape, 0.06, rand_zp(rng))
        op = op_of(OpKind.SUB, (a, b), (y,), ElementwiseAttrs(Activation.NONE))
        xs = [i8(rng, sa), i8(rng, sb)]
        done += run_case(libs, rng, op, (a, b), y, xs, MODES[case % len(MODES)], in_place=case % 2 == 1)
    assert done >= 50


def test_sub_negates_the_minimum_like_numpy(libs: Libs) -> None:
    """-(-32768) wraps to -32768 in numpy's astype(int16) and in the C."""
    a, b, y = act("a", (2, 3), 0.05, 0), act("b", (2, 3), 0.05, 0), act("y", (2, 3), 0.1, 0)
    op = op_of(OpKind.SUB, (a, b), (y,), ElementwiseAttrs(Activation.NONE))
    g = Grad(np.array([[-32768, 32767, 0], [1, -1, 5]], np.int16), -3)
    assert check_sub(libs, op, (a, b), (y,), [], np.zeros((2, 3), np.int8), g, False) == 2


# ------------------------------------------------------------------------- MEAN / RSQRT


def test_mean_random(libs: Libs) -> None:
    rng = np.random.default_rng(23)
    done = 0
    for case in range(40):
        rank = int(rng.integers(2, 5))
        shape = [1, *(int(d) for d in rng.integers(1, 9, rank - 1))]
        if case % 4 == 0:
            shape[-1] = int(rng.choice([4, 8, 16, 64]))  # n = 2^k: the exact copy path
        axes = sorted({int(a) for a in rng.integers(1, rank, int(rng.integers(1, rank)))})
        keep = bool(rng.random() < 0.7)
        x = act("x", shape, 0.05, rand_zp(rng))
        out_shape = (
            [1 if i in axes else d for i, d in enumerate(shape)]
            if keep
            else [d for i, d in enumerate(shape) if i not in axes]
        )
        y = act("y", out_shape, 0.04, rand_zp(rng))
        ax = const("axes", np.asarray(axes, np.int32))
        op = op_of(OpKind.MEAN, (x, ax), (y,), ReduceAttrs(keep))
        done += run_case(libs, rng, op, (x, ax), y, [i8(rng, shape)], MODES[case % len(MODES)])
    assert done >= 40


def test_rsqrt_random(libs: Libs) -> None:
    rng = np.random.default_rng(24)
    done = 0
    for case in range(30):
        shape = [int(d) for d in rng.integers(1, 9, int(rng.integers(1, 4)))]
        x = act("x", shape, float(2.0 ** rng.uniform(-10, 0)), -128)
        y = act("y", shape, float(2.0 ** rng.uniform(-6, 3)), rand_zp(rng))
        op = op_of(OpKind.RSQRT, (x,), (y,), NoAttrs())
        done += run_case(libs, rng, op, (x,), y, [i8(rng, shape)], MODES[case % len(MODES)], case % 2 == 1)
    assert done >= 30


# ------------------------------------------------------------------- SOFTMAX / BATCH_MATMUL


def test_softmax_random(libs: Libs) -> None:
    rng = np.random.default_rng(25)
    done = 0
    for case in range(30):
        n = int(rng.choice([1, 2, 5, 65, 200]))
        shape = [int(d) for d in rng.integers(1, 4, int(rng.integers(0, 3)))] + [n]
        beta = float(rng.choice([1.0, 0.37, 2.5]))
        x = act("x", shape, 0.05, rand_zp(rng))
        y = act("y", shape, 1.0 / 256, -128)
        op = op_of(OpKind.SOFTMAX, (x,), (y,), SoftmaxAttrs(beta))
        done += run_case(libs, rng, op, (x,), y, [i8(rng, shape)], MODES[case % len(MODES)], case % 2 == 1)
    assert done >= 30


def test_batch_matmul_random(libs: Libs) -> None:
    rng = np.random.default_rng(26)
    done = 0
    for case in range(40):
        rows, depth, cols = (int(v) for v in rng.integers(1, 7, 3))
        nb = int(rng.integers(0, 4))
        batch = [int(v) for v in rng.integers(1, 4, nb)]
        lb = [d if rng.random() < 0.7 else 1 for d in batch][int(rng.integers(0, nb + 1)) :]
        rb = [d if rng.random() < 0.7 else 1 for d in batch][int(rng.integers(0, nb + 1)) :]
        adj_x, adj_y = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        ls = (*lb, depth, rows) if adj_x else (*lb, rows, depth)
        rs = (*rb, cols, depth) if adj_y else (*rb, depth, cols)
        out_shape = (*np.broadcast_shapes(tuple(lb), tuple(rb)), rows, cols)
        s1, s2 = float(2.0 ** rng.uniform(-8, 0)), float(2.0 ** rng.uniform(-8, 0))
        a, b = act("a", ls, s1, rand_zp(rng)), act("b", rs, s2, rand_zp(rng))
        if rng.random() < 0.2:
            if case % 2:
                b = const("b", i8(rng, rs), b.quant)
            else:
                a = const("a", i8(rng, ls), a.quant)
        y = act("y", out_shape, float(s1 * s2 * 200), rand_zp(rng))
        op = op_of(OpKind.BATCH_MATMUL, (a, b), (y,), BatchMatMulAttrs(adj_x, adj_y))
        xs = [a.data if a.data is not None else i8(rng, ls), b.data if b.data is not None else i8(rng, rs)]
        done += run_case(libs, rng, op, (a, b), y, xs, MODES[case % len(MODES)])
    assert done >= 40


def test_batch_matmul_long_contraction_drops_bits(libs: Libs) -> None:
    """A contraction long enough for a non-zero bit budget d (g' = RoundingDivideByPOT(g, d))."""
    rng = np.random.default_rng(27)
    a, b = act("a", (2, 3, 300), 0.02, 127), act("b", (2, 300, 1200), 0.03, -128)
    y = act("y", (2, 3, 1200), 0.5, 0)
    op = op_of(OpKind.BATCH_MATMUL, (a, b), (y,), BatchMatMulAttrs())
    p = attn_bwd.prepare_batch_matmul_backward(op, (a, b), (y,))
    assert max(p.drop) > 0
    assert run_case(libs, rng, op, (a, b), y, [i8(rng, a.shape), i8(rng, b.shape)], "max") == 2


# ---------------------------------------------------------------------- layout ops


def test_layout_random(libs: Libs) -> None:
    rng = np.random.default_rng(28)
    done = 0
    for case in range(40):  # TRANSPOSE
        rank = int(rng.integers(1, 6))
        t_shape = tuple(int(v) for v in rng.integers(1, 5, rank))
        perm = np.asarray(rng.permutation(rank), np.int32)
        x, pt = act("x", t_shape, 0.1, 0), const("perm", perm)
        y = act("y", tuple(t_shape[i] for i in perm), 0.1, 0)
        op = op_of(OpKind.TRANSPOSE, (x, pt), (y,), NoAttrs())
        done += run_case(libs, rng, op, (x, pt), y, [i8(rng, t_shape), perm], MODES[case % len(MODES)])
    for case in range(30):  # CONCATENATION
        rank = int(rng.integers(1, 5))
        shape = [int(v) for v in rng.integers(1, 5, rank)]
        ax = int(rng.integers(0, rank))
        ins = []
        for i in range(int(rng.integers(1, 4))):
            s = list(shape)
            s[ax] = int(rng.integers(1, 4))
            q = Quantization.per_tensor(0.05, 3)
            ins.append(const(f"c{i}", i8(rng, s), q) if rng.random() < 0.3 else act(f"x{i}", s, 0.05, 3))
        out = list(shape)
        out[ax] = sum(t.shape[ax] for t in ins)
        y = act("y", out, 0.05, 3)
        op = op_of(OpKind.CONCATENATION, ins, (y,), ConcatenationAttrs(ax - rank if case % 2 else ax))
        run_case(libs, rng, op, ins, y, [], MODES[case % len(MODES)])
        done += 1
    for case in range(120):  # STRIDED_SLICE
        rank = int(rng.integers(1, 5))
        s_shape = tuple(int(v) for v in rng.integers(1, 7, rank))
        vecs = (
            np.asarray([int(rng.integers(-d - 1, d + 1)) for d in s_shape], np.int32),
            np.asarray([int(rng.integers(-d - 1, d + 2)) for d in s_shape], np.int32),
            np.asarray([int(rng.choice([1, 1, 2, 3, -1, -2])) for _ in s_shape], np.int32),
        )
        attrs = StridedSliceAttrs(begin_mask=int(rng.integers(0, 1 << rank)), end_mask=int(rng.integers(0, 1 << rank)))
        x = act("x", s_shape, 0.1, 0)
        ts = [const(n, v) for n, v in zip(("begin", "end", "strides"), vecs, strict=True)]
        sl = tuple(
            slice(None if attrs.begin_mask >> a & 1 else int(vecs[0][a]), None if attrs.end_mask >> a & 1 else
                  int(vecs[1][a]), int(vecs[2][a])) for a in range(rank))  # fmt: skip
        sliced = np.zeros(s_shape)[sl].shape
        if 0 in sliced:
            continue
        y = act("y", sliced, 0.1, 0)
        op = op_of(OpKind.STRIDED_SLICE, (x, *ts), (y,), attrs)
        try:
            layout_bwd.prepare_strided_slice_backward(op, (x, *ts), (y,))
        except TinytrainError:
            continue
        done += run_case(libs, rng, op, (x, *ts), y, [i8(rng, s_shape), *vecs], MODES[case % len(MODES)])
    assert done >= 110


# --------------------------------------------------------------------------- refusals


def test_refusals(libs: Libs) -> None:
    lib = libs[0]
    p = cv.TtRsqrtBwdParams(size=4, out_zp=0, mu=1 << 14, k=0)
    g = np.ones(4, np.int16)
    y = np.ones(4, np.int8)
    out = np.empty(4, np.int16)
    e = ctypes.c_int32(0)

    def rsqrt(s: cv.TtRsqrtBwdParams, e_y: int) -> int:
        return int(lib.tt_rsqrt_bwd_s16(ctypes.addressof(s), g.ctypes.data, e_y, y.ctypes.data, out.ctypes.data,
                                        ctypes.addressof(e)))  # fmt: skip

    assert rsqrt(p, 0) == 0
    assert rsqrt(p, (1 << 30) + 1) == TT_ERR_RANGE
    assert rsqrt(cv.TtRsqrtBwdParams(size=4, out_zp=128, mu=1 << 14, k=0), 0) == TT_ERR_ARG
    assert rsqrt(cv.TtRsqrtBwdParams(size=4, out_zp=0, mu=40000, k=0), 0) == TT_ERR_ARG
    sm = cv.TtSoftmaxBwdParams(rows=1, n=70000, out_zp=-128, out_bits=8, beta_mu=1 << 15, beta_k=1)
    big = np.zeros(70000, np.int16)
    st = lib.tt_softmax_bwd_s16(ctypes.addressof(sm), big.ctypes.data, 0, np.zeros(70000, np.int8).ctypes.data,
                                big.ctypes.data, ctypes.addressof(e))  # fmt: skip
    assert st == TT_ERR_SHAPE
    mp = cv.TtMulBwdParams(square=1)
    for d in range(cv.MAX_RANK):
        mp.out_dims[d] = 1
    st = lib.tt_mul_bwd_s16(ctypes.addressof(mp), 1, g.ctypes.data, 0, y.ctypes.data, out.ctypes.data,
                            ctypes.addressof(e))  # fmt: skip
    assert st == TT_ERR_ARG  # x*x has one gradient, under index 0
    mp = cv.TtMulBwdParams(mu=(ctypes.c_int32 * 2)(1 << 15, 1 << 15))
    for d in range(cv.MAX_RANK):
        mp.out_dims[d] = 16  # input 1 (strides 0) is a scalar broadcast 2^24 times
        mp.in_strides[0][d] = 1 << (4 * (5 - d))
    st = lib.tt_mul_bwd_s16(ctypes.addressof(mp), 1, g.ctypes.data, 0, y.ctypes.data, out.ctypes.data,
                            ctypes.addressof(e))  # fmt: skip
    assert st == TT_ERR_SHAPE
    bp = cv.TtBatchMatMulBwdParams(mu=(ctypes.c_int32 * 2)(1 << 15, 1 << 15))
    bp.fwd.rows, bp.fwd.depth, bp.fwd.cols = 1, 1, (1 << 22) + 1  # dA sums 2^22 + 1 products
    for d in range(cv.BMM_BATCH_RANK):
        bp.fwd.batch[d] = 1
    st = lib.tt_batch_matmul_bwd_s16(ctypes.addressof(bp), 0, g.ctypes.data, 0, y.ctypes.data, out.ctypes.data,
                                     ctypes.addressof(e))  # fmt: skip
    assert st == TT_ERR_SHAPE


# ---------------------------------------------------------------- the tiny ViT's ops

VIT_COUNTS = {
    OpKind.MUL: 23, OpKind.SUB: 9, OpKind.MEAN: 18, OpKind.RSQRT: 9, OpKind.SOFTMAX: 4, OpKind.BATCH_MATMUL: 8,
    OpKind.TRANSPOSE: 16, OpKind.STRIDED_SLICE: 1, OpKind.CONCATENATION: 1,
}  # fmt: skip


def test_every_vit_instance(libs: Libs, vit_run: VitRun) -> None:
    """Every MUL / SUB / MEAN / RSQRT / SOFTMAX / BATCH_MATMUL / layout op of the tiny ViT with its real
    saved values and a random output gradient; SOFTMAX, RSQRT and the MULs in place (the planner's
    gradient aliases) on every other instance."""
    graph, values = vit_run.graph, vit_run.values
    rng = np.random.default_rng(29)
    seen: dict[OpKind, int] = {}
    for k, op in enumerate(graph.ops):
        if op.kind not in CHECKS:
            continue
        ins = graph.op_inputs(op)
        outs = graph.op_outputs(op)
        xs = [values[t.name] for t in ins if t is not None]
        y = values[outs[0].name]
        g = rand_grad(rng, outs[0].shape, "random" if k % 3 else "max")
        CHECKS[op.kind]((libs[0],), op, ins, outs, xs, y, g, k % 2 == 0)
        seen[op.kind] = seen.get(op.kind, 0) + 1
    assert seen == VIT_COUNTS
