"""Backends that run a compiled training program on samples: the simulator (``sim``), the
generated C on the build machine (``host``) and the generated firmware on the emulated
Cortex-M boards (``qemu-m4``, ``qemu-m7``), with the same results type, so that they can be
compared byte for byte.

The C backends talk to the generated driver (``main_host.c``) with the binary protocol of
docs/codegen.md: :func:`encode_run` builds the request bytes, :func:`decode_run` parses the
reply. A transport only moves those bytes: stdin/stdout for the host; on the QEMU boards the
same driver (it only uses the board API) reads the request from UART0, which QEMU feeds from
its stdin (``run_qemu``: bounded by a timeout, QEMU killed on expiry, a non-zero exit status
such as a fault report raises with the firmware's output).
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codegen.emit import Generated, RunConfig, generate
from codegen.runtime_sources import BACKENDS as KERNEL_BACKENDS
from codegen.runtime_sources import Backend, swap_source
from codegen.targets import ElfInfo, FirmwareTimeoutError, TargetKind, build_firmware, get_target, run_firmware
from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.passes.split import suffix_graph
from tinytrain.sim.forward import Simulator
from tinytrain.train.compile import Compiled
from tinytrain.train.kernels.schedule import Schedule, lr_multiplier, schedule_factor
from tinytrain.train.loop import Trainer

MAGIC_IN = b"TTRN"
MAGIC_OUT = b"TTRS"
MAGIC_END = b"TTEN"
PROTOCOL_VERSION = 1
SCHEDULE_KINDS = {Schedule.CONSTANT: 0, Schedule.COSINE: 1}
QEMU_BACKENDS = ("qemu-m4", "qemu-m7")
BACKENDS = ("sim", "host", *QEMU_BACKENDS)


@dataclass(frozen=True, eq=False)
class RunResult:
    steps: tuple[tuple[int, int], ...]  # (p_label, predicted) per training step
    tensors: dict[str, np.ndarray]  # every trained tensor, as Executor.trained_tensors()
    test_logits: np.ndarray  # int8 [n_test, classes]


@dataclass(frozen=True, eq=False)
class RunSpec:
    samples: np.ndarray  # uint8 [n, *sample_shape] in training order
    labels: np.ndarray  # [n]
    test: np.ndarray  # uint8 [m, *sample_shape]
    seed: int = 0
    lr: float = 0.01
    schedule: Schedule = Schedule.CONSTANT
    total_steps: int | None = None  # the schedule's run length (default: the number of samples)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.samples.shape[1:])

    @property
    def total(self) -> int:
        return max(self.total_steps if self.total_steps is not None else len(self.samples), 1)


# ------------------------------------------------------------------ protocol


def encode_run(spec: RunSpec) -> bytes:
    q, shift = lr_multiplier(spec.lr)
    head = struct.pack(
        "<4sIIiiiiI",
        MAGIC_IN,
        PROTOCOL_VERSION,
        spec.seed % (1 << 32),
        q,
        shift,
        SCHEDULE_KINDS[spec.schedule],
        spec.total,
        len(spec.samples),
    )
    parts = [head]
    for x, y in zip(spec.samples, spec.labels, strict=True):
        parts.append(struct.pack("<i", int(y)))
        parts.append(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
    parts.append(struct.pack("<I", len(spec.test)))
    parts.extend(np.ascontiguousarray(x, dtype=np.uint8).tobytes() for x in spec.test)
    return b"".join(parts)


def decode_run(
    data: bytes, n_steps: int, n_test: int, classes: int
) -> tuple[list[tuple[int, int]], np.ndarray, list[bytes]]:
    """(step results, test logits, raw trained tensors in tt_tensor_info order)."""
    if not data.startswith(MAGIC_OUT):
        raise UsageError(f"the firmware did not answer the run protocol: {data[:64]!r}")
    pos = len(MAGIC_OUT)
    steps = []
    for k in range(n_steps):
        status, p_label, pred = struct.unpack_from("<iii", data, pos)
        pos += 12
        if status != 0:
            raise UsageError(f"training step {k} returned status {status}")
        steps.append((p_label, pred))
    logits = np.zeros((n_test, classes), np.int8)
    for k in range(n_test):
        (status,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if status != 0:
            raise UsageError(f"inference of test sample {k} returned status {status}")
        logits[k] = np.frombuffer(data, np.int8, classes, pos)
        pos += classes
    (n_t,) = struct.unpack_from("<I", data, pos)
    pos += 4
    raw = []
    for _ in range(n_t):
        (nb,) = struct.unpack_from("<I", data, pos)
        pos += 4
        raw.append(data[pos : pos + nb])
        pos += nb
    if data[pos : pos + 4] != MAGIC_END:
        raise UsageError("truncated reply from the firmware")
    return steps, logits, raw


def full_tensors(compiled: Compiled, gen: Generated, raw: Sequence[bytes]) -> dict[str, np.ndarray]:
    """The trained tensors (full shapes) from the device's slices."""
    g = compiled.program.graph
    out: dict[str, np.ndarray] = {}
    for t, data in zip(gen.lowered.trained, raw, strict=True):
        if t.dtype != "int8":  # a bias (int32) or training state (tinytrain/train/dgsu.py), held whole
            out[t.name] = np.frombuffer(data, np.dtype(t.dtype)).reshape(t.shape).copy()
            continue
        base = g.tensor(t.name).data
        assert base is not None
        full = np.array(base, dtype=np.int8, copy=True)
        ch = list(t.channels)
        if t.kind is OpKind.FULLY_CONNECTED:
            full[:, ch] = np.frombuffer(data, np.int8).reshape(full.shape[0], len(ch))
        else:
            full[..., ch] = np.frombuffer(data, np.int8).reshape(*full.shape[:-1], len(ch))
        out[t.name] = full
    return out


