"""Flashing an application image onto a board.

Two methods:

* ``"tinytrain"`` (every bootloader target, QEMU included): the tinytrain serial bootloader
  (firmware_templates/bootloader, docs/protocol.md "Bootloader") over the frame protocol —
  BL_INFO (region, chunk size), BL_ERASE, BL_WRITE in chunks of up to 1024 bytes (each a
  CRC-checked frame; a corrupt one is dropped by the device and retransmitted by the Link),
  BL_VERIFY with the CRC-32 of the whole image, BL_BOOT, then IDENTIFY until the
  application answers. If a training application runs, it is first restarted into the
  bootloader (its RESET mode 2). The image is the ``.bin`` of an application built with
  ``build_app(..., for_bootloader=True)`` (linked at the bootloader's application region).
* ``"stm32"`` (STM32 boards, e.g. the STM32F746G-DISCO): the STM32 ROM UART bootloader
  (ST AN3155) through the ``stm32loader`` package, for a board without the tinytrain
  bootloader, or to install it. BOOT0 must be high at reset; the image is written at
  ``address`` (default: the start of flash, 0x08000000), read back, compared, then started.

Errors are one-line :class:`FlashError`\\ s (``LinkError`` when the port does not answer).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from host_tools.device import Device, Identity
from host_tools.frame import Status
from host_tools.link import DeviceError, Link, LinkError, command_name, open_port
from tinytrain.errors import TinytrainError, UsageError

ROLE_BOOTLOADER = 0
ROLE_APP = 1
APP_RESET = 0x09  # the application's RESET command (host_tools.device.Command.RESET)
RESET_TO_BOOTLOADER = 2  # its mode 2 (host_tools.device.ResetMode.BOOTLOADER)
METHODS = ("tinytrain", "stm32")
STM32_FLASH_ORIGIN = 0x0800_0000
STM32F7_SECTORS = (
    0x0800_0000, 0x0800_8000, 0x0801_0000, 0x0801_8000, 0x0802_0000, 0x0804_0000, 0x0808_0000, 0x080C_0000,
    0x0810_0000,
)  # fmt: skip
"""Sector boundaries of the STM32F74x/75x 1 MiB flash (RM0385 3.3.2): the ROM bootloader's
extended erase takes sector numbers."""

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called after every chunk."""

_INFO = struct.Struct("<IIIHHBII")


class FlashError(TinytrainError):
    """Flashing failed (image refused, verification failed, no application after boot)."""


class BlCommand(IntEnum):
    """Bootloader command codes (TT_BL_CMD_* in firmware_templates/bootloader/tt_bootloader.h)."""

    IDENTIFY = 0x01
    BL_INFO = 0x40
    BL_ERASE = 0x41
    BL_WRITE = 0x42
    BL_VERIFY = 0x43
    BL_BOOT = 0x44


class ImageState(IntEnum):
    NONE = 0
    WRITTEN = 1
    VALID = 2


@dataclass(frozen=True)
class BootloaderInfo:
    """BL_INFO's answer."""

    version: int
    app_base: int
    app_size: int
    max_chunk: int
    write_align: int
    state: ImageState
    image_size: int
    image_crc: int


@dataclass(frozen=True)
class FlashResult:
    method: str
    size: int  # bytes written (the image padded to the write alignment)
    crc: int  # CRC-32 of those bytes
    chunks: int
    retransmissions: int
    seconds: float
    identity: Identity | None  # the application's IDENTIFY after boot (tinytrain method, boot=True)


def _status_name(status: int) -> str:
    return Status(status).name if status in Status._value2member_map_ else str(status)


