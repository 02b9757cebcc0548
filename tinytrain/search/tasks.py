"""The work a search hands to its executor: pure functions of their arguments.

* :func:`compute_features` runs a slice of the frozen network (ops ``start … stop−1``)
  on a chunk of samples: from the native images when ``start`` is 0, else from the
  outputs of an earlier slice. The bytes are those of the training loop's own frozen
  stage (the same kernels).
* :func:`run_evaluation` trains one scheme for a short run from those features, in the
  integer simulator (one sample per step, as the device), and measures the accuracy and
  mean cross-entropy of the trained model on a validation subset.

Each call takes the model as ``.tflite`` bytes (:func:`tinytrain.frontends.tflite_writer.write_tflite`
of the prepared graph) so it runs the same on any worker of a cluster.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir.graph import Graph
from tinytrain.passes.split import prefix_graph, suffix_graph
from tinytrain.sim.forward import Simulator
from tinytrain.train.build import TrainingProgram
from tinytrain.train.compile import CompileOptions, compile_scheme
from tinytrain.train.data import Dataset, preprocess_for_graph
from tinytrain.train.kernels.schedule import Schedule
from tinytrain.train.loop import TrainConfig, Trainer
from tinytrain.train.scheme import scheme_from_mapping

Features = dict[str, np.ndarray]  # boundary tensor name -> samples on axis 0
UNLIMITED = 1 << 40


@dataclass(frozen=True)
class RunSettings:
    """How a candidate is trained and judged (part of every evaluation's cache key)."""

    lr: float
    epochs: int
    seed: int
    schedule: str = "constant"

    def to_json(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "seed": self.seed, "schedule": self.schedule}


def slice_graph(graph: Graph, start: int, stop: int) -> Graph:
    """Ops ``start … stop−1`` of ``graph``: inputs the boundary at ``start``, outputs the
    boundary at ``stop``."""
    return prefix_graph(suffix_graph(graph, start) if start else graph, stop - start)


def compute_features(
    model: bytes, start: int, stop: int, inputs: Features | np.ndarray, native_shape: tuple[int, ...]
) -> Features:
    """The boundary tensors at op ``stop`` for a chunk of samples (see the module docstring)."""
    graph = load_tflite(model)
    g = slice_graph(graph, start, stop)
    sim = Simulator(g)
    if start == 0:
        assert isinstance(inputs, np.ndarray)
        args = [preprocess_for_graph(graph, native_shape)(inputs)]
    else:
        assert isinstance(inputs, dict)
        args = [inputs[name] for name in g.inputs]
    outs = sim.run(args)
    return dict(zip(g.outputs, outs, strict=True))


class _PreloadedTrainer(Trainer):
    """A :class:`Trainer` whose "images" are sample indices into precomputed features."""

    def __init__(self, program: TrainingProgram, native_shape: tuple[int, ...], seed: int, feats: Features) -> None:
        super().__init__(program, native_shape, seed)
        self._feats = feats

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        return [self._feats[name][images] for name in self.boundary]


def logits_metrics(graph: Graph, logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean cross-entropy in nats) of int8 logits, dequantized."""
    q = graph.tensor(graph.outputs[0]).quant
    z = logits.reshape(len(labels), -1).astype(np.float64)
    if q is not None:
        z = (z - q.zero_point[0]) * q.scale[0]
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    acc = float(np.mean(np.argmax(z, axis=1) == labels))
    loss = float(-np.mean(logp[np.arange(len(labels)), labels]))
    return acc, loss


def run_evaluation(
    model: bytes,
    scheme: Mapping[str, Any],
    native_shape: tuple[int, ...],
    train_feats: Features,
    train_labels: np.ndarray,
    val_feats: Features,
    val_labels: np.ndarray,
    settings: RunSettings,
) -> dict[str, Any]:
    """Trains ``scheme`` on the training features and scores it on the validation ones."""
    t0 = time.perf_counter()
    graph = load_tflite(model)
    s = scheme_from_mapping(dict(scheme))
    c = compile_scheme(graph, s, CompileOptions(s.name, sram_bytes=UNLIMITED, flash_bytes=UNLIMITED))
    trainer = _PreloadedTrainer(c.program, native_shape, settings.seed, train_feats)
    train = Dataset("search-train", np.arange(len(train_labels), dtype=np.int64), np.asarray(train_labels))
    schedule = Schedule(settings.schedule)
    config = TrainConfig(epochs=settings.epochs, lr=settings.lr, schedule=schedule, seed=settings.seed)
    report = trainer.fit(train, None, config)
    suffix = Simulator(suffix_graph(trainer.executor.current_graph(), c.program.first_live_op))
    logits = suffix.run([val_feats[name] for name in suffix.graph.inputs])[0]
    acc, loss = logits_metrics(graph, logits, np.asarray(val_labels))
    last = report.epochs[-1] if report.epochs else None
    return {
        "accuracy": acc,
        "loss": loss,
        "train_loss": last.train_loss if last is not None else None,
        "train_accuracy": last.train_accuracy if last is not None else None,
        "steps": report.steps,
        "seconds": round(time.perf_counter() - t0, 3),
    }
