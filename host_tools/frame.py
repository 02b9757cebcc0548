"""The serial frame protocol, host side: COBS framing, CRC-32, frame encoding and a streaming decoder.

On the wire a frame is ``COBS(body || crc32_le(body)) 0x00`` with
``body = u8 version | u8 kind | u16 seq (LE) | u8 cmd | u8 status | u16 length (LE) | payload``
(docs/protocol.md). The device-side twin is ``firmware_templates/app/tt_frame.c``: both
decoders accept exactly the same frames, drop the others for the same reason and decode the
same fields (tests/test_frame.py feeds both the same fuzzed streams).
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum

from tinytrain.errors import TinytrainError

VERSION = 1
HEADER_SIZE = 8
CRC_SIZE = 4
MAX_PAYLOAD = 1032
"""Largest payload: a 1024-byte data chunk plus an 8-byte chunk header (TT_FRAME_MAX_PAYLOAD)."""
MAX_BODY = HEADER_SIZE + MAX_PAYLOAD
MAX_DECODED = MAX_BODY + CRC_SIZE
"""The most decoded bytes (body + CRC) a frame may have; more is an oversize frame."""
MAX_RAW = MAX_DECODED + MAX_DECODED // 254 + 1
"""The most COBS bytes (delimiter excluded) that can decode to at most MAX_DECODED bytes."""
SEQ_NONE = 0xFFFF
"""The seq of an unsolicited BAD_FRAME response; the host never sends it."""

_HEADER = struct.Struct("<BBHBBH")


def encoded_size(payload_len: int) -> int:
    """Upper bound of the wire size (delimiter included) of a frame with this payload size
    (TT_FRAME_ENCODED_SIZE)."""
    n = payload_len + HEADER_SIZE + CRC_SIZE
    return n + n // 254 + 2


MAX_ENCODED = encoded_size(MAX_PAYLOAD)


class Kind(IntEnum):
    REQUEST = 0
    """host -> device"""
    RESPONSE = 1
    """device -> host"""


class Status(IntEnum):
    """The ``status`` field of a response (0 in every request); TT_FRAME_STATUS_* in C."""

    OK = 0
    BAD_FRAME = 1
    UNKNOWN_CMD = 2
    BAD_LENGTH = 3
    BAD_ARG = 4
    BUSY = 5
    BAD_STATE = 6
    FLASH_ERROR = 7
    VERIFY_FAILED = 8
    NO_CHECKPOINT = 9
    INTERNAL = 10


class RejectReason(IntEnum):
    """Why a decoder dropped a frame (C: ``-TT_FRAME_ERR_*``; the payload byte of BAD_FRAME)."""

    COBS = 1
    OVERSIZE = 2
    SHORT = 3
    CRC = 4
    VERSION = 5
    KIND = 6
    STATUS = 7
    LENGTH = 8


class FrameError(TinytrainError):
    """Bytes that are not a valid frame, or frame fields that cannot be encoded."""

    def __init__(self, message: str, reason: RejectReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    cmd: int
    status: int
    payload: bytes

    def describe(self) -> str:
        kind = Kind(self.kind).name.lower() if self.kind in (0, 1) else f"kind {self.kind}"
        return f"{kind} seq {self.seq} cmd 0x{self.cmd:02x} status {self.status} ({len(self.payload)} bytes)"


def crc32(data: bytes, crc: int = 0) -> int:
    """CRC-32 (IEEE 802.3, zlib's), continuing from ``crc``."""
    return zlib.crc32(data, crc) & 0xFFFFFFFF


def cobs_encode(data: bytes) -> bytes:
    """Canonical COBS of ``data`` (no 0x00 in the result; delimiter not appended): a run of
    254 non-zero bytes is one 0xFF block, and a 0xFF block at the very end is not followed
    by an empty block."""
    out = bytearray()
    chunks = bytes(data).split(b"\x00")
    for i, chunk in enumerate(chunks):
        pos = 0
        while len(chunk) - pos >= 254:
            out.append(0xFF)
            out += chunk[pos : pos + 254]
            pos += 254
        if i == len(chunks) - 1 and pos > 0 and pos == len(chunk):
            break
        out.append(len(chunk) - pos + 1)
        out += chunk[pos:]
    return bytes(out)


def _cobs_decode(enc: bytes) -> tuple[bytearray, bool]:
    """Decodes COBS bytes (no 0x00 in ``enc``) as the streaming C decoder does: returns the
    decoded bytes and whether the last block was complete."""
    out = bytearray()
    i, n = 0, len(enc)
    while i < n:
        code = enc[i]
        i += 1
        end = i + code - 1
        if end > n:
            out += enc[i:]
            return out, False
        out += enc[i:end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return out, True


def cobs_decode(enc: bytes) -> bytes:
    """The inverse of :func:`cobs_encode` (delimiter excluded); raises FrameError on a 0x00
    byte or a truncated block."""
    if b"\x00" in enc:
        raise FrameError("COBS data contains a 0x00 byte", RejectReason.COBS)
    out, complete = _cobs_decode(enc)
    if not complete:
        raise FrameError("COBS data ends inside a block", RejectReason.COBS)
    return bytes(out)


def encode_body(frame: Frame) -> bytes:
    """The body (header and payload) of a frame, CRC excluded."""
    if frame.kind not in (Kind.REQUEST, Kind.RESPONSE):
        raise FrameError(f"frame kind must be 0 (request) or 1 (response), got {frame.kind}")
    if not 0 <= frame.seq <= 0xFFFF:
        raise FrameError(f"seq {frame.seq} is not a u16")
    if not 0 <= frame.cmd <= 0xFF or not 0 <= frame.status <= 0xFF:
        raise FrameError(f"cmd {frame.cmd} / status {frame.status} is not a u8")
    if frame.kind == Kind.REQUEST and frame.status != 0:
        raise FrameError(f"a request must have status 0, got {frame.status}")
    if len(frame.payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(frame.payload)} bytes exceeds the maximum of {MAX_PAYLOAD}")
    header = _HEADER.pack(VERSION, frame.kind, frame.seq, frame.cmd, frame.status, len(frame.payload))
    return header + bytes(frame.payload)


def encode_frame(frame: Frame) -> bytes:
    """``COBS(body || crc32_le(body)) 0x00`` (the twin of tt_frame_encode)."""
    body = encode_body(frame)
    return cobs_encode(body + struct.pack("<I", crc32(body))) + b"\x00"


def parse_decoded(data: bytes, expect_kind: Kind) -> Frame:
    """Validates COBS-decoded bytes (body + CRC) and returns the frame; raises FrameError
    with the reason otherwise (checks in the C decoder's order)."""
    if len(data) > MAX_DECODED:
        raise FrameError(f"frame of {len(data)} bytes exceeds {MAX_DECODED}", RejectReason.OVERSIZE)
    if len(data) < HEADER_SIZE + CRC_SIZE:
        raise FrameError(f"frame of {len(data)} bytes is shorter than header + CRC", RejectReason.SHORT)
    body = data[:-CRC_SIZE]
    (want,) = struct.unpack_from("<I", data, len(body))
    if crc32(body) != want:
        raise FrameError("CRC mismatch", RejectReason.CRC)
    version, kind, seq, cmd, status, length = _HEADER.unpack_from(body)
    if version != VERSION:
        raise FrameError(f"protocol version {version}, expected {VERSION}", RejectReason.VERSION)
    if kind != expect_kind:
        raise FrameError(f"frame kind {kind}, expected {int(expect_kind)}", RejectReason.KIND)
    if kind == Kind.REQUEST and status != 0:
        raise FrameError(f"request with status {status}", RejectReason.STATUS)
    if length != len(body) - HEADER_SIZE:
        raise FrameError(f"length field {length} but {len(body) - HEADER_SIZE} payload bytes", RejectReason.LENGTH)
    return Frame(kind=kind, seq=seq, cmd=cmd, status=status, payload=bytes(body[HEADER_SIZE:]))


def decode_frame(wire: bytes, expect_kind: Kind) -> Frame:
    """Decodes exactly one frame (delimiter optional); raises FrameError if it is not valid."""
    raw = wire[:-1] if wire.endswith(b"\x00") else wire
    if b"\x00" in raw:
        raise FrameError("more than one frame (0x00 inside)", RejectReason.COBS)
    if len(raw) > MAX_RAW:
        raise FrameError(f"frame of {len(raw)} wire bytes is oversize", RejectReason.OVERSIZE)
    data, complete = _cobs_decode(raw)
    if len(data) <= MAX_DECODED and not complete:
        raise FrameError("COBS data ends inside a block", RejectReason.COBS)
    return parse_decoded(bytes(data), expect_kind)


class FrameDecoder:
    """Streaming decoder: ``feed(bytes) -> frames``. Resynchronises on every 0x00; empty
    frames (repeated delimiters) are ignored; dropped frames are counted in ``rejected`` by
    reason. Memory is bounded: bytes of a frame longer than any valid one are discarded and
    the frame is counted as OVERSIZE when its delimiter comes."""

    def __init__(self, expect_kind: Kind) -> None:
        self.expect_kind = expect_kind
        self.accepted = 0
        self.rejected: Counter[RejectReason] = Counter()
        self._buf = bytearray()
        self._oversize = False

    @property
    def pending(self) -> int:
        """Bytes buffered for the current (unterminated) frame; never more than MAX_RAW."""
        return len(self._buf)

    def reset(self) -> None:
        """Forgets a partly received frame."""
        self._buf.clear()
        self._oversize = False

    def feed(self, data: bytes) -> list[Frame]:
        """The valid frames completed by ``data``."""
        return [e for e in self.feed_events(data) if isinstance(e, Frame)]

    def feed_events(self, data: bytes) -> list[Frame | RejectReason]:
        """Every frame completed by ``data``, in order: the valid ones and the reasons of the
        dropped ones (empty frames are not events)."""
        events: list[Frame | RejectReason] = []
        parts = bytes(data).split(b"\x00")
        for part in parts[:-1]:
            self._append(part)
            event = self._finish()
            if event is not None:
                events.append(event)
        self._append(parts[-1])
        return events

    def _append(self, part: bytes) -> None:
        if self._oversize:
            return
        if len(self._buf) + len(part) > MAX_RAW:
            self._oversize = True
            self._buf.clear()
        else:
            self._buf += part

    def _finish(self) -> Frame | RejectReason | None:
        raw, oversize = bytes(self._buf), self._oversize
        self.reset()
        if oversize:
            self.rejected[RejectReason.OVERSIZE] += 1
            return RejectReason.OVERSIZE
        if not raw:
            return None
        try:
            frame = decode_frame(raw, self.expect_kind)
        except FrameError as e:
            reason = e.reason if e.reason is not None else RejectReason.COBS
            self.rejected[reason] += 1
            return reason
        self.accepted += 1
        return frame
