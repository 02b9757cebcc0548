"""Shared by the fused-backward tests (numpy and C): the executor's forward pass with the
saves of chosen backward steps, steps made to also request weight gradients, the C runtime
and its status codes, and random projection P ← depthwise D ← expansion E triples."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, replace

import numpy as np
import pytest

from codegen.cparams.update import declare
from tinytrain.ir.ops import NoAttrs, Op, OpKind
from tinytrain.sim.kernels import KERNELS
from tinytrain.sim.kernels.core_conv import Geometry
from tinytrain.testing.cbuild import load_runtime
from tinytrain.train.build import BackwardStep, TrainingProgram
from tinytrain.train.grad_rules import GRAD_RULES, BackwardParams, BackwardRequest, Saved, save_forward
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.linear_bwd import LinearBwdParams, make_linear_backward
from tinytrain.train.kernels.mask import pack_mask


def forward_and_save(program: TrainingProgram, steps: dict[int, BackwardStep], x: np.ndarray) -> dict[int, Saved]:
    """The executor's forward pass (original weights) with the saves of ``steps`` (by op index)."""
    graph = program.graph
    values: dict[str, np.ndarray] = {graph.inputs[0]: x}
    saved: dict[int, Saved] = {}
    for i, op in enumerate(graph.ops):
        spec = KERNELS[op.kind]
        params = spec.prepare(op, graph.op_inputs(op), graph.op_outputs(op))
        args = [
            None if n is None else (graph.tensor(n).data if graph.tensor(n).data is not None else values[n])
            for n in op.inputs
        ]
        outs = spec.run(params, args)
        for name, y in zip(op.outputs, outs, strict=True):
            values[name] = y
        st = steps.get(i)
        if st is not None:
            src = st.target(0)
            if src is not None and src != op.inputs[0]:
                args = [values[src], *args[1:]]
            saved[i] = save_forward(st.params, args, outs)
    return saved


def with_weights(step: BackwardStep, n: int) -> BackwardStep:
    """``step`` also requesting the weight gradient of (at most) ``n`` input channels: 0, 2, 4, ..."""
    kernel = step.params.kernel
    req = replace(step.params.request, weight_channels=tuple(range(0, kernel.in_channels, 2))[:n])
    return replace(step, params=replace(step.params, request=req))


# ------------------------------------------------------------------ the C kernels' tests

TT_OK, TT_ERR_ARG = 0, 1
GUARD = 64  # canary bytes after the scratch


