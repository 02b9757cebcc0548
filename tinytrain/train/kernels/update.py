"""SGD update in quantized units with QAS-equivalent scaling (``docs/numerics.md``, "Update").

Real SGD on ``w_real = s_w[o] · w_q`` and ``b_real = s_in · s_w[o] · b_q`` gives
``Δw_q = −lr_t · (s_in / s_w[o]) · G · 2^e_y`` and ``Δb_q = −lr_t / (s_in · s_w[o]) · B · 2^e_y``.

* Compile time (:func:`prepare_update`): per output channel ``(q, shift)`` =
  ``QuantizeMultiplier(s_in / s_w[o])`` (weights) and ``QuantizeMultiplier(1 / (s_in · s_w[o]))``
  (biases).
* Per step (:func:`combine_multipliers`): with the host's ``(q_lr, shift_lr)`` and the Q15
  schedule factor ``c_t``, ``M = round(round(q · q_lr / 2^31) · c_t / 2^15)`` (halves up;
  all factors are ≥ 0) and ``S = shift + shift_lr``, so the step is ``M · 2^(S − 31)``.
* Per output channel, the int64 gradient is reduced to ``|G'| ≤ 2^30`` (``r`` bits,
  rounding half away from zero), ``P = −G' · M`` (``|P| ≤ 2^61``) and the total right
  shift is ``R = 31 − S − e_y − r``.
* Weights: ``Δ = (P + (u & (2^R − 1))) >> R`` for ``1 ≤ R ≤ 32`` (stochastic rounding,
  unbiased: ``E[Δ] = P / 2^R``); for ``R > 32`` first ``P ← RoundingDivideByPOT(P, R − 32)``
  then ``Δ = (P + u) >> 32``; for ``R ≤ 0`` an exact left shift saturated at ±256. The
  new weight is ``clamp(w + Δ, −127, 127)``. ``u`` is one xorshift32 draw per updated
  weight, taken output channel by output channel and row-major within a channel
  (for CONV_2D / FULLY_CONNECTED this is the row-major order of ``w[..., channels]``;
  for DEPTHWISE_CONV_2D the updated channels in subset order, each over its ``kh·kw`` taps).
* Biases: ``Δ = RoundingDivideByPOT(P, R)`` (half away from zero) for ``R ≥ 1``, an exact
  left shift saturated at ±2^32 for ``R ≤ 0``; ``b = saturate_int32(b + Δ)``.

``>>`` is an arithmetic (flooring) shift of int64 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import Op, OpKind
from tinytrain.sim.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier, rounding_divide_by_pot
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import per_tensor_qparams, tensor_at, unsupported
from tinytrain.sim.kernels.core_conv import channel_qparams
from tinytrain.train.kernels.prng import draws
from tinytrain.train.kernels.schedule import Q15_ONE

GRAD_UPDATE_BITS = 30  # |G'| ≤ 2^30 before the multiplier
W_MIN, W_MAX = -127, 127
W_SATURATE = 256  # |Δw| ≥ 254 already saturates any weight
B_SATURATE = 1 << 32  # |Δb| ≥ 2^32 already saturates any bias
MAX_SHIFT = 62  # |P| < 2^61: RoundingDivideByPOT by ≥ 62 gives 0


@dataclass(frozen=True, eq=False)
class UpdateParams:
    kind: OpKind
    w_mult: np.ndarray  # int64 [cout]: QuantizeMultiplier(s_in / s_w[o])
    w_shift: np.ndarray
    b_mult: np.ndarray  # int64 [cout]: QuantizeMultiplier(1 / (s_in · s_w[o]))
    b_shift: np.ndarray


def make_update(kind: OpKind, s_in: float, w_scales: Sequence[float]) -> UpdateParams:
    """Compile-time multipliers from the input scale and the per-channel weight scales."""
    wq = [quantize_multiplier(s_in / float(s)) for s in w_scales]
    bq = [quantize_multiplier(1.0 / (s_in * float(s))) for s in w_scales]
    arr = np.asarray
    return UpdateParams(
        kind,
        arr([q for q, _ in wq], dtype=np.int64),
        arr([s for _, s in wq], dtype=np.int64),
        arr([q for q, _ in bq], dtype=np.int64),
        arr([s for _, s in bq], dtype=np.int64),
    )


def prepare_update(op: Op, inputs: Inputs, outputs: Outputs) -> UpdateParams:
    """Update params of a CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op."""
    del outputs
    if op.kind not in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
        raise unsupported(op, "only linear layers have trainable parameters")
    x, w = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1)
    s_in, _ = per_tensor_qparams(op, x, "input")
    cout = w.shape[3] if op.kind is OpKind.DEPTHWISE_CONV_2D else w.shape[0]
    return make_update(op.kind, s_in, channel_qparams(op, w, cout))


def combine_multipliers(
    q: np.ndarray, shift: np.ndarray, lr: tuple[int, int], c_t: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel step multipliers ``(M, S)``: ``M · 2^(S − 31) ≈ (q · 2^(shift−31)) · lr · c_t / 2^15``.

    C twin: tt_update_combine in firmware_templates/runtime/src/tt_update.c.
    """
    q_lr, shift_lr = lr
    if not 0 <= q_lr < 2**31 or not 0 <= c_t <= Q15_ONE:
        raise UsageError(f"bad step factors: q_lr {q_lr} (needs [0, 2^31)), c_t {c_t} (needs [0, 32768])")
    m1 = (np.asarray(q, dtype=np.int64) * np.int64(q_lr) + np.int64(1 << 30)) >> np.int64(31)
    m = (m1 * np.int64(c_t) + np.int64(1 << 14)) >> np.int64(15)
    return m, np.asarray(shift, dtype=np.int64) + np.int64(shift_lr)


