"""The gradient rule table: ``OpKind -> GradRule``, one short rule per differentiable op.

A rule says declaratively what an op's backward needs and produces:

* ``grad_inputs``: the op inputs that can receive a gradient;
* ``trainable``: whether the op has a weight (input 1) and an optional bias (input 2);
* ``clamp_mask``: whether the backward multiplies the output gradient by the 1-bit
  clamp mask of output 0 (the ReLU / ReLU6 / saturation folded into requantization),
  which the forward pass must then record;
* ``prepare``: the compile-time kernel params (``(op, inputs, outputs) -> params``);
* ``run``: ``(params, masked output gradient, saved values, current weight, request)
  -> BackwardResult``;
* ``saves``: the forward values the backward reads whole (``"in0"``, ``"in1"``, ``"out0"``:
  the ViT's attention operands and probabilities, a LayerNorm's values), recorded in
  :class:`Saved` ``.values`` and planned once per tensor (memory.py);
* ``produces``: the input gradients the kernel gives for the wanted ones (none for a
  constant operand; ``x·x``'s whole gradient under input 0);
* ``in_place``: the input gradient may overwrite the output gradient (one buffer).

The caller decides what it needs with a :class:`BackwardRequest` (the input gradient only
when a trainable layer lies upstream; which input channels' weights train; whether the
bias trains). A backward pass drives the table like this::

    for op in reversed(graph.ops):
        bp = prepare_backward(op, graph.op_inputs(op), outputs, request_for(op))  # compile time
        ...
        saved = save_forward(bp, args, outs)  # in the forward pass, right after the op ran
        ...
        res = run_backward(bp, grad_of[op.outputs[0]], saved, weight)  # backward pass
        for i, g in res.input_grads.items(): accumulate(op.inputs[i], g)
        new_w, new_b = apply_update(bp, res, weight, bias, lr, c_t, prng_state)

All arithmetic is in :mod:`tinytrain.train.kernels` (integer only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import Op, OpKind
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.sim.kernels.core_common import unsupported
from tinytrain.train.kernels import act_bwd, attn_bwd, layout_bwd, linear_bwd, norm_bwd, pool_bwd, shape_bwd, token_bwd
from tinytrain.train.kernels.gradient import Grad
from tinytrain.train.kernels.mask import SIGN_MASK_HI, apply_mask, clamp_mask
from tinytrain.train.kernels.update import UpdateParams, prepare_update, update_bias, update_weights


@dataclass(frozen=True)
class BackwardRequest:
    """What the caller wants from one op's backward."""

    input_grads: frozenset[int] = frozenset({0})  # op inputs whose gradient is needed
    weight_channels: tuple[int, ...] = ()  # input channels (depthwise: channels) whose weights train
    bias: bool = False  # the bias trains
    # MobileTL's sign rule for the op's activation backward (a fused ReLU/ReLU6: the mask
    # keeps y > act_min, the upper test disabled; HARD_SWISH: its input > its zero point).
    sign_act: bool = False


_NO_VALUES: Mapping[str, np.ndarray] = MappingProxyType({})

# Names of the forward values a rule can read whole (``BackwardParams.saves``); ``out1``: TOKEN_SELECT's indices.
SAVE_NAMES = ("in0", "in1", "out0", "out1")


@dataclass(frozen=True)
class Saved:
    """Forward values kept for the backward: the packed clamp mask of output 0, the
    trained input channels of input 0, and the int8 values a rule reads whole
    (``values``: ``"in0"``, ``"in1"``, ``"out0"`` -> the op's forward arrays)."""

    mask: np.ndarray | None = None
    x_sub: np.ndarray | None = None
    values: Mapping[str, np.ndarray] = field(default_factory=lambda: _NO_VALUES)


@dataclass(frozen=True, eq=False)
class BackwardResult:
    input_grads: dict[int, Grad] = field(default_factory=dict)  # op input index -> gradient
    weight_grad: np.ndarray | None = None  # int64, layout of w[..., channels]; real G·s_in·2^e
    bias_grad: np.ndarray | None = None  # int64 [cout]; real B·2^e
    param_exponent: int = 0  # e: the exponent of the (masked) output gradient


RunFn = Callable[[Any, Grad, Saved, np.ndarray | None, BackwardRequest], BackwardResult]


