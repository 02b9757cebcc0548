"""The training-program pass: model + resolved scheme → a static training program.

The program is, for one sample: the forward pass (the frozen stage as row-streamed
fused blocks, then the ops that training needs, saving 1-bit clamp masks and the
trained input channels as it goes), the softmax cross-entropy gradient of the logits,
and the backward pass in reverse op order, pruned to exactly what the scheme needs:
an op's input gradient is computed only when a trained layer lies upstream of that
input, and each layer's parameters are updated right after its gradients (after its
input gradient, which uses the old weights), so no gradient buffer of one layer lives
while another layer runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, Op, OpKind
from tinytrain.passes.fuse_blocks import FusedGraph, fuse_frozen_blocks
from tinytrain.train.grad_rules import GRAD_RULES, BackwardParams, BackwardRequest, prepare_backward
from tinytrain.train.kernels.fused_bwd import FusedExpandDwParams, prepare_fused_expand_dw_backward
from tinytrain.train.kernels.fused_bwd_project import FusedProjectParams, prepare_fused_project_backward
from tinytrain.train.kernels.loss import SoftmaxCEParams, prepare_softmax_ce
from tinytrain.train.layers import Layer
from tinytrain.train.scheme import LayerPlan, ResolvedScheme


@dataclass(frozen=True)
class BackwardStep:
    """The backward of one op (and the update of its parameters, when it trains)."""

    op_index: int
    params: BackwardParams
    layer: LayerPlan | None  # set for linear layers (trained or not)
    # Where the gradient of each op input goes and which tensor the forward saves
    # channels of: the op's own inputs, except after folding a PAD into a convolution's
    # backward (then input 0 stands for the PAD's input).
    targets: tuple[str | None, ...] = ()
    # A depthwise step fused with the backward of the 1×1 (or stem) conv E that feeds it:
    # E's output gradient is streamed row by row and never exists (kernels/fused_bwd.py).
    fused: FusedExpandDwParams | None = None
    fused_with: BackwardStep | None = None
    # ... and, in front of it, with the backward of the 1×1 projection P that reads its
    # output: D's output gradient never exists either (kernels/fused_bwd_project.py).
    fused_from: BackwardStep | None = None
    fused_project: FusedProjectParams | None = None

    def target(self, k: int) -> str | None:
        return self.targets[k] if self.targets else self.op.inputs[k]

    @property
    def parts(self) -> tuple[BackwardStep, ...]:
        """The op steps this step runs, in the unfused execution order (P, D, E)."""
        return tuple(s for s in (self.fused_from, self, self.fused_with) if s is not None)

    @property
    def head(self) -> BackwardStep:
        """The part whose output gradient the step consumes (P when fused, else itself)."""
        return self.fused_from if self.fused_from is not None else self

    @property
    def fused_scratch_bytes(self) -> int:
        """The fused kernel's scratch (0 for an unfused step)."""
        if self.fused_project is not None:
            return self.fused_project.scratch_bytes
        return self.fused.scratch_bytes if self.fused is not None else 0

    @property
    def op(self) -> Op:
        return self.params.op

    @property
    def trains(self) -> bool:
        return self.params.update is not None


@dataclass(frozen=True)
class TrainingProgram:
    graph: Graph  # the model being trained (logits as its only output)
    scheme: ResolvedScheme
    fused: FusedGraph  # the forward execution units (fused frozen blocks + single ops)
    first_live_op: int  # ops before this one need nothing for the backward pass
    backward: tuple[BackwardStep, ...]  # in execution order (reverse op order)
    loss: SoftmaxCEParams
    logits: str
    _by_op: Mapping[int, BackwardStep] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_op", MappingProxyType({b.op_index: b for b in self.all_steps}))

    @property
    def trained_layers(self) -> tuple[LayerPlan, ...]:
        return self.scheme.trained

    @property
    def all_steps(self) -> tuple[BackwardStep, ...]:
        """Every op's backward step in execution order: the steps fused into a depthwise
        step around it (a projection right before, an expansion right after)."""
        return tuple(s for b in self.backward for s in b.parts)

    def backward_of(self, op_index: int) -> BackwardStep | None:
        """The backward step of an op (also when it is fused into another step)."""
        return self._by_op.get(op_index)


def _descendants_of_trained(graph: Graph, trained_ops: set[int]) -> set[str]:
    """Tensors whose value depends on a trained parameter (they need a gradient)."""
    out: set[str] = set()
    for i, op in enumerate(graph.ops):
        if i in trained_ops or any(n in out for n in op.inputs if n is not None):
            out.update(op.outputs)
    return out


def _reaching_loss(graph: Graph, logits: str) -> set[str]:
    """Tensors on a path to the logits (a gradient can flow back into them)."""
    out = {logits}
    for op in reversed(graph.ops):
        if any(n in out for n in op.outputs):
            out.update(n for n in op.inputs if n is not None and graph.tensor(n).data is None)
    return out