class Bootloader:
    """Client of the tinytrain bootloader over ``link`` (one method per command)."""

    def __init__(self, link: Link, *, erase_timeout: float = 60.0) -> None:
        self.link = link
        self.erase_timeout = erase_timeout

    def _call(self, cmd: BlCommand, payload: bytes = b"", what: str = "", timeout: float | None = None) -> bytes:
        try:
            return self.link.call(cmd, payload, timeout=timeout)
        except DeviceError as e:
            detail = f" ({what})" if what else ""
            raise FlashError(f"bootloader refused {command_name(cmd)}{detail}: {_status_name(e.status)}") from None

    def role(self) -> int:
        """IDENTIFY's role byte: 0 the bootloader, 1 the training application."""
        p = self._call(BlCommand.IDENTIFY)
        if not p:
            raise FlashError("the device answered IDENTIFY with nothing: not a tinytrain firmware")
        return p[0]

    def info(self) -> BootloaderInfo:
        p = self._call(BlCommand.BL_INFO)
        if len(p) != _INFO.size:
            raise FlashError(f"malformed BL_INFO answer ({len(p)} bytes, expected {_INFO.size})")
        f = _INFO.unpack(p)
        return BootloaderInfo(
            f[0], f[1], f[2], f[3], f[4], ImageState(f[5]) if f[5] < 3 else ImageState.NONE, f[6], f[7]
        )

    def erase(self, size: int) -> None:
        self._call(BlCommand.BL_ERASE, struct.pack("<I", size), f"{size} bytes", timeout=self.erase_timeout)

    def write(self, offset: int, data: bytes) -> None:
        self._call(BlCommand.BL_WRITE, struct.pack("<I", offset) + data, f"{len(data)} bytes at offset {offset}")

    def verify(self, size: int, crc: int) -> int:
        """Has the device check the image's CRC-32; returns the CRC it computed. FlashError
        (VERIFY_FAILED, naming both CRCs) if they differ: the image is then not bootable."""
        try:
            p = self.link.call(BlCommand.BL_VERIFY, struct.pack("<II", size, crc), timeout=self.erase_timeout)
        except DeviceError as e:
            if e.status == Status.VERIFY_FAILED and len(e.payload) == 4:
                (got,) = struct.unpack("<I", e.payload)
                raise FlashError(
                    f"verification failed: the device computed CRC-32 {got:08x} over {size} bytes, "
                    f"the image has {crc:08x}"
                ) from None
            hint = (
                " (the image's vector table does not point into the application region)"
                if (e.status == Status.BAD_ARG)
                else ""
            )
            raise FlashError(f"bootloader refused BL_VERIFY: {_status_name(e.status)}{hint}") from None
        (got,) = struct.unpack("<I", p)
        return int(got)

    def boot(self) -> None:
        """Starts the verified image. A lost answer retransmitted to the application comes
        back UNKNOWN_CMD: also a success."""
        r = self.link.request(BlCommand.BL_BOOT)
        if r.status not in (Status.OK, Status.UNKNOWN_CMD):
            raise FlashError(f"bootloader refused BL_BOOT: {_status_name(r.status)} (no verified image)")


def pad_image(image: bytes, align: int) -> bytes:
    """The image padded with 0xFF (erased flash) to a multiple of ``align`` bytes."""
    return image + b"\xff" * (-len(image) % align)


def _load(image: bytes | Path) -> bytes:
    if isinstance(image, Path):
        try:
            return image.read_bytes()
        except OSError as e:
            raise FlashError(f"cannot read image {image}: {e}") from None
    return bytes(image)


def check_image(image: bytes, info: BootloaderInfo) -> None:
    """Refuses (FlashError) an image that cannot run from the bootloader's application
    region: empty, too large, or not linked there (its reset vector points elsewhere)."""
    if not image:
        raise FlashError("the image is empty")
    if len(image) > info.app_size:
        raise FlashError(
            f"the image ({len(image)} bytes) does not fit the application region "
            f"({info.app_size} bytes at 0x{info.app_base:08x})"
        )
    if len(image) < 8:
        raise FlashError(f"the image ({len(image)} bytes) is too short for a vector table")
    _, reset = struct.unpack_from("<II", image)
    if not (reset & 1 and info.app_base <= (reset & ~1) < info.app_base + len(image)):
        raise FlashError(
            f"the image's reset handler 0x{reset:08x} is not inside it once placed at 0x{info.app_base:08x}: "
            "link the application for the bootloader (build_app(..., for_bootloader=True))"
        )


