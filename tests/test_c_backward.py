"""The C backward kernels (firmware_templates/runtime: tt_grad, tt_mask, tt_loss,
tt_linear_bwd, tt_pool_bwd, tt_shape_bwd) byte for byte against their numpy twins in
tinytrain/train/kernels/ and tinytrain/train/executor.py.

Every C call runs in two builds: the runtime as the project compiles it (-O2) and the
same sources with UBSan (-fsanitize=undefined, no recovery), so undefined behaviour
(signed overflow, bad shifts) aborts the test. Inputs are seeded random over the legal
ranges plus the edge cases; the last tests run real training steps of the shipped models
and compare every backward kernel call of the executor with the C kernels.
"""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.testing import c_backward as cb
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, build_shared, load_runtime
from tinytrain.train import executor as executor_mod
from tinytrain.train.executor import add_grads
from tinytrain.train.kernels import linear_bwd, pool_bwd, shape_bwd
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, normalize
from tinytrain.train.kernels.loss import prepare_softmax_ce, softmax_ce_grad
from tinytrain.train.kernels.mask import apply_mask, clamp_mask, mask_nbytes

OWN = ("tt_grad", "tt_mask", "tt_loss", "tt_linear_bwd", "tt_pool_bwd", "tt_shape_bwd")
G_MAX = 1 << GRAD_BITS


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, ...]:
    d = tmp_path_factory.mktemp("c")
    plain = cb.declare(load_runtime(d))
    sources = [RUNTIME_SRC / f"{n}.c" for n in OWN]
    flags = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
    ubsan = cb.declare(ctypes.CDLL(str(build_shared(sources, d, extra_flags=flags, name="ttub"))))
    return plain, ubsan


def same(a: Grad, b: Grad) -> bool:
    return a.e == b.e and a.g.shape == b.g.shape and np.array_equal(a.g, b.g)


def rand_grad(rng: np.random.Generator, shape: tuple[int, ...], mode: str) -> np.ndarray:
    """int16 mantissas: 'random' (|g| <= 2^14, half zeros), 'zero', 'max' (±2^14), 'full' (any int16)."""
    if mode == "zero":
        return np.zeros(shape, np.int16)
    if mode == "max":
        return (rng.choice([-G_MAX, G_MAX], shape)).astype(np.int16)
    if mode == "full":
        return rng.integers(-(1 << 15), 1 << 15, shape).astype(np.int16)
    g = rng.integers(-G_MAX, G_MAX + 1, shape)
    return np.where(rng.random(shape) < 0.5, 0, g).astype(np.int16)


# ---------------------------------------------------------------- normalize / gradient sum


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy's mask at a shift of 63
def test_normalize_matches_numpy(libs: tuple[ctypes.CDLL, ...]) -> None:
    rng = np.random.default_rng(1)
    cases: list[tuple[np.ndarray, int]] = [
        (np.zeros(5, np.int32), 14),
        (np.zeros(0, np.int32), 14),
        (np.array([-(2**31)], np.int32), 14),
        (np.array([-(2**31), 2**31 - 1, 0], np.int32), 1),
        (np.array([1], np.int32), 14),
        (np.array([-1, 1], np.int32), 3),
        (np.array([-(2**63), 2**63 - 1, 5], np.int64), 14),
        (np.array([-(2**63), 2**63 - 1], np.int64), 1),
        (np.array([3, -7], np.int64), 14),
        (np.full(9, 1 << 14, np.int64), 14),
        (np.full(9, -(1 << 14), np.int32), 14),
    ]
    for _ in range(150):
        bits = int(rng.integers(1, GRAD_BITS + 1))
        n = int(rng.integers(1, 40))
        if rng.random() < 0.5:
            a = rng.integers(-(2**31), 2**31, n, dtype=np.int64) >> rng.integers(0, 32)
            cases.append((a.astype(np.int32), bits))
        else:
            a = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64) >> rng.integers(0, 64)
            cases.append((a, bits))
    for acc, bits in cases:
        e_acc = int(rng.integers(-1000, 1000))
        want = normalize(acc, e_acc, bits)
        for lib in libs:
            assert same(cb.c_normalize(lib, acc, e_acc, bits), want), (acc, bits)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_add_grads_matches_numpy(libs: tuple[ctypes.CDLL, ...]) -> None:
    rng = np.random.default_rng(2)
    shape = (1, 3, 5, 4)
    for d in (0, 1, 2, 13, 15, 16, 17, 18, 29, 31, 32, 45, 63, 64, 78, 79):
        for mode_a, mode_b in (("random", "random"), ("full", "full"), ("zero", "random"), ("max", "max")):
            e_lo = int(rng.integers(-60, 20))
            a = Grad(rand_grad(rng, shape, mode_a), e_lo + d)
            b = Grad(rand_grad(rng, shape, mode_b), e_lo)
            for x, y in ((a, b), (b, a)):
                want = add_grads(x, y)
                for lib in libs:
                    assert same(cb.c_add_grads(lib, x, y), want), (d, mode_a, mode_b)
    # in place: out is the first operand
    a, b = Grad(rand_grad(rng, shape, "random"), -20), Grad(rand_grad(rng, shape, "random"), -23)
    want = add_grads(a, b)
    for lib in libs:
        ga, gb = a.g.copy(), b.g.copy()
        e = ctypes.c_int32()
        vp = ctypes.c_void_p
        assert (
            lib.tt_add_grads_s16(
                vp(ga.ctypes.data), -20, vp(gb.ctypes.data), -23, ga.size, vp(ga.ctypes.data), ctypes.byref(e)
            )
            == cb.TT_OK
        )
        assert same(Grad(ga, e.value), want)


