"""Host client of the training application (firmware_templates/app/tt_app.c).

``Device(link, program)`` wraps a :class:`host_tools.link.Link` with one method per
application command (docs/protocol.md, "Application commands"): identify, reset, set_lr,
set_schedule, train, eval, stats, tensor_names / tensor_info, pull (the trained tensors
with the names, dtypes and full shapes of ``simulate --save-weights``), push, and
save_checkpoint / load_checkpoint (the device's power-loss-safe checkpoint slots).
``program`` (host_tools.firmware.AppProgram, from the compiled program) lets the client
refuse a firmware built for another model and rebuild full tensors from the device's slices;
identify, train, eval and stats work without it.

Errors are one-line :class:`tinytrain.errors.TinytrainError`\\ s: :class:`WrongFirmwareError`
(another model, or the bootloader answering), :class:`SampleError` (a sample or label the
program cannot take; nothing is sent), :class:`DeviceCommandError` (the device refused a
request: its status, the command and what was asked), ``LinkError`` (no answer).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from host_tools.firmware import AppProgram
from host_tools.frame import MAX_PAYLOAD, Status
from host_tools.link import DeviceError, Link, command_name
from tinytrain.errors import TinytrainError, UsageError
from tinytrain.train.kernels.schedule import Schedule, lr_multiplier

ROLE_BOOTLOADER = 0
ROLE_APP = 1
MAX_CHUNK = 1024
"""Largest data chunk of READ_TENSOR / WRITE_TENSOR / SAMPLE_WRITE (TT_APP_MAX_CHUNK)."""
SCHEDULE_KINDS = {Schedule.CONSTANT: 0, Schedule.COSINE: 1}
COUNTER_UNITS = ("instructions", "cycles", "ns")
CHECKPOINT_ERRORS = {2: "no checkpoint storage on this device", 3: "the checkpoint does not fit a slot", 4: "I/O error"}
"""FLASH_ERROR reasons of SAVE_CKPT / LOAD_CKPT (the negated TT_CKPT_ERR_* of tt_ckpt.h)."""

_IDENTIFY = struct.Struct("<BBHIIHHIIIBBBB")  # 32 bytes, then model / scheme / board names
_TRAIN = struct.Struct("<IiHBx")
_STATS = struct.Struct("<IIIIQQQQB")
_CHUNK = struct.Struct("<HHI")
_CKPT = struct.Struct("<IIIIBBH")  # SAVE_CKPT / LOAD_CKPT answer


class Command(IntEnum):
    """Application command codes (TT_APP_CMD_* in firmware_templates/app/tt_app.h)."""

    IDENTIFY = 0x01
    TRAIN = 0x02
    EVAL = 0x03
    STATS = 0x04
    READ_TENSOR = 0x05
    WRITE_TENSOR = 0x06
    SAVE_CKPT = 0x07
    LOAD_CKPT = 0x08
    RESET = 0x09
    TENSOR_INFO = 0x0A
    SAMPLE_WRITE = 0x0B
    SET_LR = 0x0C
    SET_SCHEDULE = 0x0D


class ResetMode(IntEnum):
    STATS = 0
    WEIGHTS = 1
    BOOTLOADER = 2


class WrongFirmwareError(TinytrainError):
    """The device runs another firmware: a program of another model, or the bootloader."""


class SampleError(UsageError):
    """A sample or label the device's program cannot take (nothing was sent)."""


class DeviceCommandError(TinytrainError):
    """The device refused a request (status ≠ OK); it changed nothing."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Identity:
    """IDENTIFY's answer."""

    role: int
    protocol: int
    max_payload: int
    model_id: int
    input_bytes: int
    classes: int
    tensors: int
    trainable_bytes: int
    arena_bytes: int
    counter_resolution: int
    counter_unit: str
    model: str
    scheme: str
    board: str

    def describe(self) -> str:
        return f"{self.model} ({self.scheme}, id {self.model_id:08x}) on {self.board}"


@dataclass(frozen=True)
class StepResult:
    step: int  # training steps since the last reset of the weights, this one included
    p_label: int  # probability of the label in units of 2^-16
    predicted: int
    correct: bool


@dataclass(frozen=True)
class Stats:
    """STATS' answer: ``steps``, ``correct``, ``evals`` and the sums count since the last clear."""

    step: int
    steps: int
    correct: int
    evals: int
    p_label_sum: int
    counter_total: int
    counter_last_step: int
    counter_last_eval: int
    counter_unit: str

    @property
    def accuracy(self) -> float:
        return self.correct / self.steps if self.steps else 0.0

    @property
    def mean_p_label(self) -> float:
        """Mean probability of the label over the steps (a loss proxy, in [0, 1])."""
        return self.p_label_sum / (self.steps * 65536.0) if self.steps else 0.0


