"""The serial bootloader (firmware_templates/bootloader) in QEMU, flashed over a real serial
byte stream by host_tools.flash: QEMU starts with the bootloader only (host_tools.emulate,
UART0 on a TCP port that takes one connection after another), the training application is
flashed over the second connection, then trains on a third exactly as the simulator does.
Corrupt chunks are dropped and retransmitted, wrong images never boot, images that do not
fit are refused, the boot record decides what runs at reset, and the real-board bootloaders
compile and link.

The program is the shipped MCUNet-synthetic checkpoint with the ``last-layer`` scheme (a
small, fast application image of ~48 KB)."""

from __future__ import annotations

import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunResult, RunSpec, run_sim
from codegen.targets import ElfInfo, render_linker_script, resolve_budget
from host_tools.bootloader import NOINIT_BYTES, boot_layout, build_bootloader
from host_tools.device import Device, WrongFirmwareError
from host_tools.emulate import start_emulator
from host_tools.firmware import APP_SOURCE, AppBuild, build_app
from host_tools.flash import BlCommand, Bootloader, FlashError, ImageState, flash, pad_image
from host_tools.frame import Status
from host_tools.link import Link, LinkError, open_port
from tinytrain.errors import TinytrainError, UsageError
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model
from tinytrain.train.data import epoch_order, load_dataset

TARGET = "qemu-m4"
STEPS = 6
SEED = 5
LR = 0.05
STAY = 0x59415453  # TT_BL_STAY_MAGIC
RECORD_MAGIC = 0x49425454  # TT_BL_RECORD_MAGIC

pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(CHECKPOINT), CompileOptions("last-layer", classes=10, sample_bytes=28 * 28))


@pytest.fixture(scope="module")
def app(compiled: Compiled, tmp_path_factory: pytest.TempPathFactory) -> AppBuild:
    return build_app(compiled, TARGET, tmp_path_factory.mktemp("app"), (28, 28), for_bootloader=True)


@pytest.fixture(scope="module")
def image(app: AppBuild) -> bytes:
    assert app.info.bin is not None
    return app.info.bin.read_bytes()


@pytest.fixture(scope="module")
def bootloader(tmp_path_factory: pytest.TempPathFactory) -> ElfInfo:
    return build_bootloader(TARGET, tmp_path_factory.mktemp("bl"))


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def _link(url: str) -> Link:
    return Link(open_port(url), timeout=2.0, retries=5)


