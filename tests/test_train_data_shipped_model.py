"""The shipped pretrained model (Fashion-MNIST 0-4) through the integer data pipeline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tinytrain.datasets import FASHION_MNIST_DIR
from tinytrain.frontends.load import load_model
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.models.pretrain import MODEL_NAME, SOURCE_CLASSES
from tinytrain.passes.replace_head import replace_head
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm
from tinytrain.train.data import first_per_class, load_dataset, preprocess_for_graph, select_classes

MODEL = Path(__file__).resolve().parent.parent / "tinytrain" / "data" / MODEL_NAME

pytestmark = pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed"
)


def test_shipped_model_matches_its_provenance() -> None:
    data = MODEL.read_bytes()
    record = json.loads(MODEL.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
    assert record["float_test_accuracy"] > 0.85 and record["int8_test_accuracy"] > 0.85
    graph = load_model(MODEL)
    x, y = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    assert x.shape == (1, 128, 128, 3) and x.dtype is DType.INT8
    assert y.shape == (1, len(SOURCE_CLASSES)) and y.dtype is DType.INT8


def test_shipped_model_classifies_source_task_and_takes_a_new_head() -> None:
    graph = load_model(MODEL)
    test = first_per_class(select_classes(load_dataset("fashion-mnist", "test"), SOURCE_CLASSES), 16)
    prep = preprocess_for_graph(graph, test.sample_shape)
    x = prep(test.images)
    (logits,) = Simulator(graph).run([x])
    assert np.mean(np.argmax(logits.astype(np.int32), axis=1) == test.labels) > 0.75
    new = replace_head(graph, 10, "seeded", seed=0)
    (ours,) = Simulator(new).run([x[:2]])
    (ref,) = run_tflm(write_tflite(new), [x[:2]])
    assert ours.shape == (2, 10) and np.array_equal(ours, ref)
