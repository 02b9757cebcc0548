"""C ``tt_fused_block_s8`` == numpy ``run_fused_block``, byte for byte (output and every mask).

Blocks: the geometry cases of ``test_fused_block`` (kernels 1/3/5/7, strides 1/2/3,
SAME / VALID / explicit PAD, dilation, stems, residual ADDs in both operand orders, dead
channels), random small blocks with zero points at the int8 extremes, per-tensor and
per-channel filters and wrapping biases, a PAD whose fill byte differs from the
convolution's own padding, and every fused block of the shipped models on real
activations. Also: in-place runs, the row-source (stream) entry point, the scratch size,
refused parameters, a UBSan build and the Cortex-M4 cross-compilation.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from tests.test_fused_block import CASES, Builder, Case, build
from tinytrain.frontends.load import load_model
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, NoAttrs, Op, OpKind, Padding
from tinytrain.ir.tensor import Quantization, TensorKind
from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
from tinytrain.passes.fuse_blocks import fuse_frozen_blocks
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels.fused_block import prepare_fused_block, run_fused_block
from tinytrain.testing.c_fused_block import (
    ROLES,
    ROW_SOURCE,
    FusedBlockC,
    c_scratch_bytes,
    declare,
    fused_block_c,
    run_c_fused_block,
)
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, build_shared, load_runtime
from tinytrain.train.kernels.mask import pack_mask

SOURCES = [RUNTIME_SRC / "tt_fused_block.c", RUNTIME_SRC / "tt_fused_block_stages.c"]
TT_ERR_ARG, TT_ERR_SHAPE = 1, 2
FMNIST128 = "mbv2-w0.35-128-fmnist04-int8.tflite"


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return declare(load_runtime(tmp_path_factory.mktemp("c")))


# ----------------------------------------------------------------------------- helpers


def _roles(fb: FusedBlockC) -> list[str]:
    return [r for r in ROLES if r != "lead" or fb.lead is not None]


def _bounds(fb: FusedBlockC, role: str) -> tuple[int, int]:
    st = {"lead": fb.lead, "depthwise": fb.dw, "project": fb.proj}[role]
    assert st is not None
    return st.mask_lo, st.mask_hi


def numpy_reference(graph: Graph, indices: Sequence[int], fb: FusedBlockC, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """The numpy kernel's output and packed masks (sinks zero-initialised) per sample."""
    p = prepare_fused_block(graph, indices)
    sinks = {r: np.zeros((x.shape[0], *fb.mask_shape(r)), bool) for r in _roles(fb)}
    y = run_fused_block(p, x, masks={r: (*_bounds(fb, r), s) for r, s in sinks.items()})
    packed = {r: np.stack([pack_mask(s[i]) for i in range(x.shape[0])]) for r, s in sinks.items()}
    return y, packed


def check_block(lib: ctypes.CDLL, graph: Graph, indices: Sequence[int], x: np.ndarray,
                mask_bounds: dict[str, tuple[int, int]] | None = None) -> FusedBlockC:  # fmt: skip
    """C == numpy: with all masks, without masks, in place and streamed when allowed."""
    fb = fused_block_c(graph, indices, mask_bounds)
    want, want_masks = numpy_reference(graph, indices, fb, x)
    got = run_c_fused_block(lib, fb, x, _roles(fb))
    assert got.status == 0
    assert np.array_equal(got.output, want)
    for r in _roles(fb):
        assert np.array_equal(got.masks[r], want_masks[r]), r
    # no masks, and a different scratch filling: same bytes (nothing read before written)
    bare = run_c_fused_block(lib, fb, x, scratch_fill=0xFF)
    assert bare.status == 0 and np.array_equal(bare.output, want)
    if fb.inplace_ok:
        inplace = run_c_fused_block(lib, fb, x, ["depthwise"], in_place=True, scratch_fill=0x00)
        assert inplace.status == 0 and np.array_equal(inplace.output, want)
        assert np.array_equal(inplace.masks["depthwise"], want_masks["depthwise"])
    if _streamable(fb):
        streamed = run_c_fused_block(lib, fb, x, _roles(fb), stream=True)
        assert streamed.status == 0 and np.array_equal(streamed.output, want)
        for r in _roles(fb):
            assert np.array_equal(streamed.masks[r], want_masks[r]), r
    return fb


