"""The frozen prefix's outputs, computed once per distinct first live op and reused.

A short fine-tuning run only needs, per sample, the tensors at the boundary of its
program's live part (its ``first_live_op``). Those are computed once per boundary and
kept for the whole search: the earliest boundary from the native samples (split into
chunks over the executor's workers), every later one from the nearest earlier boundary
already computed (only the ops in between run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from tinytrain.search.executors import Executor
from tinytrain.search.tasks import Features, compute_features

CHUNK = 128  # samples per feature task


@dataclass
class FeatureStore:
    """Boundary features of one sample set (``images``: native uint8 samples)."""

    model: bytes
    images: np.ndarray
    native_shape: tuple[int, ...]
    _by_op: dict[int, Features] = field(default_factory=dict, repr=False)

    def get(self, op: int) -> Features:
        return self._by_op[op]

    def has(self, op: int) -> bool:
        return op in self._by_op

    def ensure(self, ops: Iterable[int], executor: Executor, progress: Callable[[int], None] | None = None) -> None:
        """Computes the boundaries ``ops`` not computed yet, in ascending order."""
        model = None
        for op in sorted(set(ops)):
            if op in self._by_op:
                continue
            if model is None:
                model = executor.share(self.model)
            start = max((o for o in self._by_op if o < op), default=0)
            src: Features | np.ndarray = self._by_op[start] if start else self.images
            n = len(self.images)
            calls = []
            for lo in range(0, n, CHUNK):
                chunk: Features | np.ndarray
                if isinstance(src, np.ndarray):
                    chunk = src[lo : lo + CHUNK]
                else:
                    chunk = {k: v[lo : lo + CHUNK] for k, v in src.items()}
                calls.append((model, start, op, chunk, self.native_shape))
            parts: dict[int, Features] = {}
            for i, out in executor.run(compute_features, calls):
                parts[i] = out
                if progress is not None:
                    progress(1)
            names = list(parts[0])
            self._by_op[op] = {k: np.concatenate([parts[i][k] for i in range(len(calls))], axis=0) for k in names}

    def tasks_for(self, ops: Iterable[int]) -> int:
        """Feature tasks :meth:`ensure` would run for ``ops`` (for a progress bar)."""
        missing = {o for o in ops if o not in self._by_op}
        return len(missing) * -(-len(self.images) // CHUNK)