def build_training_program(graph: Graph, scheme: ResolvedScheme) -> TrainingProgram:
    if len(graph.outputs) != 1:
        raise UsageError(f"training needs a model with one output (the logits), this one has {len(graph.outputs)}")
    logits = graph.outputs[0]
    plans = {p.layer.op_index: p for p in scheme.layers}
    trained = {i for i, p in plans.items() if p.trains_bias or p.trains_weights}
    if not trained:
        raise UsageError(f"scheme {scheme.name!r} trains nothing")
    needs_grad = _descendants_of_trained(graph, trained)
    on_path = _reaching_loss(graph, logits)
    sign_ops = _sign_activation_ops(graph, plans)
    steps: list[BackwardStep] = []
    for i in range(len(graph.ops) - 1, -1, -1):
        op = graph.ops[i]
        if not any(n in on_path for n in op.outputs) or not any(n in needs_grad for n in op.outputs):
            continue
        rule = GRAD_RULES.get(op.kind)
        if rule is None:
            raise UsageError(
                f"{op.describe()} lies between a trained layer and the loss, and {op.kind.value} has no gradient rule"
            )
        real = range(len(op.inputs))  # the op's own inputs (a rule may list more than a small op has)
        grads = frozenset(
            k for k in rule.grad_inputs if k in real and op.inputs[k] in needs_grad and op.inputs[k] in on_path
        )
        plan = plans.get(i)
        request = BackwardRequest(
            input_grads=grads,
            weight_channels=plan.channels if plan is not None else (),
            bias=bool(plan is not None and plan.trains_bias and _has_bias(plan.layer)),
            sign_act=i in sign_ops,
        )
        if not request.input_grads and not request.weight_channels and not request.bias:
            continue
        params = prepare_backward(op, graph.op_inputs(op), graph.op_outputs(op), request)
        if logits in op.outputs:
            # The logits' clamp is int8 saturation, not an activation: the gradient passes
            # straight through, or a saturated wrong logit could never be pushed down.
            params = replace(params, clamp=None)
        elif request.sign_act and _feeds_sign_activation(graph, op):
            # The activation is the HARD_SWISH after this op, and its sign mask (of this op's
            # output) is the only mask the gradient crosses: no saturation mask here.
            params = replace(params, clamp=None)
        steps.append(BackwardStep(i, params, plan))
    steps = _fold_pads(graph, steps)
    # A convolution with a folded PAD saves channels of the PAD's input: run the PAD live too.
    producer = graph.producer()
    folded = [producer[str(s.op.inputs[0])] for s in steps if s.target(0) != s.op.inputs[0]]
    first_live = min([*trained, *folded])
    # Inverted-residual blocks run as row-streamed fused kernels wherever none of their
    # internal activations is needed whole: in the frozen stage, and in the live part when
    # the backward only needs the clamp masks of the block's ops (the fused kernel emits
    # them row by row) but no saved input channels.
    keep = {str(s.target(0)) for s in steps if s.params.save_channels or s.params.save_input}
    fused = fuse_frozen_blocks(graph, len(graph.ops), keep=keep)
    return TrainingProgram(
        graph=graph,
        scheme=scheme,
        fused=fused,
        first_live_op=first_live,
        backward=tuple(_fuse_project(graph, _fuse_expand_dw(graph, steps))),
        loss=prepare_softmax_ce(graph.tensor(logits)),
        logits=logits,
    )


def _fold_pads(graph: Graph, steps: list[BackwardStep]) -> list[BackwardStep]:
    """Folds a spatial PAD that feeds only a convolution into the convolution's backward:
    the input gradient is then computed for the unpadded tensor directly (normalized over
    it), the padded gradient never exists, and the weight gradient reads the unpadded
    input's saved channels (the pad value is the zero point, so padded taps add 0)."""
    consumers = graph.consumers()
    producer = graph.producer()
    by_op = {s.op_index: s for s in steps}
    out: list[BackwardStep] = []
    dropped: set[int] = set()
    for s in steps:
        if s.op_index in dropped:
            continue
        op = s.op
        x = op.inputs[0]
        geom = getattr(s.params.kernel, "geom", None)
        j = producer.get(x) if x is not None else None
        pad_step = by_op.get(j) if j is not None else None
        if (
            geom is None
            or x is None
            or j is None
            or graph.ops[j].kind is not OpKind.PAD
            or len(consumers.get(x, ())) != 1
            or (geom.pad_top, geom.pad_left, geom.pad_bottom, geom.pad_right) != (0, 0, 0, 0)
            or (pad_step is None and 0 in s.params.request.input_grads)
        ):
            out.append(s)
            continue
        pad_op = graph.ops[j]
        pads_t = graph.tensor(str(pad_op.inputs[1])).data
        assert pads_t is not None
        pads = [int(v) for v in pads_t.reshape(-1)]
        if len(pads) != 8 or pads[0:2] != [0, 0] or pads[6:8] != [0, 0]:
            out.append(s)
            continue
        src = str(pad_op.inputs[0])
        kernel = replace(
            s.params.kernel,
            in_shape=graph.tensor(src).shape,
            geom=replace(geom, pad_top=pads[2], pad_bottom=pads[3], pad_left=pads[4], pad_right=pads[5]),
        )
        out.append(replace(s, params=replace(s.params, kernel=kernel), targets=(src, *op.inputs[1:])))
        dropped.add(j)
    return out


