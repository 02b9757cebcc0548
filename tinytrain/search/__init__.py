"""Scheme search under a memory budget (TTE's contribution analysis and evolutionary search).

``tinytrain.search(model, data, sram=..., ...)`` returns a :class:`SearchResult`; see
docs/search.md. Modules: :mod:`.space` (candidate space), :mod:`.contrib` (contribution
analysis), :mod:`.evolve` (evolutionary search), :mod:`.cache` (evaluation cache),
:mod:`.executors` (local pool, Ray), :mod:`.tasks` (the work of one task),
:mod:`.features` (frozen-prefix features), :mod:`.report` (table, plot), :mod:`.api`.
"""

import sys
import types
from typing import Any

from tinytrain.search.api import SearchOptions, search
from tinytrain.search.evolve import EvolutionConfig
from tinytrain.search.result import Candidate, SearchResult

__all__ = ["Candidate", "EvolutionConfig", "SearchOptions", "SearchResult", "search"]


class _CallableModule(types.ModuleType):
    """Makes ``tinytrain.search(...)`` work although ``tinytrain.search`` is this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> SearchResult:
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
