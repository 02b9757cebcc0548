"""Building the training application firmware and describing the program it runs.

:func:`build_app` generates the C project of a compiled training program
(``codegen.backends.build_device``) and links it with the application's command loop
(``firmware_templates/app/tt_app.c``) and the frame protocol (``tt_frame.c``) instead of the
batch run driver. :func:`app_program` describes the same program for the host client
(host_tools/device.py): the model identity the firmware reports in IDENTIFY
(:func:`model_id`), the sample size, and every trained tensor as the device holds it (the
slices ``w[..., channels]``) with what it takes to rebuild the full tensors exactly as
``codegen.backends.full_tensors`` does.

The application needs three macros the generator does not emit (yet): ``TT_MODEL_ID``,
``TT_MODEL_NAME`` and ``TT_MODEL_SCHEME``; :func:`app_flags` passes them with ``-D``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codegen.backends import build_device, device_sources
from codegen.emit import Generated
from codegen.lower import Loop, Lowered, lower
from codegen.runtime_sources import Backend
from codegen.targets import ElfInfo, build_firmware, get_target
from host_tools.bootloader import BOOTLOADER_DIR, NOINIT_BYTES, boot_layout
from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.compile import Compiled
from tinytrain.train.dgsu import state_tensors

APP_DIR = Path(__file__).resolve().parents[1] / "firmware_templates" / "app"
APP_SOURCE = APP_DIR / "tt_app.c"
FRAME_SOURCE = APP_DIR / "tt_frame.c"
CKPT_SOURCE = APP_DIR / "tt_ckpt.c"
APP_NAME = "tt_app"


@dataclass(frozen=True, eq=False)
class TensorSpec:
    """One trained tensor: ``shape`` is the full tensor's, ``channels`` the trained input
    channels of a weight (the device holds ``w[..., channels]``, fully connected
    ``w[:, channels]``; empty for an int32 bias, held whole); ``initial`` the full tensor
    before training (the untrained channels of a pulled weight come from it)."""

    name: str
    dtype: str  # "int8" (a weight slice), or a whole tensor: "int32" (a bias), "uint16" / "int64" (DGSU state)
    shape: tuple[int, ...]
    channels: tuple[int, ...]
    fully_connected: bool
    initial: np.ndarray

    @property
    def np_dtype(self) -> np.dtype[np.generic]:
        return np.dtype(self.dtype)

    @property
    def device_shape(self) -> tuple[int, ...]:
        """The shape of the slice the device holds."""
        if self.dtype != "int8":
            return self.shape
        if self.fully_connected:
            return (self.shape[0], len(self.channels))
        return (*self.shape[:-1], len(self.channels))

    @property
    def nbytes(self) -> int:
        """Bytes on the device."""
        return int(np.prod(self.device_shape, dtype=np.int64)) * self.np_dtype.itemsize

    def to_full(self, raw: bytes) -> np.ndarray:
        """The full tensor from the device's bytes (``codegen.backends.full_tensors``)."""
        if len(raw) != self.nbytes:
            raise UsageError(f"tensor {self.name}: {len(raw)} bytes from the device, expected {self.nbytes}")
        part = np.frombuffer(raw, self.np_dtype).reshape(self.device_shape)
        if self.dtype != "int8":
            return part.copy()
        full = np.array(self.initial, dtype=np.int8, copy=True)
        ch = list(self.channels)
        if self.fully_connected:
            full[:, ch] = part
        else:
            full[..., ch] = part
        return full

    def to_device(self, full: np.ndarray) -> bytes:
        """The device's bytes of a full tensor (its trained slice); the other channels must
        equal the initial ones (the device does not hold them)."""
        a = np.asarray(full)
        if a.shape != self.shape or a.dtype != self.np_dtype:
            raise UsageError(
                f"tensor {self.name}: got {a.dtype} {list(a.shape)}, the program holds {self.dtype} {list(self.shape)}"
            )
        if self.dtype != "int8":
            return np.ascontiguousarray(a).tobytes()
        ch = list(self.channels)
        rest = np.ones(self.shape[1 if self.fully_connected else -1], dtype=bool)
        rest[ch] = False
        axis_rest = (slice(None), rest) if self.fully_connected else (..., rest)
        if not np.array_equal(a[axis_rest], np.asarray(self.initial, np.int8)[axis_rest]):
            raise UsageError(f"tensor {self.name}: channels the program does not train differ from the initial weights")
        part = a[:, ch] if self.fully_connected else a[..., ch]
        return np.ascontiguousarray(part).tobytes()


