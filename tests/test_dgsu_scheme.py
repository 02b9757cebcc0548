"""DGSU schemes: the file form (update 'dynamic', layer_budget) and its errors, the presets
dgsu:ratio=R and dgsu-layers, their memory plans, plan.json and the scheme.json round trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.models.ship import MBV2, shipped
from tinytrain.train.compile import (
    KB,
    CompileOptions,
    compile_graph,
    compile_scheme,
    load_artifact,
    prepare_graph,
    write_artifact,
)
from tinytrain.train.layers import linear_layers
from tinytrain.train.planner import OverBudgetError
from tinytrain.train.scheme import Update, _blocks, get_scheme, resolve, scheme_from_mapping
from tinytrain.train.scheme_dgsu import DGSU_DEFAULT_BLOCKS, conv_weights, weight_count


@pytest.fixture(scope="module")
def graph() -> Graph:
    return prepare_graph(shipped(MBV2), 10, "zero", 0)


def _opts(scheme: str, sram: int = 256 * KB) -> CompileOptions:
    return CompileOptions(scheme, classes=10, sample_bytes=784, sram_bytes=sram)


def _file(graph: Graph, data: dict[str, object]) -> None:
    resolve(scheme_from_mapping(data), graph)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"layers": [{"layer": 42, "update": "dynamic"}]}, "needs 'ratio' or 'count'"),
        ({"layers": [{"layer": 42, "update": "dynamic", "ratio": 0.0}]}, "ratio must be in"),
        ({"layers": [{"layer": 42, "update": "dynamic", "ratio": 1.5}]}, "ratio must be in"),
        ({"layers": [{"layer": 42, "update": "dynamic", "count": 100000}]}, "asks for more"),
        ({"layers": [{"layer": 42, "update": "dynamic", "count": 4, "ratio": 0.1}]}, "at most one"),
        ({"layers": [{"layer": 42, "update": "dynamic", "count": 4, "explore": 5}]}, "explore 5 is more"),
        ({"layers": [{"layer": 42, "update": "dynamic", "count": 4, "explore": -1}]}, "non-negative"),
        ({"layers": [{"layer": 42, "update": "full", "explore": 1}]}, "only applies to update 'dynamic'"),
        ({"layers": [{"layer": 42, "update": "bias", "count": 3}]}, r"only apply to update .channels. \(or"),
        ({"default": "dynamic", "layers": []}, "default cannot be 'dynamic'"),
        ({"layer_budget": 1, "layers": [{"layer": 42, "update": "full"}]}, "needs layers with update 'dynamic'"),
        (
            {"layer_budget": 3, "layers": [{"layer": 42, "update": "dynamic"}, {"layer": 45, "update": "dynamic"}]},
            "layer_budget 3 is more than the 2",
        ),
        ({"layer_budget": 0, "layers": [{"layer": 42, "update": "dynamic"}]}, "layer_budget"),
        ({"layer_explore": 1, "layers": [{"layer": 42, "update": "dynamic", "count": 2}]}, "needs 'layer_budget'"),
        ({"layer_budget": 1, "layer_explore": 2, "layers": [{"layer": 42, "update": "dynamic"}]}, "layer_explore 2"),
    ],
)
def test_file_errors(graph: Graph, data: dict[str, object], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        _file(graph, data)


def test_file_resolution(graph: Graph) -> None:
    layers = linear_layers(graph)
    conv = layers[42]
    dw = next(lay for lay in layers if lay.kind is OpKind.DEPTHWISE_CONV_2D and lay.index > 40)
    s = resolve(
        scheme_from_mapping(
            {
                "layers": [
                    {"layer": "conv42", "update": "dynamic", "ratio": 0.05},
                    {"layer": dw.index, "update": "dynamic", "count": 8, "explore": 8},
                    {"layer": -1, "update": "full"},
                ]
            }
        ),
        graph,
    )
    by = {p.layer.index: p for p in s.layers}
    d = by[42].dynamic
    assert d is not None and d.rows == conv.out_channels
    assert d.k == max(1, math.floor(0.05 * conv.out_channels)) and d.explore == math.ceil(d.k / 4)
    assert by[42].channels == tuple(range(conv.in_channels))  # the whole weight trains
    assert by[42].update is Update.DYNAMIC and by[42].trains_bias and by[42].trains_weights
    dd = by[dw.index].dynamic
    assert dd is not None and (dd.k, dd.explore, dd.candidate) == (8, 8, -1)
    assert s.layer_select is None
    summary = {r["layer"]: r for r in s.summary()}
    assert summary["conv42"]["dgsu"] == {"rows": d.rows, "k": d.k, "explore": d.explore, "candidate": -1}


def test_file_layer_budget(graph: Graph) -> None:
    data = {
        "layer_budget": 2,
        "layers": [
            {"layer": 42, "update": "dynamic"},
            {"layer": 45, "update": "dynamic", "count": 5},
            {"layer": 48, "update": "dynamic"},
        ],
    }
    s = resolve(scheme_from_mapping(data), graph)
    assert s.layer_select is not None
    assert s.layer_select.candidates == (42, 45, 48) and s.layer_select.budget == 2
    assert s.layer_select.explore == 1  # ⌈2/4⌉
    cands = [p.dynamic for p in s.dynamic]
    assert [c.candidate for c in cands if c] == [0, 1, 2]
    assert [c.k == c.rows for c in cands if c] == [True, False, True]


def test_depthwise_multiplier_refused() -> None:
    """A depthwise conv with a depth multiplier cannot train weights (its input is not its rows)."""
    from tinytrain.train.layers import Layer
    from tinytrain.train.scheme import _check_weight_input

    g = prepare_graph(shipped(MBV2), 10, "zero", 0)
    lay = next(x for x in linear_layers(g) if x.kind is OpKind.DEPTHWISE_CONV_2D)
    fake = Layer(lay.index, lay.name, lay.op_index, lay.kind, linear_layers(g)[0].input, lay.weight, lay.bias,
                 lay.output, lay.in_channels, lay.out_channels, lay.kernel)  # fmt: skip
    with pytest.raises(UsageError, match="depth multiplier"):
        _check_weight_input(g, fake, "t")


def test_preset_ratio(graph: Graph) -> None:
    layers = linear_layers(graph)
    s = resolve(get_scheme("dgsu:ratio=0.02", graph), graph)
    blocks = _blocks(layers)[-DGSU_DEFAULT_BLOCKS:]
    cands = sorted(i for b in blocks for r, i in b.items() if r in ("expand", "project"))
    assert [p.layer.index for p in s.dynamic] == cands
    f = 0.02 * conv_weights(layers) / sum(weight_count(layers[i]) for i in cands)
    for p in s.dynamic:
        assert p.dynamic is not None and p.dynamic.k == math.ceil(f * p.dynamic.rows)
    per_step = sum(weight_count(p.layer) // p.layer.out_channels * p.dynamic.k for p in s.dynamic if p.dynamic)
    assert 0.02 <= per_step / conv_weights(layers) < 0.03
    first = min(blocks[0].values())
    assert all(p.trains_bias == (p.layer.index >= first) for p in s.layers)
    assert s.layers[-1].update is Update.FULL
    s2 = resolve(get_scheme("dgsu:ratio=0.02,weights=48+50,explore=0", graph), graph)
    assert [p.layer.index for p in s2.dynamic] == [48, 50]
    assert all(p.dynamic is not None and p.dynamic.explore == 0 for p in s2.dynamic)
    s3 = resolve(get_scheme("dgsu:ratio=0.02,weights=-3", graph), graph)  # one index keeps its sign
    assert [p.layer.index for p in s3.dynamic] == [layers[-3].index]
    n = len(layers)
    for spec in ("dgsu:ratio=0.02,weights=48,bias=9", "dgsu-layers:weights=48,bias=9"):  # biases as tte:bias=9
        s4 = resolve(get_scheme(spec, graph), graph)
        assert [p.layer.index for p in s4.dynamic] == [48]
        assert [p.layer.index for p in s4.layers if p.trains_bias] == [i for i in range(n) if i >= n - 9]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("dgsu", "needs ratio"),
        ("dgsu:ratio=0", "must be in"),
        ("dgsu:ratio=0.5,blocks=1", "more blocks"),
        ("dgsu:ratio=0.02,blocks=99", "blocks=99"),
        ("dgsu:ratio=0.02,blocks=2,weights=40", "not both"),
        ("dgsu:ratio=0.02,explore=2", "explore"),
        ("dgsu:ratio=0.02,size=3", "bad parameter"),
        ("dgsu:ratio=0.02,weights=48+-1", "classifier"),
        ("dgsu:ratio=0.02,weights=48,bias=2", r"bias=2 must be in \d+\.\.\d+: .*include every candidate"),
        ("dgsu-layers:weights=48,bias=x", "bias must be"),
        ("dgsu-layers:layers=99", "layers=99"),
        ("dgsu-layers:ratio=2", "must be in"),
    ],
)
def test_preset_errors(graph: Graph, spec: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve(get_scheme(spec, graph), graph)


def test_preset_layers(graph: Graph) -> None:
    s = resolve(get_scheme("dgsu-layers", graph), graph)
    assert s.layer_select is not None and s.layer_select.budget == 2 and s.layer_select.explore == 1
    assert all(p.dynamic is not None and p.dynamic.k == p.dynamic.rows for p in s.dynamic)
    s = resolve(get_scheme("dgsu-layers:layers=3,ratio=0.25,blocks=2", graph), graph)
    assert s.layer_select is not None and s.layer_select.budget == 3 and len(s.layer_select.candidates) == 4
    assert all(p.dynamic is not None and p.dynamic.k == max(1, int(0.25 * p.dynamic.rows)) for p in s.dynamic)


@pytest.mark.parametrize("spec", ["dgsu:ratio=0.02", "dgsu-layers:layers=3,ratio=0.25"])
def test_plan_holds_the_maximum_k(graph: Graph, spec: str, tmp_path: Path) -> None:
    """The plan is static: every DGSU buffer is sized for the layer's k (and all rows), the ages
    and the whole trainable weights persist; plan.json and scheme.json carry the selection."""
    c = compile_graph(graph, spec, _opts(spec))
    assert c.plan.peak_live <= 256 * KB
    names = {b.name: b for b in c.plan.buffers}
    for p in c.scheme.dynamic:
        d = p.dynamic
        assert d is not None
        w = p.layer.weight
        assert names[f"train:{w}"].size == weight_count(p.layer)  # every row can be chosen
        assert names[f"dgsu_sel:{w}"].size >= 4 + 2 * d.k + d.rows
        assert names[f"dgsu_bgrad:{w}"].size == 8 * d.rows
        if d.k < d.rows:
            age = names[f"dgsu_age:{p.layer.name}"]
            assert age.size == 2 * d.rows and age.first == 0 and age.last == len(c.memory.steps) - 1
    if c.scheme.layer_select is not None:
        assert {"dgsu_layer_score", "dgsu_layer_ema", "dgsu_layer_age", "dgsu:layers"} <= set(names)
    out = tmp_path / "prog"
    write_artifact(c, out)
    plan = json.loads((out / "plan.json").read_text())
    dg = plan["scheme"]["dgsu"]
    assert dg["conv_weights"] == conv_weights(linear_layers(graph)) and 0 < dg["fraction_per_step"] <= 1
    rows = [r for r in plan["scheme"]["layers"] if "dgsu" in r]
    assert len(rows) == len(c.scheme.dynamic) and all(r["dgsu"]["k"] <= r["dgsu"]["rows"] for r in rows)
    again = load_artifact(out)  # scheme.json round trip: the same resolved scheme
    assert again.scheme.layers == c.scheme.layers and again.scheme.layer_select == c.scheme.layer_select


def test_budget_error_names_the_peak(graph: Graph) -> None:
    with pytest.raises(OverBudgetError, match=r"needs .* KB, budget .* KB.*live at the peak.*train:"):
        compile_scheme(graph, get_scheme("dgsu:ratio=0.02", graph), _opts("dgsu:ratio=0.02", sram=100 * KB))


def test_dynamic_steps_not_fused(graph: Graph) -> None:
    """A DGSU layer's row loop reads its own masked output gradient: it is never the streamed
    expansion/depthwise part of a fused backward step."""
    c = compile_graph(graph, "dgsu:ratio=0.02", _opts("dgsu:ratio=0.02"))
    for st in c.program.backward:
        for part in (st.fused_with, st if st.fused is not None else None):
            assert part is None or part.layer is None or part.layer.dynamic is None


@pytest.mark.parametrize(("batch", "momentum"), [(2, 0.0), (1, 0.9)])
def test_accumulation_and_momentum_refused(graph: Graph, batch: int, momentum: float) -> None:
    opts = CompileOptions("dgsu:ratio=0.02", classes=10, sample_bytes=784, batch=batch, momentum=momentum)
    with pytest.raises(UsageError, match="DGSU"):
        compile_graph(graph, "dgsu:ratio=0.02", opts)


def test_cli_compile_and_simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``compile`` with a DGSU preset writes the selection into plan.json; ``simulate --json``
    reports the conv weights updated per step and over the run; ``--save-weights`` holds the ages."""
    import numpy as np

    from tinytrain.cli import main
    from tinytrain.models.ship import CHECKPOINT

    out = tmp_path / "prog"
    spec = "dgsu-layers:layers=3,ratio=0.25"
    assert main(["compile", str(shipped(CHECKPOINT)), "--scheme", spec, "--classes", "10", "--sample-shape",
                 "28x28", "-o", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["scheme"]["dgsu"]["layer_budget"] == 3
    w = tmp_path / "w.npz"
    args = ["simulate", str(out), "--data", "fashion-mnist", "--train-samples", "12", "--test-samples", "4"]
    assert main([*args, "--json", "--save-weights", str(w)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    dg = res["dgsu"]
    assert 0 < dg["fraction_per_step"] <= plan["scheme"]["dgsu"]["fraction_per_step"]
    assert dg["fraction_over_run"] >= dg["fraction_per_step"]
    with np.load(w) as f:
        assert f["dgsu_layer_age"].dtype == np.uint16 and f["dgsu_layer_score"].dtype == np.int64
        assert any(k.startswith("dgsu_age:") for k in f.files)
