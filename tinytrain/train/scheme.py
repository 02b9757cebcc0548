"""Update schemes: which layers train, and how.

A scheme says, per trainable (linear) layer: ``frozen``, ``bias`` (bias only), ``full``
(weights and bias) or ``channels`` (bias and the weights of a subset of the *input*
channels, given as a ratio in (0, 1] or a count; as in tiny-training, the first
channels). Layers not named take the scheme's ``default`` (``frozen`` unless set).
``dynamic`` (DGSU, docs/schemes.md): bias and ``k`` weight rows (output channels) chosen
anew at every step (``ratio``/``count``, optional ``explore``); a scheme-level
``layer_budget: M`` (optional ``layer_explore``) lets only M dynamic layers update their
weights per step.

Schemes come from a YAML/JSON file::

    name: my-scheme
    default: frozen
    layers:
      - {layer: -1, update: full}            # by index; negative counts from the end
      - {layer: conv48, update: channels, ratio: 0.25}   # by name
      - {layer: 30, update: bias}

or from a preset name with optional parameters: ``last-layer``, ``bias-only``,
``last-k:K``, ``tte[:bias=N,weights=I+J+K,ratios=R+S+T]``, ``full``,
``mobiletl:blocks=K[,act=sign|exact]``, ``dgsu:ratio=R[,…]``, ``dgsu-layers[:…]``
(tinytrain/train/scheme_dgsu.py), ``vit-last:K``, ``vit-blocks:B1+B2+…`` (Vision
Transformers: tinytrain/train/vit_blocks.py), ``bsr:blocks=B1+B2,drop_at=D1+D2[,keep=R]``
(Block Selective Reprogramming: those blocks train and tokens are dropped after the frozen
blocks D1, D2, …; the graph is rewritten by :func:`scheme_graph`, tinytrain/passes/token_drop.py;
file form: a top-level ``token_drop: {drop_at: [1], keep: 0.5}``), ``alast[:…]`` (ALaST's
per-step layer budgets: tinytrain/train/scheme_alast.py).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.train.layers import Layer, linear_layers, resolve_layer

if TYPE_CHECKING:
    from tinytrain.passes.token_drop import TokenDrop
    from tinytrain.train.alast import ClsSignal


class Update(enum.Enum):
    FROZEN = "frozen"
    BIAS = "bias"
    FULL = "full"
    CHANNELS = "channels"
    DYNAMIC = "dynamic"  # DGSU: bias plus k weight rows (output channels) chosen anew at every step


@dataclass(frozen=True)
class LayerRule:
    """One entry of a scheme, before it is resolved against a model."""

    layer: str | int
    update: Update
    ratio: float | None = None
    count: int | None = None
    explore: int | None = None  # dynamic: rows chosen by age (default ⌈k/4⌉)


@dataclass(frozen=True)
class Scheme:
    name: str
    rules: tuple[LayerRule, ...]
    default: Update = Update.FROZEN
    layer_budget: int | None = None  # DGSU layer selection: M of the dynamic layers update weights per step
    layer_explore: int | None = None  # of which chosen by age (default ⌈M/4⌉)
    # MobileTL: the activations of the layers from this one on (a layer reference, as in a
    # rule) back-propagate with the sign rule (LayerPlan.sign_act); None: exact clamp masks.
    # File form: a top-level ``sign_from: <layer>``.
    sign_from: str | int | None = None
    # BSR: tokens dropped after these frozen blocks (tinytrain/passes/token_drop.py); the graph
    # must be rewritten by scheme_graph() before the scheme is resolved against it.
    token_drop: TokenDrop | None = None
    # ALaST (tinytrain/train/alast.py): the layer selection picks among these transformer
    # blocks (model numbers) by their class-token change; every dynamic layer belongs to one.
    # File form: a top-level ``alast_blocks: [2, 3]``.
    alast_blocks: tuple[int, ...] = ()


MAX_DYNAMIC_ROWS = 65535  # row indices are uint16 on the device


@dataclass(frozen=True)
class DynamicRows:
    """A DGSU layer (docs/schemes.md, "DGSU"): every step, ``k`` of its ``rows`` weight rows
    (output channels) update, ``k − explore`` by the largest |bias gradient|, ``explore``
    by the largest age. ``candidate``: the layer's position among the layer-selection
    candidates (−1 without layer selection: it updates k rows every step)."""

    rows: int
    k: int
    explore: int
    candidate: int = -1


@dataclass(frozen=True)
class LayerSelect:
    """DGSU layer selection: ``budget`` of the ``candidates`` (linear layer indices, in
    order) update their weights per step, ``explore`` of them by age, the others by their
    bias-gradient signal. ALaST (``cls`` set): the candidates are transformer blocks (model
    numbers) scored by their class-token change in the same step's forward pass."""

    budget: int
    explore: int
    candidates: tuple[int, ...]
    cls: ClsSignal | None = None