FUSE_MIN_SAVING = 4  # fuse only when the gradient removed is ≥ 4× the fused kernel's scratch


def _fuse_expand_dw(graph: Graph, steps: list[BackwardStep]) -> list[BackwardStep]:
    """Pairs each depthwise backward step with the step of the conv E that produces its
    input, when E's output gradient is large: that gradient is then streamed row by row
    (three passes) instead of stored. Same bytes as the two unfused steps."""
    consumers = graph.consumers()
    out: list[BackwardStep] = []
    k = 0
    while k < len(steps):
        d = steps[k]
        e = steps[k + 1] if k + 1 < len(steps) else None
        x = d.target(0)
        eg = getattr(e.params.kernel, "geom", None) if e is not None else None
        if (
            e is not None
            and eg is not None
            and x is not None
            and d.op.kind is OpKind.DEPTHWISE_CONV_2D
            and e.op.kind is OpKind.CONV_2D
            and 0 in d.params.request.input_grads
            and x == e.op.outputs[0]
            and len(consumers.get(x, ())) == 1
            and x not in graph.outputs
            and not _dynamic(d)
            and not _dynamic(e)  # a DGSU layer's row loop runs on its unfused output gradient
            and (
                0 not in e.params.request.input_grads
                or (eg.kh, eg.kw, eg.sh, eg.sw, eg.pad_top, eg.pad_left, eg.pad_bottom, eg.pad_right)
                == (1, 1, 1, 1, 0, 0, 0, 0)
            )
        ):
            fused = prepare_fused_expand_dw_backward(e.params, d.params)
            if 2 * graph.tensor(x).size >= FUSE_MIN_SAVING * fused.scratch_bytes:
                out.append(replace(d, fused=fused, fused_with=e))
                k += 2
                continue
        out.append(d)
        k += 1
    return out


def _fuse_project(graph: Graph, steps: list[BackwardStep]) -> list[BackwardStep]:
    """Puts the step of the 1×1 projection P in front of the fused depthwise step D that
    produces its input, when D's output gradient is large: P's input gradient (that
    output gradient) is then recomputed row by row as the fused E→D kernel reads it
    instead of being stored. Same bytes as the unfused P, D, E steps."""
    consumers = graph.consumers()
    out: list[BackwardStep] = []
    k = 0
    while k < len(steps):
        p = steps[k]
        d = steps[k + 1] if k + 1 < len(steps) else None
        pg = getattr(p.params.kernel, "geom", None)
        y = d.op.outputs[0] if d is not None else None
        if (
            d is not None
            and d.fused is not None
            and y is not None
            and pg is not None
            and p.op.kind is OpKind.CONV_2D
            and p.fused is None
            and 0 in p.params.request.input_grads
            and p.target(0) == y
            and len(consumers.get(y, ())) == 1
            and y not in graph.outputs
            and (pg.kh, pg.kw, pg.sh, pg.sw, pg.pad_top, pg.pad_left, pg.pad_bottom, pg.pad_right)
            == (1, 1, 1, 1, 0, 0, 0, 0)
        ):
            # With a ring of rows of D's output gradient, each computed once per sweep (one
            # row recomputed at every read would save a little more scratch for up to
            # kh_D times the MACs: not worth it where the ring does not pay).
            fp = prepare_fused_project_backward(p.params, d.fused, ring=True)
            if 2 * graph.tensor(y).size >= FUSE_MIN_SAVING * (fp.scratch_bytes - d.fused.scratch_bytes):
                out.append(replace(d, fused_from=p, fused_project=fp))
                k += 2
                continue
        out.append(p)
        k += 1
    return out


def _sign_activation_ops(graph: Graph, plans: Mapping[int, LayerPlan]) -> frozenset[int]:
    """Ops whose activation backward uses MobileTL's sign rule: the linear layers planned so,
    and the HARD_SWISH right after such a layer."""
    out = {i for i, p in plans.items() if p.sign_act}
    producer = graph.producer()
    for i, op in enumerate(graph.ops):
        if op.kind is OpKind.HARD_SWISH and op.inputs[0] is not None:
            j = producer.get(op.inputs[0])
            if j is not None and j in out:
                out.add(i)
    return frozenset(out)


def _feeds_sign_activation(graph: Graph, op: Op) -> bool:
    """``op`` has no fused activation and its output is read by one HARD_SWISH alone."""
    readers = graph.consumers().get(op.outputs[0], ())
    return (
        getattr(op.attrs, "activation", None) is Activation.NONE
        and len(readers) == 1
        and graph.ops[readers[0]].kind is OpKind.HARD_SWISH
        and op.outputs[0] not in graph.outputs
    )


def _dynamic(step: BackwardStep) -> bool:
    """A DGSU layer (update 'dynamic'): its weights update in a run-time row loop."""
    return step.layer is not None and step.layer.dynamic is not None


def _has_bias(layer: Layer) -> bool:
    return layer.bias is not None
