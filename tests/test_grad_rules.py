"""Gradient rules vs float autodiff (TensorFlow GradientTape) of the dequantized ops.

Each case builds an int8 op of the IR with random inputs, weights and realistic scales,
runs the simulator's forward kernel (for the clamp mask), drives the rule table like the
backward pass will, and compares the dequantized integer gradients with TensorFlow's
float32 gradients of the dequantized op (clamp included) for a random upstream gradient.
Similarity: cosine > 0.99 and sign agreement > 95% on the entries above 1% of the
largest; deliberately wrong rules must fail those thresholds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")

from tinytrain.errors import UsageError  # noqa: E402
from tinytrain.ir.dtypes import DType  # noqa: E402
from tinytrain.ir.ops import (  # noqa: E402
    Activation,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    FullyConnectedAttrs,
    NoAttrs,
    Op,
    OpKind,
    Padding,
    Pool2DAttrs,
    ReduceAttrs,
    ReshapeAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind  # noqa: E402
from tinytrain.sim.kernels import KERNELS  # noqa: E402
from tinytrain.sim.kernels.core_conv import Geometry  # noqa: E402
from tinytrain.train.grad_rules import (  # noqa: E402
    GRAD_RULES,
    BackwardRequest,
    BackwardResult,
    Saved,
    prepare_backward,
    run_backward,
    save_forward,
)
from tinytrain.train.kernels import linear_bwd, pool_bwd  # noqa: E402
from tinytrain.train.kernels.gradient import Grad, grad_to_float  # noqa: E402
from tinytrain.train.kernels.mask import apply_mask  # noqa: E402

COS_MIN = 0.99
SIGN_MIN = 0.95
E_UP = -20  # exponent of the random upstream gradient


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sign_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the reference's non-negligible entries (> 1% of its max) whose sign matches."""
    a, b = a.ravel(), b.ravel()
    big = np.abs(b) > 0.01 * np.abs(b).max()
    return float((np.sign(a[big]) == np.sign(b[big])).mean())


def similar(a: np.ndarray, b: np.ndarray) -> bool:
    return cosine(a, b) > COS_MIN and sign_agreement(a, b) > SIGN_MIN


def assert_similar(ours: np.ndarray, ref: np.ndarray, what: str) -> None:
    assert ours.shape == ref.shape, what
    c, s = cosine(ours, ref), sign_agreement(ours, ref)
    assert c > COS_MIN and s > SIGN_MIN, f"{what}: cosine {c:.5f}, sign agreement {s:.4f}"


def i8(rng: np.random.Generator, shape: tuple[int, ...], lo: int = -128, hi: int = 127) -> np.ndarray:
    return rng.integers(lo, hi + 1, shape).astype(np.int8)


def upstream(rng: np.random.Generator, shape: tuple[int, ...]) -> Grad:
    return Grad(rng.integers(-(2**14), 2**14 + 1, shape).astype(np.int16), E_UP)


