"""The DGSU presets (docs/schemes.md, "DGSU"):
``dgsu:ratio=R[,blocks=B][,weights=I+J+…][,bias=N][,explore=F]`` and
``dgsu-layers:[layers=M][,blocks=B][,weights=I+J+…][,bias=N][,ratio=R][,explore=F]``.

Candidates: the 1×1 convs (expansion and projection) of the last B inverted-residual blocks,
or the listed layers. Biases train from the first candidate's block on (as ``tte``), or with
``bias=N`` in the last N layers (as ``tte:bias=N``; they must include every candidate), the
classifier in full.

* ``dgsu``: every candidate updates ``k = ⌈f · rows⌉`` weight rows per step with
  ``f = R · conv_weights / Σ candidate weights`` (``conv_weights``: every CONV_2D and
  DEPTHWISE_CONV_2D weight of the model, not the classifier), so that about R of the conv
  weights move per step.
* ``dgsu-layers``: M candidates update their weights per step (all rows, or
  ``max(1, ⌊R · rows⌋)`` rows with ``ratio=R``), the others their bias only.

``explore=F`` (default 0.25): ⌈F · k⌉ of the k rows (and ⌈F · M⌉ of the M layers) are chosen
by age, the rest by importance.
"""

from __future__ import annotations

import math

from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.layers import Layer, resolve_layer
from tinytrain.train.scheme import LayerRule, Scheme, Update, _blocks, _int, _params, _split_list

DGSU_DEFAULT_BLOCKS = 3  # measured: see docs/schemes.md, "DGSU" (B = 4 plans fit, its firmware does not)
DGSU_DEFAULT_LAYERS = 2
DGSU_DEFAULT_EXPLORE = 0.25


def conv_weights(layers: tuple[Layer, ...]) -> int:
    """Weights of every CONV_2D and DEPTHWISE_CONV_2D layer (not the fully connected ones)."""
    return sum(weight_count(lay) for lay in layers if lay.kind is not OpKind.FULLY_CONNECTED)


def weight_count(lay: Layer) -> int:
    kh, kw = lay.kernel
    if lay.kind is OpKind.DEPTHWISE_CONV_2D:
        return kh * kw * lay.out_channels
    return lay.out_channels * kh * kw * lay.in_channels


