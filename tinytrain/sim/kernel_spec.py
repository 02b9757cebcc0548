"""The contract between the forward simulator and its kernels.

A kernel is a pair of functions:

* ``prepare(op, inputs, outputs) -> params``: validates the op against its IR tensors
  (raising :class:`tinytrain.errors.GraphError` or
  :class:`tinytrain.errors.UnsupportedOpError` with ``op.describe()`` in the message)
  and precomputes everything that does not depend on the data (fixed-point
  multipliers, shifts, clamp bounds, index maps, ...) into a frozen dataclass.
  It runs once per op, at simulator construction.
* ``run(params, args) -> outputs``: computes the outputs from the input arrays.
  ``args[i]`` is the array of input ``i`` (the constant's data for constant tensors,
  ``None`` for an absent optional input). Arrays carry the batch on axis 0: the
  runner may pass N samples at once where the IR shape says 1. A kernel must then
  produce, for every sample, exactly the bytes it would produce for that sample alone.

``batch_safe(op, inputs, outputs)`` says whether the op can be run on N stacked
samples that way (e.g. a RESHAPE that folds the batch axis cannot). When any op of a
graph is not batch safe the runner feeds samples one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.ir.ops import Op
from tinytrain.ir.tensor import Tensor

Inputs = tuple[Tensor | None, ...]
Outputs = tuple[Tensor, ...]
PrepareFn = Callable[[Op, Inputs, Outputs], Any]
RunFn = Callable[[Any, Sequence[np.ndarray | None]], tuple[np.ndarray, ...]]
BatchSafeFn = Callable[[Op, Inputs, Outputs], bool]


def always_batch_safe(op: Op, inputs: Inputs, outputs: Outputs) -> bool:
    del op, inputs, outputs
    return True


@dataclass(frozen=True)
class KernelSpec:
    prepare: PrepareFn
    run: RunFn
    batch_safe: BatchSafeFn = always_batch_safe
