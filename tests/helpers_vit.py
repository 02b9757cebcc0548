"""Shared pieces of the tiny-ViT tests: the converted model on disk, one forward pass with
every tensor's value, and small IR builders for single-op cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind, TokenSelectAttrs
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.sim.forward import Simulator
from tinytrain.testing import zoo


def write_tiny_vit(root: Path) -> Path:
    """The default tiny ViT (:func:`tinytrain.testing.zoo.tiny_vit`) as ``root/tiny_vit.tflite``."""
    path = root / "tiny_vit.tflite"
    path.write_bytes(zoo.tiny_vit(root / "zoo"))
    return path


@dataclasses.dataclass(frozen=True)
class VitRun:
    graph: Graph
    values: dict[str, np.ndarray]  # every tensor of one forward pass (constants: their data)


def vit_run(root: Path, seed: int) -> VitRun:
    """One simulated forward pass of the tiny ViT on a seeded sample, every tensor kept."""
    graph = load_tflite(zoo.tiny_vit(root))
    names = tuple(t.name for t in graph.tensors if t.data is None and t.name not in graph.inputs)
    sim = Simulator(dataclasses.replace(graph, outputs=names))
    (x_name,) = graph.inputs
    scale, zp = graph.tensor(x_name).qparams
    x = zoo.sample_inputs("tiny_vit", 1, seed=seed)[0]
    q = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
    values = {x_name: q, **dict(zip(names, sim.run([q]), strict=True))}
    for t in graph.tensors:
        if t.data is not None:
            values[t.name] = np.asarray(t.data)
    return VitRun(graph, values)


def act(name: str, shape: Sequence[int], scale: float, zp: int) -> Tensor:
    return Tensor(name, tuple(shape), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(scale, zp))


def const(name: str, data: np.ndarray, quant: Quantization | None = None) -> Tensor:
    return Tensor(name, tuple(data.shape), DType.from_numpy(data.dtype), TensorKind.CONSTANT, quant, data)


def op_of(kind: OpKind, ins: Sequence[Tensor], outs: Sequence[Tensor], attrs: Any, index: int = 9) -> Op:
    return Op(kind, tuple(t.name for t in ins), tuple(t.name for t in outs), attrs, index=index)


def token_select_op(
    t: int, d: int, heads: int, k: int, p_zp: int = -128
) -> tuple[Op, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """A TOKEN_SELECT op keeping k of t tokens of width d by the class-token attention of
    ``heads`` heads, with its input and output tensors."""
    xq = Quantization.per_tensor(0.05, 3)
    x = Tensor("x", (1, t, d), DType.INT8, TensorKind.ACTIVATION, xq)
    p = Tensor("p", (1, heads, t, t), DType.INT8, TensorKind.ACTIVATION, Quantization.per_tensor(1 / 256, p_zp))
    y = Tensor("y", (1, 1 + k, d), DType.INT8, TensorKind.ACTIVATION, xq)
    idx = Tensor("idx", (1, k), DType.UINT8, TensorKind.ACTIVATION)
    return Op(OpKind.TOKEN_SELECT, ("x", "p"), ("y", "idx"), TokenSelectAttrs(k)), (x, p), (y, idx)
