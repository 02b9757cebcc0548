"""Shared by the backend tests: two runs of one training program are byte-identical."""

from __future__ import annotations

import numpy as np

from codegen.backends import RunResult


def assert_same_run(a: RunResult, b: RunResult, steps: int | None = None) -> None:
    """Per-step results, test logits and every trained tensor (names, dtypes, bytes) equal;
    with ``steps``, both runs also have that many steps."""
    assert a.steps == b.steps
    if steps is not None:
        assert len(a.steps) == steps
    assert np.array_equal(a.test_logits, b.test_logits)
    assert sorted(a.tensors) == sorted(b.tensors)
    for name, t in a.tensors.items():
        assert t.dtype == b.tensors[name].dtype and np.array_equal(t, b.tensors[name]), name
