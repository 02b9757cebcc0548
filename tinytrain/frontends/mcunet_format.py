"""Reading MCUNet / tiny-training int8 checkpoints (``.pkl``) safely into typed records.

File format (what tiny-training writes with ``torch.save`` of a dict of numpy arrays):
a zip holding ``<root>/data.pkl`` (a protocol-2 pickle) and ``<root>/version``; the root
folder is ``archive`` in the files we know, any single root is accepted. A bare pickle
(a file starting with the pickle protocol byte) is accepted too. The pickle holds::

    {"first_conv": conv, "blocks": [block, ...], "feature_mix": conv | None, "classifier": conv}
    block = {"pointwise1": conv | None, "depthwise": conv, "pointwise2": conv,
             "residual": residual | None, "se": None}
    conv  = {"in_channel", "out_channel", "in_shape", "out_shape" (square sizes; absent for
             the classifier), "kernel_size", "stride", "groups", "depthwise", "act" (None),
             "params": {"weight": int8 OIHW, "bias": int32[O], "w_scales": float32[O],
                        "x_scale", "x_zero", "y_scale", "y_zero"}}
    residual = {"in_channel", "in_shape", "params": {"x_scale", "x_zero", "y_scale", "y_zero"}}

The unpickler resolves only the four globals such a file needs (numpy's array
reconstruction, ``numpy.ndarray`` as its argument, ``numpy.dtype`` for plain numeric
types, and ``_codecs.encode`` for latin-1 byte strings), each through a narrow wrapper,
so a crafted file cannot call anything else. Every defect of the file (bad zip, bad
pickle, missing key, wrong type, dtype or shape) becomes a :class:`ModelFormatError`;
a well-formed file with a feature tinytrain does not implement (squeeze-excitation,
grouped convolution, an explicit activation) an :class:`UnsupportedOpError`.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from tinytrain.errors import ModelFormatError, TinytrainError, UnsupportedOpError

MAX_PICKLE_BYTES = 512 << 20
_PICKLE_PROTO = 0x80

# ---------------------------------------------------------------------------------------
# Typed records


@dataclass(frozen=True)
class QParams:
    """Affine quantization of an activation: ``real = scale · (q − zero)``."""

    scale: float
    zero: int


@dataclass(frozen=True)
class QConv:
    """One quantized convolution as stored (weights OIHW, PyTorch-style symmetric padding)."""

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    depthwise: bool
    in_size: int | None  # square spatial size of the input (None: not stored, classifier)
    out_size: int | None
    weight: np.ndarray  # int8 [O, I/groups, kh, kw]
    bias: np.ndarray  # int32 [O], in x_scale·w_scale units
    w_scales: np.ndarray  # float32 [O], symmetric per output channel
    x: QParams
    y: QParams


@dataclass(frozen=True)
class QResidual:
    in_channels: int
    in_size: int | None
    x: QParams  # the block input
    y: QParams  # the sum


@dataclass(frozen=True)
class QBlock:
    index: int
    pointwise1: QConv | None
    depthwise: QConv
    pointwise2: QConv
    residual: QResidual | None


@dataclass(frozen=True)
class McunetCheckpoint:
    first_conv: QConv
    blocks: tuple[QBlock, ...]
    feature_mix: QConv | None
    classifier: QConv


def read_checkpoint(source: str | Path | bytes) -> McunetCheckpoint:
    """Reads and validates a checkpoint (path or the file's bytes)."""
    raw = source if isinstance(source, bytes) else _read_file(Path(source))
    obj = _unpickle(_pickle_bytes(raw))
    return _checkpoint(obj)


# ---------------------------------------------------------------------------------------
# Container and restricted unpickling


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from None


def _pickle_bytes(raw: bytes) -> bytes:
    if raw[:1] == bytes([_PICKLE_PROTO]):
        return raw
    if raw[:2] != b"PK":
        raise ModelFormatError("not an MCUNet checkpoint: neither a torch.save zip nor a pickle")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            entries = [i for i in zf.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(entries) != 1:
                raise ModelFormatError(
                    f"checkpoint zip must hold exactly one <root>/data.pkl, found {len(entries)}"
                )
            info = entries[0]
            if info.file_size > MAX_PICKLE_BYTES:
                raise ModelFormatError(f"data.pkl is too large ({info.file_size} bytes)")
            data = zf.read(info)
    except TinytrainError:
        raise
    except Exception as exc:  # BadZipFile, zlib errors, EOFError, CRC mismatch, ...
        raise ModelFormatError(f"corrupt checkpoint zip ({type(exc).__name__}: {exc})") from None
    return data


class _ArrayType:
    """Stands for ``numpy.ndarray`` inside the pickle: only accepted as the subtype
    argument of the array reconstructor, never called."""


_ARRAY_TYPE = _ArrayType()
_NUMPY_RECONSTRUCT: Callable[..., Any] = np.zeros(0).__reduce__()[0]  # type: ignore[assignment]
_DTYPE_CODES = frozenset({"i1", "u1", "i2", "i4", "i8", "f4", "f8", "b1"})


def _reconstruct(subtype: object, shape: object, dtype_code: object) -> np.ndarray:
    if subtype is not _ARRAY_TYPE:
        raise ModelFormatError("the pickle reconstructs an array of a type other than numpy.ndarray")
    if not (isinstance(shape, tuple) and all(type(d) is int and 0 <= d <= 1 for d in shape)):
        raise ModelFormatError("unexpected array placeholder in the pickle")
    return np.asarray(_NUMPY_RECONSTRUCT(np.ndarray, shape, dtype_code))


def _dtype(code: object, align: object = False, copy: object = True) -> np.dtype[Any]:
    if not isinstance(code, str) or code not in _DTYPE_CODES:
        raise ModelFormatError(f"the pickle uses the array element type {code!r}, which is not allowed")
    # Always a fresh copy: the pickle then sets its byte order through __setstate__,
    # which must never touch numpy's shared builtin dtype instances.
    return np.dtype(code, copy=True)


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ModelFormatError("the pickle encodes bytes other than latin-1 text")
    return codecs.encode(text, "latin1")


_ALLOWED_GLOBALS: Mapping[tuple[str, str], object] = MappingProxyType(
    {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): _ARRAY_TYPE,
        ("numpy", "dtype"): _dtype,
        ("_codecs", "encode"): _latin1,
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED_GLOBALS.get((module, name))
        if obj is None:
            raise ModelFormatError(f"the checkpoint's pickle refers to {module}.{name}, which is not allowed")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise ModelFormatError("the checkpoint holds torch tensors (persistent ids); tinytrain reads numpy-only files")


def _unpickle(data: bytes) -> object:
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except TinytrainError:
        raise
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, MemoryError, RecursionError, ...
        raise ModelFormatError(f"corrupt checkpoint pickle ({type(exc).__name__}: {exc})") from None


# ---------------------------------------------------------------------------------------
# Validation into records


def _checkpoint(obj: object) -> McunetCheckpoint:
    root = _dict(obj, "checkpoint")
    first = _conv(_key(root, "first_conv", "checkpoint"), "first_conv", has_sizes=True)
    blocks_raw = _key(root, "blocks", "checkpoint")
    if not isinstance(blocks_raw, list):
        raise ModelFormatError(f"checkpoint 'blocks' must be a list, got {type(blocks_raw).__name__}")
    blocks = tuple(_block(b, i) for i, b in enumerate(blocks_raw))
    fm_raw = root.get("feature_mix")
    feature_mix = None if fm_raw is None else _conv(fm_raw, "feature_mix", has_sizes=True)
    classifier = _conv(_key(root, "classifier", "checkpoint"), "classifier", has_sizes=False)
    return McunetCheckpoint(first, blocks, feature_mix, classifier)


def _block(obj: object, index: int) -> QBlock:
    where = f"blocks.{index}"
    d = _dict(obj, where)
    if d.get("se") is not None:
        raise UnsupportedOpError("SQUEEZE_EXCITATION", index, (where,), "squeeze-excitation blocks are not supported")
    pw1_raw = d.get("pointwise1")
    pw1 = None if pw1_raw is None else _conv(pw1_raw, f"{where}.pointwise1", has_sizes=True)
    dw = _conv(_key(d, "depthwise", where), f"{where}.depthwise", has_sizes=True)
    pw2 = _conv(_key(d, "pointwise2", where), f"{where}.pointwise2", has_sizes=True)
    res_raw = d.get("residual")
    res = None if res_raw is None else _residual(res_raw, f"{where}.residual")
    if not dw.depthwise:
        raise ModelFormatError(f"{where}.depthwise is not marked depthwise")
    if pw1 is not None and pw1.depthwise:
        raise ModelFormatError(f"{where}.pointwise1 is marked depthwise")
    if pw2.depthwise:
        raise ModelFormatError(f"{where}.pointwise2 is marked depthwise")
    return QBlock(index, pw1, dw, pw2, res)


def _residual(obj: object, where: str) -> QResidual:
    d = _dict(obj, where)
    p = _dict(_key(d, "params", where), f"{where}.params")
    in_size = d.get("in_shape")
    return QResidual(
        in_channels=_pos_int(_key(d, "in_channel", where), f"{where}.in_channel"),
        in_size=None if in_size is None else _pos_int(in_size, f"{where}.in_shape"),
        x=_qparams(p, "x", where),
        y=_qparams(p, "y", where),
    )


def _conv(obj: object, where: str, *, has_sizes: bool) -> QConv:
    d = _dict(obj, where)
    act = d.get("act")
    if act is not None:
        raise UnsupportedOpError("ACTIVATION", -1, (where,), f"explicit activation {act!r} (expected it folded)")
    cin = _pos_int(_key(d, "in_channel", where), f"{where}.in_channel")
    cout = _pos_int(_key(d, "out_channel", where), f"{where}.out_channel")
    kernel = _pair(_key(d, "kernel_size", where), f"{where}.kernel_size")
    stride = _pair(_key(d, "stride", where), f"{where}.stride")
    groups = _pos_int(d.get("groups", 1), f"{where}.groups")
    depthwise = d.get("depthwise", False)
    if not isinstance(depthwise, bool):
        raise ModelFormatError(f"{where}.depthwise must be a bool, got {type(depthwise).__name__}")
    in_size = out_size = None
    if has_sizes:
        in_size = _pos_int(_key(d, "in_shape", where), f"{where}.in_shape")
        out_size = _pos_int(_key(d, "out_shape", where), f"{where}.out_shape")
    p = _dict(_key(d, "params", where), f"{where}.params")
    if depthwise:
        if groups != cin or cin != cout:
            raise UnsupportedOpError(
                "DEPTHWISE_CONV_2D", -1, (where,),
                f"depthwise with groups={groups}, {cin}→{cout} channels (only multiplier 1 is supported)",
            )
    elif groups != 1:
        raise UnsupportedOpError("CONV_2D", -1, (where,), f"grouped convolution (groups={groups})")
    weight = _array(_key(p, "weight", where), np.int8, (cout, cin // groups, *kernel), f"{where}.params.weight")
    bias = _array(_key(p, "bias", where), np.int32, (cout,), f"{where}.params.bias")
    w_scales = _array(_key(p, "w_scales", where), np.float32, (cout,), f"{where}.params.w_scales")
    if not (np.all(np.isfinite(w_scales)) and np.all(w_scales > 0)):
        raise ModelFormatError(f"{where}.params.w_scales must be finite and > 0")
    return QConv(
        name=where, in_channels=cin, out_channels=cout, kernel=kernel, stride=stride, groups=groups,
        depthwise=depthwise, in_size=in_size, out_size=out_size, weight=weight, bias=bias, w_scales=w_scales,
        x=_qparams(p, "x", where), y=_qparams(p, "y", where),
    )


def _qparams(p: dict[str, object], prefix: str, where: str) -> QParams:
    raw_scale = _key(p, f"{prefix}_scale", where)
    zero = _key(p, f"{prefix}_zero", where)
    scale = float(raw_scale) if isinstance(raw_scale, (float, int)) and not isinstance(raw_scale, bool) else math.nan
    as_f32 = float(np.float32(scale)) if math.isfinite(scale) and scale < 1e38 else math.nan
    if not (math.isfinite(as_f32) and as_f32 > 0.0):
        raise ModelFormatError(f"{where}.params.{prefix}_scale must be a float32 number > 0, got {raw_scale!r}")
    if type(zero) is not int or not -128 <= zero <= 127:
        raise ModelFormatError(f"{where}.params.{prefix}_zero must be an int8 value, got {zero!r}")
    return QParams(scale, zero)


def _dict(obj: object, where: str) -> dict[str, object]:
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ModelFormatError(f"{where} must be a dict with string keys, got {type(obj).__name__}")
    return obj


def _key(d: dict[str, object], key: str, where: str) -> object:
    if key not in d:
        raise ModelFormatError(f"{where} has no {key!r} entry")
    return d[key]


def _pos_int(v: object, where: str) -> int:
    if type(v) is not int or v <= 0:
        raise ModelFormatError(f"{where} must be a positive int, got {v!r}")
    return v


def _pair(v: object, where: str) -> tuple[int, int]:
    if type(v) is int:
        return _pos_int(v, where), v
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return _pos_int(v[0], where), _pos_int(v[1], where)
    raise ModelFormatError(f"{where} must be an int or a pair of ints, got {v!r}")


def _array(v: object, dtype: type, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(v, np.ndarray):
        raise ModelFormatError(f"{where} must be a numpy array, got {type(v).__name__}")
    if v.dtype.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise ModelFormatError(f"{where} must be {np.dtype(dtype).name}, got {v.dtype.name}")
    if v.shape != shape:
        raise ModelFormatError(f"{where} has shape {list(v.shape)}, expected {list(shape)}")
    out = np.ascontiguousarray(v, dtype=np.dtype(dtype))
    out.flags.writeable = False
    return out
