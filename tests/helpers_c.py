"""Shared by the C runtime tests: compiling runtime sources for Cortex-M4 with arm-none-eabi-gcc."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tinytrain.testing.cbuild import C_FLAGS, RUNTIME_INCLUDE, RUNTIME_SRC

M4_FLAGS = ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")


def cortex_m4_objects(names: Sequence[str], out_dir: Path) -> list[Path]:
    """Compiles each ``src/<name>`` for Cortex-M4 (``-Werror``) into ``out_dir``, asserting it
    compiles clean; skips the test when arm-none-eabi-gcc is absent."""
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        pytest.skip("arm-none-eabi-gcc not installed")
    objs = []
    for name in names:
        obj = out_dir / (name + ".o")
        cmd = [cc, *M4_FLAGS, *C_FLAGS, "-c", f"-I{RUNTIME_INCLUDE}", str(RUNTIME_SRC / name), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        objs.append(obj)
    return objs


def assert_integer_only(obj: Path) -> None:
    """The object calls no floating-point helper and no malloc."""
    syms = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True).stdout
    assert "__aeabi_d" not in syms and "__aeabi_f" not in syms and "malloc" not in syms