@dataclass(frozen=True)
class GradRule:
    grad_inputs: tuple[int, ...]
    prepare: Callable[[Op, Inputs, Outputs], Any]
    run: RunFn
    clamp_mask: bool = False
    trainable: bool = False
    # An activation op (HARD_SWISH): under the sign rule the mask is of input 0 and the masked
    # gradient passes unchanged; otherwise the exact rule reads input 0, saved whole.
    activation: bool = False
    # The forward values the backward reads whole, for the kernel params and the wanted input
    # gradients (names from SAVE_NAMES); None: nothing.
    saves: Callable[[Any, frozenset[int]], tuple[str, ...]] | None = None
    # The input gradients the kernel produces for the wanted ones (a constant operand gets
    # none; x·x gives its whole gradient under input 0); None: all the wanted ones.
    produces: Callable[[Any, frozenset[int]], frozenset[int]] | None = None
    # The kernel may write its (single) input gradient over its output gradient: each output
    # gradient row is read whole before the input gradient row is written (memory.py plans
    # one buffer for both). Only the ViT rules set it: the CNN plans keep their buffers.
    in_place: bool = False


@dataclass(frozen=True, eq=False)
class BackwardParams:
    """Everything compile-time about one op's backward."""

    op: Op
    rule: GradRule
    request: BackwardRequest
    kernel: Any
    clamp: tuple[int, int] | None  # (act_min, act_max): the forward saves the clamp mask of output 0
    update: UpdateParams | None  # set when a weight or the bias trains
    # The mask (lo < v < hi with clamp = (lo, hi)) is of input 0 instead of output 0
    # (HARD_SWISH's sign rule: clamp = (input zero point, SIGN_MASK_HI)).
    mask_input: bool = False
    save_input: bool = False  # the forward saves input 0 whole (int8): the exact HARD_SWISH backward
    saves: tuple[str, ...] = ()  # forward values the rule reads whole (SAVE_NAMES), in Saved.values

    @property
    def save_channels(self) -> tuple[int, ...]:
        """Channels of input 0 the forward saves (for the weight gradient)."""
        return self.request.weight_channels


# ------------------------------------------------------------------------ the rules


def _linear(
    kp: linear_bwd.LinearBwdParams, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest
) -> BackwardResult:
    grads = {}
    if 0 in req.input_grads:
        if w is None:
            raise UsageError("the input gradient of a linear layer needs its current weights")
        grads[0] = linear_bwd.input_grad(kp, w, g)
    wg = None
    if req.weight_channels:
        if saved.x_sub is None:
            raise UsageError("the weight gradient needs the input channels saved in the forward pass")
        wg = linear_bwd.weight_grad(kp, g, saved.x_sub, req.weight_channels)
    bg = linear_bwd.bias_grad(kp, g) if req.bias else None
    return BackwardResult(grads, wg, bg, g.e)


def _add(
    kp: shape_bwd.AddBwdParams, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest
) -> BackwardResult:
    both = shape_bwd.add_input_grads(kp, g)
    return BackwardResult({i: both[i] for i in sorted(req.input_grads)}, param_exponent=g.e)


def _unary(fn: Callable[[Any, Grad], Grad]) -> RunFn:
    def run(kp: Any, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest) -> BackwardResult:
        return BackwardResult({0: fn(kp, g)} if 0 in req.input_grads else {}, param_exponent=g.e)

    return run


def _hard_swish(
    kp: act_bwd.HardSwishBwdParams, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest
) -> BackwardResult:
    """Sign rule: the (already masked) output gradient is the input gradient (derivative 1
    where the bit is set; input and output are both real values). Exact: g·D[x] from the
    saved int8 input (kernels/act_bwd.py)."""
    if 0 not in req.input_grads:
        return BackwardResult({}, param_exponent=g.e)
    if req.sign_act:
        return BackwardResult({0: g}, param_exponent=g.e)
    if saved.x_sub is None:
        raise UsageError("the exact HARD_SWISH backward needs its input saved in the forward pass")
    return BackwardResult({0: act_bwd.hard_swish_input_grad(kp, g, saved.x_sub)}, param_exponent=g.e)


# ViT ops (kernels/attn_bwd.py, norm_bwd.py, layout_bwd.py): the kernels take the saved forward
# values by name and the wanted input indices, and return the gradients they produce.
InputGradsFn = Callable[[Any, Grad, Mapping[str, np.ndarray], frozenset[int]], dict[int, Grad]]


