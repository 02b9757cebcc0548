"""The serial frame protocol: host_tools.frame / host_tools.link and their C twin
firmware_templates/app/tt_frame.c.

The C is compiled for the host with AddressSanitizer and UBSan into a small driver program
(its source is below) that runs as a subprocess: ``decode`` feeds stdin to tt_frame_feed
byte by byte and prints one line per frame that ended; ``encode`` frames records with
tt_frame_encode into buffers of exactly the requested capacity; ``device`` is an echo device
built on the decoder and the repeat cache; ``crc`` prints tt_frame_crc32 of stdin. Both
parsers get the same byte streams (valid frames, every single-bit flip of valid frames and
more than 10,000 random and mutated frames) and must report the same events. The Link
tests run against a fake device (a Python thread on a TCP port, pyserial ``socket://``) that
drops, ignores, corrupts and answers stale.
"""

from __future__ import annotations

import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from host_tools.frame import (
    CRC_SIZE,
    HEADER_SIZE,
    MAX_ENCODED,
    MAX_PAYLOAD,
    MAX_RAW,
    SEQ_NONE,
    VERSION,
    Frame,
    FrameDecoder,
    FrameError,
    Kind,
    RejectReason,
    Status,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_frame,
    encode_body,
    encode_frame,
    encoded_size,
)
from host_tools.link import DeviceError, Link, LinkError, open_port
from tests.helpers_c import M4_FLAGS, assert_integer_only
from tests.helpers_port import PipePort
from tinytrain.errors import TinytrainError
from tinytrain.testing.cbuild import C_FLAGS, SANITIZE_FLAGS

APP = Path(__file__).resolve().parents[1] / "firmware_templates" / "app"
SEED = 20240605

DRIVER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tt_frame.h"

static unsigned char *read_all(size_t *n) {
    size_t cap = 1 << 16, len = 0, got;
    unsigned char *buf = malloc(cap);
    while (buf && (got = fread(buf + len, 1, cap - len, stdin)) > 0) {
        len += got;
        if (len == cap) { cap *= 2; buf = realloc(buf, cap); }
    }
    *n = len;
    return buf;
}

static void put_hex(const unsigned char *p, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) printf("%02x", p[i]);
}

static int decode(int kind) {
    static tt_frame_decoder dec;
    size_t n, i, r;
    unsigned char *in = read_all(&n);
    tt_frame_decoder_init(&dec, (uint8_t)kind);
    for (i = 0; i < n; i++) {
        int st = tt_frame_feed(&dec, in[i]);
        if (st == TT_FRAME_READY) {
            const tt_frame *f = &dec.frame;
            printf("F %u %u %u %u %u %08lx ", f->kind, f->seq, f->cmd, f->status, f->length, (unsigned long)f->crc);
            put_hex(f->payload, f->length);
            printf("\n");
        } else if (st != TT_FRAME_NONE) {
            printf("E %d\n", -st);
        }
    }
    printf("S %lu", (unsigned long)dec.accepted);
    for (r = 1; r < TT_FRAME_N_REASONS; r++) printf(" %lu", (unsigned long)dec.rejected[r]);
    printf(" %u\n", (unsigned)dec.len);
    free(in);
    return 0;
}

/* records: u32 cap | u8 kind | u16 seq | u8 cmd | u8 status | u16 len | payload[len] (LE) */
static int encode(void) {
    size_t n, pos = 0;
    unsigned char *in = read_all(&n);
    while (pos + 11 <= n) {
        const unsigned char *h = in + pos;
        size_t cap = (size_t)h[0] | ((size_t)h[1] << 8) | ((size_t)h[2] << 16) | ((size_t)h[3] << 24);
        size_t len = (size_t)h[9] | ((size_t)h[10] << 8);
        unsigned char *out = malloc(cap ? cap : 1);
        unsigned char *payload = len ? malloc(len) : NULL;
        int32_t r;
        if (len) memcpy(payload, h + 11, len);
        r = tt_frame_encode(out, cap, h[4], (uint16_t)(h[5] | (h[6] << 8)), h[7], h[8], payload, len);
        printf("R %ld ", (long)r);
        if (r > 0) put_hex(out, (size_t)r);
        printf("\n");
        free(out);
        free(payload);
        pos += 11 + len;
    }
    free(in);
    return 0;
}

/* An echo device: executes each new request (counts it, answers u32 count | payload), answers
 * repeats from the cache, answers dropped frames with BAD_FRAME (seq 0xFFFF, u8 reason). */
