"""The C update / PRNG / schedule / accumulator kernels (firmware_templates/runtime) give the
bytes of their numpy twins (tinytrain/train/kernels/{prng,schedule,update,accumulate}.py,
tinytrain/train/data.py:fmix32, tinytrain/train/executor.py:update_prng_seed): random inputs
over the legal ranges, the real layers of the shipped synthetic MCUNet checkpoint trained
by the executor (bias-only and tte, batch 1, batch 2 with momentum), with the C side
carrying its own weights, biases and PRNG state across 20 steps."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers_c import assert_integer_only, cortex_m4_objects
from tinytrain.ir.ops import OpKind
from tinytrain.testing.c_update import (
    AccBuffers,
    CStruct,
    GradRow,
    acc_struct,
    as_ptr,
    declare,
    mean_values,
    schedule_params,
    sgd_step,
    update_arrays,
    update_struct,
)
from tinytrain.testing.cbuild import load_runtime
from tinytrain.train import executor as executor_mod
from tinytrain.train.data import fmix32
from tinytrain.train.executor import update_prng_seed
from tinytrain.train.kernels import prng
from tinytrain.train.kernels.accumulate import (
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
from tinytrain.train.kernels.schedule import COSINE_Q15, Schedule, lr_multiplier, schedule_factor
from tinytrain.train.kernels.update import (
    UpdateParams,
    combine_multipliers,
    make_update,
    rounding_shift,
    stochastic_shift,
    update_bias,
    update_weights,
)

TT_OK, TT_ERR_ARG = 0, 1
MY_SOURCES = ("tt_prng.c", "tt_schedule.c", "tt_update.c", "tt_update_slice.c", "tt_accumulate.c")
I64_MIN, I64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return declare(load_runtime(tmp_path_factory.mktemp("c")))


def u32p(a: np.ndarray) -> Any:
    return as_ptr(a, ctypes.c_uint32)


def i64p(a: np.ndarray) -> Any:
    return as_ptr(a, ctypes.c_int64)


# ------------------------------------------------------------------ PRNG


@pytest.mark.parametrize("seed", [1, 0xFFFFFFFF, 0x9E3779B9, 0x80000000, 12345])
def test_prng_draws(lib: ctypes.CDLL, seed: int) -> None:
    for n in (0, 1, 5, 64, 65, 1000, 4097):
        s_np = prng.seed_state(seed)
        s_c = np.zeros(1, np.uint32)
        assert lib.tt_prng_seed(u32p(s_c), seed) == TT_OK and int(s_c[0]) == seed
        ref = prng.draws(s_np, n)
        out = np.zeros(max(n, 1), np.uint32)
        assert lib.tt_prng_draws(u32p(s_c), u32p(out), n) == TT_OK
        assert np.array_equal(out[:n], ref)
        assert s_c[0] == s_np[0]


def test_prng_refuses_bad_state(lib: ctypes.CDLL) -> None:
    s = np.zeros(1, np.uint32)
    out = np.zeros(4, np.uint32)
    assert lib.tt_prng_seed(u32p(s), 0) == TT_ERR_ARG
    assert lib.tt_prng_draws(u32p(s), u32p(out), 4) == TT_ERR_ARG  # zero state
    s[0] = 7
    assert lib.tt_prng_draws(u32p(s), u32p(out), -1) == TT_ERR_ARG
    assert lib.tt_prng_draws(u32p(s), None, 3) == TT_ERR_ARG
    assert lib.tt_prng_draws(None, u32p(out), 3) == TT_ERR_ARG
    assert int(s[0]) == 7  # refused calls draw nothing


def test_seeding_hashes(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(0)
    values = [0, 1, 0xFFFFFFFF, 0x2545F491, *rng.integers(0, 2**32, 200).tolist()]
    for v in values:
        assert lib.tt_fmix32(v) == fmix32(v)
        assert lib.tt_update_prng_seed(v) == update_prng_seed(v)
    zero_seed = (1 << 32) - 0x2545F491  # fmix32(0) = 0: the fallback state
    assert update_prng_seed(zero_seed) == 0x9E3779B9 == lib.tt_update_prng_seed(zero_seed)
    for seed in (-5, 2**40 + 3):  # the numpy seed is taken mod 2^32
        assert lib.tt_update_prng_seed(seed % 2**32) == update_prng_seed(seed)


# ------------------------------------------------------------------ schedule


def test_cosine_table(lib: ctypes.CDLL) -> None:
    assert [lib.tt_cosine_q15(j) for j in range(len(COSINE_Q15))] == list(COSINE_Q15)
    assert lib.tt_cosine_q15(-1) == -1 and lib.tt_cosine_q15(len(COSINE_Q15)) == -1


@pytest.mark.parametrize("total", [1, 3, 7, 255, 256, 1000, 60000, 2**31 - 1])
def test_schedule_factor(lib: ctypes.CDLL, total: int) -> None:
    c_t = np.zeros(1, np.int32)
    steps = sorted({0, 1, total // 2, total - 1, total, total + 5, *range(0, min(total, 600), 7)})
    for kind in (Schedule.CONSTANT, Schedule.COSINE):
        sp = schedule_params(kind, total)
        for step in steps:
            if step > 2**31 - 1:
                continue
            assert lib.tt_schedule_factor(ctypes.byref(sp), step, as_ptr(c_t, ctypes.c_int32)) == TT_OK
            assert int(c_t[0]) == schedule_factor(kind, step, total)


def test_schedule_refuses_bad_positions(lib: ctypes.CDLL) -> None:
    c_t = np.zeros(1, np.int32)
    p = as_ptr(c_t, ctypes.c_int32)
    for kind, total, step in ((1, 0, 0), (1, 10, -1), (1, -3, 2), (7, 10, 0)):
        sp = schedule_params(Schedule.CONSTANT, total)
        sp.kind = kind
        assert lib.tt_schedule_factor(ctypes.byref(sp), step, p) == TT_ERR_ARG
    assert lib.tt_schedule_factor(None, 0, p) == TT_ERR_ARG


# ------------------------------------------------------------------ update: element functions


def test_combine_multipliers(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(1)
    q = np.concatenate([[0, 1, 2**30, 2**31 - 1], rng.integers(0, 2**31, 300)]).astype(np.int64)
    shift = rng.integers(-40, 45, q.size).astype(np.int64)
    m, s = np.zeros(1, np.int64), np.zeros(1, np.int64)
    for lr in ((2**31 - 1, -3), (2**30, 7), (0, 0), (int(rng.integers(0, 2**31)), -12)):
        for c_t in (0, 1, 16384, 32767, 32768):
            step = sgd_step(lr, c_t)
            ref_m, ref_s = combine_multipliers(q, shift, lr, c_t)
            for k in range(q.size):
                assert lib.tt_update_combine(ctypes.byref(step), int(q[k]), int(shift[k]), i64p(m), i64p(s)) == TT_OK
                assert int(m[0]) == int(ref_m[k]) and int(s[0]) == int(ref_s[k])
    for bad in (sgd_step((-1, 0), 10), sgd_step((5, 0), -1), sgd_step((5, 0), 32769)):
        assert lib.tt_update_combine(ctypes.byref(bad), 1, 0, i64p(m), i64p(s)) == TT_ERR_ARG


def _products(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values |P| <= 2^61 of every magnitude, incl. 0, ±1 and the extremes."""
    mags = rng.integers(0, 62, n)
    p = rng.integers(0, 2**61, n, dtype=np.int64) >> (61 - mags)
    p = np.where(rng.random(n) < 0.5, -p, p)
    return np.concatenate([p, [0, 1, -1, 2**61, -(2**61), 255, -256, 2**32, -(2**32) - 1]]).astype(np.int64)


