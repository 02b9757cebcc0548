"""A pyserial-like port over a host-built program's stdin/stdout, shared by the tests
that drive a host build of the device application through host_tools.link.Link."""

from __future__ import annotations

import subprocess
import threading
import time


class PipePort:
    """A pyserial-like port over a host-built firmware's stdin/stdout (what Link needs)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.timeout: float | None = 0.01
        self.buf = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            with self.lock:
                self.buf += chunk

    @property
    def in_waiting(self) -> int:
        with self.lock:
            return len(self.buf)

    def take(self, size: int) -> bytes | None:
        """Up to ``size`` buffered bytes, or None when nothing can be read yet (called under the lock)."""
        if not self.buf:
            return None
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    def read(self, size: int = 1) -> bytes:
        deadline = time.monotonic() + (self.timeout or 0)
        while True:
            with self.lock:
                out = self.take(size)
            if out is not None:
                return out
            if time.monotonic() >= deadline:
                return b""
            time.sleep(0.001)

    def write(self, data: bytes, /) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()
        return len(data)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