static int device(void) {
    static tt_frame_decoder dec;
    static tt_frame_cache cache;
    static uint8_t reply[TT_FRAME_MAX_PAYLOAD];
    static uint8_t out[TT_FRAME_MAX_ENCODED];
    uint32_t executed = 0;
    int c;
    tt_frame_decoder_init(&dec, TT_FRAME_KIND_REQUEST);
    tt_frame_cache_init(&cache);
    while ((c = getchar()) != EOF) {
        int st = tt_frame_feed(&dec, (uint8_t)c);
        if (st == TT_FRAME_READY) {
            const tt_frame *f = &dec.frame;
            int32_t n;
            if (!tt_frame_is_repeat(&cache, f)) {
                size_t len = f->length;
                executed++;
                reply[0] = (uint8_t)executed;
                reply[1] = (uint8_t)(executed >> 8);
                reply[2] = (uint8_t)(executed >> 16);
                reply[3] = (uint8_t)(executed >> 24);
                if (len > TT_FRAME_MAX_PAYLOAD - 4) len = TT_FRAME_MAX_PAYLOAD - 4;
                memcpy(reply + 4, f->payload, len);
                n = tt_frame_cache_respond(&cache, f, f->cmd == 0x7F ? TT_FRAME_STATUS_UNKNOWN_CMD : 0, reply, len + 4);
                if (n < 0) return 3;
            }
            fwrite(cache.response, 1, cache.response_len, stdout);
        } else if (st != TT_FRAME_NONE) {
            uint8_t reason = (uint8_t)-st;
            int32_t n = tt_frame_encode(out, sizeof(out), TT_FRAME_KIND_RESPONSE, TT_FRAME_SEQ_NONE, 0,
                                        TT_FRAME_STATUS_BAD_FRAME, &reason, 1);
            if (n < 0) return 4;
            fwrite(out, 1, (size_t)n, stdout);
        }
        fflush(stdout);
    }
    return 0;
}

