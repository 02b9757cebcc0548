"""Softmax cross-entropy gradient on int8 logits (``docs/numerics.md``, "Loss").

The probabilities are TFLite Micro's int8 → int16 SOFTMAX of the logits (the forward
simulator's kernel, prepared on a hand-built op whose output has the quantization
TFLite Micro requires: scale 1/65536, zero point −32768), so ``p_i = P_i / 65536`` with
``P_i = p_q_i + 32768``. The gradient with respect to the real logits is
``p − onehot(label)``: ``acc_i = P_i − 65536·[i = label]`` at exponent −16, normalized.

The logits' int8 saturation is crossed one-sidedly: a logit at +127 keeps its gradient
only when the gradient pushes it down (``acc_i > 0``), one at −128 only when it pushes it
up (``acc_i < 0``); every other logit passes straight through. Without a mask a saturated
*true* logit keeps being pushed up with no effect on the forward, inflating the features
until every logit saturates; with a two-sided mask a saturated *wrong* logit could never be
pushed down again. Both made late training collapse (docs/numerics.md, "Loss").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op, OpKind, SoftmaxAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.kernels.nl_softmax import SoftmaxParams, prepare_softmax, run_softmax
from tinytrain.train.kernels.gradient import Grad, normalize

PROB_BITS = 16  # probabilities are integers in units of 2^-16
PROB_ZERO_POINT = -32768
LOGIT_MIN, LOGIT_MAX = -128, 127  # int8 saturation of the logits


@dataclass(frozen=True, eq=False)
class SoftmaxCEParams:
    softmax: SoftmaxParams
    classes: int


def prepare_softmax_ce(logits: Tensor) -> SoftmaxCEParams:
    """Compile-time part: the int8 → int16 softmax of ``logits`` (an int8 per-tensor
    quantized IR tensor whose last axis holds the classes)."""
    if logits.dtype is not DType.INT8 or not logits.shape or logits.shape[-1] < 1:
        raise UsageError(f"logits {logits.name!r} must be a non-empty int8 tensor, got {logits.dtype.value}")
    x = Tensor(logits.name, (1, logits.shape[-1]), DType.INT8, TensorKind.ACTIVATION, logits.quant)
    probs = Tensor(
        f"{logits.name}/probabilities",
        x.shape,
        DType.INT16,
        TensorKind.ACTIVATION,
        Quantization.per_tensor(1.0 / 65536, PROB_ZERO_POINT),
    )
    op = Op(OpKind.SOFTMAX, (x.name,), (probs.name,), SoftmaxAttrs(1.0), -1)
    return SoftmaxCEParams(prepare_softmax(op, (x,), (probs,)), logits.shape[-1])


def softmax_ce_grad(p: SoftmaxCEParams, logits_q: np.ndarray, label: int) -> tuple[Grad, int]:
    """Gradient of ``−ln softmax(logits)[label]`` w.r.t. the real logits, and the
    integer probability of the label ``P_label ∈ [0, 65535]`` (``p = P / 65536``; the host
    reports the loss ``−ln p``). The gradient has the shape of ``logits_q``.

    C twin: tt_softmax_ce_grad_s8 in firmware_templates/runtime/src/tt_loss.c."""
    if not 0 <= label < p.classes:
        raise UsageError(f"label {label} out of range for {p.classes} classes")
    x = np.asarray(logits_q)
    if x.dtype != np.int8 or x.size != p.classes:
        raise UsageError(f"expected {p.classes} int8 logits, got {x.dtype}[{x.size}]")
    (probs,) = run_softmax(p.softmax, (x.reshape(1, p.classes),))
    acc = probs.reshape(-1).astype(np.int64) - PROB_ZERO_POINT
    p_label = int(acc[label])
    acc[label] -= 1 << PROB_BITS
    flat = x.reshape(-1)
    acc[((flat == LOGIT_MAX) & (acc < 0)) | ((flat == LOGIT_MIN) & (acc > 0))] = 0
    return normalize(acc.reshape(x.shape), -PROB_BITS), p_label
