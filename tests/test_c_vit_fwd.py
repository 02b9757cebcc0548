"""The C forward kernels of the tiny-ViT ops (tt_vit_fwd.c, and tt_mean_s8 for MEAN over the last
axis) against their numpy twins, byte for byte: exhaustive input pairs of ADD / SUB / MUL under
random quantizations, random broadcasts, SOFTMAX / RSQRT / BATCH_MATMUL / TRANSPOSE /
STRIDED_SLICE / CONCATENATION over random legal cases incl. edge cases, refusals, in-place
calls, every such op instance of the tiny ViT on real activations, and the Cortex-M4 build."""

from __future__ import annotations

import ctypes
import dataclasses
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers_vit import VitRun, act, const
from tests.helpers_vit import op_of as build_op
from tests.helpers_vit import vit_run as run_vit
from tinytrain.errors import UnsupportedOpError
from tinytrain.ir.ops import (
    Activation,
    BatchMatMulAttrs,
    ConcatenationAttrs,
    ElementwiseAttrs,
    NoAttrs,
    Op,
    OpKind,
    SoftmaxAttrs,
    StridedSliceAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor
from tinytrain.sim.kernels import KERNELS
from tinytrain.testing import c_forward as cf
from tinytrain.testing import c_vit as cv
from tinytrain.testing.cbuild import RUNTIME_INCLUDE, RUNTIME_SRC, build_shared

SOURCES = ("tt_vit_fwd.c", "tt_vit_bwd.c", "tt_pool.c")
TT_ERR_ARG, TT_ERR_SHAPE, TT_ERR_RANGE = 1, 2, 3


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    path = build_shared([RUNTIME_SRC / s for s in SOURCES], tmp_path_factory.mktemp("cvit"), name="ttvit")
    lib = cv.declare_vit(ctypes.CDLL(str(path)))
    lib.tt_mean_s8.argtypes = [ctypes.c_void_p] * 3
    lib.tt_mean_s8.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> VitRun:
    return run_vit(tmp_path_factory.mktemp("vit"), seed=5)


def op_of(kind: OpKind, ins: Sequence[Tensor], outs: Sequence[Tensor], attrs: Any) -> Op:
    return build_op(kind, ins, outs, attrs, index=7)


def run_np(op: Op, ins: Sequence[Tensor], outs: Sequence[Tensor], args: Sequence[np.ndarray]) -> np.ndarray:
    spec = KERNELS[op.kind]
    params = spec.prepare(op, tuple(ins), tuple(outs))
    return spec.run(params, list(args))[0]


def rand_zp(rng: np.random.Generator) -> int:
    return int(rng.choice([-128, 127, 0, int(rng.integers(-128, 128))]))


def i8(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    return rng.integers(-128, 128, tuple(shape)).astype(np.int8)


# ------------------------------------------------------------------- ADD / SUB / MUL


BYTES = np.arange(-128, 128, dtype=np.int8)


@pytest.mark.parametrize("kind", [OpKind.ADD, OpKind.SUB, OpKind.MUL])
def test_binary_every_input_pair(lib: ctypes.CDLL, kind: OpKind) -> None:
    """All 65536 (a, b) pairs (a [256, 1] broadcast against b [1, 256]) under random scales."""
    rng = np.random.default_rng(int(kind is OpKind.SUB) + 2 * int(kind is OpKind.MUL))
    done = 0
    for case in range(12):
        s1, s2 = (float(2.0 ** rng.uniform(-9, 1)) for _ in range(2))
        so = (
            float(s1 * s2 * 2.0 ** rng.uniform(-3, 9))
            if kind is OpKind.MUL
            else float(max(s1, s2) * 2.0 ** rng.uniform(-2, 3))
        )
        if case == 0:
            s2 = s1  # equal scales
        activation = [Activation.NONE, Activation.RELU, Activation.RELU6][case % 3]
        a, b = act("a", (256, 1), s1, rand_zp(rng)), act("b", (1, 256), s2, rand_zp(rng))
        y = act("y", (256, 256), so, rand_zp(rng))
        op = op_of(kind, (a, b), (y,), ElementwiseAttrs(activation))
        xa, xb = BYTES.reshape(256, 1), BYTES.reshape(1, 256)
        try:
            want = run_np(op, (a, b), (y,), (xa, xb))
        except UnsupportedOpError:
            continue
        cp = cv.binary_c_params(op, (a, b), (y,))
        got = cv.run_binary_c(lib, cp, xa, xb).reshape(want.shape)
        assert np.array_equal(got, want), (kind, case)
        done += 1
    assert done >= 8


def test_binary_random_broadcasts(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(11)
    for case in range(60):
        rank = int(rng.integers(1, 7))
        out = [int(d) for d in rng.integers(1, 5, rank)]
        sa = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, rank)) :]
        sb = [d if rng.random() < 0.6 else 1 for d in out][int(rng.integers(0, rank)) :]
        out_shape = tuple(np.broadcast_shapes(tuple(sa), tuple(sb)))
        kind = [OpKind.ADD, OpKind.SUB, OpKind.MUL][case % 3]
        s1, s2 = float(rng.uniform(0.01, 0.2)), float(rng.uniform(0.01, 0.2))
        so = s1 * s2 * 40 if kind is OpKind.MUL else max(s1, s2) * 1.5
        a, b = act("a", sa, s1, rand_zp(rng)), act("b", sb, s2, rand_zp(rng))
        if rng.random() < 0.3:  # a constant operand
            b = const("b", i8(rng, sb), b.quant)
        y = act("y", out_shape, so, rand_zp(rng))
        op = op_of(kind, (a, b), (y,), ElementwiseAttrs(Activation.NONE))
        xa = i8(rng, sa)
        xb = b.data if b.data is not None else i8(rng, sb)
        want = run_np(op, (a, b), (y,), (xa, xb))
        got = cv.run_binary_c(lib, cv.binary_c_params(op, (a, b), (y,)), xa, xb).reshape(want.shape)
        assert np.array_equal(got, want), (case, sa, sb)


