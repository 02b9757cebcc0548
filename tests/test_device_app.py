"""The training application (firmware_templates/app/tt_app.c) in QEMU, driven over a real
serial byte stream (UART0 on TCP) by host_tools.device.Device: it trains to the simulator's
bytes, refuses malformed requests without changing anything, never executes a retransmitted
TRAIN twice, and the host refuses a firmware built for another program.

The program is the shipped MCUNet-synthetic checkpoint (48x48, 5 blocks) with the ``tte``
scheme: 22 trained tensors, most of them channel slices, so that pulling exercises the
slice → full tensor reconstruction; a training step is ~60 M instructions (the shipped
MobileNetV2 @96 runs ~6x slower in QEMU, too slow for this file's budget)."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import RunResult, RunSpec, run_sim
from codegen.targets import qemu_serial_session
from host_tools.device import Command, Device, SampleError, StepResult, WrongFirmwareError
from host_tools.firmware import AppBuild, app_program, build_app, c_string
from host_tools.frame import MAX_PAYLOAD, Status
from host_tools.link import Link
from tests.helpers_port import PipePort
from tinytrain.errors import TinytrainError, UsageError
from tinytrain.models.ship import CHECKPOINT, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model
from tinytrain.train.data import epoch_order, load_dataset

STEPS = 50
TESTS = 4
SEED = 11
LR = 0.05
SCHEME = "tte"

pytestmark = pytest.mark.skipif(
    shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
    reason="arm-none-eabi-gcc / qemu-system-arm not installed",
)


def _options(scheme: str) -> CompileOptions:
    return CompileOptions(scheme, classes=10, sample_bytes=28 * 28)


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(CHECKPOINT), _options(SCHEME))


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


@contextmanager
def session(app: AppBuild, **kw: int) -> Iterator[tuple[Device, Link]]:
    with qemu_serial_session(app.info.elf, "qemu-m4") as s:
        link = Link(s.port, timeout=5.0, retries=2)
        yield Device(link, app.program, step_timeout=60.0, **kw), link


def _one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def _status(link: Link, cmd: int, payload: bytes) -> int:
    return link.request(cmd, payload, timeout=60.0).status


def test_trains_to_the_simulators_bytes(app: AppBuild, spec: RunSpec, sim: RunResult) -> None:
    sample = spec.samples[0]
    with session(app, chunk=7) as (dev, link):  # 7-byte chunks: every tensor takes several READs
        ident = dev.identify()
        assert (ident.role, ident.model_id, ident.input_bytes, ident.classes) == (
            1,
            app.program.model_id,
            28 * 28,
            10,
        )
        assert ident.tensors == len(app.program.tensors) and ident.board == "qemu-m4"
        assert ident.trainable_bytes == sum(t.nbytes for t in app.program.tensors)
        assert dev.tensor_names() == [t.name for t in app.program.tensors]
        dev.reset(SEED)
        dev.set_lr(LR)
        dev.set_schedule("constant", STEPS)
        steps = []
        for k, (x, y) in enumerate(zip(spec.samples[:-1], spec.labels[:-1], strict=True)):
            if k == STEPS // 2:
                _malformed_requests_change_nothing(dev, link, sample, k)
            steps.append(dev.train(x, int(y)))
        # the last step as a raw request, then again with the same seq (a retransmission):
        # answered from the repeat cache, not trained twice
        train_last = struct.pack("<H", int(spec.labels[-1])) + spec.samples[-1].tobytes()
        last = link.request(Command.TRAIN, train_last, timeout=60.0)
        assert last.status == Status.OK
        step, p_label, predicted, correct = struct.unpack("<IiHBx", last.payload)
        steps.append(StepResult(step, p_label, predicted, bool(correct)))
        retx = Link(link.port, timeout=60.0, first_seq=last.seq).request(Command.TRAIN, train_last)
        assert retx.seq == last.seq and retx.payload == last.payload
        pulled = dev.pull()
        logits = np.stack([dev.eval(x) for x in spec.test])
        st = dev.stats(clear=True)
        after = dev.stats()
    assert [(r.p_label, r.predicted) for r in steps] == list(sim.steps)
    assert [r.step for r in steps] == list(range(1, STEPS + 1))
    assert [r.correct for r in steps] == [p == y for (_, p), y in zip(sim.steps, spec.labels, strict=True)]
    assert sorted(pulled) == sorted(sim.tensors)
    for name, t in sim.tensors.items():
        assert pulled[name].dtype == t.dtype and pulled[name].shape == t.shape, name
        assert np.array_equal(pulled[name], t), name
    initial = {t.name: t.initial for t in app.program.tensors}
    assert any(not np.array_equal(pulled[n], initial[n]) for n in pulled)
    assert np.array_equal(logits, sim.test_logits)
    assert (st.step, st.steps, st.evals) == (STEPS, STEPS, TESTS)
    assert st.correct == sum(r.correct for r in steps)
    assert st.p_label_sum == sum(max(p, 0) for p, _ in sim.steps)
    assert st.counter_unit == "instructions" and 0 < st.counter_last_step <= st.counter_total
    assert st.counter_last_eval > 0
    assert (after.steps, after.evals, after.counter_total, after.step) == (0, 0, 0, STEPS)


def _malformed_requests_change_nothing(dev: Device, link: Link, sample: np.ndarray, steps: int) -> None:
    """Bad requests in the middle of the run: each refused with its status; the run's final
    bytes (checked by the caller against the simulator) prove that none changed anything."""
    x = sample.tobytes()
    n = len(dev.tensor_info())
    nbytes = dev.tensor_info()[0].nbytes
    bad = [
        (Command.TRAIN, b"\x01\x00" + x[:-1], Status.BAD_LENGTH),  # a 783-byte sample
        (Command.TRAIN, b"\x01\x00" + x + b"\x00", Status.BAD_LENGTH),
        (Command.TRAIN, b"\x01", Status.BAD_LENGTH),
        (Command.TRAIN, b"\x0a\x00" + x, Status.BAD_ARG),  # label 10 of 10 classes
        (Command.EVAL, x[:100], Status.BAD_LENGTH),
        (Command.IDENTIFY, b"\x00", Status.BAD_LENGTH),
        (Command.STATS, b"", Status.BAD_LENGTH),
        (Command.STATS, b"\x02", Status.BAD_ARG),
        (Command.READ_TENSOR, struct.pack("<HHI", n, 1, 0), Status.BAD_ARG),  # no such tensor
        (Command.READ_TENSOR, struct.pack("<HHI", 0, 1, nbytes), Status.BAD_ARG),  # past the end
        (Command.READ_TENSOR, struct.pack("<HHI", 0, 1025, 0), Status.BAD_ARG),
        (Command.READ_TENSOR, struct.pack("<HHI", 0, 1, 0) + b"\x00", Status.BAD_LENGTH),
        (Command.WRITE_TENSOR, struct.pack("<HHI", n, 1, 0) + b"\x7f", Status.BAD_ARG),
        (Command.WRITE_TENSOR, struct.pack("<HHI", 0xFFFF, 1, 0) + b"\x7f", Status.BAD_ARG),
        (Command.WRITE_TENSOR, struct.pack("<HHI", 0, 2, nbytes - 1) + b"\x7f\x7f", Status.BAD_ARG),
        (Command.WRITE_TENSOR, struct.pack("<HHI", 0, 1, 0xFFFFFFFF) + b"\x7f", Status.BAD_ARG),
        (Command.WRITE_TENSOR, struct.pack("<HHI", 0, 3, 0) + b"\x7f\x7f", Status.BAD_LENGTH),
        (Command.TENSOR_INFO, struct.pack("<H", n), Status.BAD_ARG),
        (Command.TENSOR_INFO, b"\x00", Status.BAD_LENGTH),
        (Command.SAMPLE_WRITE, struct.pack("<I", 700) + bytes(100), Status.BAD_ARG),
        (Command.RESET, struct.pack("<BI", 7, 0), Status.BAD_ARG),
        (Command.RESET, struct.pack("<BI", 2, 0), Status.BAD_ARG),  # no bootloader yet
        (Command.RESET, b"\x01", Status.BAD_LENGTH),
        (Command.SET_LR, struct.pack("<ii", -5, 0), Status.BAD_ARG),
        (Command.SET_LR, struct.pack("<i", 5), Status.BAD_LENGTH),
        (Command.SET_SCHEDULE, struct.pack("<ii", 7, 10), Status.BAD_ARG),
        (Command.SET_SCHEDULE, struct.pack("<ii", 1, 0), Status.BAD_ARG),
        (Command.SAVE_CKPT, b"\x00", Status.BAD_LENGTH),
        (Command.LOAD_CKPT, b"", Status.FLASH_ERROR),
        (0x3F, b"", Status.UNKNOWN_CMD),
    ]
    for cmd, payload, want in bad:
        assert _status(link, cmd, payload) == want, (cmd, payload[:12])
    assert dev.stats().step == steps
    # refused by the host before anything is sent
    sent = link.stats.requests
    with pytest.raises(SampleError) as e:
        dev.train(sample[:-1], 1)
    assert "784" in _one_line(e)
    with pytest.raises(SampleError):
        dev.train(sample.astype(np.int8), 1)
    with pytest.raises(SampleError) as e:
        dev.train(sample, 10)
    assert "10 classes" in _one_line(e)
    with pytest.raises(SampleError):
        dev.eval(sample[:, :27])
    assert link.stats.requests == sent
    # a refusal surfaces as a one-line DeviceCommandError naming the command and the status
    with pytest.raises(TinytrainError) as refused:
        dev._call(Command.SET_SCHEDULE, struct.pack("<ii", 9, 1), "kind 9")
    assert "SET_SCHEDULE" in _one_line(refused) and "BAD_ARG" in str(refused.value)


def test_push_stage_and_reset(app: AppBuild, spec: RunSpec, sim: RunResult) -> None:
    """push() writes the simulator's weights into a fresh device, which then evaluates to the
    simulator's logits; staged samples (SAMPLE_WRITE) evaluate like inline ones; RESET
    restores the initial weights."""
    prog = app.program
    with session(app) as (dev, link):
        initial = dev.pull()
        for t in prog.tensors:
            assert np.array_equal(initial[t.name], t.initial), t.name
        bad = dict(sim.tensors)
        name = next(t.name for t in prog.tensors if t.dtype == "int8" and len(t.channels) < t.shape[-1])
        untrained = next(c for c in range(prog.tensor(name).shape[-1]) if c not in prog.tensor(name).channels)
        bad[name] = bad[name].copy()
        bad[name][..., untrained] ^= 1  # a channel the device does not hold
        with pytest.raises(UsageError) as e:
            dev.push(bad)
        assert name in _one_line(e)
        with pytest.raises(UsageError):
            dev.push({**sim.tensors, name: sim.tensors[name][..., :-1]})
        with pytest.raises(UsageError):
            dev.push({"no-such-tensor": sim.tensors[name]})
        assert all(np.array_equal(v, initial[k]) for k, v in dev.pull().items())  # nothing was written
        dev.push(sim.tensors)
        pulled = dev.pull()
        logits = np.stack([dev.eval(x) for x in spec.test])
        x = spec.test[0].tobytes()
        for off in range(0, len(x), 300):
            link.call(Command.SAMPLE_WRITE, struct.pack("<I", off) + x[off : off + 300])
        staged = link.call(Command.EVAL, b"")
        dev.reset(0)
        restored = dev.pull()
    assert all(np.array_equal(pulled[k], v) for k, v in sim.tensors.items())
    assert np.array_equal(logits, sim.test_logits)
    assert np.array_equal(np.frombuffer(staged, np.int8, 10, 2), sim.test_logits[0])
    assert all(np.array_equal(restored[k], v) for k, v in initial.items())


def test_firmware_of_another_program_is_refused(app: AppBuild, spec: RunSpec) -> None:
    other = app_program(compile_model(shipped(CHECKPOINT), _options("last-layer")), (28, 28))
    assert other.model_id != app.program.model_id
    assert app_program(compile_model(shipped(CHECKPOINT), _options(SCHEME)), (28, 28)).model_id == app.program.model_id
    with session(app) as (_, link):
        wrong = Device(link, other)
        with pytest.raises(WrongFirmwareError) as e:
            wrong.identify()
        msg = _one_line(e)
        assert "mcunet-synthetic (tte" in msg and "last-layer" in msg
        with pytest.raises(WrongFirmwareError):
            wrong.pull()
        anon = Device(link)  # without a program: identify and train work, pull needs it
        assert anon.identify().scheme == SCHEME
        assert anon.train(spec.samples[0], int(spec.labels[0])).step == 1
        with pytest.raises(UsageError):
            anon.pull()


def test_c_string_escapes() -> None:
    assert c_string('a"b\\c') == '"a\\042b\\134c"'
    assert c_string("é\n") == '"\\303\\251\\012"'


def test_build_refuses_program_without_sample_shape(tmp_path: Path) -> None:
    c = compile_model(shipped(CHECKPOINT), CompileOptions("last-layer", classes=10))
    with pytest.raises(UsageError):
        build_app(c, "qemu-m4", tmp_path)


@pytest.mark.skipif(shutil.which("stdbuf") is None, reason="stdbuf (coreutils) not installed")
def test_command_loop_fuzzed_under_sanitizers(
    compiled: Compiled, spec: RunSpec, sim: RunResult, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The command loop built for the host with ASan + UBSan (stdout unbuffered through
    stdbuf: the host board layer does not flush) takes 2,000 random requests — every command,
    random and exact payload sizes, random contents — answering each with a known status and
    never crashing; afterwards a reset device trains to the simulator's bytes."""
    # -O0 (after the build's -O2) compiles 4x faster; the sanitizers check every access either way
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-O0"]
    host = build_app(compiled, "host", tmp_path_factory.mktemp("host"), (28, 28), extra_flags=san)
    env = dict(os.environ, ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=1")
    proc = subprocess.Popen(
        ["stdbuf", "-o0", str(host.info.elf)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    rng = random.Random(5)
    sizes = (0, 1, 2, 3, 4, 5, 7, 8, 9, 12, 100, 783, 784, 785, 786, 787, MAX_PAYLOAD)
    cmds = [int(c) for c in Command] + [0x00, 0x0E, 0x3F, 0x40, 0xFF]
    statuses = {int(s) for s in Status} - {Status.BAD_FRAME}
    try:
        link = Link(PipePort(proc), timeout=20.0, retries=0)
        dev = Device(link, host.program)
        assert dev.identify().board == "host"
        seen: set[int] = set()
        for _ in range(2000):
            cmd = rng.choice(cmds)
            n = rng.choice(sizes)
            payload = bytes(rng.getrandbits(8) for _ in range(n))
            if cmd in (Command.READ_TENSOR, Command.WRITE_TENSOR) and n >= 8 and rng.random() < 0.5:
                payload = struct.pack("<HHI", rng.randrange(24), rng.randrange(40), rng.randrange(600)) + payload[8:]
            r = link.request(cmd, payload)
            assert r.status in statuses, (cmd, n, r.status)
            seen.add(r.status)
        assert {Status.OK, Status.BAD_LENGTH, Status.BAD_ARG, Status.UNKNOWN_CMD} <= seen
        dev.reset(SEED)
        dev.set_lr(LR)
        dev.set_schedule("constant", STEPS)
        steps = [dev.train(x, int(y)) for x, y in zip(spec.samples[:3], spec.labels[:3], strict=True)]
        assert [(r.p_label, r.predicted) for r in steps] == list(sim.steps[:3])
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        status = proc.wait(60)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr is not None else ""
    assert status == 0, err[-2000:]
