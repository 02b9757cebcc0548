"""Datasets read from local files (no downloads): Fashion-MNIST from Debian's package."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from tinytrain.errors import UsageError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UsageError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    count = int(np.prod(dims))
    body = raw[4 + 4 * ndim :]
    if len(body) != count:
        raise UsageError(f"{path}: expected {count} bytes of data, found {len(body)}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def fashion_mnist(split: str = "test", directory: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N,28,28], labels uint8 [N]) of the ``train`` or ``test`` split."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise UsageError(f"unknown split {split!r} (train or test)")
    images = directory / f"{prefix}-images-idx3-ubyte.gz"
    labels = directory / f"{prefix}-labels-idx1-ubyte.gz"
    if not images.exists():
        raise UsageError(f"{images} not found: install Debian's dataset-fashion-mnist (make test / make demo do)")
    return _read_idx(images), _read_idx(labels)


def to_model_input(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 [N,28,28] → int8 [N,size,size,channels] in the usual [-1,1] ↦ [-128,127] mapping
    (nearest-neighbour resize, grey replicated over the channels)."""
    _, h, w = images.shape
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    resized = images[:, rows][:, :, cols]
    q = resized.astype(np.int16) - 128
    return np.repeat(q.astype(np.int8)[..., None], channels, axis=-1)
