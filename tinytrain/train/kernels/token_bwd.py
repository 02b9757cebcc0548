"""Backward of TOKEN_SELECT (BSR's token dropping, tinytrain/sim/kernels/token_select.py).

The forward copies rows: ``x'[0] = x[0]`` and ``x'[1 + i] = x[idx[i]]``. Its input gradient
scatters the output gradient back into those rows, zeros in the dropped ones, with the same
exponent (exact: no arithmetic). The attention input ``p`` gets no gradient: it only picks
which rows are copied, a discrete choice whose derivative is zero almost everywhere
(docs/schemes.md, "Block Selective Reprogramming"). The backward reads the kept indices
(output 1, saved whole by the forward: ``TOKEN_SELECT_SAVES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import Op
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.token_select import prepare_token_select
from tinytrain.train.kernels.gradient import Grad

TOKEN_SELECT_SAVES: tuple[str, ...] = ("out1",)


@dataclass(frozen=True, eq=False)
class TokenSelectBwdParams:
    in_shape: tuple[int, int, int]  # x: [1, T, D]
    kept: int  # K

    @property
    def grad_inputs(self) -> tuple[int, ...]:
        """Only ``x`` (input 0) gets a gradient."""
        return (0,)


def prepare_token_select_backward(op: Op, inputs: Inputs, outputs: Outputs) -> TokenSelectBwdParams:
    """The forward's validation (shapes, int8 tensors, 1 ≤ K ≤ T − 1)."""
    fp = prepare_token_select(op, inputs, outputs)
    return TokenSelectBwdParams((1, fp.tokens, fp.dim), fp.kept)


def token_select_input_grads(
    p: TokenSelectBwdParams, g_y: Grad, saved: Mapping[str, np.ndarray], wanted: frozenset[int]
) -> dict[int, Grad]:
    """``{0: zeros [1, T, D] with g_y's row 0 at row 0 and row 1 + i at row idx[i]}`` (same
    exponent); ``saved["out1"]``: the forward's kept indices [1, K].

    C twin (next session): tt_token_select_bwd_s16."""
    if 0 not in wanted:
        return {}
    _, t, d = p.in_shape
    if g_y.shape != (1, 1 + p.kept, d):
        raise UsageError(f"TOKEN_SELECT backward: gradient of shape {list(g_y.shape)}, expected {[1, 1 + p.kept, d]}")
    idx = saved.get("out1")
    if idx is None:
        raise UsageError("TOKEN_SELECT backward: the kept token indices (output 1) were not saved")
    rows = np.asarray(idx).reshape(-1).astype(np.intp)
    if rows.shape != (p.kept,) or rows.min() < 1 or rows.max() >= t:
        raise UsageError(f"TOKEN_SELECT backward: bad kept indices {rows.tolist()} for {t} tokens")
    g = np.zeros(p.in_shape, dtype=np.int16)
    g[0, 0] = g_y.g[0, 0]
    g[0, rows] = g_y.g[0, 1:]
    return {0: Grad(g, g_y.e)}
