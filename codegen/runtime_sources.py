"""Which C files make up the runtime for a backend.

The runtime's reference kernels are ``firmware_templates/runtime/src/tt_*.c`` (plain C99).
The optimized backend (``firmware_templates/runtime/dsp/``, Cortex-M DSP extension with
portable fallbacks, see its README) replaces some of them file for file: each dsp source
defines exactly the functions of the reference file it replaces, with the same signatures
and the same bytes out, so a build compiles either the reference file or its dsp
replacement, never both. Headers are shared (``include/``; the dsp sources also use
``include/tt_dsp.h``). A replacement may ``#include`` the reference file it replaces to
reuse its static helpers (``dsp/tt_fused_block_stages_dsp.c`` does), so a generated
project keeps every ``src/`` file on disk even where it compiles the dsp one.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Literal

from tinytrain.errors import UsageError

RUNTIME = Path(__file__).resolve().parents[1] / "firmware_templates" / "runtime"
RUNTIME_INCLUDE = RUNTIME / "include"
RUNTIME_SRC = RUNTIME / "src"
RUNTIME_DSP = RUNTIME / "dsp"

Backend = Literal["ref", "dsp"]
BACKENDS: tuple[Backend, ...] = ("ref", "dsp")

DSP_REPLACES: MappingProxyType[str, str] = MappingProxyType(
    {
        "tt_fc.c": "dsp/tt_fc_dsp.c",
        "tt_fused_block_stages.c": "dsp/tt_fused_block_stages_dsp.c",
        "tt_linear_bwd.c": "dsp/tt_linear_bwd_dsp.c",
        "tt_update.c": "dsp/tt_update_dsp.c",
    }
)
"""Reference source (in ``src/``) -> its optimized replacement (relative to the runtime dir)."""


def runtime_sources(backend: Backend = "ref") -> list[Path]:
    """The runtime's C sources for ``backend``: every ``src/tt_*.c`` ("ref"), or the same
    with each file of :data:`DSP_REPLACES` swapped for its dsp replacement ("dsp")."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown runtime backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    sources = sorted(RUNTIME_SRC.glob("tt_*.c"))
    if backend == "ref":
        return sources
    return [RUNTIME / DSP_REPLACES[s.name] if s.name in DSP_REPLACES else s for s in sources]


def replaced_sources() -> list[tuple[Path, Path]]:
    """(reference source, dsp replacement) pairs, in the order of :data:`DSP_REPLACES`."""
    return [(RUNTIME_SRC / ref, RUNTIME / dsp) for ref, dsp in DSP_REPLACES.items()]
