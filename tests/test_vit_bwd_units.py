"""Integer backward kernels of the tiny-ViT ops against float autodiff, on random int8 cases.

Every kernel result ``Grad(g, e)`` is compared with the float64 gradient of the real-valued
op (``tf.GradientTape``) at the dequantized saved inputs for the real upstream gradient
``g_y · 2^e_y``. The asserted per-element bound (:func:`assert_grad_close`) is the
documented rounding of the kernels (``docs/numerics.md``, "ViT ops"):

* ``2^(e − 1)``: the one rounding of the exact integer accumulator in ``normalize``;
* ``2^-15 · |true|``: a Q15 scale mantissa ``μ ∈ [2^14, 2^15]`` is off by at most 1/2;
* the bit-budget rounding of ``g`` where a kernel drops bits (computed per element);
* ``1e-12 · max |true|`` for float64 noise of the reference.

SOFTMAX and RSQRT read their saved quantized output: the strict reference is the exact
derivative at that dequantized output; a looser check compares with autodiff of the float
op at the dequantized input, within the error the forward's output quantization explains.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf

from tinytrain.errors import GraphError, TinytrainError, UnsupportedOpError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import (
    Activation,
    BatchMatMulAttrs,
    ConcatenationAttrs,
    ElementwiseAttrs,
    NoAttrs,
    Op,
    OpAttrs,
    OpKind,
    ReduceAttrs,
    SoftmaxAttrs,
    StridedSliceAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.kernels import KERNELS
from tinytrain.train.kernels import attn_bwd, layout_bwd, norm_bwd
from tinytrain.train.kernels.gradient import Grad, grad_to_float
from tinytrain.train.kernels.mask import apply_mask, clamp_mask

G_MAX = 1 << 14
ALL = frozenset({0, 1, 2, 3})

# ------------------------------------------------------------------------ helpers


def qtensor(name: str, shape: Sequence[int], scale: float, zp: int, data: np.ndarray | None = None) -> Tensor:
    """An int8 per-tensor tensor; a constant when ``data`` is given."""
    arr = None
    kind = TensorKind.ACTIVATION
    if data is not None:
        arr = np.array(data, dtype=np.int8).reshape(tuple(shape))
        arr.flags.writeable = False
        kind = TensorKind.CONSTANT
    scale = float(np.float32(scale))
    return Tensor(name, tuple(shape), DType.INT8, kind, Quantization.per_tensor(scale, zp), arr)


def i32const(name: str, values: Sequence[int]) -> Tensor:
    arr = np.array(values, dtype=np.int32)
    arr.flags.writeable = False
    return Tensor(name, arr.shape, DType.INT32, TensorKind.CONSTANT, None, arr)


def make_op(kind: OpKind, ins: Sequence[Tensor], out: Tensor, attrs: OpAttrs, names: Sequence[str] = ()) -> Op:
    return Op(kind, tuple(names) or tuple(t.name for t in ins), (out.name,), attrs, 7)


def forward(op: Op, ins: Sequence[Tensor], out: Tensor, args: Sequence[np.ndarray | None]) -> np.ndarray:
    """The int8 output of the simulator's forward kernel (batch of 1)."""
    spec = KERNELS[op.kind]
    params = spec.prepare(op, tuple(ins), (out,))
    full = [a if a is not None else t.data for a, t in zip(args, ins, strict=True)]
    return spec.run(params, full)[0]


def rand_q(rng: np.random.Generator, shape: Sequence[int], lo: int = -128, hi: int = 127) -> np.ndarray:
    return rng.integers(lo, hi + 1, tuple(shape)).astype(np.int8)


def rand_grad(rng: np.random.Generator, shape: Sequence[int], e: int | None = None) -> Grad:
    """A normalized-looking output gradient: ``|g| ≤ 2^14`` with both extremes present."""
    g = rng.integers(-G_MAX, G_MAX + 1, tuple(shape)).astype(np.int16)
    flat = g.reshape(-1)
    if flat.size >= 2:
        flat[0], flat[-1] = G_MAX, -G_MAX
    return Grad(g, int(rng.integers(-30, -5)) if e is None else e)


def deq(q: np.ndarray, t: Tensor) -> np.ndarray:
    assert t.quant is not None
    return float(t.quant.scale[0]) * (q.astype(np.float64) - int(t.quant.zero_point[0]))


def vjp(fn: Callable[..., tf.Tensor], xs: Sequence[np.ndarray], g_real: np.ndarray) -> list[np.ndarray]:
    """Float64 autodiff: the gradients of ``Σ fn(xs) · g_real`` with respect to each x."""
    vs = [tf.Variable(np.asarray(x, dtype=np.float64)) for x in xs]
    with tf.GradientTape() as tape:
        y = fn(*vs)
        loss = tf.reduce_sum(y * tf.constant(g_real, dtype=tf.float64))
    grads = tape.gradient(loss, vs)
    return [np.zeros(np.shape(x)) if gr is None else np.asarray(gr) for gr, x in zip(grads, xs, strict=True)]


def assert_grad_close(
    got: Grad, true: np.ndarray, extra: np.ndarray | float = 0.0, rel: float = 2.0**-15, what: str = ""
) -> float:
    """Asserts shape, dtype, ``|g| ≤ 2^14`` and the per-element bound; returns the max error
    in units of the result's last place (``2^e``)."""
    assert got.g.dtype == np.int16, what
    assert got.shape == tuple(true.shape), f"{what}: shape {got.shape} != {true.shape}"
    assert int(np.abs(got.g.astype(np.int64)).max(initial=0)) <= G_MAX, what
    err = np.abs(grad_to_float(got) - true)
    top = float(np.abs(true).max(initial=0.0))
    bound = math.ldexp(1.0, got.e - 1) + rel * np.abs(true) + extra + 1e-12 * top
    worst = float((err - bound).max(initial=-1.0))
    assert worst <= 0.0, (
        f"{what}: max error {err.max():.3e} exceeds its bound by {worst:.3e} (e={got.e}, top={top:.3e})"
    )
    return float(err.max(initial=0.0)) / math.ldexp(1.0, got.e)


