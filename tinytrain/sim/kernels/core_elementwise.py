"""ADD, SUB, MUL, SQUARED_DIFFERENCE, RELU, RELU6, LEAKY_RELU, bit-exact with TFLite Micro.

int8: an int8 op's output depends only on its (one or two) int8 input values, so
``prepare`` evaluates TFLite Micro's integer formula once for every possible input
(256 values, or 256×256 pairs) with the reference fixed-point primitives of
:mod:`tinytrain.sim.fixedpoint`, and ``run`` is a table lookup indexed by the raw
input bytes (broadcasting like numpy, which is what TFLite's slow broadcast does).
The multipliers are derived exactly as each op's Prepare derives them (``double``
arithmetic in ADD, MUL and SQUARED_DIFFERENCE, single precision ``float`` in SUB and the
activations), so the tables hold TFLite Micro's outputs.

float32: the same float32 expression as the C code (``a + b``, ``a - b``, ``a * b``,
``(a - b)²``, comparisons), followed by the fused-activation clamp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, ElementwiseAttrs, LeakyReluAttrs, NoAttrs, Op, OpKind
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier, wrap_int32
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    INT8_MAX,
    INT8_MIN,
    broadcast_shape,
    check_arity,
    check_dtype,
    check_shape,
    clamp_float,
    f32,
    float_activation_range,
    graph_error,
    per_tensor_qparams,
    quantized_activation_range,
    round_half_away,
    tensor_at,
    unsupported,
)

MAX_BROADCAST_RANK = 6

# Every int8 value, indexed by its byte (uint8 view): 0..127, -128..-1.
_BYTE_VALUES = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.int64)


def _mbqm(x: np.ndarray, q: int, shift: int) -> np.ndarray:
    return multiply_by_quantized_multiplier(x, q, shift)


def _smaller_than_one(op: Op, real: float, what: str) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplierSmallerThanOneExp`` (aborts outside (0, 1))."""
    if not 0.0 < real < 1.0:
        raise unsupported(op, f"{what} multiplier {real!r} is outside (0, 1)")
    q, s = quantize_multiplier(real)
    return q, s


def _clamp_to_table(v: np.ndarray, lo: int, hi: int) -> np.ndarray:
    return np.clip(v, lo, hi).astype(np.int8)


# ------------------------------------------------------------------------ binary ops


@dataclass(frozen=True, eq=False)
class BinaryParams:
    is_int8: bool
    table: np.ndarray | None  # 65536 int8 outputs indexed by (byte1 << 8) | byte2
    f_op: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
    f_lo: np.float32 | None
    f_hi: np.float32 | None


def _binary_tables(op: Op, kind: OpKind, inputs: tuple[Tensor, Tensor], out: Tensor, act: Activation) -> np.ndarray:
    s1, z1 = per_tensor_qparams(op, inputs[0], "input 1")
    s2, z2 = per_tensor_qparams(op, inputs[1], "input 2")
    so, zo = per_tensor_qparams(op, out, "output")
    x1 = _BYTE_VALUES[:, None]
    x2 = _BYTE_VALUES[None, :]
    if kind is OpKind.MUL:
        lo, hi = quantized_activation_range(op, act, so, zo)
        q, s = quantize_multiplier(s1 * s2 / so)
        raw = _mbqm(wrap_int32((x1 - z1) * (x2 - z2)), q, s) + zo
        return _clamp_to_table(raw, lo, hi)
    if kind is OpKind.SQUARED_DIFFERENCE:
        for z in (z1, z2, zo):
            if not INT8_MIN <= z <= INT8_MAX:
                raise unsupported(op, f"zero point {z} outside the int8 range")
        left = 7
        twice = 2.0 * max(s1, s2)
        q1, sh1 = _smaller_than_one(op, s1 / twice, "input 1")
        q2, sh2 = _smaller_than_one(op, s2 / twice, "input 2")
        qo, sho = quantize_multiplier((twice * twice) / float(f32(1 << (2 * left)) * f32(so)))
        d = _mbqm((x1 - z1) << left, q1, sh1) - _mbqm((x2 - z2) << left, q2, sh2)
        raw = _mbqm(wrap_int32(d * d), qo, sho) + zo
        return _clamp_to_table(raw, INT8_MIN, INT8_MAX)
    left = 20
    if kind is OpKind.ADD:
        twice = 2.0 * max(s1, s2)
        r1, r2, ro = s1 / twice, s2 / twice, twice / ((1 << left) * so)
    else:  # SUB computes its multipliers in single precision
        twice32 = f32(2.0) * f32(max(s1, s2))
        r1 = float(f32(s1) / twice32)
        r2 = float(f32(s2) / twice32)
        ro = float(twice32 / (f32(1 << left) * f32(so)))
    q1, sh1 = _smaller_than_one(op, r1, "input 1")
    q2, sh2 = _smaller_than_one(op, r2, "input 2")
    qo, sho = _smaller_than_one(op, ro, "output")
    lo, hi = quantized_activation_range(op, act, so, zo)
    a1 = _mbqm((x1 - z1) << left, q1, sh1)
    a2 = _mbqm((x2 - z2) << left, q2, sh2)
    raw_in = a1 + a2 if kind is OpKind.ADD else a1 - a2
    raw = _mbqm(wrap_int32(raw_in), qo, sho) + zo
    return _clamp_to_table(raw, lo, hi)