def test_binary_in_place_and_refusals(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(12)
    a, b, y = act("a", (3, 5), 0.05, 3), act("b", (3, 5), 0.07, -9), act("y", (3, 5), 0.0025, 1)
    op = op_of(OpKind.MUL, (a, b), (y,), ElementwiseAttrs(Activation.NONE))
    xa, xb = i8(rng, (3, 5)), i8(rng, (3, 5))
    want = run_np(op, (a, b), (y,), (xa, xb))
    cp = cv.binary_c_params(op, (a, b), (y,))
    buf = xa.copy()
    assert lib.tt_binary_s8(ctypes.addressof(cp.struct), buf.ctypes.data, xb.ctypes.data, buf.ctypes.data) == 0
    assert np.array_equal(buf, want)
    s = cv.TtBinaryParams.from_buffer_copy(cp.struct)
    s.kind = 3
    assert lib.tt_binary_s8(ctypes.addressof(s), xa.ctypes.data, xb.ctypes.data, buf.ctypes.data) == TT_ERR_ARG
    s = cv.TtBinaryParams.from_buffer_copy(cp.struct)
    s.out_dims[2] = 0
    assert lib.tt_binary_s8(ctypes.addressof(s), xa.ctypes.data, xb.ctypes.data, buf.ctypes.data) == TT_ERR_SHAPE


# ------------------------------------------------------------------------------ RSQRT


def test_rsqrt_every_input(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(13)
    done = 0
    for case in range(20):
        zi = -128 if case % 2 == 0 else rand_zp(rng)
        x = act("x", (256,), float(2.0 ** rng.uniform(-12, 0)), zi)
        y = act("y", (256,), float(2.0 ** rng.uniform(-4, 3)), rand_zp(rng))
        op = op_of(OpKind.RSQRT, (x,), (y,), NoAttrs())
        xs = BYTES[zi <= BYTES]
        x = dataclasses.replace(x, shape=(xs.size,))
        y = dataclasses.replace(y, shape=(xs.size,))
        try:
            want = run_np(op, (x,), (y,), (xs,))
        except UnsupportedOpError:
            continue
        cp = cv.rsqrt_c_params(op, (x,), (y,))
        assert np.array_equal(cv.run_lut_c(lib, cp, xs), want)
        assert np.array_equal(cv.run_lut_c(lib, cp, xs, in_place=True), want)
        if zi > -128:  # an input below the zero point: TFLite fails, so does the C
            below = np.full(xs.size, zi - 1, np.int8)
            out = np.empty_like(below)
            st = lib.tt_lut_s8(ctypes.addressof(cp.struct), below.ctypes.data, out.ctypes.data)
            assert st == TT_ERR_RANGE
        done += 1
    assert done >= 10


# ---------------------------------------------------------------------------- SOFTMAX


def test_softmax_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(14)
    done = 0
    for case in range(40):
        n = int(rng.choice([1, 2, 3, 7, 16, 65, 300]))
        rows = int(rng.integers(1, 6))
        scale = float(2.0 ** rng.uniform(-7, 1))
        beta = float(rng.choice([1.0, 0.5, 2.0, float(rng.uniform(0.1, 3))]))
        x = act("x", (rows, n), scale, rand_zp(rng))
        y = act("y", (rows, n), 1.0 / 256, -128)
        op = op_of(OpKind.SOFTMAX, (x,), (y,), SoftmaxAttrs(beta))
        mode = case % 4
        if mode == 0:
            xs = i8(rng, (rows, n))
        elif mode == 1:  # narrow spread
            xs = rng.integers(-3, 4, (rows, n)).astype(np.int8)
        elif mode == 2:  # extremes
            xs = rng.choice(np.array([-128, 127], np.int8), (rows, n))
        else:
            xs = np.full((rows, n), int(rng.integers(-128, 128)), np.int8)
        try:
            want = run_np(op, (x,), (y,), (xs,))
        except UnsupportedOpError:
            continue
        cp = cv.softmax_c_params(op, (x,), (y,))
        assert np.array_equal(cv.run_softmax_c(lib, cp, xs), want), case
        assert np.array_equal(cv.run_softmax_c(lib, cp, xs, in_place=True), want), case
        done += 1
    assert done >= 25


def test_softmax_every_difference(lib: ctypes.CDLL) -> None:
    """Rows [v, 127] for every v: every difference to the maximum, many input scales."""
    rng = np.random.default_rng(15)
    xs = np.stack([BYTES, np.full(256, 127, np.int8)], axis=1)
    done = 0
    for _ in range(15):
        x = act("x", (256, 2), float(2.0 ** rng.uniform(-8, 2)), 0)
        y = act("y", (256, 2), 1.0 / 256, -128)
        op = op_of(OpKind.SOFTMAX, (x,), (y,), SoftmaxAttrs(1.0))
        try:
            want = run_np(op, (x,), (y,), (xs,))
        except UnsupportedOpError:
            continue
        assert np.array_equal(cv.run_softmax_c(lib, cv.softmax_c_params(op, (x,), (y,)), xs), want)
        done += 1
    assert done >= 8


def test_softmax_refuses_what_tflite_aborts_on(lib: ctypes.CDLL) -> None:
    """600 equal maxima in a row: the sum of exponentials overflows the int8 output exponent."""
    x = act("x", (2, 600), 0.05, 0)
    y = act("y", (2, 600), 1.0 / 256, -128)
    op = op_of(OpKind.SOFTMAX, (x,), (y,), SoftmaxAttrs(1.0))
    xs = np.zeros((2, 600), np.int8)
    with pytest.raises(UnsupportedOpError):
        run_np(op, (x,), (y,), (xs,))
    cp = cv.softmax_c_params(op, (x,), (y,))
    out = np.empty_like(xs)
    assert lib.tt_softmax_s8(ctypes.addressof(cp.struct), xs.ctypes.data, out.ctypes.data) == TT_ERR_RANGE
    xs[:, 1:] = -128  # one maximum per row: legal again
    assert np.array_equal(cv.run_softmax_c(lib, cp, xs), run_np(op, (x,), (y,), (xs,)))


# ----------------------------------------------------------------------- BATCH_MATMUL


def test_batch_matmul_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(16)
    for case in range(50):
        rows, depth, cols = (int(v) for v in rng.integers(1, 9, 3))
        nb = int(rng.integers(0, 4))
        batch = [int(v) for v in rng.integers(1, 4, nb)]
        lb = [d if rng.random() < 0.7 else 1 for d in batch][int(rng.integers(0, nb + 1)) :]
        rb = [d if rng.random() < 0.7 else 1 for d in batch][int(rng.integers(0, nb + 1)) :]
        adj_x, adj_y = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        ls = (*lb, depth, rows) if adj_x else (*lb, rows, depth)
        rs = (*rb, cols, depth) if adj_y else (*rb, depth, cols)
        if len(ls) < 2 or len(rs) < 2:
            continue
        out_shape = (*np.broadcast_shapes(tuple(lb), tuple(rb)), rows, cols)
        s1, s2 = float(rng.uniform(0.01, 0.1)), float(rng.uniform(0.01, 0.1))
        so = float(s1 * s2 * 255 * np.sqrt(depth) * 2.0 ** rng.uniform(-3, 2))
        a, b = act("a", ls, s1, rand_zp(rng)), act("b", rs, s2, rand_zp(rng))
        if rng.random() < 0.2:
            b = const("b", i8(rng, rs), b.quant)
        y = act("y", out_shape, so, rand_zp(rng))
        op = op_of(OpKind.BATCH_MATMUL, (a, b), (y,), BatchMatMulAttrs(adj_x, adj_y))
        xa = i8(rng, ls)
        xb = b.data if b.data is not None else i8(rng, rs)
        want = run_np(op, (a, b), (y,), (xa, xb))
        got = cv.run_batch_matmul_c(lib, cv.batch_matmul_c_params(op, (a, b), (y,)), xa, xb)
        assert np.array_equal(got.reshape(want.shape), want), (case, ls, rs, adj_x, adj_y)


# ------------------------------------------------------------- TRANSPOSE / SLICE / CONCAT


def test_transpose_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(17)
    for case in range(40):
        rank = int(rng.integers(1, 6))
        shape = tuple(int(v) for v in rng.integers(1, 6, rank))
        perm = np.asarray(rng.permutation(rank), np.int32)
        x = act("x", shape, 0.1, 0)
        y = act("y", tuple(shape[i] for i in perm), 0.1, 0)
        pt = const("perm", perm)
        op = op_of(OpKind.TRANSPOSE, (x, pt), (y,), NoAttrs())
        xs = i8(rng, shape)
        want = run_np(op, (x, pt), (y,), (xs, perm))
        got = cv.run_gather_c(lib, cv.transpose_c_params(op, (x, pt), (y,)), xs)
        assert np.array_equal(got.reshape(want.shape), want), (case, shape, perm)


def test_strided_slice_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(18)
    done = 0
    for _ in range(200):
        rank = int(rng.integers(1, 5))
        shape = tuple(int(v) for v in rng.integers(1, 7, rank))
        begin = np.asarray([int(rng.integers(-d - 1, d + 1)) for d in shape], np.int32)
        end = np.asarray([int(rng.integers(-d - 1, d + 2)) for d in shape], np.int32)
        strides = np.asarray([int(rng.choice([1, 1, 2, 3, -1, -2])) for _ in shape], np.int32)
        attrs = StridedSliceAttrs(
            begin_mask=int(rng.integers(0, 1 << rank)),
            end_mask=int(rng.integers(0, 1 << rank)),
            shrink_axis_mask=int(rng.integers(0, 1 << rank)) if rng.random() < 0.3 else 0,
        )
        x = act("x", shape, 0.1, 0)
        ts = [const(n, v) for n, v in (("begin", begin), ("end", end), ("strides", strides))]
        out_shape = _slice_out_shape(shape, attrs, begin, end, strides)
        if out_shape is None:
            continue
        y = act("y", out_shape, 0.1, 0)
        op = op_of(OpKind.STRIDED_SLICE, (x, *ts), (y,), attrs)
        xs = i8(rng, shape)
        try:
            want = run_np(op, (x, *ts), (y,), (xs, begin, end, strides))
        except Exception:
            continue
        if want.size == 0:
            continue
        got = cv.run_gather_c(lib, cv.strided_slice_c_params(op, (x, *ts), (y,)), xs, "tt_strided_slice_s8")
        assert np.array_equal(got.reshape(want.shape), want), (shape, begin, end, strides, attrs)
        done += 1
    assert done >= 40


def _slice_out_shape(
    shape: tuple[int, ...], a: StridedSliceAttrs, begin: np.ndarray, end: np.ndarray, strides: np.ndarray
) -> tuple[int, ...] | None:
    """The output shape numpy slicing gives (None: a case to skip)."""
    sl = []
    for ax, d in enumerate(shape):
        st = int(strides[ax])
        b = None if a.begin_mask & (1 << ax) else int(begin[ax])
        e = None if a.end_mask & (1 << ax) else int(end[ax])
        if a.shrink_axis_mask & (1 << ax):
            if st < 0 or b is None:
                return None
            bb = b + d if b < 0 else b
            if not 0 <= bb < d:
                return None
            sl.append(slice(bb, bb + 1))
        else:
            sl.append(slice(b, e, st))
    out = np.zeros(shape)[tuple(sl)].shape
    return tuple(n for ax, n in enumerate(out) if not a.shrink_axis_mask & (1 << ax))


def test_concat_random(lib: ctypes.CDLL) -> None:
    rng = np.random.default_rng(19)
    for case in range(30):
        rank = int(rng.integers(1, 5))
        shape = [int(v) for v in rng.integers(1, 5, rank)]
        axis = int(rng.integers(-rank, rank))
        ax = axis % rank
        n_in = int(rng.integers(1, 5))
        ins, arrs = [], []
        for i in range(n_in):
            s = list(shape)
            s[ax] = int(rng.integers(1, 4))
            arr = i8(rng, s)
            t = (
                const(f"c{i}", arr, Quantization.per_tensor(0.05, 3))
                if rng.random() < 0.3
                else act(f"x{i}", s, 0.05, 3)
            )
            ins.append(t)
            arrs.append(arr)
        out = list(shape)
        out[ax] = sum(t.shape[ax] for t in ins)
        y = act("y", out, 0.05, 3)
        op = op_of(OpKind.CONCATENATION, ins, (y,), ConcatenationAttrs(axis))
        want = run_np(op, ins, (y,), arrs)
        got = cv.run_concat_c(lib, cv.concat_c_params(op, tuple(ins), (y,)), arrs)
        assert np.array_equal(got.reshape(want.shape), want), case


# ---------------------------------------------------------------- the tiny ViT's ops


def test_every_vit_instance(lib: ctypes.CDLL, vit_run: VitRun) -> None:
    graph, values = vit_run.graph, vit_run.values
    seen: dict[OpKind, int] = {}
    for op in graph.ops:
        ins = graph.op_inputs(op)
        outs = graph.op_outputs(op)
        xs = [values[t.name] for t in ins if t is not None]
        want = values[outs[0].name]
        if op.kind in cv.BINARY_KINDS:
            got = cv.run_binary_c(lib, cv.binary_c_params(op, ins, outs), xs[0], xs[1])
        elif op.kind is OpKind.RSQRT:
            got = cv.run_lut_c(lib, cv.rsqrt_c_params(op, ins, outs), xs[0])
        elif op.kind is OpKind.SOFTMAX:
            got = cv.run_softmax_c(lib, cv.softmax_c_params(op, ins, outs), xs[0])
        elif op.kind is OpKind.BATCH_MATMUL:
            got = cv.run_batch_matmul_c(lib, cv.batch_matmul_c_params(op, ins, outs), xs[0], xs[1])
        elif op.kind is OpKind.TRANSPOSE:
            got = cv.run_gather_c(lib, cv.transpose_c_params(op, ins, outs), xs[0])
        elif op.kind is OpKind.STRIDED_SLICE:
            got = cv.run_gather_c(lib, cv.strided_slice_c_params(op, ins, outs), xs[0], "tt_strided_slice_s8")
        elif op.kind is OpKind.CONCATENATION:
            got = cv.run_concat_c(lib, cv.concat_c_params(op, ins, outs), xs)
        elif op.kind is OpKind.MEAN:
            got = cf.run_mean_c(lib, cf.mean_c_params(op, ins, outs), xs[0])
        else:
            continue
        assert np.array_equal(got.reshape(want.shape), want), op.describe()
        seen[op.kind] = seen.get(op.kind, 0) + 1
    assert seen == {
        OpKind.ADD: 19, OpKind.MUL: 23, OpKind.SUB: 9, OpKind.RSQRT: 9, OpKind.SOFTMAX: 4, OpKind.BATCH_MATMUL: 8,
        OpKind.TRANSPOSE: 16, OpKind.STRIDED_SLICE: 1, OpKind.CONCATENATION: 1, OpKind.MEAN: 18,
    }  # fmt: skip


def test_params_values_for_the_generator(vit_run: VitRun) -> None:
    """CParams.values() lists every field by path (what a generator emits as static const data)."""
    graph = vit_run.graph
    op = next(o for o in graph.ops if o.kind is OpKind.RSQRT)
    v = cv.rsqrt_c_params(op, graph.op_inputs(op), graph.op_outputs(op)).values()
    assert set(v) == {"size", "min_value", "table"} and isinstance(v["table"], np.ndarray) and v["table"].size == 256
    op = next(o for o in graph.ops if o.kind is OpKind.SUB)
    v = cv.binary_c_params(op, graph.op_inputs(op), graph.op_outputs(op)).values()
    assert v["out_dims"] == (1, 1, 1, 1, 65, 64) and v["in_strides"] == ((0, 0, 0, 0, 64, 1), (0, 0, 0, 0, 1, 0))


# ------------------------------------------------------------------------ Cortex-M4


def test_compiles_for_cortex_m4(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", "-std=c99", "-ffp-contract=off",
             "-Wall", "-Wextra", "-Werror", "-O2", "-c", f"-I{RUNTIME_INCLUDE}"]  # fmt: skip
    for src in ("tt_vit_fwd.c", "tt_vit_bwd.c"):
        r = subprocess.run([cc, *flags, str(RUNTIME_SRC / src), "-o", str(tmp_path / (src + ".o"))],
                           capture_output=True, text=True)  # fmt: skip
        assert r.returncode == 0, r.stderr