def flash(
    port: Link | str,
    image: bytes | Path,
    *,
    method: str = "tinytrain",
    progress: Progress | None = None,
    boot: bool = True,
    app_timeout: float = 20.0,
    erase_timeout: float = 60.0,
    address: int | None = None,
    baudrate: int = 115200,
) -> FlashResult:
    """Writes ``image`` (bytes or a ``.bin`` path) to the board behind ``port``.

    ``method="tinytrain"``: ``port`` is a :class:`Link` or a pyserial URL; the device must run
    the tinytrain bootloader. With ``boot`` the image is started and the call returns once the
    application answers IDENTIFY (within ``app_timeout`` s). ``method="stm32"``: ``port`` is
    a serial device name (``/dev/ttyACM0``, ``COM3``); see the module docstring."""
    if method not in METHODS:
        raise UsageError(f"unknown flashing method {method!r} (methods: {', '.join(METHODS)})")
    data = _load(image)
    if method == "stm32":
        if not isinstance(port, str):
            raise UsageError("the stm32 method talks to the ROM bootloader on a serial device name, not a Link")
        return flash_stm32(port, data, address=STM32_FLASH_ORIGIN if address is None else address,
                           progress=progress, baudrate=baudrate)  # fmt: skip
    if address is not None:
        raise UsageError("the tinytrain method writes at the bootloader's application region: no address")
    if isinstance(port, str):
        with Link(open_port(port, baudrate=baudrate), timeout=2.0, retries=5) as link:
            return _flash_tinytrain(link, data, progress, boot, app_timeout, erase_timeout)
    return _flash_tinytrain(port, data, progress, boot, app_timeout, erase_timeout)


def _flash_tinytrain(
    link: Link, data: bytes, progress: Progress | None, boot: bool, app_timeout: float, erase_timeout: float
) -> FlashResult:
    t0 = time.monotonic()
    tx0 = link.stats.retransmissions
    bl = Bootloader(link, erase_timeout=erase_timeout)
    role = bl.role()
    if role == ROLE_APP:
        enter_bootloader(link, app_timeout)
    elif role != ROLE_BOOTLOADER:
        raise FlashError(f"the device answered IDENTIFY with role {role}: not the tinytrain bootloader")
    info = bl.info()
    padded = pad_image(data, info.write_align)
    check_image(padded, info)
    chunk = info.max_chunk - info.max_chunk % info.write_align
    crc = zlib.crc32(padded)
    bl.erase(len(padded))
    chunks = 0
    for off in range(0, len(padded), chunk):
        bl.write(off, padded[off : off + chunk])
        chunks += 1
        if progress is not None:
            progress(min(off + chunk, len(padded)), len(padded))
    got = bl.verify(len(padded), crc)
    if got != crc:
        raise FlashError(f"verification failed: the device computed CRC-32 {got:08x}, the image has {crc:08x}")
    identity = None
    if boot:
        bl.boot()
        identity = wait_for_app(link, app_timeout)
    return FlashResult(
        "tinytrain", len(padded), crc, chunks, link.stats.retransmissions - tx0, time.monotonic() - t0, identity
    )


