"""The C row-streamed fused backward of projection P ← depthwise D ← expansion E
(tt_fused_pde_bwd_s16) gives the bytes of its numpy twin
(tinytrain/train/kernels/fused_bwd_project.py:run_fused_project_backward, itself
byte-identical to the unfused P, D, E backward): random geometries with and without the
ring, clamp masks, folded pads, trained weight channels in P, D and E, all-zero
gradients, the real fused triples of the shipped synthetic MCUNet checkpoint (bias-only);
the scratch is exactly project_scratch_bytes and nothing outside it is written."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codegen.cparams.update import (
    CStruct,
    as_ptr,
    declare,
    fbwd_weights,
    project_arrays,
    project_struct,
)
from tinytrain.ir.ops import NoAttrs, Op, OpKind
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, load_runtime
from tinytrain.train.grad_rules import GRAD_RULES, BackwardParams, BackwardRequest, Saved
from tinytrain.train.kernels.fused_bwd import prepare_fused_expand_dw_backward
from tinytrain.train.kernels.fused_bwd_project import (
    FusedProjectParams,
    prepare_fused_project_backward,
    run_fused_project_backward,
)
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.linear_bwd import make_linear_backward
from tinytrain.train.kernels.mask import pack_mask

TT_OK, TT_ERR_ARG = 0, 1
GUARD = 64  # canary bytes after the scratch
U8 = ctypes.c_uint8


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return declare(load_runtime(tmp_path_factory.mktemp("c")))


# ------------------------------------------------------------------ running both


@dataclass(frozen=True)
class Trained:
    """Current weights: the compiled tensor and, per trained channel of the last axis, the slice."""

    flash: np.ndarray
    channels: tuple[int, ...] = ()
    slice: np.ndarray | None = None

    def current(self) -> np.ndarray:
        w = np.array(self.flash, copy=True)
        if self.channels and self.slice is not None:
            w[..., list(self.channels)] = self.slice.reshape(*w.shape[:-1], len(self.channels))
        return w

    def c(self) -> CStruct:
        if not self.channels:
            return fbwd_weights(self.flash)
        assert self.slice is not None
        return fbwd_weights(self.flash, self.channels, self.slice)


def _u8(a: np.ndarray | None) -> Any:
    return as_ptr(np.ascontiguousarray(a), U8) if a is not None else None


def _i8(a: np.ndarray | None) -> Any:
    return as_ptr(np.ascontiguousarray(a, dtype=np.int8), ctypes.c_int8) if a is not None else None


def run_c(
    lib: ctypes.CDLL,
    fp: FusedProjectParams,
    g_p: Grad,
    saved: tuple[Saved, Saved, Saved],
    weights: tuple[Trained, Trained, Trained],
    params: CStruct | None = None,
) -> tuple[int, dict[str, Any]]:
    """Calls the C kernel with an exactly sized scratch followed by canary bytes."""
    cp = params if params is not None else project_struct(project_arrays(fp))
    size = int(lib.tt_fused_pde_scratch_bytes(cp.ref()))
    if params is None:
        assert size == fp.scratch_bytes
    size = max(size, fp.scratch_bytes)
    raw = np.full((size + GUARD) // 8 + 1, 0x5A5A5A5A5A5A5A5A, dtype=np.uint64)  # 8-byte aligned
    scratch = raw.view(np.uint8)
    base = scratch.ctypes.data
    ke = fp.inner.ke
    g_shape = (ke.in_shape[1], ke.in_shape[2], ke.in_channels)
    g_in = np.full(g_shape, 0x3333, np.int16) if fp.inner.e_input_grad else None
    e_in, e_pd, e_pe = np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.int32)
    sp, sd, se = saved
    wp, wd, we = (w.c() for w in weights)
    status = int(
        lib.tt_fused_pde_bwd_s16(
            cp.ref(), as_ptr(np.ascontiguousarray(g_p.g), ctypes.c_int16), g_p.e, _u8(sp.mask), _u8(sd.mask),
            _u8(se.mask), wp.ref(), wd.ref(), we.ref(), _i8(sd.x_sub), _i8(se.x_sub),
            as_ptr(g_in, ctypes.c_int16), as_ptr(e_in, ctypes.c_int32), as_ptr(e_pd, ctypes.c_int32),
            as_ptr(e_pe, ctypes.c_int32), ctypes.c_void_p(base),
        )
    )  # fmt: skip
    assert np.all(scratch[size:] == 0x5A), "the kernel wrote past its scratch"
    out: dict[str, Any] = {"g_in": g_in, "e_in": int(e_in[0]), "e_d": int(e_pd[0]), "e_e": int(e_pe[0])}
    if status != TT_OK:
        return status, out
    c = fp.channels
    pa = project_arrays(fp)
    d_off, dw_off, ed_off, ring_off = pa.scratch_offsets()
    assert ring_off + pa.ring_bytes() == size
    ex = lib.tt_fused_pde_exponents(cp.ref(), ctypes.c_void_p(base))
    if pa.ring_bytes() >= 8:
        assert ctypes.cast(ex, ctypes.c_void_p).value == base + ring_off
        assert list(scratch[ring_off : ring_off + 8].view(np.int32)) == [out["e_d"], out["e_e"]]
    else:
        assert not ex
    ed = ctypes.c_void_p(lib.tt_fused_pde_ed_scratch(cp.ref(), ctypes.c_void_p(base))).value
    assert ed == base + ed_off
    req_d, req_e = fp.inner.d.request, fp.inner.e.request
    kd, geom_e = fp.inner.kd, ke.geom
    assert kd.geom is not None and geom_e is not None
    if req_d.bias:
        out["d_bias"] = scratch[d_off : d_off + 8 * c].view(np.int64).copy()
        assert ctypes.cast(lib.tt_fused_pde_d_bias_grad(cp.ref(), ctypes.c_void_p(base)), ctypes.c_void_p).value == base
    n_d = len(req_d.weight_channels)
    if n_d:
        count = kd.geom.kh * kd.geom.kw * n_d
        out["d_weight"] = scratch[dw_off : dw_off + 8 * count].view(np.int64).reshape(1, kd.geom.kh, kd.geom.kw, n_d)
        ptr = lib.tt_fused_pde_d_weight_grad(cp.ref(), ctypes.c_void_p(base))
        assert ctypes.cast(ptr, ctypes.c_void_p).value == base + dw_off
    off = ed_off
    if req_e.bias:
        out["e_bias"] = scratch[off : off + 8 * c].view(np.int64).copy()
        off += 8 * c
    n_e = len(req_e.weight_channels)
    if n_e:
        count = c * geom_e.kh * geom_e.kw * n_e
        out["e_weight"] = scratch[off : off + 8 * count].view(np.int64).reshape(c, geom_e.kh, geom_e.kw, n_e).copy()
    return status, out


def compare(
    lib: ctypes.CDLL,
    fp: FusedProjectParams,
    g_p: Grad,
    saved: tuple[Saved, Saved, Saved],
    weights: tuple[Trained, Trained, Trained],
) -> dict[str, Any]:
    """C vs numpy (numpy on the patched whole tensors): D's and E's gradients, exponents,
    E's input gradient."""
    w_p, w_d, w_e = (w.current() for w in weights)
    g_in, _, res_d, res_e = run_fused_project_backward(fp, g_p, *saved, w_p, w_d, w_e)
    status, got = run_c(lib, fp, g_p, saved, weights)
    assert status == TT_OK
    assert got["e_d"] == res_d.param_exponent and got["e_e"] == res_e.param_exponent
    if g_in is None:
        assert got["g_in"] is None
    else:
        assert got["e_in"] == g_in.e and np.array_equal(got["g_in"], g_in.g.reshape(got["g_in"].shape))
    for key, ref in (("d_bias", res_d.bias_grad), ("d_weight", res_d.weight_grad),
                     ("e_bias", res_e.bias_grad), ("e_weight", res_e.weight_grad)):  # fmt: skip
        assert (key in got) == (ref is not None), key
        if ref is not None:
            assert np.array_equal(got[key], ref.reshape(got[key].shape)), key
    return got


