"""The tinytrain serial bootloader: where it sits in each target's flash, and building it.

Each microcontroller target's flash is split (``firmware_templates/bootloader/tt_bootloader.h``)::

    [flash origin, record)              the bootloader
    [record, record + record_unit)      the boot record, in an erase unit of its own
    [app_base, app_base + app_size)     the application region (the application is linked there)

On the QEMU targets the "flash" is the code SSRAM (4 MiB, writable; checkpoints live in a host
file there), on the STM32F746 the bootloader takes sector 0, the record sector 1 and the
application sectors 2-5 (448 KiB; sectors 6-7 are the checkpoint storage), on the nRF52840 the
bootloader seven 4 KiB pages, the record one, the application up to the checkpoint storage at
0xC0000 (736 KiB).
An application built for the bootloader (``host_tools.firmware.build_app(..., for_bootloader=True)``)
is linked at ``app_base`` and reserves the no-init RAM words of the stay request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from codegen.targets import ElfInfo, Target, build_firmware, get_target
from tinytrain.errors import UsageError

BOOTLOADER_DIR = Path(__file__).resolve().parents[1] / "firmware_templates" / "bootloader"
APP_DIR = Path(__file__).resolve().parents[1] / "firmware_templates" / "app"
BOOTLOADER_NAME = "tt_bootloader"
NOINIT_BYTES = 16
"""RAM reserved at the RAM origin by the bootloader and by applications built for it
(TT_BL_NOINIT_BYTES): the stay request survives the reset between them."""
BOOTLOADER_SRAM_BYTES = 16 * 1024
BOOTLOADER_STACK_BYTES = 2048
WRITE_ALIGN = 4
MAX_CHUNK = 1024


@dataclass(frozen=True)
class BootLayout:
    """Where the bootloader, its boot record and the application live in ``target``'s flash."""

    target: str
    flash_driver: str  # file under firmware_templates/bootloader
    record: int  # address of the boot record (the bootloader's flash ends here)
    record_unit: int  # erase unit holding the record
    app_base: int
    app_size: int

    @property
    def code_offset(self) -> int:
        """Offset of the application region into the part's flash (the app's ``code_offset``)."""
        t = get_target(self.target)
        assert t.flash is not None
        return self.app_base - t.flash.origin

    @property
    def bootloader_bytes(self) -> int:
        """Flash budget of the bootloader itself."""
        t = get_target(self.target)
        assert t.flash is not None
        return self.record - t.flash.origin


def _layouts() -> Mapping[str, BootLayout]:
    def mps2(name: str) -> BootLayout:
        return BootLayout(name, "tt_bl_mps2.c", 0x7000, 0x1000, 0x8000, 4 * 1024 * 1024 - 0x8000)

    return MappingProxyType(
        {
            "qemu-m4": mps2("qemu-m4"),
            "qemu-m7": mps2("qemu-m7"),
            # RM0385 3.3.2: sectors 0-3 are 32 KiB, 4 is 128 KiB, 5-7 256 KiB; the app gets sectors
            # 2-5 (0x08010000..0x08080000): sectors 6-7 hold the checkpoints (tt_board_storage.c)
            "stm32f746g-disco": BootLayout(
                "stm32f746g-disco", "tt_bl_stm32f746.c", 0x0800_8000, 0x8000, 0x0801_0000, 0x7_0000
            ),
            # 4 KiB NVMC pages: bootloader in pages 0-6, record in page 7, the app up to the
            # checkpoint storage at 0x000C0000 (nrf52840/tt_board_storage.c)
            "nrf52840": BootLayout("nrf52840", "tt_bl_nrf52840.c", 0x7000, 0x1000, 0x8000, 0xC_0000 - 0x8000),
        }
    )


LAYOUTS: Mapping[str, BootLayout] = _layouts()


def boot_layout(target: str | Target) -> BootLayout:
    """The bootloader layout of ``target`` (UsageError for a target without one: the host)."""
    t = get_target(target)
    try:
        return LAYOUTS[t.name]
    except KeyError:
        raise UsageError(f"target {t.name} has no bootloader (bootloader targets: {', '.join(LAYOUTS)})") from None


def bootloader_flags(layout: BootLayout) -> list[str]:
    """The ``-D`` definitions of tt_bootloader.c for ``layout``."""
    t = get_target(layout.target)
    assert t.ram is not None
    return [
        f"-DTT_BL_APP_BASE=0x{layout.app_base:08X}u",
        f"-DTT_BL_APP_SIZE=0x{layout.app_size:08X}u",
        f"-DTT_BL_RECORD_ADDR=0x{layout.record:08X}u",
        f"-DTT_BL_RECORD_UNIT=0x{layout.record_unit:08X}u",
        f"-DTT_BL_RAM_BASE=0x{t.ram.origin:08X}u",
        f"-DTT_BL_RAM_SIZE=0x{t.ram.size:08X}u",
    ]


def build_bootloader(target: str | Target, out_dir: Path, extra_flags: Sequence[str] = ()) -> ElfInfo:
    """Builds the bootloader of ``target`` into ``out_dir`` (``tt_bootloader.elf`` / ``.bin``):
    the board layer, the frame protocol, the command loop and the target's flash driver,
    linked into the flash below the boot record with a 16 KiB SRAM budget."""
    layout = boot_layout(target)
    return build_firmware(
        layout.target,
        [BOOTLOADER_DIR / "tt_bootloader.c", BOOTLOADER_DIR / layout.flash_driver, APP_DIR / "tt_frame.c"],
        [BOOTLOADER_DIR, APP_DIR],
        out_dir,
        sram_bytes=BOOTLOADER_SRAM_BYTES,
        flash_bytes=layout.bootloader_bytes,
        extra_flags=["-DNDEBUG", *bootloader_flags(layout), *extra_flags],
        name=BOOTLOADER_NAME,
        stack_bytes=BOOTLOADER_STACK_BYTES,
        noinit_bytes=NOINIT_BYTES,
    )
