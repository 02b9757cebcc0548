"""ctypes mirrors of ``tt_fused_block.h`` and the translation of a fused block's numpy
parameters into the C kernel's parameters.

:func:`fused_block_c` turns a fused chain of a graph (a :class:`FusedBlock` or its op
indices) into a :class:`FusedBlockC`: plain Python ints and numpy arrays holding exactly
what ``tt_fused_block_params`` needs (geometry, padding levels, int8 weights, per-channel
multipliers/shifts computed as TFLite Micro's Prepare computes them, biases, ADD
constants). It cross-checks every derived value against the numpy kernel's prepared
:class:`FusedBlockParams` (padded-row geometry, clamp ranges, the ADD table), so a C
struct built from it computes the numpy kernel's bytes. A code generator can render a
:class:`FusedBlockC` as ``static const`` initialisers; tests call
:meth:`FusedBlockC.to_ctypes` and :func:`run_c_fused_block`.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from codegen.cparams.forward import TtWeightPatch, weight_patch
from tinytrain.errors import GraphError, UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import ElementwiseAttrs, Op, OpKind
from tinytrain.passes.fuse_blocks import FusedBlock
from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier, wrap_int32
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.core_common import per_tensor_qparams, quantized_activation_range
from tinytrain.sim.kernels.core_conv import ConvParams, DepthwiseParams, Geometry, channel_qparams
from tinytrain.sim.kernels.core_shape import PadParams
from tinytrain.sim.kernels.fused_block import FusedBlockParams, prepare_fused_block
from tinytrain.sim.kernels.fused_rows import PaddedRows, PadLevel, padded_rows
from tinytrain.train.kernels.mask import mask_nbytes

MAX_PAD_LEVELS = 2  # TT_FB_MAX_PAD_LEVELS
ADD_LEFT_SHIFT = 20  # TFLite Micro's int8 ADD
ROLES = ("lead", "depthwise", "project")

_I32P = ctypes.POINTER(ctypes.c_int32)
_I8P = ctypes.POINTER(ctypes.c_int8)


# ----------------------------------------------------------------------- ctypes mirrors


class CWindow(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("kh", "kw", "sh", "sw", "dh", "dw")]


class CPadLevel(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int32) for n in ("top", "bottom", "left", "right", "value")]


class CPadding(ctypes.Structure):
    _fields_ = [("n_levels", ctypes.c_int32), ("level", CPadLevel * MAX_PAD_LEVELS)]


class CStage(ctypes.Structure):
    _fields_ = [
        ("weights", _I8P),
        ("multiplier", _I32P),
        ("shift", _I32P),
        *[(n, ctypes.c_int32) for n in ("input_zp", "output_zp", "act_min", "act_max", "mask_lo", "mask_hi")],
        ("patch", ctypes.POINTER(TtWeightPatch)),
    ]


class CAdd(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_int32)
        for n in (
            "x_zp", "x_multiplier", "x_shift", "p_zp", "p_multiplier", "p_shift", "left_shift",
            "out_multiplier", "out_shift", "out_zp", "act_min", "act_max",
        )
    ]  # fmt: skip


class CFusedBlockParams(ctypes.Structure):
    _fields_ = [
        *[(n, ctypes.c_int32) for n in ("in_h", "in_w", "in_c", "mid_h", "mid_w", "mid_c", "out_h", "out_w", "out_c")],
        ("has_lead", ctypes.c_int32),
        ("lead_win", CWindow),
        ("lead_pad", CPadding),
        ("lead", CStage),
        ("dw_win", CWindow),
        ("dw_pad", CPadding),
        ("dw", CStage),
        ("proj", CStage),
        ("has_add", ctypes.c_int32),
        ("add", CAdd),
    ]


ROW_SOURCE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, _I8P)


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Sets the argument and result types of the fused-block functions of ``lib``."""
    vp = ctypes.c_void_p
    params = ctypes.POINTER(CFusedBlockParams)
    lib.tt_fused_block_scratch_bytes.argtypes = [params]
    lib.tt_fused_block_scratch_bytes.restype = ctypes.c_size_t
    lib.tt_fused_block_s8.argtypes = [params, vp, vp, vp, vp, vp, vp, vp, vp, vp]
    lib.tt_fused_block_s8.restype = ctypes.c_int
    lib.tt_fused_block_stream_s8.argtypes = [params, ROW_SOURCE, vp, vp, vp, vp, vp, vp, vp, vp, vp]
    lib.tt_fused_block_stream_s8.restype = ctypes.c_int
    return lib


