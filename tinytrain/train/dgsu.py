"""DGSU run-time state of a training program (docs/schemes.md, "DGSU"): its names, dtypes,
shapes and initial values, shared by the simulator, the memory plan and the C generator.

* ``dgsu_age:<layer>`` uint16 [rows]: steps since each weight row of a dynamic layer was
  last updated (only when the layer picks fewer than all of its rows);
* ``dgsu_layer_score`` int64 [N], ``dgsu_layer_ema`` int32 [N], ``dgsu_layer_age``
  uint16 [N]: the layer selection's signal, its running mean and the candidates' ages
  (only with layer selection; ALaST, whose signal comes from the forward pass, has no
  running mean).

They are training state: trained tensors for the tensor table, checkpoints and
``--save-weights``, so that a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.ir.ops import OpKind
from tinytrain.train.alast import CLS_BUFFER
from tinytrain.train.kernels.select import EMA_UNSET
from tinytrain.train.planner import BufferKind, BufferRequest
from tinytrain.train.scheme import LayerPlan, ResolvedScheme
from tinytrain.train.scheme_dgsu import conv_weights, weight_count

LAYER_SCORE = "dgsu_layer_score"
LAYER_EMA = "dgsu_layer_ema"
LAYER_AGE = "dgsu_layer_age"


@dataclass(frozen=True, eq=False)
class StateTensor:
    name: str
    initial: np.ndarray  # dtype and shape of the tensor


def is_state_name(name: str) -> bool:
    """Whether a trained-tensor name is DGSU selection state (not a model weight)."""
    return name.startswith("dgsu_")


def age_name(plan: LayerPlan) -> str:
    return f"dgsu_age:{plan.layer.name}"


def needs_age(plan: LayerPlan) -> bool:
    return plan.dynamic is not None and plan.dynamic.k < plan.dynamic.rows


def state_tensors(scheme: ResolvedScheme) -> tuple[StateTensor, ...]:
    """Every DGSU state tensor of ``scheme`` with its initial value, in a fixed order."""
    out = [
        StateTensor(age_name(p), np.zeros(p.dynamic.rows, np.uint16))
        for p in scheme.dynamic
        if p.dynamic is not None and needs_age(p)
    ]
    ls = scheme.layer_select
    if ls is not None:
        n = len(ls.candidates)
        out.append(StateTensor(LAYER_SCORE, np.zeros(n, np.int64)))
        if ls.cls is None:  # ALaST's signal comes from the forward pass: no running mean
            out.append(StateTensor(LAYER_EMA, np.full(n, EMA_UNSET, np.int32)))
        out.append(StateTensor(LAYER_AGE, np.zeros(n, np.uint16)))
    return tuple(out)


# ------------------------------------------------------------------ memory

LAYERS_BUFFER = "dgsu:layers"  # this step's layer selection: chosen uint8[N], then sel uint16[M]


def sel_layout(k: int) -> tuple[int, int]:
    """Offsets in ``dgsu_sel:<weight>``: [int32 count][uint16 sel[k]][uint8 chosen[rows]]."""
    return 4, 4 + 2 * k


def layers_layout(n: int) -> int:
    """Offset of sel[M] in :data:`LAYERS_BUFFER` (after chosen[N], 2-byte aligned)."""
    return n + (n & 1)


def dgsu_step_requests(plan: LayerPlan, weight: str, step: int) -> list[BufferRequest]:
    """The scratch of a dynamic layer's backward step: its int64 bias gradient (the scores
    and the bias step's input) and its selection (count, rows, flags)."""
    d = plan.dynamic
    assert d is not None
    _, chosen_at = sel_layout(d.k)
    return [
        BufferRequest(f"dgsu_bgrad:{weight}", 8 * d.rows, step, step, BufferKind.SCRATCH),
        BufferRequest(f"dgsu_sel:{weight}", chosen_at + d.rows, step, step, BufferKind.SCRATCH),
    ]