@dataclass(frozen=True, eq=False)
class AppProgram:
    """What the host needs to know of the program a training firmware runs."""

    model: str
    scheme: str
    model_id: int
    sample_shape: tuple[int, ...]
    input_bytes: int
    classes: int
    arena_bytes: int
    tensors: tuple[TensorSpec, ...]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.tensors:
            if t.name == name:
                return t
        raise UsageError(f"the program trains no tensor named {name!r}")


def model_id(compiled: Compiled, low: Lowered) -> int:
    """The program's identity: CRC-32 (zlib) of a canonical JSON description (model, scheme,
    sample shape, classes, arena size, trained tensors and their arena offsets, every kernel
    call) followed by every flash constant array's bytes in program order (the frozen
    weights, the initial trained slices, the per-channel constants and params). Two builds
    of the same compiled program agree; a firmware of another model, scheme or weights does
    not (with the certainty of a 32-bit checksum)."""
    desc = {
        "model": compiled.program.graph.name,
        "scheme": compiled.scheme.name,
        "sample_shape": list(low.sample_shape),
        "sample_bytes": low.sample_bytes,
        "classes": low.classes,
        "arena_bytes": low.arena_size,
        "trained": [
            [t.name, t.dtype, list(t.shape), list(t.channels), t.kind.value, low.offsets[t.buffer]] for t in low.trained
        ],
        "calls": [[c.kernel, c.comment] for it in low.calls for c in (it.calls if isinstance(it, Loop) else (it,))],
    }
    crc = zlib.crc32(json.dumps(desc, sort_keys=True, separators=(",", ":")).encode())
    for a in low.arrays:
        crc = zlib.crc32(a.name.encode() + b"\0", crc)
        crc = zlib.crc32(np.ascontiguousarray(a.values).tobytes(), crc)
    return crc


def program_from_lowered(compiled: Compiled, low: Lowered) -> AppProgram:
    g = compiled.program.graph
    state = {s.name: s.initial for s in state_tensors(compiled.program.scheme)}  # DGSU ages, layer signal
    tensors = []
    for t in low.trained:
        base = state[t.name] if t.name in state else g.tensor(t.name).data
        if base is None:
            raise UsageError(f"trained tensor {t.name} has no initial data")
        tensors.append(
            TensorSpec(
                name=t.name,
                dtype=t.dtype,
                shape=tuple(int(d) for d in t.shape),
                channels=tuple(int(c) for c in t.channels),
                fully_connected=t.kind is OpKind.FULLY_CONNECTED,
                initial=np.array(base, copy=True),
            )
        )
    return AppProgram(
        model=g.name,
        scheme=compiled.scheme.name,
        model_id=model_id(compiled, low),
        sample_shape=tuple(low.sample_shape),
        input_bytes=low.sample_bytes,
        classes=low.classes,
        arena_bytes=low.arena_size,
        tensors=tuple(tensors),
    )


def app_program(compiled: Compiled, sample_shape: Sequence[int]) -> AppProgram:
    """The description of ``compiled`` for native samples of ``sample_shape``."""
    return program_from_lowered(compiled, lower(compiled, sample_shape))


