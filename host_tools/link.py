"""Request/response over a serial port: sequence numbers, timeouts and retransmission.

``Link`` speaks the frame protocol (host_tools.frame, docs/protocol.md) over any pyserial
port object (``serial.serial_for_url("socket://127.0.0.1:4321")``, ``/dev/ttyACM0``,
``loop://``). Each request gets the next sequence number and is written as
``0x00 COBS(...) 0x00`` (the leading delimiter ends whatever partial frame the device may
hold); the host waits for the response with the same seq and cmd, ignores stale ones
(other seq: late answers to earlier requests), and sends the very same bytes again after a
timeout, or at once when the device reports a corrupt frame (status BAD_FRAME, seq
0xFFFF). The device answers a repeated request from its cache without executing it twice,
so retransmitting is always safe.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

from host_tools.frame import SEQ_NONE, Frame, FrameDecoder, Kind, Status, encode_frame
from tinytrain.errors import TinytrainError


class LinkError(TinytrainError):
    """The device did not answer (after every retransmission) or the port failed."""


class DeviceError(TinytrainError):
    """The device answered a request with a status other than OK."""

    def __init__(self, message: str, status: int, payload: bytes) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload


class SerialPort(Protocol):
    """What Link needs of a pyserial port."""

    timeout: float | None

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes, /) -> int | None: ...

    def close(self) -> None: ...


@dataclass
class LinkStats:
    """Counters of one Link (for progress displays and the fault-injection tests)."""

    requests: int = 0
    transmissions: int = 0
    stale: int = 0
    bad_frame_reports: int = 0

    @property
    def retransmissions(self) -> int:
        return self.transmissions - self.requests


def command_name(cmd: int) -> str:
    """``IDENTIFY (0x01)`` for an IntEnum member, ``0x01`` for a plain int."""
    return f"{cmd.name} (0x{int(cmd):02x})" if isinstance(cmd, IntEnum) else f"0x{cmd:02x}"


def open_port(url: str, poll: float = 0.02, baudrate: int = 115200) -> Any:
    """``serial.serial_for_url`` with a short read timeout; a LinkError naming the URL if it
    cannot be opened."""
    import serial

    try:
        return serial.serial_for_url(url, baudrate=baudrate, timeout=poll)
    except (serial.SerialException, OSError, ValueError) as e:
        raise LinkError(f"cannot open serial port {url}: {e}") from e


class Link:
    """The host end of the protocol over one open port.

    ``timeout`` is the time to wait for a response to each transmission, ``retries`` the
    number of retransmissions after the first try (defaults of :meth:`request`). The port's
    read timeout is lowered to ``poll`` so that reads never outlast a request's deadline.
    ``first_seq`` defaults to a random value so that a new connection does not reuse the
    sequence number of the previous one's last request.
    """

    def __init__(
        self,
        port: SerialPort,
        *,
        timeout: float = 1.0,
        retries: int = 5,
        first_seq: int | None = None,
        poll: float = 0.02,
    ) -> None:
        if timeout <= 0 or retries < 0 or poll <= 0:
            raise ValueError("timeout and poll must be > 0, retries >= 0")
        self.port = port
        self.timeout = timeout
        self.retries = retries
        if port.timeout is None or port.timeout > poll:
            port.timeout = poll
        if first_seq is None:
            first_seq = int.from_bytes(os.urandom(2), "little") % SEQ_NONE
        if not 0 <= first_seq < SEQ_NONE:
            raise ValueError(f"first_seq must be in 0..{SEQ_NONE - 1}")
        self._seq = first_seq
        self._decoder = FrameDecoder(Kind.RESPONSE)
        self.stats = LinkStats()

    @property
    def decoder(self) -> FrameDecoder:
        """The response decoder (its ``rejected`` counts corrupt frames from the device)."""
        return self._decoder

    @property
    def next_seq(self) -> int:
        return self._seq

    def close(self) -> None:
        self.port.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self, cmd: int, payload: bytes = b"", timeout: float | None = None, retries: int | None = None
    ) -> Frame:
        """Sends one request and returns the device's response (whatever its status).

        Raises LinkError when no response came after ``1 + retries`` tries of ``timeout``
        seconds each, FrameError when the payload cannot be framed (too long)."""
        timeout = self.timeout if timeout is None else timeout
        retries = self.retries if retries is None else retries
        seq = self._seq
        self._seq = (seq + 1) % SEQ_NONE  # 0xFFFF is reserved: 0xFFFE is followed by 0
        wire = b"\x00" + encode_frame(Frame(kind=Kind.REQUEST, seq=seq, cmd=int(cmd), status=0, payload=payload))
        self.stats.requests += 1
        for _ in range(1 + retries):
            self._write(wire, cmd)
            self.stats.transmissions += 1
            response = self._await(seq, int(cmd), timeout)
            if response is not None:
                return response
        tries = 1 + retries
        raise LinkError(
            f"no response to {command_name(cmd)} (seq {seq}) after {tries} {'try' if tries == 1 else 'tries'} "
            f"of {timeout:g} s"
        )

    def call(self, cmd: int, payload: bytes = b"", timeout: float | None = None, retries: int | None = None) -> bytes:
        """:meth:`request`, returning the response payload; DeviceError if the status is not OK."""
        r = self.request(cmd, payload, timeout, retries)
        if r.status != Status.OK:
            status = Status(r.status).name if r.status in Status._value2member_map_ else str(r.status)
            raise DeviceError(f"device answered {command_name(cmd)} with {status}", r.status, r.payload)
        return r.payload

    def _write(self, wire: bytes, cmd: int) -> None:
        try:
            self.port.write(wire)
        except OSError as e:  # serial.SerialException is an OSError
            raise LinkError(f"serial port error sending {command_name(cmd)}: {e}") from e

    def _await(self, seq: int, cmd: int, timeout: float) -> Frame | None:
        """The response to (seq, cmd) if it comes within ``timeout``; None on timeout or
        when the device reports a corrupt frame (then the caller retransmits at once)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                waiting = self.port.in_waiting
                data = self.port.read(waiting if waiting > 0 else 1)
            except OSError as e:
                raise LinkError(f"serial port error awaiting {command_name(cmd)}: {e}") from e
            bad_frame = False
            for frame in self._decoder.feed(data):
                if frame.seq == seq and frame.cmd == cmd:
                    return frame
                if frame.seq == SEQ_NONE and frame.status == Status.BAD_FRAME:
                    self.stats.bad_frame_reports += 1
                    bad_frame = True
                else:
                    self.stats.stale += 1
            if bad_frame:
                return None
        return None
