"""The board layer (firmware_templates/boards) and codegen.targets: linker scripts for a budget,
firmware builds for every target, runs on QEMU (exit status, UART in and out, faults) and the
instruction counter's determinism and calibration."""

from __future__ import annotations

import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import jinja2
import pytest

from codegen import targets as tg
from codegen.targets import (
    BOARDS_DIR,
    HANDLER_STACK_BYTES,
    TARGETS,
    BuildError,
    ElfInfo,
    FirmwareTimeoutError,
    RegionOverflowError,
    TargetKind,
    ToolchainMissingError,
    build_firmware,
    get_target,
    render_linker_script,
    run_firmware,
    run_qemu,
)
from tinytrain.errors import TinytrainError, UsageError

SELFTEST = BOARDS_DIR / "tests" / "tt_board_selftest.c"
QEMU_TARGETS = ("qemu-m4", "qemu-m7")
REAL_BOARDS = ("stm32f746g-disco", "nrf52840")
TIMEOUT = 30.0
FAULT_EXIT = 99  # TT_BOARD_EXIT_FAULT in tt_board.h

requires_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed")
requires_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed",
)


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boards")


def _build(out: Path, target: str, name: str, *flags: str, **kw: object) -> ElfInfo:
    return build_firmware(target, [SELFTEST], [], out / target, extra_flags=list(flags), name=name, **kw)  # type: ignore[arg-type]


# --- target descriptions and linker scripts ---------------------------------------------------


