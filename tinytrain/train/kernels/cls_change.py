"""ALaST's importance signal (docs/schemes.md, "ALaST"): how much each candidate transformer
block changes the class token in this step's forward pass. Integer only; the C twin is
``tt_select_cls_change`` in firmware_templates/runtime/src/tt_select.c.

``rows`` holds the class-token row (token 0) of every boundary of the residual stream the
candidate blocks read or write (int8 ``[n_rows, dim]``, copied in the forward right after
the op that makes the tensor). Block ``j`` reads row ``src[j]`` and writes row ``dst[j]``.
To compare tensors of different scales, row ``r`` is brought to one common scale by an
integer multiplier ``mult[r] = round(2^15 · s_r / max_r s_r)`` (≤ 2^15, fixed at compile
time): ``score[j] = Σ_d |(q_dst[d] − zp_dst) · mult_dst − (q_src[d] − zp_src) · mult_src|``
in int64 (each term < 2^25, so any dim below 2^38 is exact).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tinytrain.errors import UsageError

MULT_ONE = 1 << 15


def common_multipliers(scales: Sequence[float]) -> tuple[int, ...]:
    """``round(2^15 · s / max(scales))`` per scale (at least 1)."""
    top = max(scales)
    if top <= 0.0:
        raise UsageError(f"class-token signal: non-positive scales {list(scales)}")
    return tuple(max(1, round(MULT_ONE * s / top)) for s in scales)


def cls_change(
    rows: np.ndarray,
    zero_points: Sequence[int],
    mults: Sequence[int],
    src: Sequence[int],
    dst: Sequence[int],
) -> np.ndarray:
    """``score`` int64 ``[len(src)]`` (see the module doc).

    C twin: tt_select_cls_change in firmware_templates/runtime/src/tt_select.c."""
    q = np.asarray(rows, dtype=np.int64)
    if q.ndim != 2 or len(zero_points) != q.shape[0] or len(mults) != q.shape[0] or len(src) != len(dst):
        raise UsageError(
            f"class-token signal: rows {q.shape}, {len(zero_points)} zero points, {len(mults)} multipliers, "
            f"{len(src)} sources and {len(dst)} destinations do not match"
        )
    real = (q - np.asarray(zero_points, np.int64)[:, None]) * np.asarray(mults, np.int64)[:, None]
    return np.array([int(np.abs(real[b] - real[a]).sum()) for a, b in zip(src, dst, strict=True)], dtype=np.int64)
