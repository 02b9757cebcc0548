"""DGSU selection (docs/schemes.md, "DGSU"): which weight rows (and which layers) update
this step. Integer only; the C twins are in firmware_templates/runtime/src/tt_select.c.

**Rows.** Of ``n`` candidates with int64 scores and uint16 ages, ``k`` are chosen:
first ``k − explore`` by the largest key (``|score|`` with ``magnitude``, else ``score``;
ties: the larger age, then the lower index), then ``explore`` among the others by the
largest age (ties: the lower index). Afterwards the chosen ages become 0, the others
``min(age + 1, 65535)``. ``sel`` lists the chosen indices in ascending order (the order
the row loops, and so the PRNG draws, run in). With ``k == n`` every index is chosen and
ages are optional.

*Traversal.* With ``explore ≥ 1`` every index is chosen at least once in any
``⌈n / explore⌉`` consecutive steps (while ``⌈n / explore⌉ ≤ 65536``, so no age saturates):
order the indices by (age desc, index asc); the set S of those ranked above an index r
only loses members while r waits (a chosen index drops to age 0, below r; indices that
rank below r never overtake it, their age difference being fixed), and every step r is
not chosen, the ``explore`` age picks all come from S. After ``j`` such steps
``|S| ≤ n − 1 − j · explore``, so by ``j = ⌊(n − 1) / explore⌋`` fewer than ``explore``
indices rank above r and r is picked.

**Layer signal.** A layer's "how unusual is its gradient now": ``L = log2(Σ_o |B[o]| · 2^e)``
in Q8 (integer part from the bit length, 8 fraction bits from the bits below the leading
one, linear), minus ``ema``, the running mean of L (Q8, ``ema += (L − ema) >> 3``,
arithmetic shift; the first value sets it). A zero sum gives ``L = −2^24``; L is clamped
to ``±2^24``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.kernels.update import UpdateParams, update_weights

AGE_MAX = 0xFFFF
EMA_UNSET = -(1 << 31)  # the running mean before the layer's first signal
LOG_LIMIT = 1 << 24
EMA_SHIFT = 3


def select_rows(
    score: np.ndarray, age: np.ndarray | None, k: int, explore: int, magnitude: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(sel uint16[k] ascending, chosen uint8[n], new age uint16[n] | None)``.

    C twin: tt_select_rows in firmware_templates/runtime/src/tt_select.c."""
    s = np.asarray(score, dtype=np.int64).reshape(-1)
    n = s.size
    if not 0 <= explore <= k <= n:
        raise UsageError(f"selection of k={k} with explore={explore} out of {n}: needs 0 ≤ explore ≤ k ≤ n")
    if age is None and k != n:
        raise UsageError("the selection needs ages unless every index is chosen")
    chosen = np.zeros(n, dtype=np.uint8)
    if k == n:
        chosen[:] = 1
    else:
        assert age is not None
        a = np.asarray(age, dtype=np.int64).reshape(-1)
        key = np.abs(s) if magnitude else s
        idx = np.arange(n)
        by_key = np.lexsort((idx, -a, -key))[: k - explore]  # last key is primary
        chosen[by_key] = 1
        rest = idx[chosen == 0]
        by_age = rest[np.lexsort((rest, -a[rest]))][:explore]
        chosen[by_age] = 1
    sel = np.flatnonzero(chosen).astype(np.uint16)
    new_age = None
    if age is not None:
        a16 = np.asarray(age, dtype=np.int64).reshape(-1)
        new_age = np.where(chosen == 1, 0, np.minimum(a16 + 1, AGE_MAX)).astype(np.uint16)
    return sel, chosen, new_age


def log2_q8(total: int, e: int) -> int:
    """``log2(total · 2^e)`` in Q8 (see the module doc); ``total ≥ 0``.

    C twin: tt_select_log2_q8 in firmware_templates/runtime/src/tt_select.c."""
    if total < 0:
        raise UsageError(f"log2 of a negative sum {total}")
    if total == 0:
        return -LOG_LIMIT
    bits = int(total).bit_length()
    frac = (total >> (bits - 9)) & 0xFF if bits >= 9 else (total << (9 - bits)) & 0xFF
    val = 256 * (bits - 1 + int(e)) + frac
    return max(-LOG_LIMIT, min(LOG_LIMIT, val))


def layer_signal(bias_grad: np.ndarray, e: int, ema: int) -> tuple[int, int]:
    """``(score, new ema)`` of one layer from its int64 bias gradient (exponent ``e``).
    ``Σ |B|`` is summed in uint64 (legal: ``Σ |B| < 2^64``).

    C twin: tt_select_layer_signal in firmware_templates/runtime/src/tt_select.c."""
    total = int(np.abs(np.asarray(bias_grad, dtype=np.int64)).astype(np.uint64).sum(dtype=np.uint64))
    lq = log2_q8(total, e)
    if ema == EMA_UNSET:
        return 0, lq
    d = lq - int(ema)
    return d, int(ema) + (d >> EMA_SHIFT)


def update_selected_rows(
    p: UpdateParams,
    w: np.ndarray,
    grad: np.ndarray,
    e_y: int,
    sel: np.ndarray,
    lr: tuple[int, int],
    c_t: int,
    state: np.ndarray,
) -> np.ndarray:
    """New int8 weights (full tensor, every input channel trained) with only the rows
    ``sel`` (output channels; depthwise: channels) moved by their gradient rows, exactly as
    ``update_weights`` moves each of them; the PRNG draws are those rows' only, in the order
    of ``sel`` (ascending). ``grad``: the whole weight gradient (int64, layout of ``w``).

    C twin: tt_update_weight_row_s8 for row = sel[0], sel[1], … (the generated row loop,
    firmware_templates/runtime/src/tt_update_slice.c)."""
    rows = np.asarray(sel, dtype=np.int64).reshape(-1)
    if rows.size == 0:
        return w
    if p.kind is OpKind.DEPTHWISE_CONV_2D:
        return update_weights(p, w, np.ascontiguousarray(grad[..., rows]), e_y, rows, lr, c_t, state)
    sub = replace(p, w_mult=p.w_mult[rows], w_shift=p.w_shift[rows], b_mult=p.b_mult[rows], b_shift=p.b_shift[rows])
    everything = np.arange(w.shape[-1])
    moved = update_weights(sub, w[rows], np.ascontiguousarray(grad[rows]), e_y, everything, lr, c_t, state)
    out = np.array(w, dtype=np.int8, copy=True)
    out[rows] = moved
    return out
