"""Training runs in the simulator: epochs over a data set, with evaluation.

The frozen stage (ops before the program's first live op) does not change during
training, so its output for every sample is computed once, batched; the bytes are
those a per-sample run gives (the same kernels). Each training step then runs the
live part, the loss gradient and the backward pass for one sample (batch 1), in the
sample order of :func:`tinytrain.train.data.epoch_order`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.passes.split import prefix_graph, suffix_graph
from tinytrain.sim.forward import Simulator
from tinytrain.train.build import TrainingProgram
from tinytrain.train.data import Dataset, epoch_order, preprocess_for_graph
from tinytrain.train.executor import Executor
from tinytrain.train.kernels.schedule import Schedule, lr_multiplier, schedule_factor

FEATURE_CHUNK = 256


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 1
    lr: float = 0.05
    schedule: Schedule = Schedule.CONSTANT
    seed: int = 0


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float  # mean −ln p(label) over the epoch's steps
    train_accuracy: float  # running accuracy of the training forward passes
    test_accuracy: float | None


@dataclass(frozen=True)
class TrainReport:
    epochs: tuple[EpochReport, ...]
    steps: int
    loss_curve: tuple[float, ...] = field(default=())  # mean loss per chunk of steps

    @property
    def test_accuracy(self) -> float | None:
        return self.epochs[-1].test_accuracy if self.epochs else None


Progress = Callable[[int, float, float], None]  # (steps done, running loss, running accuracy)


class Trainer:
    def __init__(
        self,
        program: TrainingProgram,
        native_shape: tuple[int, ...],
        seed: int = 0,
        batch: int = 1,
        momentum_q15: int = 0,
    ) -> None:
        self.program = program
        self.preprocess = preprocess_for_graph(program.graph, native_shape)
        self.prefix = Simulator(prefix_graph(program.graph, program.first_live_op))
        self.executor = Executor(program, seed, batch, momentum_q15=momentum_q15)
        self.boundary = self.prefix.graph.outputs

    def features(self, images: np.ndarray) -> list[np.ndarray]:
        """The frozen stage's outputs (the live part's inputs) for native samples."""
        parts: list[list[np.ndarray]] = [[] for _ in self.boundary]
        for start in range(0, len(images), FEATURE_CHUNK):
            outs = self.prefix.run([self.preprocess(images[start : start + FEATURE_CHUNK])])
            for acc, y in zip(parts, outs, strict=True):
                acc.append(y)
        if not len(images):
            raise UsageError("no samples")
        return [np.concatenate(p, axis=0) for p in parts]

    def evaluate(self, feats: list[np.ndarray], labels: np.ndarray) -> float:
        graph = self.executor.current_graph()
        suffix = Simulator(suffix_graph(graph, self.program.first_live_op))
        logits = suffix.run(feats)[0]
        pred = np.argmax(logits.reshape(len(labels), -1), axis=1)
        return float(np.mean(pred == labels))

    def fit(
        self, train: Dataset, test: Dataset | None, config: TrainConfig, progress: Progress | None = None
    ) -> TrainReport:
        classes = self.program.loss.classes
        for ds in (train, test):
            if ds is not None and len(ds) and int(ds.labels.max()) >= classes:
                top = int(ds.labels.max())
                raise UsageError(f"data set {ds.name!r} has label {top}; the model has {classes} classes")
        if config.epochs < 0:
            raise UsageError("epochs must be >= 0")
        lr = lr_multiplier(config.lr)
        train_feats = self.features(train.images)
        test_feats = self.features(test.images) if test is not None and len(test) else None
        total = config.epochs * len(train)
        step = 0
        reports: list[EpochReport] = []
        curve: list[float] = []
        chunk_loss: list[float] = []
        for epoch in range(config.epochs):
            order = epoch_order(len(train), config.seed, epoch)
            losses = 0.0
            correct = 0
            for k, idx in enumerate(order):
                live = {name: f[idx : idx + 1] for name, f in zip(self.boundary, train_feats, strict=True)}
                label = int(train.labels[idx])
                c_t = schedule_factor(config.schedule, step, total)
                res = self.executor.step(live, label, lr, c_t)
                loss = -math.log(max(res.p_label, 1) / 65536.0)  # host-side report only
                losses += loss
                chunk_loss.append(loss)
                correct += int(res.predicted == label)
                step += 1
                if len(chunk_loss) == 100:
                    curve.append(float(np.mean(chunk_loss)))
                    chunk_loss = []
                if progress is not None:
                    progress(step, losses / (k + 1), correct / (k + 1))
            if epoch == config.epochs - 1:  # a partial last batch is applied before the final evaluation
                self.executor.flush(lr, schedule_factor(config.schedule, max(step - 1, 0), max(total, 1)))
            test_acc = self.evaluate(test_feats, test.labels) if test_feats is not None and test is not None else None
            reports.append(EpochReport(epoch, losses / max(len(train), 1), correct / max(len(train), 1), test_acc))
        if chunk_loss:
            curve.append(float(np.mean(chunk_loss)))
        return TrainReport(tuple(reports), step, tuple(curve))
