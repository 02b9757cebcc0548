"""Synthetic MCUNet / tiny-training checkpoints, in exactly the format of the real files.

``make_synthetic_checkpoint`` builds a small MobileNetV2 (the first few inverted
residual blocks at width ``width``), draws plausible float weights, calibrates the
activation ranges with a float forward pass on random images (ReLU6 layers get
``y_zero = −128``, ``y_scale = min(max, 6)/255``; linear layers an asymmetric min/max
range), quantizes the weights per output channel as tiny-training does
(``w_scale = max(|w|max, 5e-7)/127``, bias ``round(b / (x_scale·w_scale))`` saturated to
±(2^31−1)), and writes the dict with ``torch.save``'s container layout (a stored zip
holding ``archive/data.pkl`` — protocol-2 pickle, numpy arrays only — and
``archive/version``).

Like the real checkpoints it contains "dead" channels (all-zero weights, so
``w_scale ≈ 3.9e-9`` and a saturated bias) and a few near-dead ones (tiny weights,
huge bias), plus one stress channel whose multiplier is below 2^-31 (flushed to 0 by
``QuantizeMultiplier``). Biases are kept small enough that no int32 accumulator can
overflow. The generator is deterministic for a given ``seed``; it needs numpy only.
"""

from __future__ import annotations

import io
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INT32_MAX = 2**31 - 1
TTE_MIN_ABS_WEIGHT = 5e-7  # tiny-training's floor on max|w| per channel (w_scale ≈ 3.94e-9)
STRESS_W_SCALE = 1e-10  # a dead channel whose multiplier QuantizeMultiplier flushes to 0
RELU6_SCALE = 6.0 / 255.0
INPUT_SCALE = 1.0 / 127.5

