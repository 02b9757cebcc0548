"""TFLite Micro reference interpreter as an oracle (tests and benchmarks only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def run_tflm(model: bytes, inputs: Sequence[np.ndarray], arena_size: int | None = None) -> list[np.ndarray]:
    """Runs ``model`` once per sample in TFLite Micro and returns every output stacked.

    ``inputs[i]`` holds the samples of model input ``i`` stacked on axis 0 (each sample
    with the model's batch dimension of 1).
    """
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(bytes(model), arena_size=arena_size or max(len(model) * 10, 4 << 20))
    n = inputs[0].shape[0]
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    k = schema.Model.GetRootAs(bytes(model), 0).Subgraphs(0).OutputsLength()
    outs: list[list[np.ndarray]] = [[] for _ in range(k)]
    for s in range(n):
        for i, x in enumerate(inputs):
            interp.set_input(np.ascontiguousarray(x[s : s + 1]), i)
        interp.invoke()
        for j in range(k):
            outs[j].append(np.array(interp.get_output(j), copy=True))
    return [np.concatenate(o, axis=0) for o in outs]