# ---------------------------------------------------------------- masks


def test_clamp_mask_and_apply(libs: tuple[ctypes.CDLL, ...]) -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 15, 16, 17, 100, 1001):
        for lo, hi in ((-128, 127), (-128, -128), (127, 127), (-5, 77), (0, 127), (-128, 6), (3, 4)):
            y = rng.integers(-128, 128, n).astype(np.int8)
            y[rng.random(n) < 0.3] = lo
            want = clamp_mask(y, lo, hi)
            g = Grad(rand_grad(rng, (n,), "full"), 7)
            for lib in libs:
                got = cb.c_clamp_mask(lib, y, lo, hi)
                assert got.dtype == np.uint8 and np.array_equal(got, want)
                assert same(cb.c_apply_mask(lib, g, got), apply_mask(g, want))


def test_clamp_mask_in_chunks_equals_whole(libs: tuple[ctypes.CDLL, ...]) -> None:
    """Row-streamed packing (tt_clamp_mask_s8_at, chunks in order) gives the whole mask's bytes,
    whatever the buffer held before."""
    rng = np.random.default_rng(4)
    for n, chunk in ((7 * 3, 7), (5 * 13, 13), (64, 8), (10, 1), (33, 11)):
        y = rng.integers(-128, 128, n).astype(np.int8)
        want = clamp_mask(y, -100, 90)
        for lib in libs:
            mask = rng.integers(0, 256, mask_nbytes(n)).astype(np.uint8)  # garbage before
            for start in range(0, n, chunk):
                part = np.ascontiguousarray(y[start : start + chunk])
                status = lib.tt_clamp_mask_s8_at(
                    ctypes.c_void_p(part.ctypes.data), part.size, -100, 90, ctypes.c_void_p(mask.ctypes.data), start
                )
                assert status == cb.TT_OK
            assert np.array_equal(mask, want)


# ---------------------------------------------------------------- loss