def assert_unsupported(fn: Callable[[], object], op: Op) -> None:
    with pytest.raises(UnsupportedOpError) as info:
        fn()
    assert op.kind.value in str(info.value) and f"#{op.index}" in str(info.value)


# ------------------------------------------------------------------- BATCH_MATMUL


def _bmm_case(
    rng: np.random.Generator,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    adj_x: bool,
    adj_y: bool,
    const: int | None = None,
) -> tuple[Op, list[Tensor], Tensor, list[np.ndarray]]:
    qa, qb = rand_q(rng, a_shape), rand_q(rng, b_shape)
    a = qtensor("a", a_shape, 0.043, int(rng.integers(-20, 20)), qa if const == 0 else None)
    b = qtensor("b", b_shape, 0.0271, int(rng.integers(-20, 20)), qb if const == 1 else None)
    ea = (*a_shape[:-2], a_shape[-1], a_shape[-2]) if adj_x else a_shape
    eb = (*b_shape[:-2], b_shape[-1], b_shape[-2]) if adj_y else b_shape
    rank = max(len(ea), len(eb))
    pa, pb = (1,) * (rank - len(ea)) + ea, (1,) * (rank - len(eb)) + eb
    batch = tuple(max(x, w) for x, w in zip(pa[:-2], pb[:-2], strict=True))
    y = qtensor("y", (*batch, ea[-2], eb[-1]), 0.31, 3)
    op = make_op(OpKind.BATCH_MATMUL, [a, b], y, BatchMatMulAttrs(adj_x, adj_y))
    return op, [a, b], y, [qa, qb]


def _bmm_reference(op: Op, ins: list[Tensor], qs: list[np.ndarray], g_real: np.ndarray) -> list[np.ndarray]:
    assert isinstance(op.attrs, BatchMatMulAttrs)
    adj_x, adj_y = op.attrs.adj_x, op.attrs.adj_y
    return vjp(
        lambda x, w: tf.linalg.matmul(x, w, adjoint_a=adj_x, adjoint_b=adj_y),
        [deq(qs[0], ins[0]), deq(qs[1], ins[1])],
        g_real,
    )


def check_batch_matmul(
    op: Op, ins: list[Tensor], y: Tensor, qs: list[np.ndarray], g_y: Grad, wanted: frozenset[int] = ALL
) -> dict[int, float]:
    p = attn_bwd.prepare_batch_matmul_backward(op, tuple(ins), (y,))
    saves = attn_bwd.batch_matmul_saves(p, wanted)
    saved = {f"in{j}": qs[j] for j in (0, 1) if f"in{j}" in saves}
    got = attn_bwd.batch_matmul_input_grads(p, g_y, saved, wanted)
    assert set(got) == {i for i in p.grad_inputs if i in wanted}
    ref = _bmm_reference(op, ins, qs, grad_to_float(g_y))
    errs = {}
    for i, gi in got.items():
        extra: np.ndarray | float = 0.0
        if p.drop[i]:  # |g − 2^d·g'| ≤ 2^(d−1) per element, times Σ|other operand| of the contraction
            half = np.full(g_y.shape, math.ldexp(1.0, g_y.e + p.drop[i] - 1))
            absolute = [np.abs(deq(qs[0], ins[0])), np.abs(deq(qs[1], ins[1]))]
            adj_x, adj_y = op.attrs.adj_x, op.attrs.adj_y  # type: ignore[union-attr]
            bound = vjp(
                lambda x, w, ax=adj_x, ay=adj_y: tf.linalg.matmul(x, w, adjoint_a=ax, adjoint_b=ay), absolute, half
            )
            extra = 1.0001 * bound[i]
        errs[i] = assert_grad_close(gi, ref[i], extra, what=f"BATCH_MATMUL d{i}")
    return errs


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "adj_x", "adj_y", "const"),
    [
        ((1, 4, 9, 16), (1, 4, 16, 9), False, False, None),  # attention scores, the ViT layout
        ((1, 4, 9, 9), (1, 4, 9, 16), False, False, None),  # attention · values
        ((1, 3, 16, 7), (1, 3, 5, 16), True, True, None),
        ((1, 2, 6, 5), (1, 2, 6, 4), True, False, None),
        ((1, 2, 6, 5), (1, 2, 4, 5), False, True, None),
        ((1, 3, 6, 5), (1, 1, 5, 4), False, False, None),  # broadcast batch: dB sums over 3 copies
        ((6, 5), (1, 2, 5, 4), False, False, None),  # lower rank lhs
        ((1, 2, 6, 5), (5, 4), False, False, 1),  # constant rhs: no gradient for it
        ((1, 6, 5), (1, 4, 5), False, True, 0),  # constant lhs
    ],
)
def test_batch_matmul_matches_autodiff(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], adj_x: bool, adj_y: bool, const: int | None
) -> None:
    rng = np.random.default_rng(sum(a_shape) * 7 + sum(b_shape))
    op, ins, y, qs = _bmm_case(rng, a_shape, b_shape, adj_x, adj_y, const)
    g_y = rand_grad(rng, y.shape)
    errs = check_batch_matmul(op, ins, y, qs, g_y)
    assert set(errs) == ({0, 1} - ({const} if const is not None else set()))
    # one gradient only: only the other operand is saved
    p = attn_bwd.prepare_batch_matmul_backward(op, tuple(ins), (y,))
    assert attn_bwd.batch_matmul_saves(p, frozenset({0})) == (("in1",) if const is None else ())
    one = attn_bwd.batch_matmul_input_grads(p, g_y, {"in0": qs[0], "in1": qs[1]}, frozenset({1}))
    assert set(one) == ({1} if const != 1 else set())


