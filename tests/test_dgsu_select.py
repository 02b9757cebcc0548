"""DGSU selection: the numpy rule (tinytrain/train/kernels/select.py) against its C twin
(firmware_templates/runtime/src/tt_select.c) and against the documented rule, the
traversal promise, and a short simulated run that learns."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunSpec, run_backend
from tinytrain.datasets import fashion_mnist
from tinytrain.errors import UsageError
from tinytrain.models.ship import MBV2, shipped
from tinytrain.testing.c_select import c_layer_signal, c_select_rows, load_select
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, ptr
from tinytrain.train.compile import CompileOptions, compile_model
from tinytrain.train.dgsu import RowCoverage, dgsu_plan_summary
from tinytrain.train.kernels.schedule import Q15_ONE, lr_multiplier
from tinytrain.train.kernels.select import EMA_UNSET, layer_signal, log2_q8, select_rows
from tinytrain.train.loop import Trainer


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    return load_select(tmp_path_factory.mktemp("sel"))


def _reference(score: np.ndarray, age: np.ndarray, k: int, explore: int, magnitude: bool) -> list[int]:
    """The documented rule, written as plain sorting."""
    n = len(score)
    key = [abs(int(s)) if magnitude else int(s) for s in score]
    by_key = sorted(range(n), key=lambda i: (-key[i], -int(age[i]), i))[: k - explore]
    rest = [i for i in range(n) if i not in by_key]
    by_age = sorted(rest, key=lambda i: (-int(age[i]), i))[:explore]
    return sorted(by_key + by_age)


def _cases() -> list[tuple[np.ndarray, np.ndarray, int, int, bool]]:
    rng = np.random.default_rng(0)
    out = []
    for t in range(400):
        n = int(rng.integers(1, 70))
        k = int(rng.integers(0, n + 1))
        explore = int(rng.integers(0, k + 1))
        if t % 7 == 0:
            explore = k  # all by age
        if t % 11 == 0:
            explore = 0  # all by score
        if t % 13 == 0:
            k = n
            explore = int(rng.integers(0, k + 1))
        hi = int(rng.choice([3, 1000, 1 << 40, 1 << 62]))  # small ranges: many ties
        score = rng.integers(-hi, hi, n, dtype=np.int64)
        age = rng.integers(0, int(rng.choice([2, 5, 65536])), n).astype(np.uint16)
        if t % 5 == 0:
            age[rng.integers(0, n)] = 65535  # saturated
        out.append((score, age, k, explore, bool(t % 3)))
    return out


def test_select_matches_rule_and_c(lib: ctypes.CDLL) -> None:
    for score, age, k, explore, magnitude in _cases():
        sel, chosen, new_age = select_rows(score, age, k, explore, magnitude)
        assert sel.tolist() == _reference(score, age, k, explore, magnitude)
        assert chosen.tolist() == [int(i in set(sel.tolist())) for i in range(len(score))]
        assert new_age is not None
        want_age = np.where(chosen == 1, 0, np.minimum(age.astype(np.int64) + 1, 65535))
        assert np.array_equal(new_age, want_age) and new_age.dtype == np.uint16
        st, c_sel, c_chosen, c_age = c_select_rows(lib, score, age, k, explore, magnitude)
        assert st == 0 and c_age is not None
        assert np.array_equal(c_sel, sel) and np.array_equal(c_chosen, chosen) and np.array_equal(c_age, new_age)


def test_select_every_row_without_ages(lib: ctypes.CDLL) -> None:
    score = np.arange(9, dtype=np.int64)
    sel, chosen, age = select_rows(score, None, 9, 0)
    assert sel.tolist() == list(range(9)) and chosen.all() and age is None
    st, c_sel, c_chosen, _ = c_select_rows(lib, score, None, 9, 0)
    assert st == 0 and np.array_equal(c_sel, sel) and np.array_equal(c_chosen, chosen)


@pytest.mark.parametrize(
    ("n", "k", "explore", "age"), [(5, 3, 4, True), (5, 6, 0, True), (5, 3, 1, False), (5, -1, 0, True)]
)
def test_select_refuses_bad_sizes(lib: ctypes.CDLL, n: int, k: int, explore: int, age: bool) -> None:
    score = np.zeros(n, np.int64)
    ages = np.zeros(n, np.uint16) if age else None
    with pytest.raises(UsageError):
        select_rows(score, ages, k, explore)
    st, *_ = c_select_rows(lib, score, ages, max(k, 0) if k >= 0 else k, explore)
    assert st != 0


def test_dgsu_rows_inactive_layer(lib: ctypes.CDLL) -> None:
    """An inactive layer (left out by the layer selection) picks no row and keeps its ages."""
    bg = np.array([5, -9, 2, 0], np.int64)
    age = np.array([3, 1, 4, 1], np.uint16)
    chosen = np.zeros(4, np.uint8)
    sel = np.zeros(2, np.uint16)
    count = np.full(1, -1, np.int32)
    flag = np.zeros(1, np.uint8)
    st = lib.tt_select_dgsu_rows(ptr(bg), 4, ptr(age), 2, 1, ptr(flag), ptr(chosen), ptr(sel), ptr(count))
    assert st == 0 and count[0] == 0 and age.tolist() == [3, 1, 4, 1]
    flag[0] = 1
    st = lib.tt_select_dgsu_rows(ptr(bg), 4, ptr(age), 2, 1, ptr(flag), ptr(chosen), ptr(sel), ptr(count))
    want, _, want_age = select_rows(bg, np.array([3, 1, 4, 1], np.uint16), 2, 1)
    assert st == 0 and count[0] == 2 and sel.tolist() == want.tolist() == [1, 2]
    assert want_age is not None and age.tolist() == want_age.tolist()


def test_layer_signal_matches_c(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(1)
    for t in range(300):
        n = int(rng.integers(1, 40))
        hi = int(rng.choice([1, 2, 300, 1 << 30, 1 << 56]))
        bg = rng.integers(-hi, hi + 1, n, dtype=np.int64)
        if t % 9 == 0:
            bg[:] = 0
        e = int(rng.integers(-200, 60))
        if t % 17 == 0:
            e = int(rng.choice([-(1 << 30), 1 << 30]))  # clamped to ±2^24
        ema = EMA_UNSET if t % 4 == 0 else int(rng.integers(-(1 << 24), (1 << 24) + 1))
        score, new_ema = layer_signal(bg, e, ema)
        assert c_layer_signal(lib, bg, e, ema) == (0, score, new_ema)
    for total in (1, 2, 3, 255, 256, 257, 511, 1 << 40, (1 << 64) - 1):
        for e in (0, -5, 7):
            assert lib.tt_select_log2_q8(total, e) == log2_q8(total, e)
            assert log2_q8(total, e) // 256 == total.bit_length() - 1 + e  # the integer part is floor(log2)
    assert log2_q8(1 << 20, 0) == 20 * 256 and log2_q8(3 << 19, 0) == 20 * 256 + 128


@pytest.mark.parametrize(("n", "k", "explore"), [(56, 3, 1), (336, 16, 4), (40, 8, 8), (7, 2, 1)])
def test_traversal_promise(n: int, k: int, explore: int) -> None:
    """Every row is chosen at least once in any ⌈n/explore⌉ consecutive steps, even when the
    scores always favour the same rows; the fraction of distinct rows trained reaches 1 within
    that window."""
    window = math.ceil(n / explore)
    rng = np.random.default_rng(n)
    fixed = rng.integers(0, 1000, n).astype(np.int64)
    age = np.zeros(n, np.uint16)
    last = np.full(n, -1)
    seen: set[int] = set()
    steps = 4 * window + 10
    for t in range(steps):
        score = fixed if t % 2 else rng.integers(-5, 5, n).astype(np.int64)
        sel, _, new_age = select_rows(score, age, k, explore)
        assert new_age is not None
        age = new_age
        gaps = t - last[sel]
        assert (gaps <= window).all() or t < window
        last[sel] = t
        seen.update(sel.tolist())
        if t == window - 1:
            assert len(seen) == n, f"{len(seen)}/{n} rows after {window} steps"
        assert (t - last <= window).all() or t < window
    assert len(seen) == n


def test_runtime_compiles_for_cortex_m4(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc is not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off"]
    flags += ["-Wall", "-Wextra", "-Werror", "-O2", "-c"]
    r = subprocess.run(
        [cc, *flags, f"-I{RUNTIME_INCLUDE}", str(RUNTIME_SRC / "tt_select.c"), "-o", str(tmp_path / "s.o")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_short_run_learns() -> None:
    """150 steps of dgsu:ratio=0.02 on Fashion-MNIST (zero-initialised head): the model does
    better than its start (uniform, p = 0.1) and than chance on held-out samples; the rows
    trained differ from step to step."""
    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    n = 150
    c = compile_model(shipped(MBV2), CompileOptions("dgsu:ratio=0.02", classes=10, sample_bytes=784))
    spec = RunSpec(x[:n], y[:n].astype(np.int64), xt[:200], seed=1, lr=0.01)
    r = run_backend("sim", c, spec)
    p = np.array([s[0] for s in r.steps])
    assert p[n // 2 :].mean() > 1.5 * 6554
    acc = float(np.mean(r.test_logits.argmax(axis=1) == yt[:200]))
    assert acc > 0.13, acc
    # distinct rows: the observer sees each step's selection
    tr = Trainer(c.program, (28, 28), 1)
    cov = RowCoverage(c.scheme)
    tr.executor.observer = cov
    steps = 12
    feats = tr.features(x[:steps])
    for k in range(steps):
        live = {nm: f[k : k + 1] for nm, f in zip(tr.boundary, feats, strict=True)}
        tr.executor.step(live, int(y[k]), lr_multiplier(0.01), Q15_ONE)
    for plan in c.scheme.dynamic:
        d = plan.dynamic
        assert d is not None
        assert len(cov.seen[plan.layer.weight]) > d.k  # more rows than one step's k were trained
    per_step = cov.fraction_per_step(steps)
    assert per_step == pytest.approx(dgsu_plan_summary(c.scheme)["dgsu"]["fraction_per_step"])
    assert cov.fraction_over_run() > 2 * per_step