# ------------------------------------------------------------------- Python-side params


@dataclass(frozen=True)
class Window:
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int

    @staticmethod
    def of(g: Geometry) -> Window:
        return Window(g.kh, g.kw, g.sh, g.sw, g.dh, g.dw)

    def to_c(self) -> CWindow:
        return CWindow(self.kh, self.kw, self.sh, self.sw, self.dh, self.dw)


@dataclass(frozen=True, eq=False)
class Stage:
    """One convolution of the block: int8 weights in the C layout, per-channel (q, shift)."""

    weights: np.ndarray  # int8, C-contiguous: lead OHWI, depthwise (kh, kw, C), projection (out, in)
    multiplier: np.ndarray  # int32 per output channel
    shift: np.ndarray  # int32 per output channel (> 0: left)
    bias: np.ndarray | None  # int32 per output channel (passed to the C function separately)
    input_zp: int
    output_zp: int
    act_min: int
    act_max: int
    mask_lo: int
    mask_hi: int
    # trained channel subset: (channels uint16 strictly increasing, w_train int8 in the
    # tt_weight_patch layout of the stage: lead (O, kh, kw, n), depthwise (kh, kw, n),
    # projection (O, n)); None: the flash weights only
    patch: tuple[np.ndarray, np.ndarray] | None = None

    def to_c(self, keep: list[Any]) -> CStage:
        """The ctypes stage; ``keep`` receives the objects its pointers need alive."""
        patch = None
        if self.patch is not None:
            wp = weight_patch(*self.patch)
            keep.append(wp)
            patch = ctypes.pointer(wp.struct)
        return CStage(
            self.weights.ctypes.data_as(_I8P), self.multiplier.ctypes.data_as(_I32P), self.shift.ctypes.data_as(_I32P),
            self.input_zp, self.output_zp, self.act_min, self.act_max, self.mask_lo, self.mask_hi, patch,
        )  # fmt: skip


@dataclass(frozen=True)
class Add:
    """TFLite Micro int8 ADD constants, by role (block input x, projection p)."""

    x_zp: int
    x_multiplier: int
    x_shift: int
    p_zp: int
    p_multiplier: int
    p_shift: int
    left_shift: int
    out_multiplier: int
    out_shift: int
    out_zp: int
    act_min: int
    act_max: int

    def to_c(self) -> CAdd:
        return CAdd(
            self.x_zp, self.x_multiplier, self.x_shift, self.p_zp, self.p_multiplier, self.p_shift, self.left_shift,
            self.out_multiplier, self.out_shift, self.out_zp, self.act_min, self.act_max,
        )  # fmt: skip

    def table(self) -> np.ndarray:
        """The 256 × 256 outputs indexed by (x byte, projection byte), with the C arithmetic."""
        v = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int64)
        xs = multiply_by_quantized_multiplier((v - self.x_zp) << self.left_shift, self.x_multiplier, self.x_shift)
        ps = multiply_by_quantized_multiplier((v - self.p_zp) << self.left_shift, self.p_multiplier, self.p_shift)
        raw = multiply_by_quantized_multiplier(wrap_int32(xs[:, None] + ps[None, :]), self.out_multiplier,
                                               self.out_shift)  # fmt: skip
        return np.clip(raw + self.out_zp, self.act_min, self.act_max).astype(np.int8)


def _pad_to_c(levels: Sequence[PadLevel]) -> CPadding:
    pad = CPadding()
    pad.n_levels = len(levels)
    for i, lv in enumerate(levels):
        pad.level[i] = CPadLevel(lv.top, lv.bottom, lv.left, lv.right, lv.value)
    return pad


