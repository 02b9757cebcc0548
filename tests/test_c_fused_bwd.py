"""The C row-streamed fused backward of expansion CONV_2D E → DEPTHWISE_CONV_2D D
(tt_fused_ed_bwd_s16) gives the bytes of its numpy twin
(tinytrain/train/kernels/fused_bwd.py:run_fused_expand_dw_backward, itself byte-identical to
the unfused D-then-E backward): random geometries, masks, zero points, int16 extremes,
trained weight channels (weight patches), the real pairs of the shipped synthetic MCUNet
checkpoint, and the executor's row-streamed training steps; the scratch is exactly
fused_scratch_bytes and nothing outside it is written."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers_c import assert_integer_only, cortex_m4_objects
from tests.helpers_fused import GUARD, TT_ERR_ARG, TT_OK, backward_params, c_runtime, forward_and_save, with_weights
from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.testing.c_update import (
    CStruct,
    as_ptr,
    fbwd_weights,
    fused_arrays,
    fused_struct,
)
from tinytrain.train import executor as executor_mod
from tinytrain.train.grad_rules import BackwardRequest, Saved
from tinytrain.train.kernels.fused_bwd import (
    FusedExpandDwParams,
    fused_scratch_bytes,
    prepare_fused_expand_dw_backward,
    run_fused_expand_dw_backward,
)
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.linear_bwd import make_linear_backward
from tinytrain.train.kernels.mask import pack_mask


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return c_runtime(tmp_path_factory)


# ------------------------------------------------------------------ running both


@dataclass(frozen=True, eq=False)
class CResult:
    status: int
    g_in: np.ndarray | None
    e_in: int
    e_param: int
    bias_grad: np.ndarray | None
    weight_grad: np.ndarray | None


def run_c(
    lib: ctypes.CDLL,
    fp: FusedExpandDwParams,
    g_d: Grad,
    saved_d: Saved,
    saved_e: Saved,
    wd: CStruct,
    we: CStruct | None,
    params: CStruct | None = None,
) -> CResult:
    """Calls the C kernel with an exactly sized scratch followed by canary bytes."""
    cp = params if params is not None else fused_struct(fused_arrays(fp))
    size = int(lib.tt_fused_ed_scratch_bytes(cp.ref()))
    if params is None:
        assert size == fp.scratch_bytes
    else:  # tests of refused params
        size = max(size, fp.scratch_bytes)
    raw = np.full((size + GUARD) // 8 + 1, 0x5A5A5A5A5A5A5A5A, dtype=np.uint64)  # 8-byte aligned
    scratch = raw.view(np.uint8)
    g = np.ascontiguousarray(g_d.g)
    ke = fp.ke
    g_in = np.full((ke.in_shape[1], ke.in_shape[2], ke.in_channels), 0x3333, np.int16) if fp.e_input_grad else None
    e_in, e_param = np.zeros(1, np.int32), np.zeros(1, np.int32)
    m_d = np.ascontiguousarray(saved_d.mask) if saved_d.mask is not None else None
    m_e = np.ascontiguousarray(saved_e.mask) if saved_e.mask is not None else None
    x_sub = np.ascontiguousarray(saved_e.x_sub, dtype=np.int8) if saved_e.x_sub is not None else None
    status = lib.tt_fused_ed_bwd_s16(
        cp.ref(),
        as_ptr(g, ctypes.c_int16),
        g_d.e,
        as_ptr(m_d, ctypes.c_uint8),
        as_ptr(m_e, ctypes.c_uint8),
        wd.ref(),
        we.ref() if we is not None else None,
        as_ptr(x_sub, ctypes.c_int8),
        as_ptr(g_in, ctypes.c_int16),
        as_ptr(e_in, ctypes.c_int32),
        as_ptr(e_param, ctypes.c_int32),
        ctypes.c_void_p(scratch.ctypes.data),
    )
    assert np.all(scratch[size:] == 0x5A), "the kernel wrote past its scratch"
    bias = wgrad = None
    if status != TT_OK:
        return CResult(int(status), g_in, int(e_in[0]), int(e_param[0]), None, None)
    c = fp.channels
    off = 0
    if fp.e.request.bias:
        bias = scratch[: 8 * c].view(np.int64).copy()
        ptr = lib.tt_fused_ed_bias_grad(cp.ref(), ctypes.c_void_p(scratch.ctypes.data))
        assert ctypes.cast(ptr, ctypes.c_void_p).value == scratch.ctypes.data
        off = 8 * c
    n = len(fp.e.request.weight_channels)
    if n:
        geom = ke.geom
        assert geom is not None
        count = c * geom.kh * geom.kw * n
        wgrad = scratch[off : off + 8 * count].view(np.int64).reshape(c, geom.kh, geom.kw, n).copy()
        ptr = lib.tt_fused_ed_weight_grad(cp.ref(), ctypes.c_void_p(scratch.ctypes.data))
        assert ctypes.cast(ptr, ctypes.c_void_p).value == scratch.ctypes.data + off
    return CResult(int(status), g_in, int(e_in[0]), int(e_param[0]), bias, wgrad)


def compare(
    lib: ctypes.CDLL,
    fp: FusedExpandDwParams,
    g_d: Grad,
    saved_d: Saved,
    saved_e: Saved,
    w_d: np.ndarray,
    w_e: np.ndarray,
    d_train: tuple[tuple[int, ...], np.ndarray] | None = None,
    e_train: tuple[tuple[int, ...], np.ndarray] | None = None,
) -> CResult:
    """C vs numpy. ``w_d`` / ``w_e`` are the compiled (flash) weights; ``*_train`` optional
    (channels, current slice): numpy runs on the patched whole tensors."""
    cur_d, cur_e = np.array(w_d, copy=True), np.array(w_e, copy=True)
    wd = fbwd_weights(w_d)
    we = fbwd_weights(w_e)
    if d_train is not None:
        ch, sl = d_train
        cur_d[..., list(ch)] = sl
        wd = fbwd_weights(w_d, ch, sl.reshape(sl.shape[-3:]))
    if e_train is not None:
        ch, sl = e_train
        cur_e[..., list(ch)] = sl
        we = fbwd_weights(w_e, ch, sl)
    g_in, _, res_e = run_fused_expand_dw_backward(fp, g_d, saved_d, saved_e, cur_d, cur_e)
    got = run_c(lib, fp, g_d, saved_d, saved_e, wd, we)
    assert got.status == TT_OK
    assert got.e_param == res_e.param_exponent
    if g_in is None:
        assert got.g_in is None
    else:
        assert got.g_in is not None and got.e_in == g_in.e
        assert np.array_equal(got.g_in, g_in.g.reshape(got.g_in.shape))
    for mine, ref in ((got.bias_grad, res_e.bias_grad), (got.weight_grad, res_e.weight_grad)):
        assert (mine is None) == (ref is None)
        if mine is not None and ref is not None:
            assert np.array_equal(mine, ref.reshape(mine.shape))
    return got


# ------------------------------------------------------------------ random geometries


def same_geometry(size: int, k: int, s: int) -> Geometry:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return Geometry(k, k, s, s, 1, 1, total // 2, total // 2, total - total // 2, total - total // 2, out, out)


def explicit_geometry(size: int, k: int, s: int, before: int, after: int) -> Geometry:
    out = (size + before + after - k) // s + 1
    return Geometry(k, k, s, s, 1, 1, before, before, after, after, out, out)


@dataclass(frozen=True)
class Case:
    size: int  # H = W of D's input
    c: int
    cin: int
    dk: int
    ds: int
    pads: tuple[int, int] | None  # a folded explicit pad of D (None: SAME)
    e_grad: bool
    e_weights: tuple[int, ...]
    e_bias: bool = True
    e_geom: tuple[int, int] = (1, 1)  # E's kernel and stride
    masks: tuple[bool, bool] = (True, True)  # D's, E's clamp mask
    d_train: int = 0  # D's trained channels (weight patch)
    e_train: int = 0  # E's trained input channels (weight patch)
    zero: bool = False  # an all-masked output gradient
    extreme: bool = False  # int16 extremes, zero points at the int8 extremes, dead channels


CASES = [
    Case(9, 12, 5, 3, 1, None, True, ()),
    Case(10, 8, 4, 3, 2, None, True, (0, 3)),
    Case(11, 6, 3, 5, 1, None, False, (2,)),
    Case(12, 7, 5, 5, 2, None, True, ()),
    Case(13, 5, 4, 7, 1, None, True, (1,), d_train=2, e_train=2),
    Case(14, 4, 6, 7, 2, None, True, (0, 5), e_train=3),
    Case(10, 8, 6, 3, 2, (0, 1), True, (1,)),
    Case(9, 5, 4, 3, 2, (1, 1), False, (), e_bias=True),
    Case(13, 4, 3, 5, 2, (1, 2), True, (2, 0), d_train=4),
    Case(8, 6, 3, 3, 1, None, False, (0, 2), e_geom=(3, 2)),
    Case(7, 6, 3, 3, 2, None, False, (1,), e_geom=(3, 2), e_bias=False),
    Case(7, 5, 4, 3, 1, None, True, (), zero=True),
    Case(6, 4, 4, 3, 1, None, True, (0,), masks=(False, False)),
    Case(6, 4, 4, 3, 2, None, True, (), masks=(True, False), e_bias=False),
    Case(5, 3, 2, 3, 1, None, True, (1,), masks=(False, True)),
    Case(1, 1, 1, 3, 1, None, True, (0,)),
    Case(1, 2, 3, 1, 1, None, True, (0, 2), d_train=1, e_train=1),
    Case(9, 6, 5, 3, 1, None, True, (0, 4), extreme=True, d_train=3, e_train=2),
    Case(8, 5, 3, 5, 2, (2, 2), True, (1,), extreme=True),
]


def random_case(lib: ctypes.CDLL, case: Case, rng: np.random.Generator) -> None:
    h = case.size
    dgeom = (
        same_geometry(h, case.dk, case.ds) if case.pads is None else explicit_geometry(h, case.dk, case.ds, *case.pads)
    )
    ek, es = case.e_geom
    e_in = h * es
    egeom = same_geometry(e_in, ek, es)
    assert egeom.out_h == h
    c, cin = case.c, case.cin
    d_scales = rng.uniform(0.002, 0.05, c)
    e_scales = rng.uniform(0.001, 0.08, c)
    zp = int(rng.integers(-128, 128))
    if case.extreme:
        d_scales[0] = 5e-7 / 127 * 1e-3  # μ rounds to 0: a dead channel
        e_scales[-1] = 1e-10
        zp = int(rng.choice([-128, 127]))
    kd = make_linear_backward(
        OpKind.DEPTHWISE_CONV_2D,
        (1, h, h, c),
        (1, dgeom.out_h, dgeom.out_w, c),
        (1, case.dk, case.dk, c),
        list(d_scales),
        int(rng.integers(-128, 128)),
        dgeom,
    )
    ke = make_linear_backward(
        OpKind.CONV_2D, (1, e_in, e_in, cin), (1, h, h, c), (c, ek, ek, cin), list(e_scales), zp, egeom
    )
    d = backward_params(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0}), (), True), case.masks[0], 2)
    e_req = BackwardRequest(frozenset({0}) if case.e_grad else frozenset(), case.e_weights, case.e_bias)
    e = backward_params(OpKind.CONV_2D, ke, e_req, case.masks[1], 1)
    fp = prepare_fused_expand_dw_backward(e, d)
    w_d = rng.integers(-127, 128, (1, case.dk, case.dk, c)).astype(np.int8)
    w_e = rng.integers(-127, 128, (c, ek, ek, cin)).astype(np.int8)
    n_out = dgeom.out_h * dgeom.out_w * c
    lo, hi = (-(2**15), 2**15) if case.extreme else (-(2**14), 2**14 + 1)
    g = rng.integers(lo, hi, (1, dgeom.out_h, dgeom.out_w, c)).astype(np.int16)
    if case.extreme:
        g.reshape(-1)[: min(4, g.size)] = [-(2**15), 2**15 - 1, -(2**15), 2**15 - 1][: min(4, g.size)]
    keep_d = np.zeros(n_out, bool) if case.zero else rng.random(n_out) < 0.7
    saved_d = Saved(pack_mask(keep_d) if case.masks[0] else None)
    x_sub = rng.integers(-128, 128, (1, e_in, e_in, len(case.e_weights))).astype(np.int8) if case.e_weights else None
    if x_sub is not None and case.extreme:
        x_sub.reshape(-1)[::3] = -zp - 1 if zp < 0 else -128
    saved_e = Saved(pack_mask(rng.random(h * h * c) < 0.6) if case.masks[1] else None, x_sub)
    d_train = e_train = None
    if case.d_train:
        ch = tuple(int(v) for v in rng.choice(c, size=min(case.d_train, c), replace=False))
        d_train = (ch, rng.integers(-127, 128, (1, case.dk, case.dk, len(ch))).astype(np.int8))
    if case.e_train:
        ch = tuple(int(v) for v in rng.choice(cin, size=min(case.e_train, cin), replace=False))
        e_train = (ch, rng.integers(-127, 128, (c, ek, ek, len(ch))).astype(np.int8))
    e_d = int(rng.integers(-30, -5))
    compare(lib, fp, Grad(g, e_d), saved_d, saved_e, w_d, w_e, d_train, e_train)


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"h{c.size}c{c.c}-k{c.dk}s{c.ds}-pad{c.pads}-eg{int(c.e_grad)}-e{c.e_geom[0]}"
)
def test_random_geometries(lib: ctypes.CDLL, case: Case) -> None:
    rng = np.random.default_rng(CASES.index(case) + 100)
    for _ in range(3):
        random_case(lib, case, rng)


def test_tiny_gradients_shift_left(lib: ctypes.CDLL) -> None:
    """Small sums make both normalizations shift left (r < 0)."""
    rng = np.random.default_rng(8)
    h, c, cin = 6, 4, 3
    geom = same_geometry(h, 3, 1)
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, h, h, c), (1, h, h, c), (1, 3, 3, c), [0.01] * c, 0, geom)
    ke = make_linear_backward(
        OpKind.CONV_2D, (1, h, h, cin), (1, h, h, c), (c, 1, 1, cin), [0.02] * c, 0, same_geometry(h, 1, 1)
    )
    d = backward_params(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0})), False, 2)
    e = backward_params(OpKind.CONV_2D, ke, BackwardRequest(frozenset({0}), (), True), False, 1)
    fp = prepare_fused_expand_dw_backward(e, d)
    g = rng.integers(-3, 4, (1, h, h, c)).astype(np.int16)
    w_d = rng.integers(-3, 4, (1, 3, 3, c)).astype(np.int8)
    w_e = rng.integers(-2, 3, (c, 1, 1, cin)).astype(np.int8)
    got = compare(lib, fp, Grad(g, -20), Saved(), Saved(), w_d, w_e)
    assert got.e_param < -20 + fp.kd.k + fp.kd.drop  # r_D < 0


# ------------------------------------------------------------------ shipped checkpoint


@pytest.fixture(scope="module")
def ckpt_graph() -> Any:
    from tinytrain.frontends.load import load_model
    from tinytrain.models.ship import CHECKPOINT, shipped
    from tinytrain.passes.replace_head import replace_head

    return replace_head(load_model(shipped(CHECKPOINT)), 10, "zero", 0)


def test_checkpoint_pairs(lib: ctypes.CDLL, ckpt_graph: Any) -> None:
    """Every expansion → depthwise pair of the checkpoint (the fused ones of the bias-only
    program, incl. the stem pair and folded pads), with E's input gradient, bias and some
    trained weight channels, on the forward pass's real masks and saved channels."""
    import itertools

    from tinytrain.train.build import build_training_program
    from tinytrain.train.scheme import preset, resolve

    program = build_training_program(ckpt_graph, resolve(preset("bias-only", ckpt_graph), ckpt_graph))
    pairs = []
    for d_step, e_step in itertools.pairwise(program.all_steps):
        if d_step.fused_with is e_step:
            pairs.append((d_step, with_weights(e_step, 2)))
    assert len(pairs) >= 3
    steps = {s.op_index: s for pair in pairs for s in pair}
    graph = program.graph
    x = np.random.default_rng(3).integers(-128, 128, graph.tensor(graph.inputs[0]).shape).astype(np.int8)
    saved = forward_and_save(program, steps, x)
    rng = np.random.default_rng(11)
    kinds = set()
    for d_step, e_step in pairs:
        fp = prepare_fused_expand_dw_backward(e_step.params, d_step.params)
        kinds.add((fp.e_input_grad, bool(d_step.targets)))
        shape = graph.tensor(d_step.op.outputs[0]).shape
        w_d = graph.tensor(str(d_step.op.inputs[1])).data
        w_e = graph.tensor(str(e_step.op.inputs[1])).data
        assert w_d is not None and w_e is not None
        for scale in (2**14, 2**15):
            g = rng.integers(-scale, scale, shape).astype(np.int16)
            sd = Saved(saved[d_step.op_index].mask)
            compare(lib, fp, Grad(g, -18), sd, saved[e_step.op_index], w_d, w_e)
    assert (False, False) in kinds and (True, False) in kinds  # the stem pair and the 1×1 pairs
    assert any(folded for _, folded in kinds)


