"""Power-loss-safe checkpoints of the training application (tt_ckpt.c) in QEMU, with the
board storage backed by a host file through semihosting (tt_board_storage_mps2.c):
SAVE_CKPT / LOAD_CKPT restore the saved bytes, across QEMU restarts; corrupt or foreign
slots are ignored; and QEMU killed (SIGKILL) at random moments during SAVE_CKPT — plus a
deterministic sweep of injected power losses after K storage writes — always leaves a
complete checkpoint, the old or the new one byte for byte, never a mix.

The program is the shipped MCUNet-synthetic checkpoint with the ``tte`` scheme, as in
tests/test_device_app.py (22 trained tensors, 3,284 bytes)."""

from __future__ import annotations

import array
import fcntl
import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from codegen.targets import BOARDS_DIR, build_firmware, qemu_command
from host_tools.device import CheckpointInfo, Command, Device, DeviceCommandError
from host_tools.firmware import AppBuild, build_app
from host_tools.frame import Frame, Kind, Status, encode_frame
from host_tools.link import Link
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model
from tinytrain.train.data import load_dataset

SEED = 11
LR = 0.05
PAGE = 4096
PAGES = 64  # TT_STORAGE_PAGES of tt_board_storage_mps2.c
SLOT_BYTES = PAGES * PAGE // 2
HEADER = struct.Struct("<8I")  # magic, version, model id, seq, payload length, payload CRC, state words, header CRC
MAGIC = 0x4B435454
CUT_STATUS = 97  # TT_STORAGE_CUT_STATUS
STORAGE_SELFTEST = BOARDS_DIR / "tests" / "tt_board_storage_selftest.c"
REAL_KILLS = 24
RUN_STATE_WORDS = 6  # TT_RUN_STATE_WORDS of the generated tt_model.h: PRNG, step, q_lr, shift_lr, schedule, total
CUTS = 12

pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(CHECKPOINT), CompileOptions("tte", classes=10, sample_bytes=28 * 28))


@pytest.fixture(scope="module")
def app(compiled: Compiled, tmp_path_factory: pytest.TempPathFactory) -> AppBuild:
    return build_app(compiled, "qemu-m4", tmp_path_factory.mktemp("app"), (28, 28))


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    train = load_dataset("fashion-mnist", "train")
    return train.images[:8], train.labels[:8]


