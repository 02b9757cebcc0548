"""Row-streamed fused inverted-residual block: the frozen stage without its big activations.

The chain ``[PAD] → [CONV_2D] → [PAD] → DEPTHWISE_CONV_2D → CONV_2D 1×1 → [ADD]`` of an
inverted-residual block (the leading CONV_2D is the 1×1 expansion, or any convolution —
e.g. MobileNetV2's stem, 3×3 stride 2 on the image) is computed one output row at a
time, so that neither the expansion nor the depthwise output is ever materialized:

* a **ring** of ``R = (kh − 1)·dh + 1`` padded rows holds the depthwise input rows the
  window needs; padded row ``r`` lives in slot ``r mod R``. For each output row ``oy``
  the rows ``oy·sh … oy·sh + R − 1`` not yet in the ring are produced: a padding row
  is filled with its pad bytes, a source row by the leading convolution (one row of
  its output, from the materialized block input) or, without one, copied from the
  block input;
* the depthwise window over the ring gives one **depthwise row** (``Wo × C_exp``);
* the 1×1 projection of that row is written to the output row, or, with a residual,
  to a **projection row** that the ADD combines with the block input row.

Every piece reuses the prepared parameters of the simulator's own kernels
(:mod:`core_conv`, :mod:`core_shape`, :mod:`core_elementwise`): the same exact integer
accumulation (float BLAS within the exactness bound chosen by ``prepare``), the same
:class:`Requantizer`, the same ADD table, so the bytes are those of the unfused ops.

Scratch (per sample, int8; what the C twin of this kernel needs — it accumulates each
output value in an int32 register, so the numpy float accumulators have no C buffer):

* ``lead_window = kh_a × Wp_a × C_in`` — the padded input rows of a leading conv that
  has a window or padding (0 for a 1×1 stride-1 unpadded expansion, read in place);
* ``ring = R × Wp × C_exp`` — ``Wp`` the depthwise input width with all its padding;
* ``dw_row = Wo × C_exp``;
* ``proj_row = Wo × C_out`` with a residual ADD, else 0.

In-place: when the output has the block input's shape (a stride-1 residual block) and
no row of the input is read after the output row with the same index is written,
``run_fused_block(p, x, out=x)`` is exact and the block needs no separate output buffer
(:attr:`FusedBlockParams.inplace_ok`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import GraphError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.core_common import unsupported
from tinytrain.sim.kernels.core_conv import ConvParams, DepthwiseParams, Geometry
from tinytrain.sim.kernels.core_elementwise import BinaryParams
from tinytrain.sim.kernels.core_shape import PadParams
from tinytrain.sim.kernels.fused_rows import PaddedRows, PadLevel, padded_rows


@dataclass(frozen=True)
class ChainOps:
    """The ops of one fused chain, by role (indices into ``graph.ops``)."""

    pad_in: int | None  # PAD before the leading conv
    lead: int | None  # leading CONV_2D (expansion or stem)
    pad_mid: int | None  # PAD before the depthwise conv
    depthwise: int
    project: int
    add: int | None

    def indices(self) -> tuple[int, ...]:
        roles = (self.pad_in, self.lead, self.pad_mid, self.depthwise, self.project, self.add)
        return tuple(i for i in roles if i is not None)


@dataclass(frozen=True)
class Scratch:
    """Scratch bytes per sample (see the module docstring for the formulas)."""

    lead_window: int
    ring: int
    dw_row: int
    proj_row: int

    @property
    def total(self) -> int:
        return self.lead_window + self.ring + self.dw_row + self.proj_row


@dataclass(frozen=True, eq=False)
class FusedBlockParams:
    chain: ChainOps
    input_name: str
    output_name: str
    in_shape: tuple[int, ...]  # IR shapes (batch 1)
    out_shape: tuple[int, ...]
    lead: ConvParams | None
    lead_rows: PaddedRows | None  # padded input of the leading conv
    lead_direct: bool  # 1×1, stride 1, unpadded: read the input rows in place
    dw: DepthwiseParams
    dw_rows: PaddedRows  # padded depthwise input
    mid_channels: int
    proj: ConvParams
    add: BinaryParams | None
    residual_first: bool  # ADD(x, projection) rather than ADD(projection, x)
    scratch: Scratch
    inplace_ok: bool

    @property
    def scratch_bytes(self) -> int:
        return self.scratch.total


def _op_error(op: Op, detail: str) -> GraphError:
    return GraphError(f"{op.describe()}: cannot fuse: {detail}")


def chain_roles(graph: Graph, indices: Sequence[int]) -> ChainOps:
    """Assigns the roles of a candidate chain of consecutive ops; raises :class:`GraphError`
    if the kinds or the dataflow do not form ``[PAD] [CONV_2D] [PAD] DW CONV_2D [ADD]``."""
    ops = [graph.ops[i] for i in indices]
    if not ops:
        raise GraphError("cannot fuse an empty chain")
    pos = 0
    roles: dict[str, int] = {}

    def take(kind: OpKind, role: str, before: OpKind | None = None) -> None:
        nonlocal pos
        nxt = ops[pos + 1].kind if pos + 1 < len(ops) else None
        if pos < len(ops) and ops[pos].kind is kind and (before is None or nxt is before):
            roles[role] = indices[pos]
            pos += 1

    take(OpKind.PAD, "pad_in", OpKind.CONV_2D)
    take(OpKind.CONV_2D, "lead")
    if "pad_in" in roles and "lead" not in roles:  # pragma: no cover - guarded by the lookahead
        raise _op_error(ops[0], "a PAD must be followed by a convolution")
    take(OpKind.PAD, "pad_mid", OpKind.DEPTHWISE_CONV_2D)
    take(OpKind.DEPTHWISE_CONV_2D, "depthwise")
    take(OpKind.CONV_2D, "project")
    take(OpKind.ADD, "add")
    if "depthwise" not in roles or "project" not in roles or pos != len(ops):
        kinds = " → ".join(op.kind.value for op in ops)
        raise GraphError(f"cannot fuse {kinds}: not [PAD] [CONV_2D] [PAD] DEPTHWISE_CONV_2D CONV_2D [ADD]")
    chain = ChainOps(
        roles.get("pad_in"), roles.get("lead"), roles.get("pad_mid"), roles["depthwise"], roles["project"],
        roles.get("add"),
    )  # fmt: skip
    seq = [graph.ops[i] for i in chain.indices() if i != chain.add]
    for a, b in itertools.pairwise(seq):
        if b.inputs[0] != a.outputs[0]:
            raise _op_error(b, f"its input is not the output of {a.describe()}")
    if chain.add is not None:
        add = graph.ops[chain.add]
        x, p = seq[0].inputs[0], seq[-1].outputs[0]
        if sorted(n or "" for n in add.inputs) != sorted([x or "", p]):
            raise _op_error(add, "the ADD must combine the block input and the projection output")
    return chain


def _prepare(graph: Graph, index: int) -> object:
    op = graph.ops[index]
    return KERNELS[op.kind].prepare(op, graph.op_inputs(op), graph.op_outputs(op))


def _pad_level(op: Op, p: PadParams) -> PadLevel:
    (b0, b1), (t, b), (lft, r), (c0, c1) = p.pads
    if b0 or b1 or c0 or c1:
        raise unsupported(op, "a fused PAD may only pad the spatial axes")
    return PadLevel(t, b, lft, r, int(p.value))


def _geom_level(g: Geometry, value: int) -> PadLevel:
    return PadLevel(g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, value)


def prepare_fused_block(graph: Graph, indices: Sequence[int]) -> FusedBlockParams:
    """Validates a chain of ops (indices into ``graph.ops``, in execution order) and prepares the
    fused kernel from the simulator kernels' own prepared parameters."""
    chain = chain_roles(graph, indices)
    first = graph.ops[chain.indices()[0]]
    x_name = first.inputs[0]
    assert x_name is not None
    x = graph.tensor(x_name)
    dw_op, proj_op = graph.ops[chain.depthwise], graph.ops[chain.project]
    for i in chain.indices():
        op = graph.ops[i]
        for t in (*graph.op_outputs(op), graph.op_inputs(op)[0]):
            if t is None or t.dtype is not DType.INT8 or len(t.shape) != 4:
                raise unsupported(op, "the fused block kernel runs int8 NHWC tensors only")
    _, h, w, c_in = x.shape

    lead: ConvParams | None = None
    lead_rows: PaddedRows | None = None
    lead_direct = False
    src_h, src_w = h, w
    lead_window = 0
    if chain.lead is not None:
        lead_op = graph.ops[chain.lead]
        lp = _prepare(graph, chain.lead)
        assert isinstance(lp, ConvParams)
        if lp.groups != 1:
            raise unsupported(lead_op, "grouped convolution cannot lead a fused block")
        levels = []
        if chain.pad_in is not None:
            pp = _prepare(graph, chain.pad_in)
            assert isinstance(pp, PadParams)
            levels.append(_pad_level(graph.ops[chain.pad_in], pp))
        levels.append(_geom_level(lp.geom, lp.pad_value))
        lead, lead_rows = lp, padded_rows(h, w, levels)
        g = lp.geom
        lead_direct = (
            (g.kh, g.kw, g.sh, g.sw) == (1, 1, 1, 1) and lead_rows.padded_width == w and lead_rows.padded_height == h
        )
        if not lead_direct:
            lead_window = g.kh * lead_rows.padded_width * c_in
        src_h, src_w = g.out_h, g.out_w
    dp = _prepare(graph, chain.depthwise)
    assert isinstance(dp, DepthwiseParams)
    if dp.mult != 1:
        raise unsupported(dw_op, "depth multiplier above 1 in a fused block")
    mid = int(graph.op_outputs(dw_op)[0].shape[3])
    levels = []
    if chain.pad_mid is not None:
        pp = _prepare(graph, chain.pad_mid)
        assert isinstance(pp, PadParams)
        levels.append(_pad_level(graph.ops[chain.pad_mid], pp))
    levels.append(_geom_level(dp.geom, dp.pad_value))
    dw_rows = padded_rows(src_h, src_w, levels)

    pj = _prepare(graph, chain.project)
    assert isinstance(pj, ConvParams)
    g = pj.geom
    if (g.kh, g.kw, g.sh, g.sw) != (1, 1, 1, 1) or pj.groups != 1:
        raise unsupported(proj_op, "the projection of a fused block must be a 1×1 stride-1 convolution")
    out_t = graph.op_outputs(graph.ops[chain.indices()[-1]])[0]
    add: BinaryParams | None = None
    residual_first = False
    if chain.add is not None:
        ap = _prepare(graph, chain.add)
        assert isinstance(ap, BinaryParams)
        add_op = graph.ops[chain.add]
        if out_t.shape != x.shape:
            raise unsupported(add_op, "the residual ADD of a fused block must not broadcast")
        add, residual_first = ap, add_op.inputs[0] == x_name
    wo, c_out = dp.geom.out_w, int(out_t.shape[3])
    scratch = Scratch(
        lead_window=lead_window,
        ring=_ring_rows(dp.geom) * dw_rows.padded_width * mid,
        dw_row=wo * mid,
        proj_row=wo * c_out if add is not None else 0,
    )
    return FusedBlockParams(
        chain=chain,
        input_name=x_name,
        output_name=out_t.name,
        in_shape=tuple(x.shape),
        out_shape=tuple(out_t.shape),
        lead=lead,
        lead_rows=lead_rows,
        lead_direct=lead_direct,
        dw=dp,
        dw_rows=dw_rows,
        mid_channels=mid,
        proj=pj,
        add=add,
        residual_first=residual_first,
        scratch=scratch,
        inplace_ok=x.shape == out_t.shape and _inplace_safe(dp.geom, dw_rows, lead, lead_rows),
    )


