"""Linear-layer and pooling backward kernels, bit for bit against naive loop references.

The references are written from ``docs/numerics.md`` the way the C runtime will loop
(output position, output channel, tap), with Python-int rounding, so any deviation of
the vectorised numpy kernels (float64 matmuls, strided views) shows up as a byte
difference. Compile-time constants (μ, k, padding, bit budget) are re-derived here
independently.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import (
    Activation,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    FullyConnectedAttrs,
    Op,
    OpKind,
    Padding,
    Pool2DAttrs,
    ReduceAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.train.kernels import linear_bwd, pool_bwd
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, normalize


def rdbp(a: int, r: int) -> int:
    q = (abs(a) + (1 << (r - 1))) >> r if r > 0 else abs(a)
    return q if a >= 0 else -q


def round_away(f: Fraction) -> int:
    q = math.floor(abs(f) + Fraction(1, 2))
    return q if f >= 0 else -q


def same_pads(size: int, k: int, s: int, padding: Padding) -> tuple[int, int]:
    out = -(-size // s) if padding is Padding.SAME else (size - k) // s + 1
    total = max((out - 1) * s + k - size, 0) if padding is Padding.SAME else 0
    return out, total // 2


def act(name: str, shape: tuple[int, ...], scale: float, zp: int) -> Tensor:
    return Tensor(name, shape, DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def linear_op(kind: OpKind, x_shape: tuple[int, ...], cout: int, k: int, s: int, padding: Padding, seed: int) -> tuple:
    rng = np.random.default_rng(seed)
    cin = x_shape[-1]
    n_scales = cin if kind is OpKind.DEPTHWISE_CONV_2D else cout
    scales = tuple(float(v) for v in np.exp(rng.uniform(np.log(1e-3), np.log(0.08), n_scales)))
    if kind is OpKind.CONV_2D:
        w_shape: tuple[int, ...] = (cout, k, k, cin)
        attrs: object = Conv2DAttrs(s, s, padding=padding)
    elif kind is OpKind.DEPTHWISE_CONV_2D:
        cout = cin
        w_shape = (1, k, k, cin)
        attrs = DepthwiseConv2DAttrs(s, s, 1, padding=padding)
    else:
        w_shape = (cout, cin)
        attrs = FullyConnectedAttrs(Activation.NONE)
    if kind is OpKind.FULLY_CONNECTED:
        y_shape: tuple[int, ...] = (1, cout)
    else:
        oh, _ = same_pads(x_shape[1], k, s, padding)
        ow, _ = same_pads(x_shape[2], k, s, padding)
        y_shape = (1, oh, ow, cout)
    w_q = rng.integers(-128, 128, w_shape).astype(np.int8)
    axis = 3 if kind is OpKind.DEPTHWISE_CONV_2D else 0
    w_t = Tensor("w", w_shape, DType.INT8, TensorKind.CONSTANT, Quantization(scales, (0,) * len(scales), axis), w_q)
    z_in = int(rng.integers(-128, 128))
    op = Op(kind, ("x", "w"), ("y",), attrs, 0)  # type: ignore[arg-type]
    kp = linear_bwd.prepare_linear_backward(op, (act("x", x_shape, 0.02, z_in), w_t), (act("y", y_shape, 0.1, 0),))
    x_q = rng.integers(-128, 128, x_shape).astype(np.int8)
    g = Grad(rng.integers(-(2**14), 2**14 + 1, y_shape).astype(np.int16), int(rng.integers(-30, -5)))
    return kp, scales, w_q, x_q, g, z_in


CASES = {
    "conv3x3-s2-same-even": (OpKind.CONV_2D, (1, 8, 6, 3), 4, 3, 2, Padding.SAME),
    "conv3x3-s1-same": (OpKind.CONV_2D, (1, 5, 5, 2), 3, 3, 1, Padding.SAME),
    "conv2x2-s2-valid-odd": (OpKind.CONV_2D, (1, 7, 5, 3), 2, 2, 2, Padding.VALID),
    "conv1x1": (OpKind.CONV_2D, (1, 4, 4, 5), 6, 1, 1, Padding.SAME),
    "dw3x3-s2-same": (OpKind.DEPTHWISE_CONV_2D, (1, 8, 7, 4), 4, 3, 2, Padding.SAME),
    "dw5x5-s1-same": (OpKind.DEPTHWISE_CONV_2D, (1, 6, 6, 3), 3, 5, 1, Padding.SAME),
    "fc": (OpKind.FULLY_CONNECTED, (1, 17), 9, 1, 1, Padding.VALID),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_linear_backward_is_bit_exact_with_loop_reference(name: str) -> None:
    kind, x_shape, cout, k, s, padding = CASES[name]
    kp, scales, w_q, x_q, g, z_in = linear_op(kind, x_shape, cout, k, s, padding, sum(map(ord, name)))
    dw = kind is OpKind.DEPTHWISE_CONV_2D
    # compile-time constants, re-derived
    top = max(scales)
    kk = math.ceil(math.log2(top))
    if 2.0 ** (kk - 1) >= top:
        kk -= 1
    assert kp.k == kk and 2.0 ** (kk - 1) < top <= 2.0**kk
    assert kp.mu.tolist() == [round_away(Fraction(sc) * 2 ** (15 - kk)) for sc in scales]
    if kind is OpKind.FULLY_CONNECTED:
        fan = cout
    else:
        taps = math.ceil(k / s) ** 2
        fan = taps if dw else cout * taps
    assert fan * 128 * 2 ** (GRAD_BITS - kp.drop) < 2**31
    assert kp.drop == 0 or fan * 128 * 2 ** (GRAD_BITS - kp.drop + 1) >= 2**31
    shift = 15 + kp.drop
    gi = g.g.astype(np.int64)
    c_out = gi.shape[-1]
    gp = np.vectorize(lambda v, o: rdbp(int(v) * int(kp.mu[o]), shift))(gi, np.arange(c_out))
    channels = [c for c in range(x_shape[-1]) if c % 3 != 1]
    xz = x_q.astype(np.int64) - z_in
    if kind is OpKind.FULLY_CONNECTED:
        acc = np.zeros(x_shape[-1], dtype=np.int64)
        for o in range(cout):
            acc += w_q[o].astype(np.int64) * int(gp[0, o])
        acc = acc.reshape(x_shape)
        wg = np.array([[int(gi[0, o]) * int(xz[0, c]) for c in channels] for o in range(cout)], dtype=np.int64)
    else:
        _, h, w, _ = x_shape
        oh, pt = same_pads(h, k, s, padding)
        ow, pl = same_pads(w, k, s, padding)
        assert (kp.geom.pad_top, kp.geom.pad_left, kp.geom.out_h, kp.geom.out_w) == (pt, pl, oh, ow)
        acc = np.zeros(x_shape, dtype=np.int64)
        wg = np.zeros(w_q[..., channels].shape, dtype=np.int64)
        for oy in range(oh):
            for ox in range(ow):
                for ky in range(k):
                    for kx in range(k):
                        iy, ix = oy * s + ky - pt, ox * s + kx - pl
                        if not (0 <= iy < h and 0 <= ix < w):
                            continue
                        if dw:
                            acc[0, iy, ix] += w_q[0, ky, kx].astype(np.int64) * gp[0, oy, ox]
                            wg[0, ky, kx] += gi[0, oy, ox, channels] * xz[0, iy, ix, channels]
                        else:
                            acc[0, iy, ix] += w_q[:, ky, kx, :].astype(np.int64).T @ gp[0, oy, ox]
                            wg[:, ky, kx] += np.outer(gi[0, oy, ox], xz[0, iy, ix, channels])
    assert np.abs(acc).max() < 2**31
    want = normalize(acc, g.e + kp.k + kp.drop)
    got = linear_bwd.input_grad(kp, w_q, g)
    assert got.e == want.e
    np.testing.assert_array_equal(got.g, want.g)
    x_sub = linear_bwd.select_input_channels(kp, x_q, channels)
    np.testing.assert_array_equal(linear_bwd.weight_grad(kp, g, x_sub, channels), wg)
    np.testing.assert_array_equal(linear_bwd.bias_grad(kp, g), gi.reshape(-1, c_out).sum(axis=0))


@pytest.mark.parametrize("cout", [3000, 20000])
def test_bit_budget_prevents_int32_overflow(cout: int) -> None:
    """Worst case: every product of one input column has the largest magnitude and one sign."""
    rng = np.random.default_rng(cout)
    cin = 3
    kp = linear_bwd.make_linear_backward(OpKind.FULLY_CONNECTED, (1, cin), (1, cout), (cout, cin), [1.0] * cout, 0)
    assert kp.mu.tolist() == [1 << 15] * cout  # the largest per-channel factor
    assert kp.drop > 0
    w = rng.choice(np.array([-128, 127], dtype=np.int8), (cout, cin))
    w[:, 0] = -128
    g = Grad(np.full((1, cout), -(2**14), dtype=np.int16), -20)
    gp = rdbp(-(2**14) * (1 << 15), 15 + kp.drop)
    exact = [sum(int(w[o, i]) * gp for o in range(cout)) for i in range(cin)]
    assert 2**30 <= abs(exact[0]) < 2**31  # column 0 is the worst case: close to, but below, the int32 limit
    got = linear_bwd.input_grad(kp, w, g)
    want = normalize(np.array(exact, dtype=np.int64).reshape(1, cin), g.e + kp.k + kp.drop)
    np.testing.assert_array_equal(got.g, want.g)
    assert got.e == want.e


POOLS = {
    "avg3x3-s2-same": ((1, 9, 8, 3), 3, 2, Padding.SAME),
    "avg2x2-s2-valid": ((1, 7, 6, 2), 2, 2, Padding.VALID),
    "avg3x3-s1-same": ((1, 5, 4, 2), 3, 1, Padding.SAME),
    "avg-global": ((1, 7, 7, 4), 7, 1, Padding.VALID),
}


@pytest.mark.parametrize("name", sorted(POOLS))
def test_avg_pool_backward_is_bit_exact_with_loop_reference(name: str) -> None:
    x_shape, k, s, padding = POOLS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    _, h, w, c = x_shape
    oh, pt = same_pads(h, k, s, padding)
    ow, pl = same_pads(w, k, s, padding)
    op = Op(OpKind.AVERAGE_POOL_2D, ("x",), ("y",), Pool2DAttrs(k, k, s, s, padding), 0)
    kp = pool_bwd.prepare_avg_pool_backward(op, (act("x", x_shape, 0.1, 0),), (act("y", (1, oh, ow, c), 0.1, 0),))
    g = Grad(rng.integers(-(2**14), 2**14 + 1, (1, oh, ow, c)).astype(np.int16), -17)
    counts = np.zeros((oh, ow), dtype=np.int64)
    for oy in range(oh):
        for ox in range(ow):
            counts[oy, ox] = sum(
                0 <= oy * s + ky - pt < h and 0 <= ox * s + kx - pl < w for ky in range(k) for kx in range(k)
            )
    kk = int(counts.min()).bit_length() - 1
    acc = np.zeros(x_shape, dtype=np.int64)
    for oy in range(oh):
        for ox in range(ow):
            mu = round_away(Fraction(2 ** (15 + kk), int(counts[oy, ox])))
            gp = [rdbp(int(v) * mu, 15) for v in g.g[0, oy, ox]]
            for ky in range(k):
                for kx in range(k):
                    iy, ix = oy * s + ky - pt, ox * s + kx - pl
                    if 0 <= iy < h and 0 <= ix < w:
                        acc[0, iy, ix] += gp
    want = normalize(acc, g.e - kk)
    got = pool_bwd.pool_input_grad(kp, g)
    assert got.e == want.e
    np.testing.assert_array_equal(got.g, want.g)


def test_mean_backward_is_bit_exact() -> None:
    rng = np.random.default_rng(3)
    x_shape = (1, 7, 7, 5)
    axes = Tensor("a", (2,), DType.INT32, TensorKind.CONSTANT, None, np.array([1, 2], dtype=np.int32))
    op = Op(OpKind.MEAN, ("x", "a"), ("y",), ReduceAttrs(False), 0)
    kp = pool_bwd.prepare_mean_backward(op, (act("x", x_shape, 0.1, 0), axes), (act("y", (1, 5), 0.1, 0),))
    g = Grad(rng.integers(-(2**14), 2**14 + 1, (1, 5)).astype(np.int16), -9)
    mu = round_away(Fraction(2 ** (15 + 5), 49))  # k = floor(log2 49) = 5
    acc = np.broadcast_to(np.array([rdbp(int(v) * mu, 15) for v in g.g[0]]), x_shape)
    want = normalize(acc, g.e - 5)
    got = pool_bwd.pool_input_grad(kp, g)
    assert got.e == want.e and got.shape == x_shape
    np.testing.assert_array_equal(got.g, want.g)
