"""The row-streamed fused block kernel == the unfused simulator ops, byte for byte.

Blocks are built directly in the IR (random int8 weights, per-channel scales, varied
zero points), for many geometries: kernels 1/3/5/7, strides 1/2/3, SAME / VALID /
explicit PAD (and PAD followed by SAME), dilation, odd and non-square maps, with and
without expansion, stem-like leading convolutions and residual ADDs in both operand
orders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from tinytrain.errors import GraphError, TinytrainError, UnsupportedOpError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import (
    Activation,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    NoAttrs,
    Op,
    OpKind,
    Padding,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.passes.fuse_blocks import FusedSimulator, fuse_frozen_blocks
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels.fused_block import prepare_fused_block, run_fused_block

N = 3


# ---------------------------------------------------------------------- graph builder


def _out(size: int, k: int, s: int, d: int, padding: Padding) -> int:
    eff = (k - 1) * d + 1
    return -(-size // s) if padding is Padding.SAME else (size - eff) // s + 1


def _same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    o = -(-size // s)
    total = max((o - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


class Builder:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []

    def _t(self, name: str, shape: tuple[int, ...], kind: TensorKind, q: Quantization | None = None,
           data: np.ndarray | None = None, dtype: DType = DType.INT8) -> str:  # fmt: skip
        self.tensors[name] = Tensor(name, shape, dtype, kind, q, data)
        return name

    def input(self, h: int, w: int, c: int) -> str:
        return self._t(
            "x", (1, h, w, c), TensorKind.INPUT, Quantization.per_tensor(0.05, int(self.rng.integers(-20, 20)))
        )

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def qp(self, name: str) -> tuple[float, int]:
        return self.tensors[name].qparams

    def _linear(self, kind: OpKind, x: str, cout: int, k: int, s: int, d: int, padding: Padding, act: Activation,
                dead: bool = False) -> str:  # fmt: skip
        _, h, w, cin = self.shape(x)
        s_in, _ = self.qp(x)
        depth = cin * k * k if kind is OpKind.CONV_2D else k * k
        wq = self.rng.integers(-127, 128, (cout, k, k, cin) if kind is OpKind.CONV_2D else (1, k, k, cout))
        scales = self.rng.uniform(0.5, 1.5, cout) * 0.01
        bias = self.rng.integers(-3000, 3000, cout) * int(math.sqrt(depth))
        if dead:  # an MCUNet "dead" channel: zero weights, tiny scale, saturated bias
            if kind is OpKind.CONV_2D:
                wq[0] = 0
            else:
                wq[..., 0] = 0
            scales[0] = 3.9e-9
            bias[0] = 2**31 - 1
        s_out = s_in * float(np.mean(scales)) * 73 * 73 * math.sqrt(depth) / 40
        zp = -128 if act is Activation.RELU6 else int(self.rng.integers(-30, 30))
        i = len(self.ops)
        axis = 0 if kind is OpKind.CONV_2D else 3
        wn = self._t(f"w{i}", wq.shape, TensorKind.CONSTANT,
                     Quantization(tuple(map(float, scales.astype(np.float32))), (0,) * cout, axis),
                     wq.astype(np.int8))  # fmt: skip
        bn = self._t(f"b{i}", (cout,), TensorKind.CONSTANT,
                     Quantization(tuple(float(np.float32(s_in * s)) for s in scales), (0,) * cout, 0),
                     bias.astype(np.int32), DType.INT32)  # fmt: skip
        oh, ow = _out(h, k, s, d, padding), _out(w, k, s, d, padding)
        y = self._t(
            f"y{i}", (1, oh, ow, cout), TensorKind.ACTIVATION, Quantization.per_tensor(float(np.float32(s_out)), zp)
        )
        if kind is OpKind.CONV_2D:
            attrs: Conv2DAttrs | DepthwiseConv2DAttrs = Conv2DAttrs(s, s, d, d, padding, act)
        else:
            attrs = DepthwiseConv2DAttrs(s, s, 1, d, d, padding, act)
        self.ops.append(Op(kind, (x, wn, bn), (y,), attrs, i))
        return y

    def conv(self, x: str, cout: int, k: int = 1, s: int = 1, padding: Padding = Padding.SAME,
             act: Activation = Activation.RELU6, dead: bool = False) -> str:  # fmt: skip
        return self._linear(OpKind.CONV_2D, x, cout, k, s, 1, padding, act, dead)

    def dw(self, x: str, k: int, s: int, d: int, padding: Padding, act: Activation = Activation.RELU6,
           dead: bool = False) -> str:  # fmt: skip
        return self._linear(OpKind.DEPTHWISE_CONV_2D, x, self.shape(x)[3], k, s, d, padding, act, dead)

    def pad(self, x: str, t: int, b: int, lft: int, r: int) -> str:
        _, h, w, c = self.shape(x)
        i = len(self.ops)
        pn = self._t(f"p{i}", (4, 2), TensorKind.CONSTANT, None,
                     np.array([[0, 0], [t, b], [lft, r], [0, 0]], np.int32), DType.INT32)  # fmt: skip
        s, zp = self.qp(x)
        y = self._t(f"y{i}", (1, h + t + b, w + lft + r, c), TensorKind.ACTIVATION, Quantization.per_tensor(s, zp))
        self.ops.append(Op(OpKind.PAD, (x, pn), (y,), NoAttrs(), i))
        return y

    def add(self, a: str, b: str) -> str:
        i = len(self.ops)
        s = max(self.qp(a)[0], self.qp(b)[0]) * 1.5
        y = self._t(f"y{i}", self.shape(a), TensorKind.ACTIVATION,
                    Quantization.per_tensor(float(np.float32(s)), int(self.rng.integers(-10, 10))))  # fmt: skip
        self.ops.append(Op(OpKind.ADD, (a, b), (y,), ElementwiseAttrs(), i))
        return y

    def graph(self, out: str) -> Graph:
        return Graph("block", tuple(self.tensors.values()), tuple(self.ops), ("x",), (out,))


@dataclass(frozen=True)
class Case:
    name: str
    h: int
    w: int
    cin: int
    k: int
    stride: int
    lead: str = "expand"  # "expand" | "none" | "stem" (3×3 s2 conv) | "stem_pad" (PAD + 3×3 s2 VALID)
    mid_pad: tuple[int, int, int, int] | None = None  # explicit PAD before the depthwise
    padding: Padding = Padding.SAME
    dilation: int = 1
    residual: str = ""  # "" | "first" (ADD(x, p)) | "second" (ADD(p, x))
    expand: int = 3
    cout: int = 0  # default: cin
    dead: bool = False


CASES = (
    Case("mbv2_residual", 12, 12, 8, 3, 1, residual="second"),
    Case("mbv2_residual_x_first", 10, 10, 8, 3, 1, residual="first"),
    Case("mcunet_pad_s2", 12, 12, 8, 3, 2, mid_pad=(1, 1, 1, 1), padding=Padding.VALID, cout=16),
    Case("keras_s2_same_even", 12, 12, 8, 3, 2, cout=16),
    Case("k5_s2_odd_nonsquare", 13, 11, 8, 5, 2, cout=12),
    Case("k7_s1_residual", 9, 9, 8, 7, 1, residual="second"),
    Case("k7_s2_valid", 17, 15, 4, 7, 2, padding=Padding.VALID, cout=6),
    Case("k5_s3_same", 16, 14, 4, 5, 3),
    Case("k3_s3_same", 11, 11, 4, 3, 3),
    Case("k1_s2_ring_of_one", 9, 8, 4, 1, 2),
    Case("dilated_residual", 11, 11, 8, 3, 1, dilation=2, residual="first"),
    Case("pad_then_same", 9, 9, 8, 3, 2, mid_pad=(0, 1, 2, 1)),
    Case("no_expand_residual", 10, 10, 16, 3, 1, lead="none", residual="second"),
    Case("no_expand_k5_s2_valid", 13, 13, 16, 5, 2, lead="none", padding=Padding.VALID, cout=8),
    Case("stem_same", 15, 15, 3, 3, 1, lead="stem", cout=8),
    Case("stem_pad_valid", 16, 16, 3, 3, 1, lead="stem_pad", cout=8),
    Case("dead_channels", 10, 10, 8, 3, 2, cout=8, dead=True),
)


def build(case: Case, seed: int = 0) -> Graph:
    b = Builder(seed)
    x = b.input(case.h, case.w, case.cin)
    t = x
    if case.lead == "expand":
        t = b.conv(t, case.cin * case.expand, dead=case.dead)
    elif case.lead == "stem":
        t = b.conv(t, 16, k=3, s=2, padding=Padding.SAME)
    elif case.lead == "stem_pad":
        t = b.conv(b.pad(t, 1, 1, 1, 1), 16, k=3, s=2, padding=Padding.VALID)
    if case.mid_pad is not None:
        t = b.pad(t, *case.mid_pad)
    t = b.dw(t, case.k, case.stride, case.dilation, case.padding, dead=case.dead)
    y = b.conv(t, case.cout or case.cin, act=Activation.NONE)
    if case.residual:
        assert b.shape(y) == b.shape(x)
        y = b.add(x, y) if case.residual == "first" else b.add(y, x)
    return b.graph(y)


def _inputs(graph: Graph, seed: int = 1) -> np.ndarray:
    shape = graph.tensor(graph.inputs[0]).shape
    return np.random.default_rng(seed).integers(-128, 128, (N, *shape[1:]), dtype=np.int8)


def expected_scratch(case: Case, graph: Graph) -> dict[str, int]:
    """The scratch formula of the fused kernel, from the case's geometry."""
    lead_window = 0
    src_w, c_mid = case.w, case.cin
    if case.lead in ("stem", "stem_pad"):
        pad_in = (1, 1) if case.lead == "stem_pad" else (0, 0)
        w_in = case.w + sum(pad_in)
        geo = _same_pads(w_in, 3, 2, 1) if case.lead == "stem" else (0, 0)
        lead_window = 3 * (w_in + sum(geo)) * case.cin
        src_w = _out(w_in, 3, 2, 1, Padding.SAME if case.lead == "stem" else Padding.VALID)
        c_mid = 16
    elif case.lead == "expand":
        c_mid = case.cin * case.expand
    w_mid = src_w + (case.mid_pad[2] + case.mid_pad[3] if case.mid_pad else 0)
    geo = _same_pads(w_mid, case.k, case.stride, case.dilation) if case.padding is Padding.SAME else (0, 0)
    wp = w_mid + sum(geo)
    wo = _out(w_mid, case.k, case.stride, case.dilation, case.padding)
    rows = (case.k - 1) * case.dilation + 1
    return {
        "lead_window": lead_window,
        "ring": rows * wp * c_mid,
        "dw_row": wo * c_mid,
        "proj_row": wo * (case.cout or case.cin) if case.residual else 0,
    }


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fused_equals_unfused(case: Case) -> None:
    graph = build(case)
    x = _inputs(graph)
    (want,) = Simulator(graph).run([x])
    assert np.unique(want).size > 8, "degenerate test block: outputs barely vary"
    p = prepare_fused_block(graph, range(len(graph.ops)))
    got = run_fused_block(p, x)
    assert got.dtype == np.int8 and np.array_equal(got, want)
    # one sample at a time gives the same bytes (the batch is only vectorisation)
    assert np.array_equal(np.concatenate([run_fused_block(p, x[i : i + 1]) for i in range(N)]), want)
    # the pass finds the whole chain as one block when that saves memory, and the fused runner agrees
    fused = fuse_frozen_blocks(graph, len(graph.ops))
    removed = sum(graph.tensor(op.outputs[0]).nbytes for op in graph.ops[:-1])
    profitable = p.scratch_bytes < removed
    assert profitable or case.lead == "none"
    assert [(b.start, b.stop) for b in fused.blocks] == ([(0, len(graph.ops))] if profitable else [])
    assert np.array_equal(FusedSimulator(fused).run([x])[0], want)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_scratch_matches_the_formula(case: Case) -> None:
    graph = build(case)
    p = prepare_fused_block(graph, range(len(graph.ops)))
    want = expected_scratch(case, graph)
    got = p.scratch
    assert {"lead_window": got.lead_window, "ring": got.ring, "dw_row": got.dw_row, "proj_row": got.proj_row} == want
    assert p.scratch_bytes == sum(want.values())
    # with an expansion, far below the tensors the fusion removes
    removed = sum(graph.tensor(op.outputs[0]).nbytes for op in graph.ops[:-1])
    if case.lead == "expand":
        assert p.scratch_bytes < removed