def _grads(fn: InputGradsFn) -> RunFn:
    def run(kp: Any, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest) -> BackwardResult:
        return BackwardResult(fn(kp, g, saved.values, req.input_grads), param_exponent=g.e)

    return run


def _kernel_produces(kp: Any, wanted: frozenset[int]) -> frozenset[int]:
    """The non-constant wanted inputs (``kp.grad_inputs``); x·x (``kp.square``): input 0 alone,
    which carries the whole gradient (both factors' contributions, summed by the kernel)."""
    inputs = frozenset(kp.grad_inputs)
    if getattr(kp, "square", False):
        return inputs if wanted & {0, 1} else frozenset()
    return wanted & inputs


def _saves_if_grad(names: tuple[str, ...]) -> Callable[[Any, frozenset[int]], tuple[str, ...]]:
    """A one-input op that reads ``names`` whole when its input gradient is wanted."""

    def saves(kp: Any, wanted: frozenset[int]) -> tuple[str, ...]:
        return names if 0 in wanted else ()

    return saves


def _last_axis_mean(p: pool_bwd.PoolBwdParams) -> bool:
    return len(p.in_shape) > 1 and p.in_shape[-1] > 1 and p.keep_shape[-1] == 1


def _prepare_mean(op: Op, inputs: Inputs, outputs: Outputs) -> pool_bwd.PoolBwdParams | norm_bwd.MeanBwdParams:
    """MEAN dispatches on its axes: over the last axis (a LayerNorm's statistics) to
    norm_bwd (exact accumulator, output clamp mask), otherwise (a CNN's spatial mean) to
    pool_bwd (unchanged)."""
    pp = pool_bwd.prepare_mean_backward(op, inputs, outputs)
    return norm_bwd.prepare_mean_backward(op, inputs, outputs) if _last_axis_mean(pp) else pp


_POOL = _unary(pool_bwd.pool_input_grad)
_MEAN_LAST = _grads(norm_bwd.mean_input_grads)


def _mean(kp: Any, g: Grad, saved: Saved, w: np.ndarray | None, req: BackwardRequest) -> BackwardResult:
    return (_MEAN_LAST if isinstance(kp, norm_bwd.MeanBwdParams) else _POOL)(kp, g, saved, w, req)


MAX_CONCAT_INPUTS = 2  # GRAD_RULES' CONCATENATION entry lists inputs 0 and 1


def _prepare_concatenation(op: Op, inputs: Inputs, outputs: Outputs) -> layout_bwd.ConcatenationBwdParams:
    if len(inputs) > MAX_CONCAT_INPUTS:
        raise unsupported(op, f"training through a CONCATENATION of {len(inputs)} inputs (at most {MAX_CONCAT_INPUTS})")
    return layout_bwd.prepare_concatenation_backward(op, inputs, outputs)


_LINEAR = GradRule((0,), linear_bwd.prepare_linear_backward, _linear, clamp_mask=True, trainable=True)
_PAD = GradRule((0,), shape_bwd.prepare_pad_backward, _unary(shape_bwd.pad_input_grad))
_RESHAPE = GradRule((0,), shape_bwd.prepare_reshape_backward, _unary(shape_bwd.reshape_input_grad))