def test_flash_then_train_like_the_simulator(
    compiled: Compiled, app: AppBuild, image: bytes, bootloader: ElfInfo
) -> None:
    layout = boot_layout(TARGET)
    train = load_dataset("fashion-mnist", "train")
    order = epoch_order(STEPS, SEED, 0)
    spec = RunSpec(train.images[:STEPS][order], train.labels[:STEPS][order], train.images[STEPS : STEPS + 2],
                   seed=SEED, lr=LR)  # fmt: skip
    sim: RunResult = run_sim(compiled, spec)
    seen: list[tuple[int, int]] = []
    with start_emulator(TARGET, bootloader.elf) as emu:
        # connection 1: only the bootloader runs, and says so
        with _link(emu.url) as link:
            with pytest.raises(WrongFirmwareError) as e:
                Device(link, app.program).identify()
            assert "bootloader" in _one_line(e)
            info = Bootloader(link).info()
            assert (info.app_base, info.app_size, info.state) == (layout.app_base, layout.app_size, ImageState.NONE)
            assert info.max_chunk == 1024 and info.write_align == 4
        # connection 2: flash, boot, the application answers
        result = flash(emu.url, image, progress=lambda done, total: seen.append((done, total)))
        assert result.identity is not None and result.identity.role == 1
        assert result.identity.model_id == app.program.model_id and result.identity.scheme == "last-layer"
        assert result.size == len(pad_image(image, 4)) and result.crc == zlib.crc32(pad_image(image, 4))
        assert result.chunks == -(-result.size // 1024) == len(seen)
        assert seen[-1] == (result.size, result.size) and [d for d, _ in seen] == sorted({d for d, _ in seen})
        # connection 3: train as the simulator does
        with _link(emu.url) as link:
            dev = Device(link, app.program, step_timeout=30.0)
            ident = dev.identify()
            assert (ident.model_id, ident.board) == (app.program.model_id, TARGET)
            dev.reset(SEED)
            dev.set_lr(LR)
            dev.set_schedule("constant", STEPS)
            steps = [dev.train(x, int(y)) for x, y in zip(spec.samples, spec.labels, strict=True)]
            pulled = dev.pull()
            logits = np.stack([dev.eval(x) for x in spec.test])
            # the application does not know the bootloader's commands
            assert link.request(BlCommand.BL_INFO).status == Status.UNKNOWN_CMD
            # flashing while the application runs: it restarts into the bootloader (RESET mode 2)
            # once tt_app.c supports it (tt_boot_request_bootloader), else a one-line refusal
            if "tt_boot_request_bootloader" in APP_SOURCE.read_text():
                again = flash(link, image)
                assert again.identity is not None and again.identity.model_id == app.program.model_id
            else:
                with pytest.raises(FlashError) as fe:
                    flash(link, image)
                assert "RESET mode 2" in _one_line(fe)
    assert [(r.p_label, r.predicted) for r in steps] == list(sim.steps)
    assert sorted(pulled) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert pulled[name].dtype == t.dtype and np.array_equal(pulled[name], t), name
    assert np.array_equal(logits, sim.test_logits)


class CorruptingPort:
    """A pyserial port that flips one byte in the middle of chosen write() calls (0-based)."""

    def __init__(self, port: object, corrupt: Callable[[int, bytes], bool]) -> None:
        self._port = port
        self._corrupt = corrupt
        self.writes = 0
        self.corrupted = 0

    @property
    def timeout(self) -> float | None:
        return self._port.timeout  # type: ignore[attr-defined,no-any-return]

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._port.timeout = value  # type: ignore[attr-defined]

    @property
    def in_waiting(self) -> int:
        return int(self._port.in_waiting)  # type: ignore[attr-defined]

    def read(self, size: int = 1) -> bytes:
        return bytes(self._port.read(size))  # type: ignore[attr-defined]

    def write(self, data: bytes, /) -> int | None:
        n = self.writes
        self.writes += 1
        if self._corrupt(n, data):
            self.corrupted += 1
            b = bytearray(data)
            b[len(b) // 2] ^= 0x5A if b[len(b) // 2] not in (0x00, 0x5A) else 0x01
            data = bytes(b)
        return self._port.write(data)  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self._port.close()  # type: ignore[attr-defined]


def test_corrupt_chunks_wrong_crc_and_oversize_images_are_refused(image: bytes, bootloader: ElfInfo) -> None:
    padded = pad_image(image, 4)
    crc = zlib.crc32(padded)
    with start_emulator(TARGET, bootloader.elf) as emu:
        # every 7th transmission of a large frame (the BL_WRITE chunks) is corrupted once:
        # the device drops it (bad CRC), reports BAD_FRAME, the Link sends it again
        port = CorruptingPort(open_port(emu.url), lambda n, data: len(data) > 500 and n % 7 == 3)
        with Link(port, timeout=2.0, retries=5) as link:
            r = flash(link, image, boot=False)
            assert port.corrupted >= 3 and link.stats.bad_frame_reports >= port.corrupted
            assert r.retransmissions >= port.corrupted and r.crc == crc
            bl = Bootloader(link)
            info = bl.info()
            assert (info.state, info.image_size, info.image_crc) == (ImageState.VALID, len(padded), crc)

        with _link(emu.url) as link:
            bl = Bootloader(link)
            # a whole-image CRC that does not match: BL_VERIFY fails, BL_BOOT refuses
            bl.erase(len(padded))
            assert bl.info().state == ImageState.WRITTEN
            for off in range(0, len(padded), 1024):
                bl.write(off, padded[off : off + 1024])
            with pytest.raises(FlashError) as e:
                bl.verify(len(padded), crc ^ 1)
            assert f"{crc:08x}" in _one_line(e) and "verification failed" in str(e.value)
            assert link.request(BlCommand.BL_BOOT).status == Status.BAD_STATE
            # a chunk whose bytes differ from the image's (a valid frame): the image CRC catches it
            bl.write(1024, bytes(1024))
            with pytest.raises(FlashError):
                bl.verify(len(padded), crc)
            assert bl.info().state == ImageState.WRITTEN
            assert link.request(BlCommand.BL_BOOT).status == Status.BAD_STATE
            # bad arguments change nothing
            assert link.request(BlCommand.BL_WRITE, struct.pack("<I", 2) + bytes(4)).status == Status.BAD_ARG
            assert link.request(BlCommand.BL_WRITE, struct.pack("<I", len(padded)) + bytes(4)).status == Status.BAD_ARG
            assert link.request(BlCommand.BL_WRITE, struct.pack("<I", 0) + bytes(3)).status == Status.BAD_LENGTH
            assert link.request(BlCommand.BL_VERIFY, b"\x00").status == Status.BAD_LENGTH

            # an image larger than the region: refused by the host before anything is erased...
            info = bl.info()
            requests = link.stats.requests
            with pytest.raises(FlashError) as e:
                flash(link, padded[:8] + bytes(info.app_size))
            assert "does not fit" in _one_line(e) and str(info.app_size) in str(e.value)
            assert link.stats.requests == requests + 2  # IDENTIFY + BL_INFO only
            # ...and by the device
            too_big = struct.pack("<I", info.app_size + 4)
            assert link.request(BlCommand.BL_ERASE, too_big).status == Status.BAD_ARG
            assert bl.info().state == ImageState.WRITTEN  # unchanged
            # an image not linked at the application region
            bogus = struct.pack("<II", 0x2000_1000, 0x101) + bytes(56)
            with pytest.raises(FlashError) as e:
                flash(link, bogus)
            assert "for_bootloader=True" in _one_line(e)

            # the good image again, then boot it
            r = flash(link, image)
            assert r.identity is not None and r.identity.role == 1


def _record(image: bytes) -> bytes:
    rec = struct.pack("<III", RECORD_MAGIC, len(image), zlib.crc32(image))
    return rec + struct.pack("<I", zlib.crc32(rec))


@pytest.mark.parametrize("case", ["valid", "stay", "corrupt-image", "corrupt-record"])
def test_reset_boots_only_a_valid_image(case: str, image: bytes, bootloader: ElfInfo, tmp_path: Path) -> None:
    """What the bootloader does at reset with an image and boot record already in flash
    (QEMU's loader puts them there, as a previous session's flash would)."""
    layout = boot_layout(TARGET)
    padded = pad_image(image, 4)
    rec = _record(padded)
    if case == "corrupt-image":
        padded = padded[:100] + bytes([padded[100] ^ 1]) + padded[101:]
    if case == "corrupt-record":
        rec = rec[:6] + bytes([rec[6] ^ 1]) + rec[7:]
    (tmp_path / "app.bin").write_bytes(padded)
    (tmp_path / "rec.bin").write_bytes(rec)
    stay = [(0x2000_0000, STAY), (0x2000_0004, ~STAY & 0xFFFFFFFF)] if case == "stay" else []
    preload = [(tmp_path / "app.bin", layout.app_base), (tmp_path / "rec.bin", layout.record)]
    with start_emulator(TARGET, bootloader.elf, preload=preload, preset_words=stay) as emu, _link(emu.url) as link:
        role = link.call(BlCommand.IDENTIFY)[0]
        assert role == (1 if case == "valid" else 0)
        if role == 0:
            info = Bootloader(link).info()
            assert info.state == (ImageState.VALID if case == "stay" else ImageState.NONE)
            if case == "stay":  # the verified image can be booted on request
                Bootloader(link).boot()
                assert Device(link).identify().role == 1


def test_real_board_bootloaders_compile_and_link(tmp_path: Path) -> None:
    for target in ("stm32f746g-disco", "nrf52840", "qemu-m7"):
        layout = boot_layout(target)
        info = build_bootloader(target, tmp_path / target)
        assert info.bin is not None and 0 < info.flash_used <= layout.bootloader_bytes
        assert info.flash_budget == layout.bootloader_bytes
        vectors = info.bin.read_bytes()[:8]
        _, reset = struct.unpack("<II", vectors)
        assert reset & 1 and layout.record - layout.bootloader_bytes <= reset & ~1 < layout.record
        # an application for it is linked at the region, with the no-init words first in RAM
        script = render_linker_script(
            target, flash_bytes=layout.app_size, code_offset=layout.code_offset, noinit_bytes=NOINIT_BYTES
        )
        assert f"ORIGIN = 0x{layout.app_base:08X}, LENGTH = {layout.app_size}" in script
        assert "_tt_noinit_start" in script
    assert "_tt_noinit_start" not in render_linker_script("stm32f746g-disco")


def test_code_offset_budgets() -> None:
    layout = boot_layout("stm32f746g-disco")
    default = resolve_budget("stm32f746g-disco", code_offset=layout.code_offset).flash_bytes
    assert default == (1 << 20) - layout.code_offset >= layout.app_size  # build_app caps it to the region
    assert resolve_budget("qemu-m4", code_offset=0x8000).flash_bytes == 1 << 20  # the default fits
    with pytest.raises(UsageError) as e:
        resolve_budget("stm32f746g-disco", flash_bytes=1 << 20, code_offset=layout.code_offset)
    assert "code offset" in _one_line(e)
    with pytest.raises(UsageError):
        resolve_budget("qemu-m4", code_offset=0x8100)  # not aligned for VTOR
    with pytest.raises(UsageError):
        boot_layout("host")


def test_stm32_method_argument_handling(image: bytes) -> None:
    with pytest.raises(UsageError) as e:
        flash("/dev/null", image, method="jtag")
    assert "stm32" in _one_line(e)
    with pytest.raises(LinkError) as le:
        flash("/dev/tinytrain-no-such-port", image, method="stm32")
    assert "/dev/tinytrain-no-such-port" in _one_line(le)
    with pytest.raises(FlashError) as fe:  # outside the STM32F74x flash: refused before opening the port
        flash("/dev/tinytrain-no-such-port", bytes(2 << 20), method="stm32")
    assert "outside" in _one_line(fe)
    with pytest.raises(UsageError):
        flash(Link(open_port("loop://")), image, method="stm32")
    with pytest.raises(TinytrainError):
        flash("/dev/tinytrain-no-such-port", image)  # the tinytrain method: the port cannot be opened
