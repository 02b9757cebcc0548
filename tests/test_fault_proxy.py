"""The frame protocol survives a faulty link: host_tools.faultproxy.FaultProxy between the
host (Link + Device over pyserial's socket://) and QEMU's TCP serial port drops, flips,
duplicates and delays bytes of a seeded random subset of the frames (measured and printed),
and a session of STEPS training steps + pull + eval still ends with the simulator's bytes
(tests/test_device_app.py shows that the fault-free device run gives the same bytes).

The program is the shipped MCUNet-synthetic checkpoint with the ``tte`` scheme, as in
tests/test_device_app.py."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np
import pytest

from codegen.backends import RunResult, RunSpec, run_sim
from codegen.targets import qemu_command
from host_tools.device import Device
from host_tools.faultproxy import KINDS, FaultConfig, FaultProxy
from host_tools.firmware import AppBuild, build_app
from host_tools.link import Link, open_port
from tinytrain.errors import UsageError
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model
from tinytrain.train.data import epoch_order, load_dataset

STEPS = 50
TESTS = 4
SEED = 11
LR = 0.05
FAULT_RATE = 0.08

needs_qemu = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(CHECKPOINT), CompileOptions("tte", classes=10, sample_bytes=28 * 28))


@pytest.fixture(scope="module")
def spec() -> RunSpec:
    """The first STEPS training samples in the order `simulate` streams them (epoch 0 of SEED)."""
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    order = epoch_order(STEPS, SEED, 0)
    return RunSpec(train.images[:STEPS][order], train.labels[:STEPS][order], test.images[:TESTS], seed=SEED, lr=LR)


@pytest.fixture(scope="module")
def sim(compiled: Compiled, spec: RunSpec) -> RunResult:
    return run_sim(compiled, spec)


@pytest.fixture(scope="module")
def app(compiled: Compiled, tmp_path_factory: pytest.TempPathFactory) -> AppBuild:
    return build_app(compiled, "qemu-m4", tmp_path_factory.mktemp("app"), (28, 28))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def qemu_tcp(app: AppBuild) -> Iterator[int]:
    """QEMU running the application with UART0 on a local TCP port (yielded); QEMU starts the
    guest when the first client (the proxy) connects."""
    port = _free_port()
    chardev = f"tcp:127.0.0.1:{port},server=on,wait=on,nodelay=on"
    proc = subprocess.Popen(
        qemu_command(app.info.elf, "qemu-m4", serial=chardev),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@needs_qemu
def test_training_session_through_a_faulty_link(app: AppBuild, spec: RunSpec, sim: RunResult) -> None:
    config = FaultConfig(rate=FAULT_RATE, seed=5, delay_max=0.25)
    with qemu_tcp(app) as tcp, FaultProxy(("127.0.0.1", tcp), config) as proxy:
        port = open_port(proxy.url)
        try:
            link = Link(port, timeout=0.5, retries=20)
            dev = Device(link, app.program, step_timeout=5.0)
            dev.identify()
            dev.reset(SEED)
            dev.set_lr(LR)
            dev.set_schedule("constant", STEPS)
            steps = [dev.train(x, int(y)) for x, y in zip(spec.samples, spec.labels, strict=True)]
            pulled = dev.pull()
            logits = np.stack([dev.eval(x) for x in spec.test])
            st = dev.stats()
        finally:
            port.close()
    stats = proxy.stats
    print(f"\nfault proxy: {stats.describe()}; host link: {link.stats}, decoder drops {link.decoder.rejected}")
    assert stats.fraction >= 0.01 and stats.total_damaged >= 5, stats.describe()
    assert all(stats.damaged[d] > 0 for d in stats.damaged), stats.describe()  # both directions
    assert link.stats.retransmissions > 0
    # every step trained exactly once, in order, to the simulator's bytes
    assert [(r.p_label, r.predicted) for r in steps] == list(sim.steps)
    assert [r.step for r in steps] == list(range(1, STEPS + 1)) and st.step == STEPS == st.steps
    assert sorted(pulled) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert np.array_equal(pulled[name], t), name
    assert np.array_equal(logits, sim.test_logits)


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return srv, t


def _recv_until(sock: socket.socket, n_delims: int, timeout: float) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    sock.settimeout(0.05)
    while buf.count(0) < n_delims and time.monotonic() < deadline:
        with suppress(TimeoutError):
            buf += sock.recv(65536)
    return bytes(buf)


def test_proxy_damages_the_configured_fraction() -> None:
    """Without QEMU: frames echoed through the proxy (both directions) come back intact at
    rate 0; at rate 0.3 about 30 % of the frames per direction are damaged, every kind
    occurs, and the damaged stream differs from the sent one."""
    frames = [bytes([1 + (i * 7 + k) % 255 for k in range(5 + i % 40)]) + b"\x00" for i in range(400)]
    sent = b"".join(frames)
    for rate in (0.0, 0.3):
        srv, _ = _echo_server()
        upstream = srv.getsockname()
        config = FaultConfig(rate=rate, seed=9, delay_min=0.0, delay_max=0.002)
        with FaultProxy(upstream, config) as proxy, socket.create_connection(("127.0.0.1", proxy.port)) as c:
            for i in range(0, len(frames), 50):
                c.sendall(b"".join(frames[i : i + 50]))
            got = _recv_until(c, len(frames) if rate == 0 else 1, 5.0 if rate == 0 else 1.0)
            time.sleep(0.3)
            got += _recv_until(c, 10**9, 0.3)
        srv.close()
        st = proxy.stats
        if rate == 0:
            assert got == sent and st.total_damaged == 0 and st.frames["to_device"] == len(frames)
        else:
            for d in st.frames:
                assert 0.2 < st.damaged[d] / st.frames[d] < 0.4, st.describe()
            assert all(st.kinds[k] > 0 for k in KINDS), st.describe()
            assert got != sent
    with pytest.raises(UsageError):
        FaultConfig(rate=1.5)
    with pytest.raises(UsageError):
        FaultConfig(weights=(0.0, 0.0, 0.0, 0.0))