GRAD_RULES: MappingProxyType[OpKind, GradRule] = MappingProxyType(
    {
        OpKind.CONV_2D: _LINEAR,
        OpKind.DEPTHWISE_CONV_2D: _LINEAR,
        OpKind.FULLY_CONNECTED: _LINEAR,
        OpKind.ADD: GradRule((0, 1), shape_bwd.prepare_add_backward, _add, clamp_mask=True),
        OpKind.MEAN: GradRule((0,), _prepare_mean, _mean, clamp_mask=True),
        OpKind.AVERAGE_POOL_2D: GradRule((0,), pool_bwd.prepare_avg_pool_backward, _POOL),
        OpKind.PAD: _PAD,
        OpKind.PADV2: _PAD,
        OpKind.RESHAPE: _RESHAPE,
        OpKind.SQUEEZE: _RESHAPE,
        OpKind.EXPAND_DIMS: _RESHAPE,
        OpKind.HARD_SWISH: GradRule((0,), act_bwd.prepare_hard_swish_backward, _hard_swish, activation=True),
        OpKind.BATCH_MATMUL: GradRule(
            (0, 1),
            attn_bwd.prepare_batch_matmul_backward,
            _grads(attn_bwd.batch_matmul_input_grads),
            clamp_mask=True,
            saves=attn_bwd.batch_matmul_saves,
            produces=_kernel_produces,
        ),
        OpKind.SOFTMAX: GradRule(
            (0,),
            attn_bwd.prepare_softmax_backward,
            _grads(attn_bwd.softmax_input_grads),
            saves=_saves_if_grad(attn_bwd.SOFTMAX_SAVES),
            in_place=True,
        ),
        OpKind.MUL: GradRule(
            (0, 1),
            norm_bwd.prepare_mul_backward,
            _grads(norm_bwd.mul_input_grads),
            clamp_mask=True,
            saves=norm_bwd.mul_saves,
            produces=_kernel_produces,
            in_place=True,
        ),
        OpKind.SUB: GradRule(
            (0, 1),
            norm_bwd.prepare_sub_backward,
            _grads(norm_bwd.sub_input_grads),
            clamp_mask=True,
            produces=_kernel_produces,
        ),
        OpKind.RSQRT: GradRule(
            (0,),
            norm_bwd.prepare_rsqrt_backward,
            _grads(norm_bwd.rsqrt_input_grads),
            clamp_mask=True,
            saves=_saves_if_grad(norm_bwd.RSQRT_SAVES),
            in_place=True,
        ),
        OpKind.TRANSPOSE: GradRule(
            (0,), layout_bwd.prepare_transpose_backward, _grads(layout_bwd.transpose_input_grads)
        ),
        OpKind.STRIDED_SLICE: GradRule(
            (0,), layout_bwd.prepare_strided_slice_backward, _grads(layout_bwd.strided_slice_input_grads)
        ),
        OpKind.CONCATENATION: GradRule(
            (0, 1),
            _prepare_concatenation,
            _grads(layout_bwd.concatenation_input_grads),
            produces=_kernel_produces,
        ),
        # BSR's token dropping (tinytrain-internal op): scatter into the kept rows; p gets no gradient
        OpKind.TOKEN_SELECT: GradRule(
            (0,),
            token_bwd.prepare_token_select_backward,
            _grads(token_bwd.token_select_input_grads),
            saves=_saves_if_grad(token_bwd.TOKEN_SELECT_SAVES),
        ),
    }
)


# ------------------------------------------------------------------------ drivers


def prepare_backward(op: Op, inputs: Inputs, outputs: Outputs, request: BackwardRequest) -> BackwardParams:
    """Compile-time backward of ``op`` for ``request`` (validated against the rule)."""
    rule = GRAD_RULES.get(op.kind)
    if rule is None:
        raise UsageError(f"{op.describe()}: no gradient rule for {op.kind.value}")
    extra = set(request.input_grads) - set(rule.grad_inputs)
    if extra:
        raise UsageError(f"{op.describe()}: input(s) {sorted(extra)} have no gradient")
    trains = bool(request.weight_channels) or request.bias
    if trains and not rule.trainable:
        raise UsageError(f"{op.describe()}: has no trainable parameters")
    if request.bias and (len(inputs) < 3 or inputs[2] is None):
        raise UsageError(f"{op.describe()}: has no bias to train")
    kernel = rule.prepare(op, inputs, outputs)
    if rule.produces is not None:
        request = replace(request, input_grads=rule.produces(kernel, request.input_grads))
    if request.weight_channels:
        n = kernel.in_channels
        ch = request.weight_channels
        if len(set(ch)) != len(ch) or min(ch) < 0 or max(ch) >= n:
            raise UsageError(f"{op.describe()}: weight channels must be distinct indices in [0, {n}), got {list(ch)}")
    clamp = getattr(kernel, "clamp", None) if rule.clamp_mask else None
    saves = rule.saves(kernel, request.input_grads) if rule.saves is not None else ()
    if any(n not in SAVE_NAMES for n in saves):
        raise UsageError(f"{op.describe()}: the rule saves {list(saves)}, names must be among {list(SAVE_NAMES)}")
    mask_input = save_input = False
    if rule.activation and 0 in request.input_grads:
        x = inputs[0]
        assert x is not None and x.quant is not None  # checked by rule.prepare
        if request.sign_act:  # 1 bit: input > its zero point
            clamp, mask_input = (int(x.quant.zero_point[0]), SIGN_MASK_HI), True
        else:  # 8 bits: the input itself
            save_input = True
    elif clamp is not None and request.sign_act and _relu_floor(outputs, clamp):
        clamp = (clamp[0], SIGN_MASK_HI)  # y > act_min: the pre-activation was > 0
    update = prepare_update(op, inputs, outputs) if trains else None
    return BackwardParams(op, rule, request, kernel, clamp, update, mask_input, save_input, tuple(saves))


