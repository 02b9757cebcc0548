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

RUNTIME_X86 = RUNTIME / "x86"

Backend = Literal["ref", "dsp", "x86"]
BACKENDS: tuple[Backend, ...] = ("ref", "dsp", "x86")

DSP_REPLACES: MappingProxyType[str, str] = MappingProxyType(
    {
        "tt_bias_step.c": "dsp/tt_bias_step_dsp.c",
        "tt_fc.c": "dsp/tt_fc_dsp.c",
        "tt_fused_block_stages.c": "dsp/tt_fused_block_stages_dsp.c",
        "tt_linear_bwd.c": "dsp/tt_linear_bwd_dsp.c",
        "tt_mask.c": "dsp/tt_mask_dsp.c",
        "tt_pool_bwd.c": "dsp/tt_pool_bwd_dsp.c",
        "tt_update.c": "dsp/tt_update_dsp.c",
    }
)
"""Reference source (in ``src/``) -> its optimized replacement (relative to the runtime dir)."""

X86_REPLACES: MappingProxyType[str, str] = MappingProxyType(
    {
        "tt_fc.c": "x86/tt_fc_x86.c",
        "tt_fused_block_stages.c": "x86/tt_fused_block_stages_x86.c",
        "tt_linear_bwd.c": "x86/tt_linear_bwd_x86.c",
        "tt_mask.c": "x86/tt_mask_x86.c",
        "tt_update.c": "dsp/tt_update_dsp.c",
    }
)
"""The host backend (``x86/``, see its README): AVX2 stages where the compiler targets AVX2
(``-march=native`` on the build machine), the dsp files' portable C elsewhere."""

REPLACES: MappingProxyType[str, MappingProxyType[str, str]] = MappingProxyType(
    {"ref": MappingProxyType({}), "dsp": DSP_REPLACES, "x86": X86_REPLACES}
)


def runtime_sources(backend: Backend = "ref") -> list[Path]:
    """The runtime's C sources for ``backend``: every ``src/tt_*.c`` ("ref"), or the same
    with each file of :data:`DSP_REPLACES` ("dsp") / :data:`X86_REPLACES` ("x86") swapped
    for its replacement."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown runtime backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    sources = sorted(RUNTIME_SRC.glob("tt_*.c"))
    return [swap_source(s, backend) for s in sources]


def swap_source(source: Path, backend: Backend) -> Path:
    """``source`` (a runtime ``src/`` file, by name) or its replacement in ``backend``."""
    if backend not in BACKENDS:
        raise UsageError(f"unknown runtime backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    table = REPLACES[backend]
    return RUNTIME / table[source.name] if source.name in table else source


def replaced_sources(backend: Backend = "dsp") -> list[tuple[Path, Path]]:
    """(reference source, replacement) pairs of ``backend``, in the order of its table."""
    return [(RUNTIME_SRC / ref, RUNTIME / rep) for ref, rep in REPLACES[backend].items()]
