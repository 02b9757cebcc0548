"""The C forward kernels (conv, depthwise, FC, ADD, pools, MEAN, PAD, RESHAPE, preprocessing)
against their numpy twins, byte for byte: random ops over the legal ranges, weight patches,
every such layer of the shipped models on real activations, the preprocessing on real
Fashion-MNIST images, the refusal of bad parameters, and the Cortex-M4 build."""

from __future__ import annotations

import ctypes
import math
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinytrain.frontends.load import load_model
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import (
    Activation,
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    FullyConnectedAttrs,
    NoAttrs,
    Op,
    OpKind,
    Padding,
    Pool2DAttrs,
    ReduceAttrs,
    ReshapeAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.models.pretrain import MODEL_NAME as PRETRAINED
from tinytrain.models.ship import CHECKPOINT, MBV2, shipped
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.core_conv import out_size
from tinytrain.testing import c_forward as cf
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, load_runtime
from tinytrain.train.data import load_dataset, make_preprocess, preprocess_for_graph

TT_OK, TT_ERR_ARG, TT_ERR_SHAPE = 0, 1, 2
ACTS = (Activation.NONE, Activation.RELU, Activation.RELU6)
OWN_SOURCES = ("tt_conv.c", "tt_fc.c", "tt_eltwise.c", "tt_pool.c", "tt_shape.c", "tt_preprocess.c")


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return cf.declare_forward(load_runtime(tmp_path_factory.mktemp("c")))


# ------------------------------------------------------------------ IR building


def act(name: str, shape: Sequence[int], scale: float, zp: int) -> Tensor:
    return Tensor(name, tuple(shape), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def const(name: str, data: np.ndarray, quant: Quantization | None = None) -> Tensor:
    return Tensor(name, tuple(data.shape), DType.from_numpy(data.dtype), TensorKind.CONSTANT, quant, data)


def op_of(kind: OpKind, ins: Sequence[Tensor | None], outs: Sequence[Tensor], attrs: Any) -> Op:
    return Op(kind, tuple(t.name if t else None for t in ins), tuple(t.name for t in outs), attrs, index=3)


def run_np(
    op: Op, ins: Sequence[Tensor | None], outs: Sequence[Tensor], args: Sequence[np.ndarray | None]
) -> np.ndarray:
    spec = KERNELS[op.kind]
    params = spec.prepare(op, tuple(ins), tuple(outs))
    full = [t.data if (t is not None and t.data is not None) else a for t, a in zip(ins, args, strict=True)]
    return spec.run(params, full)[0]


def rand_i8(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    return rng.integers(-128, 128, tuple(shape)).astype(np.int8)


def rand_zp(rng: np.random.Generator) -> int:
    return int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128))]))


def out_scale_for(rng: np.random.Generator, in_scale: float, w_scale: float, taps: int) -> float:
    """An output scale that spreads the outputs over int8, sometimes saturating."""
    return float(130.0 * math.sqrt(taps) * in_scale * w_scale * 2.0 ** rng.uniform(-4, 3))


def filter_quant(rng: np.random.Generator, channels: int, axis: int, per_channel: bool) -> Quantization:
    if per_channel:
        return Quantization(tuple(float(s) for s in rng.uniform(0.002, 0.03, channels)), (0,) * channels, axis)
    return Quantization.per_tensor(float(rng.uniform(0.002, 0.03)), 0)