@dataclass(frozen=True)
class LayerPlan:
    """What one layer trains, resolved against a model."""

    layer: Layer
    update: Update
    channels: tuple[int, ...] = ()  # trained input channels of the weights (empty: none)
    dynamic: DynamicRows | None = None  # set for update 'dynamic' (then channels: every input channel)
    # MobileTL's sign rule for this layer's activation backward (its fused ReLU/ReLU6, or a
    # HARD_SWISH right after it): the gradient passes where the pre-activation is > 0, with
    # a 1-bit mask saved in the forward; False: the exact clamp mask (act_min < y < act_max).
    sign_act: bool = False

    @property
    def trains_bias(self) -> bool:
        return self.update is not Update.FROZEN

    @property
    def trains_weights(self) -> bool:
        return bool(self.channels)


@dataclass(frozen=True)
class ResolvedScheme:
    name: str
    layers: tuple[LayerPlan, ...]  # one per linear layer of the model, in order
    layer_select: LayerSelect | None = None
    # BSR (set with token dropping): the drops, the tokens each transformer block runs on
    # ((block, tokens), ascending) and each layer's input tokens (aligned with ``layers``).
    token_drop: TokenDrop | None = None
    block_tokens: tuple[tuple[int, int], ...] = ()
    layer_tokens: tuple[int, ...] = ()

    @property
    def dynamic(self) -> tuple[LayerPlan, ...]:
        """The DGSU layers (update 'dynamic'), in order."""
        return tuple(p for p in self.layers if p.dynamic is not None)

    @property
    def trained(self) -> tuple[LayerPlan, ...]:
        return tuple(p for p in self.layers if p.update is not Update.FROZEN)

    @property
    def first_trained(self) -> int:
        """Index of the earliest layer that trains anything (len(layers) when none)."""
        for p in self.layers:
            if p.update is not Update.FROZEN:
                return p.layer.index
        return len(self.layers)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {
                "layer": p.layer.name,
                "index": p.layer.index,
                "update": p.update.value,
                "weight_channels": len(p.channels),
                "in_channels": p.layer.in_channels,
                **({"act_grad": "sign"} if p.sign_act else {}),
                **({"dgsu": _dgsu_summary(p.dynamic)} if p.dynamic is not None else {}),
                **({"tokens": self.layer_tokens[p.layer.index]} if self.layer_tokens else {}),
            }
            for p in self.trained
        ]

    def token_summary(self) -> dict[str, Any]:
        """BSR's token figures (empty without token dropping): the drops, the tokens each block
        runs on and their sum, the tokens the blocks process per training step."""
        if self.token_drop is None:
            return {}
        return {
            "drop_at": list(self.token_drop.drop_at),
            "keep": self.token_drop.keep,
            "block_tokens": {str(b): t for b, t in self.block_tokens},
            "tokens_per_step": sum(t for _, t in self.block_tokens),
        }


def _dgsu_summary(d: DynamicRows) -> dict[str, int]:
    return {"rows": d.rows, "k": d.k, "explore": d.explore, "candidate": d.candidate}


# ---------------------------------------------------------------- parsing


def _update(value: object, where: str) -> Update:
    try:
        return Update(str(value))
    except ValueError:
        choices = ", ".join(u.value for u in Update)
        raise UsageError(f"{where}: unknown update {value!r} (one of {choices})") from None