def act(name: str, shape: tuple[int, ...], scale: float, zp: int) -> Tensor:
    return Tensor(name, shape, DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def const(name: str, data: np.ndarray, quant: Quantization | None = None) -> Tensor:
    return Tensor(name, data.shape, DType.from_numpy(data.dtype), TensorKind.CONSTANT, quant, data)


def f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def deq(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """Dequantized values (float64; int8 arithmetic would wrap)."""
    return scale * (q.astype(np.float64) - zp)


# ---------------------------------------------------------------- linear layers


@dataclass
class LinearCase:
    op: Op
    ins: tuple[Tensor, ...]
    outs: tuple[Tensor, ...]
    x_q: np.ndarray
    w_q: np.ndarray
    b_q: np.ndarray
    y_q: np.ndarray
    s_in: float
    z_in: int
    w_scales: np.ndarray
    clamp_real: tuple[float, float]  # real bounds of "strictly inside the clamp"
    float_fn: Callable[..., object]  # (x, w_tf, b) -> y, in TF
    w_to_tf: Callable[[np.ndarray], np.ndarray]  # IR weight layout -> TF layout
    w_from_tf: Callable[[np.ndarray], np.ndarray]  # TF gradient -> IR weight layout


def _tf_conv(stride: int, padding: str) -> Callable[..., object]:
    return lambda x, w, b: tf.nn.conv2d(x, w, stride, padding) + b


def _tf_dw(stride: int, padding: str) -> Callable[..., object]:
    return lambda x, w, b: tf.nn.depthwise_conv2d(x, w, [1, stride, stride, 1], padding) + b


def linear_case(
    kind: OpKind,
    x_shape: tuple[int, ...],
    cout: int,
    k: int = 1,
    stride: int = 1,
    padding: Padding = Padding.SAME,
    activation: Activation = Activation.RELU,
    seed: int = 0,
    z_in: int | None = None,
) -> LinearCase:
    rng = np.random.default_rng(seed)
    s_in = float(rng.uniform(0.01, 0.05))
    z_in = int(rng.integers(-128, 0)) if z_in is None else z_in
    x_q = i8(rng, x_shape)
    cin = x_shape[-1]
    if kind is OpKind.CONV_2D:
        w_shape: tuple[int, ...] = (cout, k, k, cin)
        axis = 0
        w_to_tf = lambda w: np.transpose(w, (1, 2, 3, 0))  # noqa: E731
        w_from_tf = lambda g: np.transpose(g, (3, 0, 1, 2))  # noqa: E731
        float_fn = _tf_conv(stride, padding.value)
        attrs: object = Conv2DAttrs(stride, stride, padding=padding, activation=activation)
    elif kind is OpKind.DEPTHWISE_CONV_2D:
        cout = cin
        w_shape = (1, k, k, cin)
        axis = 3
        w_to_tf = lambda w: np.transpose(w, (1, 2, 3, 0))  # noqa: E731  (kh, kw, C, 1)
        w_from_tf = lambda g: np.transpose(g, (3, 0, 1, 2))  # noqa: E731
        float_fn = _tf_dw(stride, padding.value)
        attrs = DepthwiseConv2DAttrs(stride, stride, 1, padding=padding, activation=activation)
    else:
        w_shape = (cout, cin)
        axis = 0
        w_to_tf = lambda w: w.T  # noqa: E731
        w_from_tf = lambda g: g.T  # noqa: E731
        float_fn = lambda x, w, b: tf.matmul(x, w) + b  # noqa: E731
        attrs = FullyConnectedAttrs(activation)
    w_scales = np.exp(rng.uniform(np.log(0.002), np.log(0.05), cout))
    w_q = i8(rng, w_shape, -127, 127)
    b_q = rng.integers(-3000, 3001, cout).astype(np.int32)
    bcast = w_scales[None, None, None, :] if axis == 3 else w_scales.reshape((-1,) + (1,) * (len(w_shape) - 1))
    w_real = w_q * bcast
    y_f = np.asarray(float_fn(f32(deq(x_q, s_in, z_in)), f32(w_to_tf(w_real)), f32(b_q * s_in * w_scales)))
    lo, hi = float(y_f.min()), float(y_f.max())
    s_out = 0.8 * (hi - lo) / 255  # some outputs saturate at the top
    z_out = int(np.clip(-round((hi + lo) / 2 / s_out), -128, 127))
    x_t = act("x", x_shape, s_in, z_in)
    w_t = const("w", w_q, Quantization(tuple(float(s) for s in w_scales), (0,) * cout, axis))
    b_t = const("b", b_q, Quantization(tuple(float(s_in * s) for s in w_scales), (0,) * cout, 0))
    y_t = act("y", tuple(y_f.shape), s_out, z_out)
    op = Op(kind, ("x", "w", "b"), ("y",), attrs, 0)  # type: ignore[arg-type]
    spec = KERNELS[kind]
    (y_q,) = spec.run(spec.prepare(op, (x_t, w_t, b_t), (y_t,)), [x_q, w_q, b_q])
    bp = prepare_backward(op, (x_t, w_t, b_t), (y_t,), BackwardRequest())
    assert bp.clamp is not None
    lo_q, hi_q = bp.clamp
    clamp_real = (s_out * (lo_q + 0.5 - z_out), s_out * (hi_q - 0.5 - z_out))
    return LinearCase(
        op, (x_t, w_t, b_t), (y_t,), x_q, w_q, b_q, y_q, s_in, z_in, w_scales, clamp_real, float_fn, w_to_tf, w_from_tf
    )


def tf_linear_grads(c: LinearCase, up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TF's dL/dx, dL/dw (IR layout) and dL/db for L = Σ clamp(y) · up."""
    bcast = c.w_scales[None, None, None, :] if c.op.kind is OpKind.DEPTHWISE_CONV_2D else None
    if bcast is None:
        bcast = c.w_scales.reshape((-1,) + (1,) * (c.w_q.ndim - 1))
    x = tf.Variable(f32(deq(c.x_q, c.s_in, c.z_in)))
    w = tf.Variable(f32(c.w_to_tf(c.w_q * bcast)))
    b = tf.Variable(f32(c.b_q * c.s_in * c.w_scales))
    with tf.GradientTape() as tape:
        y = tf.clip_by_value(c.float_fn(x, w, b), *c.clamp_real)
        loss = tf.reduce_sum(y * f32(up))
    dx, dw, db = (t.numpy().astype(np.float64) for t in tape.gradient(loss, [x, w, b]))
    return dx, c.w_from_tf(dw), db


def run_linear(c: LinearCase, channels: tuple[int, ...], seed: int = 1) -> tuple[BackwardResult, np.ndarray, Grad]:
    request = BackwardRequest(frozenset({0}), channels, True)
    bp = prepare_backward(c.op, c.ins, c.outs, request)
    saved = save_forward(bp, [c.x_q, c.w_q, c.b_q], [c.y_q])
    g = upstream(np.random.default_rng(seed), c.y_q.shape)
    return run_backward(bp, g, saved, c.w_q), grad_to_float(g), g


LINEAR_CASES = {
    "conv3x3-s2-same-even": (OpKind.CONV_2D, (1, 8, 8, 6), 8, 3, 2, Padding.SAME, Activation.RELU),
    "conv3x3-s1-valid": (OpKind.CONV_2D, (1, 7, 7, 5), 6, 3, 1, Padding.VALID, Activation.RELU6),
    "conv1x1": (OpKind.CONV_2D, (1, 6, 6, 12), 10, 1, 1, Padding.SAME, Activation.NONE),
    "dw3x3-s1-same": (OpKind.DEPTHWISE_CONV_2D, (1, 8, 8, 8), 8, 3, 1, Padding.SAME, Activation.RELU6),
    "dw3x3-s2-same": (OpKind.DEPTHWISE_CONV_2D, (1, 9, 9, 6), 6, 3, 2, Padding.SAME, Activation.RELU),
    "dw5x5-s2-valid": (OpKind.DEPTHWISE_CONV_2D, (1, 11, 11, 4), 4, 5, 2, Padding.VALID, Activation.NONE),
    "fc": (OpKind.FULLY_CONNECTED, (1, 24), 10, 1, 1, Padding.SAME, Activation.NONE),
    "fc-relu": (OpKind.FULLY_CONNECTED, (1, 40), 16, 1, 1, Padding.SAME, Activation.RELU),
}


@pytest.mark.parametrize("name", sorted(LINEAR_CASES))
def test_linear_rule_matches_float_autodiff(name: str) -> None:
    kind, shape, cout, k, stride, padding, activation = LINEAR_CASES[name]
    c = linear_case(kind, shape, cout, k, stride, padding, activation, seed=sum(map(ord, name)))
    n_in = shape[-1]
    channels = tuple(range(1, n_in, 2))  # a strict subset of the input channels
    res, up, _ = run_linear(c, channels)
    dx, dw, db = tf_linear_grads(c, up)
    assert set(res.input_grads) == {0}
    assert_similar(grad_to_float(res.input_grads[0]), dx, f"{name} input gradient")
    assert res.weight_grad is not None and res.bias_grad is not None
    scale = c.s_in * 2.0**res.param_exponent
    assert_similar(res.weight_grad * scale, dw[..., list(channels)], f"{name} weight gradient")
    assert_similar(res.bias_grad * 2.0**res.param_exponent, db, f"{name} bias gradient")
    # the weight and bias gradients are exact sums: they match to float32 precision
    np.testing.assert_allclose(res.weight_grad * scale, dw[..., list(channels)], rtol=0, atol=1e-5 * np.abs(dw).max())


def test_clamp_mask_is_what_blocks_the_gradient() -> None:
    """Without the mask (every output passing) the gradients no longer match TF's."""
    c = linear_case(OpKind.CONV_2D, (1, 8, 8, 6), 8, 3, 2, Padding.SAME, Activation.RELU, seed=5)
    request = BackwardRequest(frozenset({0}), (), True)
    bp = prepare_backward(c.op, c.ins, c.outs, request)
    saved = save_forward(bp, [c.x_q, c.w_q, c.b_q], [c.y_q])
    assert saved.mask is not None
    g = upstream(np.random.default_rng(2), c.y_q.shape)
    good = run_backward(bp, g, saved, c.w_q)
    bad = run_backward(bp, g, dataclasses.replace(saved, mask=np.full_like(saved.mask, 0xFF)), c.w_q)
    dx, _, db = tf_linear_grads(c, grad_to_float(g))
    assert similar(grad_to_float(good.input_grads[0]), dx)
    assert good.bias_grad is not None and bad.bias_grad is not None
    assert not similar(grad_to_float(bad.input_grads[0]), dx)
    assert not similar(bad.bias_grad * 2.0**bad.param_exponent, db)


def _wrong_input_grad(c: LinearCase, mutate: Callable[[linear_bwd.LinearBwdParams, np.ndarray], tuple]) -> None:
    bp = prepare_backward(c.op, c.ins, c.outs, BackwardRequest())
    saved = save_forward(bp, [c.x_q, c.w_q, c.b_q], [c.y_q])
    g = upstream(np.random.default_rng(3), c.y_q.shape)
    good = run_backward(bp, g, saved, c.w_q).input_grads[0]
    dx, _, _ = tf_linear_grads(c, grad_to_float(g))
    assert similar(grad_to_float(good), dx)
    kp, w = mutate(bp.kernel, c.w_q)
    assert saved.mask is not None
    bad = linear_bwd.input_grad(kp, w, apply_mask(g, saved.mask))
    assert not similar(grad_to_float(bad), dx), (cosine(grad_to_float(bad), dx), sign_agreement(grad_to_float(bad), dx))


def test_wrong_rules_fail_the_thresholds() -> None:
    conv = linear_case(OpKind.CONV_2D, (1, 8, 8, 6), 8, 3, 1, Padding.SAME, Activation.NONE, seed=11)
    no_mu = lambda kp, w: (dataclasses.replace(kp, mu=np.full_like(kp.mu, 1 << 15)), w)  # noqa: E731
    _wrong_input_grad(conv, lambda kp, w: (kp, np.ascontiguousarray(w[:, ::-1, ::-1, :])))  # flipped kernel
    _wrong_input_grad(conv, no_mu)
    dw = linear_case(OpKind.DEPTHWISE_CONV_2D, (1, 8, 8, 16), 16, 3, 1, Padding.SAME, Activation.NONE, seed=12)
    _wrong_input_grad(dw, no_mu)
    fc = linear_case(OpKind.FULLY_CONNECTED, (1, 32), 32, seed=13, activation=Activation.NONE)
    _wrong_input_grad(fc, lambda kp, w: (kp, np.ascontiguousarray(w.T)))  # transposed weights
    _wrong_input_grad(fc, no_mu)
    # weight gradient that forgets the input zero point
    c = linear_case(OpKind.CONV_2D, (1, 8, 8, 6), 8, 3, 2, Padding.SAME, Activation.NONE, seed=14, z_in=-110)
    channels = (0, 2, 5)
    res, up, g = run_linear(c, channels)
    _, dw_ref, _ = tf_linear_grads(c, up)
    ref = dw_ref[..., list(channels)]
    assert res.weight_grad is not None
    assert similar(res.weight_grad * c.s_in * 2.0**res.param_exponent, ref)
    bp = prepare_backward(c.op, c.ins, c.outs, BackwardRequest(frozenset(), channels))
    saved = save_forward(bp, [c.x_q, c.w_q, c.b_q], [c.y_q])
    masked = run_backward(dataclasses.replace(bp, kernel=dataclasses.replace(bp.kernel, in_zp=0)), g, saved)
    assert masked.weight_grad is not None
    assert not similar(masked.weight_grad * c.s_in * 2.0**masked.param_exponent, ref)


def test_explicit_asymmetric_padding() -> None:
    """Explicit (top 0, bottom 2, left 1, right 0) padding, stride 2, vs TF's explicit padding."""
    rng = np.random.default_rng(21)
    h, w, cin, cout, k, s = 7, 6, 4, 5, 3, 2
    pads = (0, 2, 1, 0)
    out_h = (h + pads[0] + pads[1] - k) // s + 1
    out_w = (w + pads[2] + pads[3] - k) // s + 1
    geom = Geometry(k, k, s, s, 1, 1, pads[0], pads[2], pads[1], pads[3], out_h, out_w)
    s_in, z_in = 0.02, -30
    scales = np.exp(rng.uniform(np.log(0.002), np.log(0.05), cout))
    x_q, w_q = i8(rng, (1, h, w, cin)), i8(rng, (cout, k, k, cin), -127, 127)
    for kind, wq, sc, wl in (
        (OpKind.CONV_2D, w_q, scales, lambda a: np.transpose(a, (1, 2, 3, 0))),
        (OpKind.DEPTHWISE_CONV_2D, w_q[:1, :, :, :cin], scales[:cin], lambda a: np.transpose(a, (1, 2, 3, 0))),
    ):
        co = wq.shape[0] if kind is OpKind.CONV_2D else cin
        kp = linear_bwd.make_linear_backward(
            kind, (1, h, w, cin), (1, out_h, out_w, co), wq.shape, [float(v) for v in sc], z_in, geom
        )
        g = upstream(rng, (1, out_h, out_w, co))
        bc = sc[None, None, None, :] if kind is OpKind.DEPTHWISE_CONV_2D else sc[:, None, None, None]
        xv = tf.Variable(f32(deq(x_q, s_in, z_in)))
        wv = tf.Variable(f32(wl(wq * bc)))
        explicit = [[0, 0], [pads[0], pads[1]], [pads[2], pads[3]], [0, 0]]
        with tf.GradientTape() as tape:
            xp = tf.pad(xv, explicit)
            if kind is OpKind.CONV_2D:
                y = tf.nn.conv2d(xp, wv, s, "VALID")
            else:
                y = tf.nn.depthwise_conv2d(xp, wv, [1, s, s, 1], "VALID")
            loss = tf.reduce_sum(y * f32(grad_to_float(g)))
        dx, dw = (t.numpy() for t in tape.gradient(loss, [xv, wv]))
        assert_similar(grad_to_float(linear_bwd.input_grad(kp, wq, g)), dx, f"{kind.value} input gradient")
        ch = [0, 3]
        x_sub = linear_bwd.select_input_channels(kp, x_q, ch)
        wg = linear_bwd.weight_grad(kp, g, x_sub, ch) * s_in * 2.0**g.e
        assert_similar(wg, np.transpose(dw, (3, 0, 1, 2))[..., ch], f"{kind.value} weight gradient")


# ---------------------------------------------------------------- pools, ADD, PAD, RESHAPE


def _tf_input_grad(fn: Callable[[object], object], x_real: np.ndarray, up: np.ndarray) -> np.ndarray:
    x = tf.Variable(f32(x_real))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(fn(x) * f32(up))
    return np.asarray(tape.gradient(loss, x).numpy(), dtype=np.float64)


def _pool_op(
    kind: OpKind, x_shape: tuple[int, ...], y_shape: tuple[int, ...], attrs: object, extra: tuple = ()
) -> tuple:
    x_t = act("x", x_shape, 0.05, -3)
    y_t = act("y", y_shape, 0.05, -3)
    names = ("x", *(t.name for t in extra))
    return Op(kind, names, ("y",), attrs, 1), (x_t, *extra), (y_t,)  # type: ignore[arg-type]


POOL_CASES = {
    "mean-hw": (OpKind.MEAN, (1, 7, 7, 6), (1, 6), False, None),
    "mean-hw-keep": (OpKind.MEAN, (1, 5, 3, 4), (1, 1, 1, 4), True, None),
    "avg3x3-s2-same": (OpKind.AVERAGE_POOL_2D, (1, 9, 8, 5), (1, 5, 4, 5), None, (3, 2, Padding.SAME)),
    "avg2x2-s2-valid": (OpKind.AVERAGE_POOL_2D, (1, 8, 8, 3), (1, 4, 4, 3), None, (2, 2, Padding.VALID)),
    "avg3x3-s1-same": (OpKind.AVERAGE_POOL_2D, (1, 6, 6, 4), (1, 6, 6, 4), None, (3, 1, Padding.SAME)),
    "avg-global": (OpKind.AVERAGE_POOL_2D, (1, 5, 5, 7), (1, 1, 1, 7), None, (5, 1, Padding.VALID)),
}


@pytest.mark.parametrize("name", sorted(POOL_CASES))
def test_pool_rules_match_float_autodiff(name: str) -> None:
    kind, x_shape, y_shape, keep, window = POOL_CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    if kind is OpKind.MEAN:
        axes = const("axes", np.array([1, 2], dtype=np.int32))
        op, ins, outs = _pool_op(kind, x_shape, y_shape, ReduceAttrs(keep), (axes,))
        fn = lambda x: tf.reduce_mean(x, axis=[1, 2], keepdims=keep)  # noqa: E731
    else:
        k, s, pad = window
        op, ins, outs = _pool_op(kind, x_shape, y_shape, Pool2DAttrs(k, k, s, s, pad))
        fn = lambda x: tf.nn.avg_pool2d(x, k, s, pad.value)  # noqa: E731
    bp = prepare_backward(op, ins, outs, BackwardRequest())
    assert bp.clamp is None and not bp.save_channels
    g = upstream(rng, y_shape)
    res = run_backward(bp, g, save_forward(bp, [i8(rng, x_shape)], [i8(rng, y_shape)]))
    ref = _tf_input_grad(fn, rng.normal(size=x_shape), grad_to_float(g))
    assert_similar(grad_to_float(res.input_grads[0]), ref, name)
    np.testing.assert_allclose(grad_to_float(res.input_grads[0]), ref, rtol=0, atol=2e-3 * np.abs(ref).max())
    # a rule that forgets 1/count (windows of different sizes) fails; the global case only differs by a scale
    if kind is OpKind.AVERAGE_POOL_2D and len(np.unique(bp.kernel.mu)) > 2:
        bad = pool_bwd.pool_input_grad(dataclasses.replace(bp.kernel, mu=np.full_like(bp.kernel.mu, 1 << 15)), g)
        assert cosine(grad_to_float(bad), ref) < 0.999


@pytest.mark.parametrize("broadcast", [False, True])
def test_add_rule_matches_float_autodiff(broadcast: bool) -> None:
    rng = np.random.default_rng(31 + broadcast)
    shape = (1, 6, 6, 8)
    b_shape = (1, 1, 1, 8) if broadcast else shape
    sa, za, sb, zb = 0.04, -10, 0.03, 5
    a_q, b_q = i8(rng, shape), i8(rng, b_shape)
    y_real = deq(a_q, sa, za) + deq(b_q, sb, zb)
    s_out = 0.8 * (y_real.max() - y_real.min()) / 255
    z_out = int(np.clip(-round((y_real.max() + y_real.min()) / 2 / s_out), -128, 127))
    a_t, b_t, y_t = act("a", shape, sa, za), act("b", b_shape, sb, zb), act("y", shape, s_out, z_out)
    op = Op(OpKind.ADD, ("a", "b"), ("y",), ElementwiseAttrs(Activation.RELU), 2)
    spec = KERNELS[OpKind.ADD]
    (y_q,) = spec.run(spec.prepare(op, (a_t, b_t), (y_t,)), [a_q, b_q])
    bp = prepare_backward(op, (a_t, b_t), (y_t,), BackwardRequest(frozenset({0, 1})))
    assert bp.clamp is not None
    saved = save_forward(bp, [a_q, b_q], [y_q])
    g = upstream(rng, shape)
    res = run_backward(bp, g, saved)
    lo, hi = (s_out * (v - z_out) for v in (bp.clamp[0] + 0.5, bp.clamp[1] - 0.5))
    av, bv = tf.Variable(f32(deq(a_q, sa, za))), tf.Variable(f32(deq(b_q, sb, zb)))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.clip_by_value(av + bv, lo, hi) * f32(grad_to_float(g)))
    da, db = (t.numpy() for t in tape.gradient(loss, [av, bv]))
    assert_similar(grad_to_float(res.input_grads[0]), da, "ADD input 0")
    assert_similar(grad_to_float(res.input_grads[1]), db, "ADD input 1")
    only_b = run_backward(prepare_backward(op, (a_t, b_t), (y_t,), BackwardRequest(frozenset({1}))), g, saved)
    assert set(only_b.input_grads) == {1}


def test_pad_and_reshape_rules_match_float_autodiff() -> None:
    rng = np.random.default_rng(41)
    x_shape, paddings = (1, 5, 4, 3), np.array([[0, 0], [1, 2], [0, 1], [0, 0]], dtype=np.int32)
    y_shape = tuple(int(d + p.sum()) for d, p in zip(x_shape, paddings, strict=True))
    pad_op = Op(OpKind.PAD, ("x", "p"), ("y",), NoAttrs(), 3)
    ins = (act("x", x_shape, 0.1, 0), const("p", paddings))
    bp = prepare_backward(pad_op, ins, (act("y", y_shape, 0.1, 0),), BackwardRequest())
    g = upstream(rng, y_shape)
    res = run_backward(bp, g, save_forward(bp, [None, None], [i8(rng, y_shape)]))
    ref = _tf_input_grad(lambda x: tf.pad(x, paddings), rng.normal(size=x_shape), grad_to_float(g))
    np.testing.assert_array_equal(grad_to_float(res.input_grads[0]), ref)
    new_shape = (1, 60)
    rs_op = Op(OpKind.RESHAPE, ("x",), ("y",), ReshapeAttrs(new_shape), 4)
    bp = prepare_backward(rs_op, (act("x", x_shape, 0.1, 0),), (act("y", new_shape, 0.1, 0),), BackwardRequest())
    g = upstream(rng, new_shape)
    res = run_backward(bp, g, save_forward(bp, [None], [i8(rng, new_shape)]))
    ref = _tf_input_grad(lambda x: tf.reshape(x, new_shape), rng.normal(size=x_shape), grad_to_float(g))
    np.testing.assert_array_equal(grad_to_float(res.input_grads[0]), ref)


# ---------------------------------------------------------------- the table itself


def test_rule_table_is_read_only_and_covers_the_training_ops() -> None:
    wanted = {
        OpKind.CONV_2D,
        OpKind.DEPTHWISE_CONV_2D,
        OpKind.FULLY_CONNECTED,
        OpKind.ADD,
        OpKind.MEAN,
        OpKind.AVERAGE_POOL_2D,
        OpKind.PAD,
        OpKind.RESHAPE,
    }
    assert wanted <= set(GRAD_RULES)
    with pytest.raises(TypeError):
        GRAD_RULES[OpKind.SOFTMAX] = GRAD_RULES[OpKind.ADD]  # type: ignore[index]
    for kind in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
        assert GRAD_RULES[kind].trainable and GRAD_RULES[kind].clamp_mask and GRAD_RULES[kind].grad_inputs == (0,)
    assert GRAD_RULES[OpKind.ADD].grad_inputs == (0, 1) and GRAD_RULES[OpKind.ADD].clamp_mask
    linear = {OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED}
    assert not any(GRAD_RULES[k].trainable for k in wanted - linear)


def test_requests_are_validated() -> None:
    c = linear_case(OpKind.FULLY_CONNECTED, (1, 8), 4, seed=51)
    with pytest.raises(UsageError, match="FULLY_CONNECTED"):
        prepare_backward(c.op, c.ins, c.outs, BackwardRequest(frozenset({1})))
    with pytest.raises(UsageError, match="channels"):
        prepare_backward(c.op, c.ins, c.outs, BackwardRequest(frozenset(), (0, 8)))
    with pytest.raises(UsageError, match="channels"):
        prepare_backward(c.op, c.ins, c.outs, BackwardRequest(frozenset(), (2, 2)))
    no_bias = Op(c.op.kind, ("x", "w", None), ("y",), c.op.attrs, 0)
    with pytest.raises(UsageError, match="bias"):
        prepare_backward(no_bias, (c.ins[0], c.ins[1], None), c.outs, BackwardRequest(frozenset(), (), True))
    no_rule = Op(OpKind.LOGISTIC, ("x",), ("y",), NoAttrs(), 9)
    with pytest.raises(UsageError, match="no gradient rule"):
        prepare_backward(no_rule, (c.outs[0],), (c.outs[0],), BackwardRequest())
    bp = prepare_backward(c.op, c.ins, c.outs, BackwardRequest())
    with pytest.raises(UsageError, match="clamp mask"):
        run_backward(bp, upstream(np.random.default_rng(0), c.y_q.shape), Saved())


# ---------------------------------------------------------------- a training loop through the table


def test_sgd_steps_through_the_table_raise_the_label_probability() -> None:
    """Integer SGD (loss gradient, FC backward, update) on one sample drives p(label) up."""
    from tinytrain.train.grad_rules import apply_update
    from tinytrain.train.kernels.loss import prepare_softmax_ce, softmax_ce_grad
    from tinytrain.train.kernels.prng import seed_state
    from tinytrain.train.kernels.schedule import lr_multiplier

    rng = np.random.default_rng(61)
    cin, cout, label = 16, 5, 3
    s_in, z_in, s_out, z_out = 0.05, -10, 0.25, 0
    scales = tuple(float(v) for v in rng.uniform(0.005, 0.02, cout))
    w = i8(rng, (cout, cin), -30, 30)
    b = np.zeros(cout, dtype=np.int32)
    x = i8(rng, (1, cin))
    x_t, y_t = act("x", (1, cin), s_in, z_in), act("y", (1, cout), s_out, z_out)
    ce = prepare_softmax_ce(y_t)
    state = seed_state(7)
    lr = lr_multiplier(0.02)
    channels = (0, 2, 4, 6, 8, 10, 12, 14)
    probs = []
    for _ in range(25):
        w_t = const("w", w, Quantization(scales, (0,) * cout, 0))
        b_t = const("b", b, Quantization(tuple(s_in * s for s in scales), (0,) * cout, 0))
        op = Op(OpKind.FULLY_CONNECTED, ("x", "w", "b"), ("y",), FullyConnectedAttrs(), 0)
        spec = KERNELS[op.kind]
        (y_q,) = spec.run(spec.prepare(op, (x_t, w_t, b_t), (y_t,)), [x, w, b])
        g, p_label = softmax_ce_grad(ce, y_q, label)
        probs.append(p_label)
        bp = prepare_backward(op, (x_t, w_t, b_t), (y_t,), BackwardRequest(frozenset(), channels, True))
        res = run_backward(bp, g, save_forward(bp, [x, w, b], [y_q]))
        assert not res.input_grads
        new_w, new_b = apply_update(bp, res, w, b, lr, 32768, state)
        assert new_w is not None and new_b is not None
        frozen = [c for c in range(cin) if c not in channels]
        np.testing.assert_array_equal(new_w[:, frozen], w[:, frozen])
        w, b = new_w, new_b
    assert probs[0] < 0.5 * 65536 and probs[-1] > 0.9 * 65536, probs
