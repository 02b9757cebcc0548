"""Snapshot of the generated C for one small program (the shipped MobileNetV2 96×96,
last-layer scheme, 10 classes, 28×28 native samples): every generated file verbatim,
except that ``tt_weights.c``'s long constant arrays are condensed to their length and a
SHA-256 (the params struct initialisers and short arrays stay readable).

A change in the generator shows as a unified diff. After checking it, rewrite the
snapshots with ``TINYTRAIN_UPDATE_SNAPSHOTS=1 pytest tests/test_codegen_snapshot.py``.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from pathlib import Path

import pytest

from codegen.emit import Generated, generate
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import CompileOptions, compile_model

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots" / "codegen_mbv2_last_layer"
FILES = ("tt_model.h", "tt_model.c", "tt_weights.h", "tt_weights.c", "main_host.c", "metadata.json")
UPDATE = os.environ.get("TINYTRAIN_UPDATE_SNAPSHOTS") == "1"
MAX_ARRAY_LINES = 4  # arrays with more value lines than this are condensed
_ARRAY = re.compile(r"^(const \w+ (\w+)\[\d+\] = \{\n)((?:    .*\n)+)(\};\n)", re.MULTILINE)


def condense_arrays(text: str) -> str:
    """``text`` with every constant array of more than MAX_ARRAY_LINES lines of values replaced
    by one comment line holding its value count and the SHA-256 of its values."""

    def repl(m: re.Match[str]) -> str:
        body = m.group(3)
        if body.count("\n") <= MAX_ARRAY_LINES:
            return m.group(0)
        values = [v for v in re.split(r"[,\s]+", body) if v]
        digest = hashlib.sha256(",".join(values).encode()).hexdigest()[:32]
        return f"{m.group(1)}    /* {len(values)} values, sha256 {digest} */\n{m.group(4)}"

    return _ARRAY.sub(repl, text)


def _snapshot_text(gen: Generated, name: str) -> str:
    text = (gen.out_dir / name).read_text()
    if name == "metadata.json":
        text = text.replace(str(gen.out_dir), "<out>")
    return condense_arrays(text) if name == "tt_weights.c" else text


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    compiled = compile_model(shipped(MBV2), CompileOptions("last-layer", classes=10, sample_bytes=784))
    return generate(compiled, tmp_path_factory.mktemp("snap"), (28, 28))


def test_condense_keeps_short_arrays_and_hashes_long_ones() -> None:
    short = "const int8_t a[2] = {\n    1, 2,\n};\n"
    long = "const int8_t b[80] = {\n" + "    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,\n" * 5 + "};\n"
    out = condense_arrays(short + long)
    assert out.startswith(short) and "80 values, sha256" in out and "16,\n" not in out[len(short) :]
    changed = condense_arrays(short + long.replace("16,\n};", "17,\n};"))
    assert changed != out  # a changed value changes the digest


@pytest.mark.parametrize("name", FILES)
def test_generated_c_matches_snapshot(gen: Generated, name: str) -> None:
    actual = _snapshot_text(gen, name)
    path = SNAPSHOTS / (name + ".snap")
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"no snapshot {path}: run with TINYTRAIN_UPDATE_SNAPSHOTS=1 to create it")
    expected = path.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                f"snapshot/{name}",
                f"generated/{name}",
                n=2,
            )
        )
        lines = diff.splitlines()
        shown = "\n".join(lines[:200]) + (f"\n... ({len(lines) - 200} more diff lines)" if len(lines) > 200 else "")
        pytest.fail(
            f"the generated {name} differs from its snapshot "
            f"(if intended: TINYTRAIN_UPDATE_SNAPSHOTS=1 pytest {Path(__file__).name}):\n{shown}",
            pytrace=False,
        )


def test_snapshots_are_small() -> None:
    if not SNAPSHOTS.exists():
        pytest.skip("no snapshots yet")
    assert sum(p.stat().st_size for p in SNAPSHOTS.iterdir()) < 200_000