def _wait_for_role(link: Link, role: int, deadline: float) -> bool:
    while True:
        try:
            r = link.request(BlCommand.IDENTIFY, timeout=0.5, retries=0)
            if r.status == Status.OK and r.payload[:1] == bytes([role]):
                return True
        except LinkError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def enter_bootloader(link: Link, timeout: float = 20.0) -> None:
    """Restarts the training application into the bootloader (RESET mode 2: the application
    sets the stay request and resets the board) and waits until the bootloader answers."""
    r = link.request(APP_RESET, struct.pack("<BI", RESET_TO_BOOTLOADER, 0))
    if r.status == Status.BAD_ARG:
        raise FlashError(
            "the device runs a training application that cannot restart into the bootloader (RESET mode 2 "
            "refused: built without it): reset the board into the bootloader by hand"
        )
    if r.status not in (Status.OK, Status.UNKNOWN_CMD):  # UNKNOWN_CMD: a lost answer, repeated to the bootloader
        raise FlashError(f"the training application refused RESET mode 2: {_status_name(r.status)}")
    if not _wait_for_role(link, ROLE_BOOTLOADER, time.monotonic() + timeout):
        raise FlashError(f"the bootloader did not answer IDENTIFY within {timeout:g} s of RESET mode 2")


def wait_for_app(link: Link, timeout: float) -> Identity:
    """IDENTIFY until the training application answers (role 1); its identity."""
    if not _wait_for_role(link, ROLE_APP, time.monotonic() + timeout):
        raise FlashError(f"the application did not answer IDENTIFY within {timeout:g} s of BL_BOOT")
    return Device(link).identify()


def _stm32_sectors(start: int, end: int) -> list[int]:
    """The F7 sector numbers overlapping [start, end)."""
    if not (STM32F7_SECTORS[0] <= start < end <= STM32F7_SECTORS[-1]):
        raise FlashError(
            f"[0x{start:08x}, 0x{end:08x}) is outside the STM32F74x flash "
            f"[0x{STM32F7_SECTORS[0]:08x}, 0x{STM32F7_SECTORS[-1]:08x})"
        )
    return [i for i in range(len(STM32F7_SECTORS) - 1) if STM32F7_SECTORS[i] < end and STM32F7_SECTORS[i + 1] > start]


def flash_stm32(
    port: str, image: bytes, *, address: int = STM32_FLASH_ORIGIN, progress: Progress | None = None,
    baudrate: int = 115200,
) -> FlashResult:  # fmt: skip
    """Writes ``image`` at ``address`` through the STM32 ROM UART bootloader (AN3155) with
    ``stm32loader``: sync (0x7F), GET, GET_ID, extended erase of the sectors it covers, write
    in 256-byte blocks, read back and compare, GO. The board must have started its ROM
    bootloader (BOOT0 high at reset); 8E1 on the serial port."""
    sectors = _stm32_sectors(address, address + len(image))
    try:
        from stm32loader.bootloader import Stm32Bootloader, Stm32LoaderError
        from stm32loader.uart import SerialConnection
    except ImportError:
        raise FlashError("the stm32 method needs the stm32loader package (pip install stm32loader)") from None
    import serial

    t0 = time.monotonic()
    conn = SerialConnection(port, baudrate, "E")
    try:
        conn.connect()
    except (serial.SerialException, OSError, ValueError) as e:
        raise LinkError(f"cannot open serial port {port}: {e}") from None
    try:
        conn.timeout = 2.0
        stm = Stm32Bootloader(conn, device_family="F7", verbosity=0)
        stm.reset_from_system_memory()
        stm.get()
        stm.get_id()
        stm.erase_memory(sectors)
        block = 256
        for off in range(0, len(image), block):
            stm.write_memory(address + off, image[off : off + block])
            if progress is not None:
                progress(min(off + block, len(image)), len(image))
        back = bytes(stm.read_memory_data(address, len(image)))
        if back != image:
            first = next(i for i in range(len(image)) if back[i] != image[i])
            raise FlashError(f"STM32 ROM bootloader: read-back differs from the image at offset {first}")
        stm.go(address)
    except (Stm32LoaderError, OSError, IndexError) as e:
        raise FlashError(
            f"STM32 ROM bootloader on {port} failed: {str(e).splitlines()[0] if str(e) else type(e).__name__} "
            "(is BOOT0 high and was the board reset?)"
        ) from None
    finally:
        conn.disconnect()
    return FlashResult("stm32", len(image), zlib.crc32(image), -(-len(image) // 256), 0, time.monotonic() - t0, None)
