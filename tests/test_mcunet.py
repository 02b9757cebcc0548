"""MCUNet / tiny-training checkpoints: synthetic checkpoint → IR → simulator == TFLite Micro."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinytrain.frontends.mcunet import export_mcunet_tflite, load_mcunet, pytorch_padding
from tinytrain.frontends.mcunet_synthetic import make_synthetic_checkpoint
from tinytrain.frontends.tflite import load_tflite
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, Conv2DAttrs, DepthwiseConv2DAttrs, OpKind, Padding
from tinytrain.ir.tensor import TensorKind
from tinytrain.sim.fixedpoint import quantize_multiplier
from tinytrain.sim.forward import Simulator
from tinytrain.testing.tflm import run_tflm

# name -> make_synthetic_checkpoint keywords. "odd" reaches stride-2 convs on odd sizes
# (13 → 7 → 4, TFLite SAME equals PyTorch padding) and 5×5 / 7×7 depthwise kernels.
CONFIGS: dict[str, dict[str, Any]] = {
    "mbv2": {"resolution": 48, "num_blocks": 5, "seed": 0},
    "odd": {"resolution": 52, "num_blocks": 7, "kernel_sizes": (5, 7, 3), "width": 0.5, "num_classes": 12, "seed": 3},
}
N_SAMPLES = 24


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mcunet")
    return {name: make_synthetic_checkpoint(root / f"{name}.pkl", **kw) for name, kw in CONFIGS.items()}


def _inputs(graph: Graph, seed: int, n: int = N_SAMPLES) -> np.ndarray:
    shape = graph.tensor(graph.inputs[0]).shape
    return np.random.default_rng(seed).integers(-128, 128, (n, *shape[1:]), dtype=np.int8)


def _raw(path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        obj = pickle.loads(zf.read("archive/data.pkl"))
    assert isinstance(obj, dict)
    return obj


def _convs(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = [("first_conv", raw["first_conv"])]
    for i, b in enumerate(raw["blocks"]):
        out += [(f"blocks.{i}.{k}", b[k]) for k in ("pointwise1", "depthwise", "pointwise2") if b[k] is not None]
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_simulator_equals_tflm_on_exported_model(name: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    graph = load_mcunet(checkpoints[name])
    model = export_mcunet_tflite(checkpoints[name], tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").read_bytes() == model == write_tflite(graph)
    x = _inputs(graph, seed=10)
    (want,) = run_tflm(model, [x])
    (got,) = Simulator(graph).run([x])
    assert got.dtype == np.int8 and got.shape == (N_SAMPLES, CONFIGS[name].get("num_classes", 10))
    assert np.array_equal(got, want)
    assert len({bytes(r) for r in got}) > N_SAMPLES // 2  # logits depend on the image


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_intermediate_tensor_matches_tflm(name: str, checkpoints: dict[str, Path]) -> None:
    """All activations exposed as outputs: dead and flushed channels included, byte for byte."""
    graph = load_mcunet(checkpoints[name])
    acts = tuple(t.name for t in graph.tensors if t.kind is TensorKind.ACTIVATION)
    probe = graph.with_changes(outputs=acts)
    x = _inputs(graph, seed=20, n=8)
    want = run_tflm(write_tflite(probe), [x])
    got = Simulator(probe).run([x])
    assert len(got) == len(want) == len(acts)
    for tensor_name, g, w in zip(acts, got, want, strict=True):
        assert np.array_equal(g, w.reshape(g.shape)), tensor_name


def test_dead_channels_are_exercised_and_constant(checkpoints: dict[str, Path]) -> None:
    path = checkpoints["mbv2"]
    raw = _raw(path)
    graph = load_mcunet(path)
    x = _inputs(graph, seed=30, n=8)
    names = [name for name, _ in _convs(raw)]
    outs = dict(zip(names, run_tflm(write_tflite(graph.with_changes(outputs=tuple(f"{n}.y" for n in names))), [x]),
                    strict=True))
    flushed = live_dead = 0
    for name, conv in _convs(raw):
        p = conv["params"]
        dead = np.flatnonzero(np.abs(p["weight"].reshape(len(p["bias"]), -1)).max(axis=1) == 0)
        if len(dead) == 0:
            continue
        assert np.all(np.abs(p["bias"][dead].astype(np.int64)) == 2**31 - 1), name  # saturated, as in real files
        y = outs[name]
        for c in dead:
            eff = float(np.float32(p["x_scale"])) * float(p["w_scales"][c]) / float(np.float32(p["y_scale"]))
            q, _ = quantize_multiplier(eff)
            flushed += q == 0
            live_dead += q != 0
            values = np.unique(y[..., c])
            assert len(values) == 1, (name, c)  # a dead channel outputs a constant
            if q == 0:
                assert values[0] == max(p["y_zero"], -128)
    assert flushed >= 1 and live_dead >= 3


@pytest.mark.parametrize("name", list(CONFIGS))
def test_graph_structure_follows_the_checkpoint(name: str, checkpoints: dict[str, Path]) -> None:
    raw = _raw(checkpoints[name])
    graph = load_mcunet(checkpoints[name])
    x = graph.tensor(graph.inputs[0])
    first = raw["first_conv"]
    assert x.shape == (1, first["in_shape"], first["in_shape"], 3)
    assert x.quant is not None and x.quant.scale == (float(np.float32(1 / 127.5)),) and x.quant.zero_point == (0,)
    assert all(op.kind not in (OpKind.RELU, OpKind.RELU6) for op in graph.ops)
    producer = graph.producer()
    n_pad = 0
    for cname, conv in _convs(raw):
        op = graph.ops[producer[f"{cname}.y"]]
        attrs = op.attrs
        assert isinstance(attrs, (Conv2DAttrs, DepthwiseConv2DAttrs)) and attrs.activation is Activation.NONE
        p = conv["params"]
        k, s, n = conv["kernel_size"][0], conv["stride"], conv["in_shape"]
        needs_pad = pytorch_padding(n, k, s)[1] is None
        assert needs_pad == (s == 2 and n % 2 == 0 and k > 1), cname
        src = graph.tensor(op.inputs[0])  # type: ignore[arg-type]
        if needs_pad:
            n_pad += 1
            pad_op = graph.ops[producer[src.name]]
            assert pad_op.kind is OpKind.PAD and attrs.padding is Padding.VALID
            paddings = graph.tensor(pad_op.inputs[1]).data  # type: ignore[arg-type]
            assert paddings is not None and paddings.tolist() == [[0, 0], [k // 2, k // 2], [k // 2, k // 2], [0, 0]]
            assert src.quant == graph.tensor(pad_op.inputs[0]).quant  # type: ignore[arg-type]  # pad value = x_zero
        else:
            assert attrs.padding is (Padding.VALID if k == 1 else Padding.SAME)
        w = graph.tensor(op.inputs[1]).data  # type: ignore[arg-type]
        b = graph.tensor(op.inputs[2]).data  # type: ignore[arg-type]
        assert w is not None and b is not None
        if conv["depthwise"]:
            assert op.kind is OpKind.DEPTHWISE_CONV_2D
            assert np.array_equal(w[0], p["weight"][:, 0].transpose(1, 2, 0))  # [C,1,kh,kw] -> [1,kh,kw,C]
        else:
            assert op.kind is OpKind.CONV_2D
            assert np.array_equal(w, p["weight"].transpose(0, 2, 3, 1))  # OIHW -> OHWI
        assert np.array_equal(b, p["bias"])
        wq = graph.tensor(op.inputs[1]).quant  # type: ignore[arg-type]
        assert wq is not None and wq.scale == tuple(float(v) for v in p["w_scales"])
        yq = graph.tensor(f"{cname}.y").quant
        assert yq is not None and yq.scale == (float(np.float32(p["y_scale"])),) and yq.zero_point == (p["y_zero"],)
    assert n_pad >= 2
    adds = [op for op in graph.ops if op.kind is OpKind.ADD]
    assert len(adds) == sum(b["residual"] is not None for b in raw["blocks"]) >= 2
    tail = [op.kind for op in graph.ops[-3:]]
    assert tail == [OpKind.AVERAGE_POOL_2D, OpKind.RESHAPE, OpKind.FULLY_CONNECTED]
    assert graph.tensor(graph.outputs[0]).shape == (1, raw["classifier"]["out_channel"])


def test_export_reads_back_as_the_same_graph(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    graph = load_mcunet(checkpoints["odd"])
    back = load_tflite(export_mcunet_tflite(checkpoints["odd"], tmp_path / "odd.tflite"))
    assert [t.name for t in back.tensors] == [t.name for t in graph.tensors]
    for a, b in zip(graph.tensors, back.tensors, strict=True):
        assert (a.shape, a.dtype, a.quant) == (b.shape, b.dtype, b.quant), a.name
        if a.data is None:
            assert b.data is None, a.name
        else:
            assert b.data is not None and np.array_equal(a.data, b.data), a.name
    assert back.ops == graph.ops


# --- semantics: the exported integer program follows tiny-training's quantized ops -------


def _tte_conv(conv: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """tiny-training's QuantizedConv2d in float64 (NCHW, symmetric zero padding, float requant)."""
    p = conv["params"]
    w = p["weight"].astype(np.float64)
    k, s = w.shape[2], conv["stride"]
    xp = np.pad(x - p["x_zero"], ((0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s]
    if conv["groups"] == 1:
        acc = np.einsum("nchwij,ocij->nohw", win, w)
    else:
        acc = np.einsum("nchwij,cij->nchw", win, w[:, 0])
    acc = acc + p["bias"].astype(np.float64)[None, :, None, None]
    y = acc * (p["x_scale"] * p["w_scales"].astype(np.float64) / p["y_scale"])[None, :, None, None]
    return np.clip(np.round(y) + p["y_zero"], -128, 127)


def _tte_forward(raw: dict[str, Any], x_nhwc: np.ndarray) -> np.ndarray:
    x = x_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
    x = _tte_conv(raw["first_conv"], x)
    for b in raw["blocks"]:
        block_in = x
        if b["pointwise1"] is not None:
            x = _tte_conv(b["pointwise1"], x)
        x = _tte_conv(b["pointwise2"], _tte_conv(b["depthwise"], x))
        if b["residual"] is not None:
            r, p2 = b["residual"]["params"], b["pointwise2"]["params"]
            real = (block_in - r["x_zero"]) * r["x_scale"] + (x - p2["y_zero"]) * p2["y_scale"]
            x = np.clip(np.round(real / r["y_scale"]) + r["y_zero"], -128, 127)
    x = np.round(x.mean(axis=(2, 3), keepdims=True))
    return _tte_conv(raw["classifier"], x)[:, :, 0, 0]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_exported_model_follows_tiny_training_semantics(name: str, checkpoints: dict[str, Path]) -> None:
    """Only rounding differs (TFLite fixed point vs float requantization): logits stay within a few LSB.
    (A one-pixel padding shift, for instance, gives differences of tens of LSB.)"""
    graph = load_mcunet(checkpoints[name])
    x = _inputs(graph, seed=40)
    (ours,) = run_tflm(write_tflite(graph), [x])
    ref = _tte_forward(_raw(checkpoints[name]), x)
    diff = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
    assert diff.mean() < 1.5 and diff.max() <= 6
    assert np.mean(ours.argmax(axis=1) == ref.argmax(axis=1)) >= 0.9


# --- the synthetic checkpoint has the real format -----------------------------------------


def test_synthetic_checkpoint_has_the_real_layout(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = checkpoints["mbv2"]
    with zipfile.ZipFile(path) as zf:
        assert [i.filename for i in zf.infolist()] == ["archive/data.pkl", "archive/version"]
        assert zf.read("archive/version") == b"3\n"
        data = zf.read("archive/data.pkl")
    assert data[:2] == b"\x80\x02" and b"numpy.core.multiarray\n_reconstruct" in data
    raw = pickle.loads(data)
    assert list(raw) == ["first_conv", "blocks", "feature_mix", "classifier"] and raw["feature_mix"] is None
    conv_keys = ["in_channel", "in_shape", "out_channel", "out_shape", "kernel_size", "stride", "groups", "depthwise",
                 "act", "params"]
    param_keys = ["weight", "bias", "x_scale", "x_zero", "y_scale", "y_zero", "w_scales"]
    for _, conv in _convs(raw):
        assert list(conv) == conv_keys and list(conv["params"]) == param_keys
        p = conv["params"]
        assert (p["weight"].dtype, p["bias"].dtype, p["w_scales"].dtype) == (np.int8, np.int32, np.float32)
        assert type(p["x_scale"]) is float and type(p["x_zero"]) is int
    for b in raw["blocks"]:
        assert list(b) == ["pointwise1", "depthwise", "pointwise2", "residual", "se"] and b["se"] is None
    assert list(raw["classifier"]) == ["in_channel", "out_channel", "params", "kernel_size", "stride", "groups"]
    assert raw["first_conv"]["params"]["x_scale"] == 1 / 127.5 and raw["first_conv"]["params"]["x_zero"] == 0
    # Deterministic for a seed, different across seeds.
    again = make_synthetic_checkpoint(tmp_path / "again.pkl", **CONFIGS["mbv2"])
    other = make_synthetic_checkpoint(tmp_path / "other.pkl", **{**CONFIGS["mbv2"], "seed": 1})
    assert again.read_bytes() == path.read_bytes() != other.read_bytes()


def test_pytorch_padding_rule() -> None:
    for n in range(3, 40):
        for k in (1, 3, 5, 7):
            for s in (1, 2):
                if k > n:
                    continue
                out, pad = pytorch_padding(n, k, s)
                assert out == (n + 2 * (k // 2) - k) // s + 1
                if s == 1 or n % 2 == 1 or k == 1:
                    assert pad is (Padding.VALID if k == 1 else Padding.SAME), (n, k, s)
                else:
                    assert pad is None, (n, k, s)