static int crc(void) {
    size_t n;
    unsigned char *in = read_all(&n);
    uint32_t a = tt_frame_crc32(0, in, n);
    uint32_t b = tt_frame_crc32(tt_frame_crc32(0, in, n / 3), in + n / 3, n - n / 3);
    printf("%08lx %08lx\n", (unsigned long)a, (unsigned long)b);
    free(in);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "decode") == 0) return decode(argc >= 3 ? atoi(argv[2]) : 0);
    if (argc >= 2 && strcmp(argv[1], "encode") == 0) return encode();
    if (argc >= 2 && strcmp(argv[1], "device") == 0) return device();
    if (argc >= 2 && strcmp(argv[1], "crc") == 0) return crc();
    return 2;
}
"""


# ---------------------------------------------------------------------------------------------
# The C driver (host gcc, ASan + UBSan)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("frame_c")
    src = d / "driver.c"
    src.write_text(DRIVER_C)
    exe = d / "tt_frame_driver"
    flags = [f for f in C_FLAGS if f != "-O2"]
    cmd = [cc, *flags, "-O1", "-g", *SANITIZE_FLAGS, f"-I{APP}", str(src), str(APP / "tt_frame.c"), "-o", str(exe)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return exe


def run_driver(exe: Path, args: list[str], data: bytes, timeout: float = 60) -> bytes:
    r = subprocess.run(
        [str(exe), *args],
        input=data,
        capture_output=True,
        timeout=timeout,  # a hang fails the test
        env={"ASAN_OPTIONS": "abort_on_error=0:halt_on_error=1", "UBSAN_OPTIONS": "halt_on_error=1"},
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-4000:]
    assert r.stderr == b"", r.stderr.decode(errors="replace")[-4000:]
    return r.stdout


Event = tuple[object, ...]


def c_decode(exe: Path, data: bytes, kind: Kind) -> tuple[list[Event], list[int]]:
    """The C decoder's events on ``data`` (("F", Frame, crc) / ("E", reason)) and its final
    counters (accepted, rejected by reason 1..8, bytes pending)."""
    events: list[Event] = []
    stats: list[int] = []
    for line in run_driver(exe, ["decode", str(int(kind))], data).decode().splitlines():
        parts = line.split(" ")
        if parts[0] == "F":
            k, seq, cmd, status, length = map(int, parts[1:6])
            payload = bytes.fromhex(parts[7]) if len(parts) > 7 else b""
            assert len(payload) == length
            events.append(("F", Frame(k, seq, cmd, status, payload), int(parts[6], 16)))
        elif parts[0] == "E":
            events.append(("E", RejectReason(int(parts[1]))))
        else:
            stats = [int(p) for p in parts[1:]]
    return events, stats


def py_decode(data: bytes, kind: Kind, chunks: Callable[[bytes], Iterator[bytes]] | None = None) -> list[Event]:
    dec = FrameDecoder(kind)
    events: list[Event] = []
    for chunk in chunks(data) if chunks else [data]:
        for e in dec.feed_events(chunk):
            if isinstance(e, Frame):
                events.append(("F", e, crc32(encode_body(e))))
            else:
                events.append(("E", e))
        assert dec.pending <= MAX_RAW
    return events


# ---------------------------------------------------------------------------------------------
# Case generation


def rand_payload(rng: random.Random, n: int) -> bytes:
    mode = rng.randrange(4)
    if mode == 0:
        return rng.randbytes(n)
    if mode == 1:
        return bytes(rng.randrange(1, 256) for _ in range(n))  # no zero: full 254-byte COBS blocks
    if mode == 2:
        return bytes(n)
    return bytes(rng.choice((0, 0, 1, 0xFF, rng.randrange(256))) for _ in range(n))


def rand_len(rng: random.Random) -> int:
    return rng.choice(
        (
            0,
            1,
            rng.randrange(2, 40),
            rng.randrange(240, 270),
            rng.randrange(490, 520),
            rng.randrange(784, 800),
            rng.randrange(MAX_PAYLOAD - 20, MAX_PAYLOAD + 1),
            rng.randrange(MAX_PAYLOAD + 1),
        )
    )


def rand_frame(rng: random.Random, kind: Kind) -> Frame:
    status = 0 if kind == Kind.REQUEST else rng.randrange(256)
    return Frame(kind, rng.randrange(0x10000), rng.randrange(256), status, rand_payload(rng, rand_len(rng)))


def wire_of_body(body: bytes) -> bytes:
    """COBS(body || crc) 0x00 for any body (also invalid ones, the CRC made to match)."""
    return cobs_encode(body + struct.pack("<I", zlib.crc32(body))) + b"\x00"


def mutate(rng: random.Random, w: bytes) -> bytes:
    b = bytearray(w)
    for _ in range(rng.randrange(1, 4)):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.randrange(9)
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.randrange(256)
        elif op == 2:
            del b[i]
        elif op == 3:
            b.insert(i, b[i])  # duplicated byte
        elif op == 4:
            b.insert(i, 0)  # inserted delimiter
        elif op == 5:
            b.insert(i, rng.randrange(1, 256))
        elif op == 6:
            del b[i:]  # truncation
        elif op == 7:
            j = rng.randrange(len(b))
            b[i], b[j] = b[j], b[i]
        else:
            j = min(len(b), i + rng.randrange(1, 40))
            b[i:i] = b[i:j]  # a repeated slice
    return bytes(b)


@dataclass
class Cases:
    """Fuzz cases: each a byte string, with the outcome it must have when it is fed alone
    (between delimiters) when that is known: a Frame, a RejectReason, or None (anything, as
    long as both parsers agree)."""

    items: list[tuple[bytes, Frame | RejectReason | None]] = field(default_factory=list)

    def add(self, data: bytes, expect: Frame | RejectReason | None) -> None:
        self.items.append((data, expect))


def header(version: int, kind: int, seq: int, cmd: int, status: int, length: int) -> bytes:
    return struct.pack("<BBHBBH", version, kind, seq, cmd, status, length)


def make_cases(rng: random.Random, kind: Kind, n: int) -> Cases:
    cases = Cases()
    other = Kind.RESPONSE if kind == Kind.REQUEST else Kind.REQUEST
    while len(cases.items) < n:
        r = rng.randrange(100)
        f = rand_frame(rng, kind)
        if r < 25:  # valid
            cases.add(encode_frame(f), f)
        elif r < 70:  # mutated valid frames
            cases.add(mutate(rng, encode_frame(f)), None)
        elif r < 75:  # bad version / kind / status with a matching CRC
            p = f.payload
            which = rng.randrange(3)
            if which == 0:
                v = rng.choice((0, 2, 255))
                cases.add(wire_of_body(header(v, kind, f.seq, f.cmd, f.status, len(p)) + p), RejectReason.VERSION)
            elif which == 1:
                k = rng.choice((int(other), 2, 255))
                st_ = 0 if k == Kind.REQUEST else f.status
                cases.add(wire_of_body(header(VERSION, k, f.seq, f.cmd, st_, len(p)) + p), RejectReason.KIND)
            elif kind == Kind.REQUEST:
                s = rng.choice((1, 2, 0x80, 0xFF, rng.randrange(1, 256)))
                cases.add(wire_of_body(header(VERSION, kind, f.seq, f.cmd, s, len(p)) + p), RejectReason.STATUS)
            else:
                cases.add(encode_frame(f), f)
        elif r < 81:  # length field != payload size (huge, off by one, random), CRC matching
            p = f.payload
            bad = rng.choice((0xFFFF, len(p) + 1, max(0, len(p) - 1), rng.randrange(0x10000), MAX_PAYLOAD + 1))
            if bad == len(p):
                bad = len(p) + 1
            cases.add(wire_of_body(header(VERSION, kind, f.seq, f.cmd, f.status, bad) + p), RejectReason.LENGTH)
        elif r < 84:  # too short
            body = rng.randbytes(rng.randrange(HEADER_SIZE + CRC_SIZE))
            cases.add(cobs_encode(body) + b"\x00", RejectReason.SHORT if body else None)
        elif r < 88:  # oversize, otherwise valid (length field and CRC right)
            p = rand_payload(rng, MAX_PAYLOAD + rng.choice((1, 2, 3, rng.randrange(4, 3000))))
            cases.add(
                wire_of_body(header(VERSION, kind, f.seq, f.cmd, f.status, len(p) & 0xFFFF) + p), RejectReason.OVERSIZE
            )
        elif r < 91:  # a valid frame in non-canonical COBS: an empty block after a final 0xFF block
            wire, frame = noncanonical_frame(rng, kind)
            cases.add(wire, frame)
        elif r < 96:  # random garbage, with and without zeros
            m = rng.choice((rng.randrange(1, 30), rng.randrange(30, 1200), rng.randrange(1200, 4000)))
            g = rng.randbytes(m) if rng.random() < 0.5 else bytes(rng.randrange(1, 256) for _ in range(m))
            cases.add(g, None)
        else:  # COBS of random bodies with the header mostly right
            body = header(VERSION, kind, f.seq, f.cmd, f.status, len(f.payload)) + f.payload
            tail = rng.randbytes(4)
            cases.add(cobs_encode(body + tail) + b"\x00", None)
    return cases


def noncanonical_frame(rng: random.Random, kind: Kind) -> tuple[bytes, Frame]:
    """A valid frame whose body + CRC ends with a zero-free run of 254*k bytes, encoded with
    the (redundant) empty block 0x01 after the last 0xFF block: it decodes to the same bytes."""
    while True:
        p = bytes(rng.randrange(1, 256) for _ in range(rng.choice((250, 502, 756, 1010))))
        f = Frame(kind, rng.randrange(1, 256) * 257, rng.randrange(1, 256), 0, p)
        raw = encode_body(f) + struct.pack("<I", crc32(encode_body(f)))
        last = raw.split(b"\x00")[-1]
        if last and len(last) % 254 == 0:
            canon = cobs_encode(raw)
            assert canon[-255] == 0xFF
            return canon + b"\x01\x00", f


def check_expectations(cases: Cases, kind: Kind) -> None:
    for data, expect in cases.items:
        if expect is None:
            continue
        ev = py_decode(b"\x00" + data + b"\x00", kind)
        assert len(ev) == 1, (expect, ev)
        got = ev[0][1]
        assert got == expect, (expect, got)


# ---------------------------------------------------------------------------------------------
# Python: COBS, CRC, frames


COBS_VECTORS = [  # from the COBS paper / Wikipedia's examples
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "enc"), COBS_VECTORS)
def test_cobs_vectors(raw: bytes, enc: bytes) -> None:
    assert cobs_encode(raw) == enc
    assert cobs_decode(enc) == raw


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"\x00", b"\x01", b"\xff", b"\x07" * 253, b"\x09" * 254, b"\x05" * 255]) | st.binary(),
        max_size=12,
    )
)
def test_cobs_round_trip(parts: list[bytes]) -> None:
    raw = b"".join(parts)
    enc = cobs_encode(raw)
    assert b"\x00" not in enc
    assert cobs_decode(enc) == raw
    assert len(enc) <= len(raw) + len(raw) // 254 + 1


def test_cobs_decode_errors() -> None:
    with pytest.raises(FrameError):
        cobs_decode(b"\x03\x11\x00")
    with pytest.raises(FrameError):
        cobs_decode(b"\x05\x11\x22")  # truncated block


def test_crc32_check_value() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value
    assert crc32(b"6789", crc32(b"12345")) == crc32(b"123456789")


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(Kind),
    seq=st.integers(0, 0xFFFF),
    cmd=st.integers(0, 255),
    status=st.integers(0, 255),
    payload=st.binary(max_size=MAX_PAYLOAD) | st.sampled_from([bytes(MAX_PAYLOAD), b"\x01" * MAX_PAYLOAD]),
)
def test_frame_round_trip(kind: Kind, seq: int, cmd: int, status: int, payload: bytes) -> None:
    f = Frame(int(kind), seq, cmd, status if kind == Kind.RESPONSE else 0, payload)
    w = encode_frame(f)
    assert w.endswith(b"\x00") and b"\x00" not in w[:-1]
    assert len(w) <= encoded_size(len(payload)) <= MAX_ENCODED
    assert decode_frame(w, kind) == f
    dec = FrameDecoder(kind)
    assert dec.feed(w[: len(w) // 2]) == []
    assert dec.feed(w[len(w) // 2 :] + w) == [f, f]


def test_encode_rejects_bad_fields() -> None:
    for f in (
        Frame(0, 1, 1, 0, bytes(MAX_PAYLOAD + 1)),
        Frame(0, 1, 1, 3, b""),  # request with a status
        Frame(2, 1, 1, 0, b""),
        Frame(0, 0x10000, 1, 0, b""),
        Frame(1, 1, 256, 0, b""),
    ):
        with pytest.raises(FrameError) as e:
            encode_frame(f)
        assert isinstance(e.value, TinytrainError)


def test_decoder_reasons_and_counts() -> None:
    f = Frame(0, 7, 3, 0, b"x" * 10)
    w = encode_frame(f)
    body = encode_body(f)
    dec = FrameDecoder(Kind.REQUEST)
    stream = (
        w[:-3]
        + b"\x00"  # truncated: COBS block cut
        + b"\x00\x00"  # empty frames: ignored
        + wire_of_body(body[:-1])  # length mismatch
        + w[:5]
        + bytes([w[5] ^ 0x10])
        + w[6:]  # CRC
        + w
    )
    assert dec.feed(stream) == [f]
    assert dec.accepted == 1
    assert dec.rejected == {RejectReason.COBS: 1, RejectReason.LENGTH: 1, RejectReason.CRC: 1}
    with pytest.raises(FrameError) as e:
        decode_frame(w, Kind.RESPONSE)
    assert e.value.reason == RejectReason.KIND


def test_decoder_memory_bounded_and_resyncs() -> None:
    """An endless stream without delimiter keeps at most MAX_RAW bytes; the first 0x00 ends it
    as one oversize frame and the next frame decodes."""
    rng = random.Random(SEED)
    dec = FrameDecoder(Kind.REQUEST)
    junk = bytes(rng.randrange(1, 256) for _ in range(4096))
    for _ in range(256):  # 1 MiB
        assert dec.feed_events(junk) == []
        assert dec.pending <= MAX_RAW
    f = Frame(0, 1, 2, 0, b"abc")
    assert dec.feed_events(b"\x00" + encode_frame(f)) == [RejectReason.OVERSIZE, f]


def test_largest_frame_fits_sample() -> None:
    """A 28x28 uint8 sample plus an 8-byte header fits one frame; the C macros equal the Python constants."""
    assert MAX_PAYLOAD >= 28 * 28 + 8
    h = (APP / "tt_frame.h").read_text()

    def macro(name: str) -> int:
        m = re.search(rf"#define {name} (\d+)u?\b", h)
        assert m, name
        return int(m.group(1))

    assert macro("TT_FRAME_VERSION") == VERSION
    assert macro("TT_FRAME_HEADER_SIZE") == HEADER_SIZE
    assert macro("TT_FRAME_CRC_SIZE") == CRC_SIZE
    assert macro("TT_FRAME_MAX_PAYLOAD") == MAX_PAYLOAD
    assert macro("TT_FRAME_KIND_REQUEST") == Kind.REQUEST and macro("TT_FRAME_KIND_RESPONSE") == Kind.RESPONSE
    for s in Status:
        assert macro(f"TT_FRAME_STATUS_{s.name}") == s
    for r in RejectReason:
        m = re.search(rf"TT_FRAME_ERR_{r.name} = -(\d+)", h)
        assert m and int(m.group(1)) == r, r


# ---------------------------------------------------------------------------------------------
# C twin


def test_c_crc32(driver: Path) -> None:
    rng = random.Random(SEED)
    for n in (0, 1, 9, 1000):
        data = b"123456789" if n == 9 else rng.randbytes(n)
        a, b = run_driver(driver, ["crc"], data).decode().split()
        assert int(a, 16) == int(b, 16) == crc32(data)


def test_c_encoder_matches_python(driver: Path) -> None:
    """tt_frame_encode writes Python's bytes; too small a buffer (exact size - 1) gives
    ERR_BUFFER without writing past it (ASan); bad fields give ERR_ARG like FrameError."""
    rng = random.Random(SEED + 1)
    records = bytearray()
    expect: list[bytes | int] = []

    def add(cap: int, f: Frame) -> None:
        records.extend(struct.pack("<IBHBBH", cap, f.kind, f.seq, f.cmd, f.status, len(f.payload)) + f.payload)

    for i in range(1500):
        f = rand_frame(rng, Kind(i % 2))
        w = encode_frame(f)
        mode = i % 5
        if mode == 0:
            add(len(w) - 1, f)
            expect.append(-9)
        elif mode == 1:
            add(len(w), f)
            expect.append(w)
        else:
            add(encoded_size(len(f.payload)), f)
            expect.append(w)
    for f in (Frame(0, 1, 1, 0, bytes(MAX_PAYLOAD + 1)), Frame(0, 1, 1, 3, b""), Frame(2, 1, 1, 0, b"")):
        with pytest.raises(FrameError):
            encode_frame(f)
        add(4096, f)
        expect.append(-10)
    lines = run_driver(driver, ["encode"], bytes(records)).decode().splitlines()
    assert len(lines) == len(expect)
    for line, want in zip(lines, expect, strict=True):
        parts = line.split(" ")
        n = int(parts[1])
        if isinstance(want, int):
            assert n == want
        else:
            assert n == len(want) and bytes.fromhex(parts[2]) == want


def valid_frames(rng: random.Random, kind: Kind) -> list[Frame]:
    status = 0 if kind == Kind.REQUEST else 4
    return [
        Frame(kind, 0, 1, status, b""),
        Frame(kind, 0xFFFE, 0x42, status, b"\x00\x01\x00\x00\x02" + rng.randbytes(12)),
        Frame(kind, 0x1234, 0x05, status, bytes(rng.randrange(1, 256) for _ in range(300))),  # a full COBS block
        Frame(kind, 77, 0x02, status, rng.randbytes(MAX_PAYLOAD)),
    ]


@pytest.mark.parametrize("kind", list(Kind))
def test_every_single_bit_flip_rejected(driver: Path, kind: Kind) -> None:
    """Each valid frame is accepted by both parsers with the same fields; each of its
    single-bit flips (delimiter included; a 0x00 guard after it) is rejected by both."""
    rng = random.Random(SEED + int(kind))
    frames = valid_frames(rng, kind)
    clean = b"".join(encode_frame(f) for f in frames)
    c_events, _ = c_decode(driver, clean, kind)
    assert [e[1] for e in c_events] == frames
    assert c_events == py_decode(clean, kind)
    stream = bytearray()
    flips = 0
    for f in frames:
        w = encode_frame(f)
        for bit in range(len(w) * 8):
            m = bytearray(w)
            m[bit // 8] ^= 1 << (bit % 8)
            case = b"\x00" + bytes(m) + b"\x00"
            assert not any(isinstance(e, Frame) for e in FrameDecoder(kind).feed_events(case)), (f, bit)
            stream += case
            flips += 1
    assert flips > 8000
    c_events, stats = c_decode(driver, bytes(stream), kind)
    assert not [e for e in c_events if e[0] == "F"]
    assert c_events == py_decode(bytes(stream), kind)
    assert stats[0] == 0 and sum(stats[1:9]) == len(c_events)


def _random_chunks(seed: int) -> Callable[[bytes], Iterator[bytes]]:
    def chunks(data: bytes) -> Iterator[bytes]:
        rng = random.Random(seed)
        i = 0
        while i < len(data):
            n = rng.choice((1, 2, 7, 100, 1049, 1050, 5000))
            yield data[i : i + n]
            i += n

    return chunks


@pytest.mark.parametrize("kind", list(Kind))
def test_fuzz_python_and_c_agree(driver: Path, kind: Kind) -> None:
    """6,000 random and mutated frames per kind (12,000 in all: valid, bit flips, replaced,
    deleted, duplicated and inserted bytes, inserted zeros, truncations, repeated slices,
    bad version/kind/status/length with a matching CRC, huge length fields, too short,
    oversize, non-canonical COBS, garbage with and without zeros): fed to both decoders
    each between delimiters, then all concatenated without separators; no crash or hang
    (ASan/UBSan, timeout), the same events (accepted frames with the same fields and CRC,
    dropped frames with the same reason) and the same counters; every case with a known
    outcome has it."""
    rng = random.Random(SEED + 10 + int(kind))
    cases = make_cases(rng, kind, 6000)
    check_expectations(cases, kind)
    n_known = sum(e is not None for _, e in cases.items)
    assert n_known > 2000
    separated = b"".join(b"\x00" + d for d, _ in cases.items) + b"\x00"
    joined = b"".join(d for d, _ in cases.items) + b"\x00"
    for stream in (separated, joined):
        c_events, stats = c_decode(driver, stream, kind)
        py_events = py_decode(stream, kind)
        assert c_events == py_events
        assert stats[0] == sum(e[0] == "F" for e in c_events)
        for reason in RejectReason:
            assert stats[reason] == sum(e[1] == reason for e in c_events if e[0] == "E")
        assert stats[9] == 0  # nothing pending after the final delimiter
    # every reason occurs, and the accepted frames include the valid cases
    reasons = {e[1] for e in c_events if e[0] == "E"}
    assert reasons >= set(RejectReason) - ({RejectReason.STATUS} if kind == Kind.RESPONSE else set())
    # streaming: any split of the input into chunks gives the same events
    assert py_decode(separated[:300_000], kind, _random_chunks(SEED)) == py_decode(separated[:300_000], kind)


def test_c_decoder_endless_stream(driver: Path) -> None:
    """3 MiB without delimiter: one OVERSIZE frame, then the next frame decodes (C fixed buffer, no overflow)."""
    rng = random.Random(SEED + 3)
    f = Frame(0, 9, 1, 0, b"hello")
    junk = bytes(rng.randrange(1, 256) for _ in range(1 << 16)) * 48
    events, stats = c_decode(driver, junk + b"\x00" + encode_frame(f) + junk[:5000], Kind.REQUEST)
    assert events == [("E", RejectReason.OVERSIZE), ("F", f, crc32(encode_body(f)))]
    assert 0 < stats[9] <= MAX_RAW  # bytes held for the unterminated tail


def test_c_device_repeat_cache(driver: Path) -> None:
    """The C echo device (decoder + repeat cache): a retransmitted request is answered with the
    same bytes and not executed again; a new seq, or the same seq with other content (a new
    connection reusing a seq), is executed; a corrupt frame gets BAD_FRAME (seq 0xFFFF) with
    the reason and executes nothing."""
    a = encode_frame(Frame(0, 5, 0x10, 0, b"sample-A"))
    b = encode_frame(Frame(0, 6, 0x10, 0, b"sample-B"))
    b_other = encode_frame(Frame(0, 6, 0x10, 0, b"sample-C"))
    bad = bytearray(b)
    bad[4] ^= 0x01
    stream = b"\x00" + a + a + b"\x00" + a + bytes(bad) + b + b + b_other + b_other
    out = run_driver(driver, ["device"], stream)
    responses = FrameDecoder(Kind.RESPONSE).feed(out)
    counts = [int.from_bytes(r.payload[:4], "little") if r.status != Status.BAD_FRAME else None for r in responses]
    assert [r.seq for r in responses] == [5, 5, 5, SEQ_NONE, 6, 6, 6, 6]
    assert counts == [1, 1, 1, None, 2, 2, 3, 3]
    (reason,) = FrameDecoder(Kind.REQUEST).feed_events(bytes(bad))
    assert isinstance(reason, RejectReason) and responses[3].payload == bytes([reason])
    assert responses[4].payload[4:] == b"sample-B" and responses[6].payload[4:] == b"sample-C"
    # the cached response is byte-identical to the first one
    pieces = out.split(b"\x00")
    assert pieces[0] == pieces[1] == pieces[2]


def test_c_compiles_for_cortex_m4(tmp_path: Path) -> None:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    obj = tmp_path / "tt_frame.o"
    cmd = [cc, *M4_FLAGS, *C_FLAGS, "-c", f"-I{APP}", str(APP / "tt_frame.c"), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert_integer_only(obj)
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True).stdout.split()
    assert set(undefined) - {"U"} <= {"memset", "memcpy"}
    includes = re.findall(r"#include <([^>]+)>", (APP / "tt_frame.c").read_text() + (APP / "tt_frame.h").read_text())
    assert set(includes) <= {"stdint.h", "stddef.h", "string.h"}


# ---------------------------------------------------------------------------------------------
# Link against a fake device (Python, TCP, pyserial socket://)


class FakeDevice:
    """A device on a TCP port: executes each new request (appends it to ``executed`` and
    answers ``u32 count | payload``), answers repeats (same seq and CRC) from its cache, and
    injects faults: ``ignore`` requests it never sees, ``drop`` responses it never sends,
    ``stale`` wrong-seq responses and garbage sent before a response, ``corrupt`` requests
    it answers with BAD_FRAME, ``silent`` (never answers)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.executed: list[Frame] = []
        self.ignore = 0
        self.drop = 0
        self.stale = 0
        self.corrupt = 0
        self.silent = False
        self._last: tuple[int, int] | None = None
        self._cached = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"socket://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self.server.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        self.server.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.05)
                dec = FrameDecoder(Kind.REQUEST)
                while not self._stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    for req in dec.feed(data):
                        self._handle(conn, req)

    def _handle(self, conn: socket.socket, req: Frame) -> None:
        if self.silent:
            return
        if self.ignore:
            self.ignore -= 1
            return
        if self.corrupt:
            self.corrupt -= 1
            conn.sendall(encode_frame(Frame(1, SEQ_NONE, 0, Status.BAD_FRAME, bytes([RejectReason.CRC]))))
            return
        key = (req.seq, crc32(encode_body(req)))
        if key != self._last:
            self.executed.append(req)
            status = Status.UNKNOWN_CMD if req.cmd == 0x7F else Status.OK
            payload = struct.pack("<I", len(self.executed)) + req.payload
            self._cached = encode_frame(Frame(1, req.seq, req.cmd, status, payload))
            self._last = key
        if self.drop:
            self.drop -= 1
            return
        if self.stale:
            self.stale -= 1
            conn.sendall(encode_frame(Frame(1, (req.seq - 1) % SEQ_NONE, req.cmd, 0, b"old")))
            conn.sendall(encode_frame(Frame(1, req.seq, req.cmd ^ 1, 0, b"other cmd")))
            conn.sendall(b"\x13\x37garbage\x00")
        conn.sendall(self._cached)


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    d = FakeDevice()
    yield d
    d.close()