def test_stochastic_and_rounding_shift(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(2)
    p = _products(rng, 3000)
    r = rng.integers(-80, 110, p.size).astype(np.int64)
    r[:200] = rng.integers(-3, 3, 200)  # around the branch boundaries
    r[200:260] = 32
    r[260:320] = 33
    u = rng.integers(0, 2**32, p.size).astype(np.uint32)
    u[:50] = 0xFFFFFFFF
    ref_s = stochastic_shift(p, r, u)
    ref_r = rounding_shift(p, r)
    c_s = [lib.tt_update_stochastic_shift(int(a), int(b), int(c)) for a, b, c in zip(p, r, u, strict=True)]
    c_r = [lib.tt_update_rounding_shift(int(a), int(b)) for a, b in zip(p, r, strict=True)]
    assert np.array_equal(np.asarray(c_s, np.int64), ref_s)
    assert np.array_equal(np.asarray(c_r, np.int64), ref_r)
    assert {256, -256} <= set(ref_s.tolist()) and {2**32, -(2**32)} <= set(ref_r.tolist())  # saturation hit


# ------------------------------------------------------------------ update: weights and biases


@dataclass(frozen=True)
class Layer:
    kind: OpKind
    w_shape: tuple[int, ...]
    channels: tuple[int, ...]  # trained input channels (depthwise: channels)

    @property
    def cout(self) -> int:
        return self.w_shape[-1] if self.kind is OpKind.DEPTHWISE_CONV_2D else self.w_shape[0]


LAYERS = [
    Layer(OpKind.CONV_2D, (6, 3, 3, 5), (0, 2, 4)),
    Layer(OpKind.CONV_2D, (4, 1, 1, 9), (8, 1)),
    Layer(OpKind.CONV_2D, (3, 1, 1, 1), (0,)),
    Layer(OpKind.FULLY_CONNECTED, (10, 16), tuple(range(16))),
    Layer(OpKind.FULLY_CONNECTED, (5, 7), (6, 0, 3)),
    Layer(OpKind.DEPTHWISE_CONV_2D, (1, 3, 3, 8), (5, 0, 7)),
    Layer(OpKind.DEPTHWISE_CONV_2D, (1, 5, 5, 4), (0, 1, 2, 3)),
    Layer(OpKind.DEPTHWISE_CONV_2D, (1, 1, 1, 1), (0,)),
]


def random_scales(rng: np.random.Generator, n: int) -> list[float]:
    """Per-channel weight scales incl. dead channels (≈ 3.9e-9) and a flushed 1e-10."""
    s = rng.uniform(0.0005, 0.05, n)
    if n > 2:
        s[rng.integers(0, n)] = 5e-7 / 127
        s[rng.integers(0, n)] = 1e-10
    return [float(v) for v in s]


def random_grads(rng: np.random.Generator, shape: tuple[int, ...], rows_axis: int) -> np.ndarray:
    """int64 gradients whose rows (output channels) have random magnitudes, incl. all-zero
    rows, ±1 and values up to 2^61."""
    g = rng.integers(-(2**61), 2**61, shape, dtype=np.int64)
    rows = shape[rows_axis]
    bits = rng.integers(0, 62, rows)
    if rows > 1:
        bits[rng.integers(0, rows)] = 0  # an all-zero row
    shifted = np.moveaxis(g, rows_axis, 0) >> (61 - bits).reshape(-1, *([1] * (len(shape) - 1)))
    shifted[bits == 0] = 0
    return np.ascontiguousarray(np.moveaxis(shifted, 0, rows_axis))


def _step_values(rng: np.random.Generator) -> tuple[tuple[int, int], int]:
    lr = lr_multiplier(float(10 ** rng.uniform(-5, 0.5)))
    c_t = int(rng.choice([0, 1, 777, 32767, 32768, int(rng.integers(0, 32769))]))
    return lr, c_t


def c_update_weights(
    lib: ctypes.CDLL,
    cs: CStruct,
    step: Any,
    grad: np.ndarray,
    e_y: int,
    w_slice: np.ndarray,
    state: np.ndarray,
    by_rows: bool,
    layer: Layer,
) -> int:
    """Runs the C update on the slice in place (whole gradient or one row at a time)."""
    wp = as_ptr(w_slice, ctypes.c_int8)
    if not by_rows:
        return int(lib.tt_update_weights_s8(cs.ref(), ctypes.byref(step), i64p(grad), e_y, wp, u32p(state)))
    rows = cs.struct.rows
    for row in range(rows):  # the memory contract: a row's gradient exists alone, contiguous
        if layer.kind is OpKind.DEPTHWISE_CONV_2D:
            g_row = np.ascontiguousarray(grad[..., row].reshape(-1))
        else:
            g_row = np.ascontiguousarray(grad[row].reshape(-1))
        st = lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(step), row, i64p(g_row), e_y, wp, u32p(state))
        if st != TT_OK:
            return int(st)
    return TT_OK


