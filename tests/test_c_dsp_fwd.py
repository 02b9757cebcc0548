"""The dsp forward kernels (precomputed requantization ``tt_dsp_rq``, the unrolled 2x2 GEMM,
the gathered-window stem, the pre-extended depthwise) compute the reference backend's bytes.

Host builds (the intrinsics' portable fallbacks): the requantization helper against
``tt_requant_s8`` on random and edge accumulators / multipliers / shifts (fast and generic
channels); ``tt_fc_s8`` and ``tt_fused_block_s8`` of the dsp build against the reference
build with edge multipliers (q = 2^30, 2^30 + 1, 2^31 - 1, 0; shift -31, -1, 0, > 0), odd
sizes, channel counts that are not multiples of 4, stems with 1..5 input channels and
depthwise windows of 1 to 49 taps; and every fused block of the shipped MBV2; the k = 8
channel-record GEMM (one SMMLAR per output) with every channel eligible and one not; the fused
block's residual ADD (its SMMLAR fast path and the reference fallback, both builds) against the
numpy twin's table on every byte pair and random / edge constants. The native
(inline-assembly) requantization runs in QEMU: ``tt_dsp_bench.c`` (tests/test_c_dsp.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from codegen.cparams.forward import TtFcParams, declare_forward
from codegen.cparams.fused_block import Add, FusedBlockC, declare, fused_block_c, run_c_fused_block
from codegen.runtime_sources import RUNTIME_INCLUDE, runtime_sources
from tests.test_fused_block import Case, build
from tinytrain.frontends.load import load_model
from tinytrain.ir.ops import Padding
from tinytrain.models.ship import MBV2, shipped
from tinytrain.passes.fuse_blocks import fuse_frozen_blocks
from tinytrain.testing.cbuild import build_shared

SHIM = r"""
#include "tt_dsp.h"
void tt_test_dsp_rq(int32_t n, const uint32_t *acc, const int32_t *q, const int32_t *shift, const int32_t *zp,
                    const int32_t *lo, const int32_t *hi, int8_t *ref, int8_t *dsp, int32_t *fast) {
    for (int32_t i = 0; i < n; ++i) {
        const tt_dsp_rq r = tt_dsp_rq_make(q[i], shift[i]);
        ref[i] = tt_requant_s8(acc[i], q[i], (int)shift[i], zp[i], lo[i] - zp[i], hi[i] - zp[i]);
        dsp[i] = tt_dsp_rq_s8(acc[i], &r, zp[i], lo[i] - zp[i], hi[i] - zp[i]);
        fast[i] = r.fast;
    }
}
"""

Q_EDGES = np.array([0, 1, 1 << 30, (1 << 30) + 1, (1 << 31) - 1, (1 << 31) - 2, 1518500250], np.int64)
SHIFT_EDGES = np.array([-31, -30, -2, -1, 0, 1, 2], np.int64)


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """(reference build, dsp build) of the runtime, the dsp one with the requantization shim."""
    d = tmp_path_factory.mktemp("c")
    shim = d / "tt_test_dsp_rq.c"
    shim.write_text(SHIM)
    ref = ctypes.CDLL(str(build_shared(runtime_sources("ref"), d, name="ttref")))
    dsp = ctypes.CDLL(str(build_shared([*runtime_sources("dsp"), shim], d, (RUNTIME_INCLUDE,), name="ttdspfwd")))
    for lib in (ref, dsp):
        declare_forward(lib)
        declare(lib)
    return ref, dsp


def _edge_multipliers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (q, shift): a mix of edge values and usual ones (q in (2^30, 2^31), shift < 0)."""
    q = rng.integers((1 << 30) + 1, 1 << 31, n)
    s = rng.integers(-20, 0, n)
    edge = rng.random(n) < 0.4
    q[edge] = rng.choice(Q_EDGES, int(edge.sum()))
    edge = rng.random(n) < 0.4
    s[edge] = rng.choice(SHIFT_EDGES, int(edge.sum()))
    return q.astype(np.int32), s.astype(np.int32)