# ------------------------------------------------------------------ backends


def run_sim(compiled: Compiled, spec: RunSpec) -> RunResult:
    """The simulator: Trainer's frozen stage + Executor.step per sample, in the given order."""
    trainer = Trainer(compiled.program, spec.sample_shape, spec.seed)
    lr = lr_multiplier(spec.lr)
    feats = trainer.features(spec.samples)
    steps = []
    for k in range(len(spec.samples)):
        live = {n: f[k : k + 1] for n, f in zip(trainer.boundary, feats, strict=True)}
        c_t = schedule_factor(spec.schedule, k, spec.total)
        r = trainer.executor.step(live, int(spec.labels[k]), lr, c_t)
        steps.append((r.p_label, r.predicted))
    logits = np.zeros((len(spec.test), compiled.program.loss.classes), np.int8)
    if len(spec.test):
        tf = trainer.features(spec.test)
        suffix = Simulator(suffix_graph(trainer.executor.current_graph(), compiled.program.first_live_op))
        logits = suffix.run(tf)[0].reshape(len(spec.test), -1).astype(np.int8)
    tensors = {k: np.array(v, copy=True) for k, v in trainer.executor.trained_tensors().items()}
    return RunResult(tuple(steps), tensors, logits)


HOST_FAST_FLAGS: tuple[str, ...] = ("-O3", "-march=native")
"""Host flags of the ``x86`` kernels: the build machine's own instruction set (AVX2 /
AVX-512 VNNI where it has them; the x86 sources fall back to portable C otherwise)."""


def build_host(
    compiled: Compiled,
    out_dir: Path,
    sample_shape: Sequence[int],
    sanitize: bool = False,
    extra_flags: Sequence[str] = (),
    kernels: Backend = "ref",
) -> tuple[Generated, Path]:
    """Generates the C project and builds its host executable (optionally with ASan + UBSan)
    with the runtime's ``kernels`` (``x86``: the host backend, built with
    :data:`HOST_FAST_FLAGS` before ``extra_flags``)."""
    gen = generate(compiled, out_dir, sample_shape, RunConfig())
    flags = [*(HOST_FAST_FLAGS if kernels == "x86" else ()), *extra_flags]
    if sanitize:
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    info = build_firmware(
        get_target("host"),
        [*device_sources(gen, kernels), gen.driver],
        gen.include_dirs,
        out_dir / "build",
        extra_flags=flags,
        name="tt_host" + ("_san" if sanitize else ""),
    )
    return gen, info.elf


Transport = Callable[[bytes], bytes]