def test_batch_matmul_long_contraction_drops_bits() -> None:
    rng = np.random.default_rng(3)
    op, ins, y, qs = _bmm_case(rng, (1, 2, 8), (1, 8, 20000), False, False)
    p = attn_bwd.prepare_batch_matmul_backward(op, tuple(ins), (y,))
    assert p.drop[0] > 0 and p.drop[1] == 0  # dA sums 20000 products, dB 2
    z_b = int(ins[1].quant.zero_point[0])  # type: ignore[union-attr]
    d_max = max(127 - z_b, z_b + 128)  # max |b − z_b|
    assert 20000 * d_max * (G_MAX >> p.drop[0]) < 2**31 <= 20000 * d_max * (G_MAX >> (p.drop[0] - 1))
    check_batch_matmul(op, ins, y, qs, rand_grad(rng, y.shape))


# ------------------------------------------------------------------------ SOFTMAX


def _softmax_case(
    rng: np.random.Generator, shape: tuple[int, ...], beta: float, in_scale: float = 0.1
) -> tuple[Op, Tensor, Tensor, np.ndarray, np.ndarray]:
    x = qtensor("x", shape, in_scale, 5)
    y = qtensor("y", shape, 1.0 / 256, -128)
    op = make_op(OpKind.SOFTMAX, [x], y, SoftmaxAttrs(beta))
    qx = rand_q(rng, shape)
    return op, x, y, qx, forward(op, [x], y, [qx])


def check_softmax(op: Op, x: Tensor, y: Tensor, qx: np.ndarray, qy: np.ndarray, g_y: Grad) -> tuple[float, float]:
    """Strict: the exact derivative at the saved output; loose: autodiff at the input."""
    assert isinstance(op.attrs, SoftmaxAttrs)
    beta = float(np.float32(op.attrs.beta))
    p = attn_bwd.prepare_softmax_backward(op, (x,), (y,))
    got = attn_bwd.softmax_input_grads(p, g_y, {"out0": qy}, frozenset({0}))[0]
    g = grad_to_float(g_y)
    yd = deq(qy, y)
    exact = beta * yd * (g - (g * yd).sum(axis=-1, keepdims=True))
    strict = assert_grad_close(got, exact, what="SOFTMAX strict")
    xd = deq(qx, x)
    auto = vjp(lambda v: tf.nn.softmax(beta * v, axis=-1), [xd], g)[0]
    yt = tf.nn.softmax(beta * xd, axis=-1).numpy()
    delta = np.abs(yd - yt)
    assert float(delta.max()) <= 2.0**-8  # the forward is within 1 LSB of the float softmax
    # |Δdx_i| ≤ β(|δ_i|(|g_i| + |S|) + y_i Σ_j |g_j| δ_j) with S = Σ_j g_j y_j (both y's)
    s_max = np.maximum(np.abs((g * yd).sum(-1, keepdims=True)), np.abs((g * yt).sum(-1, keepdims=True)))
    cross = (np.abs(g) * delta).sum(-1, keepdims=True)
    loose = beta * (delta * (np.abs(g) + s_max) + np.maximum(yd, yt) * cross) * 1.0001
    err = np.abs(grad_to_float(got) - auto)
    assert np.all(err <= loose + np.abs(grad_to_float(got) - exact) + 1e-12)
    return strict, float(err.max() / max(np.abs(auto).max(), 1e-300))


@pytest.mark.parametrize(
    ("shape", "beta"), [((1, 4, 9, 9), 1.0), ((1, 5, 33), 0.5), ((1, 3, 17), 1.7), ((1, 600), 1.0)]
)
def test_softmax_matches_autodiff(shape: tuple[int, ...], beta: float) -> None:
    rng = np.random.default_rng(len(shape) + shape[-1])
    op, x, y, qx, qy = _softmax_case(rng, shape, beta)
    p = attn_bwd.prepare_softmax_backward(op, (x,), (y,))
    assert p.wide_sum == (shape[-1] * 255 * G_MAX >= 2**31) and p.out_bits == 8
    check_softmax(op, x, y, qx, qy, rand_grad(rng, shape))
    assert attn_bwd.softmax_input_grads(p, rand_grad(rng, shape), {"out0": qy}, frozenset({1})) == {}


def test_softmax_saturated_rows() -> None:
    """One-hot rows (y_q = 127 at one place, -128 elsewhere) and uniform rows."""
    rng = np.random.default_rng(5)
    shape = (1, 4, 8)
    x = qtensor("x", shape, 1.0, 0)
    y = qtensor("y", shape, 1.0 / 256, -128)
    op = make_op(OpKind.SOFTMAX, [x], y, SoftmaxAttrs(1.0))
    qx = np.full(shape, -128, dtype=np.int8)
    qx[0, 0, 3] = qx[0, 1, 0] = 127
    qx[0, 2, :] = 4
    qx[0, 3, :2] = 100
    qy = forward(op, [x], y, [qx])
    assert qy[0, 0, 3] == 127 and np.all(qy[0, 0, :3] == -128)
    check_softmax(op, x, y, qx, qy, rand_grad(rng, shape))


# ----------------------------------------------------------------------------- MUL


def _mul_case(
    rng: np.random.Generator,
    a_shape: tuple[int, ...],
    b_shape: tuple[int, ...],
    const: int | None = None,
    square: bool = False,
    out_scale: float = 0.05,
) -> tuple[Op, list[Tensor], Tensor, list[np.ndarray]]:
    qa, qb = rand_q(rng, a_shape), rand_q(rng, b_shape)
    a = qtensor("a", a_shape, 0.0377, int(rng.integers(-30, 30)), qa if const == 0 else None)
    b = qtensor("b", b_shape, 0.0213, int(rng.integers(-30, 30)), qb if const == 1 else None)
    out_shape = tuple(int(d) for d in np.broadcast_shapes(a_shape, b_shape))
    y = qtensor("y", out_shape, out_scale, -4)
    if square:
        b, qb = a, qa
    op = make_op(OpKind.MUL, [a, b], y, ElementwiseAttrs())
    return op, [a, b], y, [qa, qb]


