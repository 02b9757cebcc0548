"""Runs a :class:`TrainingProgram` in the simulator: one integer-only training step per
sample, exactly as the generated C will.

The executor holds the trainable state (the current int8 weights and int32 biases of
the trained layers, the xorshift32 PRNG state) and runs, per sample, the live part of
the forward pass (ops from ``first_live_op``; the frozen stage before it is computed by
the caller, see :class:`tinytrain.train.loop.Trainer`), the loss gradient, and the
backward steps with their in-place updates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.ir.tensor import Tensor
from tinytrain.sim.fixedpoint import rounding_divide_by_pot
from tinytrain.sim.kernels import KERNELS
from tinytrain.train.build import BackwardStep, TrainingProgram
from tinytrain.train.data import fmix32
from tinytrain.train.dgsu import LAYER_AGE, LAYER_EMA, LAYER_SCORE, age_name, state_tensors
from tinytrain.train.grad_rules import (
    BackwardResult,
    Saved,
    apply_update,
    run_backward,
    save_forward,
    saved_tensor,
)
from tinytrain.train.kernels.accumulate import (
    MAX_BATCH,
    AccState,
    GradAccumulator,
    acc_add,
    acc_init,
    acc_result,
    acc_value,
    bias_accumulator,
    mom_step,
    update_bias_rows,
    update_weights_rows,
    weight_accumulator,
)
from tinytrain.train.kernels.fused_bwd import run_fused_expand_dw_backward
from tinytrain.train.kernels.fused_bwd_project import run_fused_project_backward
from tinytrain.train.kernels.gradient import Grad, normalize
from tinytrain.train.kernels.loss import softmax_ce_grad
from tinytrain.train.kernels.mask import apply_mask
from tinytrain.train.kernels.prng import seed_state
from tinytrain.train.kernels.select import layer_signal, select_rows, update_selected_rows
from tinytrain.train.kernels.update import update_bias

# Alignment of two gradients before they are summed (docs/numerics.md, "Gradient sum").
SUM_GUARD_BITS = 16


def add_grads(a: Grad, b: Grad) -> Grad:
    """Sum of two gradients of one tensor (a tensor read by two ops, e.g. a residual):
    the larger exponent keeps 16 guard bits, the smaller term is shifted to match
    (rounding half away from zero when it moves right), then ``normalize``.

    C twin: tt_add_grads_s16 in firmware_templates/runtime/src/tt_grad.c."""
    hi, lo = (a, b) if a.e >= b.e else (b, a)
    d = hi.e - lo.e
    e_acc = hi.e - SUM_GUARD_BITS
    acc_hi = hi.g.astype(np.int64) << SUM_GUARD_BITS
    if d >= SUM_GUARD_BITS:
        acc_lo = rounding_divide_by_pot(lo.g.astype(np.int64), min(d - SUM_GUARD_BITS, 62))
    else:
        acc_lo = lo.g.astype(np.int64) << (SUM_GUARD_BITS - d)
    return normalize(acc_hi + acc_lo, e_acc)


def update_prng_seed(seed: int) -> int:
    """The stochastic-rounding PRNG's initial state for a run seed: MurmurHash3's
    finalizer of ``seed + 0x2545F491`` (mod 2^32), 0x9E3779B9 if that is 0.

    C twin: tt_update_prng_seed in firmware_templates/runtime/src/tt_prng.c.
    """
    return fmix32((seed + 0x2545F491) % (1 << 32)) or 0x9E3779B9


Observer = Callable[[str, int, str, "np.ndarray | Grad"], None]
"""``observer(kind, op_index, tensor, value)``, called by :meth:`Executor.step` as values are
produced (tools such as ``codegen/bisect.py``; None costs nothing). Kinds: ``act`` (an output
of a live op), ``mask`` (the packed clamp mask of the op's output ``tensor``), ``saved`` (the
trained channels of input ``tensor``), ``saved-value`` (a forward value ``tensor`` a rule reads whole),
``grad`` (``tensor``'s gradient: the loss gradient with op index -1, an op's input gradient,
the sum after a second gradient, the output gradient after op's clamp mask), ``grad-sum`` (a
second input gradient of ``tensor`` from op, before the sum), ``train`` (the trained weight or
bias ``tensor`` of op after its update)."""


@dataclass(frozen=True)
class StepResult:
    p_label: int  # probability of the label, in units of 2^-16 (loss = −ln(p/65536))
    predicted: int  # argmax of the logits


class Executor:
    """``batch`` > 1 accumulates the parameter gradients of B samples (integer
    accumulators, ``tinytrain/train/kernels/accumulate.py``) and applies the SGD step of
    their mean once every B samples; input gradients always use the current weights.
    ``momentum_q15`` > 0 keeps a momentum buffer per trained tensor (``v ← μ·v + g``,
    μ in Q15) and steps with ``v`` instead of the gradient.
    ``row_streamed`` runs fused backward steps with the device's row-streamed kernel
    instead of the (byte-identical, faster) vectorised unfused kernels. ``observer`` sees the
    step's values (:data:`Observer`)."""

    def __init__(
        self,
        program: TrainingProgram,
        seed: int,
        batch: int = 1,
        row_streamed: bool = False,
        momentum_q15: int = 0,
        observer: Observer | None = None,
    ) -> None:
        if not 1 <= batch <= MAX_BATCH:
            raise UsageError(f"batch must be in 1..{MAX_BATCH}, got {batch}")
        if not 0 <= momentum_q15 < 1 << 15:
            raise UsageError(f"momentum must be a Q15 value in [0, 32768), got {momentum_q15}")
        self.momentum_q15 = momentum_q15
        self.observer = observer
        # Momentum buffers v (same format as the accumulators), per op: [weights, bias].
        self._mom: dict[int, list[tuple[GradAccumulator, AccState] | None]] = {}
        self.program = program
        self.batch = batch
        self.row_streamed = row_streamed
        self._acc: dict[int, list[tuple[GradAccumulator, AccState] | None]] = {}
        self._pending = 0
        graph = program.graph
        self.weights: dict[int, np.ndarray] = {}
        self.biases: dict[int, np.ndarray] = {}
        for plan in program.trained_layers:
            lay = plan.layer
            if plan.trains_weights:
                w = graph.tensor(lay.weight).data
                assert w is not None
                self.weights[lay.op_index] = np.array(w, copy=True)
            if lay.bias is not None and plan.trains_bias:
                b = graph.tensor(lay.bias).data
                assert b is not None
                self.biases[lay.op_index] = np.array(b, copy=True)
        self.prng = seed_state(update_prng_seed(seed))
        # DGSU state (tinytrain/train/dgsu.py): row ages, layer-selection signal and ages.
        self.dgsu_state: dict[str, np.ndarray] = {
            t.name: np.array(t.initial, copy=True) for t in state_tensors(program.scheme)
        }
        self._layer_chosen: np.ndarray | None = None
        if program.scheme.dynamic and (batch > 1 or momentum_q15):
            raise UsageError(
                "dynamic (DGSU) layers update a different set of rows every step: "
                "gradient accumulation (--batch) and momentum are not supported with them"
            )
        self._prepared: dict[int, Any] = {}
        for i in range(program.first_live_op, len(graph.ops)):
            self._prepare(i)

    # ------------------------------------------------------------------ weights

    def _current_inputs(self, i: int) -> tuple[Tensor | None, ...]:
        graph = self.program.graph
        op = graph.ops[i]
        ins = list(graph.op_inputs(op))
        if i in self.weights:
            w = ins[1]
            assert w is not None
            ins[1] = replace(w, data=self.weights[i])
        if i in self.biases and len(ins) > 2 and ins[2] is not None:
            ins[2] = replace(ins[2], data=self.biases[i])
        return tuple(ins)

    def _prepare(self, i: int) -> None:
        graph = self.program.graph
        op = graph.ops[i]
        spec = KERNELS[op.kind]
        self._prepared[i] = spec.prepare(op, self._current_inputs(i), graph.op_outputs(op))

    def current_graph(self) -> Graph:
        """The model with the current trained parameters (for evaluation and export)."""
        graph = self.program.graph
        new: dict[str, np.ndarray] = {}
        for i, w in self.weights.items():
            w_name = graph.ops[i].inputs[1]
            assert w_name is not None
            new[w_name] = w
        for i, b in self.biases.items():
            b_name = graph.ops[i].inputs[2]
            assert b_name is not None
            new[b_name] = b
        tensors = tuple(replace(t, data=new[t.name]) if t.name in new else t for t in graph.tensors)
        return replace(graph, tensors=tensors)

    def trained_tensors(self) -> dict[str, np.ndarray]:
        """Every trained tensor by its model tensor name, then the DGSU state tensors
        (``dgsu_age:<layer>``, ``dgsu_layer_*``: training state a resumed run needs)."""
        graph = self.program.graph
        out: dict[str, np.ndarray] = {}
        for i, w in self.weights.items():
            out[str(graph.ops[i].inputs[1])] = w
        for i, b in self.biases.items():
            out[str(graph.ops[i].inputs[2])] = b
        out.update({k: v.copy() for k, v in self.dgsu_state.items()})  # DGSU state (tinytrain/train/dgsu.py)
        return out

    def load_tensors(self, tensors: Mapping[str, np.ndarray]) -> None:
        graph = self.program.graph
        for i in list(self.weights):
            name = str(graph.ops[i].inputs[1])
            if name in tensors:
                self.weights[i] = np.asarray(tensors[name], dtype=np.int8).reshape(self.weights[i].shape)
        for i in list(self.biases):
            name = str(graph.ops[i].inputs[2])
            if name in tensors:
                self.biases[i] = np.asarray(tensors[name], dtype=np.int32).reshape(self.biases[i].shape)
        for name, cur in self.dgsu_state.items():
            if name in tensors:
                self.dgsu_state[name] = np.asarray(tensors[name], dtype=cur.dtype).reshape(cur.shape).copy()
        for i in set(self.weights) | set(self.biases):
            self._prepare(i)

    # ------------------------------------------------------------------ one step

    def step(self, live_inputs: Mapping[str, np.ndarray], label: int, lr: tuple[int, int], c_t: int) -> StepResult:
        """One training step on one sample. ``live_inputs`` holds the boundary tensors of
        the live part (shape with batch 1), as computed by the frozen stage."""
        program = self.program
        graph = program.graph
        values: dict[str, np.ndarray] = dict(live_inputs)
        saved: dict[int, Saved] = {}
        for i in range(program.first_live_op, len(graph.ops)):
            op = graph.ops[i]
            args = [None if n is None else self._value(n, values) for n in op.inputs]
            if i in self.weights:
                args[1] = self.weights[i]
            if i in self.biases and len(args) > 2:
                args[2] = self.biases[i]
            outs = KERNELS[op.kind].run(self._prepared[i], args)
            obs = self.observer
            for name, y in zip(op.outputs, outs, strict=True):
                values[name] = y
                if obs is not None:
                    obs("act", i, name, y)
            bstep = program.backward_of(i)
            if bstep is not None and (
                bstep.params.clamp is not None
                or bstep.params.save_channels
                or bstep.params.save_input
                or bstep.params.saves
            ):
                src = bstep.target(0)
                if src is not None and src != op.inputs[0]:
                    args = [values[src], *args[1:]]
                saved[i] = save_forward(bstep.params, args, outs)
                if obs is not None:
                    sv = saved[i]
                    if sv.mask is not None:
                        obs("mask", i, op.outputs[0], sv.mask)
                    if sv.x_sub is not None and src is not None:
                        obs("saved", i, src, sv.x_sub)
                    for name, v in sv.values.items():  # values a rule reads whole: plan buffer saved:<tensor>
                        obs("saved-value", i, saved_tensor(op, name), v)
        logits = values[program.logits]
        g_logits, p_label = softmax_ce_grad(program.loss, logits, label)
        grads: dict[str, Grad] = {program.logits: g_logits}
        if self.observer is not None:
            self.observer("grad", -1, program.logits, g_logits)
        c = np.int64(c_t)
        self._select_layers(values)
        for bstep in program.backward:
            op = bstep.head.op
            g_out = grads.pop(op.outputs[0], None)
            if g_out is None:
                raise UsageError(f"{op.describe()}: no gradient reached this op's output")
            i = bstep.op_index
            parts: tuple[tuple[BackwardStep, BackwardResult], ...]
            if len(bstep.parts) > 1:
                saved_parts = {st.op_index: saved.pop(st.op_index, Saved()) for st in bstep.parts}
                parts = self._fused_step(bstep, g_out, saved_parts)
            else:
                weight = self._weight(bstep) if 0 in bstep.params.request.input_grads else self.weights.get(i)
                s_i = saved.pop(i, Saved())
                self._observe_mask(bstep, g_out, s_i)
                parts = ((bstep, run_backward(bstep.params, g_out, s_i, weight)),)
            for st, res in parts:
                for k, g in res.input_grads.items():
                    target = st.target(k)
                    assert target is not None
                    if self.observer is not None and target in grads:
                        self.observer("grad-sum", st.op_index, target, g)
                    grads[target] = add_grads(grads[target], g) if target in grads else g
                    if self.observer is not None:
                        self.observer("grad", st.op_index, target, grads[target])
            for st, res in parts:  # updates after every gradient of the step (old weights), in op order
                if not st.trains:
                    continue
                if self.batch > 1:
                    self._accumulate(st, res)
                    continue
                j = st.op_index
                if st.layer is not None and st.layer.dynamic is not None:
                    self._dgsu_update(st, res, lr, int(c))
                    continue
                if self.momentum_q15:
                    e_one = np.full(1, res.param_exponent, dtype=np.int64)
                    self._apply_rows(st, res.weight_grad, e_one, res.bias_grad, e_one, lr, int(c))
                    continue
                new_w, new_b = apply_update(
                    st.params, res, self.weights.get(j), self.biases.get(j), lr, int(c), self.prng
                )
                if new_w is not None:
                    self.weights[j] = new_w
                if new_b is not None:
                    self.biases[j] = new_b
                self._prepare(j)
                self._observe_update(j)
        if self.batch > 1:
            self._pending += 1
            if self._pending == self.batch:
                self.flush(lr, int(c))
        return StepResult(p_label=p_label, predicted=int(np.argmax(logits.reshape(-1))))

    def _apply_rows(
        self,
        st: BackwardStep,
        w_grad: np.ndarray | None,
        w_e: np.ndarray | None,
        b_grad: np.ndarray | None,
        b_e: np.ndarray | None,
        lr: tuple[int, int],
        c_t: int,
    ) -> None:
        """The SGD step of one layer from gradients with one exponent per row (or one
        for all: a 1-element array), through the momentum buffers when momentum is on."""
        update = st.params.update
        assert update is not None
        j = st.op_index
        grads = [(w_grad, w_e), (b_grad, b_e)]
        if self.momentum_q15:
            slots = self._mom.setdefault(j, [None, None])
            for k, (g, e) in enumerate(grads):
                if g is None or e is None:
                    continue
                slot = slots[k]
                if slot is None:
                    acc = weight_accumulator(st.op.kind, g.shape) if k == 0 else bias_accumulator(g.size)
                    slot = (acc, acc_init(acc))
                v = mom_step(slot[0], slot[1], g, e if e.size > 1 else int(e[0]), self.momentum_q15)
                slots[k] = (slot[0], v)
                grads[k] = acc_value(v)
        (w_grad, w_e), (b_grad, b_e) = grads
        if w_grad is not None and w_e is not None:
            rows = self.weights[j].shape[0] if st.op.kind is not OpKind.DEPTHWISE_CONV_2D else w_grad.shape[-1]
            e_rows = np.broadcast_to(w_e, (rows,))
            channels = st.params.request.weight_channels
            self.weights[j] = update_weights_rows(update, self.weights[j], w_grad, e_rows, channels, lr, c_t, self.prng)
        if b_grad is not None and b_e is not None:
            e_rows = np.broadcast_to(b_e, (b_grad.size,))
            self.biases[j] = update_bias_rows(update, self.biases[j], b_grad, e_rows, lr, c_t)
        self._prepare(j)
        self._observe_update(j)

    def _cls_rows(self, values: Mapping[str, np.ndarray]) -> np.ndarray:
        """ALaST: the class-token row of each residual-stream tensor of the signal."""
        ls = self.program.scheme.layer_select
        assert ls is not None and ls.cls is not None
        rows = []
        for name in ls.cls.tensors:
            if name not in values:
                raise UsageError(f"alast: the residual-stream tensor {name!r} is not computed by the live program")
            rows.append(np.asarray(values[name]).reshape(-1, ls.cls.dim)[0])
        return np.stack(rows).astype(np.int8)

    def _select_layers(self, values: Mapping[str, np.ndarray]) -> None:
        """DGSU layer selection at the start of the backward pass, from the previous steps'
        signals (tinytrain/train/kernels/select.py), or ALaST's from this step's forward."""
        ls = self.program.scheme.layer_select
        if ls is None:
            return
        if ls.cls is not None:  # ALaST: this step's class-token change (tinytrain/train/alast.py)
            self.dgsu_state[LAYER_SCORE] = ls.cls.scores(self._cls_rows(values))
        score, age = self.dgsu_state[LAYER_SCORE], self.dgsu_state[LAYER_AGE]
        sel, chosen, new_age = select_rows(score, age, ls.budget, ls.explore, magnitude=False)
        assert new_age is not None
        self.dgsu_state[LAYER_AGE] = new_age
        self._layer_chosen = chosen
        if self.observer is not None:
            self.observer("select-layers", -1, LAYER_AGE, sel)

    def _dgsu_update(self, st: BackwardStep, res: BackwardResult, lr: tuple[int, int], c_t: int) -> None:
        """The SGD step of a dynamic (DGSU) layer: the chosen weight rows (by |bias gradient|
        and age; none when the layer selection left the layer out this step), then the whole
        bias, then the layer's selection signal."""
        plan = st.layer
        update = st.params.update
        assert plan is not None and plan.dynamic is not None and update is not None
        d = plan.dynamic
        j = st.op_index
        bg = res.bias_grad
        if bg is None or res.weight_grad is None:
            raise UsageError(f"{st.op.describe()}: a dynamic layer needs its bias and weight gradients")
        active = d.candidate < 0 or (self._layer_chosen is not None and bool(self._layer_chosen[d.candidate]))
        if active:
            key = age_name(plan)
            sel, _, new_age = select_rows(bg, self.dgsu_state.get(key), d.k, d.explore)
            if new_age is not None:
                self.dgsu_state[key] = new_age
            if self.observer is not None:
                self.observer("select", j, str(st.op.inputs[1]), sel)
            self.weights[j] = update_selected_rows(
                update, self.weights[j], res.weight_grad, res.param_exponent, sel, lr, c_t, self.prng
            )
        self.biases[j] = update_bias(update, self.biases[j], bg, res.param_exponent, lr, c_t)
        ls = self.program.scheme.layer_select
        if d.candidate >= 0 and ls is not None and ls.cls is None:  # DGSU's signal (ALaST's: the forward)
            score, ema = layer_signal(bg, res.param_exponent, int(self.dgsu_state[LAYER_EMA][d.candidate]))
            self.dgsu_state[LAYER_SCORE][d.candidate] = score
            self.dgsu_state[LAYER_EMA][d.candidate] = ema
        self._prepare(j)
        self._observe_update(j)

    def _observe_mask(self, st: BackwardStep, g_out: Grad, saved: Saved) -> None:
        """Reports st's output gradient after its clamp mask (the backward masks it again)."""
        if self.observer is not None and st.params.clamp is not None and saved.mask is not None:
            self.observer("grad", st.op_index, st.op.outputs[0], apply_mask(g_out, saved.mask))

    def _observe_update(self, j: int) -> None:
        if self.observer is None:
            return
        op = self.program.graph.ops[j]
        if j in self.weights:
            self.observer("train", j, str(op.inputs[1]), self.weights[j])
        if j in self.biases:
            self.observer("train", j, str(op.inputs[2]), self.biases[j])

    def _fused_step(
        self, b: BackwardStep, g_out: Grad, saved: Mapping[int, Saved]
    ) -> tuple[tuple[BackwardStep, BackwardResult], ...]:
        """The results of a fused step's parts (P, D, E or D, E), from the gradient of its
        head's output. The row-streamed kernels (the device's, which never hold D's input
        gradient, nor D's output gradient when P is fused) are byte-identical to the
        unfused backward of the parts in order (tests/test_fused_bwd.py,
        tests/test_fused_project_bwd.py): with ``row_streamed=False`` the simulator runs
        the vectorised unfused kernels, several times faster in numpy."""
        d, e, p = b, b.fused_with, b.fused_from
        assert e is not None and d.fused is not None
        w_d = self._weight(d)
        assert w_d is not None
        if self.row_streamed:
            self._observe_mask(b.parts[0], g_out, saved[b.parts[0].op_index])
            w_e = self._weight(e)
            if p is not None:
                assert b.fused_project is not None
                w_p = self._weight(p)
                assert w_p is not None
                _, res_p, res_d, res_e = run_fused_project_backward(
                    b.fused_project, g_out, saved[p.op_index], saved[d.op_index], saved[e.op_index], w_p, w_d, w_e
                )
                return ((p, res_p), (d, res_d), (e, res_e))
            _, res_d, res_e = run_fused_expand_dw_backward(
                d.fused, g_out, saved[d.op_index], saved[e.op_index], w_d, w_e
            )
            return ((d, res_d), (e, res_e))
        out: list[tuple[BackwardStep, BackwardResult]] = []
        g = g_out
        for st in b.parts:
            weight = self._weight(st) if 0 in st.params.request.input_grads else self.weights.get(st.op_index)
            self._observe_mask(st, g, saved[st.op_index])
            res = run_backward(st.params, g, saved[st.op_index], weight)
            if st is not e:  # the input gradient streamed into the next part
                g = res.input_grads[0]
                res = replace(res, input_grads={})
            out.append((st, res))
        return tuple(out)

    def _accumulate(self, st: BackwardStep, res: BackwardResult) -> None:
        slots = self._acc.setdefault(st.op_index, [None, None])
        for k, grad in enumerate((res.weight_grad, res.bias_grad)):
            if grad is None:
                continue
            slot = slots[k]
            if slot is None:
                acc = weight_accumulator(st.op.kind, grad.shape) if k == 0 else bias_accumulator(grad.size)
                slot = (acc, acc_init(acc))
            slots[k] = (slot[0], acc_add(slot[0], slot[1], grad, res.param_exponent))

    def flush(self, lr: tuple[int, int], c_t: int) -> None:
        """Applies the accumulated mean gradients (after the B-th sample, or at the end
        of a run for a partial batch), layer by layer in backward order."""
        if self.batch == 1 or self._pending == 0:
            return
        for st in self.program.all_steps:
            slots = self._acc.get(st.op_index)
            if slots is None or st.params.update is None:
                continue
            results = [acc_result(slot[0], slot[1], slot[1].n) if slot is not None else None for slot in slots]
            w_res, b_res = results
            self._apply_rows(
                st,
                None if w_res is None else w_res[0],
                None if w_res is None else w_res[1],
                None if b_res is None else b_res[0],
                None if b_res is None else b_res[1],
                lr,
                c_t,
            )
        self._acc.clear()
        self._pending = 0

    def _weight(self, st: BackwardStep) -> np.ndarray | None:
        """The current weights of a step's op (None for ops without weights)."""
        if st.layer is None:
            return None
        w = self.weights.get(st.op_index)
        if w is None:
            w = self.program.graph.tensor(st.layer.layer.weight).data
        return w

    def _value(self, name: str, values: Mapping[str, np.ndarray]) -> np.ndarray:
        t = self.program.graph.tensor(name)
        if t.data is not None:
            return t.data
        return values[name]