def run_generated(compiled: Compiled, gen: Generated, spec: RunSpec, transport: Transport) -> RunResult:
    """Runs a generated program through ``transport`` (request bytes → reply bytes)."""
    if spec.sample_shape != gen.lowered.sample_shape:
        raise UsageError(
            f"samples of shape {list(spec.sample_shape)}; the program takes {list(gen.lowered.sample_shape)}"
        )
    reply = transport(encode_run(spec))
    steps, logits, raw = decode_run(reply, len(spec.samples), len(spec.test), gen.lowered.classes)
    return RunResult(tuple(steps), full_tensors(compiled, gen, raw), logits)


def device_sources(gen: Generated, kernels: Backend = "ref") -> list[Path]:
    """The generated program's C files (model + runtime, no driver) with the runtime's
    ``dsp`` / ``x86`` replacements swapped in for those kernels (codegen/runtime_sources.py)."""
    if kernels not in KERNEL_BACKENDS:
        raise UsageError(f"unknown kernels {kernels!r} (expected one of {', '.join(KERNEL_BACKENDS)})")
    return [swap_source(p, kernels) for p in gen.sources]


def build_device(
    compiled: Compiled,
    target: str,
    out_dir: Path,
    sample_shape: Sequence[int],
    kernels: Backend = "ref",
    extra_flags: Sequence[str] = (),
    *,
    driver: Path | None = None,
    extra_sources: Sequence[Path] = (),
    name: str = "tt_train",
) -> tuple[Generated, ElfInfo]:
    """Generates the C project of ``compiled`` into ``out_dir`` and builds it for a
    microcontroller ``target`` (the compile options' SRAM and flash budgets, ``-DNDEBUG``);
    ``driver`` replaces the run driver (main_host.c, board-agnostic)."""
    t = get_target(target)
    if not t.is_arm:
        raise UsageError(f"target {t.name} is not a microcontroller")
    gen = generate(compiled, out_dir, sample_shape, RunConfig())
    info = build_firmware(
        t,
        [*device_sources(gen, kernels), driver if driver is not None else gen.driver, *extra_sources],
        gen.include_dirs,
        out_dir / "build",
        sram_bytes=compiled.options.sram_bytes,
        flash_bytes=compiled.options.flash_bytes,
        extra_flags=["-DNDEBUG", *extra_flags],
        name=name,
    )
    return gen, info


def qemu_transport(info: ElfInfo, timeout: float) -> Transport:
    """Request bytes → reply bytes through UART0 of a QEMU board (stdin-fed ``run_qemu``)."""
    t = get_target(info.target)
    if t.kind is not TargetKind.QEMU:
        raise UsageError(f"target {t.name} does not run in QEMU")

    def transport(data: bytes) -> bytes:
        try:
            r = run_firmware(info, timeout, data)
        except FirmwareTimeoutError as exc:
            raise UsageError(f"the {t.name} firmware did not finish the run within {timeout:.0f} s") from exc
        if r.exit_status != 0:
            tail = r.uart_output[-1500:].decode(errors="replace")
            raise UsageError(f"the {t.name} firmware exited with status {r.exit_status}; its output ends: {tail!r}")
        return r.uart_output

    return transport


def run_backend(
    name: str,
    compiled: Compiled,
    spec: RunSpec,
    work_dir: Path | None = None,
    sanitize: bool = False,
    timeout: float = 600.0,
    kernels: Backend = "ref",
) -> RunResult:
    """Trains on ``spec`` with backend ``name`` ("sim", "host", "qemu-m4" or "qemu-m7");
    ``kernels`` picks the runtime of the QEMU builds ("ref" or "dsp")."""
    if name == "sim":
        return run_sim(compiled, spec)
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    if sanitize and name != "host":
        raise UsageError("sanitize=True needs the host backend")
    with tempfile.TemporaryDirectory() as tmp:
        out = work_dir if work_dir is not None else Path(tmp)
        if name in QEMU_BACKENDS:
            gen, dev = build_device(compiled, name, out, spec.sample_shape, kernels)
            return run_generated(compiled, gen, spec, qemu_transport(dev, timeout))
        gen, exe = build_host(compiled, out, spec.sample_shape, sanitize, kernels=kernels)
        info = ElfInfo("host", exe, None, exe.with_suffix(".map"), None, 0, 0, 0, None, None)

        def transport(data: bytes) -> bytes:
            r = run_firmware(info, timeout, data)
            if r.exit_status != 0:
                raise UsageError(f"the host program exited with status {r.exit_status}")
            return r.uart_output

        return run_generated(compiled, gen, spec, transport)
