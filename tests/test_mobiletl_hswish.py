"""MobileTL on a hard-swish MobileNetV2 variant (keras_mobilenetv2_variant(activation=
"hard_swish"), 48x48, converted to int8: the converter emits a HARD_SWISH op after each conv,
which then has no fused activation). The simulator's forward is TFLM's; the C HARD_SWISH is
the simulator's on the real layers; ``mobiletl:blocks=2`` saves 1-bit sign masks of the
HARD_SWISH inputs (no saturation mask on the convs before them; ``act=exact`` saves the int8
inputs instead, for the exact derivative) and trains 50 steps to the
simulator's bytes on the host and on QEMU Cortex-M4. Such blocks are not fused (the
fused block kernel has no HARD_SWISH): the frozen stage runs op by op."""

from __future__ import annotations

import ctypes
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from codegen.backends import QEMU_BACKENDS, RunResult, RunSpec, build_device, qemu_transport, run_backend, run_generated
from tests.helpers_runs import assert_same_run
from tinytrain.datasets import fashion_mnist
from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir.ops import OpKind
from tinytrain.sim.forward import Simulator
from tinytrain.sim.kernels import KERNELS
from tinytrain.testing.c_hard_swish import declare_hard_swish, hard_swish_c_params, run_c_hard_swish
from tinytrain.testing.cbuild import RUNTIME_SRC, build_shared
from tinytrain.testing.tflm import run_tflm
from tinytrain.train.compile import Compiled, CompileOptions, compile_model, plan_json
from tinytrain.train.kernels.mask import SIGN_MASK_HI

KB = 1024
STEPS = 50
RES = 48
HAVE_GCC = shutil.which("gcc") is not None
HAVE_QEMU = shutil.which("arm-none-eabi-gcc") is not None and shutil.which("qemu-system-arm") is not None


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tinytrain.frontends.keras_convert import convert_keras
    from tinytrain.models.mobilenetv2 import keras_mobilenetv2_variant
    from tinytrain.models.pretrain import to_float_input
    from tinytrain.train.data import load_dataset

    calibration = to_float_input(load_dataset("fashion-mnist", "train").images[1000:1024], RES)
    keras_model, images = keras_mobilenetv2_variant(RES, 3, (3,), seed=5, data=calibration, activation="hard_swish")
    path = tmp_path_factory.mktemp("hswish") / "mbv2-hswish-48.tflite"
    path.write_bytes(convert_keras(keras_model, images[:16]))
    return path


def _compile(model: Path, scheme: str = "mobiletl:blocks=2") -> Compiled:
    return compile_model(model, CompileOptions(scheme, classes=10, sample_bytes=784))


def test_forward_is_tflm_and_has_hard_swish(model: Path) -> None:
    graph = load_tflite(model)
    kinds = [op.kind for op in graph.ops]
    assert kinds.count(OpKind.HARD_SWISH) >= 10
    for i, op in enumerate(graph.ops):
        if op.kind is OpKind.HARD_SWISH:
            producer = graph.ops[i - 1]
            assert producer.outputs[0] == op.inputs[0] and producer.attrs.activation.value == "NONE"  # type: ignore[union-attr]
    x = np.random.default_rng(0).integers(-128, 128, (2, RES, RES, 3)).astype(np.int8)
    assert np.array_equal(Simulator(graph).run([x])[0], run_tflm(model.read_bytes(), [x])[0])


