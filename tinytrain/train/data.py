"""Training data: data sets, a reproducible sample order, and integer-exact preprocessing.

Everything that happens to a sample at training time is defined here in integers, so
that the simulator (numpy) and the device (C) feed the network the same bytes.

Data sets
---------
:func:`load_dataset` reads ``"fashion-mnist"`` (Debian's package, through
:func:`tinytrain.datasets.fashion_mnist`) or an ``.npz`` file holding ``x`` (uint8
images ``[N, H, W]`` or ``[N, H, W, C]`` with ``C`` 1 or 3) and ``y`` (integer labels
``[N]``, ``>= 0``). An ``.npz`` may instead hold one pair per split (``x_train``,
``y_train``, ``x_test``, ``y_test``); those are preferred when present.

Sample order
------------
Epoch ``e`` (counted from 0) of a training run with seed ``seed`` visits the ``N``
samples in the order of a Fisher–Yates shuffle of ``0 … N−1``:

* PRNG: Marsaglia's xorshift32 on a uint32 state ``s``:
  ``s ^= s << 13; s ^= s >> 17; s ^= s << 5`` (all mod 2^32); each draw returns the
  new ``s``.
* Initial state of epoch ``e``: ``fmix32((seed + 0x9E3779B9 · (e + 1)) mod 2^32)``
  (MurmurHash3's finalizer: ``h ^= h >> 16; h *= 0x85EBCA6B; h ^= h >> 13;
  h *= 0xC2B2AE35; h ^= h >> 16``, products mod 2^32); a zero result is replaced by
  ``0x9E3779B9`` (xorshift32 must not start at 0). ``seed`` is taken mod 2^32.
* Shuffle: start from the identity ``order[i] = i``; for ``i = N−1`` down to ``1``:
  draw ``u``, ``j = (u · (i + 1)) >> 32`` (a uint64 product), swap ``order[i]`` and
  ``order[j]``.

Preprocessing (native sample → int8 model input)
------------------------------------------------
1. **Bilinear resize** of each uint8 channel from ``h×w`` to ``H×W`` with half-pixel
   centres (TensorFlow's ``tf.image.resize(..., "bilinear")``, PyTorch's
   ``align_corners=False``). Per axis (input size ``n``, output size ``m``), output
   index ``o`` samples source coordinate ``c = (o + ½)·n/m − ½``, computed exactly as
   the integer ``t = (2o + 1)·n − m`` in units of ``1/(2m)``:
   ``i0 = floor(t / 2m)`` (floor division), ``f = t − 2m·i0`` in ``[0, 2m)``,
   weight ``w1 = floor((f · 2^11 + m) / 2m)`` (Q11, rounded half up), ``w0 = 2^11 − w1``,
   source indices ``lo = clamp(i0, 0, n−1)`` and ``hi = clamp(i0 + 1, 0, n−1)``.
   These tables are computed at compile time. At run time, for output pixel ``(y, x)``
   with row tables ``(ly, hy, v0, v1)`` and column tables ``(lx, hx, u0, u1)``:
   ``r_a = u0·p[a, lx] + u1·p[a, hx]`` for ``a`` in ``{ly, hy}`` (exact, Q11), then
   ``acc = v0·r_ly + v1·r_hy`` (exact, Q22, at most ``255·2^22 < 2^31``: int32), and
   ``out = (acc + 2^21) >> 22`` (round half up; acc ≥ 0). A constant image stays
   constant; the result differs from TensorFlow's float32 resize by at most 1.
2. **Channels**: a 1-channel sample feeding a 3-channel model is replicated to the 3
   channels; otherwise the channel counts must match.
3. **Lookup table** uint8 → int8, 256 entries, built on the host at compile time from
   the model input's quantization ``(s, z)``: pixels map to ``x = p/127.5 − 1`` in
   ``[−1, 1]``, ``q = clamp(round(x / s) + z, −128, 127)``, evaluated in IEEE double
   with ``s`` the stored float32 scale and ``round`` half away from zero. The device
   receives the table; only the lookup runs there.

Steps 1 and 3 at run time use integer arithmetic only, so a C twin gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinytrain.errors import NotQuantizedError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.tensor import Tensor

FASHION_MNIST = "fashion-mnist"
SPLITS = ("train", "test")

RESIZE_FRAC_BITS = 11  # Q format of the bilinear weights (two products: Q22 in int32)
_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


# ----------------------------------------------------------------------------- data sets


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images (uint8 ``[N, H, W]`` or ``[N, H, W, C]``) and labels (int64 ``[N]``), read-only."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        for field_name in ("images", "labels"):
            arr = getattr(self, field_name)
            if arr.flags.writeable:
                arr = arr.copy()
                arr.flags.writeable = False
                object.__setattr__(self, field_name, arr)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one native sample (without the sample axis)."""
        return tuple(int(d) for d in self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max()) + 1 if len(self) else 0