def _rule(entry: object, i: int) -> LayerRule:
    where = f"scheme entry {i}"
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where}: expected a mapping with 'layer' and 'update', got {entry!r}")
    unknown = set(entry) - {"layer", "update", "ratio", "count", "explore"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if "layer" not in entry or "update" not in entry:
        raise UsageError(f"{where}: needs both 'layer' and 'update'")
    layer = entry["layer"]
    if not isinstance(layer, (str, int)) or isinstance(layer, bool):
        raise UsageError(f"{where}: 'layer' must be a name or an index, got {layer!r}")
    update = _update(entry["update"], where)
    ratio, count, explore = entry.get("ratio"), entry.get("count"), entry.get("explore")
    if explore is not None:
        if update is not Update.DYNAMIC:
            raise UsageError(f"{where}: 'explore' only applies to update 'dynamic'")
        if isinstance(explore, bool) or not isinstance(explore, int) or explore < 0:
            raise UsageError(f"{where}: explore must be a non-negative integer (rows per step), got {explore!r}")
    if update in (Update.CHANNELS, Update.DYNAMIC):
        if ratio is not None and count is not None:
            raise UsageError(f"{where}: give at most one of 'ratio' or 'count'")
        if update is Update.CHANNELS and ratio is None and count is None:
            raise UsageError(f"{where}: update 'channels' needs exactly one of 'ratio' or 'count'")
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
                raise UsageError(f"{where}: ratio must be in (0, 1], got {ratio!r}")
            ratio = float(ratio)
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
            raise UsageError(f"{where}: count must be a positive integer, got {count!r}")
    elif ratio is not None or count is not None:
        raise UsageError(f"{where}: 'ratio'/'count' only apply to update 'channels' (or 'dynamic')")
    return LayerRule(layer=layer, update=update, ratio=ratio, count=count, explore=explore)


def _opt_int(data: Mapping[Any, Any], key: str, low: int) -> int | None:
    v = data.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise UsageError(f"scheme: '{key}' must be an integer ≥ {low}, got {v!r}")
    return int(v)


def scheme_from_mapping(data: object, name: str = "scheme") -> Scheme:
    if not isinstance(data, Mapping):
        raise UsageError("a scheme file must hold a mapping with a 'layers' list")
    unknown = set(data) - {
        "name", "default", "layers", "sign_from", "layer_budget", "layer_explore", "token_drop", "alast_blocks"
    }
    if unknown:
        raise UsageError(f"scheme: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    entries = data.get("layers", [])
    if not isinstance(entries, list):
        raise UsageError("scheme: 'layers' must be a list")
    default = _update(data.get("default", "frozen"), "scheme default")
    if default in (Update.CHANNELS, Update.DYNAMIC):
        raise UsageError(f"scheme default cannot be {default.value!r}")
    budget, l_explore = _opt_int(data, "layer_budget", 1), _opt_int(data, "layer_explore", 0)
    if l_explore is not None and budget is None:
        raise UsageError("scheme: 'layer_explore' needs 'layer_budget'")
    sign_from = data.get("sign_from")
    if sign_from is not None and (not isinstance(sign_from, (str, int)) or isinstance(sign_from, bool)):
        raise UsageError(f"scheme: 'sign_from' must be a layer name or index, got {sign_from!r}")
    rules = tuple(_rule(e, i) for i, e in enumerate(entries))
    return Scheme(
        str(data.get("name", name)),
        rules,
        default,
        layer_budget=budget,
        layer_explore=l_explore,
        sign_from=sign_from,
        token_drop=_token_drop_entry(data.get("token_drop")),
        alast_blocks=_alast_blocks_entry(data.get("alast_blocks")),
    )


def _alast_blocks_entry(entry: object) -> tuple[int, ...]:
    """A scheme file's ``alast_blocks: [b, …]`` (model block numbers; absent: none)."""
    if entry is None:
        return ()
    if not isinstance(entry, list) or not entry:
        raise UsageError(f"scheme: 'alast_blocks' must be a non-empty list of block numbers, got {entry!r}")
    blocks = tuple(b for b in entry if isinstance(b, int) and not isinstance(b, bool))
    if len(blocks) != len(entry):
        raise UsageError(f"scheme: 'alast_blocks' must be a non-empty list of block numbers, got {entry!r}")
    return blocks


def token_drop_data(drop: TokenDrop) -> dict[str, Any]:
    """The scheme-file form of a token drop (the inverse of the ``token_drop`` entry)."""
    return {"drop_at": list(drop.drop_at), "keep": drop.keep}


def _token_drop_entry(entry: object) -> TokenDrop | None:
    """A scheme file's ``token_drop: {drop_at: [b, …], keep: r}`` (model block numbers)."""
    from tinytrain.passes.token_drop import TokenDrop

    if entry is None:
        return None
    if not isinstance(entry, Mapping) or set(entry) - {"drop_at", "keep"} or "drop_at" not in entry:
        raise UsageError(f"scheme: 'token_drop' must be a mapping {{drop_at: [blocks], keep: fraction}}, got {entry!r}")
    drop_at = entry["drop_at"]
    if not isinstance(drop_at, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in drop_at):
        raise UsageError(f"scheme: token_drop's 'drop_at' must be a list of block numbers, got {drop_at!r}")
    return TokenDrop(tuple(drop_at), entry.get("keep", DEFAULT_KEEP))


def load_scheme_file(path: str | Path) -> Scheme:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read scheme file {p}: {exc.strerror or exc}") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(f"scheme file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from None
    return scheme_from_mapping(data, name=p.stem)


# ---------------------------------------------------------------- presets

# TTE's own MobileNetV2-w0.35 configuration (tiny-training's compilation/mcu_ir_gen.py,
# "49kb": n_bias_update 16, manual_weight_idx 36-39-40-41-42-45-48-49 of 52 convs,
# weight_update_ratio 1-1-0-0.25-0.125-0.125-0.125-0.125), in terms of inverted-residual
# blocks counted from the end so that it maps onto any MobileNetV2-class model: the biases
# of the last 5 blocks and of every layer after them; the weights of (block, role, ratio):
TTE_DEFAULT_BLOCKS = 5
TTE_DEFAULT_WEIGHTS: tuple[tuple[int, str, float], ...] = (
    (-5, "expand", 1.0),
    (-4, "expand", 1.0),
    (-4, "project", 0.25),
    (-3, "expand", 0.125),
    (-2, "expand", 0.125),
    (-1, "expand", 0.125),
    (-1, "depthwise", 0.125),
)


def _split_list(text: str) -> list[str]:
    """Lists are joined by '+' (which allows negative indices) or, as in tiny-training, by '-'."""
    if "+" in text:
        return [v for v in text.split("+") if v]
    return [v for v in text.split("-") if v]


def _params(text: str, preset: str, allowed: set[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not text:
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in allowed:
            raise UsageError(f"preset {preset!r}: bad parameter {part!r} (allowed: {', '.join(sorted(allowed))})")
        out[key] = value
    return out


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{what} must be an integer, got {value!r}") from None


def preset(spec: str, graph: Graph) -> Scheme:
    """A named preset, made concrete for ``graph`` (TTE's needs the block structure)."""
    name, _, arg = spec.partition(":")
    layers = linear_layers(graph)
    if name == "last-layer":
        _params(arg, name, set())
        return Scheme(spec, (LayerRule(-1, Update.FULL),))
    if name == "bias-only":
        _params(arg, name, set())
        return Scheme(spec, (LayerRule(-1, Update.FULL),), default=Update.BIAS)
    if name == "full":
        _params(arg, name, set())
        return Scheme(spec, (), default=Update.FULL)
    if name == "last-k":
        k = _int(arg, "last-k's K")
        if not 1 <= k <= len(layers):
            raise UsageError(f"last-k:{k}: K must be in 1..{len(layers)} for this model")
        return Scheme(spec, tuple(LayerRule(-i, Update.FULL) for i in range(1, k + 1)))
    if name == "tte":
        return _tte(spec, arg, layers)
    if name == "mobiletl":
        return _mobiletl(spec, arg, layers)
    if name in ("dgsu", "dgsu-layers"):
        from tinytrain.train.scheme_dgsu import dgsu_preset

        return dgsu_preset(spec, name, arg, layers)
    if name in ("vit-last", "vit-blocks"):
        return _vit(spec, name, arg, graph)
    if name == "bsr":
        return _bsr(spec, arg, graph)
    if name == "alast":
        from tinytrain.train.scheme_alast import alast_preset

        return alast_preset(spec, arg, graph)
    raise UsageError(
        f"unknown scheme {spec!r} (presets: last-layer, bias-only, last-k:K, tte, full, mobiletl:blocks=K, "
        "dgsu:ratio=R, dgsu-layers, vit-last:K, vit-blocks:B1+B2, bsr:blocks=B1+B2,drop_at=D1,keep=R, "
        "alast[:blocks=B1+B2,train_layers=M]; or a file)"
    )


def _vit(spec: str, name: str, arg: str, graph: Graph) -> Scheme:
    """Vision Transformers (docs/schemes.md, "Vision Transformers"): the weights and biases of
    every FULLY_CONNECTED of the chosen transformer blocks (query, key, value, attention
    output, both MLP layers) and of the head train; everything else is frozen (the patch
    embedding, the class token and position embedding, every LayerNorm, including the final
    one's MUL/ADD constants). ``vit-last:K``: the last K blocks; ``vit-blocks:B1+B2+…``:
    exactly those blocks (model block numbers, negative ones from the end)."""
    from tinytrain.train.vit_blocks import vit_blocks

    vb = vit_blocks(graph)
    n = len(vb.blocks)
    if name == "vit-last":
        if not arg:
            raise UsageError(f"vit-last needs K, the number of last blocks to train (1..{n}), e.g. vit-last:2")
        k = _int(arg, "vit-last's K")
        if not 1 <= k <= n:
            raise UsageError(f"vit-last:{k}: K must be in 1..{n} (the model's transformer blocks)")
        chosen = list(vb.blocks[-k:])
    else:
        refs = [v for v in arg.split("+") if v]
        if not refs:
            raise UsageError(f"vit-blocks needs the blocks to train, e.g. vit-blocks:{vb.blocks[-2]}+{vb.blocks[-1]}")
        chosen = [vb.resolve(_int(v, "vit-blocks block")) for v in refs]
        if len(set(chosen)) != len(chosen):
            raise UsageError(f"vit-blocks: block(s) listed twice in {arg!r}")
    return Scheme(spec, _vit_rules(graph, chosen))


def _vit_rules(graph: Graph, chosen: list[int]) -> tuple[LayerRule, ...]:
    """Every FULLY_CONNECTED of the chosen blocks and the head train in full."""
    from tinytrain.train.vit_blocks import head_layer, vit_blocks

    vb = vit_blocks(graph)
    head = head_layer(graph, vb)
    rules = [LayerRule(i, Update.FULL) for b in sorted(chosen) for i in vb.layers[b]]
    rules.append(LayerRule(head.index, Update.FULL))
    return tuple(rules)


DEFAULT_KEEP = 0.5  # BSR's keep ratio when none is given


def _bsr(spec: str, arg: str, graph: Graph) -> Scheme:
    """Block Selective Reprogramming (docs/schemes.md, "Block Selective Reprogramming"): the
    chosen blocks and the head train as in ``vit-blocks``; after each ``drop_at`` block (which
    must be frozen) only the class token and the fraction ``keep`` of the patch tokens with
    the largest class-token attention go on (tinytrain/passes/token_drop.py)."""
    from tinytrain.passes.token_drop import TokenDrop, check_keep
    from tinytrain.train.vit_blocks import vit_blocks

    p = _params(arg, "bsr", {"blocks", "drop_at", "keep"})
    vb = vit_blocks(graph)
    b = vb.blocks
    example = f"bsr:blocks={b[-2]}+{b[-1]},drop_at={b[-3]},keep=0.5" if len(b) > 2 else ""
    for key in ("blocks", "drop_at"):
        if not p.get(key):
            raise UsageError(f"bsr needs {key}=B1+B2+… (model block numbers){', e.g. ' + example if example else ''}")
    chosen = [vb.resolve(_int(v, "bsr block")) for v in p["blocks"].split("+") if v]
    drops = [vb.resolve(_int(v, "bsr drop_at block")) for v in p["drop_at"].split("+") if v]
    for what, refs in (("blocks", chosen), ("drop_at", drops)):
        if len(set(refs)) != len(refs):
            raise UsageError(f"bsr: {what} lists a block twice ({p[what]!r})")
    trained_drops = sorted(set(chosen) & set(drops))
    if trained_drops:
        raise UsageError(
            f"bsr: drop_at block(s) {trained_drops} also train: tokens are dropped only after frozen blocks "
            "(whose attention, which picks the tokens, does not change while training)"
        )
    try:
        keep = float(p.get("keep", DEFAULT_KEEP))
    except ValueError:
        raise UsageError(f"bsr: keep must be a number in (0, 1], got {p['keep']!r}") from None
    check_keep(keep)
    return Scheme(spec, _vit_rules(graph, chosen), token_drop=TokenDrop(tuple(sorted(drops)), keep))


def scheme_graph(scheme: Scheme, graph: Graph) -> Graph:
    """The graph a scheme trains: with BSR's TOKEN_SELECT ops inserted when the scheme drops
    tokens (unchanged otherwise, or when the graph already has them)."""
    if scheme.token_drop is None or any(op.kind is OpKind.TOKEN_SELECT for op in graph.ops):
        return graph
    from tinytrain.passes.token_drop import drop_tokens

    return drop_tokens(graph, scheme.token_drop)


def _mobiletl(spec: str, arg: str, layers: tuple[Layer, ...]) -> Scheme:
    """MobileTL (Chiang et al., "On-device Transfer Learning with Inverted Residual Blocks"):
    in the top K inverted-residual blocks the biases (the folded normalization shifts) of the
    expansion and depthwise convs, the projection in full, and the classifier; every layer
    before the first of those blocks frozen. ``act=sign`` (default): the activations from that
    block on back-propagate with the sign rule (a 1-bit "pre-activation > 0" mask);
    ``act=exact``: the exact clamp masks."""
    p = _params(arg, "mobiletl", {"blocks", "act"})
    blocks = _blocks(layers)
    if not blocks:
        raise UsageError("mobiletl: the model has no inverted-residual block (no depthwise conv)")
    if "blocks" not in p:
        raise UsageError(f"mobiletl needs blocks=K (K in 1..{len(blocks)} for this model), e.g. mobiletl:blocks=2")
    k = _int(p["blocks"], "mobiletl blocks")
    if not 1 <= k <= len(blocks):
        raise UsageError(f"mobiletl: blocks={k} must be in 1..{len(blocks)} (the model's inverted-residual blocks)")
    act = p.get("act", "sign")
    if act not in ("sign", "exact"):
        raise UsageError(f"mobiletl: act must be 'sign' or 'exact', got {act!r}")
    rules: dict[int, LayerRule] = {}
    for block in blocks[-k:]:
        for role in ("expand", "depthwise"):
            if role in block:
                rules[block[role]] = LayerRule(block[role], Update.BIAS)
        if "project" in block:
            rules[block["project"]] = LayerRule(block["project"], Update.FULL)
    rules[len(layers) - 1] = LayerRule(len(layers) - 1, Update.FULL)
    first = min(blocks[-k].values())
    return Scheme(spec, tuple(rules.values()), sign_from=first if act == "sign" else None)


def _tte(spec: str, arg: str, layers: tuple[Layer, ...]) -> Scheme:
    """TTE's recipe: the biases of the last ``bias`` layers, plus the weights of chosen
    layers at input-channel ratios (tiny-training's ``n_bias_update``,
    ``manual_weight_idx`` and ``weight_update_ratio``; layer indices count like ours,
    negative ones from the end). Default: TTE's own MobileNetV2-w0.35 configuration.
    A ratio of 0 trains that layer's bias only."""
    p = _params(arg, "tte", {"bias", "weights", "ratios"})
    if "weights" not in p and "ratios" in p:
        raise UsageError("tte: 'ratios' needs 'weights'")
    default_bias, default_idx, default_ratios = _tte_default(layers)
    n_bias = _int(p["bias"], "tte bias") if "bias" in p else default_bias
    if not 1 <= n_bias <= len(layers):
        raise UsageError(f"tte: bias={n_bias} must be in 1..{len(layers)} for this model")
    if "weights" in p:
        idx = [_int(v, "tte weights index") for v in _split_list(p["weights"])]
        default_ratios = (1.0,) * len(idx)
    else:
        idx = list(default_idx)
    if "ratios" in p:
        try:
            ratios = [float(v) for v in _split_list(p["ratios"])]
        except ValueError:
            raise UsageError(f"tte: ratios must be numbers joined by '+' or '-', got {p['ratios']!r}") from None
    else:
        ratios = list(default_ratios)
    if len(ratios) != len(idx):
        raise UsageError(f"tte: {len(idx)} weight layers but {len(ratios)} ratios")
    rules: dict[int, LayerRule] = {-i: LayerRule(-i, Update.BIAS) for i in range(2, n_bias + 1)}
    rules[-1] = LayerRule(-1, Update.FULL)
    for i, r in zip(idx, ratios, strict=True):
        pos = resolve_layer(layers, i).index - len(layers)
        if pos < -n_bias:
            raise UsageError(f"tte: weight layer {i} is not among the last {n_bias} layers whose biases train")
        if not 0.0 <= r <= 1.0:
            raise UsageError(f"tte: ratio {r} outside [0, 1]")
        if r == 0.0 or pos == -1:
            continue
        rules[pos] = LayerRule(pos, Update.FULL) if r >= 1.0 else LayerRule(pos, Update.CHANNELS, ratio=r)
    return Scheme(spec, tuple(rules.values()))


def _tte_default(layers: tuple[Layer, ...]) -> tuple[int, tuple[int, ...], tuple[float, ...]]:
    """TTE's configuration on this model's blocks: (bias count, weight layers, ratios)."""
    blocks = _blocks(layers)
    if not blocks:
        return min(len(layers), 1), (), ()
    first = blocks[-min(TTE_DEFAULT_BLOCKS, len(blocks))]
    start = min(i for i in first.values())
    idx: list[int] = []
    ratios: list[float] = []
    for b, role, ratio in TTE_DEFAULT_WEIGHTS:
        if -b > len(blocks) or role not in blocks[b]:
            continue
        idx.append(blocks[b][role])
        ratios.append(ratio)
    return len(layers) - start, tuple(idx), tuple(ratios)


def _blocks(layers: tuple[Layer, ...]) -> list[dict[str, int]]:
    """Inverted-residual blocks as {role: layer index}: each depthwise conv, the 1×1
    conv right before it (its expansion) and the 1×1 conv right after it (its projection)."""
    out: list[dict[str, int]] = []
    for i, lay in enumerate(layers):
        if lay.kind is not OpKind.DEPTHWISE_CONV_2D:
            continue
        block = {"depthwise": i}
        if i > 0 and layers[i - 1].is_pointwise:
            block["expand"] = i - 1
        if i + 1 < len(layers) and layers[i + 1].is_pointwise:
            block["project"] = i + 1
        out.append(block)
    return out


# ---------------------------------------------------------------- resolution


def get_scheme(spec: str, graph: Graph) -> Scheme:
    """A preset name, or a path to a YAML/JSON scheme file."""
    if Path(spec).suffix in (".yaml", ".yml", ".json"):
        return load_scheme_file(spec)
    return preset(spec, graph)


def resolve(scheme: Scheme, graph: Graph) -> ResolvedScheme:
    """Checks a scheme against a model and fixes, per layer, what trains."""
    layers = linear_layers(graph)
    if not layers:
        raise UsageError("the model has no trainable (conv / depthwise / fully connected) layer")
    chosen: dict[int, LayerRule] = {}
    for entry in scheme.rules:
        layer = resolve_layer(layers, entry.layer)
        if layer.index in chosen:
            raise UsageError(f"scheme {scheme.name!r}: layer {layer.name} is listed twice")
        chosen[layer.index] = entry
    sign_from = None if scheme.sign_from is None else resolve_layer(layers, scheme.sign_from).index
    plans = []
    for layer in layers:
        rule = chosen.get(layer.index)
        update = rule.update if rule is not None else scheme.default
        channels: tuple[int, ...] = ()
        if update is Update.FULL:
            channels = tuple(range(layer.in_channels))
        elif update is Update.CHANNELS:
            assert rule is not None
            n = rule.count if rule.count is not None else max(1, math.floor((rule.ratio or 0.0) * layer.in_channels))
            if n > layer.in_channels:
                raise UsageError(
                    f"scheme {scheme.name!r}: layer {layer.name} has {layer.in_channels} input channels, "
                    f"count {n} asks for more"
                )
            channels = tuple(range(n))
        dynamic = None
        if update is Update.DYNAMIC:
            assert rule is not None
            channels = tuple(range(layer.in_channels))
            dynamic = _dynamic_rows(rule, layer, scheme, graph)
        if channels:
            _check_weight_input(graph, layer, scheme.name)
        sign = sign_from is not None and layer.index >= sign_from
        plans.append(LayerPlan(layer, update, channels, dynamic=dynamic, sign_act=sign))
    return _with_layer_select(scheme, graph, _with_tokens(scheme, graph, ResolvedScheme(scheme.name, tuple(plans))))


def _with_tokens(scheme: Scheme, graph: Graph, rs: ResolvedScheme) -> ResolvedScheme:
    """BSR: the graph must carry the scheme's TOKEN_SELECT ops (:func:`scheme_graph`); records
    the tokens per block and per layer input."""
    if scheme.token_drop is None:
        return rs
    from tinytrain.passes.token_drop import block_tokens

    n_sel = sum(op.kind is OpKind.TOKEN_SELECT for op in graph.ops)
    if n_sel != len(scheme.token_drop.drop_at):
        raise UsageError(
            f"scheme {scheme.name!r} drops tokens after blocks {list(scheme.token_drop.drop_at)}, but the graph has "
            f"{n_sel} TOKEN_SELECT op(s): rewrite it with tinytrain.train.scheme.scheme_graph(scheme, graph) first"
        )
    layer_tokens = tuple(_input_tokens(graph, p.layer) for p in rs.layers)
    return replace(
        rs,
        token_drop=scheme.token_drop,
        block_tokens=tuple(sorted(block_tokens(graph).items())),
        layer_tokens=layer_tokens,
    )


def _input_tokens(graph: Graph, layer: Layer) -> int:
    """Rows of a layer's input: the token axis of a [1, T, D] input, 1 otherwise."""
    shape = graph.tensor(layer.input).shape
    return shape[1] if len(shape) == 3 else 1


def _dynamic_rows(rule: LayerRule, layer: Layer, scheme: Scheme, graph: Graph) -> DynamicRows:
    """k (rows per step) and explore of a DGSU layer; every row when neither ratio nor count
    is given under layer selection (``layer_budget``)."""
    where = f"scheme {scheme.name!r}: layer {layer.name}"
    rows = layer.out_channels
    if layer.bias is None:
        raise UsageError(f"{where} has no bias: dynamic rows are chosen by the bias gradient")
    if rule.count is not None:
        k = rule.count
    elif rule.ratio is not None:
        k = max(1, math.floor(rule.ratio * rows))
    elif scheme.layer_budget is not None:
        k = rows
    else:
        raise UsageError(f"{where}: update 'dynamic' needs 'ratio' or 'count' (rows per step) without 'layer_budget'")
    if k > rows:
        raise UsageError(f"{where} has {rows} weight rows (output channels), count {k} asks for more")
    explore = rule.explore if rule.explore is not None else default_explore(k, rows)
    if explore > k:
        raise UsageError(f"{where}: explore {explore} is more than the {k} rows per step")
    if rows > MAX_DYNAMIC_ROWS:
        raise UsageError(f"{where}: {rows} rows, dynamic selection handles at most {MAX_DYNAMIC_ROWS}")
    del graph
    return DynamicRows(rows, k, explore)


def default_explore(k: int, n: int) -> int:
    """⌈k/4⌉ of k picks per step go by age (0 when all n are picked anyway)."""
    return 0 if k >= n else -(-k // 4)


def _with_layer_select(scheme: Scheme, graph: Graph, rs: ResolvedScheme) -> ResolvedScheme:
    if scheme.layer_budget is None:
        if scheme.alast_blocks:
            raise UsageError(f"scheme {scheme.name!r}: 'alast_blocks' needs 'layer_budget' (blocks trained per step)")
        return rs
    if scheme.alast_blocks:
        return _with_alast_select(scheme, graph, rs)
    cands = [p for p in rs.layers if p.dynamic is not None]
    n = len(cands)
    m = scheme.layer_budget
    if n == 0:
        raise UsageError(f"scheme {scheme.name!r}: 'layer_budget' needs layers with update 'dynamic' (the candidates)")
    if m > n:
        raise UsageError(f"scheme {scheme.name!r}: layer_budget {m} is more than the {n} dynamic layers")
    explore = scheme.layer_explore if scheme.layer_explore is not None else default_explore(m, n)
    if explore > m:
        raise UsageError(f"scheme {scheme.name!r}: layer_explore {explore} is more than layer_budget {m}")
    pos = {p.layer.index: c for c, p in enumerate(cands)}
    layers = tuple(
        replace(p, dynamic=replace(p.dynamic, candidate=pos[p.layer.index])) if p.dynamic is not None else p
        for p in rs.layers
    )
    select = LayerSelect(m, explore, tuple(p.layer.index for p in cands))
    return replace(rs, layers=layers, layer_select=select)


def _with_alast_select(scheme: Scheme, graph: Graph, rs: ResolvedScheme) -> ResolvedScheme:
    """ALaST: the candidates are blocks; each dynamic layer takes its block's position."""
    from tinytrain.train.alast import cls_signal
    from tinytrain.train.vit_blocks import vit_blocks

    vb = vit_blocks(graph)
    blocks = tuple(sorted({vb.resolve(b) for b in scheme.alast_blocks}))
    if len(blocks) != len(scheme.alast_blocks):
        raise UsageError(f"scheme {scheme.name!r}: 'alast_blocks' lists a block twice")
    m = scheme.layer_budget
    assert m is not None
    if not 1 <= m <= len(blocks):
        raise UsageError(f"scheme {scheme.name!r}: layer_budget {m} must be in 1..{len(blocks)} (the candidate blocks)")
    explore = scheme.layer_explore if scheme.layer_explore is not None else 0
    if explore > m:
        raise UsageError(f"scheme {scheme.name!r}: layer_explore {explore} is more than layer_budget {m}")
    pos = {b: j for j, b in enumerate(blocks)}
    layers = []
    for p in rs.layers:
        if p.dynamic is not None:
            b = vb.op_block[p.layer.op_index]
            if b not in pos:
                raise UsageError(
                    f"scheme {scheme.name!r}: dynamic layer {p.layer.name} is in no candidate block {list(blocks)}"
                )
            p = replace(p, dynamic=replace(p.dynamic, candidate=pos[b]))
        layers.append(p)
    if not any(p.dynamic is not None for p in layers):
        raise UsageError(f"scheme {scheme.name!r}: the ALaST blocks have no dynamic layer")
    select = LayerSelect(m, explore, blocks, cls=cls_signal(graph, blocks))
    return replace(rs, layers=tuple(layers), layer_select=select)


def _check_weight_input(graph: Graph, layer: Layer, scheme_name: str) -> None:
    """A weight update needs the layer's int8 input activation during backward."""
    x = graph.tensor(layer.input)
    if x.dtype.is_float or x.quant is None:
        raise UsageError(
            f"scheme {scheme_name!r}: layer {layer.name} cannot update its weights: its input "
            f"{layer.input!r} is not an int8 activation the backward pass can keep"
        )
    if layer.kind is OpKind.DEPTHWISE_CONV_2D and graph.tensor(layer.weight).shape[3] != x.shape[-1]:
        raise UsageError(f"scheme {scheme_name!r}: layer {layer.name}: depth multiplier > 1 cannot train weights")
