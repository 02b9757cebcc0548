"""Seeded synthetic inputs for calibration and tests (no data set needed)."""

from __future__ import annotations

import numpy as np


def image_like(n: int, resolution: int | tuple[int, int], channels: int = 3, seed: int = 0) -> np.ndarray:
    """``n`` smooth random images in [-1, 1], shape ``(n, h, w, channels)`` float32.

    Each image sums a few octaves of Gaussian noise, bilinearly upsampled from coarse
    grids (so neighbouring pixels correlate as in photos), then is scaled per image to
    fill a random sub-range of [-1, 1] (some images dim, some with full contrast).
    """
    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    if n < 1 or h < 1 or w < 1 or channels < 1:
        raise ValueError(f"image_like needs positive sizes, got n={n}, {h}x{w}x{channels}")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, h, w, channels), dtype=np.float64)
    for octave, weight in ((2, 1.0), (4, 0.6), (8, 0.35), (16, 0.2)):
        gh, gw = min(octave, h), min(octave, w)
        coarse = rng.normal(size=(n, gh, gw, channels))
        out += weight * np.einsum("hy,nyxc,wx->nhwc", _lerp_matrix(h, gh), coarse, _lerp_matrix(w, gw), optimize=True)
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    peak = np.abs(out).max(axis=(1, 2, 3), keepdims=True)
    contrast = rng.uniform(0.4, 1.0, size=(n, 1, 1, 1))
    offset = rng.uniform(-1.0, 1.0, size=(n, 1, 1, 1)) * (1.0 - contrast)
    out = out / np.maximum(peak, 1e-12) * contrast + offset
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def vector_like(n: int, features: int, seed: int = 0) -> np.ndarray:
    """``n`` seeded feature vectors in [-1, 1] with correlated features, ``(n, features)``."""
    if n < 1 or features < 1:
        raise ValueError(f"vector_like needs positive sizes, got n={n}, features={features}")
    rng = np.random.default_rng(seed)
    rank = max(1, min(features, 8))
    basis = rng.normal(size=(rank, features)) / np.sqrt(rank)
    x = rng.normal(size=(n, rank)) @ basis + 0.3 * rng.normal(size=(n, features))
    return np.tanh(x).astype(np.float32)


def _lerp_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) matrix of linear-interpolation weights from ``grid`` samples to ``size``."""
    if grid == 1:
        return np.ones((size, 1))
    pos = np.linspace(0.0, grid - 1.0, size)
    lo = np.minimum(np.floor(pos).astype(int), grid - 2)
    frac = pos - lo
    m = np.zeros((size, grid))
    m[np.arange(size), lo] = 1.0 - frac
    m[np.arange(size), lo + 1] = frac
    return m
