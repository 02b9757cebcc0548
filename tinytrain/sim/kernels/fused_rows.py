"""Row geometry of a padded feature map, for the row-streamed fused kernels.

A window op (CONV_2D, DEPTHWISE_CONV_2D) reads a padded version of its source: first
an explicit ``PAD`` op, if any, then the op's own implicit padding (SAME), each level
with its own fill value (the PAD's output zero point, the conv's input zero point).
The row-streamed kernels never build that padded tensor; they materialize one padded
row at a time. :class:`PaddedRows` says, for each row of the fully padded map, whether
it is a row of the source (and which) or a padding row (and its bytes), and where the
source columns sit inside a padded row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_REAL = 1 << 10  # marks a source column in the column template (outside the int8 range)


@dataclass(frozen=True)
class PadLevel:
    """One padding level: rows/columns added on each side and their fill value."""

    top: int
    bottom: int
    left: int
    right: int
    value: int


@dataclass(frozen=True, eq=False)
class PaddedRows:
    """A ``height × width`` source padded by ``levels`` (innermost first).

    ``source[r]`` is the source row shown by padded row ``r``, or ``-1`` for a padding
    row whose bytes are ``pad_rows[r]`` (per column; the same for every channel).
    A source row sits in columns ``col0 … col0 + width − 1``; the other columns hold
    ``edge[c]``.
    """

    height: int
    width: int
    padded_height: int
    padded_width: int
    col0: int
    source: tuple[int, ...]
    pad_rows: tuple[np.ndarray | None, ...]  # (padded_width,) int8 per padding row
    edge: np.ndarray  # (padded_width,) int8, source columns hold 0

    def fill(self, dst: np.ndarray, r: int, src_row: np.ndarray | None) -> None:
        """Writes padded row ``r`` into ``dst`` (N, padded_width, C); ``src_row`` (N, width, C)
        is the source row ``source[r]`` (ignored for a padding row)."""
        pad = self.pad_rows[r]
        if pad is not None:
            dst[...] = pad[None, :, None]
            return
        assert src_row is not None
        c0, c1 = self.col0, self.col0 + self.width
        if c0:
            dst[:, :c0] = self.edge[None, :c0, None]
        if c1 < self.padded_width:
            dst[:, c1:] = self.edge[None, c1:, None]
        dst[:, c0:c1] = src_row


def padded_rows(height: int, width: int, levels: Sequence[PadLevel]) -> PaddedRows:
    source = np.arange(height, dtype=np.int64)
    cols = np.full(width, _REAL, dtype=np.int64)
    # For each padded row: -1 - (index of its template); templates grow with the outer levels.
    templates: list[np.ndarray] = []
    for lv in levels:
        templates = [np.pad(t, (lv.left, lv.right), constant_values=lv.value) for t in templates]
        cols = np.pad(cols, (lv.left, lv.right), constant_values=lv.value)
        templates.append(np.full(cols.size, lv.value, dtype=np.int64))
        tag = -len(templates)
        source = np.concatenate([np.full(lv.top, tag), source, np.full(lv.bottom, tag)])
    real = np.flatnonzero(cols == _REAL)
    col0 = int(real[0]) if real.size else 0
    pad_rows = tuple(None if s >= 0 else templates[-1 - int(s)].astype(np.int8) for s in source)
    return PaddedRows(
        height=height,
        width=width,
        padded_height=int(source.size),
        padded_width=int(cols.size),
        col0=col0,
        source=tuple(int(s) if s >= 0 else -1 for s in source),
        pad_rows=pad_rows,
        edge=np.where(cols == _REAL, 0, cols).astype(np.int8),
    )
