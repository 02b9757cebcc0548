"""Instruction profiles of a generated training program on the QEMU boards.

:func:`profile` builds the program for ``qemu-m4``/``qemu-m7`` with the profiling driver
(``templates/main_device.c.j2``, ``-DTT_TRACE``): the samples are compiled into the firmware
so that nothing waits on the UART before a measurement, and QEMU runs with ``-icount
shift=0`` (one instruction per virtual ns), so every count is deterministic — the same
numbers run to run — with the board counter's resolution (40 instructions). It reports the
instructions of every training step and inference (measured without a trace hook), the
count of every kernel call of one traced training step and one traced inference (each
includes the call's argument set-up and one counter reading, ~30 instructions), those
calls summed per layer, and MACs per instruction (forward MACs per op from
:func:`tinytrain.stats.op_macs`; a training step's MACs from ``compiled.memory``).
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from codegen.backends import QEMU_BACKENDS, SCHEDULE_KINDS, RunSpec, build_device
from codegen.emit import BANNER, TEMPLATES, carray
from codegen.lower import Call, Loop, Lowered
from codegen.runtime_sources import Backend
from codegen.targets import FirmwareTimeoutError, run_qemu
from tinytrain.errors import UsageError
from tinytrain.stats import op_macs
from tinytrain.train.compile import Compiled
from tinytrain.train.kernels.schedule import lr_multiplier

DEVICE_DRIVER = "main_device.c.j2"
_OP_RE = re.compile(r"ops? #?(\d+)(?:\.\.(\d+))?")


@dataclass(frozen=True)
class CallProfile:
    index: int  # position in the traced run (loops count once per iteration)
    phase: str  # forward | loss | backward
    kernel: str
    layer: str  # "op 47", "ops 43..46" (a fused block) or "-" (no op: loss, ...)
    what: str  # the call's comment, without its tensor list
    instructions: int


@dataclass(frozen=True)
class LayerProfile:
    layer: str
    calls: int
    forward_instructions: int
    backward_instructions: int  # loss and backward calls
    macs_forward: int
    macs_per_instruction_forward: float | None


@dataclass(frozen=True)
class Profile:
    target: str
    kernels: str
    resolution: int
    step_instructions: tuple[int, ...]
    inference_instructions_each: tuple[int, ...]
    train_calls: tuple[CallProfile, ...]
    infer_calls: tuple[CallProfile, ...]
    layers: tuple[LayerProfile, ...]
    macs_forward: int
    macs_backward: int
    text: int
    data: int
    bss: int
    arena_bytes: int

    @property
    def train_step_instructions(self) -> int:
        """The median step (steps differ slightly: data-dependent branches)."""
        return int(np.median(self.step_instructions))

    @property
    def inference_instructions(self) -> int:
        return int(np.median(self.inference_instructions_each))

    def to_json(self) -> dict[str, Any]:
        step_macs = self.macs_forward + self.macs_backward
        return {
            "target": self.target,
            "kernels": self.kernels,
            "counter_resolution": self.resolution,
            "train_step_instructions": self.train_step_instructions,
            "inference_instructions": self.inference_instructions,
            "train_step_instructions_each": list(self.step_instructions),
            "inference_instructions_each": list(self.inference_instructions_each),
            "macs_forward": self.macs_forward,
            "macs_train_step": step_macs,
            "macs_per_instruction_train": step_macs / max(1, self.train_step_instructions),
            "macs_per_instruction_inference": self.macs_forward / max(1, self.inference_instructions),
            "elf": {"text": self.text, "data": self.data, "bss": self.bss},
            "arena_bytes": self.arena_bytes,
            "layers": [asdict(x) for x in self.layers],
            "train_calls": [asdict(c) for c in self.train_calls],
            "infer_calls": [asdict(c) for c in self.infer_calls],
        }


def expanded_calls(low: Lowered, phases: Sequence[str]) -> list[Call]:
    """The calls of ``phases`` in trace order: a loop's calls once per iteration."""
    out: list[Call] = []
    for it in low.calls:
        if it.phase not in phases:
            continue
        if isinstance(it, Loop):
            out.extend(c for _ in range(it.count) for c in it.calls)
        else:
            out.append(it)
    return out


def _layer_of(comment: str) -> str:
    m = _OP_RE.search(comment)
    if m is None:
        return "-"
    return f"ops {m.group(1)}..{m.group(2)}" if m.group(2) else f"op {m.group(1)}"


def _short(comment: str) -> str:
    return comment.split(" (tensors:")[0].split(" -> ")[0]