def logits_tensor(classes: int, scale: float, zp: int) -> Tensor:
    return Tensor("logits", (1, classes), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def test_softmax_ce_matches_numpy(libs: tuple[ctypes.CDLL, ...]) -> None:
    rng = np.random.default_rng(5)
    for classes in (1, 2, 3, 10, 17, 100, 1000):
        for scale in (1e-3, 0.03, 0.1, 0.25, 1.0, 6.0):
            p = prepare_softmax_ce(logits_tensor(classes, scale, int(rng.integers(-128, 128))))
            cp = cb.softmax_ce_struct(p)
            batches = [
                rng.integers(-128, 128, classes),
                np.full(classes, 127),
                np.full(classes, -128),
                np.where(np.arange(classes) == classes - 1, 127, -128),
                np.where(np.arange(classes) == 0, -128, 127),
                rng.integers(120, 128, classes),
            ]
            for x in batches:
                logits = x.astype(np.int8).reshape(1, classes)
                for label in sorted({0, classes - 1, int(rng.integers(0, classes))}):
                    want, p_label = softmax_ce_grad(p, logits, label)
                    for lib in libs:
                        got, got_p, pred = cb.c_softmax_ce_grad(lib, cp, logits, label)
                        assert same(got, want) and got_p == p_label, (classes, scale, label)
                        assert pred == int(np.argmax(logits.reshape(-1)))


def test_softmax_ce_refuses_bad_labels_and_params(libs: tuple[ctypes.CDLL, ...]) -> None:
    p = cb.softmax_ce_struct(prepare_softmax_ce(logits_tensor(10, 0.1, 0)))
    x = np.zeros((1, 10), np.int8)
    for lib in libs:
        for label in (-1, 10, 1 << 20):
            with pytest.raises(cb.CKernelError) as err:
                cb.c_softmax_ce_grad(lib, p, x, label)
            assert err.value.status == cb.TT_ERR_RANGE
        for field, value in (("classes", 0), ("classes", 5000), ("input_left_shift", 40), ("diff_min", 1)):
            bad = cb.CSoftmaxCE(cb.TtSoftmaxCEParams.from_buffer_copy(p.struct))
            setattr(bad.struct, field, value)
            with pytest.raises(cb.CKernelError) as err:
                cb.c_softmax_ce_grad(lib, bad, np.zeros((1, 5000), np.int8), 0)
            assert err.value.status == cb.TT_ERR_ARG


# ---------------------------------------------------------------- linear layers


def geometry(h: int, w: int, kh: int, kw: int, sh: int, sw: int, pads: tuple[int, int, int, int]) -> Geometry:
    top, left, bottom, right = pads
    out_h = (h + top + bottom - kh) // sh + 1
    out_w = (w + left + right - kw) // sw + 1
    assert out_h >= 1 and out_w >= 1
    return Geometry(kh, kw, sh, sw, 1, 1, top, left, bottom, right, out_h, out_w)


# (kind, h, w, cin, cout, kh, kw, sh, sw, pads top/left/bottom/right)
LINEAR_CASES: tuple[tuple[Any, ...], ...] = (
    (OpKind.CONV_2D, 5, 7, 6, 9, 1, 1, 1, 1, (0, 0, 0, 0)),
    (OpKind.CONV_2D, 7, 5, 4, 8, 3, 3, 1, 1, (1, 1, 1, 1)),
    (OpKind.CONV_2D, 8, 8, 3, 5, 3, 3, 2, 2, (0, 0, 1, 1)),
    (OpKind.CONV_2D, 9, 7, 5, 4, 3, 3, 2, 2, (1, 1, 1, 1)),
    (OpKind.CONV_2D, 6, 9, 3, 7, 5, 3, 2, 1, (2, 0, 1, 2)),
    (OpKind.CONV_2D, 7, 7, 8, 6, 1, 1, 2, 2, (0, 0, 0, 0)),
    (OpKind.CONV_2D, 1, 1, 5, 3, 3, 3, 1, 1, (1, 1, 1, 1)),
    (OpKind.CONV_2D, 6, 5, 2, 300, 3, 3, 1, 1, (1, 1, 1, 1)),  # bit budget d > 0
    (OpKind.CONV_2D, 11, 4, 3, 4, 3, 2, 3, 2, (0, 1, 2, 0)),
    (OpKind.DEPTHWISE_CONV_2D, 7, 9, 6, 6, 3, 3, 1, 1, (1, 1, 1, 1)),
    (OpKind.DEPTHWISE_CONV_2D, 9, 7, 5, 5, 3, 3, 2, 2, (1, 1, 1, 1)),
    (OpKind.DEPTHWISE_CONV_2D, 8, 8, 4, 4, 3, 3, 2, 2, (0, 0, 1, 1)),
    (OpKind.DEPTHWISE_CONV_2D, 6, 5, 7, 7, 5, 5, 1, 2, (2, 2, 2, 2)),
    (OpKind.DEPTHWISE_CONV_2D, 1, 1, 3, 3, 3, 3, 1, 1, (1, 1, 1, 1)),
    (OpKind.DEPTHWISE_CONV_2D, 5, 6, 3, 3, 2, 4, 1, 3, (1, 0, 0, 3)),
    (OpKind.FULLY_CONNECTED, 1, 1, 37, 10, 1, 1, 1, 1, (0, 0, 0, 0)),
    (OpKind.FULLY_CONNECTED, 3, 1, 16, 5, 1, 1, 1, 1, (0, 0, 0, 0)),
    (OpKind.FULLY_CONNECTED, 1, 1, 4, 5000, 1, 1, 1, 1, (0, 0, 0, 0)),  # d > 0
    (OpKind.FULLY_CONNECTED, 1, 1, 1, 1, 1, 1, 1, 1, (0, 0, 0, 0)),
)


def make_linear(case: tuple[Any, ...], rng: np.random.Generator) -> tuple[linear_bwd.LinearBwdParams, np.ndarray]:
    kind, h, w, cin, cout, kh, kw, sh, sw, pads = case
    n_scales = cin if kind is OpKind.DEPTHWISE_CONV_2D else cout
    scales = [float(s) for s in np.exp(rng.uniform(math.log(1e-4), math.log(0.3), n_scales))]
    if rng.random() < 0.3:
        scales[0] = 0.125  # an exact power of two as the largest scale
    z_in = int(rng.choice([-128, 127, int(rng.integers(-128, 128))]))
    if kind is OpKind.FULLY_CONNECTED:
        w_shape: tuple[int, ...] = (cout, cin)
        p = linear_bwd.make_linear_backward(kind, (h, cin), (h, cout), w_shape, scales, z_in)
    else:
        g = geometry(h, w, kh, kw, sh, sw, pads)
        w_shape = (cout, kh, kw, cin) if kind is OpKind.CONV_2D else (1, kh, kw, cin)
        out_shape = (1, g.out_h, g.out_w, cout)
        p = linear_bwd.make_linear_backward(kind, (1, h, w, cin), out_shape, w_shape, scales, z_in, g)
    return p, rng.integers(-128, 128, w_shape).astype(np.int8)


def subsets(rng: np.random.Generator, n: int) -> list[tuple[int, ...]]:
    perm = tuple(int(c) for c in rng.permutation(n))
    return [(), tuple(range(n)), perm[: max(1, n // 2)], perm[:1]]


def check_linear(
    libs: tuple[ctypes.CDLL, ...],
    p: linear_bwd.LinearBwdParams,
    w_flash: np.ndarray,
    w_cur: np.ndarray,
    channels: tuple[int, ...],
    g_y: Grad,
    x: np.ndarray,
) -> None:
    """Input / bias / weight gradients and the saved channels, C vs numpy. ``w_cur`` equals
    ``w_flash`` outside the trained channels."""
    c = cb.linear_bwd_struct(p, channels)
    want_x = linear_bwd.input_grad(p, w_cur, g_y)
    want_b = linear_bwd.bias_grad(p, g_y)
    w_sub = cb.trained_slice(p.kind, w_cur, channels) if channels else None
    for lib in libs:
        assert lib.tt_linear_bwd_input_scratch_bytes(ctypes.byref(c.struct)) == cb.linear_input_scratch_bytes(p)
        assert same(cb.c_linear_input_grad(lib, c, p, w_flash, g_y, w_sub), want_x)
        assert same(cb.c_linear_input_grad(lib, c, p, w_cur, g_y), want_x)
        assert np.array_equal(cb.c_linear_bias_grad(lib, c, p, g_y), want_b)
    if not channels:
        return
    x_sub = linear_bwd.select_input_channels(p, x, channels)
    want_w = linear_bwd.weight_grad(p, g_y, x_sub, channels)
    for lib in libs:
        assert lib.tt_linear_bwd_weight_row_len(ctypes.byref(c.struct)) == cb.linear_weight_row_len(p, len(channels))
        got_sub = cb.c_select_input_channels(lib, c, x)
        assert np.array_equal(got_sub, x_sub)
        got_w = cb.c_linear_weight_grad(lib, c, p, g_y, got_sub)
        assert got_w.shape == want_w.shape and np.array_equal(got_w, want_w)


@pytest.mark.parametrize("case", LINEAR_CASES, ids=lambda c: f"{c[0].value}-{c[1]}x{c[2]}x{c[3]}-{c[5]}x{c[6]}s{c[7]}")
def test_linear_backward_matches_numpy(libs: tuple[ctypes.CDLL, ...], case: tuple[Any, ...]) -> None:
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    p, w_flash = make_linear(case, rng)
    for mode in ("random", "zero", "max", "random", "full"):  # full: beyond 2^14 the int32 sums may wrap
        g_y = Grad(rand_grad(rng, p.out_shape, mode), int(rng.integers(-40, 5)))
        x = rng.integers(-128, 128, p.in_shape).astype(np.int8)
        for channels in subsets(rng, p.in_channels):
            w_cur = w_flash.copy()
            if channels:  # the trained channels have moved away from the flash copy
                sub = cb.trained_slice(p.kind, w_flash, channels)
                new = rng.integers(-127, 128, sub.shape).astype(np.int8)
                if p.kind is OpKind.FULLY_CONNECTED:
                    w_cur[:, list(channels)] = new
                else:
                    w_cur[..., list(channels)] = new
            check_linear(libs, p, w_flash, w_cur, channels, g_y, x)


def test_linear_worst_case_sum_stays_in_int32(libs: tuple[ctypes.CDLL, ...]) -> None:
    """|g| = 2^14 everywhere and w = -128 everywhere reach the bit budget's bound."""
    rng = np.random.default_rng(6)
    for case in (LINEAR_CASES[1], LINEAR_CASES[7], LINEAR_CASES[10], LINEAR_CASES[17]):
        p, w = make_linear(case, rng)
        w[...] = -128
        g_y = Grad(np.full(p.out_shape, G_MAX, np.int16), 0)
        want = linear_bwd.input_grad(p, w, g_y)
        assert int(np.abs(want.g).max()) > 0
        for lib in libs:
            c = cb.linear_bwd_struct(p, ())
            assert same(cb.c_linear_input_grad(lib, c, p, w, g_y), want)


def test_linear_refuses_bad_params(libs: tuple[ctypes.CDLL, ...]) -> None:
    rng = np.random.default_rng(7)
    p, w = make_linear(LINEAR_CASES[1], rng)
    g_y = Grad(rand_grad(rng, p.out_shape, "random"), 0)
    lib = libs[0]
    for field, value in (
        ("drop", 15),
        ("drop", -1),
        ("in_zp", 128),
        ("kind", 3),
        ("out_h", 9),  # windows leave the padded input
        ("sh", 0),
        ("pad_left", -1),
    ):
        c = cb.linear_bwd_struct(p, (1, 0))
        setattr(c.struct, field, value)
        with pytest.raises(cb.CKernelError) as err:
            cb.c_linear_input_grad(lib, c, p, w, g_y)
        assert err.value.status == cb.TT_ERR_ARG, field
    c = cb.linear_bwd_struct(p, (1, 0))
    c.slot[0] = 0  # slot must invert channels (channels[1] == 0)
    with pytest.raises(cb.CKernelError):
        cb.c_linear_input_grad(lib, c, p, w, g_y)
    c = cb.linear_bwd_struct(p, (1, 0))
    c.mu[0] = 32769
    with pytest.raises(cb.CKernelError):
        cb.c_linear_input_grad(lib, c, p, w, g_y)
    c = cb.linear_bwd_struct(p, (1, 0))
    with pytest.raises(cb.CKernelError) as err:
        cb.c_linear_input_grad(lib, c, p, w, Grad(g_y.g, 1 << 30 | 1))
    assert err.value.status == cb.TT_ERR_RANGE
    # a conv input gradient needs its scratch; a weight row must exist
    e = ctypes.c_int32()
    gy = np.ascontiguousarray(g_y.g)
    gx = np.empty(p.in_shape, np.int16)
    vp = ctypes.c_void_p
    status = lib.tt_linear_bwd_input_s16(
        ctypes.byref(c.struct),
        vp(w.ctypes.data),
        None,
        vp(gy.ctypes.data),
        0,
        vp(gx.ctypes.data),
        ctypes.byref(e),
        None,
    )
    assert status == cb.TT_ERR_ARG
    row = np.empty(64, np.int64)
    xs = np.zeros((*p.in_shape[:3], 2), np.int8)
    for r in (-1, p.out_channels):
        status = lib.tt_linear_bwd_weight_row_s16(
            ctypes.byref(c.struct), vp(gy.ctypes.data), vp(xs.ctypes.data), r, vp(row.ctypes.data)
        )
        assert status == cb.TT_ERR_ARG
    fc, _ = make_linear(LINEAR_CASES[15], rng)
    c = cb.linear_bwd_struct(fc, ())
    c.struct.pad_top = 1  # a fully connected layer has no padding
    with pytest.raises(cb.CKernelError):
        cb.c_linear_bias_grad(lib, c, fc, Grad(np.zeros(fc.out_shape, np.int16), 0))


# ---------------------------------------------------------------- pooling


def mean_params(in_shape: tuple[int, ...], axes: tuple[int, ...]) -> pool_bwd.PoolBwdParams:
    keep = tuple(1 if i in axes else d for i, d in enumerate(in_shape))
    mu, k = pool_bwd.reciprocal_q15(np.asarray([math.prod(in_shape[a] for a in axes)]))
    return pool_bwd.PoolBwdParams(in_shape, keep, None, mu.reshape(()), k)


def avgpool_params(
    h: int, w: int, c: int, kh: int, kw: int, sh: int, sw: int, pads: tuple[int, int, int, int]
) -> pool_bwd.PoolBwdParams:
    g = geometry(h, w, kh, kw, sh, sw, pads)
    counts = pool_bwd._window_counts(g, h, w)
    mu, k = pool_bwd.reciprocal_q15(counts)
    return pool_bwd.PoolBwdParams((1, h, w, c), (1, g.out_h, g.out_w, c), g, mu, k)


POOLS = (
    mean_params((1, 5, 7, 3), (1, 2)),
    mean_params((1, 4, 4, 24), (1, 2)),
    mean_params((1, 3, 5, 2), (2,)),
    mean_params((1, 3, 5, 6), (1, 2, 3)),
    mean_params((1, 6, 4), (1,)),
    mean_params((1, 1, 1, 5), (1, 2)),
    avgpool_params(5, 7, 3, 5, 7, 1, 1, (0, 0, 0, 0)),
    avgpool_params(7, 6, 4, 3, 3, 2, 2, (1, 1, 1, 1)),
    avgpool_params(8, 8, 2, 2, 2, 2, 2, (0, 0, 0, 0)),
    avgpool_params(6, 9, 3, 3, 5, 1, 2, (1, 2, 1, 2)),
    avgpool_params(5, 5, 2, 3, 3, 3, 3, (0, 1, 2, 0)),
)


@pytest.mark.parametrize("p", POOLS, ids=lambda p: f"{'mean' if p.geom is None else 'avgpool'}-{p.in_shape}")
def test_pool_backward_matches_numpy(libs: tuple[ctypes.CDLL, ...], p: pool_bwd.PoolBwdParams) -> None:
    rng = np.random.default_rng(8)
    c = cb.pool_bwd_struct(p)
    for mode in ("random", "zero", "max", "full"):
        g_y = Grad(rand_grad(rng, p.keep_shape, mode), int(rng.integers(-30, 30)))
        want = pool_bwd.pool_input_grad(p, g_y)
        for lib in libs:
            assert same(cb.c_pool_input_grad(lib, c, p, g_y), want), mode


def test_pool_refuses_bad_params(libs: tuple[ctypes.CDLL, ...]) -> None:
    lib = libs[0]
    p = POOLS[0]
    c = cb.pool_bwd_struct(p)
    assert isinstance(c.struct, cb.TtMeanBwdParams)
    c.struct.keep_dims[4] = 2  # neither kept nor reduced
    with pytest.raises(cb.CKernelError) as err:
        cb.c_pool_input_grad(lib, c, p, Grad(np.zeros(p.keep_shape, np.int16), 0))
    assert err.value.status == cb.TT_ERR_SHAPE
    q = POOLS[7]
    c = cb.pool_bwd_struct(q)
    assert isinstance(c.struct, cb.TtAvgPoolBwdParams)
    c.struct.out_h = 5  # windows leave the padded input
    with pytest.raises(cb.CKernelError) as err:
        cb.c_pool_input_grad(lib, c, q, Grad(np.zeros(q.keep_shape, np.int16), 0))
    assert err.value.status == cb.TT_ERR_SHAPE


# ---------------------------------------------------------------- ADD / PAD / RESHAPE


@pytest.mark.parametrize(
    ("out_shape", "a_shape", "b_shape"),
    [
        ((1, 4, 5, 6), (1, 4, 5, 6), (1, 4, 5, 6)),
        ((1, 4, 5, 6), (1, 4, 5, 6), (1, 1, 1, 6)),
        ((1, 4, 5, 6), (6,), (1, 4, 1, 6)),
        ((1, 4, 5, 6), (1, 1, 5, 1), (4, 5, 6)),
        ((1, 6), (6,), (1, 1)),
        ((2, 3), (1, 3), (2, 1)),
    ],
)
def test_add_backward_matches_numpy(
    libs: tuple[ctypes.CDLL, ...], out_shape: tuple[int, ...], a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> None:
    rng = np.random.default_rng(9)
    p = shape_bwd.AddBwdParams(out_shape, (a_shape, b_shape), (-128, 127))
    s = cb.add_bwd_struct(p)
    for mode in ("random", "zero", "max", "full"):
        g_y = Grad(rand_grad(rng, out_shape, mode), int(rng.integers(-30, 30)))
        want = shape_bwd.add_input_grads(p, g_y)
        for lib in libs:
            got = cb.c_add_input_grads(lib, s, p, g_y)
            assert same(got[0], want[0]) and same(got[1], want[1]), mode


@pytest.mark.parametrize(
    ("in_shape", "pads"),
    [
        ((1, 5, 7, 3), ((0, 0), (1, 1), (1, 1), (0, 0))),
        ((1, 5, 7, 3), ((0, 0), (0, 1), (2, 0), (0, 0))),
        ((2, 3), ((1, 2), (3, 0))),
        ((4,), ((2, 5),)),
        ((1, 2, 3, 4, 2), ((0, 1), (1, 0), (0, 0), (2, 2), (1, 1))),
    ],
)
def test_pad_and_reshape_backward_match_numpy(
    libs: tuple[ctypes.CDLL, ...], in_shape: tuple[int, ...], pads: tuple[tuple[int, int], ...]
) -> None:
    rng = np.random.default_rng(10)
    p = shape_bwd.PadBwdParams(in_shape, pads)
    out_shape = tuple(d + lo + hi for d, (lo, hi) in zip(in_shape, pads, strict=True))
    s = cb.pad_bwd_struct(p)
    g_y = Grad(rand_grad(rng, out_shape, "full"), -9)
    want = shape_bwd.pad_input_grad(p, g_y)
    flat = (math.prod(in_shape),)
    for lib in libs:
        assert same(cb.c_pad_input_grad(lib, s, p, g_y), want)
        assert same(cb.c_pad_input_grad(lib, s, p, g_y, in_place=True), want)
        r = shape_bwd.ReshapeBwdParams(flat)
        assert same(cb.c_reshape_input_grad(lib, flat, want), shape_bwd.reshape_input_grad(r, want))
    bad = cb.pad_bwd_struct(p)
    bad.before[5] = out_shape[-1]  # the slice leaves the output
    with pytest.raises(cb.CKernelError) as err:
        cb.c_pad_input_grad(libs[0], bad, p, g_y)
    assert err.value.status == cb.TT_ERR_SHAPE


# ---------------------------------------------------------------- real training steps


class StepChecker:
    """Wraps the executor's kernel calls: each numpy result is compared with the C kernels
    (both builds) on the same inputs, then returned unchanged."""

    def __init__(self, libs: tuple[ctypes.CDLL, ...], graph: Any) -> None:
        self.libs = libs
        self.graph = graph
        self.counts: Counter[str] = Counter()

    def save_forward(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def run(bp: Any, args: Any, outs: Any) -> Any:
            saved = orig(bp, args, outs)
            for lib in self.libs:
                if bp.clamp is not None:
                    assert np.array_equal(cb.c_clamp_mask(lib, outs[0], *bp.clamp), saved.mask)
                    self.counts["mask"] += 1
                if bp.save_channels:
                    c = cb.linear_bwd_struct(bp.kernel, bp.save_channels)
                    assert np.array_equal(cb.c_select_input_channels(lib, c, args[0]), saved.x_sub)
                    self.counts["save"] += 1
            return saved

        return run

    def softmax_ce_grad(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def run(p: Any, logits: np.ndarray, label: int) -> Any:
            grad, p_label = orig(p, logits, label)
            for lib in self.libs:
                got, got_p, pred = cb.c_softmax_ce_grad(lib, cb.softmax_ce_struct(p), logits, label)
                assert same(got, grad) and got_p == p_label and pred == int(np.argmax(logits.reshape(-1)))
            self.counts["loss"] += 1
            return grad, p_label

        return run

    def add_grads(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def run(a: Grad, b: Grad) -> Grad:
            out: Grad = orig(a, b)
            for lib in self.libs:
                assert same(cb.c_add_grads(lib, a, b), out)
            self.counts["add_grads"] += 1
            return out

        return run

    def run_backward(self, orig: Callable[..., Any]) -> Callable[..., Any]:
        def run(bp: Any, g_out: Grad, saved: Any, weight: np.ndarray | None = None) -> Any:
            res = orig(bp, g_out, saved, weight)
            g = g_out
            for lib in self.libs:
                if bp.clamp is not None:
                    g = apply_mask(g_out, saved.mask)
                    assert same(cb.c_apply_mask(lib, g_out, saved.mask), g)
                self.check_rule(lib, bp, g, saved, weight, res)
            return res

        return run

    def check_rule(self, lib: ctypes.CDLL, bp: Any, g: Grad, saved: Any, weight: Any, res: Any) -> None:
        kp = bp.kernel
        req = bp.request
        if isinstance(kp, linear_bwd.LinearBwdParams):
            channels = req.weight_channels
            c = cb.linear_bwd_struct(kp, channels)
            if 0 in req.input_grads:
                flash = self.graph.tensor(bp.op.inputs[1]).data
                w_sub = cb.trained_slice(kp.kind, weight, channels) if channels else None
                split = w_sub is not None and not np.array_equal(flash, weight)
                got = cb.c_linear_input_grad(lib, c, kp, flash if channels else weight, g, w_sub)
                assert same(got, res.input_grads[0]), bp.op.describe()
                self.counts[f"input:{kp.kind.value}" + (":split" if split else "")] += 1
            if channels:
                got_w = cb.c_linear_weight_grad(lib, c, kp, g, saved.x_sub)
                assert np.array_equal(got_w, res.weight_grad), bp.op.describe()
                self.counts[f"weight:{kp.kind.value}"] += 1
            if req.bias:
                assert np.array_equal(cb.c_linear_bias_grad(lib, c, kp, g), res.bias_grad)
                self.counts["bias"] += 1
        elif isinstance(kp, pool_bwd.PoolBwdParams):
            got = cb.c_pool_input_grad(lib, cb.pool_bwd_struct(kp), kp, g)
            assert same(got, res.input_grads[0]), bp.op.describe()
            self.counts["mean" if kp.geom is None else "avgpool"] += 1
        elif isinstance(kp, shape_bwd.AddBwdParams):
            both = cb.c_add_input_grads(lib, cb.add_bwd_struct(kp), kp, g)
            for k, want in res.input_grads.items():
                assert same(both[k], want), bp.op.describe()
            self.counts["add"] += 1
        elif isinstance(kp, shape_bwd.PadBwdParams):
            assert same(cb.c_pad_input_grad(lib, cb.pad_bwd_struct(kp), kp, g), res.input_grads[0])
            self.counts["pad"] += 1
        elif isinstance(kp, shape_bwd.ReshapeBwdParams):
            assert same(cb.c_reshape_input_grad(lib, kp.in_shape, g), res.input_grads[0])
            self.counts["reshape"] += 1
        else:  # pragma: no cover - a new rule needs its C twin here
            raise AssertionError(f"no C twin checked for {type(kp).__name__}")


@pytest.fixture(scope="module")
def shipped_graphs() -> dict[str, Any]:
    from tinytrain.frontends.load import load_model
    from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
    from tinytrain.passes.replace_head import replace_head

    return {n: replace_head(load_model(shipped(n)), 10, "seeded", 0) for n in (CHECKPOINT, MBV2)}


@pytest.fixture(scope="module")
def fmnist_images() -> tuple[np.ndarray, np.ndarray]:
    from tinytrain.datasets import fashion_mnist

    images, labels = fashion_mnist("train")
    return images[:4], labels[:4]


@pytest.mark.parametrize("model", ["mcunet-synthetic.pkl", "mbv2-w0.35-96-int8.tflite"])
@pytest.mark.parametrize("spec", ["bias-only", "tte"])
def test_real_training_steps_match_c(
    libs: tuple[ctypes.CDLL, ...],
    shipped_graphs: dict[str, Any],
    fmnist_images: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    spec: str,
) -> None:
    from tinytrain.train.build import build_training_program
    from tinytrain.train.kernels.schedule import lr_multiplier
    from tinytrain.train.loop import Trainer
    from tinytrain.train.scheme import preset, resolve

    graph = shipped_graphs[model]
    program = build_training_program(graph, resolve(preset(spec, graph), graph))
    trainer = Trainer(program, (28, 28), seed=0)
    images, labels = fmnist_images
    feats = trainer.features(images)
    checker = StepChecker(libs, graph)
    for name in ("save_forward", "softmax_ce_grad", "add_grads", "run_backward"):
        monkeypatch.setattr(executor_mod, name, getattr(checker, name)(getattr(executor_mod, name)))
    for s in range(len(labels)):
        live = {n: f[s : s + 1] for n, f in zip(trainer.boundary, feats, strict=True)}
        trainer.executor.step(live, int(labels[s]), lr_multiplier(0.1), 1 << 15)
    counts = checker.counts
    assert counts["loss"] == len(labels), dict(counts)
    assert counts["bias"] > 0 and counts["mask"] > 0
    assert counts["input:FULLY_CONNECTED"] > 0 and counts["input:CONV_2D"] > 0 and counts["add_grads"] > 0
    assert counts["input:DEPTHWISE_CONV_2D"] > 0 and counts["weight:FULLY_CONNECTED"] > 0
    assert counts["mean"] + counts["avgpool"] > 0 and counts["add"] > 0
    if spec == "tte":  # trained channel subsets: weight gradients and split (flash + RAM) weights
        assert counts["weight:CONV_2D"] > 0 and counts["weight:DEPTHWISE_CONV_2D"] > 0 and counts["save"] > 0
        assert counts["input:CONV_2D:split"] > 0 and counts["input:DEPTHWISE_CONV_2D:split"] > 0


# ---------------------------------------------------------------- toolchain


def own_sources() -> Iterator[Path]:
    for n in OWN:
        yield RUNTIME_SRC / f"{n}.c"


def test_sources_are_integer_only_c99() -> None:
    import re

    for path in [*own_sources(), *(RUNTIME_INCLUDE / f"{n}.h" for n in OWN)]:
        text = re.sub(r"/\*.*?\*/", "", path.read_text(), flags=re.S)
        for word in ("float", "double", "malloc", "printf", "stdio"):
            assert not re.search(rf"\b{word}\b", text), f"{path.name} uses {word}"


def test_arm_cortex_m4_build() -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off"]
    flags += ["-Wall", "-Wextra", "-Werror", "-O2", "-c", f"-I{RUNTIME_INCLUDE}", "-o", "/dev/null"]
    for src in own_sources():
        r = subprocess.run([cc, *flags, str(src)], capture_output=True, text=True)
        assert r.returncode == 0, f"{src.name}:\n{r.stderr}"
