"""Evolutionary search: the genome of largest predicted gain that fits the budget.

The fitness of a genome is its summed contribution (:meth:`Contributions.gain`); a
genome is admitted only when its program fits the SRAM and flash budgets, which the
``fits`` oracle answers with the real planner (its answers are cached by the caller).
Each generation keeps the ``elite`` best genomes and fills the population with children
(uniform crossover of two elite parents, then per-gene mutation: a ratio gene moves one
step or is switched off, the bias depth moves one step), repaired so that the biases
reach every weight layer; children that do not fit or were seen before are dropped.
Everything random comes from one seeded generator and ties are broken by the genome, so
a seed gives one result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tinytrain.search.contrib import Contributions
from tinytrain.search.space import CandidateSpace, Genome


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 24
    generations: int = 20
    elite: int = 8
    mutation: float = 0.25  # per-gene probability
    patience: int = 5  # generations without a better best before stopping
    seed: int = 0


@dataclass(frozen=True)
class Scored:
    genome: Genome
    gain: float


def _order(s: Scored) -> tuple[float, int, tuple[int, ...]]:
    return (-s.gain, s.genome.depth, s.genome.weights)


def _available(space: CandidateSpace, contrib: Contributions) -> list[list[int]]:
    """Per weight layer, the ratio genes that may be used (0 always)."""
    return [[0] + [r + 1 for r, v in enumerate(row) if v is not None] for row in contrib.weights]


def _random(space: CandidateSpace, contrib: Contributions, rng: np.random.Generator, density: float) -> Genome:
    depths = [j for j, v in enumerate(contrib.bias) if v is not None]
    genes = []
    for options in _available(space, contrib):
        genes.append(int(rng.choice(options[1:])) if len(options) > 1 and rng.random() < density else 0)
    return space.repair(Genome(int(rng.choice(depths)), tuple(genes)))


def _mutate(
    g: Genome, space: CandidateSpace, contrib: Contributions, rng: np.random.Generator, p: float
) -> Genome:
    depths = [j for j, v in enumerate(contrib.bias) if v is not None]
    depth = g.depth
    if rng.random() < p:
        pos = depths.index(depth) if depth in depths else 0
        depth = depths[int(np.clip(pos + rng.choice((-1, 1)), 0, len(depths) - 1))]
    genes = list(g.weights)
    for k, options in enumerate(_available(space, contrib)):
        if len(options) == 1 or rng.random() >= p:
            continue
        if genes[k] == 0 or rng.random() < 0.25:
            genes[k] = int(rng.choice(options))
        else:
            pos = options.index(genes[k])
            genes[k] = options[int(np.clip(pos + rng.choice((-1, 1)), 0, len(options) - 1))]
    return space.repair(Genome(depth, tuple(genes)))


def _cross(a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
    pick = rng.random(len(a.weights)) < 0.5
    genes = tuple(x if m else y for x, y, m in zip(a.weights, b.weights, pick, strict=True))
    return Genome(a.depth if rng.random() < 0.5 else b.depth, genes)


def evolve(
    space: CandidateSpace,
    contrib: Contributions,
    fits: Callable[[Genome], bool],
    config: EvolutionConfig,
    progress: Callable[[int], None] | None = None,
) -> list[Scored]:
    """Every fitting genome met, best first (by gain, then the smaller depth, then genes)."""
    rng = np.random.default_rng(config.seed)
    seen: dict[Genome, Scored | None] = {}

    def admit(g: Genome) -> Scored | None:
        if g in seen:
            return None
        gain = contrib.gain(g)
        s = Scored(g, gain) if gain is not None and fits(g) else None
        seen[g] = s
        return s

    population: list[Scored] = []
    # Seeds: each bias depth alone (the smallest fitting schemes), then random genomes.
    for j, v in enumerate(contrib.bias):
        if v is not None:
            s = admit(Genome(j, (0,) * len(space.weight_layers)))
            if s is not None:
                population.append(s)
    if not population:
        return []
    attempts = 0
    while len(population) < config.population and attempts < 4 * config.population:
        attempts += 1
        s = admit(_random(space, contrib, rng, density=float(rng.uniform(0.05, 0.4))))
        if s is not None:
            population.append(s)
    best = min(population, key=_order)
    stale = 0
    for _ in range(config.generations):
        population.sort(key=_order)
        elite = population[: config.elite]
        children: list[Scored] = []
        attempts = 0
        while len(children) < config.population - len(elite) and attempts < 4 * config.population:
            attempts += 1
            a, b = (elite[int(i)] for i in rng.integers(0, len(elite), 2))
            child = _mutate(space.repair(_cross(a.genome, b.genome, rng)), space, contrib, rng, config.mutation)
            s = admit(child)
            if s is not None:
                children.append(s)
        population = elite + children
        top = min(population, key=_order)
        if progress is not None:
            progress(1)
        if _order(top) < _order(best):
            best, stale = top, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    return sorted((s for s in seen.values() if s is not None), key=_order)
