"""The shipped pretrained tiny ViT (Fashion-MNIST 0-4, tinytrain.models.pretrain_vit)."""

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
from tinytrain.models.pretrain import SOURCE_CLASSES
from tinytrain.models.pretrain_vit import MODEL_NAME
from tinytrain.passes.replace_head import replace_head
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm
from tinytrain.train.compile import CompileOptions, compile_graph, prepare_graph
from tinytrain.train.data import first_per_class, load_dataset, preprocess_for_graph, select_classes

MODEL = Path(__file__).resolve().parent.parent / "tinytrain" / "data" / MODEL_NAME
KB = 1024

pytestmark = pytest.mark.skipif(
    not FASHION_MNIST_DIR.exists(), reason="Debian's dataset-fashion-mnist is not installed"
)


def test_shipped_vit_matches_its_provenance() -> None:
    data = MODEL.read_bytes()
    record = json.loads(MODEL.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
    assert record["float_test_accuracy"] > 0.8 and record["int8_test_accuracy"] > 0.8
    assert abs(record["float_test_accuracy"] - record["int8_test_accuracy"]) < 0.02
    graph = load_model(MODEL)
    x, y = graph.tensor(graph.inputs[0]), graph.tensor(graph.outputs[0])
    assert x.shape == (1, 32, 32, 3) and x.dtype is DType.INT8
    assert y.shape == (1, len(SOURCE_CLASSES)) and y.dtype is DType.INT8


def test_shipped_vit_classifies_and_matches_tflm_with_a_new_head() -> None:
    graph = load_model(MODEL)
    test = first_per_class(select_classes(load_dataset("fashion-mnist", "test"), SOURCE_CLASSES), 20)
    x = preprocess_for_graph(graph, test.sample_shape)(test.images)
    (logits,) = Simulator(graph).run([x])
    assert np.mean(np.argmax(logits.astype(np.int32), axis=1) == test.labels) > 0.7
    (ref,) = run_tflm(MODEL.read_bytes(), [x[:3]])
    assert np.array_equal(logits[:3], ref)
    new = replace_head(graph, 10, "seeded", seed=0)
    (ours,) = Simulator(new).run([x[:2]])
    (ref10,) = run_tflm(write_tflite(new), [x[:2]])
    assert ours.shape == (2, 10) and np.array_equal(ours, ref10)


@pytest.mark.parametrize("scheme", ["vit-last:1", "bsr:blocks=2+3,drop_at=1,keep=0.5"])
def test_shipped_vit_training_programs_fit_256kb(scheme: str) -> None:
    graph = prepare_graph(MODEL, 10, "zero", 0)
    c = compile_graph(graph, scheme, CompileOptions(scheme, sram_bytes=256 * KB, sample_bytes=28 * 28))
    assert 0 < c.plan.peak_live <= 256 * KB
