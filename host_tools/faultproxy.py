"""A fault-injecting TCP proxy for serial links: it sits between a host tool and a device's
TCP serial port (QEMU's ``-serial tcp:...``) and, with a seeded RNG, drops, flips,
duplicates and delays bytes of the frames going either way.

The proxy cuts each direction's byte stream into frames at the 0x00 delimiters of the frame
protocol (docs/protocol.md) and decides per frame (empty frames, i.e. lone delimiters, pass
untouched) whether to damage it, with probability ``FaultConfig.rate``; a damaged frame gets
one fault:

* ``drop``: a run of 1-4 bytes is removed (possibly the delimiter: two frames merge), or,
  in one case of four, the whole frame;
* ``flip``: one bit of one byte is inverted (a flipped delimiter also merges two frames);
* ``dup``: the whole frame is sent twice, or a run of 1-8 bytes is repeated in place;
* ``delay``: the frame (and what follows it: the stream stays in order) is held for
  ``delay_min``..``delay_max`` seconds.

Usage (``url`` is what :func:`host_tools.link.open_port` takes)::

    with FaultProxy(("127.0.0.1", qemu_port), FaultConfig(rate=0.03, seed=7)) as proxy:
        link = Link(open_port(proxy.url), timeout=0.5, retries=10)
        ...
    print(proxy.stats.describe())     # frames seen / damaged, per direction and kind

The proxy accepts one client connection after another; each opens its own upstream
connection (QEMU's chardev server accepts one connection at a time).
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

from tinytrain.errors import UsageError

KINDS = ("drop", "flip", "dup", "delay")
DIRECTIONS = ("to_device", "to_host")


@dataclass(frozen=True)
class FaultConfig:
    """What the proxy does: ``rate`` is the probability that a frame is damaged (per frame,
    both directions); ``weights`` the relative frequency of the four kinds (drop, flip, dup,
    delay); ``seed`` seeds one RNG per direction and connection."""

    rate: float = 0.03
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    delay_min: float = 0.02
    delay_max: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise UsageError(f"fault rate must be in [0, 1], got {self.rate}")
        if len(self.weights) != len(KINDS) or min(self.weights) < 0 or sum(self.weights) <= 0:
            raise UsageError(f"fault weights must be {len(KINDS)} non-negative numbers, not all 0")
        if not 0.0 <= self.delay_min <= self.delay_max:
            raise UsageError("delays must satisfy 0 <= delay_min <= delay_max")


@dataclass
class FaultStats:
    """Counters (updated by the proxy's threads under ``lock``)."""

    frames: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    damaged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total_frames(self) -> int:
        return sum(self.frames.values())

    @property
    def total_damaged(self) -> int:
        return sum(self.damaged.values())

    @property
    def fraction(self) -> float:
        """Damaged frames / frames, both directions."""
        return self.total_damaged / self.total_frames if self.total_frames else 0.0

    def describe(self) -> str:
        per_dir = ", ".join(f"{d} {self.damaged[d]}/{self.frames[d]}" for d in DIRECTIONS)
        kinds = ", ".join(f"{k} {n}" for k, n in self.kinds.items())
        pct = 100 * self.fraction
        return f"{self.total_damaged}/{self.total_frames} frames damaged ({pct:.1f} %: {per_dir}; {kinds})"


class _Pump:
    """One direction of one connection: reads, cuts into frames, damages, forwards."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, direction: str, config: FaultConfig, stats: FaultStats, seed: int
    ) -> None:
        self.src = src
        self.dst = dst
        self.direction = direction
        self.config = config
        self.stats = stats
        self.rng = random.Random(seed)
        self.pending = bytearray()

    def run(self) -> None:
        try:
            while True:
                data = self.src.recv(65536)
                if not data:
                    break
                self.pending += data
                while (end := self.pending.find(0)) >= 0:
                    frame = bytes(self.pending[: end + 1])
                    del self.pending[: end + 1]
                    self._forward(frame)
        except OSError:
            pass
        finally:
            for s in (self.dst, self.src):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def _forward(self, frame: bytes) -> None:
        if len(frame) > 1:
            with self.stats.lock:
                self.stats.frames[self.direction] += 1
                self.stats.bytes[self.direction] += len(frame)
            if self.rng.random() < self.config.rate:
                kind = self.rng.choices(KINDS, weights=self.config.weights)[0]
                with self.stats.lock:
                    self.stats.damaged[self.direction] += 1
                    self.stats.kinds[kind] += 1
                frame = self._damage(frame, kind)
        if frame:
            self.dst.sendall(frame)

    def _damage(self, frame: bytes, kind: str) -> bytes:
        rng = self.rng
        b = bytearray(frame)
        if kind == "drop":
            if rng.random() < 0.25:
                return b""
            n = rng.randint(1, min(4, len(b)))
            at = rng.randrange(len(b) - n + 1)
            del b[at : at + n]
        elif kind == "flip":
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif kind == "dup":
            if rng.random() < 0.5:
                return bytes(b) * 2
            n = rng.randint(1, min(8, len(b)))
            at = rng.randrange(len(b) - n + 1)
            b[at:at] = b[at : at + n]
        else:
            time.sleep(rng.uniform(self.config.delay_min, self.config.delay_max))
        return bytes(b)


class FaultProxy:
    """Listens on 127.0.0.1 (``listen_port``, 0 = any free port; see :attr:`url`) and relays
    each client connection to ``upstream`` (host, port) through a fault injector per
    direction. ``close()`` (or leaving the ``with`` block) stops it."""

    def __init__(self, upstream: tuple[str, int], config: FaultConfig | None = None, listen_port: int = 0) -> None:
        self.upstream = upstream
        self.config = config if config is not None else FaultConfig()
        self.stats = FaultStats()
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", listen_port))
        self._server.listen(1)
        self._server.settimeout(0.1)  # accept() wakes up to notice close()
        self.port = int(self._server.getsockname()[1])
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="faultproxy-accept", daemon=True)
        self._accept.start()

    @property
    def url(self) -> str:
        """The pyserial URL of the proxy's end (``socket://127.0.0.1:N``)."""
        return f"socket://127.0.0.1:{self.port}"

    def _connect_upstream(self, patience: float = 10.0) -> socket.socket | None:
        """A connection to the upstream port, retried for ``patience`` seconds (a QEMU just
        started may not listen yet)."""
        deadline = time.monotonic() + patience
        while not self._closed.is_set():
            try:
                return socket.create_connection(self.upstream, timeout=10.0)
            except OSError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.02)
        return None

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            up = self._connect_upstream()
            if up is None:
                client.close()
                continue
            up.settimeout(None)
            for s in (client, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.stats.lock:
                n = self.stats.connections
                self.stats.connections += 1
            self._sockets += [client, up]
            seed = self.config.seed * 1_000_003 + 2 * n
            pumps = (
                _Pump(client, up, "to_device", self.config, self.stats, seed),
                _Pump(up, client, "to_host", self.config, self.stats, seed + 1),
            )
            for p in pumps:
                t = threading.Thread(target=p.run, name=f"faultproxy-{p.direction}", daemon=True)
                t.start()
                self._threads.append(t)

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._server.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(timeout=2.0)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
