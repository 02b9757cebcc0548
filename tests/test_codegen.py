"""The generated C project: structure, flash/SRAM fit on the Cortex-M targets, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from codegen.emit import Generated, generate
from codegen.lower import ArenaPtr, ArenaValue, Call, Loop
from codegen.targets import RegionOverflowError, build_firmware, get_target
from tinytrain.errors import UsageError
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import Compiled, CompileOptions, compile_model

ARM = shutil.which("arm-none-eabi-gcc") is not None


@pytest.fixture(scope="module")
def compiled() -> Compiled:
    return compile_model(shipped(MBV2), CompileOptions("last-layer", classes=10, sample_bytes=784))


@pytest.fixture(scope="module")
def gen(compiled: Compiled, tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generate(compiled, tmp_path_factory.mktemp("gen"), (28, 28))


def test_project_files_and_metadata(gen: Generated, compiled: Compiled) -> None:
    for f in ("tt_model.h", "tt_model.c", "tt_weights.h", "tt_weights.c", "main_host.c", "metadata.json"):
        assert (gen.out_dir / f).exists(), f
    meta = json.loads((gen.out_dir / "metadata.json").read_text())
    assert meta["arena_bytes"] == compiled.plan.arena_size
    header = (gen.out_dir / "tt_model.h").read_text()
    assert f"#define TT_ARENA_SIZE {compiled.plan.arena_size}" in header
    assert "#define TT_INPUT_BYTES 784" in header
    calls = [c for it in gen.lowered.calls for c in (it.calls if isinstance(it, Loop) else (it,))]
    assert len(meta["calls"]) == len(calls)
    model_c = (gen.out_dir / "tt_model.c").read_text()
    assert model_c.count("TT_CHECK(tt_") >= len(calls)
    for word in ("malloc", "printf", "float", "double"):
        assert word not in model_c
    # every arena pointer lies inside its planned buffer
    for c in calls:
        assert isinstance(c, Call)
        for a in c.args:
            if isinstance(a, (ArenaPtr, ArenaValue)):
                p = compiled.plan.placement(a.buffer)
                assert p.offset <= a.offset < p.end


def test_deterministic(compiled: Compiled, gen: Generated, tmp_path: Path) -> None:
    again = generate(compiled, tmp_path, (28, 28))
    for f in ("tt_model.c", "tt_weights.c", "tt_model.h"):
        assert (again.out_dir / f).read_text() == (gen.out_dir / f).read_text()


@pytest.mark.skipif(not ARM, reason="arm-none-eabi-gcc is not installed")
def test_builds_for_cortex_m_and_overflows_a_small_budget(gen: Generated, compiled: Compiled, tmp_path: Path) -> None:
    srcs = [*gen.sources, gen.driver]
    for t in ("qemu-m4", "stm32f746g-disco"):
        info = build_firmware(get_target(t), srcs, gen.include_dirs, tmp_path / t)
        assert info.ram_used >= compiled.plan.arena_size
        assert info.sram_budget is not None and info.ram_used <= info.sram_budget
    small = (compiled.plan.arena_size // 2) // 8 * 8
    with pytest.raises(RegionOverflowError) as e:
        build_firmware(get_target("qemu-m4"), srcs, gen.include_dirs, tmp_path / "small", sram_bytes=small)
    assert e.value.region == "RAM"


def test_refuses_samples_of_another_size(compiled: Compiled, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="784"):
        generate(compiled, tmp_path, (32, 32))