@pytest.mark.parametrize("layer", LAYERS, ids=lambda la: f"{la.kind.value}-{'x'.join(map(str, la.w_shape))}")
def test_update_weights_random(lib: ctypes.CDLL, layer: Layer) -> None:
    rng = np.random.default_rng(LAYERS.index(layer) + 10)
    saturated = 0
    for trial in range(12):
        up = make_update(layer.kind, float(rng.uniform(0.001, 0.1)), random_scales(rng, layer.cout))
        w = rng.integers(-128, 128, layer.w_shape).astype(np.int8)
        ch = np.asarray(layer.channels)
        sub_shape = w[..., ch].shape
        grad = random_grads(rng, sub_shape, -1 if layer.kind is OpKind.DEPTHWISE_CONV_2D else 0)
        e_y = int(rng.choice([-70, -40, -20, -8, 0, 5, 30, int(rng.integers(-60, 40))]))
        lr, c_t = _step_values(rng)
        if trial == 0:  # steps far beyond the int8 range: saturation
            e_y, lr, c_t = 20, lr_multiplier(2.0), 32768
        if trial == 3:
            grad[...] = 0
        seed = int(rng.integers(1, 2**32))
        s_np = prng.seed_state(seed)
        ref = update_weights(up, w, grad, e_y, layer.channels, lr, c_t, s_np)
        cs = update_struct(update_arrays(up, layer.w_shape, layer.channels))
        step = sgd_step(lr, c_t)
        by_rows = bool(trial % 2)
        w_slice = np.ascontiguousarray(w[..., ch])
        s_c = np.array([seed], np.uint32)
        assert c_update_weights(lib, cs, step, grad, e_y, w_slice, s_c, by_rows, layer) == TT_OK
        assert np.array_equal(w_slice, ref[..., ch])
        assert s_c[0] == s_np[0]
        saturated += int(np.any((np.abs(ref[..., ch]) == 127) & (ref[..., ch] != w[..., ch])))
    assert saturated > 0  # some updates overflowed int8 and were clamped


def test_update_bias_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(5)
    hit_limits = set()
    for _ in range(40):
        cout = int(rng.integers(1, 20))
        up = make_update(OpKind.CONV_2D, float(rng.uniform(0.001, 0.1)), random_scales(rng, cout))
        b = rng.integers(-(2**31), 2**31, cout).astype(np.int32)
        b[rng.integers(0, cout)] = 2**31 - 1  # saturated (dead channel) biases
        b[rng.integers(0, cout)] = -(2**31)
        grad = random_grads(rng, (cout,), 0)
        e_y = int(rng.integers(-70, 40))
        lr, c_t = _step_values(rng)
        ref = update_bias(up, b, grad, e_y, lr, c_t)
        cs = update_struct(update_arrays(up, (cout, 1, 1, 1), ()))
        step = sgd_step(lr, c_t)
        out = b.copy()
        assert lib.tt_update_bias_s32(cs.ref(), ctypes.byref(step), i64p(grad), e_y, as_ptr(out, ctypes.c_int32)) == 0
        assert np.array_equal(out, ref)
        hit_limits |= set(ref.tolist()) & {2**31 - 1, -(2**31)}
    assert hit_limits == {2**31 - 1, -(2**31)}


