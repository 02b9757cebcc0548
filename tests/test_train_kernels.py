"""Integer training kernels: normalize, masks, loss, PRNG, rounding, update, schedule.

Bit-exact checks compare against scalar Python-int references written from
``docs/numerics.md`` (what a C loop computes); statistical checks compare the update with
the float SGD step in expectation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.train.kernels import linear_bwd, prng
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, grad_to_float, normalize
from tinytrain.train.kernels.loss import prepare_softmax_ce, softmax_ce_grad
from tinytrain.train.kernels.mask import apply_mask, clamp_mask, mask_nbytes, pack_mask, unpack_mask
from tinytrain.train.kernels.schedule import COSINE_Q15, Schedule, lr_multiplier, schedule_factor
from tinytrain.train.kernels.update import (
    combine_multipliers,
    make_update,
    rounding_shift,
    stochastic_shift,
    update_bias,
    update_weights,
)

# ------------------------------------------------------------------ scalar references


def rdbp(a: int, r: int) -> int:
    """a / 2^r rounded half away from zero (Python ints)."""
    if r <= 0:
        return a << -r
    q = (abs(a) + (1 << (r - 1))) >> r
    return q if a >= 0 else -q


def normalize_ref(acc: np.ndarray, e: int, bits: int = GRAD_BITS) -> tuple[list[int], int]:
    vals = [int(v) for v in acc.reshape(-1)]
    m = max((abs(v) for v in vals), default=0)
    if m == 0:
        return vals, e
    r = m.bit_length() - bits
    return [rdbp(v, r) for v in vals], e + r


# ------------------------------------------------------------------ gradients and masks


@pytest.mark.parametrize("bits", [GRAD_BITS, 10, 3])
def test_normalize_matches_reference(bits: int) -> None:
    rng = np.random.default_rng(bits)
    for top in (1, 5, bits - 1, bits, bits + 1, 20, 31, 45, 62):
        acc = rng.integers(-(2**top) + 1, 2**top, (5, 7), dtype=np.int64)
        acc[0, 0] = 2**top - 1  # the bit length is exactly `top`
        e0 = int(rng.integers(-40, 10))
        g = normalize(acc, e0, bits)
        vals, e = normalize_ref(acc, e0, bits)
        assert g.g.dtype == np.int16 and g.e == e == e0 + top - bits
        assert g.g.reshape(-1).tolist() == vals
        assert int(np.abs(g.g.astype(np.int64)).max()) <= 2**bits
    # halves round away from zero
    g = normalize(np.array([2**15, 2, -2, 6, -6, 1, -1]), 0, 14)
    assert g.e == 2 and g.g.tolist() == [2**13, 1, -1, 2, -2, 0, 0]
    z = normalize(np.zeros((2, 3), dtype=np.int64), -7)
    assert z.e == -7 and not z.g.any() and z.shape == (2, 3)
    with pytest.raises(UsageError):
        normalize(np.ones(3, dtype=np.int64), 0, 15)


def test_mask_packing_round_trip_and_bit_order() -> None:
    rng = np.random.default_rng(1)
    for shape in ((1, 3, 5, 7), (1, 8), (1, 1), (2, 9)):
        bits = rng.random(shape) < 0.5
        packed = pack_mask(bits)
        n = math.prod(shape)
        assert packed.dtype == np.uint8 and packed.size == mask_nbytes(n) == (n + 7) // 8
        flat = bits.reshape(-1)
        for j, byte in enumerate(packed.tolist()):  # element 8j + b is bit b of byte j
            assert byte == sum(int(flat[8 * j + b]) << b for b in range(8) if 8 * j + b < n)
        np.testing.assert_array_equal(unpack_mask(packed, shape), bits)
    with pytest.raises(UsageError):
        unpack_mask(np.zeros(3, dtype=np.uint8), (1, 3, 3))


def test_clamp_mask_is_strictly_inside_and_masks_gradients() -> None:
    y = np.arange(-128, 128, dtype=np.int8).reshape(1, 16, 16)
    lo, hi = -20, 100
    keep = unpack_mask(clamp_mask(y, lo, hi), y.shape)
    np.testing.assert_array_equal(keep, (y > lo) & (y < hi))
    assert not keep[y == lo].any() and not keep[y == hi].any()
    g = Grad(np.full(y.shape, 7, dtype=np.int16), -3)
    masked = apply_mask(g, clamp_mask(y, lo, hi))
    assert masked.e == -3
    np.testing.assert_array_equal(masked.g, np.where(keep, 7, 0))


# ------------------------------------------------------------------ loss


def test_softmax_ce_gradient_matches_float() -> None:
    rng = np.random.default_rng(2)
    for trial in range(12):
        classes = int(rng.integers(2, 40))
        scale, zp = float(rng.uniform(0.03, 0.3)), int(rng.integers(-60, 60))
        logits = Tensor("logits", (1, classes), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))
        p = prepare_softmax_ce(logits)
        q = rng.integers(-128, 128, (1, classes)).astype(np.int8)
        label = int(rng.integers(classes))
        grad, p_label = softmax_ce_grad(p, q, label)
        z = scale * (q.astype(np.float64) - zp)
        soft = np.exp(z - z.max())
        soft /= soft.sum()
        ref = soft.copy()
        ref[0, label] -= 1.0
        ref[((q == 127) & (ref < 0)) | ((q == -128) & (ref > 0))] = 0.0  # one-sided at saturation
        ours = grad_to_float(grad)
        assert grad.shape == (1, classes) and grad.g.dtype == np.int16
        assert np.abs(ours - ref).max() < 2e-3, trial
        if np.linalg.norm(ref) > 0.05:  # not a (nearly) perfectly classified sample
            assert float(ours.ravel() @ ref.ravel()) / (np.linalg.norm(ours) * np.linalg.norm(ref)) > 0.999
        assert abs(p_label / 65536 - soft[0, label]) < 2e-3
        assert 0 <= p_label < 65536
    with pytest.raises(UsageError):
        softmax_ce_grad(p, q, classes)


def test_softmax_ce_gradient_is_one_sided_at_saturated_logits() -> None:
    """A logit at +127 may only be pushed down, one at -128 only up; others pass unchanged."""
    logits = Tensor("logits", (1, 4), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(0.0625, 0))
    p = prepare_softmax_ce(logits)
    q = np.array([[127, 127, -128, 10]], np.int8)
    g_true_sat, _ = softmax_ce_grad(p, q, 0)  # the true class saturated high: no push up
    g = grad_to_float(g_true_sat).ravel()
    assert g[0] == 0.0 and g[1] > 0.1 and g[3] > 0.0  # the wrong saturated logit is still pushed down
    assert g[2] == 0.0  # a wrong logit at -128 is not pushed further down (its p is tiny anyway)
    g_low, _ = softmax_ce_grad(p, q, 2)  # the true class saturated low: pushed up
    gl = grad_to_float(g_low).ravel()
    assert gl[2] < -0.9 and gl[0] > 0.0 and gl[1] > 0.0
    unsat = np.array([[100, 50, -100, 10]], np.int8)
    g_free, _ = softmax_ce_grad(p, unsat, 0)
    assert grad_to_float(g_free).ravel()[0] < 0.0  # below saturation the true logit is pushed up


# ------------------------------------------------------------------ PRNG


def test_xorshift32_vectorised_draws_equal_the_sequential_loop() -> None:
    for seed in (1, 0xDEADBEEF, 2**32 - 1, 123456789):
        state = prng.seed_state(seed)
        got = prng.draws(state, 1000)
        x, ref = seed, []
        for _ in range(1000):
            x = prng.next_state(x)
            ref.append(x)
        assert got.dtype == np.uint32 and got.tolist() == ref
        assert int(state[0]) == ref[-1]
    a = prng.seed_state(99)
    b = prng.seed_state(99)
    parts = np.concatenate([prng.draws(a, 1), prng.draws(a, 37), prng.draws(a, 300)])
    np.testing.assert_array_equal(parts, prng.draws(b, 338))
    assert prng.draws(a, 0).size == 0
    with pytest.raises(UsageError):
        prng.seed_state(2**32)


# ------------------------------------------------------------------ rounding primitives


def test_stochastic_rounding_is_unbiased_and_brackets_the_value() -> None:
    rng = np.random.default_rng(3)
    n = 40000
    state = prng.seed_state(7)
    for r in (1, 4, 13, 32, 33, 45, 61):
        for p in (int(rng.integers(-(2**60), 2**60)) >> max(61 - r - 3, 0), 3, -3, 1 << (r - 1), -(1 << (r - 1))):
            u = prng.draws(state, n)
            out = stochastic_shift(np.full(n, p, dtype=np.int64), np.int64(r), u)
            exact = p / 2.0**r
            assert set(np.unique(out).tolist()) <= {math.floor(exact), math.floor(exact) + 1}
            assert abs(out.mean() - exact) < 5 * 0.5 / math.sqrt(n) + 1e-9, (p, r)
    # R <= 0: exact left shift, saturated at ±256
    p = np.array([0, 1, -1, 3, 200, -200, 10**6], dtype=np.int64)
    u = np.zeros(p.size, dtype=np.uint32)
    for r in (0, -1, -5, -8, -40):
        want = [max(min(int(v) << -r, 256), -256) for v in p]
        assert stochastic_shift(p, np.int64(r), u).tolist() == want


def test_rounding_shift_matches_reference() -> None:
    rng = np.random.default_rng(4)
    p = rng.integers(-(2**61), 2**61, 500, dtype=np.int64) >> rng.integers(0, 60, 500)
    p[:4] = [6, -6, 2, -2]
    for r in (1, 2, 3, 17, 31, 40, 62, 70, 0, -3, -31, -33):
        want = [rdbp(int(v), r) if r >= 1 else max(min(int(v) << -r, 2**32), -(2**32)) for v in p]
        assert rounding_shift(p, np.int64(r)).tolist() == want, r


def test_combined_multiplier_matches_the_real_product() -> None:
    rng = np.random.default_rng(5)
    reals = np.exp(rng.uniform(np.log(1e-3), np.log(1e4), 50))
    qs = [quantize_multiplier(float(v)) for v in reals]
    q = np.array([a for a, _ in qs], dtype=np.int64)
    s = np.array([b for _, b in qs], dtype=np.int64)
    for lr in (1e-4, 0.003, 0.5, 3.0):
        for c_t in (32768, 20000, 1000):
            m, shift = combine_multipliers(q, s, lr_multiplier(lr), c_t)
            got = m * np.exp2((shift - 31).astype(np.float64))
            np.testing.assert_allclose(got, reals * lr * c_t / 32768, rtol=2e-5)
    with pytest.raises(UsageError):
        combine_multipliers(q, s, (1, 0), 40000)


# ------------------------------------------------------------------ the update


def update_ref(
    w: np.ndarray,
    grad: np.ndarray,
    e_y: int,
    channels: list[int],
    q: list[int],
    shift: list[int],
    lr: tuple[int, int],
    c_t: int,
    seed: int,
    depthwise: bool,
) -> tuple[np.ndarray, int]:
    """Scalar reference of the weight update: one output channel at a time (depthwise: the
    subset channels), row-major inside a channel, one xorshift32 draw per weight."""
    out = w.astype(np.int64).copy()
    x = seed
    rows = range(len(channels)) if depthwise else range(w.shape[0])
    for row in rows:
        if depthwise:
            view = out[0, :, :, channels[row]]  # (kh, kw) copy
            g_row = grad[..., row].reshape(-1)
            cq, cs = q[channels[row]], shift[channels[row]]
        else:
            view = out[row][..., channels]  # copy, row-major
            g_row = grad[row].reshape(-1)
            cq, cs = q[row], shift[row]
        gs = [int(v) for v in g_row]
        top = max(abs(v) for v in gs)
        r = max(top.bit_length() - 30, 0)
        gs = [rdbp(v, r) for v in gs]
        m1 = (cq * lr[0] + (1 << 30)) >> 31
        mult = (m1 * c_t + (1 << 14)) >> 15
        total = 31 - (cs + lr[1]) - e_y - r
        new = []
        for gv, wv in zip(gs, view.reshape(-1).tolist(), strict=True):
            x = prng.next_state(x)
            prod = -gv * mult
            if total <= 0:
                d = max(min(prod << -total, 256), -256) if prod else 0
            elif total <= 32:
                d = (prod + (x & ((1 << total) - 1))) >> total
            else:
                d = (rdbp(prod, min(total - 32, 62)) + x) >> 32
            new.append(max(min(wv + d, 127), -127))
        if depthwise:
            out[0, :, :, channels[row]] = np.array(new).reshape(view.shape)
        else:
            out[row][..., channels] = np.array(new).reshape(view.shape)
    return out.astype(np.int8), x


# (e_y, gradient magnitude, lr): total right shifts R > 32, 1..32 and <= 0
CASES_R = (
    (-20, 2**20, 0.01),
    (-30, 2**40, 1e-4),
    (-26, 2**44, 0.003),
    (-50, 5, 0.001),
    (0, 2**14, 0.5),
    (5, 2**10, 0.5),
    (20, 2**8, 1.0),
    (28, 16, 0.5),
    (40, 16, 4.0),
)


@pytest.mark.parametrize("kind", [OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED])
def test_weight_update_matches_scalar_reference(kind: OpKind) -> None:
    rng = np.random.default_rng(6)
    shape = {OpKind.CONV_2D: (5, 3, 3, 6), OpKind.DEPTHWISE_CONV_2D: (1, 3, 3, 7), OpKind.FULLY_CONNECTED: (5, 9)}[kind]
    dw = kind is OpKind.DEPTHWISE_CONV_2D
    cout = shape[-1] if dw else shape[0]
    scales = np.exp(rng.uniform(np.log(0.002), np.log(0.05), cout))
    p = make_update(kind, 0.02, [float(s) for s in scales])
    w = rng.integers(-128, 128, shape).astype(np.int8)
    channels = [4, 0, 2] if dw else [1, 3, 5]
    sub_shape = w[..., channels].shape
    regimes = set()
    for e_y, mag, lr in CASES_R:
        grad = rng.integers(-mag, mag, sub_shape, dtype=np.int64)
        q_lr = lr_multiplier(lr)
        rows = np.moveaxis(grad, -1, 0).reshape(len(channels), -1) if dw else grad.reshape(cout, -1)
        sh = combine_multipliers(p.w_mult, p.w_shift, q_lr, 30000)[1][channels if dw else slice(None)]
        r_rows = [max(int(v).bit_length() - 30, 0) for v in np.abs(rows).max(axis=1)]
        regimes |= {"left" if r <= 0 else "near" if r <= 32 else "far" for r in (31 - sh - e_y - r_rows).tolist()}
        state = prng.seed_state(1234)
        got = update_weights(p, w, grad, e_y, channels, q_lr, 30000, state)
        ref, x = update_ref(w, grad, e_y, channels, p.w_mult.tolist(), p.w_shift.tolist(), q_lr, 30000, 1234, dw)
        np.testing.assert_array_equal(got, ref)
        assert int(state[0]) == x
        untouched = np.ones(w.shape[-1], dtype=bool)
        untouched[channels] = False
        np.testing.assert_array_equal(got[..., untouched], w[..., untouched])
    assert regimes == {"left", "near", "far"}


def _fc_layer(rng: np.random.Generator, cout: int = 4, cin: int = 6) -> tuple:
    s_in, z_in = 0.03, -20
    scales = np.exp(rng.uniform(np.log(0.005), np.log(0.03), cout))
    kp = linear_bwd.make_linear_backward(
        OpKind.FULLY_CONNECTED, (1, cin), (1, cout), (cout, cin), [float(s) for s in scales], z_in
    )
    up = make_update(OpKind.FULLY_CONNECTED, s_in, [float(s) for s in scales])
    return s_in, z_in, scales, kp, up


def test_one_fc_step_equals_float_sgd_in_expectation() -> None:
    rng = np.random.default_rng(7)
    s_in, z_in, scales, kp, up = _fc_layer(rng)
    cout, cin = 4, 6
    w = rng.integers(-100, 101, (cout, cin)).astype(np.int8)
    b = rng.integers(-5000, 5000, cout).astype(np.int32)
    x = rng.integers(-128, 128, (1, cin)).astype(np.int8)
    g = Grad(rng.integers(-(2**14), 2**14 + 1, (1, cout)).astype(np.int16), -12)
    channels = list(range(cin))
    G = linear_bwd.weight_grad(kp, g, linear_bwd.select_input_channels(kp, x, channels), channels)
    B = linear_bwd.bias_grad(kp, g)
    lr = 0.004
    # float SGD on the dequantized layer, in quantized units
    dL_dy = grad_to_float(g)[0]
    x_real = s_in * (x[0].astype(np.float64) - z_in)
    w_real_step = -lr * np.outer(dL_dy, x_real)
    expect_w = w_real_step / scales[:, None]
    expect_b = -lr * dL_dy / (s_in * scales)
    assert 0.05 < np.abs(expect_w).mean() < 3  # sub-LSB and multi-LSB steps
    state = prng.seed_state(2024)
    runs = 2000
    total = np.zeros((cout, cin))
    for _ in range(runs):
        total += update_weights(up, w, G, g.e, channels, lr_multiplier(lr), 32768, state).astype(np.int64) - w
    mean = total / runs
    np.testing.assert_allclose(mean, expect_w, rtol=0, atol=5 * 0.5 / math.sqrt(runs) + 1e-3)
    new_b = update_bias(up, b, B, g.e, lr_multiplier(lr), 32768)
    assert np.abs((new_b.astype(np.int64) - b) - expect_b).max() <= 0.5 + 1e-3
    # a cosine schedule factor scales the expected step
    c_t = schedule_factor(Schedule.COSINE, 1, 3)
    new_b = update_bias(up, b, B, g.e, lr_multiplier(lr), c_t)
    assert np.abs((new_b.astype(np.int64) - b) - expect_b * c_t / 32768).max() <= 0.5 + 1e-3


def test_weights_stay_in_range_and_biases_saturate() -> None:
    rng = np.random.default_rng(8)
    _, _, _, _, up = _fc_layer(rng)
    w = rng.choice(np.array([-128, -127, -126, 0, 126, 127], dtype=np.int8), (4, 6))
    for e_y, mag in ((0, 2**40), (-10, 2**20), (-40, 2**10)):
        G = rng.integers(-mag, mag, (4, 6), dtype=np.int64)
        new = update_weights(up, w, G, e_y, range(6), lr_multiplier(100.0), 32768, prng.seed_state(5))
        assert new.dtype == np.int8 and new.min() >= -127 and new.max() <= 127
    huge = update_weights(up, w, np.full((4, 6), 2**40), 0, range(6), lr_multiplier(100.0), 32768, prng.seed_state(5))
    assert (huge == -127).all()
    b = np.array([2**31 - 10, -(2**31) + 10, 0, 5], dtype=np.int32)
    B = np.array([-(2**40), 2**40, 2**40, -(2**40)], dtype=np.int64)
    new_b = update_bias(up, b, B, 10, lr_multiplier(100.0), 32768)
    assert new_b.tolist() == [2**31 - 1, -(2**31), -(2**31), 2**31 - 1]


def test_zero_step_changes_nothing_but_still_draws() -> None:
    rng = np.random.default_rng(9)
    _, _, _, _, up = _fc_layer(rng)
    w = rng.integers(-127, 128, (4, 6)).astype(np.int8)
    G = rng.integers(-(2**30), 2**30, (4, 3), dtype=np.int64)
    state = prng.seed_state(77)
    new = update_weights(up, w, G, -20, [0, 2, 4], lr_multiplier(0.1), 0, state)
    np.testing.assert_array_equal(new, w)
    ref = prng.seed_state(77)
    prng.draws(ref, 12)
    assert state[0] == ref[0]


def test_update_is_deterministic() -> None:
    rng = np.random.default_rng(10)
    _, _, _, _, up = _fc_layer(rng)
    w = rng.integers(-127, 128, (4, 6)).astype(np.int8)
    G = rng.integers(-(2**24), 2**24, (4, 6), dtype=np.int64)
    lr = lr_multiplier(0.3)
    a, b, c = prng.seed_state(42), prng.seed_state(42), prng.seed_state(43)
    wa = update_weights(up, w, G, -24, range(6), lr, 32768, a)
    wb = update_weights(up, w, G, -24, range(6), lr, 32768, b)
    wc = update_weights(up, w, G, -24, range(6), lr, 32768, c)
    assert wa.tobytes() == wb.tobytes() and a.tobytes() == b.tobytes()
    assert wa.tobytes() != wc.tobytes()
    with pytest.raises(UsageError):
        update_weights(up, w, G[:, :3], -24, range(6), lr, 32768, a)


def test_cosine_schedule_table() -> None:
    assert len(COSINE_Q15) == 257 and COSINE_Q15[0] == 32768 and COSINE_Q15[128] == 16384 and COSINE_Q15[256] == 0
    assert all(a >= b for a, b in itertools.pairwise(COSINE_Q15))
    assert schedule_factor(Schedule.CONSTANT, 5, 10) == 32768
    assert schedule_factor(Schedule.COSINE, 0, 1000) == 32768
    assert schedule_factor(Schedule.COSINE, 500, 1000) == COSINE_Q15[128]
    assert schedule_factor(Schedule.COSINE, 1000, 1000) == 0
    with pytest.raises(UsageError):
        schedule_factor(Schedule.COSINE, 0, 0)
    with pytest.raises(UsageError):
        lr_multiplier(0.0)
