"""Fuzzing the model readers: every corrupt file is rejected with tinytrain's own error.

≥ 500 mutated or truncated .tflite files (byte flips, random overwrites, truncations,
inserted/deleted chunks, 32-bit field corruption) are loaded and, when they load, run
once in the simulator. Anything other than success or a ``TinytrainError`` fails the
test, and so does a case that takes longer than a few seconds (a hang).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tinytrain.errors import TinytrainError
from tinytrain.frontends.tflite import load_tflite
from tinytrain.sim.forward import Simulator

CASES = 520
CASE_SECONDS = 20  # a hang guard, generous for a loaded 2-core CI machine (a case takes well under 1 s)


class _Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: object) -> None:
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    buf = bytearray(data)
    how = int(rng.integers(0, 6))
    n = len(buf)
    if how == 0:  # truncate
        return bytes(buf[: int(rng.integers(0, n))])
    if how == 1:  # flip a few bits
        for _ in range(int(rng.integers(1, 8))):
            i = int(rng.integers(0, n))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif how == 2:  # overwrite a run with random bytes
        i = int(rng.integers(0, n))
        k = int(rng.integers(1, 32))
        buf[i : i + k] = rng.integers(0, 256, min(k, n - i), dtype=np.uint8).tobytes()
    elif how == 3:  # corrupt a 32-bit little-endian field (offsets, lengths, indices)
        i = int(rng.integers(0, max(n - 4, 1))) & ~3
        val = int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, n, n * 2, int(rng.integers(0, 2**32))]))
        buf[i : i + 4] = val.to_bytes(4, "little")
    elif how == 4:  # delete a chunk
        i = int(rng.integers(0, n))
        del buf[i : i + int(rng.integers(1, 64))]
    else:  # duplicate a chunk
        i = int(rng.integers(0, n))
        buf[i:i] = buf[i : i + int(rng.integers(1, 64))]
    return bytes(buf)


def _try(data: bytes) -> str:
    try:
        graph = load_tflite(data)
        sim = Simulator(graph)
        xs = []
        for name in graph.inputs:
            t = graph.tensor(name)
            shape = (1, *t.shape[1:])
            if t.dtype.is_float:
                xs.append(np.zeros(shape, np.float32))
            else:
                xs.append(np.zeros(shape, t.dtype.np))
        sim.run(xs)
        return "ran"
    except TinytrainError:
        return "rejected"


@pytest.mark.parametrize("seed_model", ["small_cnn", "small_cnn_float_io"])
def test_mutated_models_never_crash(seed_model: str, request: pytest.FixtureRequest) -> None:
    data = Path(request.getfixturevalue(seed_model)).read_bytes()
    rng = np.random.default_rng(1234 if seed_model == "small_cnn" else 4321)
    outcomes = {"ran": 0, "rejected": 0}
    failures = []
    for case in range(CASES // 2):
        mutated = _mutate(data, rng)
        try:
            with _deadline(CASE_SECONDS):
                outcomes[_try(mutated)] += 1
        except _Hang:
            failures.append(f"case {case}: hang (> {CASE_SECONDS}s)")
        except Exception as exc:  # anything not ours is a bug
            failures.append(f"case {case}: {type(exc).__name__}: {exc}")
    assert not failures, f"{len(failures)} of {CASES // 2} cases escaped:\n" + "\n".join(failures[:20])
    # The fuzzer must exercise both paths, or it tests nothing.
    assert outcomes["rejected"] > 20 and outcomes["ran"] > 0, outcomes


def test_truncations_are_rejected(small_cnn: Path) -> None:
    data = small_cnn.read_bytes()
    for cut in (0, 3, 7, 8, 16, 64, len(data) // 3, len(data) // 2, len(data) - 1):
        with pytest.raises(TinytrainError):
            load_tflite(data[:cut])


def test_corrupt_dilation_and_scale_are_rejected(small_cnn: Path) -> None:
    """Two corruptions the fuzzer found: a dilation of 2^24 (the padded input would be
    gigantic) and an output scale that needs a left shift above 31 (int64 overflow)."""
    from dataclasses import replace

    from tinytrain.ir.ops import OpKind

    graph = load_tflite(small_cnn.read_bytes())
    dw = next(i for i, op in enumerate(graph.ops) if op.kind is OpKind.DEPTHWISE_CONV_2D)
    op = graph.ops[dw]
    ops = list(graph.ops)
    ops[dw] = replace(op, attrs=replace(op.attrs, dilation_h=1 << 24))
    with pytest.raises(TinytrainError, match="dilated window"):
        Simulator(replace(graph, ops=tuple(ops)))
    mean = next(op for op in graph.ops if op.kind is OpKind.MEAN)
    out = graph.tensor(mean.outputs[0])
    assert out.quant is not None
    tiny = replace(out, quant=replace(out.quant, scale=(out.quant.scale[0] * 2.0**-40,)))
    tensors = tuple(tiny if t.name == out.name else t for t in graph.tensors)
    with pytest.raises(TinytrainError, match="shift"):
        Simulator(replace(graph, tensors=tensors))