def _float_binary(kind: OpKind) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if kind is OpKind.ADD:
        return np.add
    if kind is OpKind.SUB:
        return np.subtract
    if kind is OpKind.MUL:
        return np.multiply

    def sqdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.subtract(a, b)
        return np.multiply(d, d, out=d)

    return sqdiff


def prepare_binary(op: Op, inputs: Inputs, outputs: Outputs) -> BinaryParams:
    check_arity(op, inputs, outputs, (2,))
    kind = op.kind
    if kind is OpKind.SQUARED_DIFFERENCE:
        if not isinstance(op.attrs, (NoAttrs, ElementwiseAttrs)):
            raise graph_error(op, "unexpected attributes")
        act = op.attrs.activation if isinstance(op.attrs, ElementwiseAttrs) else Activation.NONE
        if act is not Activation.NONE:
            raise unsupported(op, "SQUARED_DIFFERENCE has no fused activation")
    else:
        if not isinstance(op.attrs, ElementwiseAttrs):
            raise graph_error(op, "attributes must be ElementwiseAttrs")
        act = op.attrs.activation
    a, b, out = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1), outputs[0]
    check_dtype(op, a, (DType.INT8, DType.FLOAT32), "input 1")
    if b.dtype is not a.dtype or out.dtype is not a.dtype:
        raise unsupported(op, "inputs and output must have the same type")
    shape = broadcast_shape(op, a.shape, b.shape)
    check_shape(op, out, shape, "output")
    if len(shape) > MAX_BROADCAST_RANK:
        raise unsupported(op, f"rank {len(shape)} above {MAX_BROADCAST_RANK}")
    if a.dtype is DType.INT8:
        return BinaryParams(True, _binary_tables(op, kind, (a, b), out, act).reshape(-1), None, None, None)
    if kind is OpKind.SQUARED_DIFFERENCE:
        return BinaryParams(False, None, _float_binary(kind), None, None)
    lo, hi = float_activation_range(op, act)
    return BinaryParams(False, None, _float_binary(kind), lo, hi)


def run_binary(p: BinaryParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    """C twin: tt_add_s8 in firmware_templates/runtime/src/tt_eltwise.c (int8 ADD, same-shape inputs).

    C twin: tt_binary_s8 in firmware_templates/runtime/src/tt_vit_fwd.c (int8 ADD / SUB / MUL, broadcast)."""
    a, b = args[0], args[1]
    assert a is not None and b is not None
    if p.is_int8:
        assert p.table is not None
        idx = np.left_shift(a.view(np.uint8), 8, dtype=np.uint16)
        idx = np.bitwise_or(idx, b.view(np.uint8), dtype=np.uint16)
        return (p.table[idx],)
    assert p.f_op is not None
    y = np.asarray(p.f_op(a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)), dtype=np.float32)
    if p.f_lo is not None and p.f_hi is not None:
        y = clamp_float(y, p.f_lo, p.f_hi)
    return (y,)


def elementwise_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    if not outputs or not outputs[0].shape or outputs[0].shape[0] != 1:
        return False
    rank = len(outputs[0].shape)
    return all(t is None or t.data is not None or len(t.shape) == rank for t in inputs)