class SocketPort:
    """The few pyserial calls Link makes, over a TCP socket (pyserial's socket:// sleeps
    0.3 s in close(), which this file would pay at every one of its ~50 QEMU runs)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout: float | None = 0.02
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @property
    def in_waiting(self) -> int:
        buf = array.array("i", [0])
        fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, buf)
        return int(buf[0])

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], self.timeout)
        return self.sock.recv(size) if ready else b""

    def write(self, data: bytes, /) -> int:
        self.sock.sendall(data)
        return len(data)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Qemu:
    proc: subprocess.Popen[bytes]
    port: SocketPort  # UART0
    dev: Device
    link: Link


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def qemu(app: AppBuild, storage: Path | None, cut: int | None = None) -> Iterator[Qemu]:
    """The application in QEMU with UART0 on TCP and the storage file; ``cut``: the firmware
    stops (exit status 97) before its (cut + 1)-th storage write unit, a deterministic power loss."""
    tcp = _free_port()
    cmd = qemu_command(app.info.elf, "qemu-m4", serial=f"tcp:127.0.0.1:{tcp},server=on,wait=on,nodelay=on",
                       storage=storage)  # fmt: skip
    if cut is not None:
        k = cmd.index("-append") + 1
        cmd[k] += f" tt_storage_cut={cut}"
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port = None
    try:
        deadline = time.monotonic() + 10.0
        while port is None:
            try:
                port = SocketPort(socket.create_connection(("127.0.0.1", tcp)))
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
                time.sleep(0.02)
        link = Link(port, timeout=5.0, retries=2)
        yield Qemu(proc, port, Device(link, app.program, step_timeout=60.0, ckpt_timeout=30.0), link)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if port is not None:
            port.close()
        if proc.stderr is not None:
            proc.stderr.close()


def _raw(q: Qemu) -> bytes:
    """Every trained tensor's bytes as the device holds them, concatenated (sizes from the
    compiled program: no TENSOR_INFO round trips)."""
    out = []
    for i, t in enumerate(q.dev.program.tensors if q.dev.program else ()):
        for off in range(0, t.nbytes, 1024):
            n = min(1024, t.nbytes - off)
            out.append(q.link.call(Command.READ_TENSOR, struct.pack("<HHI", i, n, off))[8:])
    return b"".join(out)


def _write_random(q: Qemu, rng: random.Random) -> bytes:
    """Random bytes into every trained tensor; returns them (as _raw would)."""
    out = []
    for i, t in enumerate(q.dev.program.tensors if q.dev.program else ()):
        for off in range(0, t.nbytes, 1024):
            data = rng.randbytes(min(1024, t.nbytes - off))
            q.link.call(Command.WRITE_TENSOR, struct.pack("<HHI", i, len(data), off) + data)
            out.append(data)
    return b"".join(out)


def _slot_header(storage: bytes, slot: int) -> tuple[int, ...] | None:
    """The header fields of a slot whose header is intact (magic, header CRC), else None."""
    h = storage[slot * SLOT_BYTES : slot * SLOT_BYTES + HEADER.size]
    f = HEADER.unpack(h)
    return f if f[0] == MAGIC and f[7] == zlib.crc32(h[:28]) else None


def _equal_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_save_load_and_restart(app: AppBuild, samples: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    """Save, train more, load: the weights are the saved bytes again (and the step counter);
    a new QEMU on the same storage file starts from the initial weights (no auto-load) and
    LOAD_CKPT brings back the newest checkpoint."""
    xs, ys = samples
    storage = tmp_path / "storage.bin"
    with qemu(app, storage) as q:
        dev = q.dev
        dev.identify()
        with pytest.raises(DeviceCommandError) as e:
            dev.load_checkpoint()
        assert e.value.status == Status.NO_CHECKPOINT
        assert storage.stat().st_size == PAGES * PAGE  # created, all erased
        dev.reset(SEED)
        dev.set_lr(LR)
        for x, y in zip(xs[:3], ys[:3], strict=True):
            dev.train(x, int(y))
        first = dev.save_checkpoint()
        assert (first.sequence, first.slot, first.step, first.state_words) == (1, 0, 3, RUN_STATE_WORDS)
        assert first.payload_bytes == 8 + 4 * RUN_STATE_WORDS + sum(t.nbytes for t in app.program.tensors)
        saved = dev.pull()
        for x, y in zip(xs[3:5], ys[3:5], strict=True):
            dev.train(x, int(y))
        trained = dev.pull()
        assert not _equal_weights(trained, saved)
        back = dev.load_checkpoint()
        assert back == first
        assert _equal_weights(dev.pull(), saved)
        assert dev.stats().step == 3
        assert dev.train(xs[5], int(ys[5])).step == 4  # training resumes from the restored step
        second = dev.save_checkpoint()
        assert (second.sequence, second.slot, second.step) == (2, 1, 4)
        newest = dev.pull()
        # retransmitted SAVE_CKPT: answered from the repeat cache, no third checkpoint
        r1 = Link(q.port, first_seq=77, timeout=10.0).request(Command.SAVE_CKPT)
        r2 = Link(q.port, first_seq=77, timeout=10.0).request(Command.SAVE_CKPT)
        assert r1.status == Status.OK and r2.payload == r1.payload
        assert struct.unpack_from("<I", r1.payload)[0] == 3
        assert q.link.request(Command.SAVE_CKPT, b"\x00").status == Status.BAD_LENGTH
        assert q.link.request(Command.LOAD_CKPT, b"\x00").status == Status.BAD_LENGTH
        dev.train(xs[6], int(ys[6]))
    data = storage.read_bytes()
    h0, h1 = _slot_header(data, 0), _slot_header(data, 1)
    assert h0 is not None and h1 is not None and (h0[3], h1[3]) == (3, 2)
    assert h0[2] == app.program.model_id == h1[2]
    with qemu(app, storage) as q:
        dev = q.dev
        initial = dev.pull()
        assert _equal_weights(initial, {t.name: t.initial for t in app.program.tensors})  # no auto-load
        info = dev.load_checkpoint()
        assert (info.sequence, info.slot, info.step) == (3, 0, 4)
        assert _equal_weights(dev.pull(), newest)
        assert dev.stats().step == 4
    # no storage configured: a one-line FLASH_ERROR, nothing changed
    with qemu(app, None) as q:
        with pytest.raises(DeviceCommandError) as e:
            q.dev.save_checkpoint()
        assert e.value.status == Status.FLASH_ERROR and "no checkpoint storage" in str(e.value)
        assert "\n" not in str(e.value)
        with pytest.raises(DeviceCommandError):
            q.dev.load_checkpoint()


def test_resumed_run_equals_the_uninterrupted_run(
    app: AppBuild, samples: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """A checkpoint holds the run state (PRNG of the stochastic rounding, step, learning rate,
    cosine schedule): a new QEMU that loads it and trains the remaining samples ends with the
    same step results and the same weight bytes as a run that was never interrupted."""
    xs, ys = samples
    storage = tmp_path / "storage.bin"
    with qemu(app, storage) as q:
        q.dev.reset(SEED)
        q.dev.set_lr(LR)
        q.dev.set_schedule("cosine", len(xs))
        for x, y in zip(xs[:3], ys[:3], strict=True):
            q.dev.train(x, int(y))
        assert q.dev.save_checkpoint().state_words == RUN_STATE_WORDS
        straight = [q.dev.train(x, int(y)) for x, y in zip(xs[3:], ys[3:], strict=True)]
        want = q.dev.pull()
    with qemu(app, storage) as q:
        q.dev.reset(SEED + 1)  # a different PRNG, lr 1.0, constant schedule: all replaced by the load
        q.dev.load_checkpoint()
        resumed = [q.dev.train(x, int(y)) for x, y in zip(xs[3:], ys[3:], strict=True)]
        assert resumed == straight
        assert _equal_weights(q.dev.pull(), want)


def test_corrupt_or_foreign_slots_are_ignored(app: AppBuild, tmp_path: Path) -> None:
    """Two checkpoints A (seq 1, slot 0) and B (seq 2, slot 1); damaging B's payload or
    header, or giving it another model id (with a valid header CRC), makes LOAD_CKPT apply A;
    with both slots damaged LOAD_CKPT answers NO_CHECKPOINT and changes nothing. A SAVE after
    that writes over the damaged slot, never over the valid one."""
    rng = random.Random(3)
    storage = tmp_path / "storage.bin"
    with qemu(app, storage) as q:
        a = _write_random(q, rng)
        assert q.dev.save_checkpoint().slot == 0
        b = _write_random(q, rng)
        assert q.dev.save_checkpoint().slot == 1
    good = storage.read_bytes()
    payload_len = HEADER.unpack_from(good, SLOT_BYTES)[4]

    def damaged(slot: int, how: str) -> bytearray:
        d = bytearray(good)
        base = slot * SLOT_BYTES
        if how == "payload":
            d[base + HEADER.size + rng.randrange(payload_len)] ^= 1 << rng.randrange(8)
        elif how == "header":
            d[base + rng.randrange(HEADER.size)] ^= 1 << rng.randrange(8)
        elif how == "foreign":
            f = list(HEADER.unpack_from(d, base))
            f[2] ^= 0x1
            h = HEADER.pack(*f[:7], 0)
            d[base : base + HEADER.size] = HEADER.pack(*f[:7], zlib.crc32(h[:28]))
        elif how == "torn":  # the 8-byte program unit holding the payload's last byte never written
            unit = base + (HEADER.size + payload_len - 1) // 8 * 8
            d[unit : unit + 8] = b"\xff" * 8
        return d

    cases = [(1, "payload", a, 1), (1, "header", a, 1), (1, "foreign", a, 1), (1, "torn", a, 1), (0, "payload", b, 2)]
    for slot, how, want, seq in cases:
        storage.write_bytes(damaged(slot, how))
        with qemu(app, storage) as q:
            info = q.dev.load_checkpoint()
            assert (info.sequence, _raw(q)) == (seq, want), (slot, how)
    both = damaged(0, "payload")
    both[SLOT_BYTES + 5] ^= 0x40
    storage.write_bytes(both)
    with qemu(app, storage) as q:
        before = _raw(q)
        with pytest.raises(DeviceCommandError) as e:
            q.dev.load_checkpoint()
        assert e.value.status == Status.NO_CHECKPOINT
        assert _raw(q) == before
    storage.write_bytes(damaged(1, "payload"))
    with qemu(app, storage) as q:
        c = _write_random(q, rng)
        info = q.dev.save_checkpoint()
        assert (info.slot, info.sequence) == (1, 2)  # over the damaged slot; A stays
    after = storage.read_bytes()
    assert after[:SLOT_BYTES] == good[:SLOT_BYTES]
    with qemu(app, storage) as q:
        assert q.dev.load_checkpoint().sequence == 2 and _raw(q) == c


def _send_save(q: Qemu, seq: int) -> None:
    q.port.write(b"\x00" + encode_frame(Frame(Kind.REQUEST, seq, Command.SAVE_CKPT, 0, b"")))


def _wait_change(path: Path, mtime: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.stat(path).st_mtime_ns != mtime:
            return True
    return False


def test_power_loss_during_save_keeps_old_or_new(app: AppBuild, tmp_path: Path) -> None:
    """QEMU killed with SIGKILL at random moments of SAVE_CKPT (REAL_KILLS times: after the
    storage file's first change, a random delay within the measured duration of a save's
    writes), then CUTS deterministic power losses after K storage write units (K spread over
    a whole save, edges included). After each, a new QEMU loads the newest checkpoint: it is
    byte for byte the old one or the new one, with its sequence number."""
    rng = random.Random(20261122)
    storage = tmp_path / "storage.bin"
    with qemu(app, storage) as q:  # the first checkpoint, and the duration of a save's writes
        old = _write_random(q, rng)
        q.dev.save_checkpoint()
        new = _write_random(q, rng)
        mtime = storage.stat().st_mtime_ns
        _send_save(q, 1)
        assert _wait_change(storage, mtime, 10.0)
        t1 = time.monotonic()
        resp = q.link.request(Command.IDENTIFY)  # answered after SAVE_CKPT's response
        assert resp.status == Status.OK
        write_time = max(time.monotonic() - t1, 0.001)
    old_seq, candidates = 1, {2: new, 1: old}
    units = _units_per_save(storage)
    edges = [1, 2, 15, 16, 17, units - 5, units - 4, units - 3, units - 1, units]
    cut_points = edges + rng.sample([k for k in range(3, units - 5) if k not in edges], CUTS - len(edges))
    trials: list[tuple[str, float | int]] = [("kill", rng.uniform(0.0, 1.2 * write_time)) for _ in range(REAL_KILLS)]
    trials += [("cut", k) for k in cut_points]
    outcomes = {"unchanged": 0, "torn": 0, "committed": 0}
    cut_results: list[tuple[int, int | str]] = []
    for kind, when in trials:
        with qemu(app, storage, cut=int(when) if kind == "cut" else None) as q:
            info = q.dev.load_checkpoint()
            raw = _raw(q)
            assert info.sequence in candidates and raw == candidates[info.sequence], (kind, when, info)
            assert info.sequence >= old_seq
            old_seq, old = info.sequence, raw
            new = _write_random(q, rng)
            before = storage.read_bytes()
            mtime = storage.stat().st_mtime_ns
            candidates = {old_seq: old, old_seq + 1: new}
            target = 1 - info.slot
            if kind == "kill":
                _send_save(q, 2)
                assert _wait_change(storage, mtime, 10.0)
                time.sleep(float(when))
                q.proc.send_signal(signal.SIGKILL)
                q.proc.wait()
                after = storage.read_bytes()
                keep = slice(info.slot * SLOT_BYTES, (info.slot + 1) * SLOT_BYTES)
                assert after[keep] == before[keep]  # the newest checkpoint's slot is untouched
                h = _slot_header(after, target)
                if after == before:
                    outcomes["unchanged"] += 1
                elif h is not None and h[3] == old_seq + 1:
                    outcomes["committed"] += 1
                else:
                    outcomes["torn"] += 1
            elif int(when) >= units:  # every unit written: the save completes
                q.dev.save_checkpoint()
                assert q.proc.poll() is None
                cut_results.append((int(when), "saved"))
            else:
                _send_save(q, 3)
                status = q.proc.wait(30)
                cut_results.append((int(when), status))
                assert status == CUT_STATUS, when
                assert _slot_header(storage.read_bytes(), target) is None  # the header is written last
                keep = slice(info.slot * SLOT_BYTES, (info.slot + 1) * SLOT_BYTES)
                assert storage.read_bytes()[keep] == before[keep]  # the newest checkpoint's slot is untouched
    with qemu(app, storage) as q:  # after the last trial
        info = q.dev.load_checkpoint()
        assert info.sequence in candidates and _raw(q) == candidates[info.sequence]
    print(
        f"\npower loss: {REAL_KILLS} SIGKILLs {outcomes} (a save writes for ~{1000 * write_time:.1f} ms), "
        f"cuts after K of {units} units: {cut_results}"
    )
    assert sum(outcomes.values()) == REAL_KILLS >= 20
    assert outcomes["torn"] >= 3, outcomes  # most kills land inside the save's writes


def _units_per_save(storage: Path) -> int:
    """Storage write units of one save (tt_board_storage_mps2.c): erase 256-byte units of the
    pages it occupies, then the payload and the header in 8-byte units."""
    data = storage.read_bytes()
    h = _slot_header(data, 0) or _slot_header(data, 1)
    assert h is not None
    payload = h[4]
    pages = -(-(HEADER.size + payload) // PAGE)
    padded = -(-payload // 16) * 16
    return pages * PAGE // 256 + padded // 8 + HEADER.size // 8


def test_checkpoint_info_is_a_value() -> None:
    assert CheckpointInfo(1, 2, 3, 4, 0, 0) == CheckpointInfo(1, 2, 3, 4, 0, 0)


@pytest.mark.parametrize("target", ["host", "qemu-m4", "stm32f746g-disco", "nrf52840"])
def test_storage_layer_behaves_like_flash(target: str, tmp_path: Path) -> None:
    """The storage layer's self-test (erase, program, AND on re-program, refused misaligned /
    out-of-range calls) passes on the host and in QEMU, and fails cleanly without a storage
    file; the real boards' flash drivers compile and link (not run here)."""
    info = build_firmware(target, [STORAGE_SELFTEST], [], tmp_path / "build", name="storage_selftest")
    if target in ("stm32f746g-disco", "nrf52840"):
        nm = subprocess.run(["arm-none-eabi-nm", str(info.elf)], capture_output=True, text=True, check=True).stdout
        for sym in ("tt_board_storage_erase", "tt_board_storage_program", "tt_board_storage_read"):
            assert f" T {sym}" in nm, sym
        return
    storage = tmp_path / "storage.bin"
    if target == "host":
        env = {k: v for k, v in os.environ.items() if k != "TT_STORAGE_FILE"}
        ok = subprocess.run([str(info.elf)], env={**env, "TT_STORAGE_FILE": str(storage)}, capture_output=True)
        none = subprocess.run([str(info.elf)], env=env, capture_output=True)
    else:
        ok = subprocess.run(qemu_command(info.elf, target, storage=storage), capture_output=True, timeout=60)
        none = subprocess.run(qemu_command(info.elf, target), capture_output=True, timeout=60)
    assert (ok.returncode, none.returncode) == (0, 11), (ok.stdout, none.stdout)
    assert b"storage: ok" in ok.stdout
    data = storage.read_bytes()
    assert len(data) == PAGES * PAGE and data == b"\xff" * len(data)  # created erased, the test page erased again