@dataclass(frozen=True, eq=False)
class FusedBlockC:
    """Everything ``tt_fused_block_params`` holds, plus the biases and sizes around it."""

    in_hwc: tuple[int, int, int]
    mid_hwc: tuple[int, int, int]
    out_hwc: tuple[int, int, int]
    lead: Stage | None
    lead_win: Window | None
    lead_pad: tuple[PadLevel, ...]
    dw: Stage
    dw_win: Window
    dw_pad: tuple[PadLevel, ...]
    proj: Stage
    add: Add | None
    scratch_bytes: int  # the numpy kernel's (= the memory planner's) scratch per sample
    inplace_ok: bool

    def mask_shape(self, role: str) -> tuple[int, int, int]:
        """(H, W, C) of the output of the stage ``role`` ("lead", "depthwise", "project")."""
        oh, ow, _ = self.out_hwc
        shapes = {"lead": self.mid_hwc, "depthwise": (oh, ow, self.mid_hwc[2]), "project": self.out_hwc}
        return shapes[role]

    def with_patches(self, patches: Mapping[str, tuple[Sequence[int] | np.ndarray, np.ndarray]]) -> FusedBlockC:
        """The same block with weight patches by role ("lead", "depthwise", "project"):
        (trained channels, w_train in the stage's tt_weight_patch layout)."""
        if set(patches) - set(ROLES):
            raise UsageError(f"patch roles must be among {ROLES}, got {sorted(patches)}")
        stages: dict[str, Stage | None] = {"lead": self.lead, "depthwise": self.dw, "project": self.proj}
        for role, (ch, wt) in patches.items():
            st = stages[role]
            if st is None:
                raise UsageError("this fused block has no leading convolution: no lead patch")
            stages[role] = replace(st, patch=(np.asarray(ch, np.uint16), np.ascontiguousarray(wt, np.int8)))
        dw, proj = stages["depthwise"], stages["project"]
        assert dw is not None and proj is not None
        return replace(self, lead=stages["lead"], dw=dw, proj=proj)

    def to_ctypes(self) -> CParams:
        keep: list[Any] = []
        p = CFusedBlockParams()
        p.in_h, p.in_w, p.in_c = self.in_hwc
        p.mid_h, p.mid_w, p.mid_c = self.mid_hwc
        p.out_h, p.out_w, p.out_c = self.out_hwc
        if self.lead is not None and self.lead_win is not None:
            p.has_lead = 1
            p.lead_win = self.lead_win.to_c()
            p.lead_pad = _pad_to_c(self.lead_pad)
            p.lead = self.lead.to_c(keep)
        p.dw_win = self.dw_win.to_c()
        p.dw_pad = _pad_to_c(self.dw_pad)
        p.dw = self.dw.to_c(keep)
        p.proj = self.proj.to_c(keep)
        if self.add is not None:
            p.has_add = 1
            p.add = self.add.to_c()
        return CParams(p, self, tuple(keep))


@dataclass(frozen=True, eq=False)
class CParams:
    """A ctypes ``tt_fused_block_params`` and the block whose arrays it points into (kept alive)."""

    struct: CFusedBlockParams
    block: FusedBlockC
    keep: tuple[Any, ...] = ()  # the weight patches the struct points to


def c_scratch_bytes(fb: FusedBlockC) -> int:
    """The C kernel's scratch formula (``tt_fused_block_scratch_bytes``), from its own params."""
    in_h, in_w, in_c = fb.in_hwc
    lead_window = 0
    if fb.lead_win is not None:
        g = fb.lead_win
        wp = in_w + sum(lv.left + lv.right for lv in fb.lead_pad)
        hp = in_h + sum(lv.top + lv.bottom for lv in fb.lead_pad)
        if (g.kh, g.kw, g.sh, g.sw, hp, wp) != (1, 1, 1, 1, in_h, in_w):
            lead_window = g.kh * wp * in_c
    _, mid_w, mid_c = fb.mid_hwc
    _, out_w, out_c = fb.out_hwc
    ring = ((fb.dw_win.kh - 1) * fb.dw_win.dh + 1) * (mid_w + sum(lv.left + lv.right for lv in fb.dw_pad)) * mid_c
    return lead_window + ring + out_w * mid_c + (out_w * out_c if fb.add is not None else 0)