def _streamable(fb: FusedBlockC) -> bool:
    if fb.add is not None:
        return False
    if fb.lead_win is None:
        return True
    g = fb.lead_win
    return (g.kh, g.kw, g.sh, g.sw) != (1, 1, 1, 1) or bool(fb.lead_pad)


def _inputs(graph: Graph, n: int = 2, seed: int = 1) -> np.ndarray:
    shape = graph.tensor(graph.inputs[0]).shape
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape[1:]), dtype=np.int8)


# ------------------------------------------------------------------- geometry cases


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_geometry_cases(lib: ctypes.CDLL, case: Case) -> None:
    graph = build(case)
    fb = check_block(lib, graph, range(len(graph.ops)), _inputs(graph))
    assert c_scratch_bytes(fb) == fb.scratch_bytes
    assert lib.tt_fused_block_scratch_bytes(ctypes.byref(fb.to_ctypes().struct)) == fb.scratch_bytes


def test_mask_bounds_other_than_the_activation_range(lib: ctypes.CDLL) -> None:
    graph = build(CASES[0])
    bounds = {"lead": (-100, 50), "depthwise": (-128, 127), "project": (-3, 4)}
    fb = check_block(lib, graph, range(len(graph.ops)), _inputs(graph), bounds)
    assert (fb.proj.mask_lo, fb.proj.mask_hi) == (-3, 4)


def test_biases_are_read_from_their_own_pointers(lib: ctypes.CDLL) -> None:
    """Trained biases (in RAM) replace the graph's: C with bias overrides == numpy on the updated graph."""
    graph = build(CASES[14])  # stem
    fb = fused_block_c(graph, range(len(graph.ops)))
    rng = np.random.default_rng(9)
    new = {}
    tensors = {t.name: t for t in graph.tensors}
    for role, op in zip(ROLES, graph.ops, strict=True):
        name = op.inputs[2]
        assert name is not None
        b = tensors[name].data
        assert b is not None
        new[role] = (b.astype(np.int64) + rng.integers(-5000, 5000, b.shape)).astype(np.int32)
        tensors[name] = replace(tensors[name], data=new[role])
    updated = replace(graph, tensors=tuple(tensors.values()))
    x = _inputs(graph, 2)
    want, want_masks = numpy_reference(updated, range(len(graph.ops)), fb, x)
    got = run_c_fused_block(lib, fb, x, list(ROLES), biases=new)
    assert got.status == 0 and np.array_equal(got.output, want)
    assert all(np.array_equal(got.masks[r], want_masks[r]) for r in ROLES)
    old = run_c_fused_block(lib, fb, x)
    assert not np.array_equal(old.output, want)
    # a NULL bias is a zero bias
    zero = {r: np.zeros_like(v) for r, v in new.items()}
    nulls = run_c_fused_block(lib, fb, x, biases=dict.fromkeys(ROLES))
    assert np.array_equal(nulls.output, run_c_fused_block(lib, fb, x, biases=zero).output)


# --------------------------------------------------------------------- random blocks