def _ring_rows(g: Geometry) -> int:
    return (g.kh - 1) * g.dh + 1


def _inplace_safe(g: Geometry, dw_rows: PaddedRows, lead: ConvParams | None, lead_rows: PaddedRows | None) -> bool:
    """True when, running the rows in the kernel's order, no input row is read after the
    output row with the same index has been written (output and input of one shape)."""

    def input_rows(r: int) -> list[int]:  # block-input rows read to produce padded depthwise-input row r
        s = dw_rows.source[r]
        if s < 0:
            return []
        if lead is None or lead_rows is None:
            return [s]
        lg = lead.geom
        return [lead_rows.source[s * lg.sh + ky * lg.dh] for ky in range(lg.kh)]

    ring = _ring_rows(g)
    next_row = 0
    for oy in range(g.out_h):
        top = oy * g.sh
        # output rows 0 … oy − 1 have overwritten the input rows with those indices
        if any(0 <= s < oy for r in range(max(next_row, top), top + ring) for s in input_rows(r)):
            return False
        next_row = max(next_row, top + ring)
    return True


MaskSinks = Mapping[str, tuple[int, int, np.ndarray]]


def _emit(masks: MaskSinks | None, role: str, index: tuple[slice, int], rows: np.ndarray) -> None:
    """Writes the clamp mask (``lo < y < hi``) of one row of an internal tensor."""
    if masks is not None and role in masks:
        lo, hi, sink = masks[role]
        sink[index] = (rows > lo) & (rows < hi)


