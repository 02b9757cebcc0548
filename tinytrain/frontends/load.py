"""Picks the frontend for a model file by its content (not its name)."""

from __future__ import annotations

from pathlib import Path

from tinytrain.errors import ModelFormatError
from tinytrain.ir.graph import Graph


def load_model(path: str | Path) -> Graph:
    """Loads a ``.tflite`` flatbuffer or an MCUNet / tiny-training ``.pkl`` checkpoint."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelFormatError(f"cannot read {p}: {exc.strerror or exc}") from None
    if head[4:8] == b"TFL3":
        from tinytrain.frontends.tflite import load_tflite

        return load_tflite(p)
    if head[:2] == b"PK":
        from tinytrain.frontends.mcunet import load_mcunet

        return load_mcunet(p)
    if p.suffix in (".keras", ".h5"):
        raise ModelFormatError(f"{p} is a Keras model: convert it first with `tinytrain convert`")
    raise ModelFormatError(f"{p} is neither a .tflite model nor an MCUNet .pkl checkpoint")