def _with_extremes(graph: Graph, rng: np.random.Generator, per_tensor: bool) -> Graph:
    """Zero points at the int8 extremes, optionally per-tensor filters, some int32-extreme biases."""
    tensors = []
    filters = {op.inputs[1] for op in graph.ops if op.kind in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D)}
    biases = {op.inputs[2] for op in graph.ops if len(op.inputs) > 2 and op.kind is not OpKind.PAD}
    pad_outs = {op.outputs[0] for op in graph.ops if op.kind is OpKind.PAD}
    pad_ins = {op.inputs[0] for op in graph.ops if op.kind is OpKind.PAD}
    for t in graph.tensors:
        q = t.quant
        if t.kind in (TensorKind.INPUT, TensorKind.ACTIVATION) and q is not None and t.name not in pad_outs | pad_ins:
            if q.zero_point[0] != -128:  # RELU6 outputs already sit at -128
                zp = int(rng.choice([-128, -127, 0, 126, 127]))
                t = replace(t, quant=Quantization.per_tensor(q.scale[0], zp))
        elif t.name in filters and per_tensor and q is not None:
            t = replace(t, quant=Quantization.per_tensor(q.scale[0], 0))
        elif t.name in biases and t.data is not None and rng.random() < 0.5:
            b = t.data.astype(np.int64).copy()
            b[rng.integers(0, b.size)] = rng.choice([-(2**31), 2**31 - 1])
            t = replace(t, data=b.astype(np.int32))
        tensors.append(t)
    return replace(graph, tensors=tuple(tensors))


RANDOM = [(k, s, lead, res) for k in (3, 5, 7) for s in (1, 2) for lead in ("expand", "none", "stem")
          for res in ("", "first", "second") if not (res and (s != 1 or lead == "stem"))]  # fmt: skip


@pytest.mark.parametrize(("k", "stride", "lead", "residual"), RANDOM)
def test_random_blocks(lib: ctypes.CDLL, k: int, stride: int, lead: str, residual: str) -> None:
    rng = np.random.default_rng(1000 * k + 100 * stride + len(lead) + len(residual))
    h, w = (int(v) for v in rng.integers(k, k + 9, 2))
    cin = int(rng.integers(1, 9)) if not residual else int(rng.integers(2, 9))
    padding = Padding.SAME if residual or rng.random() < 0.7 else Padding.VALID
    if lead == "stem":
        h, w = 2 * h, 2 * w
    case = Case("random", h, w, cin, k, stride, lead=lead, padding=padding, residual=residual,
                expand=int(rng.integers(1, 7)), cout=0 if residual else int(rng.integers(1, 12)))  # fmt: skip
    graph = _with_extremes(build(case, seed=int(rng.integers(1 << 30))), rng, per_tensor=bool(rng.random() < 0.5))
    check_block(lib, graph, range(len(graph.ops)), _inputs(graph, 2, seed=int(rng.integers(1 << 30))))


def test_pad_value_differs_from_the_zero_point(lib: ctypes.CDLL) -> None:
    """Two padding levels with different fill bytes (a PAD with a constant value, then SAME):
    corners, edges and full padding rows take the byte of the outermost level holding them."""
    for lead in (False, True):
        b = Builder(11)
        x = b.input(9, 8, 4)
        t = b.conv(x, 12, k=3, s=1) if lead else x
        _, hh, ww, c = b.shape(t)
        s, zp = b.qp(t)
        i = len(b.ops)
        pads = b._t(f"p{i}", (4, 2), TensorKind.CONSTANT, None,
                    np.array([[0, 0], [2, 1], [1, 3], [0, 0]], np.int32), DType.INT32)  # fmt: skip
        val = b._t(f"v{i}", (), TensorKind.CONSTANT, Quantization.per_tensor(s, zp),
                   np.array(zp + 77 if zp < 50 else zp - 99, np.int8))  # fmt: skip
        y = b._t(f"y{i}", (1, hh + 3, ww + 4, c), TensorKind.ACTIVATION, Quantization.per_tensor(s, zp))
        b.ops.append(Op(OpKind.PAD, (t, pads, val), (y,), NoAttrs(), i))
        d = b.dw(y, 5, 2, 1, Padding.SAME)
        graph = b.graph(b.conv(d, 6, act=Activation.NONE))
        fb = check_block(lib, graph, range(len(graph.ops)), _inputs(graph, 3))
        assert len(fb.dw_pad) == 2 and fb.dw_pad[0].value != fb.dw_pad[1].value


# ------------------------------------------------------------------- shipped models


@cache
def _model(name: str) -> Graph:
    return load_model(shipped(name))