def run_fused_block(
    p: FusedBlockParams, x: np.ndarray, out: np.ndarray | None = None, masks: MaskSinks | None = None
) -> np.ndarray:
    """Runs the fused chain on ``x`` (N, H, W, C_in) int8; returns the block output.

    ``out`` may be given to write into (it may be ``x`` itself when ``p.inplace_ok``).
    ``masks`` maps a role (``"lead"``, ``"depthwise"``, ``"project"``) to
    ``(act_min, act_max, sink)``: the kernel writes, row by row as it computes them, the
    1-bit clamp masks of those ops' outputs (bool, the op's output shape with batch N)
    that a training backward pass needs, although the outputs themselves never exist.

    C twin: tt_fused_block_s8 (and tt_fused_block_stream_s8) in firmware_templates/runtime/src/tt_fused_block.c
    """
    n = x.shape[0]
    if x.dtype != np.int8 or tuple(x.shape[1:]) != p.in_shape[1:]:
        raise UsageError(f"fused block input must be int8 (N, {', '.join(map(str, p.in_shape[1:]))}), got {x.shape}")
    shape = (n, *p.out_shape[1:])
    if out is None:
        out = np.empty(shape, dtype=np.int8)
    elif out.dtype != np.int8 or out.shape != shape:
        raise UsageError(f"fused block output buffer must be int8 {shape}, got {out.dtype}{list(out.shape)}")
    elif np.shares_memory(out, x):
        same = out.shape == x.shape and out.strides == x.strides and out.ctypes.data == x.ctypes.data
        if not (p.inplace_ok and same):
            raise UsageError("this fused block cannot run in place" if same else "output overlaps the input")
    g = p.dw.geom
    assert p.dw.requant is not None and p.proj.requant is not None
    ring_n = _ring_rows(g)
    ring = np.empty((ring_n, n, p.dw_rows.padded_width, p.mid_channels), dtype=np.int8)
    window = _LeadWindow(p, n) if p.lead is not None else None
    acc_t = p.dw.taps.dtype
    acc = np.empty((n, g.out_w, p.mid_channels), dtype=acc_t)
    tmp = np.empty_like(acc)
    span_w = (g.out_w - 1) * g.sw + 1
    w_proj = p.proj.w_t[0]
    c_out = w_proj.shape[1]
    next_row = 0
    for oy in range(g.out_h):
        top = oy * g.sh
        for r in range(max(next_row, top), top + ring_n):
            src = p.dw_rows.source[r]
            if src < 0:
                p.dw_rows.fill(ring[r % ring_n], r, None)
            elif window is None:
                p.dw_rows.fill(ring[r % ring_n], r, x[:, src])
            else:
                lead_row = window.row(x, src)
                _emit(masks, "lead", (slice(None), src), lead_row)
                p.dw_rows.fill(ring[r % ring_n], r, lead_row)
        next_row = max(next_row, top + ring_n)
        # depthwise: one output row from the kh ring rows of its window
        for ky in range(g.kh):
            row = ring[(top + ky * g.dh) % ring_n]
            for kx in range(g.kw):
                v = row[:, kx * g.dw : kx * g.dw + span_w : g.sw, :]
                if ky == 0 and kx == 0:
                    np.multiply(v, p.dw.taps[0, 0], out=acc)
                else:
                    np.multiply(v, p.dw.taps[ky, kx], out=tmp)
                    acc += tmp
        dw_row = p.dw.requant.apply(acc)
        _emit(masks, "depthwise", (slice(None), oy), dw_row)
        # projection (1×1) of that row, then the residual ADD
        pacc = dw_row.reshape(n * g.out_w, p.mid_channels).astype(w_proj.dtype) @ w_proj
        proj_row = p.proj.requant.apply(pacc).reshape(n, g.out_w, c_out)
        _emit(masks, "project", (slice(None), oy), proj_row)
        if p.add is None:
            out[:, oy] = proj_row
        else:
            assert p.add.table is not None
            a, b = (x[:, oy], proj_row) if p.residual_first else (proj_row, x[:, oy])
            idx = np.left_shift(a.view(np.uint8), 8, dtype=np.uint16)
            idx |= b.view(np.uint8)
            out[:, oy] = p.add.table[idx]
    return out


