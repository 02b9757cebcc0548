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
    fbwd_weights,
    project_arrays,
    project_struct,
)
from tests.helpers_fused import (
    GUARD,
    TT_ERR_ARG,
    TT_OK,
    PdeCase,
    c_runtime,
    pde_case_id,
    pde_channels,
    pde_kernels,
    pde_params,
    pde_saved_and_grad,
)
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC
from tinytrain.train.grad_rules import Saved
from tinytrain.train.kernels.fused_bwd import prepare_fused_expand_dw_backward
from tinytrain.train.kernels.fused_bwd_project import (
    FusedProjectParams,
    prepare_fused_project_backward,
    run_fused_project_backward,
)
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.mask import pack_mask

U8 = ctypes.c_uint8


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return c_runtime(tmp_path_factory)


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


CASES = [
    PdeCase(9, 9, 12, 5, 4, 3, 1, None),
    PdeCase(10, 8, 8, 4, 6, 3, 2, None, weights=(3, 2, 2)),
    PdeCase(11, 13, 6, 3, 5, 5, 1, None, e_grad=False, weights=(1, 0, 2)),
    PdeCase(12, 12, 7, 5, 3, 5, 2, None, weights=(0, 3, 0), masks=(False, True, False)),
    PdeCase(14, 10, 5, 4, 4, 7, 1, None, masks=(True, False, True), bias=False, weights=(2, 0, 0)),
    PdeCase(10, 10, 8, 6, 4, 3, 2, (0, 1), weights=(2, 1, 0)),
    PdeCase(9, 11, 5, 4, 3, 3, 2, (1, 1), e_grad=False),
    PdeCase(13, 9, 4, 3, 5, 5, 2, (1, 2), weights=(0, 1, 2)),
    PdeCase(16, 12, 5, 3, 4, 7, 2, (2, 3), masks=(False, False, False)),
    PdeCase(8, 8, 6, 3, 4, 3, 1, None, e_stem=True, weights=(1, 1, 2)),
    PdeCase(7, 5, 4, 3, 3, 3, 1, (0, 3), weights=(1, 2, 0)),  # D's last output row reads only padding
    PdeCase(7, 6, 5, 4, 3, 3, 1, None, scale=3),
    PdeCase(6, 6, 4, 3, 3, 5, 1, None, scale=0, weights=(1, 1, 1)),  # an all-zero gradient
    PdeCase(1, 1, 3, 2, 2, 3, 1, None, weights=(1, 1, 1)),
]


def _random_case(case: PdeCase, rng: np.random.Generator, ring: bool) -> tuple[Any, ...]:
    c = case.c
    k = pde_kernels(case, rng)
    ch_p, ch_d = pde_channels(case)
    ch_e = tuple(int(v) for v in rng.choice(case.cin, case.weights[2], replace=False))
    p, d, e = pde_params(case, k, ch_e)
    fp = prepare_fused_project_backward(p, prepare_fused_expand_dw_backward(e, d), ring=ring)

    def trained(shape: tuple[int, ...], ch: tuple[int, ...]) -> Trained:
        flash = rng.integers(-127, 128, shape).astype(np.int8)
        sl = rng.integers(-128, 128, (*shape[:-1], len(ch))).astype(np.int8) if ch else None
        return Trained(flash, ch, sl)

    weights = (trained((case.cp, 1, 1, c), ch_p), trained((1, case.dk, case.dk, c), ch_d),
               trained((c, k.ek, k.ek, case.cin), ch_e))  # fmt: skip
    saved, g = pde_saved_and_grad(case, k, rng)
    return fp, g, saved, weights


@pytest.mark.parametrize("ring", [True, False], ids=["ring", "one-row"])
@pytest.mark.parametrize("case", CASES, ids=pde_case_id)
def test_random_geometries(lib: ctypes.CDLL, case: PdeCase, ring: bool) -> None:
    rng = np.random.default_rng(CASES.index(case) + 300)
    for _ in range(2):
        fp, g, saved, weights = _random_case(case, rng, ring)
        compare(lib, fp, g, saved, weights)


def test_extreme_gradients(lib: ctypes.CDLL) -> None:
    """int16 extremes in P's output gradient and saturating Q15 factors."""
    rng = np.random.default_rng(7)
    fp, g, saved, weights = _random_case(PdeCase(8, 7, 6, 4, 5, 3, 2, None, weights=(2, 2, 2)), rng, True)
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
    fp, g, saved, weights = _random_case(PdeCase(9, 9, 6, 4, 3, 5, 1, None, weights=(1, 2, 1)), rng, True)
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
