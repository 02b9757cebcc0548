"""The ALaST preset (docs/schemes.md, "ALaST"; Devoto et al., "Adaptive Layer Selection for
Efficient Vision Transformer Fine-Tuning", arXiv 2408.08670):
``alast[:blocks=B1+B2+…][,train_layers=M | budget=F][,explore=E][,drop_at=D1+…][,keep=R]``.

Candidates: the listed transformer blocks (default: the last :data:`ALAST_DEFAULT_BLOCKS`).
Every step the forward pass measures how much each
candidate changes the class token (tinytrain/train/alast.py); the M blocks of the largest
change (``budget=F``: ``M = max(1, round(F · N))`` of the N candidates; default ⌈N/2⌉)
update the weights and biases of their fully connected layers in that step's backward pass,
the others their biases only (a bias step costs a row sum; the paper freezes them).
``explore=E`` (default 0, as the paper): E of the M picks go to the blocks trained longest
ago instead. The head trains every step. ``drop_at``/``keep``: the
token budget of the frozen blocks before the candidates, as BSR's token dropping
(tinytrain/passes/token_drop.py), so the candidate blocks run on fewer tokens; by default
after the block right before the first candidate (when there is one) with ``keep=0.5``,
``drop_at=none`` for none. The default, ``alast`` = ``alast:blocks=1+2+3,train_layers=2,
drop_at=0,keep=0.5`` on the shipped 4-block tiny ViT, links into 256 KB on qemu-m7.
"""

from __future__ import annotations

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.train.scheme import DEFAULT_KEEP, LayerRule, Scheme, Update, _int, _params

ALAST_DEFAULT_BLOCKS = 3


def alast_preset(spec: str, arg: str, graph: Graph) -> Scheme:
    from tinytrain.passes.token_drop import TokenDrop, check_keep
    from tinytrain.train.vit_blocks import head_layer, vit_blocks

    p = _params(arg, "alast", {"blocks", "train_layers", "budget", "explore", "drop_at", "keep"})
    vb = vit_blocks(graph)
    if "blocks" in p:
        blocks = [vb.resolve(_int(v, "alast block")) for v in p["blocks"].split("+") if v]
        if len(set(blocks)) != len(blocks) or not blocks:
            raise UsageError(f"alast: blocks must list distinct blocks joined by '+', got {p['blocks']!r}")
    else:
        blocks = list(vb.blocks[-min(ALAST_DEFAULT_BLOCKS, len(vb.blocks)) :])
    blocks.sort()
    n = len(blocks)
    if "train_layers" in p and "budget" in p:
        raise UsageError("alast: give train_layers=M or budget=F, not both")
    if "train_layers" in p:
        m = _int(p["train_layers"], "alast train_layers")
    elif "budget" in p:
        f = _fraction(p["budget"], "alast budget")
        m = max(1, round(f * n))
    else:
        m = -(-n // 2)
    if not 1 <= m <= n:
        raise UsageError(f"alast: train_layers={m} must be in 1..{n} (the candidate blocks {blocks})")
    explore = _int(p["explore"], "alast explore") if "explore" in p else 0
    if not 0 <= explore <= m:
        raise UsageError(f"alast: explore={explore} must be in 0..{m} (the blocks trained per step)")
    drop = None
    default_drop = [b for b in vb.blocks if b < blocks[0]][-1:]
    text = p.get("drop_at", "+".join(str(b) for b in default_drop))
    if text not in ("", "none"):
        drops = sorted(vb.resolve(_int(v, "alast drop_at block")) for v in text.split("+") if v)
        late = [d for d in drops if d >= blocks[0]]
        if late:
            raise UsageError(
                f"alast: drop_at block(s) {late} are not before the first candidate block {blocks[0]}: tokens are "
                "dropped only after blocks that never train"
            )
        keep = _fraction(p.get("keep", str(DEFAULT_KEEP)), "alast keep")
        check_keep(keep)
        drop = TokenDrop(tuple(drops), keep)
    elif "keep" in p:
        raise UsageError("alast: keep needs a block to drop tokens after (drop_at, or a block before the candidates)")
    head = head_layer(graph, vb)
    rules = [LayerRule(i, Update.DYNAMIC) for b in blocks for i in vb.layers[b]]
    rules.append(LayerRule(head.index, Update.FULL))
    return Scheme(
        spec, tuple(rules), layer_budget=m, layer_explore=explore, token_drop=drop, alast_blocks=tuple(blocks)
    )


def _fraction(value: str, what: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise UsageError(f"{what} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < f <= 1.0:
        raise UsageError(f"{what} must be in (0, 1], got {f}")
    return f
