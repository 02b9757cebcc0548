"""The candidate space of a search: which layers may train, and how.

TTE's space (Lin et al., "On-Device Training Under 256KB Memory", sec. 3.3) has two
parts: the biases of the last ``k`` layers, and the weights of single layers at
input-channel ratios. Here both are restricted to the tail of the model so that a search
stays cheap: the layers of the last ``blocks`` inverted-residual blocks and every layer
after them (for a model without such blocks, the last ``blocks + 1`` layers).

* **Bias depths** ``depths``: the numbers of trailing layers whose biases train, one per
  block boundary (the layers after the last block, then one more block each), ascending.
* **Weight layers**: the layers within the deepest depth whose weights can train (an int8
  input; not a depthwise conv with a depth multiplier), except the classifier, which
  always trains in full.
* **Ratios**: the input-channel ratios of a weight update (default {1/8, 1/4, 1/2, 1}).

A :class:`Genome` picks one depth and, per weight layer, no update or one ratio; it maps
to a :class:`~tinytrain.train.scheme.Scheme` whose weight layers lie within its bias
depth (as TTE's recipe: a weight update needs the gradient to reach the layer anyway).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.train.layers import Layer, linear_layers
from tinytrain.train.scheme import LayerRule, ResolvedScheme, Scheme, Update, resolve

DEFAULT_RATIOS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)
DEFAULT_BLOCKS = 4


@dataclass(frozen=True)
class Genome:
    """``depth``: index into :attr:`CandidateSpace.depths`; ``weights``: per weight layer,
    0 (no weight update) or ``1 + i`` (ratio ``ratios[i]``)."""

    depth: int
    weights: tuple[int, ...]


@dataclass(frozen=True)
class CandidateSpace:
    layers: tuple[Layer, ...]
    depths: tuple[int, ...]  # trailing layers whose biases train, ascending
    weight_layers: tuple[int, ...]  # layer indices, ascending
    ratios: tuple[float, ...]

    @property
    def classifier(self) -> int:
        return len(self.layers) - 1

    def channels(self, layer: int, ratio_gene: int) -> int:
        """Trained input channels of ``layer`` at ratio gene ``ratio_gene`` (0: none)."""
        if ratio_gene == 0:
            return 0
        cin = self.layers[layer].in_channels
        return min(cin, max(1, math.floor(self.ratios[ratio_gene - 1] * cin)))

    def min_depth(self, layer: int) -> int:
        """The smallest depth index whose biases reach ``layer``."""
        for j, d in enumerate(self.depths):
            if len(self.layers) - d <= layer:
                return j
        raise AssertionError(f"layer {layer} outside the candidate space")

    def repair(self, g: Genome) -> Genome:
        """Deepens the bias depth to reach the earliest weight layer of ``g``."""
        depth = g.depth
        for k, r in enumerate(g.weights):
            if r:
                depth = max(depth, self.min_depth(self.weight_layers[k]))
        return g if depth == g.depth else replace(g, depth=depth)

    def scheme(self, g: Genome, name: str = "searched") -> Scheme:
        n = len(self.layers)
        rules: dict[int, LayerRule] = {i: LayerRule(i, Update.BIAS) for i in range(n - self.depths[g.depth], n - 1)}
        for k, r in enumerate(g.weights):
            if r:
                i = self.weight_layers[k]
                ch = self.channels(i, r)
                full = ch == self.layers[i].in_channels
                rules[i] = LayerRule(i, Update.FULL) if full else LayerRule(i, Update.CHANNELS, count=ch)
        rules[n - 1] = LayerRule(n - 1, Update.FULL)
        return Scheme(name, tuple(rules[i] for i in sorted(rules)))

    def describe(self, g: Genome) -> str:
        """E.g. ``bias -14, conv48@1/4, conv51@1/8``."""
        parts = [f"bias -{self.depths[g.depth]}"]
        for k, r in enumerate(g.weights):
            if r:
                parts.append(f"{self.layers[self.weight_layers[k]].name}@{_ratio_text(self.ratios[r - 1])}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "depths": list(self.depths),
            "weight_layers": [self.layers[i].name for i in self.weight_layers],
            "ratios": list(self.ratios),
        }


def _ratio_text(r: float) -> str:
    inv = 1.0 / r
    return f"1/{round(inv)}" if r < 1.0 and abs(inv - round(inv)) < 1e-9 else f"{r:g}"


def _blocks(layers: tuple[Layer, ...]) -> list[tuple[int, int]]:
    """Inverted-residual blocks as (first layer, last layer): a depthwise conv with the 1×1
    conv right before it (expansion) and right after it (projection), when present."""
    out: list[tuple[int, int]] = []
    for i, lay in enumerate(layers):
        if lay.kind is not OpKind.DEPTHWISE_CONV_2D:
            continue
        first = i - 1 if i > 0 and layers[i - 1].is_pointwise else i
        last = i + 1 if i + 1 < len(layers) and layers[i + 1].is_pointwise else i
        out.append((first, last))
    return out


def _weights_trainable(graph: Graph, layer: Layer) -> bool:
    try:
        resolve(Scheme("probe", (LayerRule(layer.index, Update.FULL),)), graph)
    except UsageError:
        return False
    return True


def candidate_space(
    graph: Graph, blocks: int = DEFAULT_BLOCKS, ratios: tuple[float, ...] = DEFAULT_RATIOS
) -> CandidateSpace:
    """The space of the last ``blocks`` blocks (see the module docstring)."""
    if blocks < 1:
        raise UsageError(f"search blocks must be at least 1, got {blocks}")
    if not ratios or any(not 0.0 < r <= 1.0 for r in ratios) or list(ratios) != sorted(set(ratios)):
        raise UsageError(f"ratios must be distinct, ascending and in (0, 1], got {list(ratios)}")
    layers = linear_layers(graph)
    if not layers:
        raise UsageError("the model has no trainable (conv / depthwise / fully connected) layer")
    n = len(layers)
    found = _blocks(layers)
    if found:
        starts = [n - (found[-1][1] + 1)] if found[-1][1] + 1 < n else []
        starts += [n - first for first, _ in reversed(found[-blocks:])]
        depths = tuple(sorted(set(starts)))
    else:
        depths = tuple(range(1, min(n, blocks + 1) + 1))
    deepest = n - depths[-1]
    weight_layers = tuple(i for i in range(deepest, n - 1) if _weights_trainable(graph, layers[i]))
    return CandidateSpace(layers, depths, weight_layers, tuple(float(r) for r in ratios))


def canonical_scheme(resolved: ResolvedScheme) -> list[list[Any]]:
    """What a resolved scheme trains, as a canonical list: ``[layer, update, channels]``
    per trained layer (names and the way a scheme was written do not matter)."""
    out: list[list[Any]] = []
    for p in resolved.trained:
        entry: list[Any] = [p.layer.index, p.update.value, len(p.channels)]
        if p.dynamic is not None:
            entry += [p.dynamic.k, p.dynamic.explore, p.dynamic.candidate]
        out.append(entry)
    if resolved.layer_select is not None:
        out.append(["layer_select", resolved.layer_select.budget, resolved.layer_select.explore])
    sign = [p.layer.index for p in resolved.layers if p.sign_act]
    if sign:
        out.append(["sign_from", min(sign)])
    return out