def conv_case(
    rng: np.random.Generator,
    depthwise: bool,
    hw: tuple[int, int],
    cin: int,
    cout_or_mult: int,
    k: tuple[int, int],
    stride: tuple[int, int],
    dil: tuple[int, int],
    padding: Padding,
    groups: int = 1,
    weights: np.ndarray | None = None,
) -> tuple[Op, tuple[Tensor | None, ...], tuple[Tensor, ...]]:
    """A random int8 CONV_2D / DEPTHWISE_CONV_2D op with its IR tensors."""
    h, w = hw
    oh = out_size(padding, h, k[0], stride[0], dil[0])
    ow = out_size(padding, w, k[1], stride[1], dil[1])
    in_scale, in_zp = float(rng.uniform(0.01, 0.1)), rand_zp(rng)
    per_channel = bool(rng.random() < 0.7)
    if depthwise:
        cout = cin * cout_or_mult
        wshape: tuple[int, ...] = (1, *k, cout)
        fq = filter_quant(rng, cout, 3, per_channel)
        taps = k[0] * k[1]
        attrs: Any = DepthwiseConv2DAttrs(
            stride[0], stride[1], cout_or_mult, dil[0], dil[1], padding, ACTS[int(rng.integers(3))]
        )
    else:
        cout = cout_or_mult
        wshape = (cout, *k, cin // groups)
        fq = filter_quant(rng, cout, 0, per_channel)
        taps = k[0] * k[1] * cin // groups
        attrs = Conv2DAttrs(stride[0], stride[1], dil[0], dil[1], padding, ACTS[int(rng.integers(3))])
    wd = rand_i8(rng, wshape) if weights is None else weights
    filt = const("w", wd, fq)
    bias: Tensor | None = None
    if rng.random() < 0.8:
        bd = rng.integers(-(2**15), 2**15, cout).astype(np.int32)
        if rng.random() < 0.2:
            bd[0] = rng.choice([2**31 - 1, -(2**31)])  # the accumulator + bias wraps int32
        bias = const("b", bd, Quantization(tuple(in_scale * s for s in fq.scale), (0,) * len(fq.scale), 0))
    out_s = out_scale_for(rng, in_scale, float(np.mean(fq.scale)), taps)
    x_t = act("x", (1, h, w, cin), in_scale, in_zp)
    y_t = act("y", (1, oh, ow, cout), out_s, rand_zp(rng))
    kind = OpKind.DEPTHWISE_CONV_2D if depthwise else OpKind.CONV_2D
    ins = (x_t, filt, bias)
    return op_of(kind, ins, (y_t,), attrs), ins, (y_t,)


def run_c_window(
    lib: ctypes.CDLL,
    op: Op,
    ins: Sequence[Tensor | None],
    outs: Sequence[Tensor],
    x: np.ndarray,
    w: np.ndarray | None = None,
    patch: cf.CKernelParams[cf.TtWeightPatch] | None = None,
) -> np.ndarray:
    """The C kernel of a conv / depthwise / FC op on one sample (weights: the constant's, or ``w``)."""
    weights = ins[1].data if w is None else w  # type: ignore[union-attr]
    assert weights is not None
    bias = ins[2].data if len(ins) > 2 and ins[2] is not None else None
    if op.kind is OpKind.CONV_2D:
        return cf.run_conv_c(lib, cf.conv_c_params(op, tuple(ins), tuple(outs)), x, weights, bias, patch)
    if op.kind is OpKind.DEPTHWISE_CONV_2D:
        return cf.run_depthwise_c(lib, cf.depthwise_c_params(op, tuple(ins), tuple(outs)), x, weights, bias, patch)
    return cf.run_fc_c(lib, cf.fc_c_params(op, tuple(ins), tuple(outs)), x, weights, bias, patch)


def check_window_op(
    lib: ctypes.CDLL, op: Op, ins: Sequence[Tensor | None], outs: Sequence[Tensor], x: np.ndarray
) -> None:
    want = run_np(op, ins, outs, [x, None, None][: len(ins)])
    for i in range(x.shape[0]):
        got = run_c_window(lib, op, ins, outs, x[i])
        assert np.array_equal(got.reshape(want[i].shape), want[i]), op.describe()


# ------------------------------------------------------------------ random convolutions


CONV_CASES = [
    # hw, cin, cout, k, stride, dilation, padding, groups
    ((1, 1), 1, 1, (1, 1), (1, 1), (1, 1), Padding.VALID, 1),
    ((1, 1), 5, 3, (3, 3), (1, 1), (1, 1), Padding.SAME, 1),
    ((7, 5), 3, 16, (3, 3), (2, 2), (1, 1), Padding.SAME, 1),
    ((8, 8), 3, 7, (3, 3), (2, 2), (1, 1), Padding.VALID, 1),
    ((9, 6), 4, 5, (1, 1), (1, 1), (1, 1), Padding.SAME, 1),
    ((6, 7), 33, 17, (1, 1), (1, 1), (1, 1), Padding.VALID, 1),
    ((5, 5), 8, 9, (1, 1), (2, 2), (1, 1), Padding.SAME, 1),
    ((6, 6), 6, 4, (3, 3), (1, 1), (2, 2), Padding.SAME, 1),
    ((10, 9), 2, 3, (5, 3), (2, 1), (1, 2), Padding.SAME, 1),
    ((4, 11), 4, 6, (2, 4), (3, 2), (1, 1), Padding.SAME, 1),
    ((6, 6), 6, 4, (3, 3), (1, 1), (1, 1), Padding.SAME, 2),
    ((5, 4), 6, 6, (1, 1), (1, 1), (1, 1), Padding.VALID, 3),
    ((3, 3), 2, 2, (3, 3), (1, 1), (1, 1), Padding.VALID, 1),
    ((2, 9), 40, 3, (1, 3), (1, 2), (1, 1), Padding.SAME, 1),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv_random(lib: ctypes.CDLL, case: int) -> None:
    rng = np.random.default_rng(100 + case)
    hw, cin, cout, k, stride, dil, padding, groups = CONV_CASES[case]
    for _ in range(3):
        op, ins, outs = conv_case(rng, False, hw, cin, cout, k, stride, dil, padding, groups)
        check_window_op(lib, op, ins, outs, rand_i8(rng, (2, *hw, cin)))


DW_CASES = [
    # hw, cin, mult, k, stride, dilation, padding
    ((1, 1), 1, 1, (1, 1), (1, 1), (1, 1), Padding.VALID),
    ((1, 1), 5, 1, (3, 3), (1, 1), (1, 1), Padding.SAME),
    ((7, 6), 16, 1, (3, 3), (1, 1), (1, 1), Padding.SAME),
    ((8, 7), 13, 1, (3, 3), (2, 2), (1, 1), Padding.SAME),
    ((9, 9), 8, 1, (5, 5), (2, 2), (1, 1), Padding.SAME),
    ((7, 7), 7, 1, (3, 3), (2, 2), (1, 1), Padding.VALID),
    ((6, 5), 3, 2, (3, 3), (1, 1), (1, 1), Padding.SAME),
    ((6, 8), 2, 3, (3, 2), (2, 1), (2, 1), Padding.SAME),
    ((10, 10), 9, 1, (7, 7), (1, 1), (1, 1), Padding.SAME),
    ((5, 6), 4, 1, (3, 3), (1, 1), (2, 2), Padding.VALID),
]


@pytest.mark.parametrize("case", range(len(DW_CASES)))
def test_depthwise_random(lib: ctypes.CDLL, case: int) -> None:
    rng = np.random.default_rng(200 + case)
    hw, cin, mult, k, stride, dil, padding = DW_CASES[case]
    for _ in range(3):
        op, ins, outs = conv_case(rng, True, hw, cin, mult, k, stride, dil, padding)
        check_window_op(lib, op, ins, outs, rand_i8(rng, (2, *hw, cin)))


def fc_case(
    rng: np.random.Generator, rows: int, depth: int, out_c: int, per_channel: bool, w_zp: int = 0
) -> tuple[Op, tuple[Tensor | None, ...], tuple[Tensor, ...]]:
    in_scale, in_zp = float(rng.uniform(0.01, 0.1)), rand_zp(rng)
    if per_channel:
        fq = filter_quant(rng, out_c, 0, True)
    else:
        fq = Quantization.per_tensor(float(rng.uniform(0.002, 0.03)), w_zp)
    filt = const("w", rand_i8(rng, (out_c, depth)), fq)
    bias = None
    if rng.random() < 0.8:
        b_scale = tuple(in_scale * s for s in fq.scale)
        bias = const(
            "b", rng.integers(-(2**15), 2**15, out_c).astype(np.int32), Quantization(b_scale, (0,) * len(b_scale), 0)
        )
    x_shape = (1, rows, depth) if rows > 1 else (1, depth)
    y_shape = (1, rows, out_c) if rows > 1 else (1, out_c)
    x_t = act("x", x_shape, in_scale, in_zp)
    y_t = act("y", y_shape, out_scale_for(rng, in_scale, float(np.mean(fq.scale)), depth), rand_zp(rng))
    attrs = FullyConnectedAttrs(ACTS[int(rng.integers(3))], keep_num_dims=rows > 1)
    ins = (x_t, filt, bias)
    return op_of(OpKind.FULLY_CONNECTED, ins, (y_t,), attrs), ins, (y_t,)


@pytest.mark.parametrize(
    ("rows", "depth", "out_c", "per_channel", "w_zp"),
    [(1, 1, 1, True, 0), (1, 7, 10, True, 0), (1, 64, 10, False, 0), (3, 9, 5, False, 0), (4, 16, 6, True, 0),
     (5, 33, 7, False, 13), (2, 20, 3, False, -128), (1, 300, 4, False, 127)],
)  # fmt: skip
def test_fully_connected_random(
    lib: ctypes.CDLL, rows: int, depth: int, out_c: int, per_channel: bool, w_zp: int
) -> None:
    rng = np.random.default_rng(rows * 1000 + depth * 10 + out_c)
    for _ in range(3):
        op, ins, outs = fc_case(rng, rows, depth, out_c, per_channel, w_zp)
        x_shape = (2, *ins[0].shape[1:])  # type: ignore[union-attr]
        check_window_op(lib, op, ins, outs, rand_i8(rng, x_shape))


# ------------------------------------------------------------------ weight patches


def _patched(w: np.ndarray, ch: np.ndarray, w_train: np.ndarray, depthwise: bool) -> np.ndarray:
    out = w.copy()
    if depthwise:
        out[0][:, :, ch] = w_train
    else:
        out[..., ch] = w_train
    return out


@pytest.mark.parametrize("kind", ["conv3x3", "pointwise", "fc", "depthwise", "depthwise_mult2"])
@pytest.mark.parametrize("mode", ["prefix", "delta", "all"])
def test_weight_patch_equals_patched_weights(lib: ctypes.CDLL, kind: str, mode: str) -> None:
    rng = np.random.default_rng(hash((kind, mode)) % 2**32)
    depthwise = kind.startswith("depthwise")
    if kind == "fc":
        op, ins, outs = fc_case(rng, 3, 23, 6, True)
    elif depthwise:
        m = 2 if kind.endswith("2") else 1
        op, ins, outs = conv_case(rng, True, (7, 6), 11, m, (3, 3), (1, 1), (1, 1), Padding.SAME)
    else:
        k = (3, 3) if kind == "conv3x3" else (1, 1)
        op, ins, outs = conv_case(rng, False, (6, 7), 19, 9, k, (1, 1), (1, 1), Padding.SAME)
    w_t = ins[1]
    assert w_t is not None and w_t.data is not None
    w = w_t.data
    limit = w.shape[-1]
    n = {"prefix": limit // 3 + 2, "delta": limit // 2, "all": limit}[mode]
    ch = np.arange(n) if mode != "delta" else np.sort(rng.choice(limit, n, replace=False))
    if mode == "delta" and np.array_equal(ch, np.arange(n)):
        ch[-1] = limit - 1
    ch_shape = (*w.shape[1:-1], n) if depthwise else (*w.shape[:-1], n)
    w_train = rand_i8(rng, ch_shape)
    patch = cf.weight_patch(ch, w_train)
    patched = _patched(w, ch, w_train, depthwise)
    ins2 = (ins[0], const("w", patched, w_t.quant), *ins[2:])
    x = rand_i8(rng, (2, *ins[0].shape[1:]))  # type: ignore[union-attr]
    want = run_np(op, ins2, outs, [x, None, None][: len(ins2)])
    for i in range(2):
        got = run_c_window(lib, op, ins, outs, x[i], w, patch)
        assert np.array_equal(got.reshape(want[i].shape), want[i])
    # the empty patch and no patch agree with the flash weights
    want0 = run_np(op, ins, outs, [x, None, None][: len(ins)])
    empty = cf.weight_patch(np.zeros(0, np.uint16), np.zeros((*ch_shape[:-1], 0), np.int8))
    assert np.array_equal(run_c_window(lib, op, ins, outs, x[0], w, empty).reshape(want0[0].shape), want0[0])


# ------------------------------------------------------------------ ADD


@pytest.mark.parametrize("seed", range(6))
def test_add_every_input_pair(lib: ctypes.CDLL, seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    s1, s2 = (float(v) for v in 10.0 ** rng.uniform(-3, -1, 2))
    so = float(max(s1, s2) * 2.0 ** rng.uniform(-1, 2))
    z1, z2, zo = rand_zp(rng), rand_zp(rng), rand_zp(rng)
    a_t, b_t = act("a", (1, 256, 256), s1, z1), act("b", (1, 256, 256), s2, z2)
    y_t = act("y", (1, 256, 256), so, zo)
    op = op_of(OpKind.ADD, (a_t, b_t), (y_t,), ElementwiseAttrs(ACTS[seed % 3]))
    v = np.arange(-128, 128, dtype=np.int8)
    a = np.broadcast_to(v[:, None], (256, 256))[None].copy()
    b = np.broadcast_to(v[None, :], (256, 256))[None].copy()
    want = run_np(op, (a_t, b_t), (y_t,), [a, b])
    cp = cf.add_c_params(op, (a_t, b_t), (y_t,))
    assert np.array_equal(cf.run_add_c(lib, cp, a, b).reshape(want.shape), want)


# ------------------------------------------------------------------ pools and MEAN


POOL_CASES = [
    # hw, c, k, stride, padding
    ((1, 1), 1, (1, 1), (1, 1), Padding.VALID),
    ((6, 6), 5, (6, 6), (1, 1), Padding.VALID),
    ((7, 5), 3, (3, 3), (2, 2), Padding.SAME),
    ((8, 9), 4, (2, 2), (2, 2), Padding.VALID),
    ((5, 7), 2, (3, 2), (1, 3), Padding.SAME),
    ((9, 9), 6, (5, 5), (3, 3), Padding.SAME),
]


@pytest.mark.parametrize("case", range(len(POOL_CASES)))
@pytest.mark.parametrize("kind", [OpKind.AVERAGE_POOL_2D, OpKind.MAX_POOL_2D])
def test_pool_random(lib: ctypes.CDLL, case: int, kind: OpKind) -> None:
    rng = np.random.default_rng(400 + case)
    hw, c, k, stride, padding = POOL_CASES[case]
    oh, ow = (out_size(padding, hw[i], k[i], stride[i], 1) for i in range(2))
    for a in ACTS:
        scale, zp = float(rng.uniform(0.01, 0.1)), rand_zp(rng)
        x_t, y_t = act("x", (1, *hw, c), scale, zp), act("y", (1, oh, ow, c), scale, zp)
        op = op_of(kind, (x_t,), (y_t,), Pool2DAttrs(k[0], k[1], stride[0], stride[1], padding, a))
        x = rand_i8(rng, (2, *hw, c))
        want = run_np(op, (x_t,), (y_t,), [x])
        cp = cf.pool_c_params(op, (x_t,), (y_t,))
        for i in range(2):
            assert np.array_equal(cf.run_pool_c(lib, cp, x[i], kind is OpKind.AVERAGE_POOL_2D), want[i])


@pytest.mark.parametrize(
    ("shape", "axes", "keep", "kind"),
    [((1, 6, 6, 8), (1, 2), True, OpKind.MEAN), ((1, 3, 3, 112), (1, 2), False, OpKind.MEAN),
     ((1, 1, 1, 5), (1, 2), True, OpKind.MEAN), ((1, 7, 5, 3), (2, 3), False, OpKind.MEAN),
     ((1, 9, 4), (1,), True, OpKind.MEAN), ((1, 4, 4, 6), (1, 2), True, OpKind.SUM),
     ((1, 50, 40, 2), (1, 2), False, OpKind.MEAN)],
)  # fmt: skip
def test_mean_random(lib: ctypes.CDLL, shape: tuple[int, ...], axes: tuple[int, ...], keep: bool, kind: OpKind) -> None:
    rng = np.random.default_rng(sum(shape) + len(axes))
    out_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
    if not keep:
        out_shape = tuple(d for i, d in enumerate(shape) if i not in axes)
    for _ in range(4):
        s_in = float(rng.uniform(0.01, 0.1))
        s_out = (
            s_in * float(2.0 ** rng.uniform(-2, 2)) * (math.prod(shape[a] for a in axes) if kind is OpKind.SUM else 1)
        )
        x_t, y_t = act("x", shape, s_in, rand_zp(rng)), act("y", out_shape, s_out, rand_zp(rng))
        ax_t = const("axes", np.array(axes, np.int32))
        op = op_of(kind, (x_t, ax_t), (y_t,), ReduceAttrs(keep))
        x = rand_i8(rng, (2, *shape[1:]))
        want = run_np(op, (x_t, ax_t), (y_t,), [x, None])
        cp = cf.mean_c_params(op, (x_t, ax_t), (y_t,))
        for i in range(2):
            assert np.array_equal(cf.run_mean_c(lib, cp, x[i : i + 1]).reshape(want[i].shape), want[i])


# ------------------------------------------------------------------ PAD, RESHAPE


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("v2", [False, True])
def test_pad_random(lib: ctypes.CDLL, rank: int, v2: bool) -> None:
    rng = np.random.default_rng(500 + rank + 10 * v2)
    for _ in range(4):
        shape = tuple(int(d) for d in rng.integers(1, 6, rank))
        pads = rng.integers(0, 3, (rank, 2)).astype(np.int32)
        scale, zp = float(rng.uniform(0.01, 0.1)), rand_zp(rng)
        x_t = act("x", shape, scale, zp)
        y_t = act("y", tuple(d + int(p.sum()) for d, p in zip(shape, pads, strict=True)), scale, zp)
        p_t = const("pads", pads)
        ins: tuple[Tensor, ...] = (x_t, p_t)
        if v2:
            ins = (*ins, const("v", np.array([rng.integers(-128, 128)], np.int8), Quantization.per_tensor(scale, zp)))
        op = op_of(OpKind.PADV2 if v2 else OpKind.PAD, ins, (y_t,), NoAttrs())
        x = rand_i8(rng, shape)
        want = run_np(op, ins, (y_t,), [x, None, None][: len(ins)])
        got = cf.run_pad_c(lib, cf.pad_c_params(op, ins, (y_t,)), x)
        assert np.array_equal(got.reshape(want.shape), want)


def test_reshape_copies_or_aliases(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(6)
    x_t, y_t = act("x", (1, 3, 4, 5), 0.1, 0), act("y", (1, 60), 0.1, 0)
    s_t = const("shape", np.array([1, 60], np.int32))
    op = op_of(OpKind.RESHAPE, (x_t, s_t), (y_t,), ReshapeAttrs((1, 60)))
    x = rand_i8(rng, (1, 3, 4, 5))
    want = run_np(op, (x_t, s_t), (y_t,), [x, None])
    cp = cf.reshape_c_params(op, (x_t, s_t), (y_t,))
    assert np.array_equal(cf.run_reshape_c(lib, cp, x).view(np.int8).reshape(want.shape), want)
    buf = x.copy()
    assert lib.tt_reshape_s8(ctypes.addressof(cp.struct), buf.ctypes.data, buf.ctypes.data) == TT_OK
    assert np.array_equal(buf, x)


# ------------------------------------------------------------------ preprocessing


@pytest.fixture(scope="module")
def fmnist() -> np.ndarray:
    return load_dataset("fashion-mnist", "test").images[:40]


@pytest.mark.parametrize("size", [(96, 96, 3), (48, 48, 3), (28, 28, 1), (20, 33, 3), (128, 128, 3)])
def test_preprocess_fashion_mnist(lib: ctypes.CDLL, fmnist: np.ndarray, size: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(size[0])
    t = act("in", (1, *size), float(rng.uniform(0.005, 0.02)), rand_zp(rng))
    pre = make_preprocess((28, 28), t)
    cp = cf.preprocess_c_params(pre)
    want = pre(fmnist)
    for i in range(len(fmnist)):
        assert np.array_equal(cf.run_preprocess_c(lib, cp, fmnist[i]), want[i])


@pytest.mark.parametrize(("native", "size"), [((9, 5, 3), (17, 4, 3)), ((1, 1), (5, 3, 3)), ((6, 7, 1), (6, 7, 2))])
def test_preprocess_random_sizes(lib: ctypes.CDLL, native: tuple[int, ...], size: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(len(native) + size[0])
    pre = make_preprocess(native, act("in", (1, *size), 0.0078125, -1))
    images = rng.integers(0, 256, (6, *native)).astype(np.uint8)
    images[0] = 255
    images[1] = 0
    cp = cf.preprocess_c_params(pre)
    want = pre(images)
    for i in range(len(images)):
        assert np.array_equal(cf.run_preprocess_c(lib, cp, images[i]), want[i])


# ------------------------------------------------------------------ shipped models


def _all_values(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every tensor value of the numpy forward pass (ops run one by one)."""
    values: dict[str, np.ndarray] = {graph.inputs[0]: x}
    for op in graph.ops:
        ins, outs = graph.op_inputs(op), graph.op_outputs(op)
        spec = KERNELS[op.kind]
        args = [
            None if n is None else (graph.tensor(n).data if graph.tensor(n).data is not None else values[n])
            for n in op.inputs
        ]
        for name, y in zip(op.outputs, spec.run(spec.prepare(op, ins, outs), args), strict=True):
            values[name] = y
    return values


@pytest.mark.parametrize("model", [MBV2, CHECKPOINT, PRETRAINED])
def test_shipped_model_layers(lib: ctypes.CDLL, fmnist: np.ndarray, model: str) -> None:
    graph = load_model(shipped(model))
    pre = preprocess_for_graph(graph, (28, 28))
    cpre = cf.preprocess_c_params(pre)
    seen: dict[OpKind, int] = {}
    for sample in fmnist[:2]:
        x_c = cf.run_preprocess_c(lib, cpre, sample)
        values = _all_values(graph, pre(sample[None]))
        assert np.array_equal(x_c, values[graph.inputs[0]][0])
        for op in graph.ops:
            ins, outs = graph.op_inputs(op), graph.op_outputs(op)
            args = [None if n is None else values.get(n) for n in op.inputs]
            x = args[0]
            want = values[op.outputs[0]][0]
            if op.kind in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
                assert x is not None
                got = run_c_window(lib, op, ins, outs, x[0])
            elif op.kind is OpKind.ADD:
                a, b = args[0], args[1]
                assert a is not None and b is not None
                got = cf.run_add_c(lib, cf.add_c_params(op, ins, outs), a, b)
            elif op.kind in (OpKind.AVERAGE_POOL_2D, OpKind.MAX_POOL_2D):
                assert x is not None
                got = cf.run_pool_c(lib, cf.pool_c_params(op, ins, outs), x[0], op.kind is OpKind.AVERAGE_POOL_2D)
            elif op.kind is OpKind.MEAN:
                assert x is not None
                got = cf.run_mean_c(lib, cf.mean_c_params(op, ins, outs), x)
            elif op.kind in (OpKind.PAD, OpKind.PADV2):
                assert x is not None
                got = cf.run_pad_c(lib, cf.pad_c_params(op, ins, outs), x)
            elif op.kind is OpKind.RESHAPE:
                assert x is not None
                got = cf.run_reshape_c(lib, cf.reshape_c_params(op, ins, outs), x).view(np.int8)
            else:
                continue
            assert np.array_equal(got.reshape(want.shape), want), op.describe()
            seen[op.kind] = seen.get(op.kind, 0) + 1
    assert seen.get(OpKind.CONV_2D, 0) > 0 and seen.get(OpKind.DEPTHWISE_CONV_2D, 0) > 0
    assert seen.get(OpKind.ADD, 0) > 0 and seen.get(OpKind.FULLY_CONNECTED, 0) > 0


def test_weight_patch_on_shipped_layers(lib: ctypes.CDLL, fmnist: np.ndarray) -> None:
    """Channel-subset patches (the scheme's first channels, and a scattered set) on the real
    pointwise / depthwise / FC layers at the end of the pretrained model, real activations."""
    graph = load_model(shipped(PRETRAINED))
    pre = preprocess_for_graph(graph, (28, 28))
    values = _all_values(graph, pre(fmnist[:1]))
    rng = np.random.default_rng(11)
    kinds = (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED)
    layers = [op for op in graph.ops if op.kind in kinds][-4:]
    assert {op.kind for op in layers} == set(kinds)
    for op in layers:
        ins, outs = graph.op_inputs(op), graph.op_outputs(op)
        w_t = ins[1]
        assert w_t is not None and w_t.data is not None
        w = w_t.data
        depthwise = op.kind is OpKind.DEPTHWISE_CONV_2D
        limit = w.shape[-1]
        for ch in (np.arange(max(1, limit // 4)), np.sort(rng.choice(limit, limit // 3, replace=False))):
            w_train = rand_i8(rng, (*w.shape[1:-1], ch.size) if depthwise else (*w.shape[:-1], ch.size))
            ins2 = (ins[0], const("w", _patched(w, ch, w_train, depthwise), w_t.quant), *ins[2:])
            x = values[str(op.inputs[0])]
            want = run_np(op, ins2, outs, [x, None, None][: len(ins2)])[0]
            got = run_c_window(lib, op, ins, outs, x[0], w, cf.weight_patch(ch, w_train))
            assert np.array_equal(got.reshape(want.shape), want), op.describe()


# ------------------------------------------------------------------ refusals


def _status(fn: Any, *args: Any) -> int:
    return int(fn(*args))


def test_conv_refuses_bad_params(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(7)
    op, ins, outs = conv_case(rng, False, (5, 5), 4, 3, (3, 3), (1, 1), (1, 1), Padding.SAME)
    x, w = rand_i8(rng, (5, 5, 4)), ins[1].data  # type: ignore[union-attr]
    assert w is not None
    y = np.zeros((5, 5, 3), np.int8)

    def call(cp: cf.CKernelParams[cf.TtConvParams], patch: Any = None, xp: Any = x.ctypes.data) -> int:
        pp = None if patch is None else ctypes.addressof(patch.struct)
        return _status(lib.tt_conv_s8, ctypes.addressof(cp.struct), xp, w.ctypes.data, None, pp, y.ctypes.data)

    cp = cf.conv_c_params(op, ins, outs)
    assert call(cp) == TT_OK
    assert call(cp, xp=None) == TT_ERR_ARG
    for field_name, value, status in [
        ("in_zp", 128, TT_ERR_ARG), ("out_zp", -129, TT_ERR_ARG), ("act_min", -129, TT_ERR_ARG),
        ("act_max", -128, TT_ERR_ARG), ("out_h", 6, TT_ERR_SHAPE), ("stride_w", 0, TT_ERR_SHAPE),
        ("pad_top", -1, TT_ERR_SHAPE), ("filter_in_c", 3, TT_ERR_SHAPE), ("dil_h", 0, TT_ERR_SHAPE),
        ("pad_bottom", 2**30, TT_ERR_SHAPE), ("out_c", 2**29, TT_ERR_SHAPE),
    ]:  # fmt: skip
        bad = cf.conv_c_params(op, ins, outs)
        if field_name == "act_max":
            bad.struct.act_min = 0
        setattr(bad.struct, field_name, value)
        y[:] = 55
        assert call(bad) == status, field_name
        assert np.all(y == 55), f"{field_name}: refused call wrote the output"
    shifts = np.array([0, 32, 0], np.int32)
    bad = cf.conv_c_params(op, ins, outs)
    bad.struct.shift = shifts.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
    assert call(bad) == TT_ERR_ARG
    for ch in ([2, 1], [1, 1], [0, 4]):
        patch = cf.weight_patch(np.array(ch), np.zeros((3, 3, 3, 2), np.int8))
        assert call(cp, patch) == TT_ERR_ARG, ch


def test_depthwise_fc_add_pool_mean_pad_preprocess_refuse_bad_params(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(8)
    buf = np.zeros(4096, np.int8)
    b = buf.ctypes.data
    op, ins, outs = conv_case(rng, True, (5, 5), 4, 1, (3, 3), (1, 1), (1, 1), Padding.SAME)
    dw = cf.depthwise_c_params(op, ins, outs)
    assert _status(lib.tt_depthwise_conv_s8, ctypes.addressof(dw.struct), b, b, None, None, b) == TT_OK
    dw.struct.depth_mult = 2
    assert _status(lib.tt_depthwise_conv_s8, ctypes.addressof(dw.struct), b, b, None, None, b) == TT_ERR_SHAPE
    dw = cf.depthwise_c_params(op, ins, outs)
    unsorted = cf.weight_patch(np.array([3, 0]), np.zeros((3, 3, 2), np.int8))
    assert (
        _status(lib.tt_depthwise_conv_s8, ctypes.addressof(dw.struct), b, b, None, ctypes.addressof(unsorted.struct), b)
        == TT_ERR_ARG
    )

    op, ins, outs = fc_case(rng, 1, 8, 3, False, 5)
    fc = cf.fc_c_params(op, ins, outs)
    assert _status(lib.tt_fc_s8, ctypes.addressof(fc.struct), b, b, None, None, b) == TT_OK
    fc.struct.w_zp = 200
    assert _status(lib.tt_fc_s8, ctypes.addressof(fc.struct), b, b, None, None, b) == TT_ERR_ARG
    fc = cf.fc_c_params(op, ins, outs)
    fc.struct.in_c = 0
    assert _status(lib.tt_fc_s8, ctypes.addressof(fc.struct), b, b, None, None, b) == TT_ERR_SHAPE
    fc = cf.fc_c_params(op, ins, outs)
    fc.struct.rows = 2**28  # rows * in_c overflows int32
    assert _status(lib.tt_fc_s8, ctypes.addressof(fc.struct), b, b, None, None, b) == TT_ERR_SHAPE

    a_t, y_t = act("a", (1, 8), 0.05, 0), act("y", (1, 8), 0.1, 0)
    add = cf.add_c_params(op_of(OpKind.ADD, (a_t, a_t), (y_t,), ElementwiseAttrs()), (a_t, a_t), (y_t,))
    assert _status(lib.tt_add_s8, ctypes.addressof(add.struct), b, b, b) == TT_OK
    add.struct.in1_shift = 1
    assert _status(lib.tt_add_s8, ctypes.addressof(add.struct), b, b, b) == TT_ERR_ARG

    x_t, p_t = act("x", (1, 4, 4, 2), 0.1, 0), act("p", (1, 2, 2, 2), 0.1, 0)
    pool_op = op_of(OpKind.AVERAGE_POOL_2D, (x_t,), (p_t,), Pool2DAttrs(2, 2, 2, 2, Padding.VALID))
    pool = cf.pool_c_params(pool_op, (x_t,), (p_t,))
    assert _status(lib.tt_avg_pool_s8, ctypes.addressof(pool.struct), b, b) == TT_OK
    pool.struct.pad_top, pool.struct.pad_bottom = 2, 2  # the first window lies in the padding
    pool.struct.out_h = 4
    assert _status(lib.tt_avg_pool_s8, ctypes.addressof(pool.struct), b, b) == TT_ERR_SHAPE
    assert _status(lib.tt_max_pool_s8, ctypes.addressof(pool.struct), b, b) == TT_OK

    mean = cf.TtMeanParams(outer=1, n=4, inner=2, in_zp=0, mult=1 << 30, shift=32, out_zp=0)
    assert _status(lib.tt_mean_s8, ctypes.addressof(mean), b, b) == TT_ERR_ARG
    mean.shift, mean.n = 0, 0
    assert _status(lib.tt_mean_s8, ctypes.addressof(mean), b, b) == TT_ERR_SHAPE

    arr = ctypes.c_int32 * 4
    pad = cf.TtPadParams(in_dims=arr(1, 2, 2, 1), before=arr(0, 1, 0, 0), after=arr(0, 0, -1, 0), value=0)
    assert _status(lib.tt_pad_s8, ctypes.addressof(pad), b, b) == TT_ERR_SHAPE
    pad.after[2], pad.value = 0, 300
    assert _status(lib.tt_pad_s8, ctypes.addressof(pad), b, b) == TT_ERR_ARG

    pre = cf.preprocess_c_params(make_preprocess((10, 10), act("in", (1, 6, 6, 3), 0.01, 0)))
    assert _status(lib.tt_preprocess_u8_s8, ctypes.addressof(pre.struct), b, b) == TT_OK
    bad_lo = np.array([0, 0, 3, 10, 9, 9], np.int32)  # 10 is outside the 10 source rows
    pre.struct.rows.lo = bad_lo.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
    assert _status(lib.tt_preprocess_u8_s8, ctypes.addressof(pre.struct), b, b) == TT_ERR_ARG
    pre = cf.preprocess_c_params(make_preprocess((10, 10), act("in", (1, 6, 6, 3), 0.01, 0)))
    pre.struct.in_c = 2
    assert _status(lib.tt_preprocess_u8_s8, ctypes.addressof(pre.struct), b, b) == TT_ERR_SHAPE


def test_params_values_expose_every_field() -> None:
    rng = np.random.default_rng(9)
    op, ins, outs = conv_case(rng, False, (5, 5), 4, 3, (3, 3), (2, 2), (1, 1), Padding.SAME)
    v = cf.conv_c_params(op, ins, outs).values()
    assert v["stride_h"] == 2 and v["out_h"] == 3 and v["k_w"] == 3
    assert isinstance(v["mult"], np.ndarray) and v["mult"].shape == (3,)
    pre = cf.preprocess_c_params(make_preprocess((28, 28), act("in", (1, 8, 8, 3), 0.01, 0))).values()
    assert isinstance(pre["rows.w1"], np.ndarray) and pre["rows.w1"].shape == (8,)


# ------------------------------------------------------------------ Cortex-M4 build


def test_forward_kernels_compile_for_cortex_m4(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off",
             "-Wall", "-Wextra", "-Werror", "-O2", "-c"]  # fmt: skip
    for name in OWN_SOURCES:
        out = tmp_path / (name + ".o")
        r = subprocess.run([cc, *flags, f"-I{RUNTIME_INCLUDE}", str(RUNTIME_SRC / name), "-o", str(out)],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert out.stat().st_size > 0