@pytest.mark.parametrize("spec", ["bias-only", "tte"])
def test_executor_row_streamed_steps(
    lib: ctypes.CDLL, ckpt_graph: Any, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training steps with the row-streamed kernel: each fused call also runs in C on the real
    gradients, masks, saved channels and current weights (tte: E's trained channels as a
    weight patch over the compiled tensor, after real updates)."""
    from tinytrain.train.build import build_training_program
    from tinytrain.train.data import Dataset, load_dataset
    from tinytrain.train.executor import Executor
    from tinytrain.train.loop import TrainConfig, Trainer
    from tinytrain.train.scheme import preset, resolve

    program = build_training_program(ckpt_graph, resolve(preset(spec, ckpt_graph), ckpt_graph))
    graph = program.graph
    calls = {"n": 0, "patched": 0}
    orig = executor_mod.run_fused_expand_dw_backward

    def wrapped(
        fp: FusedExpandDwParams, g_d: Grad, saved_d: Saved, saved_e: Saved, w_d: np.ndarray, w_e: np.ndarray | None
    ) -> Any:
        out = orig(fp, g_d, saved_d, saved_e, w_d, w_e)
        flash_d = graph.tensor(str(fp.d.op.inputs[1])).data
        flash_e = graph.tensor(str(fp.e.op.inputs[1])).data
        assert flash_d is not None and flash_e is not None
        d_train = e_train = None
        ch_d = fp.d.request.weight_channels
        if ch_d:
            d_train = (ch_d, np.asarray(w_d)[..., list(ch_d)])
        ch_e = fp.e.request.weight_channels
        if ch_e and w_e is not None:
            e_train = (ch_e, np.asarray(w_e)[..., list(ch_e)])
            calls["patched"] += int(not np.array_equal(np.asarray(w_e), flash_e))
        compare(lib, fp, g_d, saved_d, saved_e, flash_d, flash_e, d_train, e_train)
        calls["n"] += 1
        return out

    monkeypatch.setattr(executor_mod, "run_fused_expand_dw_backward", wrapped)
    train = load_dataset("fashion-mnist", "train")
    steps = 6
    small = Dataset("s", train.images[:steps], train.labels[:steps])
    trainer = Trainer(program, small.sample_shape, seed=5)
    trainer.executor = Executor(program, 5, row_streamed=True)
    trainer.fit(small, None, TrainConfig(epochs=1, lr=0.05, seed=5))
    # steps with a projection fused in front run fused_bwd_project.py (no C twin yet)
    fused = sum(1 for s in program.backward if s.fused is not None and getattr(s, "fused_from", None) is None)
    assert fused > 0 and calls["n"] == steps * fused
    if spec == "tte":
        assert calls["patched"] > 0  # E's trained channels had moved away from the flash values


# ------------------------------------------------------------------ scratch and refusals


def test_scratch_formula(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        w, c, cin = (int(v) for v in rng.integers(1, 70, 3))
        e_grad, e_bias = bool(rng.integers(0, 2)), bool(rng.integers(0, 2))
        taps, n = int(rng.choice([1, 9])), int(rng.integers(0, cin + 1))
        e_grad = e_grad and taps == 1
        if not (e_grad or e_bias or n):
            e_bias = True
        k = 3 if taps == 9 else 1
        ints = dict(
            height=5,
            width=w,
            channels=c,
            d_kh=3,
            d_kw=3,
            d_sh=1,
            d_sw=1,
            d_out_h=5,
            d_out_w=w,
            e_in_h=5,
            e_in_w=w,
            e_cin=cin,
            e_kh=k,
            e_kw=k,
            e_sh=1,
            e_sw=1,
            e_input_grad=int(e_grad),
            e_bias=int(e_bias),
            e_weight_n=n,
        )
        from tinytrain.testing.c_update import FusedEdParamsC

        cp = FusedEdParamsC(**ints)
        assert lib.tt_fused_ed_scratch_bytes(ctypes.byref(cp)) == fused_scratch_bytes(
            w, c, cin, e_grad, e_bias, taps, n
        )


def _small_pair(e_req: BackwardRequest, e_kernel: int = 1) -> FusedExpandDwParams:
    h, c, cin = 5, 4, 3
    geom = same_geometry(h, 3, 1)
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, h, h, c), (1, h, h, c), (1, 3, 3, c), [0.01] * c, 0, geom)
    ke = make_linear_backward(
        OpKind.CONV_2D,
        (1, h, h, cin),
        (1, h, h, c),
        (c, e_kernel, e_kernel, cin),
        [0.02] * c,
        3,
        same_geometry(h, e_kernel, 1),
    )
    d = backward_params(OpKind.DEPTHWISE_CONV_2D, kd, BackwardRequest(frozenset({0})), True, 2)
    e = backward_params(OpKind.CONV_2D, ke, e_req, True, 1)
    return prepare_fused_expand_dw_backward(e, d)


def test_refuses_bad_arguments(lib: ctypes.CDLL) -> None:
    fp = _small_pair(BackwardRequest(frozenset({0}), (0, 2), True))
    rng = np.random.default_rng(0)
    g = Grad(rng.integers(-100, 100, (1, 5, 5, 4)).astype(np.int16), -10)
    mask_d, mask_e = pack_mask(np.ones(100, bool)), pack_mask(np.ones(100, bool))
    x_sub = rng.integers(-128, 128, (1, 5, 5, 2)).astype(np.int8)
    w_d = rng.integers(-127, 128, (1, 3, 3, 4)).astype(np.int8)
    w_e = rng.integers(-127, 128, (4, 1, 1, 3)).astype(np.int8)
    ok = run_c(lib, fp, g, Saved(mask_d), Saved(mask_e, x_sub), fbwd_weights(w_d), fbwd_weights(w_e))
    assert ok.status == TT_OK

    def status(**kw: Any) -> int:
        params = fused_struct(fused_arrays(fp))
        for k, v in kw.pop("fields", {}).items():
            setattr(params.struct, k, v)
        return run_c(
            lib,
            fp,
            g,
            kw.get("sd", Saved(mask_d)),
            kw.get("se", Saved(mask_e, x_sub)),
            kw.get("wd", fbwd_weights(w_d)),
            kw.get("we", fbwd_weights(w_e)),
            params,
        ).status

    assert status(sd=Saved(None)) == TT_ERR_ARG  # D's mask is needed
    assert status(se=Saved(mask_e, None)) == TT_ERR_ARG  # E's saved channels are needed
    assert status(we=None) == TT_ERR_ARG  # E's weights for its input gradient
    assert status(fields={"d_drop": 15}) == TT_ERR_ARG
    assert status(fields={"d_sh": 0}) == TT_ERR_ARG
    assert status(fields={"e_kh": 3}) == TT_ERR_ARG  # a 3×3 E has no row-local input gradient
    assert status(fields={"e_input_grad": 0, "e_bias": 0, "e_weight_n": 0}) == TT_ERR_ARG
    bad_patch = fbwd_weights(w_d, (1, 2), np.zeros((3, 3, 2), np.int8))
    bad_patch.arrays[1][1] = 4  # channel index out of range
    assert status(wd=bad_patch) == TT_ERR_ARG
    mu = fused_arrays(fp).d_mu.copy()
    mu[0] = 40000
    params = fused_struct(fused_arrays(fp))
    params.struct.d_mu = as_ptr(mu, ctypes.c_int32)
    res = run_c(lib, fp, g, Saved(mask_d), Saved(mask_e, x_sub), fbwd_weights(w_d), fbwd_weights(w_e), params)
    assert res.status == TT_ERR_ARG
    assert res.g_in is not None and np.all(res.g_in == 0x3333)  # a refused call writes nothing


def test_compiles_for_cortex_m4(tmp_path: Path) -> None:
    for obj in cortex_m4_objects(["tt_fused_bwd.c"], tmp_path):
        assert_integer_only(obj)
