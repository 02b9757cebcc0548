"""TOKEN_SELECT: Block Selective Reprogramming's token dropping (docs/schemes.md, "Block
Selective Reprogramming"; the op is inserted by tinytrain/passes/token_drop.py).

Inputs ``x`` [1, T, D] (int8, a residual stream, T ≤ 256) and ``p`` [1, H, T, T] (int8, the
attention probabilities of the block that wrote ``x``, axes: batch, head, query, key; a
rank-3 [H, T, T] is read as H heads). Outputs ``x'`` [1, 1 + K, D] (same type and
quantization as ``x``) and ``idx`` [1, K] (uint8: one byte per kept token, the plan's saved
copy of it is K bytes), with K = ``attrs.kept``:

* the score of token j is the int32 sum over the heads of the class-token row,
  ``s_j = Σ_h (p[h, 0, j] − z_p)`` (raw int8 codes minus p's zero point: a non-negative
  integer, exactly the real sum divided by p's scale);
* ``idx`` holds the K patch tokens (j ≥ 1) of the largest scores, ties to the lower index,
  in ascending order (their original order);
* ``x'`` is row 0 of ``x`` (the class token, always kept) followed by the rows ``idx``.

Pure data movement after an integer selection: no rounding anywhere, so the C twin gives
the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Op, OpKind, TokenSelectAttrs
from tinytrain.sim.kernel_spec import Inputs, KernelSpec, Outputs
from tinytrain.sim.kernels.core_common import (
    check_arity,
    check_dtype,
    check_shape,
    graph_error,
    per_tensor_qparams,
    tensor_at,
    unsupported,
)

MAX_TOKENS = 256  # the kept positions are uint8


@dataclass(frozen=True)
class TokenSelectParams:
    tokens: int  # T: tokens of x (the class token first)
    dim: int  # D
    heads: int  # H
    kept: int  # K: patch tokens kept
    p_zero_point: int


def prepare_token_select(op: Op, inputs: Inputs, outputs: Outputs) -> TokenSelectParams:
    check_arity(op, inputs, outputs, (2,), n_outputs=2)
    if not isinstance(op.attrs, TokenSelectAttrs):
        raise graph_error(op, "attributes must be TokenSelectAttrs")
    x, p = tensor_at(op, inputs, 0), tensor_at(op, inputs, 1)
    y, idx = outputs
    check_dtype(op, x, (DType.INT8,), "input")
    check_dtype(op, p, (DType.INT8,), "attention input")
    if len(x.shape) != 3 or x.shape[0] != 1:
        raise graph_error(op, f"input {x.name!r} must have shape [1, T, D], has {list(x.shape)}")
    _, t, d = x.shape
    if t < 2:
        raise graph_error(op, f"input {x.name!r} has {t} token(s): nothing to select after the class token")
    if t > MAX_TOKENS:
        raise unsupported(op, f"{t} tokens: at most {MAX_TOKENS} (the kept positions are uint8)")
    if len(p.shape) == 4 and p.shape[0] == 1:
        heads = p.shape[1]
    elif len(p.shape) == 3:
        heads = p.shape[0]
    else:
        raise graph_error(
            op, f"attention input {p.name!r} must have shape [1, H, T, T] or [H, T, T], has {list(p.shape)}"
        )
    if tuple(p.shape[-2:]) != (t, t) or heads < 1:
        raise graph_error(op, f"attention input {p.name!r} of shape {list(p.shape)} does not match {t} tokens")
    _, zp = per_tensor_qparams(op, p, "attention input")
    k = op.attrs.kept
    if not 1 <= k <= t - 1:
        raise graph_error(op, f"keeps {k} patch tokens of {t - 1}")
    if y.dtype is not x.dtype or y.quant != x.quant:
        raise unsupported(op, "the output must have the input's type and quantization (rows are copied)")
    check_shape(op, y, (1, 1 + k, d), "output")
    check_dtype(op, idx, (DType.UINT8,), "index output")
    check_shape(op, idx, (1, k), "index output")
    return TokenSelectParams(t, d, heads, k, zp)


def class_token_scores(p: np.ndarray, zero_point: int, samples: int, tokens: int) -> np.ndarray:
    """``s[n, j] = Σ_h (p[n, h, 0, j] − z_p)`` as int32 [N, T] (``p``: N samples' probabilities)."""
    rows = np.asarray(p).reshape(samples, -1, tokens, tokens)[:, :, 0, :].astype(np.int32)
    return (rows - np.int32(zero_point)).sum(axis=1, dtype=np.int32)


def select_tokens(scores: np.ndarray, kept: int) -> np.ndarray:
    """The ``kept`` patch tokens (1..T−1) of the largest scores per row, ties to the lower
    index, ascending: uint8 [N, kept] (T ≤ 256)."""
    patch = -scores[:, 1:].astype(np.int64)
    best = np.argsort(patch, axis=1, kind="stable")[:, :kept] + 1  # stable: equal scores keep index order
    return np.sort(best, axis=1).astype(np.uint8)


def run_token_select(params: TokenSelectParams, args: Sequence[np.ndarray | None]) -> tuple[np.ndarray, ...]:
    x, p = args[0], args[1]
    assert x is not None and p is not None
    n = x.shape[0]
    idx = select_tokens(class_token_scores(p, params.p_zero_point, n, params.tokens), params.kept)
    rows = np.concatenate([np.zeros((n, 1), dtype=np.intp), idx.astype(np.intp)], axis=1)
    y = np.take_along_axis(x, rows[:, :, None], axis=1)
    return np.ascontiguousarray(y), idx


def token_select_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    """N stacked samples: p must carry the batch on axis 0 ([1, H, T, T], or one head [1, T, T])."""
    p = inputs[1] if len(inputs) > 1 else None
    return p is not None and p.shape[0] == 1


TOKEN_SELECT = KernelSpec(prepare_token_select, run_token_select, token_select_batch_safe)

KERNELS: MappingProxyType[OpKind, KernelSpec] = MappingProxyType({OpKind.TOKEN_SELECT: TOKEN_SELECT})