def render_driver(spec: RunSpec, max_calls: int) -> str:
    """The profiling driver's C text for the run ``spec`` (samples in flash)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["carray"] = carray
    q, shift = lr_multiplier(spec.lr)
    return env.get_template(DEVICE_DRIVER).render(
        banner=BANNER,
        n_steps=len(spec.samples),
        n_test=len(spec.test),
        max_calls=max_calls,
        train=np.asarray(spec.samples, np.uint8).reshape(-1),
        labels=np.asarray(spec.labels, np.int64).reshape(-1),
        test=np.asarray(spec.test, np.uint8).reshape(-1),
        seed=spec.seed % (1 << 32),
        q_lr=q,
        shift_lr=shift,
        schedule_kind=SCHEDULE_KINDS[spec.schedule],
        total_steps=spec.total,
    )


def _decode(data: bytes) -> tuple[int, list[int], list[int], list[int], list[int]]:
    if not data.startswith(b"TTPF"):
        raise UsageError(f"the profiling firmware did not answer: {data[:200]!r}")
    pos = 4

    def u32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<I", data, pos)
        pos += 4
        return int(v)

    def counts(what: str) -> list[int]:
        out = []
        for k in range(u32()):
            status, lo, hi = struct.unpack_from("<iII", data, pos + 12 * k)
            if status != 0:
                raise UsageError(f"{what} {k} returned status {status} on the device")
            out.append(lo | (hi << 32))
        nonlocal_skip(12 * len(out))
        return out

    def nonlocal_skip(n: int) -> None:
        nonlocal pos
        pos += n

    def calls(what: str) -> list[int]:
        n = u32()
        vals = [u32() for _ in range(n)]
        status = struct.unpack_from("<i", data, pos)[0]
        nonlocal_skip(4)
        if status != 0:
            raise UsageError(f"the traced {what} returned status {status} on the device")
        return vals

    resolution = u32()
    steps = counts("training step")
    infers = counts("inference")
    train_calls = calls("training step")
    infer_calls = calls("inference")
    if data[pos : pos + 4] != b"TTEN":
        raise UsageError("truncated profile report from the firmware")
    return resolution, steps, infers, train_calls, infer_calls


def _call_profiles(calls: Sequence[Call], counts: Sequence[int]) -> tuple[CallProfile, ...]:
    if len(calls) != len(counts):
        raise UsageError(f"the traced run made {len(counts)} kernel calls; the program has {len(calls)}")
    return tuple(
        CallProfile(i, c.phase, c.kernel, _layer_of(c.comment), _short(c.comment), n)
        for i, (c, n) in enumerate(zip(calls, counts, strict=True))
    )


def _op_macs(compiled: Compiled, layer: str) -> int:
    m = re.fullmatch(r"ops? (\d+)(?:\.\.(\d+))?", layer)
    if m is None:
        return 0
    g = compiled.program.graph
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    return sum(op_macs(g, g.ops[i]) for i in range(lo, hi + 1) if i < len(g.ops))


def _layers(compiled: Compiled, train: Sequence[CallProfile]) -> tuple[LayerProfile, ...]:
    order: list[str] = []
    acc: dict[str, list[int]] = {}
    for c in train:
        if c.layer not in acc:
            order.append(c.layer)
            acc[c.layer] = [0, 0, 0]
        a = acc[c.layer]
        a[0] += 1
        a[1 if c.phase == "forward" else 2] += c.instructions
    out = []
    for name in order:
        n, fwd, bwd = acc[name]
        macs = _op_macs(compiled, name)
        out.append(LayerProfile(name, n, fwd, bwd, macs, macs / fwd if fwd and macs else None))
    return tuple(out)


def profile(
    compiled: Compiled,
    target: str,
    spec: RunSpec,
    kernels: Backend = "ref",
    work_dir: Path | None = None,
    timeout: float = 600.0,
) -> Profile:
    """Builds ``compiled`` for ``target`` with the profiling driver, runs ``spec``'s training
    steps and test inferences in QEMU and returns the counts."""
    if target not in QEMU_BACKENDS:
        raise UsageError(f"profiling needs a QEMU target ({', '.join(QEMU_BACKENDS)}), got {target!r}")
    if len(spec.samples) < 1 or len(spec.test) < 1:
        raise UsageError("profiling needs at least one training sample and one test sample")
    with tempfile.TemporaryDirectory() as tmp:
        out = work_dir if work_dir is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        from codegen.lower import lower

        low = lower(compiled, spec.sample_shape)
        train_calls = expanded_calls(low, ("forward", "loss", "backward"))
        infer_calls = expanded_calls(low, ("forward",))
        driver = out / "main_device.c"
        driver.write_text(render_driver(spec, len(train_calls)))
        gen, info = build_device(
            compiled, target, out, spec.sample_shape, kernels, ["-DTT_TRACE"], driver=driver, name="tt_profile"
        )
        try:
            r = run_qemu(info.elf, target, timeout)
        except FirmwareTimeoutError as exc:
            raise UsageError(f"the profiling firmware did not finish within {timeout:.0f} s on {target}") from exc
        if r.exit_status != 0:
            tail = r.uart_output[-1500:].decode(errors="replace")
            raise UsageError(f"the profiling firmware exited with status {r.exit_status} on {target}: {tail!r}")
        resolution, steps, infers, tcounts, icounts = _decode(r.uart_output)
        train = _call_profiles(train_calls, tcounts)
        infer = _call_profiles(infer_calls, icounts)
        return Profile(
            target=target,
            kernels=kernels,
            resolution=resolution,
            step_instructions=tuple(steps),
            inference_instructions_each=tuple(infers),
            train_calls=train,
            infer_calls=infer,
            layers=_layers(compiled, train),
            macs_forward=compiled.memory.macs_forward,
            macs_backward=compiled.memory.macs_backward,
            text=info.text,
            data=info.data,
            bss=info.bss,
            arena_bytes=gen.lowered.arena_size,
        )
