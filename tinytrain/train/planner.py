"""The arena memory planner: one offset per buffer in one statically sized arena.

Input: a sequence of :class:`BufferRequest` (name, size in bytes, alignment, first and
last step of its lifetime, kind). Steps are positions in the training program
(``0 … num_steps − 1``); a lifetime is inclusive at both ends, so two buffers whose
lifetimes share one step may not share memory (the op at that step reads one while it
writes the other). ``trainable`` and ``state`` buffers persist across training steps:
whatever steps they give, the planner keeps them live over the whole program.

Algorithm (the idea of TensorFlow Lite Micro's ``GreedyMemoryPlanner``, written here
from scratch). The persistent buffers are stacked at the bottom of the arena (largest
first): they conflict with every other buffer, so no placement can do better with them.
The others are placed above them one by one in a fixed order; for each, collect the
already placed buffers whose lifetimes intersect its own, and put it at the lowest
offset, rounded up to its alignment, where it fits in a gap between them (or above all
of them). The result is not optimal (the problem is NP-hard) but is usually within a
few percent of the lower bound, the peak of live bytes over the program.
:func:`plan_buffers` tries a few orders (``ORDERS``) and keeps the smallest arena; the
first order is TFLite Micro's (size descending), ties broken by the longer lifetime,
then by request order. Each order is then *refined*: the buffer that reaches the top of
the arena moves to the front of the order and everything is placed again, for up to
``REFINE_ROUNDS`` rounds (fewer for very large programs: ``REFINE_WORK``), stopping
once the arena is within ``1/REFINE_SLACK`` of the lower bound; the smallest arena
seen is kept. A plan is a deterministic function of its requests.

Alignment: every offset is a multiple of the buffer's ``alignment`` (a power of two,
at least ``MIN_ALIGNMENT`` = 4, the word access of every Cortex-M). The default,
``DEFAULT_ALIGNMENT`` = 16, is TFLite Micro's arena buffer alignment: enough for int32
and int64 data, for 64-bit (LDRD/LDM) and 128-bit (Helium) loads, at the cost of at most
15 bytes of padding per buffer. The arena itself must be declared with the largest
alignment of its buffers (:attr:`Plan.alignment`).

Sizes are used as given (no rounding); ``arena_size`` is the highest end offset. A
zero-size buffer occupies nothing and is placed at offset 0.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from tinytrain.errors import TinytrainError, UsageError

DEFAULT_ALIGNMENT = 16
MIN_ALIGNMENT = 4
MAX_LISTED = 10  # buffers named in an over-budget message


class BufferKind(enum.Enum):
    ACTIVATION = "activation"  # a forward value
    GRADIENT = "gradient"  # a gradient tensor (mantissas) of the backward pass
    MASK = "mask"  # 1-bit clamp masks saved for the backward pass
    SAVED = "saved"  # (a channel subset of) an activation kept for a weight gradient
    SCRATCH = "scratch"  # a kernel's temporary (ring buffer, accumulator row, ...)
    TRAINABLE = "trainable"  # a weight/bias slice updated on device (persistent)
    STATE = "state"  # optimizer state, PRNG state (persistent)


PERSISTENT_KINDS = frozenset({BufferKind.TRAINABLE, BufferKind.STATE})

REFINE_ROUNDS = 12  # re-placements per order (move the topmost buffer to the front) ...
REFINE_WORK = 4800  # ... at most REFINE_WORK // n of them for n non-persistent buffers ...
REFINE_SLACK = 512  # ... until the arena is within peak / REFINE_SLACK of the peak

ORDERS = ("size", "area", "lifetime")
"""Placement orders tried by :func:`plan_buffers`: ``size`` (bytes, descending: TFLite
Micro's), ``area`` (bytes × steps, descending), ``lifetime`` (steps, then bytes,
descending)."""


class OverBudgetError(TinytrainError):
    """The plan needs more arena than the budget allows.

    ``needed``/``budget`` in bytes; ``peak_step`` the step of the peak of live bytes;
    ``live`` the (name, size) of every buffer live at that step, largest first.
    """

    def __init__(self, needed: int, budget: int, peak_step: int, peak_live: int, live: Sequence[tuple[str, int]]):
        self.needed = needed
        self.budget = budget
        self.peak_step = peak_step
        self.peak_live = peak_live
        self.live = tuple(live)
        shown = ", ".join(f"{name} ({_kb(size)})" for name, size in self.live[:MAX_LISTED])
        rest = self.live[MAX_LISTED:]
        if rest:
            shown += f", and {len(rest)} more ({_kb(sum(s for _, s in rest))})"
        msg = (
            f"needs {_kb(needed)}, budget {_kb(budget)} (over by {_kb(needed - budget)}); "
            f"live at the peak (step {peak_step}): {shown or '-'}"
        )
        if peak_live <= budget:
            msg += f" [the live bytes peak at {_kb(peak_live)}: the rest is fragmentation]"
        super().__init__(msg)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB"


@dataclass(frozen=True)
class BufferRequest:
    """One buffer to place. ``kind`` may be given as a :class:`BufferKind` or its value."""

    name: str
    size: int
    first: int
    last: int
    kind: BufferKind = BufferKind.ACTIVATION
    alignment: int = DEFAULT_ALIGNMENT

    def __post_init__(self) -> None:
        if not isinstance(self.kind, BufferKind):
            try:
                object.__setattr__(self, "kind", BufferKind(self.kind))
            except ValueError:
                kinds = ", ".join(k.value for k in BufferKind)
                raise UsageError(f"buffer {self.name!r}: unknown kind {self.kind!r} (one of {kinds})") from None
        for what, v in (("size", self.size), ("first", self.first), ("last", self.last), ("alignment", self.alignment)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise UsageError(f"buffer {self.name!r}: {what} must be an int, got {v!r}")
            object.__setattr__(self, what, int(v))
        if self.size < 0:
            raise UsageError(f"buffer {self.name!r}: negative size {self.size}")
        if self.first < 0 or self.last < self.first:
            raise UsageError(f"buffer {self.name!r}: bad lifetime [{self.first}, {self.last}]")
        a = self.alignment
        if a < MIN_ALIGNMENT or a & (a - 1):
            raise UsageError(f"buffer {self.name!r}: alignment {a} is not a power of two >= {MIN_ALIGNMENT}")


@dataclass(frozen=True)
class Placement:
    """A placed buffer: its request, offset and effective lifetime (persistent kinds span the program)."""

    request: BufferRequest
    offset: int
    first: int
    last: int

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def size(self) -> int:
        return self.request.size

    @property
    def end(self) -> int:
        return self.offset + self.request.size


@dataclass(frozen=True)
class Plan:
    """The arena layout. ``buffers`` are in request order; ``live_bytes[s]`` is the sum of
    the sizes of the buffers live at step ``s``; ``peak_live`` its maximum (the lower
    bound of any arena), first reached at ``peak_step``."""

    buffers: tuple[Placement, ...]
    arena_size: int
    peak_live: int
    peak_step: int
    live_bytes: tuple[int, ...]
    alignment: int
    strategy: str
    _by_name: Mapping[str, Placement] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", MappingProxyType({p.name: p for p in self.buffers}))

    @property
    def num_steps(self) -> int:
        return len(self.live_bytes)

    def placement(self, name: str) -> Placement:
        try:
            return self._by_name[name]
        except KeyError:
            raise UsageError(f"the plan has no buffer {name!r}") from None

    def offset(self, name: str) -> int:
        return self.placement(name).offset

    def live_at(self, step: int) -> tuple[Placement, ...]:
        """The buffers live at ``step``, largest first (ties in request order)."""
        live = [p for p in self.buffers if p.first <= step <= p.last and p.size > 0]
        return tuple(sorted(live, key=lambda p: -p.size))

    def to_json(self) -> dict[str, Any]:
        return {
            "arena_size": self.arena_size,
            "peak_live_bytes": self.peak_live,
            "peak_step": self.peak_step,
            "alignment": self.alignment,
            "num_steps": self.num_steps,
            "strategy": self.strategy,
            "buffers": [
                {
                    "name": p.name,
                    "kind": p.request.kind.value,
                    "size": p.size,
                    "alignment": p.request.alignment,
                    "offset": p.offset,
                    "first": p.first,
                    "last": p.last,
                }
                for p in self.buffers
            ],
            "live_bytes": list(self.live_bytes),
        }


def plan_buffers(
    requests: Sequence[BufferRequest], *, num_steps: int | None = None, orders: Sequence[str] = ORDERS
) -> Plan:
    """Places every buffer; ``num_steps`` defaults to one past the largest last step."""
    reqs = tuple(requests)
    names = set()
    for r in reqs:
        if not isinstance(r, BufferRequest):
            raise UsageError(f"expected BufferRequest, got {type(r).__name__}")
        if r.name in names:
            raise UsageError(f"two buffers are named {r.name!r}")
        names.add(r.name)
    bad = [o for o in orders if o not in ORDERS]
    if bad or not orders:
        raise UsageError(f"unknown placement order(s) {bad or list(orders)} (known: {', '.join(ORDERS)})")
    span = 1 + max((r.last for r in reqs), default=-1)
    steps = span if num_steps is None else num_steps
    if steps < span:
        raise UsageError(f"num_steps {steps} but a buffer lives until step {span - 1}")
    n = len(reqs)
    sizes = np.array([r.size for r in reqs], dtype=np.int64)
    aligns = np.array([r.alignment for r in reqs], dtype=np.int64)
    persistent = np.array([r.kind in PERSISTENT_KINDS for r in reqs], dtype=bool)
    firsts = np.where(persistent, 0, np.array([r.first for r in reqs], dtype=np.int64)).astype(np.int64)
    lasts = np.where(persistent, steps - 1, np.array([r.last for r in reqs], dtype=np.int64)).astype(np.int64)

    live = np.zeros(steps + 1, dtype=np.int64)
    np.add.at(live, firsts, sizes)
    np.add.at(live, lasts + 1, -sizes)
    live = np.cumsum(live)[:steps]
    peak = int(live.max(initial=0))
    peak_step = int(np.argmax(live)) if steps else 0

    # The persistent buffers, stacked from offset 0 (size descending, then request order).
    offsets = np.zeros(n, dtype=np.int64)
    top = 0
    for i in np.lexsort((np.arange(n), -sizes)).tolist():
        if persistent[i] and sizes[i] > 0:
            offsets[i] = -(-top // int(aligns[i])) * int(aligns[i])
            top = int(offsets[i] + sizes[i])
    rest = np.flatnonzero(~persistent)
    arena = top
    strategy = orders[0]
    if rest.size:
        base = -(-top // int(aligns[rest].max())) * int(aligns[rest].max())
        s_r, a_r, f_r, l_r = sizes[rest], aligns[rest], firsts[rest], lasts[rest]
        rounds = min(REFINE_ROUNDS, REFINE_WORK // rest.size)
        bound = peak + peak // REFINE_SLACK - base
        best: tuple[int, str, np.ndarray] | None = None
        for order_name in orders:
            order = _order(order_name, s_r, f_r, l_r)
            a, offs = _refine(order, s_r, a_r, f_r, l_r, bound, rounds)
            if best is None or a < best[0]:
                best = (a, order_name, offs)
        assert best is not None
        offs = best[2]
        offsets[rest] = np.where(s_r > 0, offs + base, 0)
        arena = max(top, base + best[0]) if best[0] > 0 else top
        strategy = best[1]
    placements = tuple(Placement(r, int(offsets[i]), int(firsts[i]), int(lasts[i])) for i, r in enumerate(reqs))
    return Plan(
        buffers=placements,
        arena_size=arena,
        peak_live=peak,
        peak_step=peak_step,
        live_bytes=tuple(int(v) for v in live),
        alignment=int(aligns.max(initial=MIN_ALIGNMENT)),
        strategy=strategy,
    )


def plan_or_raise(
    requests: Sequence[BufferRequest],
    budget_bytes: int,
    *,
    num_steps: int | None = None,
    orders: Sequence[str] = ORDERS,
) -> Plan:
    """:func:`plan_buffers`, raising :class:`OverBudgetError` when the arena exceeds ``budget_bytes``."""
    plan = plan_buffers(requests, num_steps=num_steps, orders=orders)
    if plan.arena_size > budget_bytes:
        live = [(p.name, p.size) for p in plan.live_at(plan.peak_step)]
        raise OverBudgetError(plan.arena_size, budget_bytes, plan.peak_step, plan.peak_live, live)
    return plan


def _order(name: str, sizes: np.ndarray, firsts: np.ndarray, lasts: np.ndarray) -> np.ndarray:
    """Indices in placement order (np.lexsort: the last key is the primary one)."""
    idx = np.arange(sizes.size)
    duration = lasts - firsts + 1
    if name == "size":
        return np.lexsort((idx, -duration, -sizes))
    if name == "area":
        return np.lexsort((idx, -sizes, -(sizes * duration)))
    return np.lexsort((idx, -sizes, -duration))


def _refine(
    order: np.ndarray,
    sizes: np.ndarray,
    aligns: np.ndarray,
    firsts: np.ndarray,
    lasts: np.ndarray,
    bound: int,
    rounds: int,
) -> tuple[int, np.ndarray]:
    """Greedy placement in ``order``, then up to ``rounds`` re-placements, each with the
    buffer that ends highest (the first such one in the current order) moved to the front
    of the order; returns the smallest ``(arena, offsets)`` seen. Stops early at
    ``bound`` (the peak of live bytes) or when the topmost buffer is already first."""
    cur = order.tolist()
    offsets = _greedy(order, sizes, aligns, firsts, lasts)
    ends = offsets + sizes
    best_arena, best = int(ends.max(initial=0)), offsets
    for _ in range(rounds):
        if best_arena <= bound:
            break
        top = int(ends.max(initial=0))
        pos = next(k for k, i in enumerate(cur) if ends[i] == top)
        if pos == 0:
            break
        cur.insert(0, cur.pop(pos))
        offsets = _greedy(np.asarray(cur, dtype=np.int64), sizes, aligns, firsts, lasts)
        ends = offsets + sizes
        arena = int(ends.max(initial=0))
        if arena < best_arena:
            best_arena, best = arena, offsets
    return best_arena, best


def _greedy(
    order: np.ndarray, sizes: np.ndarray, aligns: np.ndarray, firsts: np.ndarray, lasts: np.ndarray
) -> np.ndarray:
    """Greedy first-fit placement of the buffers in ``order``; returns the offsets.

    The placed buffers whose lifetimes intersect the current one are found with one
    vectorised test; the gap search runs in plain Python over them (few, in a real
    program) or vectorised when there are many.
    """
    n = sizes.size
    offsets = np.zeros(n, dtype=np.int64)
    p_first = np.empty(n, dtype=np.int64)
    p_last = np.empty(n, dtype=np.int64)
    p_lo = np.empty(n, dtype=np.int64)
    p_hi = np.empty(n, dtype=np.int64)
    first_l, last_l, size_l, align_l = firsts.tolist(), lasts.tolist(), sizes.tolist(), aligns.tolist()
    k = 0
    for i in order.tolist():
        size = size_l[i]
        if size == 0:
            continue
        align = align_l[i]
        hit = np.flatnonzero((p_first[:k] <= last_l[i]) & (p_last[:k] >= first_l[i])) if k else ()
        if len(hit) == 0:
            offset = 0
        elif len(hit) <= _SMALL:
            offset = 0
            for lo, hi in sorted(zip(p_lo[hit].tolist(), p_hi[hit].tolist(), strict=True)):
                if offset + size <= lo:
                    break
                if hi > offset:
                    offset = (hi + align - 1) // align * align
        else:
            offset = _first_fit(p_lo[hit], p_hi[hit], size, align)
        offsets[i] = offset
        p_first[k], p_last[k], p_lo[k], p_hi[k] = first_l[i], last_l[i], offset, offset + size
        k += 1
    return offsets


_SMALL = 48  # conflicts scanned in plain Python


def _first_fit(lo: np.ndarray, hi: np.ndarray, size: int, align: int) -> int:
    """Lowest aligned offset where ``size`` bytes overlap none of the ``[lo, hi)`` ranges."""
    by_lo = np.argsort(lo, kind="stable")
    lo = lo[by_lo]
    # Candidate before range j: the aligned top of every range that starts before it.
    cand = np.empty(lo.size + 1, dtype=np.int64)
    cand[0] = 0
    np.maximum.accumulate(hi[by_lo], out=cand[1:])
    cand = (cand + (align - 1)) // align * align
    fits = cand[:-1] + size <= lo
    return int(cand[int(np.argmax(fits)) if bool(fits.any()) else lo.size])