@pytest.mark.parametrize("name", [MBV2, CHECKPOINT, FMNIST128])
def test_shipped_model_blocks(lib: ctypes.CDLL, name: str) -> None:
    graph = _model(name)
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    assert fused.blocks
    probe = replace(graph, outputs=tuple(sorted({b.input for b in fused.blocks})))
    values = dict(zip(probe.outputs, Simulator(probe).run([_inputs(graph, 2, seed=7)]), strict=True))
    for block in fused.blocks:
        fb = check_block(lib, graph, block.op_indices, values[block.input])
        assert fb.scratch_bytes == block.scratch_bytes == c_scratch_bytes(fb)
    first = fused_block_c(graph, fused.blocks[0])
    assert first.lead_win is not None and _streamable(first), "the stem block reads its input rows from a source"


def test_live_blocks_emit_the_backward_masks(lib: ctypes.CDLL) -> None:
    """Blocks fused in the live part of a bias-only training program: the C masks, with the
    backward steps' clamp bounds, are the masks of the unfused tensors."""
    from tinytrain.passes.replace_head import replace_head
    from tinytrain.train.build import build_training_program
    from tinytrain.train.scheme import preset, resolve

    graph = replace_head(load_model(shipped(CHECKPOINT)), 10, "zero", 0)
    program = build_training_program(graph, resolve(preset("bias-only", graph), graph))
    live = [b for b in program.fused.blocks if any(program.backward_of(i) is not None for i in b.op_indices)]
    assert live
    probe = replace(graph, outputs=tuple(sorted({n for b in live for n in (b.input, *b.internal)})))
    values = dict(zip(probe.outputs, Simulator(probe).run([_inputs(graph, 2, seed=3)]), strict=True))
    checked = 0
    for block in live:
        roles = {"lead": block.chain.lead, "depthwise": block.chain.depthwise, "project": block.chain.project}
        bounds, tensors = {}, {}
        for role, i in roles.items():
            step = program.backward_of(i) if i is not None else None
            if i is None or step is None or step.params.clamp is None or graph.ops[i].outputs[0] not in block.internal:
                continue
            bounds[role], tensors[role] = step.params.clamp, graph.ops[i].outputs[0]
        fb = fused_block_c(graph, block, bounds)
        got = run_c_fused_block(lib, fb, values[block.input], list(bounds))
        assert got.status == 0
        for role, (lo, hi) in bounds.items():
            v = values[tensors[role]]
            want = np.stack([pack_mask((v[i] > lo) & (v[i] < hi)) for i in range(v.shape[0])])
            assert np.array_equal(got.masks[role], want), role
            checked += 1
    assert checked >= 3


# ----------------------------------------------------------------------- weight patches


def _patched(graph: Graph, indices: Sequence[int], rng: np.random.Generator, how: str,
             roles: Sequence[str] = ROLES) -> tuple[Graph, dict[str, tuple[np.ndarray, np.ndarray]]]:  # fmt: skip
    """Random trained channel subsets (``how``: "prefix" 0..n-1, "delta" any increasing set,
    "all") with random int8 trained weights per role: (the graph with the current weights,
    the patches in tt_weight_patch layout)."""
    chain = prepare_fused_block(graph, indices).chain
    ops = {"lead": chain.lead, "depthwise": chain.depthwise, "project": chain.project}
    tensors = {t.name: t for t in graph.tensors}
    patches = {}
    for role in roles:
        i = ops[role]
        if i is None:
            continue
        w_name = str(graph.ops[i].inputs[1])
        w = tensors[w_name].data
        assert w is not None
        limit = w.shape[-1]
        if how == "all":
            ch = np.arange(limit)
        elif how == "prefix":
            ch = np.arange(int(rng.integers(1, limit + 1)))
        else:
            ch = np.sort(rng.choice(limit, int(rng.integers(1, limit + 1)), replace=False))
            if limit > 1 and np.array_equal(ch, np.arange(ch.size)):
                ch = ch[1:] if ch.size > 1 else np.array([limit - 1])
        new = np.array(w, copy=True)
        new[..., ch] = rng.integers(-128, 128, (*w.shape[:-1], ch.size), dtype=np.int8)
        tensors[w_name] = replace(tensors[w_name], data=new)
        wt = new[..., ch]
        if role == "depthwise":
            wt = wt.reshape(wt.shape[1:])
        elif role == "project":
            wt = wt.reshape(wt.shape[0], ch.size)
        patches[role] = (ch.astype(np.uint16), np.ascontiguousarray(wt))
    return replace(graph, tensors=tuple(tensors.values())), patches