def _reduce_rows(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row (output channel) of int64 ``g`` reduced to ``|·| ≤ 2^30``: ``(g', r[rows])``."""
    top = np.abs(g).max(axis=1, initial=0)
    bits = ((top[:, None] >> np.arange(63, dtype=np.int64)) > 0).sum(axis=1)  # bit length of each max
    r = np.maximum(bits - GRAD_UPDATE_BITS, 0).astype(np.int64)
    return rounding_divide_by_pot(g, r[:, None]), r


def _saturating_left(p: np.ndarray, left: np.ndarray, limit: int) -> np.ndarray:
    """``p · 2^left`` (``left ≥ 0``) exact while below ``limit`` = 2^j, else ±limit."""
    lg = limit.bit_length() - 1
    sh = np.minimum(left, lg)
    lim = np.int64(limit) >> sh
    return np.clip(p, -lim, lim) << sh


def stochastic_shift(p: np.ndarray, r: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Stochastic rounding of ``p / 2^r`` with the uint32 draws ``u`` (see module doc).

    C twin: tt_update_stochastic_shift in firmware_templates/runtime/src/tt_update.c.
    """
    p = np.asarray(p, dtype=np.int64)
    r = np.broadcast_to(np.asarray(r, dtype=np.int64), p.shape)
    u64 = np.asarray(u).astype(np.int64)
    near_r = np.clip(r, 1, 32)
    near = (p + (u64 & ((np.int64(1) << near_r) - 1))) >> near_r
    far = (rounding_divide_by_pot(p, np.clip(r - 32, 0, MAX_SHIFT)) + u64) >> np.int64(32)
    left = _saturating_left(p, np.maximum(-r, 0), W_SATURATE)
    return np.where(r > 32, far, np.where(r >= 1, near, left))


def rounding_shift(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``p / 2^r`` rounded half away from zero (``r ≥ 1``), or a left shift saturated at ±2^32.

    C twin: tt_update_rounding_shift in firmware_templates/runtime/src/tt_update.c.
    """
    p = np.asarray(p, dtype=np.int64)
    r = np.broadcast_to(np.asarray(r, dtype=np.int64), p.shape)
    right = rounding_divide_by_pot(p, np.clip(r, 0, MAX_SHIFT))
    left = _saturating_left(p, np.maximum(-r, 0), B_SATURATE)
    return np.where(r >= 1, right, left)


def _channels(channels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(channels, dtype=np.int64).reshape(-1)
    if c.size and (c.min() < 0 or c.max() >= n or np.unique(c).size != c.size):
        raise UsageError(f"channel subset must hold distinct indices in [0, {n}), got {c.tolist()}")
    return c


def update_weights(
    p: UpdateParams,
    w: np.ndarray,
    grad: np.ndarray,
    e_y: int,
    channels: Sequence[int] | np.ndarray,
    lr: tuple[int, int],
    c_t: int,
    state: np.ndarray,
) -> np.ndarray:
    """New int8 weights: ``w`` (full, IR layout) with the slice ``w[..., channels]``
    (``w[:, channels]`` for fully connected) moved by the weight gradient ``grad`` (int64,
    layout of that slice, real gradient ``grad · s_in · 2^e_y``). Draws from ``state``.

    C twin: tt_update_weights_s8 in firmware_templates/runtime/src/tt_update.c (one row: tt_update_weight_row_s8).
    """
    dw = p.kind is OpKind.DEPTHWISE_CONV_2D
    c = _channels(channels, w.shape[-1])
    sub = w[..., c]
    if grad.shape != sub.shape:
        raise UsageError(f"weight gradient of shape {list(grad.shape)} for a slice of shape {list(sub.shape)}")
    if dw:  # one row per updated channel, its taps in row-major order
        rows_g = np.moveaxis(grad, -1, 0).reshape(c.size, -1)
        rows_w = np.moveaxis(sub, -1, 0).reshape(c.size, -1)
        q, s = p.w_mult[c], p.w_shift[c]
    else:
        rows_g = grad.reshape(grad.shape[0], -1)
        rows_w = sub.reshape(sub.shape[0], -1)
        q, s = p.w_mult, p.w_shift
    g2, r = _reduce_rows(np.asarray(rows_g, dtype=np.int64))
    m, shift = combine_multipliers(q, s, lr, c_t)
    prod = -g2 * m[:, None]
    total_r = (31 - shift - np.int64(e_y) - r)[:, None]
    u = draws(state, rows_g.size).reshape(rows_g.shape)
    new_rows = np.clip(rows_w.astype(np.int64) + stochastic_shift(prod, total_r, u), W_MIN, W_MAX).astype(np.int8)
    out = np.array(w, dtype=np.int8, copy=True)
    if dw:
        out[..., c] = np.moveaxis(new_rows.reshape(c.size, *sub.shape[:-1]), 0, -1)
    else:
        out[..., c] = new_rows.reshape(sub.shape)
    return out


def update_bias(
    p: UpdateParams, b: np.ndarray, grad: np.ndarray, e_y: int, lr: tuple[int, int], c_t: int
) -> np.ndarray:
    """New int32 biases from the bias gradient ``grad`` (int64 [cout], real ``grad · 2^e_y``).

    C twin: tt_update_bias_s32 in firmware_templates/runtime/src/tt_update.c.
    """
    g = np.asarray(grad, dtype=np.int64).reshape(-1, 1)
    if g.shape[0] != p.b_mult.size or b.size != p.b_mult.size:
        raise UsageError(f"bias of {b.size} and gradient of {g.shape[0]} values for {p.b_mult.size} channels")
    g2, r = _reduce_rows(g)
    m, shift = combine_multipliers(p.b_mult, p.b_shift, lr, c_t)
    delta = rounding_shift(-g2[:, 0] * m, 31 - shift - np.int64(e_y) - r)
    return np.clip(b.reshape(-1).astype(np.int64) + delta, INT32_MIN, INT32_MAX).astype(np.int32).reshape(b.shape)
