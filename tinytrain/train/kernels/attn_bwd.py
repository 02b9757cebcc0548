"""Backward of the attention ops: BATCH_MATMUL and SOFTMAX (int8, last axis).

Conventions (``docs/numerics.md``, "ViT ops"): ``g_y = Grad(g, e)`` is the gradient of
the loss with respect to the REAL output (any clamp mask already applied by the rule
table); every result is a :class:`Grad` with respect to a REAL input
(``real = s · (q − zp)``), made by one :func:`normalize` of an exact integer
accumulator. A non power-of-two scale ``s`` is a Q15 mantissa ``μ`` and an exponent
``k`` (``s ≈ μ · 2^(k − 15)``, :func:`linear_bwd.q15_scales`), fixed at compile time.

* **BATCH_MATMUL** ``Y = A · B`` (``A`` read transposed when ``adj_x``, ``B`` when
  ``adj_y``; batch axes broadcast like the forward). With ``A_r = s_a (A_q − z_a)``:
  ``dA = s_b · g · (B_q − z_b)ᵀ`` and ``dB = s_a · (A_q − z_a)ᵀ · g``, laid out like
  the stored operand (transposed back for ``adj_x`` / ``adj_y``); a broadcast batch
  axis sums over its copies. Per input: ``g' = RoundingDivideByPOT(g, d)`` with the
  compile-time bit budget ``d`` (``fan · D · 2^(14 − d) < 2^31``, ``fan`` = the
  contraction length times the broadcast count, ``D = max |q − z|`` of the other
  operand, ≤ 255), the int32 sum ``acc = Σ g' · (q − z)`` (cannot overflow), then the
  exact int64 product ``acc · μ`` (``< 2^46``) and ``normalize(acc · μ, e + d + k − 15)``.
* **SOFTMAX** ``y = softmax(β · x)`` over the last axis with the saved int8 output
  ``y_q`` (scale ``2^−m``, TFLite: ``m = 8``, zero point ``z_y = −128``):
  ``dx = β · y ⊙ (g − Σ_j g_j y_j)``. With ``u = y_q − z_y`` (``0 ≤ u ≤ 255``):
  ``S = Σ_j g_j u_j`` (int32 while ``n · 255 · 2^14 < 2^31``, int64 otherwise),
  ``t_i = g_i · 2^m − S`` (int64), ``acc_i = u_i · t_i · μ_β`` (int64, exact:
  ``< (n + 1) · 2^45``), ``dx = normalize(acc, e − 2m + k_β − 15)``.

Constant operands receive no gradient: a wanted index of a constant input is ignored.
BATCH_MATMUL's int8 output saturates: its params carry ``clamp`` (``norm_bwd.output_clamp``)
for the rule table's clamp mask. SOFTMAX has none: its output range is ``[0, 255/256]`` and
the rule reads the saved (possibly top-clipped) ``y`` directly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.ops import Activation, BatchMatMulAttrs, Op, SoftmaxAttrs
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.fixedpoint import rounding_divide_by_pot
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    graph_error,
    tensor_at,
    unsupported,
)
from tinytrain.sim.kernels.core_matmul import prepare_batch_matmul
from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, normalize
from tinytrain.train.kernels.norm_bwd import (
    GRAD_BOUND,
    INT32_LIMIT,
    INT64_LIMIT,
    Q15_BITS,
    check_grad,
    output_clamp,
    q15,
    qparams8,
    reduce_to,
    saved_array,
    unary_int8,
)

# The forward values read whole by the backward (names from "in0", "in1", "out0").
# BATCH_MATMUL: the maximum; :func:`batch_matmul_saves` gives the exact set for one op
# and request (a constant operand is read from the params, never saved; dA reads only B,
# dB reads only A).
BATCH_MATMUL_SAVES: tuple[str, ...] = ("in0", "in1")
SOFTMAX_SAVES: tuple[str, ...] = ("out0",)


# ------------------------------------------------------------------------ BATCH_MATMUL


@dataclass(frozen=True, eq=False)
class BatchMatMulBwdParams:
    in_shapes: tuple[tuple[int, ...], tuple[int, ...]]  # stored operand shapes (IR, batch axis 1)
    out_shape: tuple[int, ...]
    adj_x: bool
    adj_y: bool
    zero_points: tuple[int, int]
    mu: tuple[int, int]  # Q15 mantissas of s_a, s_b
    k: tuple[int, int]  # exponents: s ≈ μ · 2^(k − 15)
    drop: tuple[int, int]  # bit budget d of the gradient of input 0 / input 1
    consts: tuple[np.ndarray | None, np.ndarray | None]  # int8 data of a constant operand (None: activation)
    clamp: tuple[int, int] | None  # clamp mask bounds of the int8 output (norm_bwd.output_clamp)

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        """The inputs that can receive a gradient (the non-constant operands)."""
        return tuple(i for i in (0, 1) if self.consts[i] is None)


def _max_diff(t: Tensor, zp: int) -> int:
    """``max |q − z|`` over the values ``t`` can hold (a constant: its data)."""
    if t.data is not None and t.data.size:
        return max(abs(int(t.data.max()) - zp), abs(int(t.data.min()) - zp))
    return max(INT8_MAX - zp, zp - INT8_MIN)


def bit_budget(fan: int, max_diff: int) -> int:
    """Bits ``d`` dropped from ``g`` (``|g'| ≤ 2^(14 − d)``) so that ``fan · max_diff · |g'| < 2^31``;
    −1 when even one bit is too many."""
    budget = (INT32_LIMIT - 1) // max(fan * max_diff, 1)
    bits = min(GRAD_BITS, budget.bit_length() - 1)
    return GRAD_BITS - bits if bits >= 0 else -1


def _eff_shape(shape: tuple[int, ...], adj: bool) -> tuple[int, ...]:
    return (*shape[:-2], shape[-1], shape[-2]) if adj else shape


def prepare_batch_matmul_backward(op: Op, inputs: Inputs, outputs: Outputs) -> BatchMatMulBwdParams:
    """Validates an int8 BATCH_MATMUL for training (the forward's checks, int8 per-tensor
    operands); raises UnsupportedOpError naming the op."""
    fwd = prepare_batch_matmul(op, inputs, outputs)
    assert isinstance(op.attrs, BatchMatMulAttrs)
    a, b, y = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    if not fwd.is_int8:
        raise unsupported(op, "training needs an int8 BATCH_MATMUL")
    (s_a, z_a), (s_b, z_b) = qparams8(op, a, "lhs"), qparams8(op, b, "rhs")
    qparams8(op, y, "output")
    adj_x, adj_y = op.attrs.adj_x, op.attrs.adj_y
    ea, eb = _eff_shape(a.shape, adj_x), _eff_shape(b.shape, adj_y)
    rows, depth, cols = ea[-2], ea[-1], eb[-1]
    out_size = math.prod(y.shape)
    # Products summed into one element of dA: cols per output row, times the copies of A.
    fan_a = cols * (out_size // (rows * cols)) // max(math.prod(a.shape) // (rows * depth), 1)
    fan_b = rows * (out_size // (rows * cols)) // max(math.prod(b.shape) // (depth * cols), 1)
    da_max, db_max = _max_diff(a, z_a), _max_diff(b, z_b)
    drop = (bit_budget(fan_a, db_max), bit_budget(fan_b, da_max))
    if min(drop) < 0:
        raise unsupported(op, f"contraction of {max(fan_a, fan_b)} products too long for an int32 gradient sum")
    (mu_a, k_a), (mu_b, k_b) = q15(s_a), q15(s_b)
    bound = depth * da_max * s_a * db_max * s_b
    clamp = output_clamp(op, Activation.NONE, y, -bound, bound)
    return BatchMatMulBwdParams(
        (a.shape, b.shape), y.shape, adj_x, adj_y, (z_a, z_b), (mu_a, mu_b), (k_a, k_b), drop, (a.data, b.data), clamp
    )


def batch_matmul_saves(p: BatchMatMulBwdParams, wanted: frozenset[int]) -> tuple[str, ...]:
    """The saved forward values the gradients ``wanted`` read: dA reads B ("in1"), dB reads A
    ("in0"); a constant operand is never saved."""
    need = {1 - i for i in p.grad_inputs if i in wanted}
    return tuple(f"in{j}" for j in sorted(need) if p.consts[j] is None)


def _operand_eff(p: BatchMatMulBwdParams, j: int, saved: Mapping[str, np.ndarray]) -> np.ndarray:
    """``q − z`` of operand ``j`` (int64) in the effective layout (transposed when adj)."""
    c = p.consts[j]
    q = c if c is not None else saved_array(saved, f"in{j}", p.in_shapes[j], "BATCH_MATMUL")
    v = q.astype(np.int64) - p.zero_points[j]
    return np.swapaxes(v, -1, -2) if (p.adj_x if j == 0 else p.adj_y) else v


def batch_matmul_input_grads(
    p: BatchMatMulBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{i: dL/d(input i)}`` for the wanted non-constant operands (stored layouts).

    C twin: tt_batch_matmul_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c (one operand per call)."""
    check_grad(g_y, p.out_shape, "BATCH_MATMUL")
    out: dict[int, Grad] = {}
    for i in p.grad_inputs:
        if i not in wanted:
            continue
        j = 1 - i
        other = _operand_eff(p, j, saved)
        gp = rounding_divide_by_pot(g_y.g.astype(np.int64), p.drop[i]) if p.drop[i] else g_y.g.astype(np.int64)
        if i == 0:  # dA_eff[m, k] = Σ_n g'[m, n] · (B_eff[k, n] − z_b)
            full = np.matmul(gp, np.swapaxes(other, -1, -2))
        else:  # dB_eff[k, n] = Σ_m (A_eff[m, k] − z_a) · g'[m, n]
            full = np.matmul(np.swapaxes(other, -1, -2), gp)
        adj = p.adj_x if i == 0 else p.adj_y
        acc = reduce_to(full, _eff_shape(p.in_shapes[i], adj))  # int32 range by the bit budget
        if adj:
            acc = np.swapaxes(acc, -1, -2)
        out[i] = normalize(np.ascontiguousarray(acc) * p.mu[j], g_y.e + p.drop[i] + p.k[j] - Q15_BITS)
    return out


# ----------------------------------------------------------------------------- SOFTMAX


@dataclass(frozen=True, eq=False)
class SoftmaxBwdParams:
    shape: tuple[int, ...]  # input = output shape
    n: int  # length of the last axis
    out_zp: int  # z_y
    out_bits: int  # m: the output scale is 2^-m
    beta_mu: int  # Q15 mantissa of beta
    beta_k: int  # beta ≈ beta_mu · 2^(beta_k − 15)
    wide_sum: bool  # S = Σ g·u needs int64 (n · 255 · 2^14 ≥ 2^31)


def prepare_softmax_backward(op: Op, inputs: Inputs, outputs: Outputs) -> SoftmaxBwdParams:
    """Validates an int8 -> int8 SOFTMAX whose output scale is a power of two."""
    attrs, x, _, s_y, z_y = unary_int8(op, inputs, outputs, SoftmaxAttrs)
    if not x.shape:
        raise graph_error(op, "SOFTMAX of a scalar")
    mant, exp = math.frexp(s_y)
    if mant != 0.5:
        raise unsupported(op, f"training needs a power-of-two SOFTMAX output scale, got {s_y!r}")
    m = 1 - exp
    beta = float(np.float32(attrs.beta))
    if not (math.isfinite(beta) and beta > 0.0):
        raise unsupported(op, f"beta {attrs.beta!r} must be finite and positive")
    beta_mu, beta_k = q15(beta)
    n = x.shape[-1]
    u_max = max(INT8_MAX - z_y, z_y - INT8_MIN)
    t_max = (GRAD_BOUND << max(m, 0)) + n * u_max * GRAD_BOUND
    if u_max * t_max * (1 << Q15_BITS) >= INT64_LIMIT or m < 0:
        raise unsupported(op, f"softmax axis of {n} with output scale 2^{-m}: too large for an int64 gradient")
    wide = n * u_max * GRAD_BOUND >= INT32_LIMIT
    return SoftmaxBwdParams(tuple(x.shape), n, z_y, m, beta_mu, beta_k, wide)


def softmax_input_grads(
    p: SoftmaxBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: dL/dx}`` from the saved int8 output ``saved["out0"]`` (empty when 0 is not wanted):
    ``u = y_q − z_y``, ``S = Σ_j g_j u_j`` per row, ``t_i = g_i · 2^m − S``,
    ``acc_i = u_i · t_i · μ_β`` (int64), ``normalize(acc, e − 2m + k_β − 15)``.

    C twin: tt_softmax_bwd_s16 in firmware_templates/runtime/src/tt_vit_bwd.c."""
    if 0 not in wanted:
        return {}
    check_grad(g_y, p.shape, "SOFTMAX")
    u = saved_array(saved, "out0", p.shape, "SOFTMAX").astype(np.int64) - p.out_zp
    g = g_y.g.astype(np.int64)
    s = (g * u).sum(axis=-1, keepdims=True)  # int32 unless p.wide_sum
    t = g * (1 << p.out_bits) - s  # a multiplication, not a shift of a signed value
    acc = u * t * p.beta_mu
    return {0: normalize(acc, g_y.e - 2 * p.out_bits + p.beta_k - Q15_BITS)}