def test_update_refuses_bad_arguments(lib: ctypes.CDLL) -> None:
    up = make_update(OpKind.DEPTHWISE_CONV_2D, 0.02, [0.01] * 4)
    arrays = update_arrays(up, (1, 3, 3, 4), (1, 3))
    cs = update_struct(arrays)
    w = np.zeros((3, 3, 2), np.int8)
    g = np.ones(9, np.int64)
    state = np.array([9], np.uint32)
    step = sgd_step((2**30, -5), 32768)
    wp, gp, sp = as_ptr(w, ctypes.c_int8), i64p(g), u32p(state)
    assert lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(step), 2, gp, 0, wp, sp) == TT_ERR_ARG  # row >= rows
    assert lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(step), -1, gp, 0, wp, sp) == TT_ERR_ARG
    bad_step = sgd_step((2**30, -5), 40000)
    assert lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(bad_step), 0, gp, 0, wp, sp) == TT_ERR_ARG
    zero = np.zeros(1, np.uint32)
    assert lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(step), 0, gp, 0, wp, u32p(zero)) == TT_ERR_ARG
    cs.struct.row_channel = None  # depthwise rows need their channels
    assert lib.tt_update_weight_row_s8(cs.ref(), ctypes.byref(step), 0, gp, 0, wp, sp) == TT_ERR_ARG
    bad_ch = update_struct(update_arrays(up, (1, 3, 3, 4), (1, 3)))
    bad_ch.arrays[-1][1] = 4  # channel index out of range
    assert lib.tt_update_weight_row_s8(bad_ch.ref(), ctypes.byref(step), 1, gp, 0, wp, sp) == TT_ERR_ARG
    src = GradRow(g.ctypes.data, 3, 1, 1)  # 3-byte elements do not exist
    assert lib.tt_update_weight_row_src_s8(bad_ch.ref(), ctypes.byref(step), 0, ctypes.byref(src), 0, wp, sp) == 1
    b = np.zeros(4, np.int32)
    assert lib.tt_update_bias_one_s32(cs.ref(), ctypes.byref(step), 4, 1, 0, as_ptr(b, ctypes.c_int32)) == 1
    assert np.all(w == 0) and int(state[0]) == 9 and np.all(b == 0)


# ------------------------------------------------------------------ accumulators


def acc_equal(a: AccBuffers, s: AccState) -> bool:
    return bool(a.m.dtype == s.m.dtype and np.array_equal(a.m, s.m) and np.array_equal(a.e, s.e) and int(a.n[0]) == s.n)


ACCS = [
    ("conv", lambda bits: weight_accumulator(OpKind.CONV_2D, (5, 3, 3, 2), bits)),
    ("fc", lambda bits: weight_accumulator(OpKind.FULLY_CONNECTED, (4, 7), bits)),
    ("dw", lambda bits: weight_accumulator(OpKind.DEPTHWISE_CONV_2D, (1, 3, 3, 6), bits)),
    ("bias", lambda bits: bias_accumulator(9, bits)),
]


def _acc_grads(rng: np.random.Generator, acc: GradAccumulator, k: int) -> tuple[np.ndarray, int]:
    """Gradients whose exponents differ by 0, a little, and by more than the guard bits."""
    g = random_grads(rng, acc.shape, acc.row_axis)
    e = int(rng.choice([-20, -20, -15, -55, 10, int(rng.integers(-90, 40))])) if k else -20
    return g, e


@pytest.mark.parametrize("bits", [4, 6, 12, 14, 20, 30])
@pytest.mark.parametrize(("name", "make"), ACCS, ids=[a[0] for a in ACCS])
def test_acc_add_sequence(lib: ctypes.CDLL, name: str, make: Callable[[int], GradAccumulator], bits: int) -> None:
    rng = np.random.default_rng(bits * 7 + len(name))
    acc = make(bits)
    cp = acc_struct(acc)
    assert lib.tt_acc_mantissa_bytes(bits) == np.dtype(acc.dtype).itemsize
    buf = AccBuffers.empty(acc)
    buf.m[...] = 3  # init must clear everything
    buf.e[...] = 9
    st = buf.struct()
    assert lib.tt_acc_init(ctypes.byref(cp), ctypes.byref(st)) == TT_OK
    s = acc_init(acc)
    assert acc_equal(buf, s)
    for k in range(8):
        g, e = _acc_grads(rng, acc, k)
        if k == 3:
            g[...] = 0  # an all-zero sample
        s = acc_add(acc, s, g, e)
        if k % 2:  # streamed: one row at a time, then commit
            for r in range(acc.rows):
                row = np.ascontiguousarray(np.moveaxis(g, acc.row_axis, 0)[r].reshape(-1))
                assert lib.tt_acc_add_row_s64(ctypes.byref(cp), ctypes.byref(st), r, i64p(row), e) == TT_OK
            assert lib.tt_acc_commit(ctypes.byref(st)) == TT_OK
        else:
            assert lib.tt_acc_add_s64(ctypes.byref(cp), ctypes.byref(st), i64p(g), e) == TT_OK
        assert acc_equal(buf, s), k