def c_runtime(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    """The compiled runtime with the ``update`` family's prototypes declared."""
    return declare(load_runtime(tmp_path_factory.mktemp("c")))


# ------------------------------------------------------------------ random P ← D ← E triples


def geometry(h: int, w: int, k: int, s: int, pads: tuple[int, int] | None) -> Geometry:
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


def backward_params(kind: OpKind, kernel: object, request: BackwardRequest, clamp: bool, index: int) -> BackwardParams:
    """A linear op's backward params on a stand-in op (inputs ``x{i}, w{i}, b{i}``)."""
    op = Op(kind, (f"x{index}", f"w{index}", f"b{index}"), (f"y{index}",), NoAttrs(), index)
    return BackwardParams(op, GRAD_RULES[kind], request, kernel, (-128, 127) if clamp else None, None)


@dataclass(frozen=True)
class PdeCase:
    """A random projection P ← depthwise D ← expansion E triple."""

    h: int  # D's input (= E's output) is h × w × c
    w: int
    c: int
    cin: int  # E's input channels
    cp: int  # P's output channels
    dk: int  # D's kernel and stride
    ds: int
    pads: tuple[int, int] | None  # D's folded explicit pad (None: SAME)
    e_grad: bool = True  # E's input gradient
    weights: tuple[int, int, int] = (0, 0, 0)  # trained input channels of P, D, E (gradient + patch)
    masks: tuple[bool, bool, bool] = (True, True, True)  # clamp masks of P, D, E
    e_stem: bool = False  # E is a 3×3 stride-2 conv (no input gradient)
    scale: int = 2**14  # |g_P| bound (small: normalizations shift left; 0: all zero)
    bias: bool = True  # the biases train


def pde_case_id(c: PdeCase) -> str:
    return f"{c.h}x{c.w}-k{c.dk}s{c.ds}-pad{c.pads}-w{''.join(map(str, c.weights))}"


@dataclass(frozen=True)
class PdeKernels:
    """The random linear kernels of a case and its sizes: D's output is oh × ow, E's input eh × ew
    with an ek × ek kernel."""

    kp: LinearBwdParams
    kd: LinearBwdParams
    ke: LinearBwdParams
    oh: int
    ow: int
    ek: int
    eh: int
    ew: int


def pde_kernels(case: PdeCase, rng: np.random.Generator) -> PdeKernels:
    """D's, E's and P's kernels with random scales and zero points (drawn in that order)."""
    h, w, c = case.h, case.w, case.c
    dgeom = geometry(h, w, case.dk, case.ds, case.pads)
    oh, ow = dgeom.out_h, dgeom.out_w
    ek, es = (3, 2) if case.e_stem else (1, 1)
    eh, ew = h * es, w * es
    egeom = geometry(eh, ew, ek, es, None)
    assert (egeom.out_h, egeom.out_w) == (h, w)
    zp = lambda: int(rng.integers(-128, 128))  # noqa: E731
    kd = make_linear_backward(OpKind.DEPTHWISE_CONV_2D, (1, h, w, c), (1, oh, ow, c), (1, case.dk, case.dk, c),
                              list(rng.uniform(0.002, 0.05, c)), zp(), dgeom)  # fmt: skip
    ke = make_linear_backward(OpKind.CONV_2D, (1, eh, ew, case.cin), (1, h, w, c), (c, ek, ek, case.cin),
                              list(rng.uniform(0.001, 0.08, c)), zp(), egeom)  # fmt: skip
    kp = make_linear_backward(OpKind.CONV_2D, (1, oh, ow, c), (1, oh, ow, case.cp), (case.cp, 1, 1, c),
                              list(rng.uniform(0.001, 0.1, case.cp)), zp(), geometry(oh, ow, 1, 1, None))  # fmt: skip
    return PdeKernels(kp, kd, ke, oh, ow, ek, eh, ew)


def pde_channels(case: PdeCase) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """P's and D's trained weight channels: P's last ones every other, D's first ones every other."""
    n_p, n_d, _ = case.weights
    return tuple(range(case.c - 1, -1, -2))[:n_p], tuple(range(0, case.c, 2))[:n_d]


def pde_params(
    case: PdeCase, k: PdeKernels, ch_e: tuple[int, ...]
) -> tuple[BackwardParams, BackwardParams, BackwardParams]:
    """P's, D's and E's backward params (E's trained weight channels ``ch_e``)."""
    ch_p, ch_d = pde_channels(case)
    mp, md, me = case.masks
    p = backward_params(OpKind.CONV_2D, k.kp, BackwardRequest(frozenset({0}), ch_p, case.bias), mp, 3)
    d = backward_params(OpKind.DEPTHWISE_CONV_2D, k.kd, BackwardRequest(frozenset({0}), ch_d, case.bias), md, 2)
    e_req = BackwardRequest(frozenset({0}) if case.e_grad and not case.e_stem else frozenset(), ch_e, True)
    e = backward_params(OpKind.CONV_2D, k.ke, e_req, me, 1)
    return p, d, e


def pde_saved_and_grad(
    case: PdeCase, k: PdeKernels, rng: np.random.Generator
) -> tuple[tuple[Saved, Saved, Saved], Grad]:
    """Random saves of P, D and E (clamp masks, trained input channels) and P's output gradient."""
    n_p, n_d, n_e = case.weights
    mp, md, me = case.masks
    h, w, c, oh, ow = case.h, case.w, case.c, k.oh, k.ow

    def mask(n: int, on: bool) -> np.ndarray | None:
        return pack_mask(rng.random(n) < 0.7) if on else None

    def channels(shape: tuple[int, ...], n: int) -> np.ndarray | None:
        return rng.integers(-128, 128, (*shape, n)).astype(np.int8) if n else None

    saved = (
        Saved(mask(oh * ow * case.cp, mp), channels((1, oh, ow), n_p)),
        Saved(mask(oh * ow * c, md), channels((1, h, w), n_d)),
        Saved(mask(h * w * c, me), channels((1, k.eh, k.ew), n_e)),
    )
    g = rng.integers(-case.scale, case.scale + 1, (1, oh, ow, case.cp)).astype(np.int16)
    return saved, Grad(g, int(rng.integers(-30, -5)))