def make_link(url: str, **kw: float | int) -> Link:
    port = serial.serial_for_url(url, timeout=0.01)
    return Link(port, **{"timeout": 0.3, "retries": 3, "poll": 0.01, **kw})  # type: ignore[arg-type]


def test_link_request_and_seq_wrap(device: FakeDevice) -> None:
    with make_link(device.url, first_seq=0xFFFD) as link:
        replies = [link.request(0x10, bytes([i]) * i) for i in range(1, 5)]
    assert [f.seq for f in device.executed] == [0xFFFD, 0xFFFE, 0, 1]  # 0xFFFF is skipped
    for i, r in enumerate(replies, 1):
        assert r.kind == Kind.RESPONSE and r.status == Status.OK and r.cmd == 0x10
        assert r.payload == struct.pack("<I", i) + bytes([i]) * i
    assert link.stats.transmissions == link.stats.requests == 4


def test_link_retransmits_after_dropped_response(device: FakeDevice) -> None:
    """The response is lost twice: the host retransmits the same bytes, the device answers
    from its cache and executes the request once."""
    device.drop = 2
    with make_link(device.url, timeout=0.1) as link:
        r = link.request(0x02, b"train on me")
    assert r.payload == struct.pack("<I", 1) + b"train on me"
    assert len(device.executed) == 1
    assert link.stats.transmissions == 3 and link.stats.retransmissions == 2