def check_patched(lib: ctypes.CDLL, graph: Graph, indices: Sequence[int], x: np.ndarray, rng: np.random.Generator,
                  how: str, roles: Sequence[str] = ROLES) -> None:  # fmt: skip
    """C (flash weights + patches) == numpy on the graph holding the current weights: output and masks."""
    updated, patches = _patched(graph, indices, rng, how, roles)
    fb = fused_block_c(graph, indices).with_patches(patches)
    want, want_masks = numpy_reference(updated, indices, fb, x)
    got = run_c_fused_block(lib, fb, x, _roles(fb))
    assert got.status == 0
    assert np.array_equal(got.output, want), how
    for r in _roles(fb):
        assert np.array_equal(got.masks[r], want_masks[r]), (how, r)
    if _streamable(fb):
        streamed = run_c_fused_block(lib, fb, x, stream=True)
        assert streamed.status == 0 and np.array_equal(streamed.output, want)
    if fb.inplace_ok:
        inplace = run_c_fused_block(lib, fb, x, in_place=True)
        assert inplace.status == 0 and np.array_equal(inplace.output, want)


@pytest.mark.parametrize("how", ["prefix", "delta", "all"])
@pytest.mark.parametrize("case", [CASES[0], CASES[12], CASES[14], CASES[16]], ids=lambda c: c.name)
def test_weight_patches(lib: ctypes.CDLL, case: Case, how: str) -> None:
    rng = np.random.default_rng(len(case.name) * 7 + len(how))
    graph = _with_extremes(build(case, seed=5), rng, per_tensor=False)
    idx = range(len(graph.ops))
    check_patched(lib, graph, idx, _inputs(graph, 2), rng, how)
    check_patched(lib, graph, idx, _inputs(graph, 2, seed=4), rng, how, roles=("lead",))


@pytest.mark.parametrize("seed", range(6))
def test_weight_patches_random_blocks(lib: ctypes.CDLL, seed: int) -> None:
    rng = np.random.default_rng(77 + seed)
    k, stride, lead, residual = RANDOM[int(rng.integers(len(RANDOM)))]
    h, w = (int(v) for v in rng.integers(k, k + 6, 2))
    if lead == "stem":
        h, w = 2 * h, 2 * w
    case = Case("random", h, w, int(rng.integers(2, 9)), k, stride, lead=lead, residual=residual,
                expand=int(rng.integers(1, 7)), cout=0 if residual else int(rng.integers(1, 12)))  # fmt: skip
    graph = _with_extremes(build(case, seed=seed), rng, per_tensor=bool(seed % 2))
    check_patched(lib, graph, range(len(graph.ops)), _inputs(graph, 2, seed=seed), rng, ("prefix", "delta")[seed % 2])


def test_weight_patches_shipped_tte_block(lib: ctypes.CDLL) -> None:
    """The live blocks of the 128x128 tte program: the expansion trained at its channel subset."""
    graph = _model(FMNIST128)
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    rng = np.random.default_rng(3)
    probe = replace(graph, outputs=tuple(sorted({b.input for b in fused.blocks[-3:]})))
    values = dict(zip(probe.outputs, Simulator(probe).run([_inputs(graph, 1, seed=2)]), strict=True))
    for block in fused.blocks[-3:]:
        check_patched(lib, graph, block.op_indices, values[block.input], rng, "prefix", roles=("lead",))
        check_patched(lib, graph, block.op_indices, values[block.input], rng, "delta")


