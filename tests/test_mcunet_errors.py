"""Malformed and malicious MCUNet checkpoints are refused with tinytrain's own errors."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinytrain.errors import ModelFormatError, TinytrainError, UnsupportedOpError
from tinytrain.frontends.mcunet import load_mcunet
from tinytrain.frontends.mcunet_synthetic import checkpoint_bytes, make_synthetic_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = make_synthetic_checkpoint(tmp_path_factory.mktemp("ckpt") / "good.pkl", resolution=32, num_blocks=3)
    with zipfile.ZipFile(path) as zf:
        raw = pickle.loads(zf.read("archive/data.pkl"))
    assert isinstance(raw, dict)
    return raw


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(checkpoint_bytes(raw))  # type: ignore[arg-type]
    return path


def _mutated(good: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    raw = copy.deepcopy(good)
    change(raw)
    return raw


def test_good_checkpoint_loads(good: dict[str, Any], tmp_path: Path) -> None:
    graph = load_mcunet(_write(tmp_path, good))
    assert graph.ops and graph.name == "ckpt"


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """``path`` like 'blocks.1.depthwise.params.bias'; value ``...`` deletes the key."""

    def change(raw: dict[str, Any]) -> None:
        node: Any = raw
        *parents, last = path.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return change


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "no classifier": _set("classifier", ...),
    "no blocks": _set("blocks", ...),
    "blocks not a list": _set("blocks", {"0": None}),
    "no depthwise": _set("blocks.0.depthwise", ...),
    "no bias": _set("blocks.1.pointwise2.params.bias", ...),
    "no w_scales": _set("first_conv.params.w_scales", ...),
    "no y_zero": _set("classifier.params.y_zero", ...),
    "no in_shape": _set("first_conv.in_shape", ...),
    "weight int16": _set("blocks.1.pointwise1.params.weight", np.zeros((48, 8, 1, 1), np.int16)),
    "weight float": _set("first_conv.params.weight", np.zeros((16, 3, 3, 3), np.float32)),
    "bias int64": _set("blocks.0.depthwise.params.bias", np.zeros(16, np.int64)),
    "w_scales float64": _set("classifier.params.w_scales", np.full(10, 0.01)),
    "weight wrong shape": _set("blocks.0.pointwise2.params.weight", np.zeros((8, 16, 3, 3), np.int8)),
    "bias a list": _set("blocks.0.pointwise2.params.bias", [0] * 8),
    "zero w_scale": _set("blocks.0.pointwise2.params.w_scales", np.zeros(8, np.float32)),
    "nan y_scale": _set("blocks.0.depthwise.params.y_scale", float("nan")),
    "negative x_scale": _set("first_conv.params.x_scale", -0.1),
    "string scale": _set("first_conv.params.y_scale", "0.1"),
    "zero point out of range": _set("blocks.1.depthwise.params.y_zero", 200),
    "bool channel count": _set("first_conv.out_channel", True),
    "inconsistent chain": _set("blocks.1.depthwise.params.x_scale", 0.5),
    "inconsistent residual": _set("blocks.2.residual.params.x_zero", 5),
    "wrong in_shape": _set("blocks.1.depthwise.in_shape", 99),
    "wrong out_shape": _set("blocks.1.depthwise.out_shape", 16),
    "empty root": lambda raw: raw.clear(),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoints_raise_model_format_error(case: str, good: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError):
        load_mcunet(_write(tmp_path, _mutated(good, MALFORMED[case])))


@pytest.mark.parametrize("root", [[], None, "first_conv", {1: 2}], ids=["list", "none", "str", "int keys"])
def test_non_dict_roots_raise_model_format_error(root: object, tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError):
        load_mcunet(_write(tmp_path, root))


@pytest.mark.parametrize(
    "change",
    [_set("blocks.0.se", {"fc": 1}), _set("blocks.1.pointwise1.act", "relu6"), _set("first_conv.groups", 3)],
    ids=["squeeze-excitation", "explicit activation", "grouped conv"],
)
def test_unsupported_features_raise_unsupported_op_error(
    change: Callable[[dict[str, Any]], None], good: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(UnsupportedOpError):
        load_mcunet(_write(tmp_path, _mutated(good, change)))


def test_truncated_and_garbage_files(good: dict[str, Any], tmp_path: Path) -> None:
    data = checkpoint_bytes(good)
    path = tmp_path / "bad.pkl"
    for cut in (0, 1, 10, 100, len(data) // 3, len(data) // 2, len(data) - 30, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            load_mcunet(path)
    path.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(ModelFormatError):
        load_mcunet(path)
    with pytest.raises(ModelFormatError):
        load_mcunet(tmp_path / "missing.pkl")
    # A zip without data.pkl, and a zip whose data.pkl is truncated inside.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/version", b"3\n")
    path.write_bytes(buf.getvalue())
    with pytest.raises(ModelFormatError, match=r"data\.pkl"):
        load_mcunet(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(good, protocol=2)[:-500])
    path.write_bytes(buf.getvalue())
    with pytest.raises(ModelFormatError, match="pickle"):
        load_mcunet(path)


class _Evil:
    def __init__(self, func: Callable[..., Any], *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _evil_pickles(marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "os.system": pickle.dumps({"first_conv": _Evil(os.system, cmd)}, protocol=2),
        "hand-written os.system": b"\x80\x02cos\nsystem\nX" + len(cmd).to_bytes(4, "little") + cmd.encode() + b"\x85R.",
        "builtins.eval": pickle.dumps(_Evil(eval, f"__import__('os').system({cmd!r})"), protocol=2),
        "builtins.exec protocol 4": pickle.dumps(_Evil(exec, f"open({str(marker)!r}, 'w')"), protocol=4),
        "numpy.load": b"\x80\x02cnumpy\nload\nX\x04\x00\x00\x00/etc\x85R.",
        "ndarray called": b"\x80\x02cnumpy\nndarray\nK\x10\x85R.",
        "codecs zlib": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.",
        "object dtype": b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x89\x88\x87R.",
        "persistent id": b"\x80\x02X\x01\x00\x00\x00aQ.",
    }


@pytest.mark.parametrize("container", ["zip", "bare pickle"])
def test_malicious_pickles_cannot_run_code(container: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    for name, payload in _evil_pickles(marker).items():
        path = tmp_path / "evil.pkl"
        if container == "zip":
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                zf.writestr("archive/data.pkl", payload)
                zf.writestr("archive/version", b"3\n")
            path.write_bytes(buf.getvalue())
        else:
            path.write_bytes(payload)
        with pytest.raises(ModelFormatError):
            load_mcunet(path)
        assert not marker.exists(), name


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_pickles_raise_only_tinytrain_errors(good: dict[str, Any], tmp_path: Path, data: st.DataObject) -> None:
    """Random byte edits of the (bare) pickle: either a graph or a TinytrainError, nothing else."""
    base = bytearray(pickle.dumps(good, protocol=2))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(base) - 1))
        base[pos] = data.draw(st.integers(0, 255))
    path = tmp_path / "fuzz.pkl"
    path.write_bytes(bytes(base))
    with contextlib.suppress(TinytrainError):
        load_mcunet(path)