# ------------------------------------------------------------------ random geometries


def _geometry(h: int, w: int, k: int, s: int, pads: tuple[int, int] | None) -> Geometry:
    """SAME padding (``pads`` None) or a VALID window over an explicit (folded) pad."""
    if pads is None:

        def same(n: int) -> tuple[int, int, int]:
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            return out, total // 2, total - total // 2

        oh, pt, pb = same(h)
        ow, pl, pr = same(w)
        return Geometry(k, k, s, s, 1, 1, pt, pl, pb, pr, oh, ow)
    before, after = pads
    oh, ow = (h + before + after - k) // s + 1, (w + before + after - k) // s + 1
    return Geometry(k, k, s, s, 1, 1, before, before, after, after, oh, ow)


def _bp(kind: OpKind, kernel: object, request: BackwardRequest, clamp: bool, index: int) -> BackwardParams:
    op = Op(kind, (f"x{index}", f"w{index}", f"b{index}"), (f"y{index}",), NoAttrs(), index)
    return BackwardParams(op, GRAD_RULES[kind], request, kernel, (-128, 127) if clamp else None, None)


@dataclass(frozen=True)
class Case:
    h: int  # D's input (= E's output) is h × w × c
    w: int
    c: int
    cin: int  # E's input channels
    cp: int  # P's output channels
    dk: int  # D's kernel and stride
    ds: int
    pads: tuple[int, int] | None  # D's folded explicit pad (None: SAME)
    e_grad: bool = True
    weights: tuple[int, int, int] = (0, 0, 0)  # trained input channels of P, D, E (gradient + patch)
    masks: tuple[bool, bool, bool] = (True, True, True)
    e_stem: bool = False  # E is a 3×3 stride-2 conv (no input gradient)
    scale: int = 2**14  # |g_P| bound (small: normalizations shift left; 0: all zero)
    bias: bool = True


