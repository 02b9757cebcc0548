"""Firmware build targets: what each board is, how to link a program into its memory budget,
how to build it and how to run it.

A :class:`Target` describes one board (CPU flags, memory of the real part, QEMU machine,
board-support sources under ``firmware_templates/boards``). :func:`build_firmware` compiles
a program (generated C + runtime + the board layer) with ``arm-none-eabi-gcc`` against a
linker script rendered for an SRAM/flash budget (:func:`render_linker_script`): a program
over budget fails to link and raises :class:`RegionOverflowError` naming the region and the
overflow. :func:`run_qemu` runs an ELF of a QEMU target as a bounded subprocess and returns
its exit status (semihosting) and UART output; with ``icount=True`` QEMU executes one guest
instruction per nanosecond of virtual time, so the board's counter counts instructions
deterministically (``firmware_templates/boards/README.md``). The ``host`` target builds an
ordinary executable with ``gcc`` (board API over stdio).
"""

from __future__ import annotations

import contextlib
import enum
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import jinja2

from tinytrain.errors import TinytrainError, UsageError

BOARDS_DIR = Path(__file__).resolve().parents[1] / "firmware_templates" / "boards"
"""The board layer: ``tt_board.h``, ``common/`` and one directory per target."""

C_FLAGS = ("-std=c99", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-O2")
SECTION_FLAGS = ("-ffunction-sections", "-fdata-sections")
DEFAULT_STACK_BYTES = 4096
"""main()'s stack (the PSP, at the bottom of RAM): the runtime has no recursion nor VLAs."""
HANDLER_STACK_BYTES = 1024
"""The exception stack (MSP): fault reports and the SysTick handler run on it."""
CODE_OFFSET_ALIGN = 512
"""A program linked at an offset into flash starts with its vector table, which VTOR needs
aligned to 512 bytes (the table's size rounded up to a power of two)."""

KiB = 1024
MiB = 1024 * 1024


class FirmwareError(TinytrainError):
    """Building or running firmware failed."""


class ToolchainMissingError(FirmwareError):
    """A required program (arm-none-eabi-gcc, qemu-system-arm, ...) is not installed."""


class BuildError(FirmwareError):
    """The compiler or linker rejected the program; ``log`` holds its diagnostics."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message + (f"\n{log}" if log else ""))
        self.log = log


class RegionOverflowError(BuildError):
    """The program does not fit its budget: ``region`` ("RAM" or "FLASH") overflowed by
    ``overflow_bytes`` over a budget of ``budget_bytes``."""

    def __init__(self, message: str, region: str, overflow_bytes: int, budget_bytes: int, log: str = "") -> None:
        super().__init__(message, log)
        self.region = region
        self.overflow_bytes = overflow_bytes
        self.budget_bytes = budget_bytes


class FirmwareTimeoutError(FirmwareError):
    """The firmware did not exit in time (QEMU or the host executable was killed);
    ``output`` holds what it printed until then."""

    def __init__(self, message: str, output: bytes) -> None:
        super().__init__(message)
        self.output = output


class TargetKind(enum.Enum):
    QEMU = "qemu"  # a Cortex-M machine emulated by qemu-system-arm: runnable, counts instructions
    BOARD = "board"  # real hardware: builds to ELF and .bin, flashed by other tools
    HOST = "host"  # the build machine: gcc, an ordinary executable


@dataclass(frozen=True)
class MemoryRegion:
    """A memory of the real part (or of the emulated machine): origin and size in bytes."""

    origin: int
    size: int


@dataclass(frozen=True)
class Target:
    """One board firmware can be built for.

    ``flash``/``ram`` are the memories of the part; the linker script's regions start at their
    origins with the *budget* as length (at most the part's size). ``board_sources`` and
    ``board_include_dirs`` are relative to :data:`BOARDS_DIR`; ``linker_template`` is a
    Jinja2 template name there (None for the host). ``counter_unit``/``counter_resolution``
    describe ``tt_board_cycles()``.
    """

    name: str
    description: str
    kind: TargetKind
    cc: str
    cpu_flags: tuple[str, ...]
    board_sources: tuple[str, ...]
    board_include_dirs: tuple[str, ...]
    linker_template: str | None
    flash: MemoryRegion | None
    ram: MemoryRegion | None
    default_sram_bytes: int | None
    default_flash_bytes: int | None
    qemu_machine: str | None
    cpu_hz: int | None
    counter_unit: str
    counter_resolution: int

    @property
    def runnable(self) -> bool:
        """Whether tinytrain can run its firmware here (QEMU or the host)."""
        return self.kind is not TargetKind.BOARD

    @property
    def is_arm(self) -> bool:
        return self.kind is not TargetKind.HOST


M4F_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
M7_FLAGS = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")
_COMMON_ARM_SOURCES = ("tt_board_io.c", "common/tt_startup.c")
_QEMU_SOURCES = (
    *_COMMON_ARM_SOURCES,
    "common/tt_board_mps2.c",
    "common/tt_counter_systick.c",
    "common/tt_board_storage_mps2.c",
)


def _arm(
    name: str,
    description: str,
    kind: TargetKind,
    flags: tuple[str, ...],
    sources: tuple[str, ...],
    flash: MemoryRegion,
    ram: MemoryRegion,
    default_sram_bytes: int,
    qemu_machine: str | None,
    cpu_hz: int,
    counter: tuple[str, int],
) -> Target:
    """A Cortex-M target: its board directory is ``name`` (include dir and ``linker.ld.j2``); the
    default flash budget is 1 MiB."""
    return Target(
        name=name,
        description=description,
        kind=kind,
        cc="arm-none-eabi-gcc",
        cpu_flags=flags,
        board_sources=sources,
        board_include_dirs=(".", "common", name),
        linker_template=f"{name}/linker.ld.j2",
        flash=flash,
        ram=ram,
        default_sram_bytes=default_sram_bytes,
        default_flash_bytes=1 * MiB,
        qemu_machine=qemu_machine,
        cpu_hz=cpu_hz,
        counter_unit=counter[0],
        counter_resolution=counter[1],
    )


def _mps2(name: str, machine: str, core: str, flags: tuple[str, ...]) -> Target:
    return _arm(
        name,
        f"QEMU {machine} ({core}); SysTick counts instructions (-icount shift=0)",
        TargetKind.QEMU,
        flags,
        _QEMU_SOURCES,
        MemoryRegion(0x0000_0000, 4 * MiB),
        MemoryRegion(0x2000_0000, 4 * MiB),
        256 * KiB,
        machine,
        25_000_000,
        ("instructions", 40),
    )


def _board(
    name: str, description: str, flags: tuple[str, ...], source: str, flash: MemoryRegion, ram_bytes: int, cpu_hz: int
) -> Target:
    """A real board (``source`` is its board file): SRAM from 0x2000_0000, the DWT cycle counter."""
    return _arm(
        name,
        description,
        TargetKind.BOARD,
        flags,
        (*_COMMON_ARM_SOURCES, "common/tt_counter_dwt.c", source, f"{name}/tt_board_storage.c"),
        flash,
        MemoryRegion(0x2000_0000, ram_bytes),
        ram_bytes,
        None,
        cpu_hz,
        ("cycles", 1),
    )


TARGETS: Mapping[str, Target] = MappingProxyType(
    {
        "qemu-m4": _mps2("qemu-m4", "mps2-an386", "Cortex-M4F", M4F_FLAGS),
        "qemu-m7": _mps2("qemu-m7", "mps2-an500", "Cortex-M7", M7_FLAGS),
        "stm32f746g-disco": _board(
            "stm32f746g-disco",
            "STM32F746G-DISCO (STM32F746NG, Cortex-M7 @ 216 MHz); USART1 on the ST-LINK VCP",
            M7_FLAGS,
            "stm32f746g-disco/tt_board_stm32f746.c",
            MemoryRegion(0x0800_0000, 1 * MiB),
            320 * KiB,
            216_000_000,
        ),
        "nrf52840": _board(
            "nrf52840",
            "nRF52840 (Cortex-M4F @ 64 MHz, nRF52840-DK); UARTE0 on P0.06/P0.08",
            M4F_FLAGS,
            "nrf52840/tt_board_nrf52840.c",
            MemoryRegion(0x0000_0000, 1 * MiB),
            256 * KiB,
            64_000_000,
        ),
        "host": Target(
            name="host",
            description="the build machine (gcc); board API over stdio, counter in nanoseconds",
            kind=TargetKind.HOST,
            cc="gcc",
            cpu_flags=(),
            board_sources=("tt_board_io.c", "host/tt_board_host.c", "host/tt_board_storage_host.c"),
            board_include_dirs=(".",),
            linker_template=None,
            flash=None,
            ram=None,
            default_sram_bytes=None,
            default_flash_bytes=None,
            qemu_machine=None,
            cpu_hz=None,
            counter_unit="ns",
            counter_resolution=1,
        ),
    }
)


def get_target(target: str | Target) -> Target:
    """The target named ``target`` (a :class:`Target` is returned as is)."""
    if isinstance(target, Target):
        return target
    try:
        return TARGETS[target]
    except KeyError:
        raise UsageError(f"unknown target {target!r} (known: {', '.join(TARGETS)})") from None


@dataclass(frozen=True)
class Budget:
    """The memory a program may use on a target: SRAM (all of .data, .bss and both stacks)
    and flash (code, constants and .data's initial values)."""

    sram_bytes: int
    flash_bytes: int
    stack_bytes: int


def resolve_budget(
    target: str | Target,
    sram_bytes: int | None = None,
    flash_bytes: int | None = None,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    code_offset: int = 0,
) -> Budget:
    """Checks a budget against the part (None = the target's default) and returns it.
    ``code_offset``: the program's flash starts that many bytes into the part's flash (below
    it sits the bootloader), so the flash budget is at most the rest of the part (the
    default budget is capped to it)."""
    t = get_target(target)
    if t.ram is None or t.flash is None or t.default_sram_bytes is None or t.default_flash_bytes is None:
        raise UsageError(f"target {t.name} has no memory budget (it is not a microcontroller)")
    if not 0 <= code_offset < t.flash.size or code_offset % CODE_OFFSET_ALIGN:
        raise UsageError(
            f"code offset {code_offset} for {t.name}: must be a multiple of {CODE_OFFSET_ALIGN} bytes "
            f"(the vector table's alignment) inside the part's {t.flash.size} bytes of flash"
        )
    sram = t.default_sram_bytes if sram_bytes is None else sram_bytes
    flash = min(t.default_flash_bytes, t.flash.size - code_offset) if flash_bytes is None else flash_bytes
    if stack_bytes <= 0 or stack_bytes % 8:
        raise UsageError(f"stack size must be a positive multiple of 8 bytes, got {stack_bytes}")
    if sram % 8 or flash % 8:
        raise UsageError(f"budgets must be multiples of 8 bytes (SRAM {sram}, flash {flash})")
    if not stack_bytes + HANDLER_STACK_BYTES < sram <= t.ram.size:
        raise UsageError(
            f"SRAM budget {sram} bytes for {t.name}: must exceed the stacks "
            f"({stack_bytes} + {HANDLER_STACK_BYTES} bytes) and be at most the part's {t.ram.size} bytes"
        )
    if not 0 < flash <= t.flash.size - code_offset:
        where = f" (the part's {t.flash.size} bytes less the code offset {code_offset})" if code_offset else ""
        raise UsageError(
            f"flash budget {flash} bytes for {t.name}: must be in 1..{t.flash.size - code_offset} bytes{where}"
        )
    return Budget(sram, flash, stack_bytes)


def render_linker_script(
    target: str | Target,
    sram_bytes: int | None = None,
    flash_bytes: int | None = None,
    stack_bytes: int = DEFAULT_STACK_BYTES,
    *,
    code_offset: int = 0,
    noinit_bytes: int = 0,
) -> str:
    """The GNU ld script of ``target`` for a budget: region RAM = [ram origin, + sram_bytes),
    region FLASH = [flash origin + code_offset, + flash_bytes). ``noinit_bytes`` (a multiple
    of 8) reserves that many bytes at the start of RAM that the startup code neither copies
    nor zeroes (symbol ``_tt_noinit_start``: the bootloader's stay request). Every value is
    computed here; the template only substitutes them (Jinja2, StrictUndefined)."""
    t = get_target(target)
    budget = resolve_budget(t, sram_bytes, flash_bytes, stack_bytes, code_offset)
    if noinit_bytes < 0 or noinit_bytes % 8:
        raise UsageError(f"noinit_bytes must be a non-negative multiple of 8, got {noinit_bytes}")
    assert t.ram is not None and t.flash is not None and t.linker_template is not None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(BOARDS_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    return env.get_template(t.linker_template).render(
        target=t.name,
        template=f"firmware_templates/boards/{t.linker_template}",
        flash_origin=f"0x{t.flash.origin + code_offset:08X}",
        code_offset=code_offset,
        noinit_bytes=noinit_bytes,
        flash_length=budget.flash_bytes,
        ram_origin=f"0x{t.ram.origin:08X}",
        ram_length=budget.sram_bytes,
        stack_bytes=budget.stack_bytes,
        handler_stack_bytes=HANDLER_STACK_BYTES,
    )


@dataclass(frozen=True)
class ElfInfo:
    """A built program. ``text``/``data``/``bss`` are ``size``'s (Berkeley) figures: on the
    microcontrollers ``bss`` includes both stacks; flash used = text + data, SRAM used =
    data + bss. ``bin`` is the raw flash image (None for the host)."""

    target: str
    elf: Path
    bin: Path | None
    map: Path
    linker_script: Path | None
    text: int
    data: int
    bss: int
    sram_budget: int | None
    flash_budget: int | None

    @property
    def flash_used(self) -> int:
        return self.text + self.data

    @property
    def ram_used(self) -> int:
        return self.data + self.bss


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pkg = "gcc-arm-none-eabi and libnewlib-arm-none-eabi" if name.startswith("arm-none-eabi") else name
        raise ToolchainMissingError(f"{name} not found on PATH (Debian packages: {pkg}; `make apt` installs them)")
    return path


_OVERFLOW_RE = re.compile(r"region [`'\"]?(\w+)['\"]? overflowed by (\d+) bytes")
_UNDEFINED_RE = re.compile(r"undefined reference to [`'\"]?(\w+)['\"]?")
_SYSCALLS = frozenset({"_write", "_read", "_close", "_lseek", "_fstat", "_isatty", "_open", "_kill", "_getpid"})


def _link_error(t: Target, name: str, budget: Budget | None, log: str) -> BuildError:
    overflows = [(m.group(1), int(m.group(2))) for m in _OVERFLOW_RE.finditer(log)]
    if overflows and budget is not None:
        region, over = overflows[0]
        limit = budget.sram_bytes if region == "RAM" else budget.flash_bytes
        kind = "SRAM" if region == "RAM" else "flash"
        detail = "; ".join(f"region {r} overflowed by {n} bytes" for r, n in overflows)
        return RegionOverflowError(
            f"{name} does not fit {t.name}'s budget: {detail} ({kind} budget {limit} bytes)", region, over, limit, log
        )
    undefined = {m.group(1) for m in _UNDEFINED_RE.finditer(log)}
    if "_sbrk" in undefined:
        return BuildError(f"{name} uses malloc (through _sbrk): tinytrain firmware has no heap", log)
    if undefined & _SYSCALLS:
        return BuildError(
            f"{name} uses stdio or OS calls ({', '.join(sorted(undefined & _SYSCALLS))}): "
            "use the board API (tt_board.h) instead",
            log,
        )
    return BuildError(f"building {name} for {t.name} failed", log)


def _run_tool(cmd: Sequence[str], what: str) -> str:
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"{what} failed: {' '.join(cmd)}", r.stderr)
    return r.stdout


def _size(size_tool: str, elf: Path) -> tuple[int, int, int]:
    out = _run_tool([size_tool, "-B", str(elf)], "size")
    lines = out.strip().splitlines()
    fields = lines[-1].split() if len(lines) >= 2 else []
    if len(fields) < 3 or not all(f.isdigit() for f in fields[:3]):
        raise BuildError(f"unexpected output of {size_tool}: {out!r}")
    return int(fields[0]), int(fields[1]), int(fields[2])


def elf_sizes(target: str | Target, elf: Path) -> tuple[int, int, int]:
    """``(text, data, bss)`` of a built program (``size -B``; see :class:`ElfInfo`)."""
    return _size(_tool("arm-none-eabi-size" if get_target(target).is_arm else "size"), Path(elf))


def board_sources(target: str | Target) -> tuple[Path, ...]:
    """The board layer's C files for ``target``."""
    return tuple(BOARDS_DIR / s for s in get_target(target).board_sources)


def board_include_dirs(target: str | Target) -> tuple[Path, ...]:
    """The include directories of the board layer (``tt_board.h``, ``tt_board_config.h``)."""
    return tuple((BOARDS_DIR / d).resolve() for d in get_target(target).board_include_dirs)


def build_firmware(
    target: str | Target,
    sources: Sequence[Path],
    include_dirs: Sequence[Path],
    out_dir: Path,
    sram_bytes: int | None = None,
    flash_bytes: int | None = None,
    extra_flags: Sequence[str] = (),
    *,
    name: str = "firmware",
    stack_bytes: int = DEFAULT_STACK_BYTES,
    with_board: bool = True,
    code_offset: int = 0,
    noinit_bytes: int = 0,
) -> ElfInfo:
    """Compiles and links ``sources`` (plus the board layer unless ``with_board=False``) for
    ``target`` into ``out_dir/<name>.elf`` with a map file and, on the microcontrollers, a
    raw ``.bin`` and the rendered linker script ``<name>.ld``. Budgets default to the
    target's (:func:`resolve_budget`); ``extra_flags`` go last on the command line (e.g.
    ``-D`` definitions). ``code_offset`` and ``noinit_bytes`` place the program for the
    bootloader (:func:`render_linker_script`). Raises :class:`RegionOverflowError` when the
    program does not fit and :class:`BuildError` for any other compile or link error."""
    t = get_target(target)
    out_dir.mkdir(parents=True, exist_ok=True)
    srcs = [*(board_sources(t) if with_board else ()), *map(Path, sources)]
    incs = [*(board_include_dirs(t) if with_board else ()), *map(Path, include_dirs)]
    elf = out_dir / (f"{name}.elf" if t.is_arm else name)
    map_file = out_dir / f"{name}.map"
    cc = _tool(t.cc)
    cmd = [cc, *t.cpu_flags, *C_FLAGS, "-g", *SECTION_FLAGS, *(f"-I{d}" for d in incs), *map(str, srcs)]
    budget: Budget | None = None
    script: Path | None = None
    if t.is_arm:
        budget = resolve_budget(t, sram_bytes, flash_bytes, stack_bytes, code_offset)
        script = out_dir / f"{name}.ld"
        script.write_text(
            render_linker_script(
                t,
                budget.sram_bytes,
                budget.flash_bytes,
                budget.stack_bytes,
                code_offset=code_offset,
                noinit_bytes=noinit_bytes,
            )
        )
        cmd += ["--specs=nano.specs", "-nostartfiles", "-T", str(script)]
    cmd += ["-Wl,--gc-sections", f"-Wl,-Map={map_file}", *extra_flags, "-o", str(elf)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise _link_error(t, name, budget, f"$ {' '.join(cmd)}\n{r.stderr}")
    size_tool = _tool("arm-none-eabi-size" if t.is_arm else "size")
    text, data, bss = _size(size_tool, elf)
    binary: Path | None = None
    if t.is_arm:
        binary = out_dir / f"{name}.bin"
        _run_tool([_tool("arm-none-eabi-objcopy"), "-O", "binary", str(elf), str(binary)], "objcopy")
    return ElfInfo(
        target=t.name,
        elf=elf,
        bin=binary,
        map=map_file,
        linker_script=script,
        text=text,
        data=data,
        bss=bss,
        sram_budget=budget.sram_bytes if budget else None,
        flash_budget=budget.flash_bytes if budget else None,
    )


class RunResult(NamedTuple):
    """How a firmware run ended: its exit status and everything it wrote to the UART."""

    exit_status: int
    uart_output: bytes


def qemu_command(
    elf: Path, target: str | Target, icount: bool = True, serial: str = "stdio", storage: Path | None = None
) -> list[str]:
    """The qemu-system-arm command line running ``elf``: UART0 on ``serial`` (a QEMU chardev:
    ``stdio``, or ``tcp:127.0.0.1:PORT,server=on,wait=on,nodelay=on`` for pyserial's
    ``socket://``), semihosting on (exit status), and with ``icount`` one instruction per ns
    of virtual time (``sleep=off``: the virtual clock never waits for the host). ``storage``:
    the host file backing the board's checkpoint storage (tt_board_storage.h), passed on the
    semihosting command line as ``tt_storage=PATH`` (no spaces in PATH)."""
    t = get_target(target)
    if t.qemu_machine is None:
        raise UsageError(
            f"target {t.name} does not run in QEMU (QEMU targets: "
            f"{', '.join(n for n, x in TARGETS.items() if x.qemu_machine)})"
        )
    cmd = [
        _tool("qemu-system-arm"),
        "-machine", t.qemu_machine,
        "-nodefaults", "-display", "none", "-monitor", "none",
        "-serial", serial,
        "-semihosting-config", "enable=on,target=native",
        "-kernel", str(elf),
    ]  # fmt: skip
    if icount:
        cmd += ["-icount", "shift=0,sleep=off"]
    if storage is not None:
        if " " in str(storage):
            raise UsageError(f"the storage file path may not contain spaces: {storage}")
        cmd += ["-append", f"tt_storage={storage}"]
    return cmd


def _qemu_failed(stderr: str) -> str | None:
    """QEMU's own error (bad option, unloadable ELF) as opposed to the guest's exit status."""
    errors = [ln for ln in stderr.splitlines() if ln.startswith("qemu-system-arm:") and "warning" not in ln]
    return "\n".join(errors) if errors else None


def run_qemu(
    elf: Path, target: str | Target, timeout: float, stdin_bytes: bytes | None = None, icount: bool = True
) -> RunResult:
    """Runs ``elf`` on ``target``'s QEMU machine until the firmware exits (semihosting) and
    returns (exit status, UART output). ``stdin_bytes`` are fed to the UART's receiver.
    QEMU is killed after ``timeout`` seconds (:class:`FirmwareTimeoutError`, with the
    output so far)."""
    t = get_target(target)
    cmd = qemu_command(Path(elf), t, icount=icount)
    try:
        r = subprocess.run(
            cmd,
            input=stdin_bytes,
            stdin=subprocess.DEVNULL if stdin_bytes is None else None,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, bytes) else b""
        raise FirmwareTimeoutError(
            f"{Path(elf).name} on {t.name} did not exit within {timeout} s; output so far: "
            f"{out[-2000:].decode(errors='replace')!r}",
            out,
        ) from None
    failure = _qemu_failed(r.stderr.decode(errors="replace"))
    if failure is not None:
        raise FirmwareError(f"QEMU could not run {elf}: {failure}")
    return RunResult(r.returncode, r.stdout)


@dataclass(frozen=True)
class QemuSession:
    """A running QEMU whose UART0 is ``port``, a pyserial connection (``read``/``write``)."""

    process: subprocess.Popen[bytes]
    port: Any  # serial.SerialBase (pyserial has no type stubs)

    def wait(self, timeout: float) -> int:
        """Waits for the firmware to exit (semihosting) and returns its status."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise FirmwareTimeoutError(f"QEMU did not exit within {timeout} s", b"") from None


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def qemu_serial_session(
    elf: Path, target: str | Target, read_timeout: float = 10.0, icount: bool = True, storage: Path | None = None
) -> Iterator[QemuSession]:
    """Runs ``elf`` in QEMU with UART0 on a local TCP socket (``nodelay=on``: no ~44 ms
    batching per message) and yields a :class:`QemuSession` connected to it through pyserial's
    ``socket://`` URL (``read_timeout`` per read). QEMU waits for the connection before it
    starts the guest; leaving the block kills it if it is still running. ``storage``: the
    checkpoint storage file (:func:`qemu_command`)."""
    import serial  # pyserial

    port = _free_tcp_port()
    chardev = f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"
    proc = subprocess.Popen(
        qemu_command(Path(elf), target, icount=icount, serial=chardev, storage=storage),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    conn = None
    try:
        deadline = time.monotonic() + 10.0
        while conn is None:
            try:
                conn = serial.serial_for_url(f"socket://127.0.0.1:{port}", timeout=read_timeout)
            except serial.SerialException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise FirmwareError(f"QEMU serial session on port {port} failed: {err}") from None
                time.sleep(0.02)
        yield QemuSession(proc, conn)
    finally:
        if conn is not None:
            conn.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def run_host(exe: Path, timeout: float, stdin_bytes: bytes | None = None) -> RunResult:
    """Runs a ``host`` target executable like :func:`run_qemu` runs a QEMU firmware."""
    try:
        r = subprocess.run(
            [str(exe)],
            input=stdin_bytes,
            stdin=subprocess.DEVNULL if stdin_bytes is None else None,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        out = e.stdout if isinstance(e.stdout, bytes) else b""
        raise FirmwareTimeoutError(f"{Path(exe).name} did not exit within {timeout} s", out) from None
    return RunResult(r.returncode, r.stdout)


def run_firmware(info: ElfInfo, timeout: float, stdin_bytes: bytes | None = None, icount: bool = True) -> RunResult:
    """Runs a built program on its target: QEMU for the QEMU targets, directly for the host."""
    t = get_target(info.target)
    if t.kind is TargetKind.HOST:
        return run_host(info.elf, timeout, stdin_bytes)
    if t.kind is TargetKind.QEMU:
        return run_qemu(info.elf, t, timeout, stdin_bytes, icount)
    raise UsageError(f"target {t.name} is real hardware: flash {info.bin} with the board's tools")