def load_dataset(spec: str | Path, split: str) -> Dataset:
    """``"fashion-mnist"`` or the path of an ``.npz`` file (see the module docstring)."""
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r} (train or test)")
    if str(spec) == FASHION_MNIST:
        from tinytrain.datasets import fashion_mnist

        images, labels = fashion_mnist(split)
        return _checked(f"{FASHION_MNIST}:{split}", images, labels)
    path = Path(spec)
    if path.suffix.lower() != ".npz":
        raise UsageError(f"unknown data set {str(spec)!r}: use {FASHION_MNIST!r} or the path of an .npz file")
    if not path.is_file():
        raise UsageError(f"data set file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            xk, yk = (f"x_{split}", f"y_{split}") if f"x_{split}" in keys else ("x", "y")
            missing = [k for k in (xk, yk) if k not in keys]
            if missing:
                raise UsageError(
                    f"{path.name} has no array {' or '.join(repr(k) for k in missing)} "
                    f"(found: {', '.join(sorted(keys)) or 'none'}); it needs 'x' (uint8 images) and 'y' (labels)"
                )
            images, labels = npz[xk], npz[yk]
    except UsageError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    return _checked(f"{path.name}:{split}", images, labels)


def _checked(name: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
    if images.dtype != np.uint8:
        raise UsageError(f"{name}: images must be uint8, got {images.dtype}")
    if images.ndim not in (3, 4):
        raise UsageError(f"{name}: images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
    if images.ndim == 4 and images.shape[3] not in (1, 3):
        raise UsageError(f"{name}: images must have 1 or 3 channels, got {images.shape[3]}")
    if images.shape[0] == 0 or min(images.shape[1:3]) == 0:
        raise UsageError(f"{name}: no images (shape {images.shape})")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise UsageError(f"{name}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise UsageError(f"{name}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.min() < 0:
        raise UsageError(f"{name}: labels must be >= 0 (found {int(labels.min())})")
    return Dataset(name, images, labels.astype(np.int64))


def select_classes(ds: Dataset, classes: Sequence[int], *, relabel: bool = True) -> Dataset:
    """The samples whose label is in ``classes`` (file order kept); with ``relabel``,
    label ``classes[k]`` becomes ``k``."""
    wanted = [int(c) for c in classes]
    if not wanted or len(set(wanted)) != len(wanted):
        raise UsageError(f"classes must be distinct and non-empty, got {list(classes)}")
    keep = np.isin(ds.labels, wanted)
    labels = ds.labels[keep]
    if relabel:
        mapping = np.full(max(max(wanted), int(ds.labels.max())) + 1, -1, np.int64)
        mapping[wanted] = np.arange(len(wanted))
        labels = mapping[labels]
    return Dataset(f"{ds.name}[{','.join(map(str, wanted))}]", ds.images[keep], labels)


def first_per_class(ds: Dataset, per_class: int) -> Dataset:
    """A balanced subset: the first ``per_class`` samples of each class in file order
    (fewer when a class has fewer)."""
    if per_class < 1:
        raise UsageError(f"per_class must be >= 1, got {per_class}")
    keep = np.zeros(len(ds), bool)
    for c in np.unique(ds.labels):
        keep[np.flatnonzero(ds.labels == c)[:per_class]] = True
    return Dataset(f"{ds.name}[:{per_class}/class]", ds.images[keep], ds.labels[keep])


# ----------------------------------------------------------------------------- sample order


def xorshift32(state: int) -> int:
    """One step of Marsaglia's xorshift32 (13, 17, 5); returns the new state."""
    s = state & _MASK32
    s ^= (s << 13) & _MASK32
    s ^= s >> 17
    s ^= (s << 5) & _MASK32
    return s


def fmix32(h: int) -> int:
    """MurmurHash3's 32-bit finalizer (a bijection that mixes all bits).

    C twin: tt_fmix32 in firmware_templates/runtime/src/tt_prng.c.
    """
    h &= _MASK32
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK32
    h ^= h >> 16
    return h


def epoch_state(seed: int, epoch: int) -> int:
    """The xorshift32 state that starts the shuffle of ``epoch`` (never 0)."""
    if epoch < 0:
        raise UsageError(f"epoch must be >= 0, got {epoch}")
    h = fmix32((seed + _GOLDEN32 * (epoch + 1)) & _MASK32)
    return h if h != 0 else _GOLDEN32


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The sample indices of ``epoch`` (int64 ``[n]``): the Fisher–Yates shuffle of the
    module docstring."""
    if n < 0:
        raise UsageError(f"n must be >= 0, got {n}")
    order = list(range(n))
    s = epoch_state(seed, epoch)
    for i in range(n - 1, 0, -1):
        s = xorshift32(s)
        j = (s * (i + 1)) >> 32
        order[i], order[j] = order[j], order[i]
    return np.asarray(order, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Batch:
    epoch: int
    step: int  # batch number counted from the start of the run
    indices: np.ndarray  # int64 [B], positions in the data set
    x: np.ndarray  # int8 model inputs [B, H, W, C]
    y: np.ndarray  # int64 labels [B]


def iterate_batches(
    ds: Dataset, preprocess: Preprocess, *, batch: int, seed: int, epochs: int, drop_last: bool = False
) -> Iterator[Batch]:
    """The preprocessed batches of ``epochs`` epochs in the order of :func:`epoch_order`
    (batch ``k`` of an epoch holds positions ``k·batch … k·batch + batch − 1`` of the
    order; the last, shorter batch is kept unless ``drop_last``)."""
    if batch < 1 or epochs < 0:
        raise UsageError(f"batch must be >= 1 and epochs >= 0, got batch={batch}, epochs={epochs}")
    step = 0
    for epoch in range(epochs):
        order = epoch_order(len(ds), seed, epoch)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if drop_last and len(idx) < batch:
                break
            yield Batch(epoch, step, idx, preprocess(ds.images[idx]), ds.labels[idx])
            step += 1


# ----------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True, eq=False)
class ResizeAxis:
    """Compile-time tables of the bilinear resize along one axis (see the module docstring)."""

    lo: np.ndarray  # int32 [m] source index of weight w0
    hi: np.ndarray  # int32 [m] source index of weight w1
    w0: np.ndarray  # int32 [m] Q11
    w1: np.ndarray  # int32 [m] Q11

    @staticmethod
    def make(n: int, m: int) -> ResizeAxis:
        if n < 1 or m < 1:
            raise UsageError(f"resize sizes must be >= 1, got {n} -> {m}")
        one = 1 << RESIZE_FRAC_BITS
        o = np.arange(m, dtype=np.int64)
        t = (2 * o + 1) * n - m
        i0 = t // (2 * m)
        frac = t - 2 * m * i0
        w1 = (frac * one + m) // (2 * m)
        lo = np.clip(i0, 0, n - 1)
        hi = np.clip(i0 + 1, 0, n - 1)
        arrays = (lo, hi, one - w1, w1)
        lo32, hi32, w0_32, w1_32 = (a.astype(np.int32) for a in arrays)
        for a in (lo32, hi32, w0_32, w1_32):
            a.flags.writeable = False
        return ResizeAxis(lo32, hi32, w0_32, w1_32)


def resize_bilinear_u8(images: np.ndarray, rows: ResizeAxis, cols: ResizeAxis) -> np.ndarray:
    """Integer bilinear resize of uint8 ``[N, h, w]`` or ``[N, h, w, C]`` with precomputed tables."""
    x = images.astype(np.int32)
    u0 = cols.w0.reshape((1, 1, -1) + (1,) * (x.ndim - 3))
    u1 = cols.w1.reshape(u0.shape)
    r = x[:, :, cols.lo] * u0 + x[:, :, cols.hi] * u1  # Q11, exact
    v0 = rows.w0.reshape((1, -1) + (1,) * (x.ndim - 2))
    v1 = rows.w1.reshape(v0.shape)
    acc = r[:, rows.lo] * v0 + r[:, rows.hi] * v1  # Q22, < 2^31
    half = 1 << (2 * RESIZE_FRAC_BITS - 1)
    return ((acc + half) >> (2 * RESIZE_FRAC_BITS)).astype(np.uint8)


def input_lut(scale: float, zero_point: int) -> np.ndarray:
    """The 256-entry uint8 → int8 table of pixels ``p ↦ clamp(round((p/127.5 − 1)/s) + z)``
    (double precision, half away from zero), read-only int8 ``[256]``."""
    s = float(scale)  # a numpy float32 would make the arithmetic below float32
    if not math.isfinite(s) or s <= 0.0:
        raise UsageError(f"input scale must be finite and > 0, got {scale!r}")
    out = np.empty(256, np.int8)
    for p in range(256):
        v = (p / 127.5 - 1.0) / s
        r = math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
        out[p] = min(127, max(-128, r + int(zero_point)))
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class Preprocess:
    """Native uint8 samples ``[N, h, w(, c)]`` → int8 model inputs ``[N, H, W, C]``."""

    native_shape: tuple[int, ...]  # (h, w) or (h, w, c)
    input_shape: tuple[int, int, int]  # (H, W, C)
    rows: ResizeAxis
    cols: ResizeAxis
    lut: np.ndarray  # int8 [256]

    def resize(self, images: np.ndarray) -> np.ndarray:
        """Step 1 only: uint8 ``[N, H, W(, c)]`` (native channel count)."""
        self._check(images)
        return resize_bilinear_u8(images, self.rows, self.cols)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """C twin: tt_preprocess_u8_s8 in firmware_templates/runtime/src/tt_preprocess.c (one sample per call)."""
        resized = self.resize(images)
        if resized.ndim == 3:
            resized = resized[..., None]
        channels = self.input_shape[2]
        if resized.shape[3] != channels:
            resized = np.repeat(resized, channels, axis=3)
        return self.lut[resized]

    def _check(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.native_shape:
            raise UsageError(
                f"expected uint8 samples of shape {('N', *self.native_shape)}, got {images.dtype} {images.shape}"
            )


def make_preprocess(native_shape: Sequence[int], input_tensor: Tensor) -> Preprocess:
    """The preprocessing from native samples of ``native_shape`` (``(h, w)`` or
    ``(h, w, c)``) to the int8 model input ``input_tensor`` (NHWC, batch 1)."""
    native = tuple(int(d) for d in native_shape)
    if len(native) not in (2, 3) or min(native) < 1:
        raise UsageError(f"native sample shape must be (h, w) or (h, w, c), got {native}")
    if input_tensor.dtype is not DType.INT8:
        raise UsageError(f"model input {input_tensor.name!r} must be int8, got {input_tensor.dtype.value}")
    if len(input_tensor.shape) != 4 or input_tensor.shape[0] != 1:
        raise UsageError(f"model input {input_tensor.name!r} must be [1, H, W, C], got {list(input_tensor.shape)}")
    if input_tensor.quant is None or input_tensor.quant.per_channel:
        raise NotQuantizedError(f"model input {input_tensor.name!r} has no per-tensor quantization")
    _, h_out, w_out, channels = input_tensor.shape
    c_in = native[2] if len(native) == 3 else 1
    if c_in not in (1, channels):
        raise UsageError(f"cannot feed {c_in}-channel samples to a {channels}-channel model input")
    scale, zero = input_tensor.qparams
    return Preprocess(
        native,
        (h_out, w_out, channels),
        ResizeAxis.make(native[0], h_out),
        ResizeAxis.make(native[1], w_out),
        input_lut(scale, zero),
    )


def preprocess_for_graph(graph: Graph, native_shape: Sequence[int]) -> Preprocess:
    """:func:`make_preprocess` for the (single) input of ``graph``."""
    if len(graph.inputs) != 1:
        raise UsageError(f"the model has {len(graph.inputs)} inputs; image preprocessing needs exactly one")
    return make_preprocess(native_shape, graph.tensor(graph.inputs[0]))