def check_mul(
    op: Op, ins: list[Tensor], y: Tensor, qs: list[np.ndarray], g_y: Grad, wanted: frozenset[int] = ALL
) -> dict[int, float]:
    p = norm_bwd.prepare_mul_backward(op, tuple(ins), (y,))
    saves = norm_bwd.mul_saves(p, wanted)
    assert all(ins[int(s[2])].data is None for s in saves)
    saved = {s: qs[int(s[2])] for s in saves}
    got = norm_bwd.mul_input_grads(p, g_y, saved, wanted)
    g = grad_to_float(g_y)
    if p.square:
        assert set(got) == {0} and saves == ("in0",)
        ref = vjp(lambda v: v * v, [deq(qs[0], ins[0])], g)
        return {0: assert_grad_close(got[0], ref[0], what="MUL x*x")}
    ref = vjp(lambda u, v: u * v, [deq(qs[0], ins[0]), deq(qs[1], ins[1])], g)
    assert set(got) == {i for i in (0, 1) if ins[i].data is None and i in wanted}
    return {i: assert_grad_close(gi, ref[i], what=f"MUL d{i}") for i, gi in got.items()}


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "const", "square"),
    [
        ((1, 9, 16), (1, 9, 16), None, False),
        ((1, 9, 16), (1, 9, 1), None, False),  # (x − mean) · rsqrt: the layer norm
        ((1, 9, 1), (1, 9, 16), None, False),
        ((1, 4, 9, 9), (), 1, False),  # attention scale: a constant scalar
        ((1, 9, 16), (16,), 1, False),  # gamma
        ((16,), (1, 9, 16), 0, False),
        ((1, 9, 16), (1, 9, 16), None, True),  # x · x
    ],
)
def test_mul_matches_autodiff(
    a_shape: tuple[int, ...], b_shape: tuple[int, ...], const: int | None, square: bool
) -> None:
    rng = np.random.default_rng(len(a_shape) * 10 + len(b_shape) + (const or 0) + square)
    op, ins, y, qs = _mul_case(rng, a_shape, b_shape, const, square)
    g_y = rand_grad(rng, y.shape)
    check_mul(op, ins, y, qs, g_y)
    if not square and const is None:
        check_mul(op, ins, y, qs, g_y, frozenset({1}))


def test_mul_square_reports_one_input() -> None:
    rng = np.random.default_rng(11)
    op, ins, y, qs = _mul_case(rng, (1, 3, 8), (1, 3, 8), square=True)
    p = norm_bwd.prepare_mul_backward(op, tuple(ins), (y,))
    assert p.square and p.grad_inputs == (0,)
    g_y = rand_grad(rng, y.shape)
    for wanted in (frozenset({0}), frozenset({1}), frozenset({0, 1})):
        got = norm_bwd.mul_input_grads(p, g_y, {"in0": qs[0]}, wanted)
        assert set(got) == {0}
    assert norm_bwd.mul_input_grads(p, g_y, {"in0": qs[0]}, frozenset()) == {}
    # twice the gradient of "x times a constant copy of x", exactly (exponent + 1)
    b_const = qtensor("c", (1, 3, 8), float(ins[0].quant.scale[0]), int(ins[0].quant.zero_point[0]), qs[0])  # type: ignore[union-attr]
    op2 = make_op(OpKind.MUL, [ins[0], b_const], y, ElementwiseAttrs())
    p2 = norm_bwd.prepare_mul_backward(op2, (ins[0], b_const), (y,))
    half = norm_bwd.mul_input_grads(p2, g_y, {}, frozenset({0}))[0]
    full = norm_bwd.mul_input_grads(p, g_y, {"in0": qs[0]}, frozenset({0}))[0]
    assert np.array_equal(half.g, full.g) and full.e == half.e + 1


# ----------------------------------------------------------------------------- SUB


def check_sub(op: Op, ins: Sequence[Tensor], y: Tensor, qs: Sequence[np.ndarray], g_y: Grad) -> dict[int, float]:
    p = norm_bwd.prepare_sub_backward(op, tuple(ins), (y,))
    got = norm_bwd.sub_input_grads(p, g_y, {}, ALL)
    assert set(got) == {i for i in (0, 1) if ins[i].data is None}
    ref = vjp(lambda u, v: u - v, [deq(qs[0], ins[0]), deq(qs[1], ins[1])], grad_to_float(g_y))
    errs = {}
    for i, gi in got.items():
        errs[i] = assert_grad_close(gi, ref[i], rel=0.0, what=f"SUB d{i}")
        if gi.shape == y.shape:  # not broadcast: the mantissas pass exactly (negated for input 1)
            assert gi.e == g_y.e and np.array_equal(gi.g, g_y.g if i == 0 else -g_y.g)
    return errs


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "const"),
    [
        ((1, 9, 16), (1, 9, 1), None),
        ((1, 9, 16), (1, 9, 16), None),
        ((1, 1, 16), (1, 9, 16), None),
        ((1, 9, 4), (4,), 1),
    ],
)
def test_sub_matches_autodiff(a_shape: tuple[int, ...], b_shape: tuple[int, ...], const: int | None) -> None:
    rng = np.random.default_rng(sum(a_shape) + 3 * sum(b_shape))
    qa, qb = rand_q(rng, a_shape), rand_q(rng, b_shape)
    a = qtensor("a", a_shape, 0.07, -7)
    b = qtensor("b", b_shape, 0.004, 5, qb if const == 1 else None)
    y = qtensor("y", tuple(int(d) for d in np.broadcast_shapes(a_shape, b_shape)), 0.07, -5)
    op = make_op(OpKind.SUB, [a, b], y, ElementwiseAttrs())
    errs = check_sub(op, [a, b], y, [qa, qb], rand_grad(rng, y.shape))
    assert set(errs) == ({0} if const == 1 else {0, 1})


# ---------------------------------------------------------------------------- MEAN