@dataclass(frozen=True)
class CheckpointInfo:
    """SAVE_CKPT's / LOAD_CKPT's answer: the checkpoint written or applied."""

    sequence: int  # 1 for the first checkpoint of the storage, +1 for each later one
    step: int  # the application's step counter it holds
    payload_bytes: int
    payload_crc: int
    slot: int
    state_words: int  # words of generated run state (PRNG, lr, schedule) it carries; 0 if the program has no API for it


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    nbytes: int


def _status_name(status: int) -> str:
    return Status(status).name if status in Status._value2member_map_ else str(status)


class Device:
    """The training application behind ``link``; ``program`` describes the program it should
    run (checked by :meth:`identify`, needed by :meth:`pull` and :meth:`push`).
    ``step_timeout`` is the time allowed per TRAIN / EVAL transmission (a training step runs
    for up to seconds in QEMU), ``ckpt_timeout`` per SAVE_CKPT / LOAD_CKPT (erasing a 256 KiB
    STM32 sector takes seconds); other commands use the link's timeout."""

    def __init__(
        self,
        link: Link,
        program: AppProgram | None = None,
        *,
        step_timeout: float = 30.0,
        chunk: int = MAX_CHUNK,
        ckpt_timeout: float = 30.0,
    ) -> None:
        if not 1 <= chunk <= MAX_CHUNK:
            raise UsageError(f"chunk must be in 1..{MAX_CHUNK}, got {chunk}")
        self.link = link
        self.program = program
        self.step_timeout = step_timeout
        self.ckpt_timeout = ckpt_timeout
        self.chunk = chunk
        self._identity: Identity | None = None
        self._infos: tuple[TensorInfo, ...] | None = None

    # ------------------------------------------------------------------ plumbing

    def _call(self, cmd: Command, payload: bytes = b"", what: str = "", timeout: float | None = None) -> bytes:
        try:
            return self.link.call(cmd, payload, timeout=timeout)
        except DeviceError as e:
            detail = f" ({what})" if what else ""
            extra = f", kernel status {e.payload[0]}" if e.status == Status.INTERNAL and e.payload else ""
            raise DeviceCommandError(
                f"device refused {command_name(cmd)}{detail}: {_status_name(e.status)}{extra}", e.status
            ) from None

    @property
    def identity(self) -> Identity:
        """The identity (IDENTIFY once, then cached)."""
        return self._identity if self._identity is not None else self.identify()

    # ------------------------------------------------------------------ commands

    def identify(self) -> Identity:
        """Asks the device what it runs; raises WrongFirmwareError for the bootloader or, with
        a ``program``, for a firmware built from another program."""
        p = self._call(Command.IDENTIFY)
        if len(p) < 2:
            raise WrongFirmwareError(f"the device answered IDENTIFY with {len(p)} bytes: not a tinytrain firmware")
        if p[0] == ROLE_BOOTLOADER:
            raise WrongFirmwareError("the device runs the tinytrain bootloader, not a training application: flash one")
        if p[0] != ROLE_APP or len(p) < _IDENTIFY.size:
            raise WrongFirmwareError(
                f"the device answered IDENTIFY with role {p[0]}: not a tinytrain training firmware"
            )
        f = _IDENTIFY.unpack_from(p)
        lens = f[11:14]
        if len(p) != _IDENTIFY.size + sum(lens):
            raise WrongFirmwareError(f"malformed IDENTIFY answer ({len(p)} bytes)")
        names, pos = [], _IDENTIFY.size
        for n in lens:
            names.append(p[pos : pos + n].decode(errors="replace"))
            pos += n
        unit = COUNTER_UNITS[f[10]] if f[10] < len(COUNTER_UNITS) else f"unit {f[10]}"
        ident = Identity(
            role=f[0],
            protocol=f[1],
            max_payload=f[2],
            model_id=f[3],
            input_bytes=f[4],
            classes=f[5],
            tensors=f[6],
            trainable_bytes=f[7],
            arena_bytes=f[8],
            counter_resolution=f[9],
            counter_unit=unit,
            model=names[0],
            scheme=names[1],
            board=names[2],
        )
        prog = self.program
        if prog is not None and (
            ident.model_id != prog.model_id or ident.input_bytes != prog.input_bytes or ident.classes != prog.classes
        ):
            raise WrongFirmwareError(
                f"the device runs {ident.describe()}, not the compiled program "
                f"{prog.model} ({prog.scheme}, id {prog.model_id:08x}): flash the firmware built from it"
            )
        self._identity = ident
        return ident

    def reset(self, seed: int = 0) -> None:
        """Restores the initial weights (tt_init(seed): step 0, lr 1.0, constant schedule)
        and clears the statistics."""
        self._call(Command.RESET, struct.pack("<BI", ResetMode.WEIGHTS, seed % (1 << 32)), f"seed {seed}")

    def clear_stats(self) -> None:
        self._call(Command.RESET, struct.pack("<BI", ResetMode.STATS, 0))

    def set_lr(self, lr: float) -> tuple[int, int]:
        """Sets the learning rate (as ``schedule.lr_multiplier(lr)``, what the simulator uses)."""
        q, shift = lr_multiplier(lr)
        self._call(Command.SET_LR, struct.pack("<ii", q, shift), f"lr {lr:g}")
        return q, shift

    def set_schedule(self, schedule: Schedule | str, total_steps: int) -> None:
        """The learning-rate schedule over a run of ``total_steps`` steps."""
        sched = Schedule(schedule)
        if total_steps <= 0:
            raise UsageError(f"total_steps must be > 0, got {total_steps}")
        self._call(
            Command.SET_SCHEDULE,
            struct.pack("<ii", SCHEDULE_KINDS[sched], total_steps),
            f"{sched.value}, {total_steps}",
        )

    def _sample(self, sample: np.ndarray) -> bytes:
        a = np.asarray(sample)
        if a.dtype != np.uint8:
            raise SampleError(f"samples must be uint8 (native samples), got {a.dtype}")
        n = self.identity.input_bytes
        if a.size != n:
            shape = f" {list(self.program.sample_shape)}" if self.program is not None else ""
            raise SampleError(f"a sample of shape {list(a.shape)} ({a.size} bytes); the device takes {n} bytes{shape}")
        return np.ascontiguousarray(a).tobytes()

    def _fits(self, header: int) -> bool:
        return header + self.identity.input_bytes <= MAX_PAYLOAD

    def _stage(self, data: bytes) -> None:
        for off in range(0, len(data), MAX_CHUNK):
            self._call(Command.SAMPLE_WRITE, struct.pack("<I", off) + data[off : off + MAX_CHUNK], "staged sample")

    def train(self, sample: np.ndarray, label: int) -> StepResult:
        """One training step on a native uint8 sample; returns (p_label, predicted, ...)."""
        data = self._sample(sample)
        classes = self.identity.classes
        if not 0 <= int(label) < classes:
            raise SampleError(f"label {label} out of range: the program has {classes} classes")
        head = struct.pack("<H", int(label))
        if not self._fits(len(head)):
            self._stage(data)
            data = b""
        p = self._call(Command.TRAIN, head + data, f"label {label}", timeout=self.step_timeout)
        step, p_label, predicted, correct = _TRAIN.unpack(p)
        return StepResult(step, p_label, predicted, bool(correct))

    def eval(self, sample: np.ndarray) -> np.ndarray:
        """The int8 logits of one native uint8 sample with the current weights."""
        data = self._sample(sample)
        if not self._fits(0):
            self._stage(data)
            data = b""
        p = self._call(Command.EVAL, data, timeout=self.step_timeout)
        return np.frombuffer(p, np.int8, self.identity.classes, 2).copy()

    def stats(self, clear: bool = False) -> Stats:
        f = _STATS.unpack(self._call(Command.STATS, bytes([1 if clear else 0])))
        unit = COUNTER_UNITS[f[8]] if f[8] < len(COUNTER_UNITS) else f"unit {f[8]}"
        return Stats(
            step=f[0],
            steps=f[1],
            correct=f[2],
            evals=f[3],
            p_label_sum=f[4],
            counter_total=f[5],
            counter_last_step=f[6],
            counter_last_eval=f[7],
            counter_unit=unit,
        )

    def tensor_info(self) -> tuple[TensorInfo, ...]:
        """Index, name and byte size of every trained tensor the device holds (cached)."""
        if self._infos is None:
            infos = []
            for i in range(self.identity.tensors):
                p = self._call(Command.TENSOR_INFO, struct.pack("<H", i), f"tensor {i}")
                index, nbytes = struct.unpack_from("<HI", p)
                infos.append(TensorInfo(index, p[6:].decode(errors="replace"), nbytes))
            self._infos = tuple(infos)
        return self._infos

    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensor_info()]

    def read_tensor(self, index: int) -> bytes:
        """The raw bytes of trained tensor ``index`` as the device holds it (its slice)."""
        info = self.tensor_info()[index]
        parts = []
        for off in range(0, info.nbytes, self.chunk):
            n = min(self.chunk, info.nbytes - off)
            p = self._call(Command.READ_TENSOR, _CHUNK.pack(index, n, off), f"{info.name}[{off}:{off + n}]")
            if len(p) != _CHUNK.size + n or _CHUNK.unpack_from(p) != (index, n, off):
                raise DeviceCommandError(f"malformed READ_TENSOR answer for {info.name}[{off}:{off + n}]", Status.OK)
            parts.append(p[_CHUNK.size :])
        return b"".join(parts)

    def write_tensor(self, index: int, data: bytes) -> None:
        info = self.tensor_info()[index]
        if len(data) != info.nbytes:
            raise UsageError(f"tensor {info.name}: {len(data)} bytes given, the device holds {info.nbytes}")
        for off in range(0, info.nbytes, self.chunk):
            part = data[off : off + self.chunk]
            self._call(
                Command.WRITE_TENSOR, _CHUNK.pack(index, len(part), off) + part, f"{info.name}[{off}:{off + len(part)}]"
            )

    def _checked_program(self) -> AppProgram:
        prog = self.program
        if prog is None:
            raise UsageError("pull/push need the compiled program (Device(link, program))")
        self.identify()
        infos = self.tensor_info()
        want = [(t.name, t.nbytes) for t in prog.tensors]
        have = [(t.name, t.nbytes) for t in infos]
        if want != have:
            raise WrongFirmwareError(
                f"the device's trained tensors differ from the compiled program's ({len(have)} vs {len(want)})"
            )
        return prog

    def pull(self) -> dict[str, np.ndarray]:
        """Every trained tensor, full shape (names, dtypes and shapes of ``simulate --save-weights``)."""
        prog = self._checked_program()
        return {t.name: t.to_full(self.read_tensor(i)) for i, t in enumerate(prog.tensors)}

    def push(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Writes trained tensors (full shapes, as :meth:`pull` returns them); every tensor is
        checked before the first byte is sent. Tensors not given are left as they are."""
        prog = self._checked_program()
        unknown = sorted(set(tensors) - {t.name for t in prog.tensors})
        if unknown:
            raise UsageError(f"the program trains no tensor named {', '.join(unknown)}")
        data = [(i, t.to_device(tensors[t.name])) for i, t in enumerate(prog.tensors) if t.name in tensors]
        for i, raw in data:
            self.write_tensor(i, raw)

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint(self, cmd: Command) -> CheckpointInfo:
        try:
            p = self.link.call(cmd, b"", timeout=self.ckpt_timeout)
        except DeviceError as e:
            reason = ""
            if e.status == Status.FLASH_ERROR and e.payload:
                reason = f" ({CHECKPOINT_ERRORS.get(e.payload[0], f'error {e.payload[0]}')})"
            raise DeviceCommandError(
                f"device refused {command_name(cmd)}: {_status_name(e.status)}{reason}", e.status
            ) from None
        if len(p) != _CKPT.size:
            raise DeviceCommandError(f"malformed {command_name(cmd)} answer ({len(p)} bytes)", Status.OK)
        seq, step, nbytes, crc, slot, words, _ = _CKPT.unpack(p)
        return CheckpointInfo(seq, step, nbytes, crc, slot, words)

    def save_checkpoint(self) -> CheckpointInfo:
        """Writes the trained tensors and the step counter as a new checkpoint into the slot
        not holding the newest one (the newest stays intact whatever happens meanwhile).
        DeviceCommandError: FLASH_ERROR (no storage, it does not fit, an erase/program failed),
        VERIFY_FAILED (the bytes read back differ); the previous checkpoints are intact then."""
        return self._checkpoint(Command.SAVE_CKPT)

    def load_checkpoint(self) -> CheckpointInfo:
        """Applies the newest valid checkpoint of this program (the tensors and the step
        counter; the learning rate and schedule only when ``state_words`` > 0, otherwise set
        them again). DeviceCommandError with status NO_CHECKPOINT when there is none (nothing
        changed)."""
        return self._checkpoint(Command.LOAD_CKPT)
