"""A long-running emulated board: QEMU with its UART0 on a TCP port that accepts one
connection after another.

``start_emulator(target, elf, port)`` runs the firmware (normally the bootloader:
host_tools/bootloader.py) in QEMU with UART0 as a TCP server chardev
(``server=on,wait=off,nodelay=on``): the guest starts at once, and each host tool
(``flash``, ``train``, ``pull``, ...) opens its own pyserial connection to :attr:`Emulator.url`
(``socket://127.0.0.1:PORT``); when it closes, QEMU listens again and accepts the next one.
Bytes the guest sends while nobody is connected are dropped (the protocol's requests and
responses never span two connections). QEMU keeps the code memory across a guest system
reset, so an application flashed into it survives a restart into the bootloader.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from codegen.targets import FirmwareError, Target, get_target, qemu_command


class Emulator:
    """A running QEMU (see :func:`start_emulator`); ``url`` is the pyserial URL of its UART."""

    def __init__(
        self, process: subprocess.Popen[bytes], target: str, elf: Path, port: int, log: IO[bytes] | None = None
    ) -> None:
        self.process = process
        self.log = log
        self.target = target
        self.elf = elf
        self.port = port

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """Stops QEMU (terminate, then kill) and returns its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log is not None:
            self.log.close()
        return self.process.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Waits until QEMU exits (the guest's semihosting exit, or :meth:`stop`)."""
        return self.process.wait(timeout)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_tcp_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on (now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:port (probes with a connect
    that QEMU sees as a client connecting and leaving at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_emulator(
    target: str | Target,
    elf: Path,
    port: int | None = None,
    icount: bool = True,
    timeout: float = 10.0,
    *,
    preload: Sequence[tuple[Path, int]] = (),
    preset_words: Sequence[tuple[int, int]] = (),
    storage: Path | None = None,
) -> Emulator:
    """Starts ``elf`` on ``target``'s QEMU machine with UART0 on 127.0.0.1:``port`` (a free
    port when None) and returns once QEMU listens. ``icount``: one guest instruction per ns
    of virtual time (the board's counter counts instructions, as in ``run_qemu``).
    ``preload``: raw files (path, address) and ``preset_words``: 32-bit words (address,
    value) written into the machine's memory before the CPU starts (QEMU's generic loader),
    e.g. an application image and its boot record, as if flashed earlier. ``storage``: the
    host file backing the checkpoint storage of the application (``qemu_command``).
    Raises FirmwareError if QEMU exits or does not listen within ``timeout`` seconds."""
    t = get_target(target)
    tcp = free_tcp_port() if port is None else port
    chardev = f"tcp:127.0.0.1:{tcp},server=on,wait=off,nodelay=on"
    if storage is None:
        cmd = qemu_command(Path(elf), t, icount=icount, serial=chardev)
    else:
        cmd = qemu_command(Path(elf), t, icount=icount, serial=chardev, storage=storage)
    for path, addr in preload:
        cmd += ["-device", f"loader,file={Path(path).resolve()},addr=0x{addr:x},force-raw=on"]
    for addr, value in preset_words:
        cmd += ["-device", f"loader,addr=0x{addr:x},data=0x{value & 0xFFFFFFFF:x},data-len=4"]
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Emulator.stop) QEMU's stderr: a pipe nobody reads could fill and block it
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    emu = Emulator(proc, t.name, Path(elf), tcp, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            err = log.read().decode(errors="replace").strip()
            emu.stop()
            raise FirmwareError(f"QEMU exited with status {proc.returncode} before listening on port {tcp}: {err}")
        if _listening(tcp):
            return emu
        if time.monotonic() > deadline:
            emu.stop()
            raise FirmwareError(f"QEMU did not listen on port {tcp} within {timeout:g} s")
        time.sleep(0.05)