def check_mean(op: Op, ins: Sequence[Tensor], y: Tensor, qs: Sequence[np.ndarray], g_y: Grad) -> dict[int, float]:
    assert isinstance(op.attrs, ReduceAttrs) and ins[1].data is not None
    x, axes = ins[0], [int(v) for v in ins[1].data.reshape(-1)]
    p = norm_bwd.prepare_mean_backward(op, tuple(ins), (y,))
    norm = {a % len(x.shape) for a in axes}
    assert p.n == math.prod(x.shape[a] for a in norm)
    got = norm_bwd.mean_input_grads(p, g_y, {}, frozenset({0}))[0]
    keep = op.attrs.keep_dims
    ref = vjp(lambda v: tf.reduce_mean(v, axis=axes, keepdims=keep), [deq(qs[0], x)], grad_to_float(g_y))[0]
    exact = p.n & (p.n - 1) == 0
    err = assert_grad_close(got, ref, rel=0.0 if exact else 2.0**-15, what="MEAN")
    if exact:  # 1/n is a power of two: the mantissas pass unchanged
        assert np.array_equal(grad_to_float(got), ref) and np.array_equal(got.g.reshape(-1)[:1], g_y.g.reshape(-1)[:1])
    return {0: err}


@pytest.mark.parametrize(
    ("shape", "axes", "keep"),
    [((1, 9, 64), (-1,), True), ((1, 9, 5), (2,), True), ((1, 6, 6, 3), (1, 2), False), ((1, 7, 12), (1, 2), True)],
)
def test_mean_matches_autodiff(shape: tuple[int, ...], axes: tuple[int, ...], keep: bool) -> None:
    rng = np.random.default_rng(sum(shape))
    x = qtensor("x", shape, 0.05, 3)
    rank = len(shape)
    norm = {a % rank for a in axes}
    out_shape = tuple(1 if i in norm else d for i, d in enumerate(shape) if keep or i not in norm)
    y = qtensor("y", out_shape, 0.01, -2)
    ins = [x, i32const("axes", axes)]
    op = make_op(OpKind.MEAN, ins, y, ReduceAttrs(keep))
    check_mean(op, ins, y, [rand_q(rng, shape), ins[1].data], rand_grad(rng, out_shape))  # type: ignore[list-item]


# --------------------------------------------------------------------------- RSQRT


def check_rsqrt(x: Tensor, y: Tensor, qx: np.ndarray, qy: np.ndarray, g_y: Grad, op: Op) -> tuple[float, float]:
    """Strict: ``−½ y³ g`` at the saved output; loose: autodiff of rsqrt at the input."""
    p = norm_bwd.prepare_rsqrt_backward(op, (x,), (y,))
    got = norm_bwd.rsqrt_input_grads(p, g_y, {"out0": qy}, frozenset({0}))[0]
    g = grad_to_float(g_y)
    yd = deq(qy, y)
    strict = assert_grad_close(got, -0.5 * yd**3 * g, what="RSQRT strict")
    # loose: autodiff of rsqrt at the dequantized input, where the output did not saturate
    xd = deq(qx, x)
    ok = (qy < 127) & (xd > 0)
    auto = vjp(tf.math.rsqrt, [np.where(ok, xd, 1.0)], g)[0]
    yt = 1.0 / np.sqrt(np.where(ok, xd, 1.0))
    s_y = float(y.quant.scale[0])  # type: ignore[union-attr]
    assert np.all(np.abs(yd - yt)[ok] <= s_y)  # the forward is within 1 LSB
    # |y_d³ − y_t³| ≤ 3·max(y)²·|y_d − y_t|
    loose = 0.5 * np.abs(g) * 3 * np.maximum(yd, yt) ** 2 * np.abs(yd - yt) * 1.0001
    err = np.abs(grad_to_float(got) - auto)
    assert np.all((err <= loose + np.abs(grad_to_float(got) - (-0.5 * yd**3 * g)) + 1e-12)[ok])
    rel = float(err[ok].max(initial=0.0) / max(np.abs(auto[ok]).max(initial=0.0), 1e-300))
    return strict, rel


@pytest.mark.parametrize(("in_scale", "out_scale"), [(0.00373, 0.021), (0.05, 0.02), (0.1, 0.0044)])
def test_rsqrt_matches_autodiff(in_scale: float, out_scale: float) -> None:
    rng = np.random.default_rng(int(in_scale * 1e4))
    shape = (1, 9, 1, 4)
    x = qtensor("x", shape, in_scale, -128)
    y = qtensor("y", shape, out_scale, -128)
    op = make_op(OpKind.RSQRT, [x], y, NoAttrs())
    qx = rand_q(rng, shape)
    qx.reshape(-1)[:3] = (-128, -127, 127)  # 1/√0 saturates to 127
    qy = forward(op, [x], y, [qx])
    check_rsqrt(x, y, qx, qy, rand_grad(rng, shape), op)
    p = norm_bwd.prepare_rsqrt_backward(op, (x,), (y,))
    assert p.clamp == (norm_bwd.NO_LOW, 127)


# ---------------------------------------------------------------------- layout ops


def check_transpose(op: Op, ins: Sequence[Tensor], y: Tensor, qs: Sequence[np.ndarray], g_y: Grad) -> dict[int, float]:
    assert ins[1].data is not None
    perm = [int(v) for v in ins[1].data.reshape(-1)]
    p = layout_bwd.prepare_transpose_backward(op, tuple(ins), (y,))
    got = layout_bwd.transpose_input_grads(p, g_y, {}, frozenset({0}))[0]
    ref = vjp(lambda v: tf.transpose(v, perm), [np.zeros(ins[0].shape)], grad_to_float(g_y))[0]
    assert got.e == g_y.e and np.array_equal(grad_to_float(got), ref) and got.g.flags.c_contiguous
    return {0: 0.0}


@pytest.mark.parametrize("perm", [(0, 2, 1, 3), (0, 2, 3, 1), (3, 1, 0, 2), (0, 1, 2, 3)])
def test_transpose_is_exact(perm: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(i * v for i, v in enumerate(perm)))
    shape = (1, 5, 4, 3)
    x = qtensor("x", shape, 0.1, 0)
    y = qtensor("y", tuple(shape[i] for i in perm), 0.1, 0)
    ins = [x, i32const("perm", perm)]
    op = make_op(OpKind.TRANSPOSE, ins, y, NoAttrs())
    check_transpose(op, ins, y, [rand_q(rng, shape)], rand_grad(rng, y.shape))