CASES = [
    Case(9, 9, 12, 5, 4, 3, 1, None),
    Case(10, 8, 8, 4, 6, 3, 2, None, weights=(3, 2, 2)),
    Case(11, 13, 6, 3, 5, 5, 1, None, e_grad=False, weights=(1, 0, 2)),
    Case(12, 12, 7, 5, 3, 5, 2, None, weights=(0, 3, 0), masks=(False, True, False)),
    Case(14, 10, 5, 4, 4, 7, 1, None, masks=(True, False, True), bias=False, weights=(2, 0, 0)),
    Case(10, 10, 8, 6, 4, 3, 2, (0, 1), weights=(2, 1, 0)),
    Case(9, 11, 5, 4, 3, 3, 2, (1, 1), e_grad=False),
    Case(13, 9, 4, 3, 5, 5, 2, (1, 2), weights=(0, 1, 2)),
    Case(16, 12, 5, 3, 4, 7, 2, (2, 3), masks=(False, False, False)),
    Case(8, 8, 6, 3, 4, 3, 1, None, e_stem=True, weights=(1, 1, 2)),
    Case(7, 5, 4, 3, 3, 3, 1, (0, 3), weights=(1, 2, 0)),  # D's last output row reads only padding
    Case(7, 6, 5, 4, 3, 3, 1, None, scale=3),
    Case(6, 6, 4, 3, 3, 5, 1, None, scale=0, weights=(1, 1, 1)),  # an all-zero gradient
    Case(1, 1, 3, 2, 2, 3, 1, None, weights=(1, 1, 1)),
]