def _relu_floor(outputs: Outputs, clamp: tuple[int, int]) -> bool:
    """The clamp's lower bound is real 0 (act_min is the output zero point): a ReLU / ReLU6,
    fused (TFLite) or implicit in the output range (tiny-training checkpoints: NONE with the
    zero point at -128). The sign rule applies to it; a plain int8 saturation keeps its mask."""
    y = outputs[0]
    return y.quant is not None and len(y.quant.zero_point) == 1 and clamp[0] == int(y.quant.zero_point[0])


def save_forward(bp: BackwardParams, args: Sequence[np.ndarray | None], outs: Sequence[np.ndarray]) -> Saved:
    """What the forward pass keeps for ``bp`` from the op's input and output arrays."""
    mask = None
    if bp.clamp is not None:
        src = args[0] if bp.mask_input else outs[0]
        if src is None:
            raise UsageError(f"{bp.op.describe()}: the forward input is needed for its mask")
        mask = clamp_mask(src, *bp.clamp)
    x_sub = None
    if bp.save_input:
        if args[0] is None:
            raise UsageError(f"{bp.op.describe()}: the forward input is needed to save it")
        x_sub = act_bwd.save_hard_swish_input(args[0])
    elif bp.save_channels:
        x = args[0]
        if x is None:
            raise UsageError(f"{bp.op.describe()}: the forward input is needed to save its channels")
        x_sub = linear_bwd.select_input_channels(bp.kernel, x, bp.save_channels)
    values: dict[str, np.ndarray] = {}
    for name in bp.saves:
        v = outs[int(name.removeprefix("out"))] if name.startswith("out") else args[int(name.removeprefix("in"))]
        if v is None:
            raise UsageError(f"{bp.op.describe()}: the forward value {name!r} is needed to save it")
        values[name] = np.array(v, copy=True)
    return Saved(mask, x_sub, MappingProxyType(values) if values else _NO_VALUES)


def saved_tensor(op: Op, name: str) -> str:
    """The tensor a saved value name (SAVE_NAMES) of ``op`` stands for."""
    t = op.outputs[int(name.removeprefix("out"))] if name.startswith("out") else op.inputs[int(name.removeprefix("in"))]
    if t is None:
        raise UsageError(f"{op.describe()}: saved value {name!r} is an absent input")
    return t


def run_backward(bp: BackwardParams, g_out: Grad, saved: Saved, weight: np.ndarray | None = None) -> BackwardResult:
    """The backward of one op: masks the output gradient (when the rule says so) and runs
    the rule. ``weight``: the op's current int8 weights (needed for a linear input gradient)."""
    g = g_out
    if bp.clamp is not None:
        if saved.mask is None:
            raise UsageError(f"{bp.op.describe()}: the backward needs the clamp mask saved in the forward pass")
        g = apply_mask(g_out, saved.mask)
    return bp.rule.run(bp.kernel, g, saved, weight, bp.request)


def apply_update(
    bp: BackwardParams,
    res: BackwardResult,
    weight: np.ndarray | None,
    bias: np.ndarray | None,
    lr: tuple[int, int],
    c_t: int,
    state: np.ndarray,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """SGD step of a linear op's trained parameters: ``(new weight | None, new bias | None)``."""
    if bp.update is None:
        return None, None
    new_w = new_b = None
    if (res.weight_grad is not None and weight is None) or (res.bias_grad is not None and bias is None):
        raise UsageError(f"{bp.op.describe()}: the update needs the current weight and bias arrays")
    if res.weight_grad is not None and weight is not None:
        new_w = update_weights(
            bp.update, weight, res.weight_grad, res.param_exponent, bp.request.weight_channels, lr, c_t, state
        )
    if res.bias_grad is not None and bias is not None:
        new_b = update_bias(bp.update, bias, res.bias_grad, res.param_exponent, lr, c_t)
    return new_w, new_b