def test_acc_mean_multiplier(lib: ctypes.CDLL) -> None:
    mu, e_sub = np.zeros(1, np.int32), np.zeros(1, np.int32)
    pm, pe = as_ptr(mu, ctypes.c_int32), as_ptr(e_sub, ctypes.c_int32)
    for b in [*range(1, 70), 127, 128, 129, 1000, 4095, 65535, 65536]:
        assert lib.tt_acc_mean(b, pm, pe) == TT_OK
        assert (int(mu[0]), int(e_sub[0])) == mean_values(b)
        assert int(e_sub[0]) == 30 + mean_multiplier(b)[1]
    for b in (0, -1, 65537):
        assert lib.tt_acc_mean(b, pm, pe) == TT_ERR_ARG


def _filled(rng: np.random.Generator, acc: GradAccumulator, n: int) -> AccState:
    s = acc_init(acc)
    for k in range(n):
        s = acc_add(acc, s, *_acc_grads(rng, acc, k))
    return s


def _buffers(s: AccState) -> AccBuffers:
    return AccBuffers(s.m.copy(), s.e.copy(), np.array([s.n], np.int32))


@pytest.mark.parametrize("bits", [6, 14, 30])
@pytest.mark.parametrize(("name", "make"), ACCS, ids=[a[0] for a in ACCS])
def test_momentum(lib: ctypes.CDLL, name: str, make: Callable[[int], GradAccumulator], bits: int) -> None:
    rng = np.random.default_rng(bits + 100 * len(name))
    acc = make(bits)
    cp = acc_struct(acc)
    v = acc_init(acc)
    buf = _buffers(v)
    st = buf.struct()
    for k, mu_q15 in enumerate((29491, 29491, 0, 32768, 1, 29491)):
        g, e = _acc_grads(rng, acc, k)
        v = mom_step(acc, v, g, e, mu_q15)
        if k % 2:
            for r in range(acc.rows):
                row = np.ascontiguousarray(np.moveaxis(g, acc.row_axis, 0)[r].reshape(-1))
                assert lib.tt_mom_step_row_s64(ctypes.byref(cp), ctypes.byref(st), r, i64p(row), e, mu_q15) == 0
            assert lib.tt_acc_commit(ctypes.byref(st)) == TT_OK
        else:
            assert lib.tt_mom_step_s64(ctypes.byref(cp), ctypes.byref(st), i64p(g), e, mu_q15) == TT_OK
        assert acc_equal(buf, v), k
    # momentum over the mean of a batch accumulator (the executor's flush with momentum)
    for batch in (1, 3, 4):
        gs = _filled(rng, acc, batch)
        g_mean, e_rows = acc_result(acc, gs, gs.n)
        v = mom_step(acc, v, g_mean, e_rows, 29491)
        gbuf = _buffers(gs)
        gst = gbuf.struct()
        mu, e_sub = mean_values(gs.n)
        assert lib.tt_mom_step_acc(ctypes.byref(cp), ctypes.byref(st), ctypes.byref(gst), mu, e_sub, 29491) == 0
        assert acc_equal(buf, v)
    assert lib.tt_mom_step_s64(ctypes.byref(cp), ctypes.byref(st), i64p(g), e, 32769) == TT_ERR_ARG


@pytest.mark.parametrize("layer", LAYERS[:6], ids=lambda la: f"{la.kind.value}-{'x'.join(map(str, la.w_shape))}")
def test_update_from_accumulator(lib: ctypes.CDLL, layer: Layer) -> None:
    """acc_result / acc_value → update_weights_rows / update_bias_rows (per-row exponents)."""
    rng = np.random.default_rng(LAYERS.index(layer) + 40)
    ch = np.asarray(layer.channels)
    for trial in range(4):
        up = make_update(layer.kind, float(rng.uniform(0.001, 0.1)), random_scales(rng, layer.cout))
        w = rng.integers(-127, 128, layer.w_shape).astype(np.int8)
        sub_shape = w[..., ch].shape
        wacc = weight_accumulator(layer.kind, sub_shape, int(rng.choice([6, 14, 30])))
        bacc = bias_accumulator(layer.cout, int(rng.choice([6, 14, 30])))
        batch = int(rng.integers(1, 6))
        ws, bs = _filled(rng, wacc, batch), _filled(rng, bacc, batch)
        lr, c_t = _step_values(rng)
        seed = int(rng.integers(1, 2**32))
        use_value = trial % 2 == 1  # momentum buffers are read as (m, e) with no mean
        if use_value:
            (gw, ew), (gb, eb) = acc_value(ws), acc_value(bs)
            (muw, subw), (mub, subb) = (1, 0), (1, 0)
        else:
            (gw, ew), (gb, eb) = acc_result(wacc, ws, ws.n), acc_result(bacc, bs, bs.n)
            (muw, subw), (mub, subb) = mean_values(ws.n), mean_values(bs.n)
        s_np = prng.seed_state(seed)
        ref_w = update_weights_rows(up, w, gw, ew, list(layer.channels), lr, c_t, s_np)
        b = rng.integers(-(2**31), 2**31, layer.cout).astype(np.int32)
        ref_b = update_bias_rows(up, b, gb, eb, lr, c_t)
        cs = update_struct(update_arrays(up, layer.w_shape, layer.channels))
        step = sgd_step(lr, c_t)
        w_slice = np.ascontiguousarray(w[..., ch])
        s_c = np.array([seed], np.uint32)
        wb, bb = _buffers(ws), _buffers(bs)
        wst, bst = wb.struct(), bb.struct()
        wcp, bcp = acc_struct(wacc), acc_struct(bacc)
        # tt_acc_update_weights_s8's arguments after the accumulator's params
        w_args = (ctypes.byref(wst), muw, subw, cs.ref(), ctypes.byref(step), as_ptr(w_slice, ctypes.c_int8), u32p(s_c))
        st = lib.tt_acc_update_weights_s8(ctypes.byref(wcp), *w_args)
        assert st == TT_OK
        assert np.array_equal(w_slice, ref_w[..., ch]) and s_c[0] == s_np[0]
        out_b = b.copy()
        st = lib.tt_acc_update_bias_s32(
            ctypes.byref(bcp), ctypes.byref(bst), mub, subb, cs.ref(), ctypes.byref(step), as_ptr(out_b, ctypes.c_int32)
        )
        assert st == TT_OK and np.array_equal(out_b, ref_b)
        # a layout mismatch between the accumulator and the slice is refused
        wrong = acc_struct(wacc)
        wrong.row_major = 1 - wrong.row_major
        if wacc.rows > 1:
            assert lib.tt_acc_update_weights_s8(ctypes.byref(wrong), *w_args) == TT_ERR_ARG


