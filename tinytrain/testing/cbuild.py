"""Builds the C runtime (or any C sources) into a shared library for tests that compare
C kernels with their numpy twins through ctypes.

The flags are the project's (``-std=c99 -ffp-contract=off -Wall -Wextra -Werror``) plus
``-O2 -fPIC -shared``; ``sanitize=True`` adds AddressSanitizer and UBSan (with
``-fno-sanitize-recover`` so that any report fails). Libraries are cached under
``build_dir`` by a hash of the sources, headers and flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tinytrain.errors import UsageError

RUNTIME = Path(__file__).resolve().parents[2] / "firmware_templates" / "runtime"
RUNTIME_INCLUDE = RUNTIME / "include"
RUNTIME_SRC = RUNTIME / "src"
C_FLAGS = ("-std=c99", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-O2")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")


def runtime_sources() -> list[Path]:
    return sorted(RUNTIME_SRC.glob("*.c"))


def build_shared(
    sources: Sequence[Path],
    build_dir: Path,
    include_dirs: Sequence[Path] = (RUNTIME_INCLUDE,),
    extra_flags: Sequence[str] = (),
    name: str = "tt",
) -> Path:
    """Compiles ``sources`` into ``build_dir/lib<name>-<hash>.so`` (reused when present)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise UsageError("no C compiler (gcc) found")
    flags = [*C_FLAGS, "-fPIC", "-shared", *extra_flags]
    h = hashlib.sha256(" ".join(flags).encode())
    for p in sorted(sources):
        h.update(p.read_bytes())
    for d in include_dirs:
        for hdr in sorted(Path(d).glob("*.h")):
            h.update(hdr.read_bytes())
    build_dir.mkdir(parents=True, exist_ok=True)
    out = build_dir / f"lib{name}-{h.hexdigest()[:16]}.so"
    if out.exists():
        return out
    cmd = [cc, *flags, *(f"-I{d}" for d in include_dirs), *map(str, sources), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise UsageError(f"C build failed:\n{' '.join(cmd)}\n{r.stderr}")
    return out


def load_runtime(build_dir: Path, extra_sources: Sequence[Path] = ()) -> ctypes.CDLL:
    """The reference runtime (every ``firmware_templates/runtime/src/*.c``) as a CDLL."""
    return ctypes.CDLL(str(build_shared([*runtime_sources(), *extra_sources], build_dir)))


def ptr(a: np.ndarray) -> ctypes.c_void_p:
    """A C pointer to a C-contiguous numpy array (keep the array alive during the call)."""
    if not a.flags["C_CONTIGUOUS"]:
        raise UsageError("array must be C-contiguous")
    return ctypes.c_void_p(a.ctypes.data)