# ---------------------------------------------------------------- numpy params -> C params


def _stage(graph: Graph, op: Op, p: ConvParams | DepthwiseParams, mask: tuple[int, int] | None) -> Stage:
    inp, filt_t, out = graph.tensor(op.inputs[0] or ""), graph.tensor(op.inputs[1] or ""), graph.tensor(op.outputs[0])
    bias_name = op.inputs[2] if len(op.inputs) > 2 else None
    channels = int(out.shape[3])
    in_scale, in_zp = per_tensor_qparams(op, inp, "input")
    out_scale, out_zp = per_tensor_qparams(op, out, "output")
    qs: list[int] = []
    ss: list[int] = []
    for fs in channel_qparams(op, filt_t, channels):
        q, s = quantize_multiplier(in_scale * fs / out_scale)  # the expression of core_conv.conv_requantizer
        qs.append(q)
        ss.append(s)
    data = filt_t.data
    assert data is not None and p.requant is not None
    w: np.ndarray  # the filter's bytes in their TFLite order; 1×1 filters viewed as (out, in)
    if op.kind is OpKind.DEPTHWISE_CONV_2D:
        w = data.reshape(data.shape[1], data.shape[2], data.shape[3])
    elif data.shape[1:3] == (1, 1):
        w = data.reshape(data.shape[0], data.shape[3])
    else:
        w = data
    bias = None
    if bias_name is not None:
        bd = graph.tensor(bias_name).data
        assert bd is not None
        bias = np.ascontiguousarray(bd.reshape(-1), dtype=np.int32)
    if p.pad_value != in_zp:
        raise GraphError(f"{op.describe()}: padding value {p.pad_value} is not the input zero point {in_zp}")
    lo, hi = p.requant.lo, p.requant.hi
    return Stage(
        weights=np.ascontiguousarray(w, dtype=np.int8),
        multiplier=np.asarray(qs, dtype=np.int32),
        shift=np.asarray(ss, dtype=np.int32),
        bias=bias,
        input_zp=in_zp,
        output_zp=out_zp,
        act_min=lo,
        act_max=hi,
        mask_lo=lo if mask is None else mask[0],
        mask_hi=hi if mask is None else mask[1],
    )


def _pad_op_level(graph: Graph, index: int) -> PadLevel:
    op = graph.ops[index]
    pp = KERNELS[op.kind].prepare(op, graph.op_inputs(op), graph.op_outputs(op))
    assert isinstance(pp, PadParams)
    (_, _), (t, b), (lft, r), (_, _) = pp.pads
    return PadLevel(t, b, lft, r, int(pp.value))


def _levels(graph: Graph, pad_op: int | None, g: Geometry, value: int, rows: PaddedRows) -> tuple[PadLevel, ...]:
    levels = [] if pad_op is None else [_pad_op_level(graph, pad_op)]
    levels.append(PadLevel(g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, value))
    levels = [lv for lv in levels if (lv.top, lv.bottom, lv.left, lv.right) != (0, 0, 0, 0)]
    mine = padded_rows(rows.height, rows.width, levels)
    same = (
        (mine.padded_height, mine.padded_width, mine.col0, mine.source) ==
        (rows.padded_height, rows.padded_width, rows.col0, rows.source)
        and np.array_equal(mine.edge, rows.edge)
        and all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
                for a, b in zip(mine.pad_rows, rows.pad_rows, strict=True))
    )  # fmt: skip
    if not same or len(levels) > MAX_PAD_LEVELS:  # pragma: no cover - the fused kernel builds the same levels
        raise GraphError("fused block padding does not map onto the C kernel's padding levels")
    return tuple(levels)