def c_string(text: str) -> str:
    """A C string literal of ``text`` (printable ASCII kept, everything else as octal escapes)."""
    out = []
    for b in text.encode():
        ch = chr(b)
        if ch in '"\\' or not 0x20 <= b < 0x7F:
            out.append(f"\\{b:03o}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def app_flags(program: AppProgram) -> list[str]:
    """The ``-D`` definitions tt_app.c needs (until tt_model.h carries them)."""
    return [
        f"-DTT_MODEL_ID=0x{program.model_id:08X}u",
        f"-DTT_MODEL_NAME={c_string(program.model)}",
        f"-DTT_MODEL_SCHEME={c_string(program.scheme)}",
    ]


@dataclass(frozen=True, eq=False)
class AppBuild:
    """A built training application: the generated project, the firmware and its program."""

    gen: Generated
    info: ElfInfo
    program: AppProgram


def default_sample_shape(compiled: Compiled) -> tuple[int, ...]:
    """The square gray (or RGB) image of the program's native sample size."""
    n = compiled.options.sample_bytes
    if n is None:
        raise UsageError("the program was compiled without --sample-shape: the training firmware needs it")
    for c in (1, 3):
        side = round((n // c) ** 0.5)
        if side * side * c == n:
            return (side, side) if c == 1 else (side, side, c)
    raise UsageError(f"cannot infer the shape of {n}-byte samples: pass sample_shape")


def build_app(
    compiled: Compiled,
    target: str,
    out_dir: Path,
    sample_shape: Sequence[int] | None = None,
    kernels: Backend = "ref",
    extra_flags: Sequence[str] = (),
    *,
    for_bootloader: bool = False,
) -> AppBuild:
    """Builds the training application of ``compiled`` for ``target`` (a microcontroller, or
    ``host``: an executable speaking the protocol on stdin/stdout) into ``out_dir``.

    ``for_bootloader``: linked at the application region of the target's bootloader layout
    (host_tools/bootloader.py) with the no-init RAM words of the stay request reserved and
    ``-DTT_HAS_BOOTLOADER=1`` (tt_boot_request.c is linked in: RESET mode 2 may call
    ``tt_boot_request_bootloader()``); its ``info.bin`` is the image to flash over serial
    (host_tools/flash.py). The flash budget is the compile options' capped to the region."""
    shape = tuple(sample_shape) if sample_shape is not None else default_sample_shape(compiled)
    t = get_target(target)
    if for_bootloader:
        return _build_app_for_bootloader(compiled, t.name, out_dir, shape, kernels, extra_flags)
    if not t.is_arm:
        from codegen.emit import RunConfig, generate

        gen = generate(compiled, out_dir, shape, RunConfig())
        program = program_from_lowered(compiled, gen.lowered)
        info = build_firmware(
            t,
            [*gen.sources, APP_SOURCE, FRAME_SOURCE, CKPT_SOURCE],
            [*gen.include_dirs, APP_DIR],
            out_dir / "build",
            extra_flags=[*app_flags(program), *extra_flags],
            name=APP_NAME,
        )
        return AppBuild(gen, info, program)
    program = app_program(compiled, shape)
    gen, info = build_device(
        compiled,
        t.name,
        out_dir,
        shape,
        kernels,
        [f"-I{APP_DIR}", *app_flags(program), *extra_flags],
        driver=APP_SOURCE,
        extra_sources=[FRAME_SOURCE, CKPT_SOURCE],
        name=APP_NAME,
    )
    if program_from_lowered(compiled, gen.lowered).model_id != program.model_id:
        raise UsageError("lowering the program twice gave two different programs (non-deterministic lowering)")
    return AppBuild(gen, info, program)


def _build_app_for_bootloader(
    compiled: Compiled,
    target: str,
    out_dir: Path,
    shape: tuple[int, ...],
    kernels: Backend,
    extra_flags: Sequence[str],
) -> AppBuild:
    from codegen.emit import RunConfig, generate

    layout = boot_layout(target)
    program = app_program(compiled, shape)
    gen = generate(compiled, out_dir, shape, RunConfig())
    if program_from_lowered(compiled, gen.lowered).model_id != program.model_id:
        raise UsageError("lowering the program twice gave two different programs (non-deterministic lowering)")
    info = build_firmware(
        target,
        [*device_sources(gen, kernels), APP_SOURCE, FRAME_SOURCE, CKPT_SOURCE, BOOTLOADER_DIR / "tt_boot_request.c"],
        [*gen.include_dirs, APP_DIR, BOOTLOADER_DIR],
        out_dir / "build",
        sram_bytes=compiled.options.sram_bytes,
        flash_bytes=min(compiled.options.flash_bytes, layout.app_size),
        extra_flags=["-DNDEBUG", "-DTT_HAS_BOOTLOADER=1", *app_flags(program), *extra_flags],
        name=APP_NAME,
        code_offset=layout.code_offset,
        noinit_bytes=NOINIT_BYTES,
    )
    return AppBuild(gen, info, program)
