"""Contribution analysis (TTE, sec. 3.3): what each part of a scheme is worth.

Every probe is a short fine-tuning run on a training subset, scored on a fixed
validation subset; every probe trains the classifier in full, and the **reference**
trains only the classifier. A probe's contribution is its score minus the reference's:

* **bias probes**: the biases of the last ``depths[j]`` layers (one probe per depth);
* **weight probes**: the weights (and bias) of one candidate layer at one input-channel
  ratio, on top of the reference.

The search then assumes the contributions add up (as TTE does): a genome's predicted
gain is the gain of its bias depth plus the gains of its weight updates. A probe whose
program does not fit the budget on its own is not run: its gene can never be part of a
fitting scheme.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tinytrain.search.space import CandidateSpace, Genome
from tinytrain.train.scheme import LayerRule, Scheme, Update

METRICS = ("accuracy", "loss")


@dataclass(frozen=True)
class Probe:
    name: str
    kind: str  # "reference", "bias", "weights"
    scheme: Scheme
    depth: int | None = None  # bias probes: index into space.depths
    layer: int | None = None  # weight probes: position in space.weight_layers
    ratio: int | None = None  # weight probes: ratio gene (1 + index into space.ratios)


def probes(space: CandidateSpace, max_probes: int | None = None) -> tuple[Probe, ...]:
    """The reference, one probe per bias depth, then the weight probes, from the layer
    nearest the output backwards (so that a cap on the number of probes drops the deepest
    layers first) and, per layer, by ascending ratio."""
    n = len(space.layers)
    out = [Probe("reference (classifier)", "reference", Scheme("reference", (LayerRule(n - 1, Update.FULL),)))]
    for j, d in enumerate(space.depths):
        g = Genome(j, (0,) * len(space.weight_layers))
        out.append(Probe(f"bias of last {d}", "bias", space.scheme(g, f"bias-{d}"), depth=j))
    for k in reversed(range(len(space.weight_layers))):
        for r in range(1, len(space.ratios) + 1):
            weights = tuple(r if i == k else 0 for i in range(len(space.weight_layers)))
            i = space.weight_layers[k]
            text = f"{space.layers[i].name}@{space.channels(i, r)}/{space.layers[i].in_channels}"
            s = Scheme(f"w-{space.layers[i].name}-{space.channels(i, r)}", _weights_only(space, Genome(0, weights)))
            out.append(Probe(f"weights {text}", "weights", s, layer=k, ratio=r))
    if max_probes is not None:
        out = out[: max(max_probes, 1 + len(space.depths))]
    return tuple(out)


def _weights_only(space: CandidateSpace, g: Genome) -> tuple[LayerRule, ...]:
    """The weight rules of ``g`` and the classifier: no bias depth."""
    rules = [r for r in space.scheme(g).rules if r.update is not Update.BIAS]
    return tuple(rules)


@dataclass(frozen=True)
class Contributions:
    """Gains over the reference, by gene; ``None``: not available (over budget or not probed)."""

    reference: float
    bias: tuple[float | None, ...]  # per depth
    weights: tuple[tuple[float | None, ...], ...]  # per weight layer, per ratio gene − 1
    metric: str

    def gain(self, g: Genome) -> float | None:
        """Predicted gain of a genome (None when one of its genes is unavailable)."""
        total = self.bias[g.depth]
        if total is None:
            return None
        for k, r in enumerate(g.weights):
            if r:
                w = self.weights[k][r - 1]
                if w is None:
                    return None
                total += w
        return total

    def to_json(self, space: CandidateSpace) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "reference": self.reference,
            "bias": {f"last {d}": v for d, v in zip(space.depths, self.bias, strict=True)},
            "weights": {
                space.layers[i].name: {f"{r:g}": v for r, v in zip(space.ratios, row, strict=True)}
                for i, row in zip(space.weight_layers, self.weights, strict=True)
            },
        }


def score(result: Mapping[str, Any], metric: str) -> float:
    """The quantity contributions are measured in: accuracy, or minus the mean loss."""
    return float(result["accuracy"]) if metric == "accuracy" else -float(result["loss"])


def contributions(
    space: CandidateSpace, probe_list: tuple[Probe, ...], results: Mapping[str, Mapping[str, Any] | None], metric: str
) -> Contributions:
    """``results``: probe name → its evaluation (None: not run, over budget)."""
    ref_res = results[probe_list[0].name]
    assert ref_res is not None, "the reference must fit the budget"
    ref = score(ref_res, metric)
    bias: list[float | None] = [None] * len(space.depths)
    w: list[list[float | None]] = [[None] * len(space.ratios) for _ in space.weight_layers]
    for p in probe_list[1:]:
        res = results.get(p.name)
        gain = None if res is None else score(res, metric) - ref
        if p.kind == "bias" and p.depth is not None:
            bias[p.depth] = gain
        elif p.kind == "weights" and p.layer is not None and p.ratio is not None:
            w[p.layer][p.ratio - 1] = gain
    return Contributions(ref, tuple(bias), tuple(tuple(row) for row in w), metric)
