"""Backward of the layer-norm ops of the tiny ViT: MUL, SUB, MEAN (keepdims), RSQRT.

Conventions (``docs/numerics.md``, "ViT ops"): ``g_y = Grad(g, e)`` is the gradient with
respect to the REAL output (the clamp mask, when the rule table asks for one, already
applied); results are :class:`Grad` s with respect to the REAL inputs, each from one
:func:`normalize` of an exact integer accumulator. A scale ``s`` is a compile-time Q15
mantissa and exponent, ``s ≈ μ · 2^(k − 15)``.

* **MUL** ``y = a · b`` (broadcast): ``da = g ⊙ b_r``, ``b_r = s_b (b_q − z_b)``:
  ``acc = μ_b · Σ_bcast g · (b_q − z_b)`` (int64: one product ``< 2^22``, the broadcast
  sum of ``c`` terms ``< c · 2^22``, times ``μ ≤ 2^15``), ``normalize(acc, e + k_b − 15)``;
  symmetric for ``db``. A constant operand is read from the params (never saved) and gets
  no gradient. **x·x** (the same tensor as both inputs): the kernel returns the whole
  gradient ``2 · g ⊙ x_r`` under index 0 alone (exponent + 1, exact) and nothing under
  index 1 — the rule table must not add a second contribution.
* **SUB** ``y = a − b``: ``da = g``, ``db = −g``; a broadcast input gets the int32 sum
  over the broadcast axes (``c · 2^14 < 2^31``), then ``normalize``.
* **MEAN** over non-batch axes (keepdims or not; the ViT's is the last axis):
  ``dx = g / n`` broadcast: ``μ = round(2^(15+k) / n)``, ``k = ⌊log2 n⌋``
  (:func:`pool_bwd.reciprocal_q15`, ``μ ≤ 2^15``), ``acc = g · μ`` (int32, ``< 2^29``),
  ``normalize(acc, e − k − 15)``; when ``n = 2^k`` the mantissas are copied with the
  exponent ``e − k`` (exact).
* **RSQRT** ``y = x^(−1/2)``: ``dx = −½ y³ g`` with the saved int8 output,
  ``u = y_q − z_y`` (``|u| ≤ 255``): ``acc = −g · u³ · μ`` (int64, ``< 2^53``) with
  ``s_y³ ≈ μ · 2^(k − 15)``, ``normalize(acc, e + k − 15 − 1)``.

Saturation: MUL, SUB, MEAN (a requantized mean) and RSQRT write a clamped int8 output;
their params carry ``clamp`` (:func:`output_clamp`): the ``(act_min, act_max)`` sides that the
exact output can pass, a side it cannot pass disabled (``NO_LOW`` = −129, ``NO_HIGH`` = 128),
``None`` when neither can be passed. The rule table masks the output gradient with
``clamp_mask(y_q, *clamp)`` before these kernels (``clamp_mask=True``, like ADD); the kernels
themselves never read the mask.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, ElementwiseAttrs, NoAttrs, Op
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    broadcast_shape,
    check_arity,
    check_dtype,
    check_shape,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    tensor_at,
    unsupported,
)
from tinytrain.train.kernels import pool_bwd
from tinytrain.train.kernels.gradient import Grad, normalize
from tinytrain.train.kernels.linear_bwd import q15_scales

Q15_BITS = 15
INT64_LIMIT = 2**63
INT32_LIMIT = 2**31
GRAD_BOUND = 1 << 14  # |g| of a normalized gradient
DIFF_BOUND = 255  # |q − z| for int8 q and an int8 zero point


# ------------------------------------------------------------------ shared helpers


def q15(scale: float) -> tuple[int, int]:
    """``(μ, k)`` with ``scale ≈ μ · 2^(k − 15)``, ``2^14 < μ ≤ 2^15`` (compile time, float64)."""
    if not (math.isfinite(scale) and scale > 0.0):
        raise UsageError(f"scale {scale!r} must be finite and positive")
    mu, k = q15_scales([scale])
    return int(mu[0]), k


def qparams8(op: Op, t: Tensor, role: str) -> tuple[float, int]:
    check_dtype(op, t, (DType.INT8,), role)
    s, z = per_tensor_qparams(op, t, role)
    if not INT8_MIN <= z <= INT8_MAX:
        raise unsupported(op, f"{role} {t.name!r} zero point {z} outside the int8 range")
    if not (math.isfinite(s) and s > 0.0):
        raise unsupported(op, f"{role} {t.name!r} scale {s!r} must be finite and positive")
    return s, z


_A = TypeVar("_A")


def unary_int8(op: Op, inputs: Inputs, outputs: Outputs, attrs: type[_A]) -> tuple[_A, Tensor, Tensor, float, int]:
    """(attributes, x, y, s_y, z_y) of a one-input int8 op whose output has the input's shape."""
    check_arity(op, inputs, outputs, (1,))
    a = op.attrs
    if not isinstance(a, attrs):
        raise graph_error(op, f"expects {attrs.__name__}, got {type(a).__name__}")
    x, y = tensor_at(op, inputs, 0), outputs[0]
    qparams8(op, x, "input")
    s_y, z_y = qparams8(op, y, "output")
    check_shape(op, y, x.shape, "output")
    return a, x, y, s_y, z_y