def _add(graph: Graph, p: FusedBlockParams) -> Add | None:
    if p.add is None or p.chain.add is None:
        return None
    op = graph.ops[p.chain.add]
    a, b = (graph.tensor(n or "") for n in op.inputs)
    out = graph.tensor(op.outputs[0])
    s1, z1 = per_tensor_qparams(op, a, "input 1")
    s2, z2 = per_tensor_qparams(op, b, "input 2")
    so, zo = per_tensor_qparams(op, out, "output")
    twice = 2.0 * max(s1, s2)  # TFLite Micro's ADD Prepare, in double
    q1, sh1 = quantize_multiplier(s1 / twice)
    q2, sh2 = quantize_multiplier(s2 / twice)
    qo, sho = quantize_multiplier(twice / ((1 << ADD_LEFT_SHIFT) * so))
    assert isinstance(op.attrs, ElementwiseAttrs)
    lo, hi = quantized_activation_range(op, op.attrs.activation, so, zo)
    x, pj = ((z1, q1, sh1), (z2, q2, sh2)) if p.residual_first else ((z2, q2, sh2), (z1, q1, sh1))
    add = Add(*x, *pj, ADD_LEFT_SHIFT, qo, sho, zo, lo, hi)
    assert p.add.table is not None
    table = add.table()
    want = p.add.table.reshape(256, 256)
    if not np.array_equal(table if p.residual_first else table.T, want):
        raise GraphError(f"{op.describe()}: the C ADD constants do not reproduce the simulator's ADD table")
    return add


def fused_block_c(
    graph: Graph, block: FusedBlock | Sequence[int], mask_bounds: Mapping[str, tuple[int, int]] | None = None
) -> FusedBlockC:
    """The C kernel's parameters for a fused chain (a :class:`FusedBlock` or its op indices).

    ``mask_bounds`` maps a role ("lead", "depthwise", "project") to the ``(act_min, act_max)``
    of its clamp mask (default: the stage's own activation range)."""
    indices = list(block.op_indices if isinstance(block, FusedBlock) else block)
    p = prepare_fused_block(graph, indices)
    bounds = dict(mask_bounds or {})
    if set(bounds) - set(ROLES):
        raise UsageError(f"mask roles must be among {ROLES}, got {sorted(bounds)}")
    c = p.chain
    lead = lead_win = None
    lead_pad: tuple[PadLevel, ...] = ()
    if c.lead is not None:
        assert p.lead is not None and p.lead_rows is not None
        lead = _stage(graph, graph.ops[c.lead], p.lead, bounds.get("lead"))
        lead_win = Window.of(p.lead.geom)
        lead_pad = _levels(graph, c.pad_in, p.lead.geom, p.lead.pad_value, p.lead_rows)
    elif "lead" in bounds:
        raise UsageError("this fused block has no leading convolution: no lead mask")
    dw_op, proj_op = graph.ops[c.depthwise], graph.ops[c.project]
    mid_in = graph.tensor(dw_op.inputs[0] or "")
    _, h, w, cin = p.in_shape
    _, oh, ow, oc = p.out_shape
    fb = FusedBlockC(
        in_hwc=(h, w, cin),
        mid_hwc=(p.dw_rows.height, p.dw_rows.width, p.mid_channels),
        out_hwc=(oh, ow, oc),
        lead=lead,
        lead_win=lead_win,
        lead_pad=lead_pad,
        dw=_stage(graph, dw_op, p.dw, bounds.get("depthwise")),
        dw_win=Window.of(p.dw.geom),
        dw_pad=_levels(graph, c.pad_mid, p.dw.geom, p.dw.pad_value, p.dw_rows),
        proj=_stage(graph, proj_op, p.proj, bounds.get("project")),
        add=_add(graph, p),
        scratch_bytes=p.scratch_bytes,
        inplace_ok=p.inplace_ok,
    )
    if mid_in.shape[3] != p.mid_channels or c_scratch_bytes(fb) != p.scratch_bytes:  # pragma: no cover
        raise GraphError("fused block geometry does not map onto the C kernel")
    return fb


# ------------------------------------------------------------------------------ running