def dgsu_state_requests(scheme: ResolvedScheme, loss_step: int, last_step: int) -> list[BufferRequest]:
    """The persistent state tensors and, with layer selection, the step's layer choice
    (from the loss step, where it is made, to the last dynamic layer's backward step)."""
    out = [BufferRequest(t.name, t.initial.nbytes, 0, 0, BufferKind.STATE) for t in state_tensors(scheme)]
    ls = scheme.layer_select
    if ls is not None:
        n = len(ls.candidates)
        out.append(
            BufferRequest(LAYERS_BUFFER, layers_layout(n) + 2 * ls.budget, loss_step, last_step, BufferKind.SCRATCH)
        )
        if ls.cls is not None:  # ALaST: the class-token rows, written during the forward pass
            out.append(BufferRequest(CLS_BUFFER, ls.cls.buffer_bytes, 0, 0, BufferKind.STATE))
    return out


# ------------------------------------------------------------------ summary


def dgsu_plan_summary(scheme: ResolvedScheme) -> dict[str, Any]:
    """plan.json's ``scheme.dgsu`` (empty without dynamic layers): the model's conv weights,
    the most weights updated in one step and their fraction of the conv weights."""
    dyn = [p for p in scheme.dynamic if p.dynamic is not None]
    if not dyn:
        return {}
    total = conv_weights(tuple(p.layer for p in scheme.layers))
    per_layer = sorted(
        (weight_count(p.layer) // p.dynamic.rows * p.dynamic.k for p in dyn if p.dynamic is not None), reverse=True
    )
    ls = scheme.layer_select
    per_step = sum(per_layer[: ls.budget]) if ls is not None else sum(per_layer)
    out: dict[str, Any] = {
        "conv_weights": total,
        "weights_per_step": per_step,  # with layer selection: the M largest layers' (an upper bound)
        "fraction_per_step": per_step / total if total else 0.0,
        "dynamic_layers": len(dyn),
    }
    if ls is not None:
        out["layer_budget"] = ls.budget
        out["layer_explore"] = ls.explore
    return {"dgsu": out}


class RowCoverage:
    """An :data:`~tinytrain.train.executor.Observer` that counts the conv weights a run
    trains: the rows each DGSU layer picked (its ``select`` events; distinct over the run
    and in total) plus the conv weights of the scheme's static weight updates. Use as
    ``executor.observer = cov`` (it ignores every other event)."""

    def __init__(self, scheme: ResolvedScheme) -> None:
        self.conv_weights = conv_weights(tuple(p.layer for p in scheme.layers))
        self.row_len = {
            p.layer.weight: weight_count(p.layer) // p.dynamic.rows
            for p in scheme.dynamic
            if p.dynamic is not None and p.layer.kind is not OpKind.FULLY_CONNECTED
        }
        # static weight updates of conv layers: the trained input channels (depthwise: channels)
        self.static = sum(
            weight_count(p.layer) // p.layer.in_channels * len(p.channels)
            for p in scheme.layers
            if p.dynamic is None and p.channels and p.layer.kind is not OpKind.FULLY_CONNECTED
        )
        self.seen: dict[str, set[int]] = {w: set() for w in self.row_len}
        self.updated = 0  # dynamic conv weights moved, summed over the steps

    def __call__(self, kind: str, op_index: int, tensor: str, value: object) -> None:
        if kind != "select" or tensor not in self.row_len:
            return
        rows = np.asarray(value).reshape(-1).tolist()
        self.seen[tensor].update(int(r) for r in rows)
        self.updated += len(rows) * self.row_len[tensor]

    def fraction_over_run(self) -> float:
        """Distinct conv weights trained so far (dynamic rows seen + static) / all conv weights."""
        dyn = sum(len(s) * self.row_len[w] for w, s in self.seen.items())
        return (dyn + self.static) / self.conv_weights if self.conv_weights else 0.0

    def fraction_per_step(self, steps: int) -> float:
        """Mean conv weights moved per step (dynamic + static) / all conv weights."""
        if steps <= 0 or not self.conv_weights:
            return 0.0
        return (self.updated / steps + self.static) / self.conv_weights