def _tf_slice(v: tf.Tensor | np.ndarray, ins: Sequence[Tensor], attrs: StridedSliceAttrs) -> tf.Tensor:
    b, e, s = ([int(t) for t in ins[i].data.reshape(-1)] for i in (1, 2, 3))  # type: ignore[union-attr]
    return tf.strided_slice(
        v, b, e, s, begin_mask=attrs.begin_mask, end_mask=attrs.end_mask, shrink_axis_mask=attrs.shrink_axis_mask
    )


def check_strided_slice(
    op: Op, ins: Sequence[Tensor], y: Tensor, qs: Sequence[np.ndarray], g_y: Grad
) -> dict[int, float]:
    assert isinstance(op.attrs, StridedSliceAttrs)
    attrs = op.attrs
    p = layout_bwd.prepare_strided_slice_backward(op, tuple(ins), (y,))
    # the forward kernel reads what TensorFlow's strided_slice reads
    fwd = forward(op, list(ins), y, [qs[0], None, None, None])
    assert np.array_equal(fwd.reshape(-1), _tf_slice(qs[0], ins, attrs).numpy().reshape(-1))
    got = layout_bwd.strided_slice_input_grads(p, g_y, {}, frozenset({0}))[0]
    ref = vjp(lambda v: _tf_slice(v, ins, attrs), [np.zeros(ins[0].shape)], grad_to_float(g_y).reshape(fwd.shape))[0]
    assert got.e == g_y.e and got.shape == ins[0].shape and np.array_equal(grad_to_float(got), ref)
    return {0: 0.0}


SLICE_CASES = [
    # (input shape, begin, end, strides, attrs)
    ((1, 65, 64), (0, 0, 0), (1, 1, 64), (1, 1, 1), StridedSliceAttrs(shrink_axis_mask=2)),  # the class token
    ((1, 65, 64), (0, 0, 0), (0, 1, 0), (1, 1, 1), StridedSliceAttrs(begin_mask=5, end_mask=5, shrink_axis_mask=2)),
    ((1, 9, 8), (0, 1, -1), (1, 8, 0), (1, 3, -2), StridedSliceAttrs()),
    ((1, 9, 8), (0, -2, 1), (1, 0, 7), (1, -1, 2), StridedSliceAttrs(end_mask=2)),
    ((1, 6, 5, 4), (0, 1, 0, 2), (1, 5, 5, 3), (1, 2, 2, 1), StridedSliceAttrs(shrink_axis_mask=8)),
]


@pytest.mark.parametrize(("shape", "begin", "end", "strides", "attrs"), SLICE_CASES)
def test_strided_slice_scatters_exactly(
    shape: tuple[int, ...],
    begin: tuple[int, ...],
    end: tuple[int, ...],
    strides: tuple[int, ...],
    attrs: StridedSliceAttrs,
) -> None:
    rng = np.random.default_rng(sum(shape) + sum(begin))
    x = qtensor("x", shape, 0.1, 0)
    ins = [x, i32const("b", begin), i32const("e", end), i32const("s", strides)]
    y = qtensor("y", tuple(_tf_slice(np.zeros(shape), ins, attrs).shape), 0.1, 0)
    op = make_op(OpKind.STRIDED_SLICE, ins, y, attrs)
    check_strided_slice(op, ins, y, [rand_q(rng, shape)], rand_grad(rng, y.shape))


def check_concatenation(
    op: Op, ins: Sequence[Tensor], y: Tensor, qs: Sequence[np.ndarray], g_y: Grad
) -> dict[int, float]:
    assert isinstance(op.attrs, ConcatenationAttrs)
    axis = op.attrs.axis
    p = layout_bwd.prepare_concatenation_backward(op, tuple(ins), (y,))
    got = layout_bwd.concatenation_input_grads(p, g_y, {}, frozenset(range(len(ins))))
    assert set(got) == {i for i, t in enumerate(ins) if t.data is None} == set(p.grad_inputs)
    ref = vjp(
        lambda *vs: tf.concat(vs, axis=axis), [deq(q, t) for q, t in zip(qs, ins, strict=True)], grad_to_float(g_y)
    )
    for i, gi in got.items():
        assert gi.e == g_y.e and np.array_equal(grad_to_float(gi), ref[i])
    assert layout_bwd.concatenation_input_grads(p, g_y, {}, frozenset()) == {}
    return {i: 0.0 for i in got}


@pytest.mark.parametrize(("axis", "const"), [(1, (True, False)), (-1, (False, False, False)), (0, (False, True))])
def test_concatenation_splits_exactly(axis: int, const: tuple[bool, ...]) -> None:
    rng = np.random.default_rng(axis + 5 * len(const))
    base = [1, 4, 6]
    ax = axis % 3
    sizes = [1, 3, 2][: len(const)]
    ins, qs = [], []
    for i, (n, c) in enumerate(zip(sizes, const, strict=True)):
        shape = tuple(n if d == ax else base[d] for d in range(3))
        q = rand_q(rng, shape)
        ins.append(qtensor(f"in{i}", shape, 0.05, 2, q if c else None))
        qs.append(q)
    out_shape = tuple(sum(sizes) if d == ax else base[d] for d in range(3))
    y = qtensor("y", out_shape, 0.05, 2)
    op = make_op(OpKind.CONCATENATION, ins, y, ConcatenationAttrs(axis))
    check_concatenation(op, ins, y, qs, rand_grad(rng, out_shape))


# --------------------------------------------------------------- zero, extremes, errors