def test_link_retransmits_after_lost_request(device: FakeDevice) -> None:
    device.ignore = 1
    with make_link(device.url, timeout=0.1) as link:
        r = link.request(0x03, b"x")
    assert r.status == Status.OK and len(device.executed) == 1 and link.stats.transmissions == 2


def test_link_ignores_stale_responses(device: FakeDevice) -> None:
    device.stale = 1
    with make_link(device.url) as link:
        r1 = link.request(0x04, b"one")
        r2 = link.request(0x04, b"two")
    assert r1.payload.endswith(b"one") and r2.payload.endswith(b"two")
    assert link.stats.stale == 2 and link.stats.transmissions == 2
    assert link.decoder.rejected[RejectReason.SHORT] + link.decoder.rejected[RejectReason.COBS] >= 1


def test_link_bad_frame_report_retransmits_at_once(device: FakeDevice) -> None:
    device.corrupt = 1
    with make_link(device.url, timeout=5.0) as link:
        t0 = time.monotonic()
        r = link.request(0x05, b"abc")
        elapsed = time.monotonic() - t0
    assert r.status == Status.OK and len(device.executed) == 1
    assert link.stats.bad_frame_reports == 1 and link.stats.transmissions == 2
    assert elapsed < 2.0  # did not wait for the 5 s timeout