def test_acc_refuses_bad_arguments(lib: ctypes.CDLL) -> None:
    acc = weight_accumulator(OpKind.CONV_2D, (2, 1, 1, 3))
    cp = acc_struct(acc)
    buf = AccBuffers.empty(acc)
    st = buf.struct()
    g = np.ones(6, np.int64)
    assert lib.tt_acc_add_row_s64(ctypes.byref(cp), ctypes.byref(st), 2, i64p(g), 0) == TT_ERR_ARG
    bad = acc_struct(acc)
    bad.bits = 31
    assert lib.tt_acc_add_s64(ctypes.byref(bad), ctypes.byref(st), i64p(g), 0) == TT_ERR_ARG
    assert lib.tt_acc_mantissa_bytes(1) == 0 and lib.tt_acc_mantissa_bytes(31) == 0
    assert lib.tt_acc_init(ctypes.byref(cp), None) == TT_ERR_ARG
    assert lib.tt_acc_commit(None) == TT_ERR_ARG
    assert np.all(buf.m == 0) and int(buf.n[0]) == 0


# ------------------------------------------------------------------ real layers, 20 steps with carried state


@dataclass
class CSide:
    """The C program's own trained state: weight slices, biases, the PRNG state, and the
    accumulator / momentum buffers, carried from step to step."""

    lib: ctypes.CDLL
    prng: np.ndarray
    w: dict[int, np.ndarray] = field(default_factory=dict)  # op index -> trained slice
    b: dict[int, np.ndarray] = field(default_factory=dict)
    acc: dict[tuple[int, int], AccBuffers] = field(default_factory=dict)
    mom: dict[tuple[int, int], AccBuffers] = field(default_factory=dict)
    calls: int = 0