def test_zero_gradients_give_zero() -> None:
    rng = np.random.default_rng(2)
    op, ins, y, qs = _bmm_case(rng, (1, 2, 5, 3), (1, 2, 3, 4), False, False)
    zero = Grad(np.zeros(y.shape, np.int16), -9)
    p = attn_bwd.prepare_batch_matmul_backward(op, tuple(ins), (y,))
    cases: list[dict[int, Grad]] = [attn_bwd.batch_matmul_input_grads(p, zero, {"in0": qs[0], "in1": qs[1]}, ALL)]
    sop, sx, sy, _, sq = _softmax_case(rng, (1, 3, 7), 1.0)
    sp = attn_bwd.prepare_softmax_backward(sop, (sx,), (sy,))
    cases.append(attn_bwd.softmax_input_grads(sp, Grad(np.zeros(sy.shape, np.int16), -9), {"out0": sq}, ALL))
    mop, mins, my, mqs = _mul_case(rng, (1, 3, 4), (1, 3, 1))
    mp = norm_bwd.prepare_mul_backward(mop, tuple(mins), (my,))
    cases.append(
        norm_bwd.mul_input_grads(mp, Grad(np.zeros(my.shape, np.int16), -9), {"in0": mqs[0], "in1": mqs[1]}, ALL)
    )
    a, b = qtensor("a", (1, 3, 5), 0.07, -7), qtensor("b", (1, 3, 1), 0.004, 5)
    s_out = qtensor("s", (1, 3, 5), 0.07, -5)
    sub = make_op(OpKind.SUB, [a, b], s_out, ElementwiseAttrs())
    sub_p = norm_bwd.prepare_sub_backward(sub, (a, b), (s_out,))
    cases.append(norm_bwd.sub_input_grads(sub_p, Grad(np.zeros(s_out.shape, np.int16), -9), {}, ALL))
    axes = i32const("ax", (-1,))
    m_out = qtensor("m", (1, 3, 1), 0.01, 0)
    mean = make_op(OpKind.MEAN, [a, axes], m_out, ReduceAttrs(True))
    mean_p = norm_bwd.prepare_mean_backward(mean, (a, axes), (m_out,))
    cases.append(norm_bwd.mean_input_grads(mean_p, Grad(np.zeros(m_out.shape, np.int16), -9), {}, ALL))
    r_out = qtensor("r", (1, 3, 5), 0.02, -128)
    rsqrt = make_op(OpKind.RSQRT, [a], r_out, NoAttrs())
    rsqrt_p = norm_bwd.prepare_rsqrt_backward(rsqrt, (a,), (r_out,))
    qr = rand_q(rng, r_out.shape)
    cases.append(norm_bwd.rsqrt_input_grads(rsqrt_p, Grad(np.zeros(r_out.shape, np.int16), -9), {"out0": qr}, ALL))
    for got in cases:
        assert got
        for gi in got.values():
            assert gi.g.dtype == np.int16 and not gi.g.any()


def test_extreme_values_do_not_overflow() -> None:
    """Operands at the far end from their zero point and |g| = 2^14 everywhere: the int32 /
    int64 bounds of the docstrings hold (the results still match autodiff)."""
    rng = np.random.default_rng(8)
    shape_a, shape_b = (1, 2, 7, 65), (1, 2, 65, 16)
    a = qtensor("a", shape_a, 0.05, 127)
    b = qtensor("b", shape_b, 0.03, 127)
    y = qtensor("y", (1, 2, 7, 16), 0.3, 0)
    op = make_op(OpKind.BATCH_MATMUL, [a, b], y, BatchMatMulAttrs())
    qs = [np.full(shape_a, -128, np.int8), np.full(shape_b, -128, np.int8)]
    g_y = Grad(np.full(y.shape, G_MAX, np.int16), -20)
    check_batch_matmul(op, [a, b], y, qs, g_y)
    mop, mins, my, _ = _mul_case(rng, (1, 5, 64), (1, 5, 1))
    mqs = [np.full((1, 5, 64), 127, np.int8), np.full((1, 5, 1), -128, np.int8)]
    check_mul(mop, mins, my, mqs, Grad(np.full(my.shape, -G_MAX, np.int16), 3))
    # softmax: one row fully saturated (y = 127 = 255/256) and g = ±2^14
    x = qtensor("x", (1, 1, 600), 0.1, 0)
    sy = qtensor("y", (1, 1, 600), 1.0 / 256, -128)
    sop = make_op(OpKind.SOFTMAX, [x], sy, SoftmaxAttrs(1.0))
    qy = np.full((1, 1, 600), 127, np.int8)  # not a softmax output, but the bound must still hold
    sp = attn_bwd.prepare_softmax_backward(sop, (x,), (sy,))
    gs = Grad(np.where(np.arange(600) % 2 == 0, G_MAX, -G_MAX).astype(np.int16).reshape(1, 1, 600), 0)
    got = attn_bwd.softmax_input_grads(sp, gs, {"out0": qy}, ALL)[0]
    yd = deq(qy, sy)
    g = grad_to_float(gs)
    assert_grad_close(got, yd * (g - (g * yd).sum(-1, keepdims=True)), what="SOFTMAX extreme")
    r = qtensor("r", (1, 4, 1), 0.5, -128)
    ry = qtensor("ry", (1, 4, 1), 1.0, -128)
    rop = make_op(OpKind.RSQRT, [r], ry, NoAttrs())
    rp = norm_bwd.prepare_rsqrt_backward(rop, (r,), (ry,))
    rg = norm_bwd.rsqrt_input_grads(
        rp, Grad(np.full((1, 4, 1), -G_MAX, np.int16), 0), {"out0": np.full((1, 4, 1), 127, np.int8)}, ALL
    )[0]
    assert np.allclose(grad_to_float(rg), 0.5 * 255.0**3 * G_MAX, rtol=2.0**-14)