def test_link_new_connection_same_seq_other_request_is_executed(device: FakeDevice) -> None:
    """A new connection that happens to reuse the last seq with another request is executed
    (the repeat test compares seq and CRC), the same bytes again are not."""
    with make_link(device.url, first_seq=100) as link:
        link.request(0x10, b"first")
    with make_link(device.url, first_seq=100) as link:
        link.request(0x10, b"second")
    with make_link(device.url, first_seq=100) as link:
        r = link.request(0x10, b"second")
    assert [f.payload for f in device.executed] == [b"first", b"second"]
    assert r.payload == struct.pack("<I", 2) + b"second"


def test_link_error_after_all_tries(device: FakeDevice) -> None:
    device.silent = True
    with make_link(device.url, timeout=0.05, retries=2) as link:
        t0 = time.monotonic()
        with pytest.raises(LinkError, match=r"no response to 0x21 \(seq \d+\) after 3 tries") as e:
            link.request(0x21, b"")
        assert time.monotonic() - t0 >= 0.15
    assert isinstance(e.value, TinytrainError)
    assert "\n" not in str(e.value)


def test_link_device_status_and_payload_errors(device: FakeDevice) -> None:
    with make_link(device.url) as link:
        assert link.request(0x7F).status == Status.UNKNOWN_CMD
        with pytest.raises(DeviceError, match="UNKNOWN_CMD") as e:
            link.call(0x7F, b"")
        assert e.value.status == Status.UNKNOWN_CMD
        assert link.call(0x11, b"ok") == struct.pack("<I", 3) + b"ok"
        with pytest.raises(FrameError):
            link.request(0x11, bytes(MAX_PAYLOAD + 1))


