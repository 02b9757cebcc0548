"""What a search returns: the chosen scheme, every evaluated candidate, timings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinytrain.train.scheme import Scheme, scheme_from_mapping

if TYPE_CHECKING:
    from tinytrain.search.api import SearchOptions


@dataclass(frozen=True)
class Candidate:
    """One scheme the search trained (or only compiled: ``train_samples`` 0)."""

    name: str
    phase: str  # "probe" (contribution analysis), "validation" (searched), "baseline"
    scheme: dict[str, Any]  # scheme file data (``tinytrain compile --scheme`` accepts it)
    peak_sram: int  # bytes live at the peak (the planner's)
    arena: int  # the arena the plan needs
    fits: bool
    train_samples: int
    accuracy: float | None  # on the validation subset
    loss: float | None  # mean cross-entropy on the validation subset
    predicted_gain: float | None  # the summed contributions (searched schemes)
    cached: bool
    seconds: float  # the training run's time (when it ran)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": self.phase,
            "scheme": self.scheme,
            "peak_sram_bytes": self.peak_sram,
            "arena_bytes": self.arena,
            "fits": self.fits,
            "train_samples": self.train_samples,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "predicted_gain": self.predicted_gain,
            "cached": self.cached,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class SearchResult:
    model: str
    data: str
    options: SearchOptions
    executor: str
    workers: int
    space: dict[str, Any]
    contributions: dict[str, Any]
    best: Candidate
    candidates: tuple[Candidate, ...]  # probes, then the validated schemes and baselines
    searched: int  # fitting genomes the evolutionary search met
    evaluations: int  # training runs done (not from the cache)
    compiles: int  # planner runs done (not from the cache)
    cache_hits: int
    timings: dict[str, float]

    @property
    def scheme(self) -> Scheme:
        """The chosen scheme."""
        return scheme_from_mapping(self.best.scheme)

    @property
    def baselines(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.phase == "baseline")

    @property
    def validated(self) -> tuple[Candidate, ...]:
        return tuple(c for c in self.candidates if c.phase == "validation")

    def scheme_yaml(self) -> str:
        import yaml

        data = dict(self.best.scheme)
        data["name"] = "searched"
        head = (
            f"# tinytrain search: {self.model}, SRAM budget {self.options.sram_bytes} bytes, "
            f"peak {self.best.peak_sram} bytes, validation accuracy {self.best.accuracy}\n"
        )
        return head + yaml.safe_dump(data, sort_keys=False)

    def write_scheme(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.scheme_yaml())
        return p

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {
            "tinytrain_search": 1,
            "model": self.model,
            "data": self.data,
            "budget": {"sram_bytes": o.sram_bytes, "flash_bytes": o.flash_bytes},
            "options": {
                "classes": o.classes,
                "sample_shape": list(o.sample_shape) if o.sample_shape else None,
                "seed": o.seed,
                "blocks": o.blocks,
                "ratios": list(o.ratios),
                "probe_samples": o.probe_samples,
                "val_samples": o.val_samples,
                "long_samples": o.long_samples,
                "epochs": o.epochs,
                "lr": o.lr,
                "metric": o.metric,
                "top": o.top,
                "baselines": list(o.baselines),
                "max_probes": o.max_probes,
                "evolution": {
                    "population": o.evolution.population,
                    "generations": o.evolution.generations,
                    "elite": o.evolution.elite,
                    "mutation": o.evolution.mutation,
                    "patience": o.evolution.patience,
                },
            },
            "executor": {"kind": self.executor, "workers": self.workers},
            "space": self.space,
            "contributions": self.contributions,
            "best": self.best.to_json(),
            "candidates": [c.to_json() for c in self.candidates],
            "searched_genomes": self.searched,
            "evaluations": self.evaluations,
            "compiles": self.compiles,
            "cache_hits": self.cache_hits,
            "timings_seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }
