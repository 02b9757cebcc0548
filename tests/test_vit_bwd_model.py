"""The ViT backward kernels on every op instance of the converted tiny ViT.

The model is rebuilt once per session (``zoo.tiny_vit``), the simulator runs one
calibration-like sample keeping every intermediate int8 tensor, and each BATCH_MATMUL,
SOFTMAX, MUL, SUB, MEAN, RSQRT, TRANSPOSE, STRIDED_SLICE and CONCATENATION instance gets a
random output gradient; its integer input gradients are compared with float64 autodiff
at the real (dequantized) forward values, within the bounds of ``test_vit_bwd_units``.
The layer-norm kernels are also composed through each whole layer norm and compared with
autodiff of the float layer norm.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.test_vit_bwd_units import (
    check_batch_matmul,
    check_concatenation,
    check_mean,
    check_mul,
    check_rsqrt,
    check_softmax,
    check_strided_slice,
    check_sub,
    check_transpose,
    deq,
    rand_grad,
    vjp,
)
from tinytrain.frontends.tflite import load_tflite
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind
from tinytrain.sim.forward import Simulator
from tinytrain.testing import zoo
from tinytrain.train.executor import add_grads
from tinytrain.train.kernels import attn_bwd, layout_bwd, norm_bwd, shape_bwd
from tinytrain.train.kernels.gradient import grad_to_float

# (op, inputs, output, input arrays, output gradient) -> max error per input, in units of the last place
Check = Callable[..., dict[int, float]]
CHECKS: dict[OpKind, Check] = {
    OpKind.BATCH_MATMUL: check_batch_matmul,
    OpKind.MUL: check_mul,
    OpKind.SUB: check_sub,
    OpKind.MEAN: check_mean,
    OpKind.TRANSPOSE: check_transpose,
    OpKind.STRIDED_SLICE: check_strided_slice,
    OpKind.CONCATENATION: check_concatenation,
}
EXPECTED = {
    OpKind.BATCH_MATMUL: 8,
    OpKind.SOFTMAX: 4,
    OpKind.MUL: 23,
    OpKind.SUB: 9,
    OpKind.MEAN: 18,
    OpKind.RSQRT: 9,
    OpKind.TRANSPOSE: 16,
    OpKind.STRIDED_SLICE: 1,
    OpKind.CONCATENATION: 1,
}


@dataclasses.dataclass(frozen=True)
class VitRun:
    graph: Graph
    values: dict[str, np.ndarray]  # every int8 tensor of one forward pass (constants: their data)


@pytest.fixture(scope="session")
def vit_run(tmp_path_factory: pytest.TempPathFactory) -> VitRun:
    cache: Path = tmp_path_factory.mktemp("vit")
    graph = load_tflite(zoo.tiny_vit(cache))
    names = tuple(t.name for t in graph.tensors if t.data is None and t.name not in graph.inputs)
    sim = Simulator(dataclasses.replace(graph, outputs=names))
    (x_name,) = graph.inputs
    scale, zp = graph.tensor(x_name).qparams
    x = zoo.sample_inputs("tiny_vit", 1, seed=3)[0]
    q = np.clip(np.round(x / scale) + zp, -128, 127).astype(np.int8)
    outs = sim.run([q])
    values = {x_name: q, **dict(zip(names, outs, strict=True))}
    for t in graph.tensors:
        if t.data is not None:
            values[t.name] = np.asarray(t.data)
    return VitRun(graph, values)


def _instances(run: VitRun) -> list[Op]:
    return [op for op in run.graph.ops if op.kind in EXPECTED]


def test_vit_has_the_expected_ops(vit_run: VitRun) -> None:
    counts: dict[OpKind, int] = defaultdict(int)
    for op in _instances(vit_run):
        counts[op.kind] += 1
    assert counts == EXPECTED


def test_every_vit_instance_matches_autodiff(vit_run: VitRun) -> None:
    graph, values = vit_run.graph, vit_run.values
    rng = np.random.default_rng(0)
    worst: dict[str, float] = defaultdict(float)
    for op in _instances(vit_run):
        ins = [graph.tensor(n) for n in op.inputs if n is not None]
        (y,) = graph.op_outputs(op)
        qs = [values[t.name] for t in ins]
        qy = values[y.name]
        g_y = rand_grad(rng, y.shape)
        if op.kind is OpKind.SOFTMAX:
            strict, loose = check_softmax(op, ins[0], y, qs[0], qy, g_y)
            worst["SOFTMAX ulp"] = max(worst["SOFTMAX ulp"], strict)
            worst["SOFTMAX loose rel"] = max(worst["SOFTMAX loose rel"], loose)
        elif op.kind is OpKind.RSQRT:
            strict, loose = check_rsqrt(ins[0], y, qs[0], qy, g_y, op)
            worst["RSQRT ulp"] = max(worst["RSQRT ulp"], strict)
            worst["RSQRT loose rel"] = max(worst["RSQRT loose rel"], loose)
        else:
            errs = CHECKS[op.kind](op, ins, y, qs, g_y)
            assert errs, op.describe()
            for i, e in errs.items():
                worst[f"{op.kind.value} d{i} ulp"] = max(worst[f"{op.kind.value} d{i} ulp"], e)
    print("\nworst errors over the tiny ViT instances:", dict(sorted(worst.items())))
    # every documented rounding is at most one half unit plus the 2^-15 scale error
    assert all(v <= 1.0 for k, v in worst.items() if k.endswith("ulp")), worst


def test_vit_saves_and_clamps(vit_run: VitRun) -> None:
    """What the rule table will plan: saved values and clamp masks of every instance."""
    graph = vit_run.graph
    squares = 0
    clamps = [0, 0]
    for op in _instances(vit_run):
        ins = tuple(graph.op_inputs(op))
        outs = tuple(graph.op_outputs(op))
        if op.kind is OpKind.MUL:
            p = norm_bwd.prepare_mul_backward(op, ins, outs)
            saves = norm_bwd.mul_saves(p, frozenset({0, 1}))
            squares += p.square
            assert all(ins[int(s[2])] is not None and ins[int(s[2])].data is None for s in saves)  # type: ignore[union-attr]
            assert set(saves) <= set(norm_bwd.MUL_SAVES)
            if p.square:  # x·x ≥ 0 at output zero point −128: the bottom is exact, only the top may saturate
                assert p.clamp is None or p.clamp[0] == norm_bwd.NO_LOW
                clamps[p.clamp is not None] += 1
        elif op.kind is OpKind.BATCH_MATMUL:
            p2 = attn_bwd.prepare_batch_matmul_backward(op, ins, outs)
            assert attn_bwd.batch_matmul_saves(p2, frozenset({0, 1})) == attn_bwd.BATCH_MATMUL_SAVES
        elif op.kind is OpKind.CONCATENATION:
            p3 = layout_bwd.prepare_concatenation_backward(op, ins, outs)
            assert p3.grad_inputs == (1,)  # the class token is a constant
    assert squares == 9  # the variance of every layer norm
    print(f"\nx·x instances without / with a clamp mask: {clamps}")


LN_KERNELS = {
    OpKind.MEAN: (norm_bwd.prepare_mean_backward, norm_bwd.mean_input_grads),
    OpKind.SUB: (norm_bwd.prepare_sub_backward, norm_bwd.sub_input_grads),
    OpKind.MUL: (norm_bwd.prepare_mul_backward, norm_bwd.mul_input_grads),
    OpKind.RSQRT: (norm_bwd.prepare_rsqrt_backward, norm_bwd.rsqrt_input_grads),
}
LN_KINDS = (OpKind.MEAN, OpKind.SUB, OpKind.MUL, OpKind.MEAN, OpKind.ADD, OpKind.RSQRT, OpKind.MUL)


def test_layer_norm_chains_match_the_float_layer_norm(vit_run: VitRun) -> None:
    """The kernels composed like the rule table will (x·x's whole gradient under index 0,
    broadcast sums, gradient sums of tensors read twice), without clamp masks, through each of
    the 9 layer norms ``(x − mean)·rsqrt(mean((x − mean)²) + eps)``: the integer input gradient
    against float64 autodiff of the float layer norm at the dequantized input.

    The bound is loose on purpose: the int8 forward's intermediates (mean, x − mean, x²,
    variance, rsqrt; 8 bits each) are ≤ 1 LSB off the float ones, which moves the gradient by
    a few percent of its largest element; a missing factor 2 in x·x, a sign or a missing sum
    term gives tens of percent and breaks the 0.999 correlation."""
    graph, values = vit_run.graph, vit_run.values
    ops = list(graph.ops)
    starts = [i for i in range(len(ops) - 6) if tuple(op.kind for op in ops[i : i + 7]) == LN_KINDS]
    assert len(starts) == 9
    rng = np.random.default_rng(1)
    for st in starts:
        chain = ops[st : st + 7]
        x_name, y = chain[0].inputs[0], graph.op_outputs(chain[-1])[0]
        assert chain[1].inputs[0] == x_name and chain[2].inputs[0] == chain[2].inputs[1] == chain[1].outputs[0]
        g_y = rand_grad(rng, y.shape, -20)
        grads = {y.name: g_y}
        for op in reversed(chain):
            g = grads.pop(op.outputs[0])
            ins, outs = graph.op_inputs(op), graph.op_outputs(op)
            if op.kind is OpKind.ADD:  # + eps (a constant)
                both = shape_bwd.add_input_grads(shape_bwd.prepare_add_backward(op, ins, outs), g)
                res = {i: both[i] for i in (0, 1) if ins[i] is not None and ins[i].data is None}  # type: ignore[union-attr]
            else:
                prepare, run = LN_KERNELS[op.kind]
                saved = {f"in{i}": values[n] for i, n in enumerate(op.inputs) if n is not None}
                saved["out0"] = values[op.outputs[0]]
                res = run(prepare(op, ins, outs), g, saved, frozenset({0, 1}))  # type: ignore[operator]
            for i, gi in res.items():
                n = op.inputs[i]
                assert n is not None
                grads[n] = add_grads(grads[n], gi) if n in grads else gi
        eps_t = graph.tensor(chain[4].inputs[1])  # type: ignore[arg-type]
        eps = float(deq(np.asarray(eps_t.data), eps_t).reshape(-1)[0])
        x_t = graph.tensor(x_name)  # type: ignore[arg-type]

        def layer_norm(v: tf.Tensor, eps: float = eps) -> tf.Tensor:
            c = v - tf.reduce_mean(v, -1, keepdims=True)
            return c * tf.math.rsqrt(tf.reduce_mean(c * c, -1, keepdims=True) + eps)

        ref = vjp(layer_norm, [deq(values[x_t.name], x_t)], grad_to_float(g_y))[0]
        got = grad_to_float(grads[x_t.name])
        rel = float(np.abs(got - ref).max() / np.abs(ref).max())
        corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
        assert rel < 0.1 and corr > 0.999, (chain[0].describe(), rel, corr)


def test_attention_chains_match_float_attention(vit_run: VitRun) -> None:
    """BATCH_MATMUL → MUL (constant scale) → SOFTMAX → BATCH_MATMUL composed (no masks) in each
    of the 4 attention blocks: the gradients of q, kᵀ and v against float64 autodiff of
    ``softmax(c · q kᵀ) v`` at the dequantized q, kᵀ, v. Looser than the layer-norm check: the
    softmax backward reads the int8 probabilities (1/256 absolute: small ones are off by tens of
    percent) and the int8 scores, which moves the q and k gradients by up to ~10 % of their
    largest element (measured: ≤ 10.4 %, correlation ≥ 0.995). A wrong scale factor, sign,
    transposition or a dropped Σ term breaks the bound or the correlation."""
    graph, values = vit_run.graph, vit_run.values
    ops = list(graph.ops)
    rng = np.random.default_rng(2)
    blocks = 0
    for i, op in enumerate(ops):
        if op.kind is not OpKind.BATCH_MATMUL or ops[i + 1].kind is not OpKind.MUL:
            continue
        scale_op, soft = ops[i + 1], ops[i + 2]
        second = next(o for o in ops[i + 3 :] if o.kind is OpKind.BATCH_MATMUL)
        assert soft.kind is OpKind.SOFTMAX and second.inputs[0] == soft.outputs[0]
        blocks += 1
        chain = [op, scale_op, soft, second]
        out = graph.op_outputs(second)[0]
        g_y = rand_grad(rng, out.shape, -20)
        grads = {out.name: g_y}
        for step in reversed(chain):
            g = grads.pop(step.outputs[0])
            ins, outs = graph.op_inputs(step), graph.op_outputs(step)
            saved = {f"in{j}": values[n] for j, n in enumerate(step.inputs) if n is not None}
            saved["out0"] = values[step.outputs[0]]
            if step.kind is OpKind.BATCH_MATMUL:
                bp = attn_bwd.prepare_batch_matmul_backward(step, ins, outs)
                res = attn_bwd.batch_matmul_input_grads(bp, g, saved, frozenset({0, 1}))
            elif step.kind is OpKind.MUL:
                res = norm_bwd.mul_input_grads(
                    norm_bwd.prepare_mul_backward(step, ins, outs), g, saved, frozenset({0, 1})
                )
            else:
                sp = attn_bwd.prepare_softmax_backward(step, ins, outs)
                res = attn_bwd.softmax_input_grads(sp, g, saved, frozenset({0}))
            for j, gj in res.items():
                n = step.inputs[j]
                assert n is not None and n not in grads
                grads[n] = gj
        q_t, k_t, v_t = (graph.tensor(n) for n in (op.inputs[0], op.inputs[1], second.inputs[1]))  # type: ignore[arg-type]
        c_t = graph.tensor(scale_op.inputs[1])  # type: ignore[arg-type]
        c = float(deq(np.asarray(c_t.data), c_t).reshape(-1)[0])

        def attention(q: tf.Tensor, k: tf.Tensor, v: tf.Tensor, c: float = c) -> tf.Tensor:
            return tf.linalg.matmul(tf.nn.softmax(c * tf.linalg.matmul(q, k), axis=-1), v)

        refs = vjp(attention, [deq(values[t.name], t) for t in (q_t, k_t, v_t)], grad_to_float(g_y))
        for t, ref in zip((q_t, k_t, v_t), refs, strict=True):
            got = grad_to_float(grads[t.name])
            rel = float(np.abs(got - ref).max() / np.abs(ref).max())
            corr = float(np.corrcoef(got.ravel(), ref.ravel())[0, 1])
            assert rel < 0.2 and corr > 0.99, (op.describe(), t.name, rel, corr)
    assert blocks == 4
