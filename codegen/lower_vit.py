"""Lowering of the tiny-ViT ops (``firmware_templates/runtime/include/tt_vit.h``): forward kernel
calls and backward steps, for :mod:`codegen.lower` (which dispatches here).

Forward: ADD (broadcast) / SUB / MUL → ``tt_binary_s8``; RSQRT → ``tt_lut_s8`` (its table a flash
array); SOFTMAX, BATCH_MATMUL, TRANSPOSE, STRIDED_SLICE; CONCATENATION of two inputs
(``tt_concat2_s8``, a constant class token read from flash); TOKEN_SELECT (BSR's token
dropping: the kept rows and their uint8 indices). The CNN ops (and MEAN, HARD_SWISH, the
linear layers) stay in :mod:`codegen.lower`.

Backward: one ``tt_*_bwd_s16`` call per produced input gradient, ``(params, [which,] g_y, e_y,
[other,] g_x, &e_x)``, after the step's clamp mask (``tt_apply_mask_s16``, in
:func:`codegen.lower._backward_step`). ``other`` is the value the rule reads whole: the plan's
saved copy (``saved:<tensor>``, written by the forward pass with ``tt_copy_s8``) or, for a
constant operand, its flash array. An input gradient computed in place (plan
``gradient_aliases``) gets the output gradient's buffer: the kernels allow it for SOFTMAX,
MUL, RSQRT (and SUB of a same-shape input).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import numpy as np

from codegen.cparams import vit as cv
from codegen.lower import ArenaPtr, Arg, Lit, _Builder, ctypes_init
from tinytrain.errors import UsageError
from tinytrain.ir.ops import OpKind
from tinytrain.train.build import BackwardStep
from tinytrain.train.kernels import attn_bwd, layout_bwd, norm_bwd, token_bwd

FORWARD_KINDS = frozenset(
    {
        OpKind.ADD,
        OpKind.SUB,
        OpKind.MUL,
        OpKind.RSQRT,
        OpKind.SOFTMAX,
        OpKind.BATCH_MATMUL,
        OpKind.TRANSPOSE,
        OpKind.STRIDED_SLICE,
        OpKind.CONCATENATION,
        OpKind.TOKEN_SELECT,
    }
)
"""Op kinds :func:`forward_op` lowers (ADD: the broadcasting one; the same-shape ADD is the CNN's)."""


def plain_add(b: _Builder, i: int) -> bool:
    """An ADD of two inputs of the output's shape: the CNN residual add ``tt_add_s8``."""
    g = b.graph
    op = g.ops[i]
    out = g.tensor(op.outputs[0]).shape
    return all(n is not None and g.tensor(n).shape == out for n in op.inputs[:2])


# ------------------------------------------------------------------ forward


def forward_op(b: _Builder, i: int) -> None:
    """The forward kernel call of ViT op i (its output buffer(s) in the plan)."""
    g = b.graph
    op = g.ops[i]
    ins, outs = g.op_inputs(op), g.op_outputs(op)
    k = op.kind
    desc = f"op {i} {k.value} -> {op.outputs[0]}"
    out = b.arena(f"act:{op.outputs[0]}", "int8_t")
    x = b.act(str(op.inputs[0]))
    if k in (OpKind.ADD, OpKind.SUB, OpKind.MUL):
        cp = cv.binary_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_binary_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_binary_s8", desc, (ps, x, b.act(str(op.inputs[1])), out), "forward")
    elif k is OpKind.RSQRT:
        cp = cv.rsqrt_c_params(op, ins, outs)
        table = b.array(f"lut_{i}", cp.arrays["table"], f"RSQRT table of op {i}")
        ps = b.struct(f"p_{i}", "tt_lut_params", ctypes_init(cp.struct, {"table": table}), desc)
        b.call("tt_lut_s8", desc, (ps, x, out), "forward")
    elif k is OpKind.SOFTMAX:
        cp = cv.softmax_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_softmax_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_softmax_s8", desc, (ps, x, out), "forward")
    elif k is OpKind.BATCH_MATMUL:
        cp = cv.batch_matmul_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_batch_matmul_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_batch_matmul_s8", desc, (ps, x, b.act(str(op.inputs[1])), out), "forward")
    elif k in (OpKind.TRANSPOSE, OpKind.STRIDED_SLICE):
        if k is OpKind.TRANSPOSE:
            cp, ctype, kernel = cv.transpose_c_params(op, ins, outs), "tt_transpose_params", "tt_transpose_s8"
        else:
            cp, ctype = cv.strided_slice_c_params(op, ins, outs), "tt_strided_slice_params"
            kernel = "tt_strided_slice_s8"
        ps = b.struct(f"p_{i}", ctype, ctypes_init(cp.struct, {}), desc)
        b.call(kernel, desc, (ps, x, out), "forward")
    elif k is OpKind.CONCATENATION:
        if len(op.inputs) != 2 or any(n is None for n in op.inputs):
            raise UsageError(f"{op.describe()}: the C code generator concatenates two inputs, got {len(op.inputs)}")
        cp = cv.concat_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_concat_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_concat2_s8", desc, (ps, x, b.act(str(op.inputs[1])), out), "forward")
    elif k is OpKind.TOKEN_SELECT:
        cp = cv.token_select_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_token_select_params", ctypes_init(cp.struct, {}), desc)
        idx = b.arena(f"act:{op.outputs[1]}", "uint8_t")
        b.call("tt_token_select_s8", desc, (ps, x, b.act(str(op.inputs[1])), out, idx), "forward")
    else:
        raise UsageError(f"{op.describe()}: the C code generator has no ViT kernel for {k.value}")


# ------------------------------------------------------------------ backward

Dest = Callable[[int], tuple[ArenaPtr, ArenaPtr]]


def _operand(b: _Builder, st: BackwardStep, j: int, const: np.ndarray | None) -> Arg:
    """Operand j as the backward reads it: a constant's flash array, else the saved copy."""
    tensor = str(st.op.inputs[j])
    if const is not None:
        return b.array(f"c_{tensor}", np.asarray(const, dtype=np.int8), f"constant {tensor}")
    return b.arena(b.saved_buffer(st.op_index, tensor), "int8_t")


def _saved_out(b: _Builder, st: BackwardStep, k: int = 0, ctype: str = "int8_t") -> Arg:
    return b.arena(b.saved_buffer(st.op_index, st.op.outputs[k]), ctype)


def backward_op(b: _Builder, st: BackwardStep, dest: Dest, gy: ArenaPtr, ey: Arg) -> None:
    """The input-gradient calls of ViT step ``st`` (its output gradient already masked)."""
    op = st.op
    i = st.op_index
    kp = st.params.kernel
    wanted = sorted(st.params.request.input_grads)
    desc = op.describe()
    bdesc = f"backward of {desc}"

    def grad_call(kernel: str, which: int, pre: tuple[Arg, ...], post: tuple[Arg, ...] = ()) -> None:
        gx, ex = dest(which)
        b.call(kernel, f"gradient of input {which} of {desc}", (*pre, gy, ey, *post, gx, ex), "backward")

    if isinstance(kp, attn_bwd.BatchMatMulBwdParams):
        ps = b.struct(f"bb_{i}", "tt_batch_matmul_bwd_params", ctypes_init(cv.batch_matmul_bwd_c_params(kp).struct, {}),
                      bdesc)  # fmt: skip
        for w in wanted:
            other = _operand(b, st, 1 - w, kp.consts[1 - w])
            grad_call("tt_batch_matmul_bwd_s16", w, (ps, Lit(w)), (other,))
    elif isinstance(kp, attn_bwd.SoftmaxBwdParams):
        ps = b.struct(f"sb_{i}", "tt_softmax_bwd_params", ctypes_init(cv.softmax_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_softmax_bwd_s16", w, (ps,), (_saved_out(b, st),))
    elif isinstance(kp, norm_bwd.MulBwdParams):
        ps = b.struct(f"mb_{i}", "tt_mul_bwd_params", ctypes_init(cv.mul_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            j = 0 if kp.square else 1 - w
            grad_call("tt_mul_bwd_s16", w, (ps, Lit(w)), (_operand(b, st, j, kp.consts[j]),))
    elif isinstance(kp, norm_bwd.SubBwdParams):
        ps = b.struct(f"subb_{i}", "tt_sub_bwd_params", ctypes_init(cv.sub_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_sub_bwd_s16", w, (ps, Lit(w)))
    elif isinstance(kp, norm_bwd.MeanBwdParams):
        ps = b.struct(f"mlb_{i}", "tt_mean_last_bwd_params", ctypes_init(cv.mean_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_mean_last_bwd_s16", w, (ps,))
    elif isinstance(kp, norm_bwd.RsqrtBwdParams):
        ps = b.struct(f"rb_{i}", "tt_rsqrt_bwd_params", ctypes_init(cv.rsqrt_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_rsqrt_bwd_s16", w, (ps,), (_saved_out(b, st),))
    elif isinstance(kp, layout_bwd.TransposeBwdParams):
        ps = b.struct(f"tb_{i}", "tt_transpose_params", ctypes_init(cv.transpose_bwd_c_params(kp).struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_transpose_bwd_s16", w, (ps,))
    elif isinstance(kp, layout_bwd.StridedSliceBwdParams):
        cp = cv.strided_slice_bwd_c_params(kp)
        ps = b.struct(f"ssb_{i}", "tt_strided_slice_params", ctypes_init(cp.struct, {}), bdesc)
        n_in = int(np.prod(kp.in_shape))
        for w in wanted:
            grad_call("tt_strided_slice_bwd_s16", w, (ps, Lit(n_in)))
    elif isinstance(kp, layout_bwd.ConcatenationBwdParams):
        for w in wanted:
            cp = cv.concat_bwd_c_params(kp, w)
            ps = b.struct(f"cb_{i}_{w}", "tt_concat_bwd_params", ctypes_init(cp.struct, {}), bdesc)
            grad_call("tt_concat_bwd_s16", w, (ps,))
    elif isinstance(kp, token_bwd.TokenSelectBwdParams):
        cp = cv.token_select_bwd_c_params(kp)
        ps = b.struct(f"tsb_{i}", "tt_token_select_params", ctypes_init(cp.struct, {}), bdesc)
        for w in wanted:
            grad_call("tt_token_select_bwd_s16", w, (ps,), (_saved_out(b, st, 1, "uint8_t"),))
    else:
        raise UsageError(f"{desc}: the C code generator has no backward kernel for {op.kind.value}")


BACKWARD_PARAMS = MappingProxyType(
    {
        OpKind.BATCH_MATMUL: attn_bwd.BatchMatMulBwdParams,
        OpKind.SOFTMAX: attn_bwd.SoftmaxBwdParams,
        OpKind.MUL: norm_bwd.MulBwdParams,
        OpKind.SUB: norm_bwd.SubBwdParams,
        OpKind.RSQRT: norm_bwd.RsqrtBwdParams,
        OpKind.TRANSPOSE: layout_bwd.TransposeBwdParams,
        OpKind.STRIDED_SLICE: layout_bwd.StridedSliceBwdParams,
        OpKind.CONCATENATION: layout_bwd.ConcatenationBwdParams,
        OpKind.TOKEN_SELECT: token_bwd.TokenSelectBwdParams,
    }
)
"""The ViT steps :func:`backward_op` lowers, by op kind (and MEAN over the last axis:
``norm_bwd.MeanBwdParams``)."""


def handles_backward(st: BackwardStep) -> bool:
    kp = st.params.kernel
    return isinstance(kp, norm_bwd.MeanBwdParams) or (
        st.op.kind in BACKWARD_PARAMS and isinstance(kp, BACKWARD_PARAMS[st.op.kind])
    )