def _random_case(case: Case, rng: np.random.Generator, ring: bool) -> tuple[Any, ...]:
    h, w, c = case.h, case.w, case.c
    dgeom = _geometry(h, w, case.dk, case.ds, case.pads)
    oh, ow = dgeom.out_h, dgeom.out_w
    ek, es = (3, 2) if case.e_stem else (1, 1)
    eh, ew = h * es, w * es
    egeom = _geometry(eh, ew, ek, es, None)
    zp = lambda: int(rng.integers(-128, 128))  # noqa: E731
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, h, w, c), (1, oh, ow, c), (1, case.dk, case.dk, c),
                              list(rng.uniform(0.002, 0.05, c)), zp(), dgeom)  # fmt: skip
    ke = make_linear_backward(OpKind.CONV_2D, (1, eh, ew, case.cin), (1, h, w, c), (c, ek, ek, case.cin),
                              list(rng.uniform(0.001, 0.08, c)), zp(), egeom)  # fmt: skip
    kp = make_linear_backward(OpKind.CONV_2D, (1, oh, ow, c), (1, oh, ow, case.cp), (case.cp, 1, 1, c),
                              list(rng.uniform(0.001, 0.1, case.cp)), zp(), _geometry(oh, ow, 1, 1, None))  # fmt: skip
    n_p, n_d, n_e = case.weights
    mp, md, me = case.masks
    ch_p = tuple(range(c - 1, -1, -2))[:n_p]
    ch_d = tuple(range(0, c, 2))[:n_d]
    ch_e = tuple(int(v) for v in rng.choice(case.cin, n_e, replace=False))
    p = _bp(OpKind.CONV_2D, kp, BackwardRequest(frozenset({0}), ch_p, case.bias), mp, 3)
    d = _bp(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0}), ch_d, case.bias), md, 2)
    e_req = BackwardRequest(frozenset({0}) if case.e_grad and not case.e_stem else frozenset(), ch_e, True)
    e = _bp(OpKind.CONV_2D, ke, e_req, me, 1)
    fp = prepare_fused_project_backward(p, prepare_fused_expand_dw_backward(e, d), ring=ring)

    def trained(shape: tuple[int, ...], ch: tuple[int, ...]) -> Trained:
        flash = rng.integers(-127, 128, shape).astype(np.int8)
        sl = rng.integers(-128, 128, (*shape[:-1], len(ch))).astype(np.int8) if ch else None
        return Trained(flash, ch, sl)

    weights = (trained((case.cp, 1, 1, c), ch_p), trained((1, case.dk, case.dk, c), ch_d),
               trained((c, ek, ek, case.cin), ch_e))  # fmt: skip

    def mask(n: int, on: bool) -> np.ndarray | None:
        return pack_mask(rng.random(n) < 0.7) if on else None

    def channels(shape: tuple[int, ...], n: int) -> np.ndarray | None:
        return rng.integers(-128, 128, (*shape, n)).astype(np.int8) if n else None

    saved = (
        Saved(mask(oh * ow * case.cp, mp), channels((1, oh, ow), n_p)),
        Saved(mask(oh * ow * c, md), channels((1, h, w), n_d)),
        Saved(mask(h * w * c, me), channels((1, eh, ew), n_e)),
    )
    g = rng.integers(-case.scale, case.scale + 1, (1, oh, ow, case.cp)).astype(np.int16)
    return fp, Grad(g, int(rng.integers(-30, -5))), saved, weights


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "one-row"])
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.h}x{c.w}-k{c.dk}s{c.ds}-pad{c.pads}-w{''.join(map(str, c.weights))}"
)
def test_random_geometries(lib: ctypes.CDLL, case: Case, ring: bool) -> None:
    rng = np.random.default_rng(CASES.index(case) + 300)
    for _ in range(2):
        fp, g, saved, weights = _random_case(case, rng, ring)
        compare(lib, fp, g, saved, weights)


def test_extreme_gradients(lib: ctypes.CDLL) -> None:
    """int16 extremes in P's output gradient and saturating Q15 factors."""
    rng = np.random.default_rng(7)
    fp, g, saved, weights = _random_case(Case(8, 7, 6, 4, 5, 3, 2, None, weights=(2, 2, 2)), rng, True)
    a = g.g.copy()
    a.reshape(-1)[::2] = -(2**15)
    a.reshape(-1)[1::2] = 2**15 - 1
    compare(lib, fp, Grad(a, g.e), saved, weights)


