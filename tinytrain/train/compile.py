"""``tinytrain compile``: model + scheme → training program, memory plan and artifact.

The output directory holds everything ``simulate`` (and later the code generator)
needs, so that no consumer re-derives anything:

* ``model.tflite`` — the model being trained (new head, logits output);
* ``scheme.json`` — the resolved scheme as a scheme file (explicit layers and counts);
* ``plan.json`` — SRAM / flash / MACs figures, the steps and every buffer's placement;
* ``program.txt`` — the steps in execution order, one line each.

Compiling is deterministic: the same model, scheme and options give the same files.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinytrain.errors import TinytrainError, UsageError
from tinytrain.frontends.load import load_model
from tinytrain.frontends.tflite import load_tflite
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.graph import Graph
from tinytrain.passes.replace_head import HeadInit, replace_head
from tinytrain.passes.strip_softmax import strip_softmax
from tinytrain.train.build import TrainingProgram, build_training_program
from tinytrain.train.dgsu import dgsu_plan_summary
from tinytrain.train.memory import ProgramMemory, plan_program, program_memory, saved_activations
from tinytrain.train.planner import Plan
from tinytrain.train.scheme import (
    ResolvedScheme,
    Scheme,
    Update,
    get_scheme,
    load_scheme_file,
    resolve,
    scheme_graph,
    token_drop_data,
)

MODEL_FILE = "model.tflite"
SCHEME_FILE = "scheme.json"
PLAN_FILE = "plan.json"
PROGRAM_FILE = "program.txt"
KB = 1024


class OverFlashError(TinytrainError):
    """The model's constants do not fit the flash budget."""


@dataclass(frozen=True)
class CompileOptions:
    scheme: str
    classes: int | None = None
    head_init: HeadInit = "zero"
    seed: int = 0
    sram_bytes: int = 256 * KB
    flash_bytes: int = 1024 * KB
    sample_bytes: int | None = None  # native sample size when the device preprocesses
    batch: int = 1  # samples whose gradients are accumulated per update
    momentum: float = 0.0  # SGD momentum μ (0 = none); costs a state buffer per trained tensor

    @property
    def momentum_q15(self) -> int:
        """μ in Q15 (0.9 → 29491), the integer the device uses."""
        return momentum_q15(self.momentum)


def momentum_q15(mu: float) -> int:
    if not 0.0 <= mu < 1.0:
        raise UsageError(f"momentum must be in [0, 1), got {mu}")
    return int(mu * (1 << 15) + 0.5)


@dataclass(frozen=True)
class Compiled:
    graph: Graph
    scheme: ResolvedScheme
    program: TrainingProgram
    memory: ProgramMemory
    plan: Plan
    options: CompileOptions
    seconds: float
    # The model as read, before the scheme's graph passes (BSR's TOKEN_SELECT); the artifact's
    # model.tflite. None: the same as ``graph``.
    source: Graph | None = None