def test_saturation_clamps() -> None:
    """MUL / SUB / MEAN / BATCH_MATMUL report the clamp only on a side their output can pass."""
    rng = np.random.default_rng(4)
    # a product that always fits: |a·b| ≤ 0.0377·158 · 0.0213·158 < 20 far inside a 0.5-scale output
    op, ins, y, _ = _mul_case(rng, (1, 3, 4), (1, 3, 4), out_scale=0.5)
    assert norm_bwd.prepare_mul_backward(op, tuple(ins), (y,)).clamp is None
    op, ins, y, qs = _mul_case(rng, (1, 3, 4), (1, 3, 4), out_scale=0.001)
    p = norm_bwd.prepare_mul_backward(op, tuple(ins), (y,))
    assert p.clamp == (-128, 127)
    qy = forward(op, ins, y, qs)
    assert np.any((qy == 127) | (qy == -128))
    masked = apply_mask(rand_grad(rng, y.shape), clamp_mask(qy, *p.clamp))
    assert not masked.g[(qy == 127) | (qy == -128)].any()
    # x·x at zero point −128: the lower bound is real 0, exact, never a saturation
    x = qtensor("x", (1, 3, 4), 0.02, 0)
    sq = qtensor("sq", (1, 3, 4), 0.01, -128)
    op = make_op(OpKind.MUL, [x, x], sq, ElementwiseAttrs())
    assert norm_bwd.prepare_mul_backward(op, (x, x), (sq,)).clamp == (norm_bwd.NO_LOW, 127)
    # a fused ReLU always keeps its lower bound
    op = make_op(OpKind.MUL, [x, x], sq, ElementwiseAttrs(Activation.RELU))
    assert norm_bwd.prepare_mul_backward(op, (x, x), (sq,)).clamp is not None
    a = qtensor("a", (1, 3, 4), 0.07, -7)
    b = qtensor("b", (1, 3, 1), 0.004, 5)
    for out_scale, clamp in ((0.2, None), (0.07, (norm_bwd.NO_LOW, 127)), (0.05, (-128, 127))):
        s = qtensor("s", (1, 3, 4), out_scale, 0)
        op = make_op(OpKind.SUB, [a, b], s, ElementwiseAttrs())
        assert norm_bwd.prepare_sub_backward(op, (a, b), (s,)).clamp == clamp
    m_in = qtensor("m", (1, 3, 64), 0.05, -128)
    for m_scale, clamp in ((0.05, None), (0.004, (norm_bwd.NO_LOW, 127))):
        m_out = qtensor("mo", (1, 3, 1), m_scale, -128)
        op = make_op(OpKind.MEAN, [m_in, i32const("ax", (-1,))], m_out, ReduceAttrs(True))
        assert norm_bwd.prepare_mean_backward(op, (m_in, i32const("ax", (-1,))), (m_out,)).clamp == clamp


def test_bad_ops_raise_naming_the_op() -> None:
    x = qtensor("x", (1, 3, 8), 0.1, 0)
    y = qtensor("y", (1, 3, 8), 1.0 / 200, -128)  # not a power of two
    op = make_op(OpKind.SOFTMAX, [x], y, SoftmaxAttrs(1.0))
    assert_unsupported(lambda: attn_bwd.prepare_softmax_backward(op, (x,), (y,)), op)
    y2 = qtensor("y", (1, 3, 8), 1.0 / 256, -128)
    op = make_op(OpKind.SOFTMAX, [x], y2, SoftmaxAttrs(-1.0))
    assert_unsupported(lambda: attn_bwd.prepare_softmax_backward(op, (x,), (y2,)), op)
    f = Tensor("f", (1, 3, 8), DType.FLOAT32, TensorKind.ACTIVATION)
    fo = Tensor("fo", (1, 3, 3), DType.FLOAT32, TensorKind.ACTIVATION)
    op = make_op(OpKind.BATCH_MATMUL, [f, f], fo, BatchMatMulAttrs(adj_y=True))
    assert_unsupported(lambda: attn_bwd.prepare_batch_matmul_backward(op, (f, f), (fo,)), op)
    i16 = Tensor("i", (1, 3, 8), DType.INT16, TensorKind.ACTIVATION, Quantization.per_tensor(0.1, 0))
    op = make_op(OpKind.MUL, [i16, x], x, ElementwiseAttrs())
    assert_unsupported(lambda: norm_bwd.prepare_mul_backward(op, (i16, x), (x,)), op)
    op = make_op(OpKind.SUB, [x, i16], x, ElementwiseAttrs())
    assert_unsupported(lambda: norm_bwd.prepare_sub_backward(op, (x, i16), (x,)), op)
    m_out = qtensor("mo", (1, 3, 8), 0.1, 0)
    axes = i32const("ax", (0,))
    op = make_op(OpKind.MEAN, [x, axes], m_out, ReduceAttrs(True))
    assert_unsupported(lambda: norm_bwd.prepare_mean_backward(op, (x, axes), (m_out,)), op)
    ins = (x, i32const("b", (0, 0, 0)), i32const("e", (1, 1, 8)), i32const("s", (1, 1, 1)))
    sl = qtensor("sl", (1, 1, 8), 0.1, 0)
    op = make_op(OpKind.STRIDED_SLICE, ins, sl, StridedSliceAttrs(ellipsis_mask=1))
    assert_unsupported(lambda: layout_bwd.prepare_strided_slice_backward(op, ins, (sl,)), op)
    cat = qtensor("cat", (1, 6, 8), 0.1, 0)
    op = make_op(OpKind.CONCATENATION, [x, x], cat, ConcatenationAttrs(1, Activation.RELU))
    assert_unsupported(lambda: layout_bwd.prepare_concatenation_backward(op, (x, x), (cat,)), op)
    other = qtensor("o", (1, 3, 8), 0.2, 0)
    op = make_op(OpKind.CONCATENATION, [x, other], cat, ConcatenationAttrs(1))
    assert_unsupported(lambda: layout_bwd.prepare_concatenation_backward(op, (x, other), (cat,)), op)
    op = make_op(OpKind.RSQRT, [x], x, ReduceAttrs(True))
    with pytest.raises(GraphError, match="RSQRT"):
        norm_bwd.prepare_rsqrt_backward(op, (x,), (x,))


def test_bad_run_time_arguments() -> None:
    rng = np.random.default_rng(6)
    op, ins, y, qs = _mul_case(rng, (1, 3, 4), (1, 3, 4))
    p = norm_bwd.prepare_mul_backward(op, tuple(ins), (y,))
    with pytest.raises(UsageError, match="saved"):
        norm_bwd.mul_input_grads(p, rand_grad(rng, y.shape), {"in0": qs[0]}, frozenset({0}))
    with pytest.raises(UsageError, match="shape"):
        norm_bwd.mul_input_grads(p, rand_grad(rng, (1, 3, 5)), {"in0": qs[0], "in1": qs[1]}, ALL)
    with pytest.raises(TinytrainError):
        norm_bwd.mul_input_grads(p, rand_grad(rng, y.shape), {"in0": qs[0], "in1": qs[1].astype(np.int16)}, ALL)
