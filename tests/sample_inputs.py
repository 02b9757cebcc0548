"""Random test inputs for a graph: full int8 range, or the float range its QUANTIZE covers."""

from __future__ import annotations

import numpy as np

from tinytrain.ir import Graph, OpKind


def float_range(graph: Graph, name: str) -> tuple[float, float]:
    """The real range a float input is quantized to (from the QUANTIZE that reads it)."""
    for op in graph.ops:
        if op.kind is OpKind.QUANTIZE and op.inputs[0] == name:
            scale, zp = graph.tensor(op.outputs[0]).qparams
            return scale * (-128 - zp), scale * (127 - zp)
    return -1.0, 1.0


def random_inputs(graph: Graph, n: int, seed: int) -> list[np.ndarray]:
    """n samples per graph input; the first two int8 samples are all -128 and all 127."""
    rng = np.random.default_rng(seed)
    xs = []
    for name in graph.inputs:
        t = graph.tensor(name)
        shape = (n, *t.shape[1:])
        if t.dtype.is_float:
            lo, hi = float_range(graph, name)
            span = hi - lo
            xs.append(rng.uniform(lo - 0.05 * span, hi + 0.05 * span, shape).astype(np.float32))
        else:
            info = np.iinfo(t.dtype.np)
            x = rng.integers(info.min, info.max + 1, shape, dtype=t.dtype.np)
            if n >= 3:
                x[0] = info.min
                x[1] = info.max
            xs.append(x)
    return xs