def _float(value: str, what: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{what} must be a number, got {value!r}") from None


def _candidates(name: str, p: dict[str, str], layers: tuple[Layer, ...]) -> tuple[list[int], int]:
    """(candidate layer indices in order, first layer whose bias trains)."""
    blocks = _blocks(layers)
    if "weights" in p:
        if "blocks" in p:
            raise UsageError(f"{name}: give 'blocks' or 'weights', not both")
        refs = _layer_list(p["weights"])
        idx = sorted({resolve_layer(layers, _int(v, f"{name} weights index")).index for v in refs})
        if not idx:
            raise UsageError(f"{name}: 'weights' lists no layer")
        first = idx[0]
        for b in blocks:
            if first in b.values():
                first = min(b.values())
        return idx, first
    if not blocks:
        raise UsageError(f"{name}: the model has no inverted-residual block (no depthwise conv); use weights=I+J")
    nb = _int(p["blocks"], f"{name} blocks") if "blocks" in p else min(DGSU_DEFAULT_BLOCKS, len(blocks))
    if not 1 <= nb <= len(blocks):
        raise UsageError(f"{name}: blocks={nb} must be in 1..{len(blocks)} for this model")
    chosen = blocks[-nb:]
    idx = sorted(i for b in chosen for role, i in b.items() if role in ("expand", "project"))
    if not idx:
        raise UsageError(f"{name}: the last {nb} blocks have no 1×1 conv")
    return idx, min(chosen[0].values())


def _layer_list(text: str) -> list[str]:
    """Layer indices joined by '+' (or '-', as tte's lists); one index keeps its sign (``weights=-3``)."""
    t = text.strip()
    if t.lstrip("-").isdigit():
        return [t]
    return _split_list(t)


def _explore(p: dict[str, str], name: str) -> float:
    f = _float(p["explore"], f"{name} explore") if "explore" in p else DGSU_DEFAULT_EXPLORE
    if not 0.0 <= f <= 1.0:
        raise UsageError(f"{name}: explore={f} must be a fraction in [0, 1] of the picks made by age")
    return f


def dgsu_preset(spec: str, name: str, arg: str, layers: tuple[Layer, ...]) -> Scheme:
    if name == "dgsu":
        p = _params(arg, name, {"ratio", "blocks", "weights", "bias", "explore"})
        if "ratio" not in p:
            raise UsageError("dgsu needs ratio=R, the fraction of the conv weights updated per step (e.g. 0.02)")
    else:
        p = _params(arg, name, {"layers", "ratio", "blocks", "weights", "bias", "explore"})
    idx, first = _candidates(name, p, layers)
    if "bias" in p:
        n_bias = _int(p["bias"], f"{name} bias")
        need = len(layers) - idx[0]
        if not need <= n_bias <= len(layers):
            raise UsageError(
                f"{name}: bias={n_bias} must be in {need}..{len(layers)}: the biases that train must include "
                f"every candidate (the first is layer {idx[0]} of {len(layers)})"
            )
        first = len(layers) - n_bias
    f_explore = _explore(p, name)
    rules: dict[int, LayerRule] = {i: LayerRule(i, Update.BIAS) for i in range(first, len(layers) - 1)}
    rules[len(layers) - 1] = LayerRule(len(layers) - 1, Update.FULL)
    if len(layers) - 1 in idx:
        raise UsageError(f"{name}: the classifier trains in full; it cannot be a dynamic candidate")
    budget: int | None = None
    if name == "dgsu":
        r = _float(p["ratio"], "dgsu ratio")
        if not 0.0 < r <= 1.0:
            raise UsageError(f"dgsu: ratio={r} must be in (0, 1]")
        total = conv_weights(layers)
        cand = sum(weight_count(layers[i]) for i in idx)
        f = r * total / cand
        if f > 1.0:
            need = math.ceil(r * total)
            raise UsageError(
                f"dgsu: ratio={r} asks for {need:,} conv weights per step but the candidates hold only {cand:,} "
                f"(f = {f:.2f} > 1): use more blocks (blocks=B) or list more layers (weights=I+J+…)"
            )
        for i in idx:
            rows = layers[i].out_channels
            k = min(rows, math.ceil(f * rows))
            rules[i] = LayerRule(i, Update.DYNAMIC, count=k, explore=_ceil_frac(f_explore, k, rows))
    else:
        m = _int(p["layers"], "dgsu-layers layers") if "layers" in p else min(DGSU_DEFAULT_LAYERS, len(idx))
        if not 1 <= m <= len(idx):
            raise UsageError(f"dgsu-layers: layers={m} must be in 1..{len(idx)} (the candidate layers)")
        budget = m
        ratio = _float(p["ratio"], "dgsu-layers ratio") if "ratio" in p else None
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise UsageError(f"dgsu-layers: ratio={ratio} must be in (0, 1]")
        for i in idx:
            rows = layers[i].out_channels
            k = rows if ratio is None else max(1, math.floor(ratio * rows))
            rules[i] = LayerRule(i, Update.DYNAMIC, count=k, explore=_ceil_frac(f_explore, k, rows))
        explore = _ceil_frac(f_explore, m, len(idx))
        return Scheme(spec, tuple(rules.values()), layer_budget=budget, layer_explore=explore)
    return Scheme(spec, tuple(rules.values()))


def _ceil_frac(f: float, k: int, n: int) -> int:
    """⌈f · k⌉ picks by age out of k (0 when k covers all n)."""
    return 0 if k >= n else min(k, math.ceil(f * k - 1e-9))