def real_range(t: Tensor, scale: float, zp: int) -> tuple[float, float]:
    """The real values an int8 tensor can hold (a constant's: its data's)."""
    if t.data is not None and t.data.size:
        lo, hi = int(t.data.min()), int(t.data.max())
    else:
        lo, hi = INT8_MIN, INT8_MAX
    return scale * (lo - zp), scale * (hi - zp)


# Bounds that disable one side of a clamp mask (``act_min < y_q < act_max`` holds for every int8 y_q).
NO_LOW = INT8_MIN - 1
NO_HIGH = INT8_MAX + 1  # = mask.SIGN_MASK_HI


def output_clamp(op: Op, activation: Activation, out: Tensor, lo_real: float, hi_real: float) -> tuple[int, int] | None:
    """The clamp mask bounds of an int8 output whose real value lies in ``[lo_real, hi_real]``.

    A side of ``(act_min, act_max)`` (the fused activation's, int8 saturation without one)
    is kept when the exact requantized value ``z_y + real / s_y`` can fall beyond it (the
    op saturates there, its derivative is 0) and disabled (``NO_LOW`` / ``NO_HIGH``: the
    comparison always holds) when it cannot, so that an exact bound value (a square or a
    mean of squares that is 0 at zero point −128) keeps its gradient. ``None``: no mask."""
    s_y, z_y = per_tensor_qparams(op, out, "output")
    lo, hi = quantized_activation_range(op, activation, s_y, z_y)
    low = lo if z_y + lo_real / s_y < lo else NO_LOW
    high = hi if z_y + hi_real / s_y > hi else NO_HIGH
    return None if (low, high) == (NO_LOW, NO_HIGH) else (low, high)