def test_refused_patches(lib: ctypes.CDLL) -> None:
    graph = build(CASES[0])
    idx = range(len(graph.ops))
    fb = fused_block_c(graph, idx)
    x = _inputs(graph, 1)
    in_c, mid_c = fb.in_hwc[2], fb.mid_hwc[2]
    lead_w = np.zeros((mid_c, 1, 1, 2), np.int8)
    bad: dict[str, list[tuple[list[int], np.ndarray]]] = {
        "lead": [([1, 0], lead_w), ([0, in_c], lead_w), ([1, 1], lead_w)],
        "depthwise": [([mid_c], np.zeros((3, 3, 1), np.int8))],
        "project": [([2, 1], np.zeros((fb.out_hwc[2], 2), np.int8))],
    }
    for role, cases in bad.items():
        for ch, wt in cases:
            res = run_c_fused_block(lib, fb.with_patches({role: (ch, wt)}), x)
            assert res.status == TT_ERR_ARG, (role, ch)
    ok = run_c_fused_block(lib, fb.with_patches({"lead": ([0, 1], lead_w)}), x)
    assert ok.status == 0


# ----------------------------------------------------------------------- refusals


def _call(lib: ctypes.CDLL, struct: object, x: np.ndarray, out: np.ndarray, scratch: np.ndarray,
          lead_mask: np.ndarray | None = None) -> int:  # fmt: skip
    vp = ctypes.c_void_p
    lm = None if lead_mask is None else vp(lead_mask.ctypes.data)
    return int(lib.tt_fused_block_s8(ctypes.byref(struct), vp(x.ctypes.data), None, None, None,  # type: ignore[arg-type]
                                     vp(out.ctypes.data), lm, None, None, vp(scratch.ctypes.data)))  # fmt: skip


def test_refused_params(lib: ctypes.CDLL) -> None:
    residual = build(CASES[0])  # expansion, residual ADD
    fb = fused_block_c(residual, range(len(residual.ops)))
    cp = fb.to_ctypes()
    x = _inputs(residual, 1)[0].copy()
    out = np.full(fb.out_hwc, 0x11, np.int8)
    scratch = np.zeros(fb.scratch_bytes, np.uint8)
    assert _call(lib, cp.struct, x, out, scratch) == 0
    out[...] = 0x11

    def refused(status: int, **fields: int) -> None:
        s = fb.to_ctypes().struct
        for path, value in fields.items():
            *parents, leaf = path.split("__")
            obj: object = s
            for name in parents:
                obj = getattr(obj, name)
            setattr(obj, leaf, value)
        assert _call(lib, s, x, out, scratch) == status, fields
        assert lib.tt_fused_block_scratch_bytes(ctypes.byref(s)) == 0
        assert np.all(out == 0x11), "nothing is written when the params are refused"

    refused(TT_ERR_SHAPE, out_h=fb.out_hwc[0] + 1)  # residual shapes differ, the window reads past the map
    refused(TT_ERR_SHAPE, mid_c=0)
    refused(TT_ERR_SHAPE, has_lead=2)
    refused(TT_ERR_SHAPE, lead_win__kh=300)  # the window no longer fits the padded input
    refused(TT_ERR_ARG, dw_win__sh=0)
    refused(TT_ERR_ARG, dw_pad__n_levels=3)
    refused(TT_ERR_ARG, dw__input_zp=128)
    refused(TT_ERR_ARG, proj__act_min=5, proj__act_max=4)
    refused(TT_ERR_ARG, add__left_shift=23)
    refused(TT_ERR_ARG, add__out_zp=-129)
    # an over-deep accumulation (more than 65793 taps of 128·255) is refused
    deep = fb.to_ctypes().struct
    deep.lead_win.kh, deep.lead_win.kw, deep.in_h, deep.in_w = 200, 200, 300, 300
    deep.mid_h, deep.mid_w = 101, 101
    assert _call(lib, deep, x, out, scratch) == TT_ERR_ARG
    # a per-channel shift outside -31..31, a negative multiplier
    for field, bad in (("shift", 32), ("multiplier", -1)):
        arr = getattr(fb.proj, field).copy()
        arr[-1] = bad
        s = fb.to_ctypes().struct
        setattr(s.proj, field, arr.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)))
        assert _call(lib, s, x, out, scratch) == TT_ERR_ARG
    # NULL pointers; a lead mask for a block without a lead conv
    vp = ctypes.c_void_p
    assert lib.tt_fused_block_s8(ctypes.byref(cp.struct), None, None, None, None, vp(out.ctypes.data), None, None,
                                 None, vp(scratch.ctypes.data)) == TT_ERR_ARG  # fmt: skip
    assert lib.tt_fused_block_s8(ctypes.byref(cp.struct), vp(x.ctypes.data), None, None, None, vp(out.ctypes.data),
                                 None, None, None, None) == TT_ERR_ARG  # fmt: skip
    assert lib.tt_fused_block_s8(None, vp(x.ctypes.data), None, None, None, vp(out.ctypes.data), None, None, None,
                                 vp(scratch.ctypes.data)) == TT_ERR_ARG  # fmt: skip
    no_lead = build(CASES[12])
    nl = fused_block_c(no_lead, range(len(no_lead.ops)))
    assert nl.lead is None
    res = run_c_fused_block(lib, nl, _inputs(no_lead, 1), ["lead"])
    assert res.status == TT_ERR_ARG
    # streaming needs the input rows in the scratch only: no residual ADD, no in-place 1×1 lead
    assert run_c_fused_block(lib, fb, _inputs(residual, 1), stream=True).status == TT_ERR_ARG
    plain = build(Case("direct_lead", 8, 8, 4, 3, 2, cout=6))
    pl = fused_block_c(plain, range(len(plain.ops)))
    assert not _streamable(pl)
    assert run_c_fused_block(lib, pl, _inputs(plain, 1), stream=True).status == TT_ERR_ARG
    stem = build(CASES[14])
    st = fused_block_c(stem, range(len(stem.ops)))
    null_source, o, sc = ROW_SOURCE(), vp(out.ctypes.data), vp(scratch.ctypes.data)
    status = lib.tt_fused_block_stream_s8(ctypes.byref(st.to_ctypes().struct), null_source, None, None, None, None, o,
                                          None, None, None, sc)  # fmt: skip
    assert status == TT_ERR_ARG