def test_in_place_residual_block() -> None:
    for case in (CASES[0], CASES[1], CASES[5], CASES[10], CASES[12]):
        graph = build(case, seed=5)
        p = prepare_fused_block(graph, range(len(graph.ops)))
        assert p.inplace_ok, case.name
        x = _inputs(graph, seed=2)
        (want,) = Simulator(graph).run([x])
        buf = x.copy()
        assert run_fused_block(p, buf, out=buf) is buf
        assert np.array_equal(buf, want), case.name


def test_in_place_refused_when_unsafe() -> None:
    case = Case("same_shape_no_residual", 10, 10, 8, 3, 1)  # same shapes, no residual: still in-place safe
    graph = build(case)
    p = prepare_fused_block(graph, range(len(graph.ops)))
    assert p.inplace_ok
    stride2 = build(CASES[2])
    q = prepare_fused_block(stride2, range(len(stride2.ops)))
    assert not q.inplace_ok
    x = _inputs(stride2)
    with pytest.raises(UsageError, match="output buffer"):
        run_fused_block(q, x, out=x)
    # a same-shape block whose stem reads ahead of the rows it overwrites cannot run in place
    b = Builder(3)
    t = b.input(8, 8, 8)
    t = b.conv(t, 8, k=5, s=1)  # a 5×5 lead conv reads input rows oy+2 ... after output row oy
    t = b.dw(t, 3, 1, 1, Padding.SAME)
    g2 = b.graph(b.conv(t, 8, act=Activation.NONE))
    p2 = prepare_fused_block(g2, range(len(g2.ops)))
    assert not p2.inplace_ok
    x2 = _inputs(g2)
    with pytest.raises(UsageError, match="in place"):
        run_fused_block(p2, x2, out=x2)
    shifted = np.zeros((N, 11, 10, 8), np.int8)
    with pytest.raises(UsageError, match="overlaps"):
        run_fused_block(p, shifted[:, :10], out=shifted[:, 1:])
    (want,) = Simulator(g2).run([x2])
    assert np.array_equal(run_fused_block(p2, x2), want)