@pytest.mark.skipif(not HAVE_GCC, reason="gcc is not installed")
def test_c_hard_swish_on_the_real_layers(model: Path, tmp_path: Path) -> None:
    lib = ctypes.CDLL(str(build_shared([RUNTIME_SRC / "tt_hard_swish.c"], tmp_path, name="tt_hswish")))
    declare_hard_swish(lib)
    graph = load_tflite(model)
    x = np.random.default_rng(1).integers(-128, 128, (1, RES, RES, 3)).astype(np.int8)
    values = dict(zip(graph.inputs, [x], strict=True))
    all_inputs = np.arange(-128, 128, dtype=np.int8)
    checked = 0
    for op in graph.ops:  # the reference forward, op by op, keeping every activation
        spec = KERNELS[op.kind]
        ins, outs = graph.op_inputs(op), graph.op_outputs(op)
        args = [None if n is None else (values[n] if n in values else graph.tensor(n).data) for n in op.inputs]
        results = spec.run(spec.prepare(op, ins, outs), args)
        values.update(zip(op.outputs, results, strict=True))
        if op.kind is OpKind.HARD_SWISH:
            cp = hard_swish_c_params(op, ins, outs)
            params = spec.prepare(op, ins, outs)
            assert np.array_equal(run_c_hard_swish(lib, cp, all_inputs), spec.run(params, [all_inputs])[0])
            x_real = args[0]
            assert x_real is not None
            assert np.array_equal(run_c_hard_swish(lib, cp, x_real), results[0])
            checked += 1
    assert checked >= 10


def test_program_uses_input_sign_masks(model: Path) -> None:
    c = _compile(model)
    assert c.plan.arena_size <= 256 * KB
    steps = c.program.all_steps
    graph = c.program.graph
    hs = [st for st in steps if st.op.kind is OpKind.HARD_SWISH]
    assert len(hs) >= 5
    for st in hs:
        quant = graph.tensor(str(st.op.inputs[0])).quant
        assert quant is not None
        zp = quant.zero_point[0]
        assert st.params.mask_input and st.params.clamp == (zp, SIGN_MASK_HI)
        producer = next(p for p in steps if p.op.outputs[0] == st.op.inputs[0])
        assert producer.params.clamp is None  # one mask per activation: the sign mask
    sign_fig = plan_json(c)["saved_activations"]
    assert sign_fig["reduction"] >= 0.40
    # act=exact saves each HARD_SWISH input as int8 (and the convs' saturation masks): the
    # honest comparison of the two programs, same layers trained
    exact = _compile(model, "mobiletl:blocks=2,act=exact")
    hs_exact = [st for st in exact.program.all_steps if st.op.kind is OpKind.HARD_SWISH]
    assert len(hs_exact) == len(hs) and all(st.params.save_input and st.params.clamp is None for st in hs_exact)
    exact_fig = plan_json(exact)["saved_activations"]
    assert sign_fig["bytes"] <= 0.5 * exact_fig["bytes"]
    assert _compile(model, "tte").plan.arena_size <= 256 * KB  # other schemes use the exact rule


@pytest.mark.skipif(not HAVE_GCC, reason="gcc is not installed")
def test_host_and_qemu_match_simulator(model: Path, tmp_path: Path) -> None:
    """The sign rule on the host and QEMU Cortex-M4 (qemu-m7: ReLU6 in test_mobiletl_qemu.py),
    the exact HARD_SWISH backward (act=exact) on the host: 50 steps each."""
    x, y = fashion_mnist("train")
    spec = RunSpec(x[:STEPS], y[:STEPS].astype(np.int64), x[4000:4003], seed=3, lr=0.01)
    programs = {"sign": _compile(model), "exact": _compile(model, "mobiletl:blocks=2,act=exact")}
    runs = [("sign", "host"), ("exact", "host"), *((("sign", QEMU_BACKENDS[0]),) if HAVE_QEMU else ())]

    def run(job: tuple[str, str]) -> RunResult:
        c, target = programs[job[0]], job[1]
        out = tmp_path / f"{job[0]}-{target}"
        if target == "host":
            return run_backend("host", c, spec, work_dir=out)
        gen, info = build_device(c, target, out, spec.sample_shape)
        return run_generated(c, gen, spec, qemu_transport(info, 300.0))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, runs))
    sims = {k: run_backend("sim", c, spec) for k, c in programs.items()}
    for (rule, _), r in zip(runs, results, strict=True):
        assert_same_run(sims[rule], r, STEPS)
    for rule, c in programs.items():
        g = c.program.graph
        assert any(not np.array_equal(t, np.asarray(g.tensor(n).data)) for n, t in sims[rule].tensors.items()), rule
    assert sims["sign"].steps != sims["exact"].steps  # the two rules train differently