def test_targets_describe_the_parts() -> None:
    assert set(TARGETS) == {*QEMU_TARGETS, *REAL_BOARDS, "host"}
    m4 = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
    m7 = ("-mcpu=cortex-m7", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv5-d16")
    assert TARGETS["qemu-m4"].cpu_flags == m4 and TARGETS["nrf52840"].cpu_flags == m4
    assert TARGETS["qemu-m7"].cpu_flags == m7 and TARGETS["stm32f746g-disco"].cpu_flags == m7
    assert TARGETS["qemu-m4"].qemu_machine == "mps2-an386" and TARGETS["qemu-m7"].qemu_machine == "mps2-an500"
    for name, t in TARGETS.items():
        assert t.name == name
        assert t.runnable == (name in QEMU_TARGETS or name == "host")
        for src in t.board_sources:
            assert (BOARDS_DIR / src).is_file(), src
        if t.kind is not TargetKind.HOST:
            assert t.ram is not None and t.flash is not None and t.linker_template is not None
            assert (BOARDS_DIR / t.linker_template).is_file()
            assert t.default_sram_bytes is not None and t.default_sram_bytes <= t.ram.size
            assert (BOARDS_DIR / name / "tt_board_config.h").is_file()
    assert TARGETS["stm32f746g-disco"].flash == tg.MemoryRegion(0x0800_0000, 1 << 20)
    assert TARGETS["stm32f746g-disco"].ram == tg.MemoryRegion(0x2000_0000, 320 << 10)
    assert TARGETS["nrf52840"].ram == tg.MemoryRegion(0x2000_0000, 256 << 10)
    with pytest.raises(TypeError):
        TARGETS["x"] = TARGETS["host"]  # type: ignore[index]
    with pytest.raises(UsageError, match="unknown target"):
        get_target("esp32")
    assert get_target(TARGETS["nrf52840"]) is TARGETS["nrf52840"]


def _regions(script: str) -> dict[str, tuple[int, int]]:
    found = re.findall(r"^\s*(\w+) \(\w+\)\s*: ORIGIN = (0x[0-9A-F]+), LENGTH = (\d+)$", script, re.M)
    return {name: (int(origin, 16), int(length)) for name, origin, length in found}


@pytest.mark.parametrize("target", [*QEMU_TARGETS, *REAL_BOARDS])
def test_linker_script_regions_are_the_budget(target: str) -> None:
    t = get_target(target)
    assert t.ram is not None and t.flash is not None
    script = render_linker_script(target, sram_bytes=200 * 1024, flash_bytes=300 * 1024, stack_bytes=2048)
    assert _regions(script) == {"FLASH": (t.flash.origin, 300 * 1024), "RAM": (t.ram.origin, 200 * 1024)}
    assert "{{" not in script and "{%" not in script
    assert re.search(r"\. = \. \+ 2048;", script) and re.search(rf"\. = \. \+ {HANDLER_STACK_BYTES};", script)
    default = _regions(render_linker_script(target))
    assert default["RAM"][1] == t.default_sram_bytes and default["FLASH"][1] == t.default_flash_bytes


def test_linker_script_rejects_bad_budgets() -> None:
    with pytest.raises(UsageError, match="SRAM budget"):
        render_linker_script("nrf52840", sram_bytes=512 * 1024)  # more than the part has
    with pytest.raises(UsageError, match="SRAM budget"):
        render_linker_script("qemu-m4", sram_bytes=4096)  # smaller than the stacks
    with pytest.raises(UsageError, match="flash budget"):
        render_linker_script("stm32f746g-disco", flash_bytes=2 << 20)
    with pytest.raises(UsageError, match="multiples of 8"):
        render_linker_script("qemu-m7", sram_bytes=100_001)
    with pytest.raises(UsageError, match="no memory budget"):
        render_linker_script("host")


def test_linker_template_is_strict() -> None:
    """A variable the Python side forgets is an error, not an empty string."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(BOARDS_DIR)), undefined=jinja2.StrictUndefined)
    with pytest.raises(jinja2.UndefinedError):
        env.get_template("qemu-m4/linker.ld.j2").render(target="qemu-m4")


# --- QEMU runs --------------------------------------------------------------------------------


@requires_qemu
@pytest.mark.parametrize("target", QEMU_TARGETS)
def test_hello_prints_and_exits_with_status(out: Path, target: str) -> None:
    info = _build(out, target, "hello", "-DTT_SELFTEST_STATUS=7")
    assert info.elf.is_file() and info.map.is_file() and info.bin is not None and info.bin.is_file()
    assert info.sram_budget == get_target(target).default_sram_bytes
    status, uart = run_qemu(info.elf, target, TIMEOUT)
    assert status == 7
    assert uart.decode().splitlines() == [
        f"hello from {target}",
        "counter instructions resolution 40",
        "data 0x600dda7a bss 0x00000000",  # .data copied from flash, .bss zeroed at reset
        f"numbers {-(2**31)} {2**64 - 1} 0x{0xDEADBEEF:08x}",
    ]


def _counts(uart: bytes) -> dict[int, int]:
    return {int(n): int(c) for n, c in re.findall(rb"^count (\d+) (\d+)$", uart, re.M)}


@requires_qemu
@pytest.mark.parametrize("target", QEMU_TARGETS)
@pytest.mark.parametrize("reload", [None, 0xFFF], ids=["reload-max", "reload-4095"])
def test_instruction_counter_is_deterministic_and_exact(out: Path, target: str, reload: int | None) -> None:
    """The timed loop runs exactly 2 instructions per iteration: the counter must measure
    2 * iterations (+ a constant) to within its resolution, identically run after run. A small
    SysTick reload makes the count cross many wraps (each costs the handler's few instructions)."""
    n = 100_000
    flags = ["-DTT_SELFTEST_MODE=1", f"-DTT_SELFTEST_N={n}u"]
    if reload is not None:
        flags.append(f"-DTT_SYSTICK_RELOAD={reload:#x}")
    info = _build(out, target, f"count-{reload}", *flags)
    first = run_qemu(info.elf, target, TIMEOUT)
    second = run_qemu(info.elf, target, TIMEOUT)
    assert first.exit_status == 0 and second.exit_status == 0
    assert first.uart_output == second.uart_output  # deterministic, byte for byte
    counts = _counts(first.uart_output)
    assert sorted(counts) == [1, n, 2 * n, 4 * n]
    resolution = get_target(target).counter_resolution
    base = counts[1]
    for k in (1, 2, 4):
        insns = 2 * (k * n - 1)
        wraps = 0 if reload is None else insns // ((reload + 1) * resolution) + 1
        assert abs(counts[k * n] - base - insns) <= 2 * resolution + 16 * wraps, (k, counts)
        assert (counts[k * n] - base) % resolution == 0
    ratio = (counts[4 * n] - base) / (counts[n] - base)
    assert abs(ratio - 4.0) < 1e-3


FAULTS = {
    "udf": (["-DTT_SELFTEST_MODE=3"], ["UsageFault", "undefined instruction"]),
    "bad-read": (["-DTT_SELFTEST_MODE=2"], ["BusFault", "bfar=0xf0000000", "precise data bus error"]),
    "div0": (["-DTT_SELFTEST_MODE=8"], ["UsageFault", "division by zero"]),
    "stack-overflow": (["-DTT_SELFTEST_MODE=7", "-DTT_SELFTEST_BYTES=8192"], ["MemManage", "main stack overflow"]),
}


@requires_qemu
@pytest.mark.parametrize("target", QEMU_TARGETS)
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_exits_nonzero_with_a_report(out: Path, target: str, fault: str) -> None:
    flags, expected = FAULTS[fault]
    info = _build(out, target, f"fault-{fault}", *flags)
    status, uart = run_qemu(info.elf, target, TIMEOUT)
    text = uart.decode()
    assert status == FAULT_EXIT, text
    assert f"*** tinytrain fault: {expected[0]}" in text and f"on {target}" in text
    for phrase in expected[1:]:
        assert phrase in text, text
    if fault != "stack-overflow":  # the stacked frame is readable: the faulting pc is reported
        assert re.search(r"pc=0x[0-9a-f]{8}", text)


@requires_qemu
def test_uart_receives_host_bytes(out: Path) -> None:
    info = _build(out, "qemu-m4", "echo", "-DTT_SELFTEST_MODE=6")
    status, uart = run_firmware(info, TIMEOUT, stdin_bytes=b"tiny train\nignored")
    assert status == len("tiny train")
    assert uart.endswith(b"echo: tiny train\n")


@requires_qemu
def test_serial_session_talks_to_the_firmware(out: Path) -> None:
    """UART0 on a TCP socket (pyserial socket://): byte-by-byte request/response, then exit."""
    info = _build(out, "qemu-m7", "echo", "-DTT_SELFTEST_MODE=6")
    with tg.qemu_serial_session(info.elf, "qemu-m7", read_timeout=10.0) as session:
        assert session.port.read_until(b"echo: ").endswith(
            b"hello from qemu-m7\ncounter instructions resolution 40\necho: "
        )
        for byte in b"xyz":
            session.port.write(bytes([byte]))
            assert session.port.read(1) == bytes([byte])
        session.port.write(b"\n")
        assert session.port.read(1) == b"\n"
        assert session.wait(TIMEOUT) == 3


@requires_qemu
def test_run_is_bounded_by_its_timeout(out: Path) -> None:
    info = _build(out, "qemu-m7", "echo", "-DTT_SELFTEST_MODE=6")  # waits for input forever
    with pytest.raises(FirmwareTimeoutError) as e:
        run_qemu(info.elf, "qemu-m7", timeout=1.5)
    assert e.value.output.endswith(b"echo: ")


@requires_arm
def test_run_qemu_refuses_targets_without_qemu(out: Path) -> None:
    with pytest.raises(UsageError, match="does not run in QEMU"):
        run_qemu(out / "none.elf", "stm32f746g-disco", TIMEOUT)


def test_missing_qemu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(tg.shutil, "which", lambda name: None if "qemu" in name else real_which(name))
    with pytest.raises(ToolchainMissingError, match="qemu-system-arm not found"):
        run_qemu(tmp_path / "x.elf", "qemu-m4", TIMEOUT)


# --- budgets ---------------------------------------------------------------------------------


@requires_arm
@pytest.mark.parametrize(("region", "mode", "budget"), [("RAM", 4, "sram_bytes"), ("FLASH", 5, "flash_bytes")])
def test_over_budget_fails_to_link_naming_the_region(out: Path, region: str, mode: int, budget: str) -> None:
    """A static array (RAM: .bss, FLASH: const table) larger than the budget does not link;
    the error names the region and the exact overflow (the same program with a small array
    tells how much the rest takes)."""
    limit = 64 * 1024
    small, big = 1024, 72 * 1024
    fits = _build(out, "qemu-m7", f"fits-{region}", f"-DTT_SELFTEST_MODE={mode}", f"-DTT_SELFTEST_BYTES={small}",
                  **{budget: limit})  # fmt: skip
    used = fits.ram_used if region == "RAM" else fits.flash_used
    with pytest.raises(RegionOverflowError) as e:
        _build(out, "qemu-m7", f"over-{region}", f"-DTT_SELFTEST_MODE={mode}", f"-DTT_SELFTEST_BYTES={big}",
               **{budget: limit})  # fmt: skip
    err = e.value
    assert isinstance(err, TinytrainError)
    assert err.region == region and err.budget_bytes == limit
    assert abs(err.overflow_bytes - (used - small + big - limit)) <= 8
    assert f"region {region} overflowed by {err.overflow_bytes} bytes" in str(err)


@requires_arm
def test_malloc_does_not_link(out: Path) -> None:
    with pytest.raises(BuildError, match="no heap"):
        _build(out, "qemu-m4", "malloc", "-DTT_SELFTEST_MODE=9")


@requires_arm
def test_compile_error_is_reported(out: Path) -> None:
    with pytest.raises(BuildError, match="TT_SELFTEST_MODE"):
        _build(out, "qemu-m4", "bad", "-DTT_SELFTEST_MODE=42")


# --- real boards and the host ------------------------------------------------------------------


@requires_arm
@pytest.mark.parametrize("target", REAL_BOARDS)
def test_real_board_builds_elf_and_bin(out: Path, target: str, record_property: Callable[[str, object], None]) -> None:
    info = _build(out, target, "hello")
    t = get_target(target)
    assert t.flash is not None and t.ram is not None
    assert info.bin is not None and info.text > 0 and info.bss > 0
    image = info.bin.read_bytes()
    assert len(image) == info.text + info.data  # one contiguous flash image from the origin
    record_property("sizes", {"text": info.text, "data": info.data, "bss": info.bss, "bin": len(image)})
    print(f"{target}: text={info.text} data={info.data} bss={info.bss} bin={len(image)} bytes")
    # The vector table at the flash origin: initial MSP = top of the exception stack (inside
    # the RAM budget, 8-aligned), reset vector = a Thumb address inside the image.
    sp, reset = struct.unpack_from("<II", image, 0)
    assert t.ram.origin < sp <= t.ram.origin + t.default_sram_bytes and sp % 8 == 0  # type: ignore[operator]
    assert reset & 1 and t.flash.origin <= reset - 1 < t.flash.origin + len(image)
    assert b"stm32f746g-disco" in image if target == "stm32f746g-disco" else b"nrf52840" in image
    with pytest.raises(UsageError, match="real hardware"):
        run_firmware(info, TIMEOUT)


def test_host_target_runs_the_board_api(out: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    hello = _build(out, "host", "hello", "-DTT_SELFTEST_STATUS=5")
    assert hello.bin is None and hello.linker_script is None and hello.sram_budget is None
    status, uart = run_firmware(hello, TIMEOUT)
    assert status == 5
    assert uart.decode().splitlines()[:2] == ["hello from host", "counter ns resolution 1"]
    echo = _build(out, "host", "echo", "-DTT_SELFTEST_MODE=6")
    assert run_firmware(echo, TIMEOUT, stdin_bytes=b"abc\n") == (
        3,
        b"hello from host\ncounter ns resolution 1\necho: abc\n",
    )