def test_bad_input_shape() -> None:
    graph = build(CASES[0])
    p = prepare_fused_block(graph, range(len(graph.ops)))
    with pytest.raises(UsageError, match="input must be int8"):
        run_fused_block(p, np.zeros((1, 5, 5, 8), np.int8))


def test_chains_that_are_not_blocks_are_refused() -> None:
    graph = build(CASES[0])
    with pytest.raises(GraphError, match="not \\[PAD\\]"):
        prepare_fused_block(graph, [0, 1])  # expansion + depthwise, no projection
    with pytest.raises(GraphError, match="empty"):
        prepare_fused_block(graph, [])
    with pytest.raises(GraphError):
        prepare_fused_block(graph, [1, 2, 3, 0])
    # a depth multiplier of 2 is not an inverted-residual depthwise
    b = Builder(4)
    x = b.input(8, 8, 4)
    i = len(b.ops)
    wn = b._t("wd", (1, 3, 3, 8), TensorKind.CONSTANT, Quantization((0.01,) * 8, (0,) * 8, 3),
              b.rng.integers(-127, 128, (1, 3, 3, 8)).astype(np.int8))  # fmt: skip
    y = b._t("yd", (1, 8, 8, 8), TensorKind.ACTIVATION, Quantization.per_tensor(0.1, 0))
    b.ops.append(Op(OpKind.DEPTHWISE_CONV_2D, (x, wn, None), (y,), DepthwiseConv2DAttrs(1, 1, 2), i))
    g = b.graph(b.conv(y, 4, act=Activation.NONE))
    with pytest.raises(UnsupportedOpError, match="depth multiplier"):
        prepare_fused_block(g, [0, 1])
    assert fuse_frozen_blocks(g, 2).blocks == ()


def test_unfusable_errors_are_tinytrain_errors() -> None:
    # a residual ADD with a tensor other than the block input
    b = Builder(6)
    x = b.input(8, 8, 8)
    e = b.conv(x, 24)
    d = b.dw(e, 3, 1, 1, Padding.SAME)
    p = b.conv(d, 8, act=Activation.NONE)
    other = b.conv(x, 8, act=Activation.NONE)
    g = b.graph(b.add(p, other))
    with pytest.raises(TinytrainError, match="block input"):
        prepare_fused_block(g, [0, 1, 2, 4])