def parse_size(text: str) -> int:
    """``256KB``, ``1MB``, ``262144`` → bytes (KB = 1024 bytes)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t.endswith("K"):
        mult, t = KB, t[:-1]
    elif t.endswith("M"):
        mult, t = KB * KB, t[:-1]
    try:
        value = float(t)
    except ValueError:
        raise UsageError(f"bad size {text!r} (e.g. 256KB, 1MB, 65536)") from None
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return int(value * mult)


def prepare_graph(model: str | Path, classes: int | None, head_init: HeadInit, seed: int) -> Graph:
    graph = load_model(model)
    if classes is not None:
        if classes < 2:
            raise UsageError(f"--classes must be at least 2, got {classes}")
        return replace_head(graph, classes, head_init, seed)
    return strip_softmax(graph)


def compile_graph(graph: Graph, scheme_spec: str, options: CompileOptions) -> Compiled:
    return compile_scheme(graph, get_scheme(scheme_spec, graph), options)


def compile_scheme(graph: Graph, scheme: Scheme, options: CompileOptions) -> Compiled:
    """Resolves the scheme, builds the program and plans its memory within the budgets."""
    t0 = time.perf_counter()
    source, graph = graph, scheme_graph(scheme, graph)
    resolved = resolve(scheme, graph)
    if resolved.dynamic and (options.batch > 1 or options.momentum > 0):
        raise UsageError(
            f"scheme {resolved.name!r} has dynamic (DGSU) layers, whose rows change every step: "
            "--batch (gradient accumulation) and --momentum are not supported with them"
        )
    program = build_training_program(graph, resolved)
    memory = program_memory(program, options.sample_bytes, options.batch, momentum=options.momentum > 0)
    plan = plan_program(memory, options.sram_bytes)
    if memory.flash_bytes > options.flash_bytes:
        raise OverFlashError(
            f"needs {memory.flash_bytes / KB:.1f} KB of flash for the model's constants, budget "
            f"{options.flash_bytes / KB:.1f} KB (over by {(memory.flash_bytes - options.flash_bytes) / KB:.1f} KB)"
        )
    seconds = time.perf_counter() - t0
    return Compiled(graph, resolved, program, memory, plan, options, seconds, None if source is graph else source)


def compile_model(model: str | Path, options: CompileOptions) -> Compiled:
    graph = prepare_graph(model, options.classes, options.head_init, options.seed)
    return compile_graph(graph, options.scheme, options)


def scheme_file_data(scheme: ResolvedScheme) -> dict[str, Any]:
    """The resolved scheme as a scheme file: every trained layer by index, explicit counts."""
    layers: list[dict[str, Any]] = []
    for p in scheme.layers:
        if p.update is Update.FROZEN:
            continue
        entry: dict[str, Any] = {"layer": p.layer.index, "update": p.update.value}
        if p.update is Update.CHANNELS:
            entry["count"] = len(p.channels)
        if p.dynamic is not None:
            entry["count"] = p.dynamic.k
            entry["explore"] = p.dynamic.explore
        layers.append(entry)
    out: dict[str, Any] = {"name": scheme.name, "default": "frozen", "layers": layers}
    if scheme.layer_select is not None:  # DGSU layer selection (scheme.py, LayerSelect)
        out["layer_budget"] = scheme.layer_select.budget
        out["layer_explore"] = scheme.layer_select.explore
        if scheme.layer_select.cls is not None:  # ALaST: the candidates are blocks (alast.py)
            out["alast_blocks"] = list(scheme.layer_select.candidates)
    sign = [p.layer.index for p in scheme.layers if p.sign_act]
    if sign:  # MobileTL's sign rule from this layer on (scheme.py, LayerPlan.sign_act)
        out["sign_from"] = min(sign)
    if scheme.token_drop is not None:  # BSR: re-applied to model.tflite when the artifact is loaded
        out["token_drop"] = token_drop_data(scheme.token_drop)
    return out


def plan_json(c: Compiled) -> dict[str, Any]:
    m, plan = c.memory, c.plan
    return {
        "tinytrain_plan": 1,
        "scheme": {"name": c.scheme.name, "layers": c.scheme.summary(), **dgsu_plan_summary(c.scheme),
                   **c.scheme.token_summary()},
        "sram": {
            "peak_bytes": plan.peak_live,
            "arena_bytes": plan.arena_size,
            "trainable_bytes": m.trainable_bytes,
            "budget_bytes": c.options.sram_bytes,
            "peak_step": plan.peak_step,
            "sample_bytes": c.options.sample_bytes,
        },
        "flash": {"bytes": m.flash_bytes, "budget_bytes": c.options.flash_bytes},
        "training": {"batch": c.options.batch, "momentum": c.options.momentum,
                     "momentum_q15": c.options.momentum_q15},
        "macs": {"forward": m.macs_forward, "backward": m.macs_backward},
        "saved_activations": saved_activations(c.graph, plan).to_json(),
        **({"gradient_aliases": dict(m.grad_aliases)} if m.grad_aliases else {}),
        "steps": [{"index": s.index, "phase": s.phase, "text": s.text} for s in m.steps],
        "plan": plan.to_json(),
    }


def write_artifact(c: Compiled, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(write_tflite(c.graph if c.source is None else c.source))
    (out / SCHEME_FILE).write_text(json.dumps(scheme_file_data(c.scheme), indent=2) + "\n")
    (out / PLAN_FILE).write_text(json.dumps(plan_json(c), indent=2) + "\n")
    lines = [f"# tinytrain training program: scheme {c.scheme.name}, {len(c.memory.steps)} steps"]
    lines += [f"{s.index:4d} {s.phase:8s} {s.text}" for s in c.memory.steps]
    (out / PROGRAM_FILE).write_text("\n".join(lines) + "\n")


def load_artifact(out: Path) -> Compiled:
    """Rebuilds the compiled program of an output directory (deterministic)."""
    model, scheme_path, plan_path = out / MODEL_FILE, out / SCHEME_FILE, out / PLAN_FILE
    for p in (model, scheme_path, plan_path):
        if not p.exists():
            raise UsageError(f"{out} is not a tinytrain compile output: {p.name} is missing")
    try:
        meta = json.loads(plan_path.read_text())
        sram = int(meta["sram"]["budget_bytes"])
        flash = int(meta["flash"]["budget_bytes"])
        sample = meta["sram"].get("sample_bytes")
        batch = int(meta.get("training", {}).get("batch", 1))
        momentum = float(meta.get("training", {}).get("momentum", 0.0))
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{plan_path} is corrupt: {exc}") from None
    options = CompileOptions(
        str(scheme_path), sram_bytes=sram, flash_bytes=flash, sample_bytes=sample, batch=batch, momentum=momentum
    )
    return compile_scheme(load_tflite(model), load_scheme_file(scheme_path), options)