class _LeadWindow:
    """Computes rows of the leading convolution's output from the materialized input."""

    def __init__(self, p: FusedBlockParams, n: int) -> None:
        assert p.lead is not None and p.lead_rows is not None and p.lead.requant is not None
        self.lead = p.lead
        self.rows = p.lead_rows
        self.requant = p.lead.requant
        g = p.lead.geom
        self.buf = None if p.lead_direct else np.empty((g.kh, n, self.rows.padded_width, p.in_shape[3]), np.int8)

    def row(self, x: np.ndarray, j: int) -> np.ndarray:
        g = self.lead.geom
        w_t = self.lead.w_t[0]
        n = x.shape[0]
        if self.buf is None:
            patches = x[:, j].reshape(n * g.out_w, -1)
        else:
            for ky in range(g.kh):
                r = j * g.sh + ky * g.dh
                s = self.rows.source[r]
                self.rows.fill(self.buf[ky], r, x[:, s] if s >= 0 else None)
            span = (g.out_w - 1) * g.sw + 1
            taps = [self.buf[ky][:, kx * g.dw : kx * g.dw + span : g.sw, :] for ky in range(g.kh) for kx in range(g.kw)]
            patches = np.stack(taps, axis=2).reshape(n * g.out_w, -1)
        acc = patches.astype(w_t.dtype) @ w_t
        return self.requant.apply(acc).reshape(n, g.out_w, w_t.shape[1])