def _broadcast_axes(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> tuple[int, ...]:
    padded = (1,) * (len(out_shape) - len(in_shape)) + in_shape
    return tuple(i for i, (a, b) in enumerate(zip(padded, out_shape, strict=True)) if a == 1 and b != 1)


def reduce_to(acc: np.ndarray, in_shape: tuple[int, ...]) -> np.ndarray:
    """Sums an output-shaped int64 array over the axes ``in_shape`` was broadcast along."""
    axes = _broadcast_axes(in_shape, tuple(acc.shape))
    summed = acc.sum(axis=axes, keepdims=True, dtype=np.int64) if axes else acc
    return summed.reshape(in_shape)


def check_grad(g_y: Grad, shape: tuple[int, ...], what: str) -> None:
    if g_y.shape != shape:
        raise UsageError(f"{what} backward: output gradient of shape {list(g_y.shape)}, expected {list(shape)}")


def saved_array(saved: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if name not in saved:
        raise UsageError(f"{what} backward needs the saved forward value {name!r}")
    v = np.asarray(saved[name])
    if v.dtype != np.int8 or v.size != math.prod(shape):
        raise UsageError(f"{what} backward: saved {name!r} is {v.dtype}[{v.size}], expected int8{list(shape)}")
    return v.reshape(shape)


def _binary_tensors(op: Op, inputs: Inputs, outputs: Outputs) -> tuple[Tensor, Tensor, Tensor, ElementwiseAttrs]:
    check_arity(op, inputs, outputs, (2,))
    if not isinstance(op.attrs, ElementwiseAttrs):
        raise graph_error(op, "attributes must be ElementwiseAttrs")
    a, b, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    for t in (a, b):
        if len(t.shape) > len(y.shape):
            raise graph_error(op, f"input {t.name!r} has a higher rank than the output")
    check_shape(op, y, broadcast_shape(op, a.shape, b.shape), "output")
    return a, b, y, op.attrs


# Maximum sets; :func:`mul_saves` gives the exact one of a MUL op and request.
MUL_SAVES: tuple[str, ...] = ("in0", "in1")
SUB_SAVES: tuple[str, ...] = ()
MEAN_SAVES: tuple[str, ...] = ()
RSQRT_SAVES: tuple[str, ...] = ("out0",)


# ------------------------------------------------------------------------------- MUL


@dataclass(frozen=True, eq=False)
class MulBwdParams:
    in_shapes: tuple[tuple[int, ...], tuple[int, ...]]
    out_shape: tuple[int, ...]
    zero_points: tuple[int, int]
    mu: tuple[int, int]  # Q15 mantissas of s_a, s_b
    k: tuple[int, int]  # s ≈ μ · 2^(k − 15)
    consts: tuple[np.ndarray | None, np.ndarray | None]  # int8 data of a constant operand (None: activation)
    square: bool  # both inputs are the same tensor (x·x)
    clamp: tuple[int, int] | None  # (act_min, act_max) of the int8 output; None: it cannot saturate

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        """Inputs that receive a gradient: the non-constant ones; (0,) alone for x·x."""
        if self.square:
            return (0,)
        return tuple(i for i in (0, 1) if self.consts[i] is None)


def prepare_mul_backward(op: Op, inputs: Inputs, outputs: Outputs) -> MulBwdParams:
    """Validates an int8 MUL for training (per-tensor int8 operands and output)."""
    a, b, y, attrs = _binary_tensors(op, inputs, outputs)
    (s_a, z_a), (s_b, z_b) = qparams8(op, a, "input 0"), qparams8(op, b, "input 1")
    qparams8(op, y, "output")
    square = op.inputs[0] == op.inputs[1] and a.data is None
    for t in (a, b):
        count = math.prod(y.shape) // max(math.prod(t.shape), 1)
        if count * DIFF_BOUND * GRAD_BOUND * (1 << Q15_BITS) >= INT64_LIMIT:
            raise unsupported(op, f"input {t.name!r} is broadcast {count} times: too many for an int64 gradient sum")
    (mu_a, k_a), (mu_b, k_b) = q15(s_a), q15(s_b)
    ra, rb = real_range(a, s_a, z_a), real_range(b, s_b, z_b)
    if square:
        top = max(ra[0] ** 2, ra[1] ** 2)
        lo_real, hi_real = (0.0 if ra[0] <= 0.0 <= ra[1] else min(ra[0] ** 2, ra[1] ** 2)), top
    else:
        corners = [x * w for x in ra for w in rb]
        lo_real, hi_real = min(corners), max(corners)
    clamp = output_clamp(op, attrs.activation, y, lo_real, hi_real)
    consts = (a.data, b.data)
    return MulBwdParams((a.shape, b.shape), y.shape, (z_a, z_b), (mu_a, mu_b), (k_a, k_b), consts, square, clamp)


def mul_saves(p: MulBwdParams, wanted: frozenset[int]) -> tuple[str, ...]:
    """What the wanted gradients read: da reads b ("in1"), db reads a ("in0"); x·x reads
    "in0" only; constants are never saved."""
    if p.square:
        return ("in0",) if wanted & {0, 1} else ()
    need = {1 - i for i in p.grad_inputs if i in wanted}
    return tuple(f"in{j}" for j in sorted(need) if p.consts[j] is None)


def _operand(p: MulBwdParams, j: int, saved: Mapping[str, np.ndarray]) -> np.ndarray:
    """``q − z`` of operand ``j`` (int64, its own shape): a constant from the params, an
    activation from ``saved``."""
    c = p.consts[j]
    q = c if c is not None else saved_array(saved, f"in{j}", p.in_shapes[j], "MUL")
    return q.astype(np.int64) - p.zero_points[j]


def mul_input_grads(
    p: MulBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{i: dL/d(input i)}`` for the wanted non-constant inputs (x·x: ``{0: 2·g ⊙ x}``).

    ``acc = μ_j · Σ_bcast g · (q_j − z_j)`` (int64, exact) with ``j`` the other operand, then
    ``normalize(acc, e + k_j − 15)`` (x·x: ``+ 1``).

    C twin: tt_mul_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c (one input per call)."""
    check_grad(g_y, p.out_shape, "MUL")
    g = g_y.g.astype(np.int64)
    if p.square:
        if not wanted & {0, 1}:
            return {}
        acc = g * _operand(p, 0, saved) * p.mu[0]
        return {0: normalize(acc, g_y.e + p.k[0] - Q15_BITS + 1)}
    out: dict[int, Grad] = {}
    for i in p.grad_inputs:
        if i not in wanted:
            continue
        j = 1 - i
        prod = g * _operand(p, j, saved)  # broadcasts to the output shape
        acc = reduce_to(prod, p.in_shapes[i]) * p.mu[j]
        out[i] = normalize(acc, g_y.e + p.k[j] - Q15_BITS)
    return out


# ------------------------------------------------------------------------------- SUB


@dataclass(frozen=True, eq=False)
class SubBwdParams:
    in_shapes: tuple[tuple[int, ...], tuple[int, ...]]
    out_shape: tuple[int, ...]
    consts: tuple[bool, bool]  # input i is a constant (no gradient)
    clamp: tuple[int, int] | None  # (act_min, act_max) of the int8 output; None: it cannot saturate

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        return tuple(i for i in (0, 1) if not self.consts[i])


MAX_BROADCAST_SUM = INT32_LIMIT // (2 * GRAD_BOUND)  # count · 2^14 < 2^31


def prepare_sub_backward(op: Op, inputs: Inputs, outputs: Outputs) -> SubBwdParams:
    """Validates an int8 SUB for training."""
    a, b, y, attrs = _binary_tensors(op, inputs, outputs)
    (s_a, z_a), (s_b, z_b) = qparams8(op, a, "input 0"), qparams8(op, b, "input 1")
    qparams8(op, y, "output")
    for t in (a, b):
        count = math.prod(y.shape) // max(math.prod(t.shape), 1)
        if count >= MAX_BROADCAST_SUM:
            raise unsupported(op, f"input {t.name!r} is broadcast {count} times: too many for an int32 gradient sum")
    ra, rb = real_range(a, s_a, z_a), real_range(b, s_b, z_b)
    clamp = output_clamp(op, attrs.activation, y, ra[0] - rb[1], ra[1] - rb[0])
    return SubBwdParams((a.shape, b.shape), y.shape, (a.data is not None, b.data is not None), clamp)


def sub_input_grads(
    p: SubBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: g, 1: −g}`` (same exponent) for the wanted non-constant inputs; a broadcast
    input gets the int32 sum over its broadcast axes, normalized.

    C twin: tt_sub_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c (one input per call)."""
    check_grad(g_y, p.out_shape, "SUB")
    out: dict[int, Grad] = {}
    for i in p.grad_inputs:
        if i not in wanted:
            continue
        g = g_y.g.astype(np.int64)
        if i == 1:
            g = -g
        shape = p.in_shapes[i]
        if shape == p.out_shape:
            out[i] = Grad(g.astype(np.int16), g_y.e)
        else:
            out[i] = normalize(reduce_to(g, shape), g_y.e)
    return out


# ------------------------------------------------------------------------------ MEAN


@dataclass(frozen=True, eq=False)
class MeanBwdParams:
    in_shape: tuple[int, ...]
    keep_shape: tuple[int, ...]  # the output shape with the reduced axes kept as 1
    n: int  # elements averaged into one output
    mu: int  # Q15: round(2^(15+k) / n)
    k: int  # ⌊log2 n⌋
    clamp: tuple[int, int] | None  # the requantized int8 mean can saturate (output_clamp)


def prepare_mean_backward(op: Op, inputs: Inputs, outputs: Outputs) -> MeanBwdParams:
    """A MEAN over non-batch axes (``pool_bwd.prepare_mean_backward``'s validation)."""
    pp = pool_bwd.prepare_mean_backward(op, inputs, outputs)
    x, y = tensor_at(op, inputs, 0), outputs[0]
    s_x, z_x = qparams8(op, x, "input")
    qparams8(op, y, "output")
    n = math.prod(pp.in_shape) // math.prod(pp.keep_shape)
    lo, hi = real_range(x, s_x, z_x)
    clamp = output_clamp(op, Activation.NONE, y, lo, hi)
    return MeanBwdParams(pp.in_shape, pp.keep_shape, n, int(pp.mu), pp.k, clamp)


def mean_input_grads(
    p: MeanBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: g/n broadcast}``: ``acc = g · μ`` (int32, ``|acc| ≤ 2^29``),
    ``normalize(acc, e − k − 15)``; for ``n = 2^k`` (``μ = 2^15``) the mantissas are
    copied and the exponent is ``e − k`` (exact, no rounding).

    C twin: tt_mean_last_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c."""
    if 0 not in wanted:
        return {}
    if g_y.g.size != math.prod(p.keep_shape):
        raise UsageError(f"MEAN backward: {g_y.g.size} gradient values for an output of {list(p.keep_shape)}")
    g = g_y.g.reshape(p.keep_shape)
    if p.mu == 1 << Q15_BITS:  # n = 2^k: the mantissas pass, the exponent drops by k (exact)
        return {0: Grad(np.ascontiguousarray(np.broadcast_to(g, p.in_shape)), g_y.e - p.k)}
    acc = g.astype(np.int64) * p.mu
    return {0: normalize(np.broadcast_to(acc, p.in_shape), g_y.e - p.k - Q15_BITS)}


# ----------------------------------------------------------------------------- RSQRT


@dataclass(frozen=True, eq=False)
class RsqrtBwdParams:
    shape: tuple[int, ...]
    out_zp: int
    mu: int  # Q15 mantissa of s_y³
    k: int  # s_y³ ≈ μ · 2^(k − 15)
    clamp: tuple[int, int] | None  # (NO_LOW, 127): y saturates at 127 (x at its zero point: 1/√0)


def prepare_rsqrt_backward(op: Op, inputs: Inputs, outputs: Outputs) -> RsqrtBwdParams:
    """Validates an int8 RSQRT for training."""
    _, _, y, s_y, z_y = unary_int8(op, inputs, outputs, NoAttrs)
    try:
        mu, k = q15(s_y**3)
    except UsageError as err:
        raise unsupported(op, f"output scale cubed: {err}") from None
    clamp = output_clamp(op, Activation.NONE, y, 0.0, math.inf)
    return RsqrtBwdParams(y.shape, z_y, mu, k, clamp)


def rsqrt_input_grads(
    p: RsqrtBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: −½ y³ g}`` from the saved int8 output: ``u = y_q − z_y``,
    ``acc = −g · u³ · μ`` (int64, ``|acc| < 2^53``), ``normalize(acc, e + k − 16)``.

    C twin: tt_rsqrt_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c."""
    if 0 not in wanted:
        return {}
    check_grad(g_y, p.shape, "RSQRT")
    u = saved_array(saved, "out0", p.shape, "RSQRT").astype(np.int64) - p.out_zp
    acc = -(g_y.g.astype(np.int64) * (u * u * u)) * p.mu
    return {0: normalize(acc, g_y.e + p.k - Q15_BITS - 1)}