# MobileNetV2 (expansion t, channels c, repeats n, first stride s), flattened per block.
_MBV2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
_BLOCKS: tuple[tuple[int, int, int], ...] = tuple(
    (t, c, s if i == 0 else 1) for t, c, n, s in _MBV2 for i in range(n)
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """MobileNetV2's channel rounding (never more than 10% below ``v``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def make_synthetic_checkpoint(
    path: str | Path,
    *,
    width: float = 0.35,
    resolution: int = 48,
    num_classes: int = 10,
    seed: int = 0,
    num_blocks: int = 5,
    kernel_sizes: tuple[int, ...] = (3,),
) -> Path:
    """Writes a synthetic checkpoint to ``path`` and returns the path.

    ``num_blocks`` (1…17) takes that many blocks of MobileNetV2; ``kernel_sizes`` is cycled
    over the blocks' depthwise convolutions (MobileNetV2 uses 3; MCUNet also 5 and 7).
    """
    if not 1 <= num_blocks <= len(_BLOCKS):
        raise ValueError(f"num_blocks must be in 1..{len(_BLOCKS)}")
    if resolution < 8 or num_classes < 2 or width <= 0 or not kernel_sizes:
        raise ValueError("resolution ≥ 8, num_classes ≥ 2, width > 0 and kernel_sizes non-empty are required")
    if any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError("kernel sizes must be odd")
    ckpt = _Generator(np.random.default_rng(seed), width, resolution, num_classes, num_blocks, kernel_sizes).build()
    out = Path(path)
    out.write_bytes(checkpoint_bytes(ckpt))
    return out


def checkpoint_bytes(ckpt: dict[str, Any]) -> bytes:
    """The file bytes of a checkpoint dict: a stored zip like ``torch.save`` writes."""
    data = pickle.dumps(ckpt, protocol=2)
    # numpy ≥ 2 names the array reconstructor ``numpy._core.multiarray``; the real files
    # (written with numpy 1.x) say ``numpy.core.multiarray``. Same function, old name.
    new, old = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    if data.count(new) == 1:
        data = data.replace(new, old)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("archive/data.pkl", date_time=(1980, 1, 1, 0, 0, 0)), data)
        zf.writestr(zipfile.ZipInfo("archive/version", date_time=(1980, 1, 1, 0, 0, 0)), b"3\n")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# Float reference (NCHW, PyTorch-style symmetric padding), used for calibration only


def _conv_nchw(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int, groups: int) -> np.ndarray:
    k = w.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    if groups == 1:
        y = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    else:  # depthwise, multiplier 1
        y = np.einsum("nchwij,cij->nchw", win, w[:, 0], optimize=True)
    return y + b[None, :, None, None]


@dataclass(frozen=True)
class _Range:
    lo: float
    hi: float


def _relu6_q(r: _Range) -> tuple[float, int]:
    hi = min(max(r.hi, 0.5), 6.0)
    return (RELU6_SCALE if hi >= 6.0 else hi / 255.0), -128


def _linear_q(r: _Range) -> tuple[float, int]:
    lo, hi = min(r.lo, 0.0), max(r.hi, 0.0)
    scale = max(hi - lo, 1e-3) / 255.0
    zero = int(np.clip(round(-128 - lo / scale), -128, 127))
    return scale, zero


class _Generator:
    def __init__(
        self, rng: np.random.Generator, width: float, resolution: int, num_classes: int, num_blocks: int,
        kernel_sizes: tuple[int, ...],
    ) -> None:
        self.rng = rng
        self.width = width
        self.resolution = resolution
        self.num_classes = num_classes
        self.num_blocks = num_blocks
        self.kernel_sizes = kernel_sizes
        self.stress_done = False

    # -- float layers --------------------------------------------------------------------

    def _float_conv(self, cin: int, cout: int, k: int, depthwise: bool, dead: int, gain: float) -> dict[str, Any]:
        rng = self.rng
        fan_in = k * k * (1 if depthwise else cin)
        w = rng.normal(0.0, gain * math.sqrt(2.0 / fan_in), (cout, 1 if depthwise else cin, k, k))
        w *= np.exp(rng.normal(0.0, 0.35, (cout, 1, 1, 1)))  # per-channel spread of scales
        b = rng.normal(0.0, 0.15, cout)
        dead_idx = rng.choice(cout, size=min(dead, cout), replace=False) if dead else np.zeros(0, np.int64)
        for j, c in enumerate(dead_idx):
            if j % 2 == 0:
                w[c] = 0.0  # dead: w_scale hits the floor, the bias saturates
                b[c] = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 1.0)
            else:
                w[c] *= 1e-4  # near-dead: tiny but non-zero weights
        return {"w": w, "b": b, "k": k, "depthwise": depthwise, "dead": dead_idx}

    # -- quantization --------------------------------------------------------------------

    def _quantize(self, f: dict[str, Any], x_q: tuple[float, int], y_q: tuple[float, int]) -> dict[str, Any]:
        w, b = f["w"], f["b"]
        cout = w.shape[0]
        max_abs = np.abs(w.reshape(cout, -1)).max(axis=1)
        w_scales = (np.maximum(max_abs, TTE_MIN_ABS_WEIGHT) / 127.0).astype(np.float32)
        if not self.stress_done and len(f["dead"]) and max_abs[f["dead"][0]] == 0.0:
            # x_scale·w_scale/y_scale well below 2^-31, whatever the layer's scales.
            w_scales[f["dead"][0]] = np.float32(min(STRESS_W_SCALE, 0.25 * 2.0**-31 * y_q[0] / x_q[0]))
            self.stress_done = True
        wq = np.clip(np.round(w / w_scales.astype(np.float64)[:, None, None, None]), -127, 127).astype(np.int8)
        x_scale, x_zero = x_q
        bias_f = np.round(b / (x_scale * w_scales.astype(np.float64)))
        # No int32 accumulator may overflow: |bias| + Σ|w|·255 < 2^31 for live channels.
        reach = np.abs(wq.reshape(cout, -1).astype(np.int64)).sum(axis=1) * 255
        limit = np.where(reach > 0, INT32_MAX - reach, INT32_MAX).astype(np.float64)
        bias = np.clip(bias_f, -limit, limit).astype(np.int32)
        return {
            "weight": wq,
            "bias": bias,
            "x_scale": float(x_scale),
            "x_zero": int(x_zero),
            "y_scale": float(y_q[0]),
            "y_zero": int(y_q[1]),
            "w_scales": w_scales,
        }

    @staticmethod
    def _range(y: np.ndarray) -> _Range:
        return _Range(float(y.min()), float(y.max()))

    @staticmethod
    def _conv_dict(
        cin: int, cout: int, in_size: int, out_size: int, k: int, stride: int, depthwise: bool, params: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "in_channel": cin,
            "in_shape": in_size,
            "out_channel": cout,
            "out_shape": out_size,
            "kernel_size": (k, k),
            "stride": stride,
            "groups": cin if depthwise else 1,
            "depthwise": depthwise,
            "act": None,
            "params": params,
        }

    def _layer(
        self, x: np.ndarray, x_q: tuple[float, int], cout: int, k: int, stride: int, depthwise: bool, relu6: bool,
        dead: int, gain: float = 1.0,
    ) -> tuple[np.ndarray, tuple[float, int], dict[str, Any]]:
        cin, size = x.shape[1], x.shape[2]
        f = self._float_conv(cin, cout, k, depthwise, dead, gain)
        y = _conv_nchw(x, f["w"], f["b"], stride, cin if depthwise else 1)
        if relu6:
            y = np.clip(y, 0.0, 6.0)
            y_q = _relu6_q(self._range(y))
        else:
            y_q = _linear_q(self._range(y))
        params = self._quantize(f, x_q, y_q)
        return y, y_q, self._conv_dict(cin, cout, size, y.shape[2], k, stride, depthwise, params)

    # -- network -------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        rng = self.rng
        # Smooth random "images" in [-1, 1] for calibration.
        low = rng.uniform(-1.0, 1.0, (8, 3, max(2, self.resolution // 4), max(2, self.resolution // 4)))
        x = np.repeat(np.repeat(low, 4, axis=2), 4, axis=3)[:, :, : self.resolution, : self.resolution]
        x = np.pad(x, ((0, 0), (0, 0), (0, self.resolution - x.shape[2]), (0, self.resolution - x.shape[3])), "edge")
        x = np.clip(x + rng.normal(0.0, 0.1, x.shape), -1.0, 1.0)
        x_q: tuple[float, int] = (INPUT_SCALE, 0)

        stem = make_divisible(32 * self.width)
        x, x_q, first = self._layer(x, x_q, stem, 3, 2, depthwise=False, relu6=True, dead=1)
        blocks = []
        for i, (t, c, s) in enumerate(_BLOCKS[: self.num_blocks]):
            cin = x.shape[1]
            cout = make_divisible(c * self.width)
            k = self.kernel_sizes[i % len(self.kernel_sizes)]
            block_in, block_q = x, x_q
            pw1 = None
            if t != 1:
                x, x_q, pw1 = self._layer(x, x_q, cin * t, 1, 1, depthwise=False, relu6=True, dead=2)
            x, x_q, dw = self._layer(x, x_q, x.shape[1], k, s, depthwise=True, relu6=True, dead=2)
            x, x_q, pw2 = self._layer(x, x_q, cout, 1, 1, depthwise=False, relu6=False, dead=0, gain=0.5)
            residual = None
            if s == 1 and cin == cout:
                x = block_in + x
                y_q = _linear_q(self._range(x))
                residual = {
                    "in_channel": cout,
                    "in_shape": x.shape[2],
                    "params": {"x_scale": block_q[0], "x_zero": block_q[1], "y_scale": y_q[0], "y_zero": y_q[1]},
                }
                x_q = y_q
            blocks.append({"pointwise1": pw1, "depthwise": dw, "pointwise2": pw2, "residual": residual, "se": None})

        pooled = x.mean(axis=(2, 3), keepdims=True)
        f = self._float_conv(x.shape[1], self.num_classes, 1, False, 0, 1.0)
        logits = _conv_nchw(pooled, f["w"], f["b"], 1, 1)
        params = self._quantize(f, x_q, _linear_q(self._range(logits)))
        classifier = {
            "in_channel": x.shape[1],
            "out_channel": self.num_classes,
            "params": params,
            "kernel_size": (1, 1),
            "stride": 1,
            "groups": 1,
        }
        return {"first_conv": first, "blocks": blocks, "feature_mix": None, "classifier": classifier}