# ------------------------------------------------------------------ shipped checkpoint


def test_checkpoint_triples(lib: ctypes.CDLL) -> None:
    """The fused P→D→E steps of bias-only on the shipped synthetic checkpoint (their own
    params, ring and one-row), on random gradients and masks."""
    from tinytrain.frontends.load import load_model
    from tinytrain.models.ship import CHECKPOINT, shipped
    from tinytrain.passes.replace_head import replace_head
    from tinytrain.train.build import build_training_program
    from tinytrain.train.scheme import get_scheme, resolve

    graph = replace_head(load_model(shipped(CHECKPOINT)), 10, "zero", 0)
    program = build_training_program(graph, resolve(get_scheme("bias-only", graph), graph))
    fused = [b for b in program.backward if b.fused_project is not None]
    assert len(fused) >= 2
    assert any(b.fused_project is not None and b.fused_project.ring_rows > 1 for b in fused)
    rng = np.random.default_rng(12)
    for b in fused:
        fp0 = b.fused_project
        assert fp0 is not None and b.fused_from is not None and b.fused_with is not None
        for fp in (fp0, prepare_fused_project_backward(fp0.p, fp0.inner, ring=False)):
            parts = (b.fused_from, b, b.fused_with)
            saved = tuple(
                Saved(pack_mask(rng.random(graph.tensor(s.op.outputs[0]).size) < 0.7) if s.params.clamp else None)
                for s in parts
            )
            weights = tuple(Trained(np.asarray(graph.tensor(str(s.op.inputs[1])).data)) for s in parts)
            g = rng.integers(-(2**14), 2**14 + 1, graph.tensor(b.fused_from.op.outputs[0]).shape).astype(np.int16)
            compare(lib, fp, Grad(g, -18), (saved[0], saved[1], saved[2]), (weights[0], weights[1], weights[2]))


# ------------------------------------------------------------------ refusals, build


def test_refuses_bad_arguments(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(3)
    fp, g, saved, weights = _random_case(Case(9, 9, 6, 4, 3, 5, 1, None, weights=(1, 2, 1)), rng, True)
    assert fp.ring_rows == 5
    arrays = project_arrays(fp)

    def with_fields(**fields: int) -> CStruct:
        cs = project_struct(arrays)
        for k, v in fields.items():
            setattr(cs.struct, k, v)
        return cs

    for bad in ({"ring_rows": 4}, {"ring_rows": 0}, {"p_drop": 15}, {"p_cout": 0}, {"d_weight_n": 1}):
        status, _ = run_c(lib, fp, g, saved, weights, params=with_fields(**bad))
        assert status == TT_ERR_ARG, bad
    assert run_c(lib, fp, g, saved, weights, params=with_fields(ring_rows=1))[0] == TT_OK
    no_mask = (Saved(None, saved[0].x_sub), saved[1], saved[2])
    assert run_c(lib, fp, g, no_mask, weights, params=project_struct(arrays))[0] == TT_ERR_ARG
    no_x = (saved[0], Saved(saved[1].mask, None), saved[2])
    assert run_c(lib, fp, g, no_x, weights, params=project_struct(arrays))[0] == TT_ERR_ARG
    assert int(lib.tt_fused_pde_scratch_bytes(None)) == 0


def test_compiles_for_cortex_m4(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off",
             "-Wall", "-Wextra", "-Werror", "-O2", "-c", f"-I{RUNTIME_INCLUDE}"]  # fmt: skip
    for name in ("tt_fused_pde_bwd.c", "tt_fused_bwd.c"):
        obj = tmp_path / (name + ".o")
        subprocess.run([cc, *flags, str(RUNTIME_SRC / name), "-o", str(obj)], check=True)
        syms = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True).stdout
        assert "malloc" not in syms and "printf" not in syms
