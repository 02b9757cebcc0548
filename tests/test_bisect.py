"""``codegen/bisect.py`` on a ``tte`` program (residual gradient sums, fused backward steps):
the traced C agrees with ``Executor.step`` call by call over several steps, and a one-bit
fault in a summed residual gradient is found at the call that wrote it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from codegen.bisect import CHECKED_PREFIXES, bisect, trace_calls
from codegen.lower import lower
from tinytrain.cli import main
from tinytrain.datasets import fashion_mnist
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import Compiled, load_artifact
from tinytrain.train.executor import Executor
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.schedule import Schedule, lr_multiplier, schedule_factor
from tinytrain.train.loop import Trainer

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")

SHAPE = (28, 28)


@pytest.fixture(scope="module")
def tte(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    out = tmp_path_factory.mktemp("bisect") / "tte"
    args = [str(shipped(MBV2)), "--scheme", "tte", "--classes", "10", "--sample-shape", "28x28"]
    assert main(["compile", *args, "-o", str(out), "--json"]) == 0
    return load_artifact(out)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    x, y = fashion_mnist("train")
    return x[:3], y[:3].astype(np.int64)


def test_tte_residual_sums_agree(tte: Compiled, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    calls = trace_calls(lower(tte, SHAPE))
    sums = [tc for tc in calls if tc.call.kernel == "tt_add_grads_s16"]
    assert sums and all(any(b.startswith("grad-sum:") for b in tc.buffers) for tc in sums)
    # the divergence the former replica reported showed from the second step on
    rep = bisect(tte, *data, tmp_path)
    assert rep.divergence is None, rep.text()
    assert rep.steps == 3 and rep.comparisons > 3 * len({b for tc in calls for b in tc.buffers}) // 2
    # every checked buffer the C references had a simulator value
    assert not [b for b in rep.unchecked if b.startswith(CHECKED_PREFIXES)]


def test_fault_in_a_gradient_sum_is_found(tte: Compiled, data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    calls = trace_calls(lower(tte, SHAPE))
    tc = next(tc for tc in calls if tc.call.kernel == "tt_add_grads_s16")
    buf = tc.buffers[0]
    assert buf.startswith("grad:")
    x, y = data
    rep = bisect(tte, x[:1], y[:1], tmp_path, fault=(tc.index, tte.plan.offset(buf) + 4))
    d = rep.divergence
    assert d is not None and (d.step, d.call, d.buffer, d.offset) == (0, tc.index, buf, 4)
    assert d.kernel == "tt_add_grads_s16" and d.c_value ^ d.sim_value == 1


def test_observer_sees_every_kind_and_changes_nothing(tte: Compiled, data: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = data
    trainer = Trainer(tte.program, SHAPE)
    feats = trainer.features(x[:2])
    seen: dict[str, int] = {}

    def observer(kind: str, i: int, tensor: str, value: np.ndarray | Grad) -> None:
        assert isinstance(value, Grad) == kind.startswith("grad")
        seen[kind] = seen.get(kind, 0) + 1

    plain, watched = Executor(tte.program, 0), Executor(tte.program, 0, observer=observer)
    lr = lr_multiplier(0.05)
    for k in range(2):
        live = {name: f[k : k + 1] for name, f in zip(trainer.boundary, feats, strict=True)}
        c_t = schedule_factor(Schedule.CONSTANT, k, 2)
        assert plain.step(live, int(y[k]), lr, c_t) == watched.step(live, int(y[k]), lr, c_t)
    assert set(seen) == {"act", "mask", "saved", "grad", "grad-sum", "train"}
    a, b = plain.trained_tensors(), watched.trained_tensors()
    assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a)