# ----------------------------------------------------------------------- builds


def test_ubsan_build_agrees(tmp_path_factory: pytest.TempPathFactory) -> None:
    """UndefinedBehaviorSanitizer (any report aborts) on wrapping biases, extreme zero points, stems."""
    try:
        flags = ("-fsanitize=undefined", "-fno-sanitize-recover=all")
        path = build_shared(SOURCES, tmp_path_factory.mktemp("ubsan"), extra_flags=flags, name="tt_fb_ubsan")
    except Exception as e:  # pragma: no cover - toolchain without libubsan
        pytest.skip(f"no UBSan build: {e}")
    ub = declare(ctypes.CDLL(str(path)))
    rng = np.random.default_rng(5)
    for case in (CASES[16], CASES[14], CASES[1], Case("stem_k7", 12, 11, 3, 7, 1, lead="stem", cout=5)):
        graph = _with_extremes(build(case, seed=3), rng, per_tensor=False)
        check_block(ub, graph, range(len(graph.ops)), _inputs(graph, 2))


def test_cortex_m4_compiles(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:  # pragma: no cover
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off",
             "-Wall", "-Wextra", "-Werror", "-O2", "-c"]  # fmt: skip
    for source in SOURCES:
        obj = tmp_path / f"{source.stem}.o"
        cmd = [cc, *flags, f"-I{RUNTIME_INCLUDE}", str(source), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        # integer only: no floating-point instruction or soft-float call in the object
        dump = subprocess.run([shutil.which("arm-none-eabi-objdump") or "arm-none-eabi-objdump", "-d", str(obj)],
                              capture_output=True, text=True)  # fmt: skip
        if dump.returncode == 0:
            assert not any(m in dump.stdout for m in ("vmul.f", "vadd.f", "vcvt", "__aeabi_f", "__aeabi_d"))