# ------------------------------------------------------------------------- unary ops


@dataclass(frozen=True, eq=False)
class UnaryParams:
    is_int8: bool
    table: np.ndarray | None  # 256 int8 outputs indexed by the input byte
    f_fn: Callable[[np.ndarray], np.ndarray] | None


def _relu_table(op: Op, inp: Tensor, out: Tensor) -> np.ndarray:
    si, zi = per_tensor_qparams(op, inp, "input")
    so, zo = per_tensor_qparams(op, out, "output")
    q, s = quantize_multiplier(float(f32(si) / f32(so)))
    lo = max(INT8_MIN, zo + round_half_away(float(f32(0.0) / f32(so))))
    y = zo + _mbqm(_BYTE_VALUES - zi, q, s)
    return _clamp_to_table(y, lo, INT8_MAX)


def _relu6_table(op: Op, inp: Tensor) -> np.ndarray:
    si, zi = per_tensor_qparams(op, inp, "input")
    six = min(max(round_half_away(float(f32(6.0) / f32(si))) + zi, INT8_MIN), INT8_MAX)
    zero = ((zi + 128) % 256) - 128  # Relu6Quantized<int8_t> takes the zero point as int8
    v = _BYTE_VALUES
    return np.where(v > six, six, np.where(v < zero, zero, v)).astype(np.int8)


def _leaky_table(op: Op, inp: Tensor, out: Tensor, alpha: float) -> np.ndarray:
    si, zi = per_tensor_qparams(op, inp, "input")
    so, zo = per_tensor_qparams(op, out, "output")
    qa, sa = quantize_multiplier(float((f32(si) * f32(alpha)) / f32(so)))
    qi, s_i = quantize_multiplier(float(f32(si) / f32(so)))
    v = _BYTE_VALUES - zi
    ident = _mbqm(v, qi, s_i)
    scaled = _mbqm(v, abs(qa), sa)
    neg = -scaled if qa < 0 else scaled
    y = zo + np.where(v >= 0, ident, neg)
    return _clamp_to_table(y, INT8_MIN, INT8_MAX)


def _float_unary(kind: OpKind, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    zero = np.float32(0.0)
    if kind is OpKind.RELU:
        return lambda x: np.where(x < zero, zero, x)
    if kind is OpKind.RELU6:
        six = np.float32(6.0)
        return lambda x: np.where(x > six, six, np.where(x < zero, zero, x))
    a32 = np.float32(alpha)
    return lambda x: np.where(x > zero, x, x * a32)


def prepare_unary(op: Op, inputs: Inputs, outputs: Outputs) -> UnaryParams:
    check_arity(op, inputs, outputs, (1,))
    inp, out = tensor_at(op, inputs, 0), outputs[0]
    alpha = 0.0
    if op.kind is OpKind.LEAKY_RELU:
        if not isinstance(op.attrs, LeakyReluAttrs):
            raise graph_error(op, "attributes must be LeakyReluAttrs")
        alpha = float(op.attrs.alpha)
    check_dtype(op, inp, (DType.INT8, DType.FLOAT32), "input")
    if out.dtype is not inp.dtype:
        raise unsupported(op, "input and output must have the same type")
    check_shape(op, out, inp.shape, "output")
    if inp.dtype is DType.FLOAT32:
        return UnaryParams(False, None, _float_unary(op.kind, alpha))
    if op.kind is OpKind.RELU:
        table = _relu_table(op, inp, out)
    elif op.kind is OpKind.RELU6:
        table = _relu6_table(op, inp)
    else:
        table = _leaky_table(op, inp, out, alpha)
    return UnaryParams(True, table, None)


def run_unary(p: UnaryParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x = args[0]
    assert x is not None
    if p.is_int8:
        assert p.table is not None
        return (p.table[x.view(np.uint8)],)
    assert p.f_fn is not None
    return (np.asarray(p.f_fn(x.astype(np.float32, copy=False)), dtype=np.float32),)


ADD = KernelSpec(prepare=prepare_binary, run=run_binary, batch_safe=elementwise_batch_safe)
SUB = ADD
MUL = ADD
SQUARED_DIFFERENCE = ADD
RELU = KernelSpec(prepare=prepare_unary, run=run_unary)
RELU6 = RELU
LEAKY_RELU = RELU