def test_requant_helper_matches_tt_requant_s8(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    _, dsp = libs
    rng = np.random.default_rng(5)
    n = 400_000
    acc = rng.integers(0, 1 << 32, n, dtype=np.uint64)
    small = rng.random(n) < 0.5  # accumulators of real layers: small magnitudes, both signs
    acc[small] = (rng.integers(-(1 << 20), 1 << 20, int(small.sum())) % (1 << 32)).astype(np.uint64)
    edges = np.array([0, 1, 2**32 - 1, 2**31, 2**31 - 1, 2**31 + 1, 2**30, 3 * 2**30, 2**30 - 1], np.uint64)
    acc[: edges.size * 40] = np.repeat(edges, 40)
    acc = acc.astype(np.uint32)
    q, shift = _edge_multipliers(rng, n)
    q[rng.random(n) < 0.05] *= -1  # negative multipliers (tt_fc_s8 accepts them): the generic path
    q[: edges.size * 40] = np.tile(np.array([1 << 30, (1 << 30) + 1, (1 << 31) - 1, -(1 << 31), 0], np.int32), 72)
    zp = rng.integers(-128, 128, n).astype(np.int32)
    a, b = rng.integers(-128, 128, (2, n))
    lo, hi = np.minimum(a, b).astype(np.int32), np.maximum(a, b).astype(np.int32)
    full = rng.random(n) < 0.5
    lo[full], hi[full] = -128, 127
    ref = np.empty(n, np.int8)
    got = np.empty(n, np.int8)
    fast = np.empty(n, np.int32)
    ptrs = [v.ctypes.data for v in (acc, q, shift, zp, lo, hi, ref, got, fast)]
    dsp.tt_test_dsp_rq(ctypes.c_int32(n), *[ctypes.c_void_p(p) for p in ptrs])
    assert np.array_equal(ref, got)
    assert 0.2 < fast.mean() < 0.8  # both paths ran


# ------------------------------------------------------------------------------ FC / 1x1


def _fc(lib: ctypes.CDLL, s: TtFcParams, x: np.ndarray, w: np.ndarray, bias: np.ndarray, out_c: int) -> np.ndarray:
    y = np.full((x.shape[0], out_c), 0x55, np.int8)
    st = lib.tt_fc_s8(ctypes.byref(s), x.ctypes.data, w.ctypes.data, bias.ctypes.data, None, y.ctypes.data)
    assert st == 0
    return y


@pytest.mark.parametrize("k", [1, 3, 4, 5, 7, 8, 9, 12, 15, 16, 17, 23, 24, 31, 112])
def test_fc_edge_multipliers(libs: tuple[ctypes.CDLL, ctypes.CDLL], k: int) -> None:
    ref, dsp = libs
    rng = np.random.default_rng(k)
    i32p = ctypes.POINTER(ctypes.c_int32)
    for rows, out_c in ((1, 1), (2, 3), (5, 8), (7, 33)):
        x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
        w = rng.integers(-128, 128, (out_c, k), dtype=np.int8)
        bias = rng.integers(-(2**31), 2**31, out_c, dtype=np.int64).astype(np.int32)
        bias[rng.random(out_c) < 0.5] = 0
        q, shift = _edge_multipliers(rng, out_c)
        for in_zp, out_zp, lo, hi in ((-128, -128, -128, 127), (127, 5, -100, 90), (0, 127, -128, 0)):
            s = TtFcParams(rows=rows, in_c=k, out_c=out_c, in_zp=in_zp, w_zp=0, out_zp=out_zp, act_min=lo, act_max=hi,
                           mult=q.ctypes.data_as(i32p), shift=shift.ctypes.data_as(i32p))  # fmt: skip
            assert np.array_equal(_fc(dsp, s, x, w, bias, out_c), _fc(ref, s, x, w, bias, out_c)), (rows, out_c)


# ------------------------------------------------------------------------ fused blocks


def _requantized(fb: FusedBlockC, rng: np.random.Generator) -> FusedBlockC:
    """fb with edge multipliers in every stage."""

    def stage(st):  # type: ignore[no-untyped-def]
        q, s = _edge_multipliers(rng, st.multiplier.size)
        return replace(st, multiplier=np.abs(q).astype(np.int32), shift=np.minimum(s, 30).astype(np.int32))

    lead = stage(fb.lead) if fb.lead is not None else None
    return replace(fb, lead=lead, dw=stage(fb.dw), proj=stage(fb.proj))


def _same(ref: ctypes.CDLL, dsp: ctypes.CDLL, fb: FusedBlockC, x: np.ndarray, stream: bool) -> None:
    want = run_c_fused_block(ref, fb, x, ("lead", "depthwise", "project") if fb.lead else ("depthwise", "project"))
    got = run_c_fused_block(dsp, fb, x, ("lead", "depthwise", "project") if fb.lead else ("depthwise", "project"))
    assert want.status == got.status == 0
    assert np.array_equal(got.output, want.output)
    for r in want.masks:
        assert np.array_equal(got.masks[r], want.masks[r]), r
    if stream:
        s = run_c_fused_block(dsp, fb, x, stream=True)
        assert s.status == 0 and np.array_equal(s.output, want.output)


BLOCKS = [
    *(
        Case(f"stem_cin{c}", 2 * h, 2 * w, c, 3, s, lead="stem", expand=e, cout=o)
        for c, h, w, s, e, o in (
            (1, 5, 7, 1, 5, 3),
            (2, 6, 5, 2, 3, 4),
            (3, 8, 9, 1, 6, 8),
            (3, 7, 6, 2, 3, 5),
            (4, 5, 5, 1, 2, 7),
            (5, 6, 7, 1, 3, 2),
        )
    ),
    Case("stem_pad", 14, 12, 3, 3, 1, lead="stem_pad", expand=6, cout=8),
    *(
        Case(f"dw_k{k}_s{s}_c{c}", h, w, c, k, s, expand=e, cout=o)
        for k, s, c, h, w, e, o in (
            (1, 1, 4, 5, 6, 2, 3),
            (3, 1, 8, 7, 9, 6, 8),
            (3, 2, 8, 9, 8, 6, 8),
            (3, 1, 5, 6, 7, 3, 5),
            (5, 1, 4, 9, 8, 3, 6),
            (5, 2, 3, 11, 9, 5, 7),
            (7, 1, 4, 9, 10, 2, 4),
        )
    ),
    Case("dw_dilated", 11, 11, 8, 3, 1, dilation=2, residual="first"),
    Case("residual_no_lead", 9, 7, 12, 3, 1, lead="none", residual="second"),
    Case("valid_odd", 10, 9, 6, 3, 2, padding=Padding.VALID, expand=5, cout=9),
]


@pytest.mark.parametrize("case", BLOCKS, ids=[c.name for c in BLOCKS])
def test_fused_block_dsp_equals_reference(libs: tuple[ctypes.CDLL, ctypes.CDLL], case: Case) -> None:
    ref, dsp = libs
    rng = np.random.default_rng(len(case.name) * 7919 + case.cin)
    graph = build(case, seed=int(rng.integers(1 << 30)))
    fb = fused_block_c(graph, range(len(graph.ops)))
    x = rng.integers(-128, 128, (2, *fb.in_hwc), dtype=np.int8)
    stream = case.lead.startswith("stem") and not case.residual
    _same(ref, dsp, fb, x, stream)
    for _ in range(3):
        _same(ref, dsp, _requantized(fb, rng), x, stream)


def test_shipped_mbv2_fused_blocks_dsp_equals_reference(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    ref, dsp = libs
    graph = load_model(shipped(MBV2))
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    assert fused.blocks
    rng = np.random.default_rng(11)
    for block in fused.blocks:
        fb = fused_block_c(graph, block.op_indices)
        x = rng.integers(-128, 128, (1, *fb.in_hwc), dtype=np.int8)
        _same(ref, dsp, fb, x, stream=False)


def test_shim_is_not_part_of_the_runtime() -> None:
    assert all(Path(p).name != "tt_test_dsp_rq.c" for p in runtime_sources("dsp"))


# ------------------------------------------------ SMMLAR requantization (k = 8 channel records)


@pytest.mark.parametrize(("seed", "k"), [(0, 8), (1, 8), (2, 8), (3, 8), (4, 12), (5, 16), (6, 192)])
def test_fc_smmlar_requant_matches_reference(libs: tuple[ctypes.CDLL, ctypes.CDLL], seed: int, k: int) -> None:
    """The SMMLAR requantization of tt_dsp_gemm_k8 (k = 8) with every channel eligible
    (q > 2^30, 1 <= r <= 23, |bias| <= 2^29) and one channel just outside (r = 24,
    |bias| = 2^29 + 1, q = 2^30): chunk edges, ReLU-like / full / narrow output ranges, zero
    points at the extremes; other k: the same channels through the pair GEMM."""
    ref, dsp = libs
    rng = np.random.default_rng(100 + seed)
    i32p = ctypes.POINTER(ctypes.c_int32)
    for rows, out_c in ((1, 1), (3, 15), (64, 16), (5, 17), (9, 33), (2, 48)):
        x = rng.integers(-128, 128, (rows, k), dtype=np.int8)
        x[0] = rng.choice([-128, 127], k)
        w = rng.integers(-128, 128, (out_c, k), dtype=np.int8)
        w[0] = rng.choice([-128, 127], k)
        q = rng.integers((1 << 30) + 1, 1 << 31, out_c).astype(np.int32)
        shift = rng.integers(-12 - k // 32, 0, out_c).astype(np.int32)  # mostly unsaturated outputs
        shift[rng.random(out_c) < 0.2] = rng.choice([-23, -1], 1)[0]
        bias = rng.integers(-(1 << 15), 1 << 15, out_c).astype(np.int32)
        bias[rng.random(out_c) < 0.2] = rng.choice([-(1 << 29), 1 << 29, 0], 1)[0]
        variants = [(q, shift, bias)]
        if out_c > 1:  # one channel makes the call ineligible: the older path
            for bad in ("r", "bias", "q"):
                q2, s2, b2 = q.copy(), shift.copy(), bias.copy()
                j = int(rng.integers(out_c))
                if bad == "r":
                    s2[j] = -24
                elif bad == "bias":
                    b2[j] = (1 << 29) + 1
                else:
                    q2[j] = 1 << 30
                variants.append((q2, s2, b2))
        for qv, sv, bv in variants:
            for in_zp, out_zp, lo, hi in (
                (-128, -128, -128, 127),
                (127, 5, -128, 127),
                (-3, 127, -128, 127),
                (0, -128, -128, 127),
                (12, -20, -20, 100),
                (-128, 30, -128, 0),
            ):
                s = TtFcParams(
                    rows=rows,
                    in_c=k,
                    out_c=out_c,
                    in_zp=in_zp,
                    w_zp=0,
                    out_zp=out_zp,
                    act_min=lo,
                    act_max=hi,
                    mult=qv.ctypes.data_as(i32p),
                    shift=sv.ctypes.data_as(i32p),
                )
                want = _fc(ref, s, x, w, bv, out_c)
                assert np.array_equal(_fc(dsp, s, x, w, bv, out_c), want), (rows, out_c, in_zp, out_zp, lo, hi)


# ------------------------------------------------ the residual ADD (src/tt_fused_block.c, both backends)

ADD_Q = np.array([0, 1, (1 << 28) - 1, 1 << 28, 1 << 30, (1 << 30) + 1, 1518500250, (1 << 31) - 1], np.int64)


def _random_add(rng: np.random.Generator) -> Add:
    """ADD constants around the fast path's limits (q >= 2^28, input shifts in [-31, 0], output shift in
    [-23, 0], left shift <= 20; the input of multiplier 2^30 / shift 0), usual TFLite ones, and outside."""

    def q() -> int:
        return int(rng.choice(ADD_Q)) if rng.random() < 0.6 else int(rng.integers(1 << 28, 1 << 31))

    def shift(usual: int) -> int:
        return int(rng.choice([-31, -24, -23, -19, -18, -2, -1, 0, 1, 3])) if rng.random() < 0.6 else usual

    half = rng.random() < 0.5  # TFLite: the input of the larger scale gets q = 2^30, shift 0
    x_q, x_s = q(), shift(-1)
    p_q, p_s = ((1 << 30), 0) if half else (q(), shift(-1))
    if rng.random() < 0.3:
        x_q, x_s, p_q, p_s = p_q, p_s, x_q, x_s
    zps = [-128, -127, -1, 0, 5, 126, 127]
    lo, hi = (-128, 127) if rng.random() < 0.6 else tuple(sorted(int(v) for v in rng.integers(-128, 128, 2)))
    return Add(x_zp=int(rng.choice(zps)), x_multiplier=x_q, x_shift=x_s, p_zp=int(rng.choice(zps)),
               p_multiplier=p_q, p_shift=p_s, left_shift=int(rng.choice([0, 1, 2, 19, 20, 20, 21, 22])),
               out_multiplier=q(), out_shift=shift(-18), out_zp=int(rng.choice(zps)), act_min=lo,
               act_max=hi)  # fmt: skip


def test_residual_add_matches_numpy_table(libs: tuple[ctypes.CDLL, ctypes.CDLL]) -> None:
    """The block's ADD (its fast SMMLAR arithmetic where the constants allow it, the reference
    otherwise) == the numpy twin's table over (block input byte, projection byte), both builds, on
    random and edge ADD constants; the inputs cover all 256 bytes."""
    rng = np.random.default_rng(404)
    graph = build(Case("res", 8, 8, 16, 3, 1, expand=3, residual="first"), seed=3)
    fb = fused_block_c(graph, range(len(graph.ops)))
    assert fb.add is not None
    x = rng.integers(-128, 128, (2, *fb.in_hwc), dtype=np.int8)
    x.reshape(-1)[:256] = np.arange(-128, 128, dtype=np.int8)
    for lib in libs:
        proj = run_c_fused_block(lib, replace(fb, add=None), x)
        assert proj.status == 0
        # the projection bytes vary over the run; vary the block input instead where they repeat
        for trial in range(20):
            add = _random_add(rng) if trial else fb.add
            got = run_c_fused_block(lib, replace(fb, add=add), x)
            assert got.status == 0
            want = add.table()[x.view(np.uint8), proj.output.view(np.uint8)]
            assert np.array_equal(got.output, want), add


ADD_SHIM = r"""
#include "src/tt_fused_block.c"
/* The driver's residual ADD over n value pairs: its fast arithmetic when fb_fast_add_make
 * accepts the constants (returns 1), the reference add_row otherwise (returns 0). */
int32_t tt_test_fb_add(const tt_fb_add *a, int32_t n, const int8_t *x, const int8_t *p, int8_t *out) {
    fb_fast_add f;
    if (fb_fast_add_make(a, &f)) {
        add_row_fast(&f, x, p, out, n);
        return 1;
    }
    add_row(a, x, p, out, n);
    return 0;
}
"""


@pytest.fixture(scope="module")
def add_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The fused block driver with a shim calling its (static) ADD row functions directly."""
    from codegen.runtime_sources import RUNTIME, RUNTIME_SRC

    d = tmp_path_factory.mktemp("add")
    shim = d / "tt_test_fb_add.c"
    shim.write_text(ADD_SHIM)
    lib = ctypes.CDLL(str(build_shared([shim, RUNTIME_SRC / "tt_fused_block_stages.c"], d,
                                       (RUNTIME_INCLUDE, RUNTIME), name="ttfbadd")))  # fmt: skip
    lib.tt_test_fb_add.restype = ctypes.c_int32
    lib.tt_test_fb_add.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def test_residual_add_all_byte_pairs(add_lib: ctypes.CDLL) -> None:
    """Every (input byte, projection byte) pair of the ADD == the numpy twin's table, for random and
    edge constants on both sides of the fast path's limits (and in place: out aliasing the input)."""
    rng = np.random.default_rng(405)
    xv = np.repeat(np.arange(-128, 128, dtype=np.int8), 256)
    pv = np.tile(np.arange(-128, 128, dtype=np.int8), 256)
    fast = 0
    trials = 300
    for trial in range(trials):
        add = _random_add(rng)
        c = add.to_c()
        out = np.empty_like(xv)
        fast += add_lib.tt_test_fb_add(ctypes.byref(c), xv.size, xv.ctypes.data, pv.ctypes.data, out.ctypes.data)
        want = add.table()[xv.view(np.uint8), pv.view(np.uint8)]  # indexed by byte
        assert np.array_equal(out, want), add
        if trial % 50 == 0:
            xi = xv.copy()
            add_lib.tt_test_fb_add(ctypes.byref(c), xi.size, xi.ctypes.data, pv.ctypes.data, xi.ctypes.data)
            assert np.array_equal(xi, want), add
    assert trials // 5 < fast < trials - trials // 10  # both paths taken
