"""Integer gradient accumulation over B samples and momentum (tinytrain.train.kernels.accumulate)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.kernels import prng
from tinytrain.train.kernels.accumulate import (
    GUARD_BITS,
    AccState,
    GradAccumulator,
    acc_add,
    acc_init,
    acc_result,
    acc_value,
    bias_accumulator,
    mean_multiplier,
    mom_step,
    update_bias_rows,
    update_weights_rows,
    weight_accumulator,
)
from tinytrain.train.kernels.schedule import lr_multiplier
from tinytrain.train.kernels.update import make_update, update_bias, update_weights


def rows_of(p: GradAccumulator, a: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(a), p.row_axis, 0).reshape(p.rows, -1)


def exact_rows(p: GradAccumulator, grad: np.ndarray, e_rows: np.ndarray) -> list[list[Fraction]]:
    """Exact real values row by row."""
    g = rows_of(p, grad)
    return [[Fraction(int(v)) * Fraction(2) ** int(e_rows[o]) for v in g[o]] for o in range(p.rows)]


def random_grad(rng: np.random.Generator, shape: tuple[int, ...], max_bits: int) -> np.ndarray:
    """int64 gradient whose rows have random magnitudes up to 2^max_bits."""
    bits = rng.integers(1, max_bits + 1, size=shape[0])
    g = rng.integers(-(1 << 62) + 1, 1 << 62, size=shape, dtype=np.int64)
    return (g >> (62 - bits).reshape(-1, *([1] * (len(shape) - 1)))).astype(np.int64)


def bitlen(v: int) -> int:
    return abs(int(v)).bit_length()


def add_error_bound(p: GradAccumulator, s: AccState, grad: np.ndarray, e: int, new: AccState) -> list[Fraction]:
    """The per-element error bound of one ``acc_add`` as documented in the module docstring."""
    out = []
    g, ms, mn = rows_of(p, grad), rows_of(p, s.m), rows_of(p, new.m)
    for o in range(p.rows):
        top = max(abs(int(v)) for v in g[o])
        r_g = bitlen(top) - p.bits if top else 0
        e_g = e + r_g
        b = Fraction(0)
        if top and r_g > 0:
            b += Fraction(2) ** (e_g - 1)
        if top and np.any(ms[o] != 0):
            e_s = int(s.e[o])
            e_hi, d = max(e_s, e_g), abs(e_s - e_g)
            if d > GUARD_BITS:
                b += Fraction(2) ** (e_hi - GUARD_BITS - 1)
            if np.any(mn[o] != 0) and int(new.e[o]) > e_hi - GUARD_BITS:
                b += Fraction(2) ** (int(new.e[o]) - 1)
        out.append(b)
    return out


# ------------------------------------------------------------------------ accumulation


@pytest.mark.parametrize("bits", [30, 14])
def test_sum_matches_exact_reference_with_very_different_exponents(bits: int) -> None:
    rng = np.random.default_rng(7 + bits)
    p = weight_accumulator(OpKind.CONV_2D, (4, 2, 2, 3), bits)
    s = acc_init(p)
    exact = [[Fraction(0)] * 12 for _ in range(p.rows)]
    bound = [Fraction(0)] * p.rows
    exps = [-90, 40, -30, 5, 5, -60, 20, 0, -10, 38, -89, 1]
    for k, e in enumerate(exps):
        g = random_grad(rng, p.shape, 61)
        if k == 3:
            g[1] = 0  # an all-zero row leaves the row unchanged
        new = acc_add(p, s, g, e)
        for o, b in enumerate(add_error_bound(p, s, g, e, new)):
            bound[o] += b
        for o, row in enumerate(exact_rows(p, g, np.full(p.rows, e))):
            exact[o] = [a + v for a, v in zip(exact[o], row, strict=True)]
        s = new
        assert s.m.dtype == p.dtype and s.n == k + 1
        assert np.abs(s.m.astype(np.int64)).max() <= 1 << bits
        got = exact_rows(p, s.m, s.e)
        for o in range(p.rows):  # after every add: within the accumulated documented bound
            err = max(abs(a - b) for a, b in zip(got[o], exact[o], strict=True))
            assert err <= bound[o], (k, o, float(err), float(bound[o]))
            top = max(abs(v) for v in exact[o])
            assert err <= top * Fraction(2) ** (4 - bits)  # and the bound is small relative to the row


def test_zero_terms_do_not_take_part_in_the_alignment() -> None:
    p = weight_accumulator(OpKind.FULLY_CONNECTED, (2, 3))
    g = np.array([[5, -7, 9], [1, 2, 3]], dtype=np.int64)
    first = acc_add(p, acc_init(p), g, -200)  # empty state (exponent 0): the gradient is kept exactly
    assert exact_rows(p, first.m, first.e) == exact_rows(p, g, np.full(2, -200))
    z = np.zeros((2, 3), dtype=np.int64)
    same = acc_add(p, first, z, 300)  # an all-zero gradient of huge exponent changes nothing
    assert np.array_equal(same.m, first.m) and np.array_equal(same.e, first.e) and same.n == 2
    g2 = g.copy()
    g2[0] = 0
    mixed = acc_add(p, acc_init(p), g2, 7)
    mixed = acc_add(p, mixed, g, -100)  # row 0 was empty at exponent 7: the new term is kept exactly
    assert exact_rows(p, mixed.m, mixed.e)[0] == exact_rows(p, g, np.full(2, -100))[0]


def test_small_gradients_sum_exactly() -> None:
    rng = np.random.default_rng(3)
    p = weight_accumulator(OpKind.FULLY_CONNECTED, (3, 7))
    s = acc_init(p)
    exact = [[Fraction(0)] * 7 for _ in range(3)]
    for e in rng.integers(-4, 5, size=16):  # 12-bit values over 8 octaves, 16 terms: < 30 bits
        g = rng.integers(-(1 << 12), 1 << 12, size=p.shape).astype(np.int64)
        s = acc_add(p, s, g, int(e))
        for o, row in enumerate(exact_rows(p, g, np.full(3, int(e)))):
            exact[o] = [a + v for a, v in zip(exact[o], row, strict=True)]
    assert exact_rows(p, s.m, s.e) == exact


@pytest.mark.parametrize("batch", [1, 3, 4, 7, 64, 256])
def test_mean_of_identical_gradients_is_the_gradient(batch: int) -> None:
    rng = np.random.default_rng(batch)
    p = weight_accumulator(OpKind.DEPTHWISE_CONV_2D, (1, 3, 3, 5))
    g = random_grad(rng, (5, 3, 3, 1), 50).reshape(1, 3, 3, 5)
    s = acc_init(p)
    for _ in range(batch):
        s = acc_add(p, s, g, -33)
    mean, e = acc_result(p, s, batch)
    assert mean.dtype == np.int64 and mean.shape == p.shape and e.shape == (5,)
    got = np.moveaxis(mean, -1, 0).reshape(5, -1).astype(np.float64) * np.exp2(e.astype(np.float64))[:, None]
    want = np.moveaxis(g, -1, 0).reshape(5, -1).astype(np.float64) * 2.0**-33
    top = np.abs(want).max(axis=1, keepdims=True)
    # each add rounds to 30 bits relative to the running sum: ≤ B · 2^-30 of the row max overall
    np.testing.assert_array_less(np.abs(got - want), np.broadcast_to(top * (batch + 2) * 2.0**-30, got.shape))
    if batch & (batch - 1) == 0:  # power of two: the mean is an exponent shift of the sum
        assert np.array_equal(mean, s.m.astype(np.int64) << 30)


def test_power_of_two_mean_of_exact_sum_is_exact() -> None:
    p = bias_accumulator(6)
    g = np.array([3, -5, 0, 1 << 20, -(1 << 20) + 7, 12345], dtype=np.int64)
    s = acc_init(p)
    for _ in range(8):
        s = acc_add(p, s, g, -4)
    mean, e = acc_result(p, s, 8)
    assert exact_rows(p, mean, e) == exact_rows(p, g, np.full(6, -4))


def test_mean_multiplier() -> None:
    for b in (1, 2, 3, 5, 10, 100, 255, 256, 1000, 1 << 16):
        mu, k = mean_multiplier(b)
        assert 1 << k <= b < 2 << k and (1 << 29) < mu <= 1 << 30
        assert abs(Fraction(mu, 1 << (30 + k)) - Fraction(1, b)) <= Fraction(1, 1 << (31 + k))
    assert mean_multiplier(64) == (1 << 30, 6)
    with pytest.raises(UsageError):
        mean_multiplier(0)


def test_bounded_state_worst_case_256() -> None:
    p = weight_accumulator(OpKind.FULLY_CONNECTED, (2, 4))
    worst = np.full(p.shape, (1 << 62) - 1, dtype=np.int64)
    worst[1] = -worst[1]
    s = acc_init(p)
    for k in range(256):
        s = acc_add(p, s, worst if k % 2 == 0 else worst // 3, 60 if k % 2 == 0 else -100)
        assert s.m.dtype == np.int32 and np.abs(s.m.astype(np.int64)).max() <= 1 << 30
        assert np.all(np.abs(s.e) < 1 << 20)
    mean, e = acc_result(p, s, 256)
    assert np.abs(mean).max() <= 1 << 60
    real = mean.astype(np.float64) * np.exp2(e.astype(np.float64))[:, None]
    want = np.full(p.shape, float((1 << 62) - 1) * 2.0**60 * 128 / 256)
    want[1] = -want[1]
    np.testing.assert_allclose(real, want, rtol=1e-7)


def test_deterministic_and_inputs_untouched() -> None:
    rng = np.random.default_rng(11)
    p = weight_accumulator(OpKind.CONV_2D, (3, 1, 1, 4))
    grads = [random_grad(rng, p.shape, 40) for _ in range(5)]
    copies = [g.copy() for g in grads]

    def run() -> tuple[bytes, bytes, bytes]:
        s = acc_init(p)
        for k, g in enumerate(grads):
            s = acc_add(p, s, g, k - 20)
        mean, e = acc_result(p, s, 5)
        return s.m.tobytes() + s.e.tobytes(), mean.tobytes(), e.tobytes()

    assert run() == run()
    assert all(np.array_equal(a, b) for a, b in zip(grads, copies, strict=True))


def test_usage_errors() -> None:
    p = weight_accumulator(OpKind.FULLY_CONNECTED, (2, 3))
    s = acc_init(p)
    with pytest.raises(UsageError):
        acc_add(p, s, np.zeros((3, 2), dtype=np.int64), 0)
    with pytest.raises(UsageError):
        acc_add(p, s, np.full((2, 3), 1 << 62, dtype=np.int64), 0)
    with pytest.raises(UsageError):
        acc_add(p, s, np.zeros((2, 3), dtype=np.float32), 0)
    with pytest.raises(UsageError):
        GradAccumulator((2, 3), 0, 31)
    with pytest.raises(UsageError):
        weight_accumulator(OpKind.ADD, (2, 3))
    assert p.state_bytes == 6 * 4 + 2 * 4 + 4
    assert GradAccumulator((10, 10), 0, 14).state_bytes == 100 * 2 + 10 * 4 + 4


# ------------------------------------------------------------------------ the update


@pytest.mark.parametrize("kind", [OpKind.FULLY_CONNECTED, OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D])
def test_row_update_equals_update_with_common_exponent(kind: OpKind) -> None:
    rng = np.random.default_rng(5)
    up = make_update(kind, 0.03, [0.01, 0.02, 0.005, 0.04])
    gshape: tuple[int, ...]
    if kind is OpKind.FULLY_CONNECTED:
        w, channels, gshape = rng.integers(-100, 100, (4, 6)), [0, 2, 5], (4, 3)
    elif kind is OpKind.CONV_2D:
        w, channels, gshape = rng.integers(-100, 100, (4, 2, 2, 6)), [1, 4], (4, 2, 2, 2)
    else:
        w, channels, gshape = rng.integers(-100, 100, (1, 3, 3, 4)), [3, 0], (1, 3, 3, 2)
    w = w.astype(np.int8)
    g = rng.integers(-(1 << 40), 1 << 40, gshape).astype(np.int64)
    lr = lr_multiplier(0.02)
    a, b = prng.seed_state(99), prng.seed_state(99)
    rows = len(channels) if kind is OpKind.DEPTHWISE_CONV_2D else 4
    want = update_weights(up, w, g, -30, channels, lr, 30000, a)
    got = update_weights_rows(up, w, g, np.full(rows, -30), channels, lr, 30000, b)
    assert np.array_equal(got, want) and np.array_equal(a, b)
    bias = rng.integers(-1000, 1000, 4).astype(np.int32)
    gb = rng.integers(-(1 << 40), 1 << 40, 4).astype(np.int64)
    want_b = update_bias(up, bias, gb, -20, lr, 30000)
    assert np.array_equal(update_bias_rows(up, bias, gb, np.full(4, -20), lr, 30000), want_b)


def test_update_of_accumulated_mean_is_sgd_step_in_expectation() -> None:
    rng = np.random.default_rng(2024)
    s_in, scales, lr = 0.02, np.array([0.01, 0.004, 0.03]), 0.05
    up = make_update(OpKind.FULLY_CONNECTED, s_in, scales.tolist())
    pw = weight_accumulator(OpKind.FULLY_CONNECTED, (3, 5))
    pb = bias_accumulator(3)
    batch = 6
    sw, sb = acc_init(pw), acc_init(pb)
    mean_w = np.zeros((3, 5))
    mean_b = np.zeros(3)
    for _ in range(batch):
        e = int(rng.integers(-40, -30))
        gw = random_grad(rng, (3, 5), 36)
        gb = random_grad(rng, (3,), 34)
        sw, sb = acc_add(pw, sw, gw, e), acc_add(pb, sb, gb, e)
        mean_w += gw.astype(np.float64) * 2.0**e / batch
        mean_b += gb.astype(np.float64) * 2.0**e / batch
    # scale so that the float step is a few LSBs (exercises sub-LSB stochastic rounding)
    step_w = -lr * (s_in / scales)[:, None] * mean_w
    step_b = -lr / (s_in * scales) * mean_b
    sh_w = int(np.floor(np.log2(3.0 / np.abs(step_w).max())))
    sh_b = int(np.floor(np.log2(3000.0 / np.abs(step_b).max())))
    step_w, step_b = step_w * 2.0**sh_w, step_b * 2.0**sh_b
    gw_mean, ew = acc_result(pw, sw, batch)
    gb_mean, eb = acc_result(pb, sb, batch)
    w = np.zeros((3, 5), dtype=np.int8)
    trials = 400
    total = np.zeros((3, 5))
    for t in range(trials):
        state = prng.seed_state(t + 1)
        total += update_weights_rows(up, w, gw_mean, ew + sh_w, range(5), lr_multiplier(lr), 32768, state)
    avg = total / trials
    np.testing.assert_array_less(np.abs(avg - step_w), 0.1 + 1e-4 * np.abs(step_w))
    bias = np.zeros(3, dtype=np.int32)
    new_b = update_bias_rows(up, bias, gb_mean, eb + sh_b, lr_multiplier(lr), 32768)
    np.testing.assert_array_less(np.abs(new_b - step_b), 0.5 + 1e-6 * np.abs(step_b))


# ------------------------------------------------------------------------ momentum


def test_momentum_matches_float_recursion() -> None:
    rng = np.random.default_rng(8)
    p = weight_accumulator(OpKind.CONV_2D, (3, 1, 2, 2))
    mu_q = 29491
    v = acc_init(p)
    ref = np.zeros((3, 4))
    for step in range(60):
        e = int(rng.integers(-50, -20))
        g = random_grad(rng, p.shape, 40)
        v = mom_step(p, v, g, e, mu_q)
        ref = ref * (mu_q / 32768) + g.reshape(3, 4).astype(np.float64) * 2.0**e
        m, ev = acc_value(v)
        got = m.reshape(3, 4).astype(np.float64) * np.exp2(ev.astype(np.float64))[:, None]
        top = np.abs(ref).max(axis=1, keepdims=True)
        np.testing.assert_array_less(np.abs(got - ref), np.broadcast_to(top * (step + 1) * 2.0**-28, got.shape))
        assert np.abs(m).max() <= 1 << 30
    with pytest.raises(UsageError):
        mom_step(p, v, np.zeros(p.shape, dtype=np.int64), 0, 40000)


# ------------------------------------------------------------------------ scalar twin (the C reference)


def rdbp(x: int, n: int) -> int:
    """RoundingDivideByPOT on a Python int: x / 2^n, halves away from zero."""
    if n == 0:
        return x
    q, r = divmod(abs(x), 1 << n)
    q += 1 if 2 * r >= 1 << n else 0
    return q if x >= 0 else -q


def norm_ref(a: list[int], e: int, bits: int) -> tuple[list[int], int]:
    top = max(abs(v) for v in a)
    if top == 0:
        return [0] * len(a), e
    r = top.bit_length() - bits
    return ([v << -r for v in a] if r < 0 else [rdbp(v, r) for v in a]), e + r


def add_ref(m: list[int], e: int, g: list[int], eg: int, bits: int) -> tuple[list[int], int]:
    g, eg = norm_ref(g, eg, bits)
    if not any(g):
        return m, e
    if not any(m):
        return g, eg
    (mh, eh), (ml, el) = ((m, e), (g, eg)) if e >= eg else ((g, eg), (m, e))
    d = eh - el
    lo = [v << (30 - d) for v in ml] if d <= 30 else [rdbp(v, min(d - 30, 62)) for v in ml]
    return norm_ref([(h << 30) + t for h, t in zip(mh, lo, strict=True)], eh - 30, bits)


@pytest.mark.parametrize("bits", [30, 14])
def test_bit_exact_against_scalar_twin(bits: int) -> None:
    rng = np.random.default_rng(100 + bits)
    p = weight_accumulator(OpKind.FULLY_CONNECTED, (3, 6), bits)
    s = acc_init(p)
    ref = [([0] * 6, 0) for _ in range(3)]
    for k in range(40):
        e = int(rng.integers(-120, 120)) if k % 3 else int(rng.integers(-3, 3))
        g = random_grad(rng, p.shape, 61)
        g[rng.random(p.shape) < 0.3] = 0
        if k % 7 == 0:
            g[int(rng.integers(0, 3))] = 0
        s = acc_add(p, s, g, e)
        ref = [add_ref(m, er, [int(v) for v in g[o]], e, bits) for o, (m, er) in enumerate(ref)]
        assert s.m.tolist() == [m for m, _ in ref] and s.e.tolist() == [er for _, er in ref]
    for batch in (5, 16, 100):
        mean, e_m = acc_result(p, s, batch)
        k2 = batch.bit_length() - 1
        mu = ((1 << (30 + k2)) + batch // 2) // batch
        assert mean.tolist() == [[v * mu for v in m] for m, _ in ref]
        assert e_m.tolist() == [er - 30 - k2 for _, er in ref]