def _vp(a: np.ndarray | None) -> ctypes.c_void_p | None:
    if a is None:
        return None
    if not a.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return ctypes.c_void_p(a.ctypes.data)


def row_source(x: np.ndarray) -> Any:
    """A ``tt_fb_row_source`` that copies rows of one sample ``x`` (H, W, C) int8 (keep it alive during the call)."""
    rows = np.ascontiguousarray(x)
    row_bytes = rows[0].nbytes

    def source(_ctx: int | None, row: int, ptr: Any) -> None:
        ctypes.memmove(ptr, rows[row].ctypes.data, row_bytes)

    return ROW_SOURCE(source)


@dataclass(frozen=True, eq=False)
class CResult:
    output: np.ndarray  # (N, H, W, C) int8
    masks: Mapping[str, np.ndarray]  # role -> (N, mask_nbytes) uint8 packed masks
    status: int


def run_c_fused_block(
    lib: ctypes.CDLL,
    fb: FusedBlockC,
    x: np.ndarray,
    masks: Sequence[str] = (),
    *,
    in_place: bool = False,
    stream: bool = False,
    biases: Mapping[str, np.ndarray | None] | None = None,
    scratch_fill: int = 0x5A,
) -> CResult:
    """Runs ``tt_fused_block_s8`` (or ``_stream_s8``, reading the input rows through a callback)
    on each sample of ``x`` (N, H, W, C_in) int8, emitting the packed masks of ``masks`` roles.

    ``in_place`` passes the input buffer (a copy of ``x``) as the output. The scratch gets
    exactly ``fb.scratch_bytes`` bytes (filled with ``scratch_fill`` before each sample,
    followed by guard bytes that must stay untouched). ``biases`` overrides the graph's
    biases per role. Stops at the first non-zero status (returned in the result)."""
    params = fb.to_ctypes()
    bias = {
        "lead": fb.lead.bias if fb.lead is not None else None,
        "depthwise": fb.dw.bias,
        "project": fb.proj.bias,
    }
    bias.update(biases or {})
    keep = [None if bias[r] is None else np.ascontiguousarray(bias[r], np.int32) for r in ROLES]
    bias_args = [_vp(b) for b in keep]
    n = x.shape[0]
    if x.dtype != np.int8 or tuple(x.shape[1:]) != fb.in_hwc:
        raise UsageError(f"input must be int8 (N, {fb.in_hwc}), got {x.dtype}{list(x.shape)}")
    oh, ow, oc = fb.out_hwc
    out = np.empty((n, oh, ow, oc), np.int8)
    guard = 64
    sizes = {r: mask_nbytes(math.prod(fb.mask_shape(r))) for r in masks}
    packed = {r: np.full((n, sizes[r] + guard), 0xA5, np.uint8) for r in masks}
    scratch = np.empty(fb.scratch_bytes + guard, np.uint8)
    status = 0
    for i in range(n):
        scratch[:] = scratch_fill
        scratch[fb.scratch_bytes :] = 0xC3
        xi = np.array(x[i], order="C", copy=True)  # the in-place run overwrites it
        dst = xi if in_place else np.full(fb.out_hwc, 0x77, np.int8)
        mask_args = [_vp(packed[r][i]) if r in packed else None for r in ROLES]
        if stream:
            status = lib.tt_fused_block_stream_s8(ctypes.byref(params.struct), row_source(xi), None, *bias_args,
                                                  _vp(dst), *mask_args, _vp(scratch))  # fmt: skip
        else:
            status = lib.tt_fused_block_s8(ctypes.byref(params.struct), _vp(xi), *bias_args, _vp(dst), *mask_args,
                                           _vp(scratch))  # fmt: skip
        if status != 0:
            break
        if np.any(scratch[fb.scratch_bytes :] != 0xC3):
            raise AssertionError("the C kernel wrote past its scratch")
        for r in packed:
            if np.any(packed[r][i, sizes[r] :] != 0xA5):
                raise AssertionError(f"the C kernel wrote past the {r} mask")
        out[i] = dst
    del keep
    return CResult(out, {r: v[:, : sizes[r]] for r, v in packed.items()}, int(status))