def test_link_over_loop_rejects_own_echo() -> None:
    """Over loop:// the host reads back its own request: dropped (kind), never taken for a response."""
    with make_link("loop://", timeout=0.05, retries=1) as link:
        with pytest.raises(LinkError, match="after 2 tries"):
            link.request(0x01, b"ping")
        assert link.decoder.rejected[RejectReason.KIND] == 2


def test_open_port_errors_are_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    for url in (f"socket://127.0.0.1:{free}", "/dev/does-not-exist-tty", "nope://x"):
        with pytest.raises(LinkError, match="cannot open serial port") as e:
            open_port(url)
        assert "\n" not in str(e.value)


def test_link_against_c_device(driver: Path) -> None:
    """host_tools.link drives the C echo device (ASan build) through pipes: requests, a
    retransmission (the first response withheld) answered from the C cache."""

    class WithholdingPort(PipePort):
        """Drops ``withhold`` whole responses (up to their 0x00 delimiter) before reading."""

        def __init__(self, proc: subprocess.Popen[bytes]) -> None:
            super().__init__(proc)
            self.withhold = 0

        def take(self, size: int) -> bytes | None:
            end = self.buf.find(b"\x00")
            if self.withhold and end >= 0:
                del self.buf[: end + 1]
                self.withhold -= 1
                return None
            return None if self.withhold else super().take(size)

    proc = subprocess.Popen(
        [str(driver), "device"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        port = WithholdingPort(proc)
        link = Link(port, timeout=0.5, retries=3, poll=0.01, first_seq=0xFFFE)
        r1 = link.request(0x10, b"a" * 784)
        port.withhold = 1  # the next response (up to its delimiter) is lost
        r2 = link.request(0x10, b"b")
        r3 = link.request(0x10, bytes(300))
        link.close()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None and proc.stderr.read() == b""
    assert [int.from_bytes(r.payload[:4], "little") for r in (r1, r2, r3)] == [1, 2, 3]
    assert r1.payload[4:] == b"a" * 784 and r3.payload[4:] == bytes(300)
    assert [r1.seq, r2.seq, r3.seq] == [0xFFFE, 0, 1]
    assert link.stats.transmissions == 4