class Recorder:
    """Wraps the executor's numpy update entry points: each call also runs the C twin on
    the C side's own state, which must equal the numpy state before and after."""

    def __init__(self, lib: ctypes.CDLL, executor: Any) -> None:
        self.lib = lib
        self.ex = executor
        self.c = CSide(lib, executor.prng.copy())
        self.step: dict[int, Any] = {}

    def _layer(self, up: UpdateParams) -> Any:
        for st in self.ex.program.all_steps:
            if st.params.update is up:
                return st
        raise AssertionError("unknown update params")

    def _slice(self, st: Any, w: np.ndarray) -> np.ndarray:
        j = st.op_index
        ch = np.asarray(st.params.request.weight_channels)
        if j not in self.c.w:
            self.c.w[j] = np.ascontiguousarray(w[..., ch])
        assert np.array_equal(self.c.w[j], w[..., ch])  # the carried C state equals numpy's input
        return self.c.w[j]

    def _bias(self, st: Any, b: np.ndarray) -> np.ndarray:
        j = st.op_index
        if j not in self.c.b:
            self.c.b[j] = np.ascontiguousarray(b.reshape(-1).astype(np.int32))
        assert np.array_equal(self.c.b[j], b.reshape(-1))
        return self.c.b[j]

    def _check_prng(self, state: np.ndarray) -> None:
        assert self.c.prng[0] == state[0]

    def apply_update(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(bp: Any, res: Any, weight: Any, bias: Any, lr: Any, c_t: int, state: np.ndarray) -> Any:
            self._check_prng(state)
            new_w, new_b = orig(bp, res, weight, bias, lr, c_t, state)
            up = bp.update
            if up is None:
                return new_w, new_b
            st = self._layer(up)
            step = sgd_step(lr, c_t)
            if res.weight_grad is not None:
                w_shape = weight.shape
                cs = update_struct(update_arrays(up, w_shape, bp.request.weight_channels))
                sl = self._slice(st, weight)
                ok = c_update_weights(
                    self.lib,
                    cs,
                    step,
                    np.ascontiguousarray(res.weight_grad),
                    res.param_exponent,
                    sl,
                    self.c.prng,
                    True,
                    Layer(up.kind, w_shape, bp.request.weight_channels),
                )
                assert ok == TT_OK
                assert np.array_equal(sl, new_w[..., np.asarray(bp.request.weight_channels)])
            if res.bias_grad is not None:
                cb = self._bias(st, bias)
                cs = update_struct(update_arrays(up, weight.shape if weight is not None else (1, 1, 1, 1), ()))
                g = np.ascontiguousarray(res.bias_grad.astype(np.int64))
                r = self.lib.tt_update_bias_s32(
                    cs.ref(), ctypes.byref(step), i64p(g), res.param_exponent, as_ptr(cb, ctypes.c_int32)
                )
                assert r == TT_OK and np.array_equal(cb, new_b.reshape(-1))
            self._check_prng(state)
            self.c.calls += 1
            return new_w, new_b

        return wrapped


def _fit(program: Any, steps: int, seed: int, lr: float, **kw: Any) -> Any:
    from tinytrain.train.data import Dataset, load_dataset
    from tinytrain.train.loop import TrainConfig, Trainer

    train = load_dataset("fashion-mnist", "train")
    small = Dataset("s", train.images[:steps], train.labels[:steps])
    trainer = Trainer(program, small.sample_shape, seed=seed, **kw)
    return trainer, small, TrainConfig(epochs=1, lr=lr, seed=seed, schedule=Schedule.COSINE)


@pytest.fixture(scope="module")
def ckpt_graph() -> Any:
    from tinytrain.frontends.load import load_model
    from tinytrain.models.ship import CHECKPOINT, shipped
    from tinytrain.passes.replace_head import replace_head

    return replace_head(load_model(shipped(CHECKPOINT)), 10, "zero", 0)


@pytest.mark.parametrize("spec", ["bias-only", "tte"])
def test_executor_updates_20_steps(
    lib: ctypes.CDLL, ckpt_graph: Any, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every update of 20 training steps of the shipped checkpoint (real gradients, dead
    channels, saturated biases, a cosine schedule) through C, with the C side's weights,
    biases and PRNG state carried over from step to step: byte-identical with numpy."""
    from tinytrain.train.build import build_training_program
    from tinytrain.train.scheme import preset, resolve

    program = build_training_program(ckpt_graph, resolve(preset(spec, ckpt_graph), ckpt_graph))
    trainer, data, cfg = _fit(program, 20, 3, 0.05)
    rec = Recorder(lib, trainer.executor)
    monkeypatch.setattr(executor_mod, "apply_update", rec.apply_update(executor_mod.apply_update))
    trainer.fit(data, None, cfg)
    trained = sum(1 for st in program.all_steps if st.trains)
    assert rec.c.calls == 20 * trained
    assert rec.c.prng[0] == trainer.executor.prng[0]
    for j, sl in rec.c.w.items():
        st = program.backward_of(j)
        assert st is not None
        ch = np.asarray(st.params.request.weight_channels)
        assert np.array_equal(sl, trainer.executor.weights[j][..., ch])
    for j, b in rec.c.b.items():
        assert np.array_equal(b, trainer.executor.biases[j].reshape(-1))
    initial = {j: np.asarray(program.graph.tensor(str(program.graph.ops[j].inputs[2])).data) for j in rec.c.b}
    assert any(not np.array_equal(b, initial[j].reshape(-1)) for j, b in rec.c.b.items())  # training moved them
    if spec == "tte":
        assert any(program.graph.ops[j].kind is OpKind.DEPTHWISE_CONV_2D for j in rec.c.w)


def test_executor_batch_and_momentum(lib: ctypes.CDLL, ckpt_graph: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Batch 2 with momentum (tte): every accumulator add, momentum step over the mean and
    update from the momentum buffer of 8 steps through C on the C side's own buffers."""
    from tinytrain.train.build import build_training_program
    from tinytrain.train.scheme import preset, resolve

    program = build_training_program(ckpt_graph, resolve(preset("tte", ckpt_graph), ckpt_graph))
    trainer, data, cfg = _fit(program, 8, 4, 0.01, batch=2, momentum_q15=29491)
    ex = trainer.executor
    c_prng = ex.prng.copy()
    mirrors: list[tuple[AccState, AccBuffers]] = []  # numpy states (kept alive) and their C buffers
    counts = {"add": 0, "mom": 0, "w": 0, "b": 0}

    orig_add, orig_mom = executor_mod.acc_add, executor_mod.mom_step
    orig_w, orig_b = executor_mod.update_weights_rows, executor_mod.update_bias_rows

    def _buf_for(p: GradAccumulator, s: AccState) -> AccBuffers:
        buf = next((b for st, b in mirrors if st is s), None)
        if buf is None:  # a fresh state (acc_init): the C side starts from its own init
            assert s.n == 0 and not np.any(s.m)
            buf = AccBuffers.empty(p)
            buf.m[...] = 1
            st = buf.struct()
            assert lib.tt_acc_init(ctypes.byref(acc_struct(p)), ctypes.byref(st)) == TT_OK
        assert acc_equal(buf, s)
        return buf

    def add(p: GradAccumulator, s: AccState, grad: np.ndarray, e: int) -> AccState:
        buf = _buf_for(p, s)
        out = orig_add(p, s, grad, e)
        cp, st = acc_struct(p), buf.struct()
        g = np.ascontiguousarray(np.asarray(grad, dtype=np.int64))
        assert lib.tt_acc_add_s64(ctypes.byref(cp), ctypes.byref(st), i64p(g), int(e)) == TT_OK
        assert acc_equal(buf, out)
        mirrors.append((out, buf))
        counts["add"] += 1
        return out

    def mom(p: GradAccumulator, v: AccState, grad: np.ndarray, e: Any, mu: int) -> AccState:
        buf = _buf_for(p, v)
        out = orig_mom(p, v, grad, e, mu)
        # the gradient is the mean of the accumulator the executor just read
        src = next(b for _, b in mirrors if b is not buf and _is_mean_of(p, b, grad, e))
        mu_b, e_sub = mean_values(int(src.n[0]))
        cp, st, gst = acc_struct(p), buf.struct(), src.struct()
        assert lib.tt_mom_step_acc(ctypes.byref(cp), ctypes.byref(st), ctypes.byref(gst), mu_b, e_sub, mu) == 0
        assert acc_equal(buf, out)
        mirrors.append((out, buf))
        counts["mom"] += 1
        return out

    def _update_args(
        acc: GradAccumulator, grad: np.ndarray, e_rows: np.ndarray, cs: Any, lr: Any, c_t: int
    ) -> tuple[Any, ...]:
        """The leading arguments of tt_acc_update_weights_s8 / _bias_s32: the C accumulator
        holding ``grad`` (row exponents ``e_rows``), one step from row 0, ``cs``, the SGD step."""
        buf = next(
            b
            for _, b in mirrors
            if b.m.shape == grad.shape and np.array_equal(b.m.astype(np.int64), grad) and np.array_equal(b.e, e_rows)
        )
        st, cp = buf.struct(), acc_struct(acc)
        return (ctypes.byref(cp), ctypes.byref(st), 1, 0, cs.ref(), ctypes.byref(sgd_step(lr, c_t)))

    def upd_w(
        up: UpdateParams,
        w: np.ndarray,
        grad: np.ndarray,
        e_rows: np.ndarray,
        channels: Any,
        lr: Any,
        c_t: int,
        state: np.ndarray,
    ) -> np.ndarray:
        assert c_prng[0] == state[0]
        out = orig_w(up, w, grad, e_rows, channels, lr, c_t, state)
        acc = weight_accumulator(up.kind, grad.shape)
        cs = update_struct(update_arrays(up, w.shape, tuple(channels)))
        ch = np.asarray(channels)
        sl = np.ascontiguousarray(w[..., ch])
        args = _update_args(acc, grad, e_rows, cs, lr, c_t)
        r = lib.tt_acc_update_weights_s8(*args, as_ptr(sl, ctypes.c_int8), u32p(c_prng))
        assert r == TT_OK and np.array_equal(sl, out[..., ch]) and c_prng[0] == state[0]
        counts["w"] += 1
        return out

    def upd_b(up: UpdateParams, b: np.ndarray, grad: np.ndarray, e_rows: np.ndarray, lr: Any, c_t: int) -> np.ndarray:
        out = orig_b(up, b, grad, e_rows, lr, c_t)
        acc = bias_accumulator(grad.size)
        cs = update_struct(update_arrays(up, (grad.size, 1, 1, 1), ()))
        cb = np.ascontiguousarray(b.reshape(-1).astype(np.int32))
        r = lib.tt_acc_update_bias_s32(*_update_args(acc, grad, e_rows, cs, lr, c_t), as_ptr(cb, ctypes.c_int32))
        assert r == TT_OK and np.array_equal(cb, out.reshape(-1))
        counts["b"] += 1
        return out

    monkeypatch.setattr(executor_mod, "acc_add", add)
    monkeypatch.setattr(executor_mod, "mom_step", mom)
    monkeypatch.setattr(executor_mod, "update_weights_rows", upd_w)
    monkeypatch.setattr(executor_mod, "update_bias_rows", upd_b)
    trainer.fit(data, None, cfg)
    trained_w = sum(1 for st in program.all_steps if st.trains and st.params.request.weight_channels)
    trained_b = sum(1 for st in program.all_steps if st.trains and st.params.request.bias)
    assert counts["add"] == 8 * (trained_w + trained_b)
    assert counts["mom"] == 4 * (trained_w + trained_b)
    assert counts["w"] == 4 * trained_w and counts["b"] == 4 * trained_b
    assert c_prng[0] == ex.prng[0]


def _is_mean_of(p: GradAccumulator, buf: AccBuffers, grad: np.ndarray, e: Any) -> bool:
    if buf.m.shape != p.shape or int(buf.n[0]) == 0:
        return False
    mu, e_sub = mean_values(int(buf.n[0]))
    e_rows = np.broadcast_to(np.asarray(e, dtype=np.int64), (p.rows,))
    return bool(np.array_equal(buf.m.astype(np.int64) * mu, np.asarray(grad)) and np.array_equal(buf.e - e_sub, e_rows))


# ------------------------------------------------------------------ Cortex-M4


def test_compiles_for_cortex_m4(tmp_path: Path) -> None:
    for obj in cortex_m4_objects(MY_SOURCES, tmp_path):
        assert_integer_only(obj)
