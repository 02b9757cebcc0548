"""Token dropping for Block Selective Reprogramming (docs/schemes.md, "Block Selective
Reprogramming"): after each chosen (frozen) transformer block ``b``, a TOKEN_SELECT op keeps
the class token and the ``K = ⌈keep · (T − 1)⌉`` patch tokens of the largest class-token
attention of block ``b`` (tinytrain/sim/kernels/token_select.py); every later op runs on
``1 + K`` tokens.

The op reads the residual stream that ends block ``b`` (the output of its last op, the
second residual ADD) and the probabilities of block ``b``'s SOFTMAX, and every later reader
of that stream reads the kept rows instead. The shapes of every later tensor are derived
again (elementwise broadcasting, MEAN, FULLY_CONNECTED, RESHAPE, TRANSPOSE, BATCH_MATMUL,
CONCATENATION; any other op keeps its output shape), a RESHAPE's shape constant is replaced
by a new constant (the converter shares one constant among all blocks), and every later op
is checked with its forward kernel's ``prepare``: the program stays static, its buffers
sized for the kept count. ``keep`` applies at each drop to the patch tokens left then
(``drop_at=1+2, keep=0.5``: 65 → 33 → 17 tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from tinytrain.errors import TinytrainError, UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import (
    BatchMatMulAttrs,
    ConcatenationAttrs,
    FullyConnectedAttrs,
    Op,
    OpKind,
    ReduceAttrs,
    ReshapeAttrs,
    TokenSelectAttrs,
)
from tinytrain.ir.tensor import Tensor, TensorKind
from tinytrain.ir.verify import verify
from tinytrain.sim.kernels import KERNELS
from tinytrain.train.vit_blocks import ViTBlocks, vit_blocks

BROADCAST_OPS = frozenset({OpKind.ADD, OpKind.SUB, OpKind.MUL, OpKind.SQUARED_DIFFERENCE})
REDUCE_OPS = frozenset({OpKind.MEAN, OpKind.SUM})
# Ops whose output has their first input's shape.
SAME_SHAPE_OPS = frozenset(
    {
        OpKind.RSQRT,
        OpKind.HARD_SWISH,
        OpKind.SOFTMAX,
        OpKind.LOG_SOFTMAX,
        OpKind.LOGISTIC,
        OpKind.TANH,
        OpKind.RELU,
        OpKind.RELU6,
        OpKind.LEAKY_RELU,
        OpKind.QUANTIZE,
        OpKind.DEQUANTIZE,
    }
)


@dataclass(frozen=True)
class TokenDrop:
    """Where tokens are dropped (model block numbers, ascending, distinct) and the fraction
    of the patch tokens each drop keeps, in (0, 1]."""

    drop_at: tuple[int, ...]
    keep: float

    def __post_init__(self) -> None:
        check_keep(self.keep)
        if not self.drop_at:
            raise UsageError("token dropping needs at least one block to drop tokens after (drop_at)")
        if list(self.drop_at) != sorted(set(self.drop_at)):
            raise UsageError(f"drop_at blocks must be distinct and ascending, got {list(self.drop_at)}")


def check_keep(keep: float) -> None:
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < float(keep) <= 1.0:
        raise UsageError(f"keep must be a fraction in (0, 1] of the patch tokens, got {keep!r}")


def kept_count(keep: float, patches: int) -> int:
    """``K = ⌈keep · patches⌉`` (at least 1), robust to binary fractions (0.7 · 10 = 7)."""
    check_keep(keep)
    return max(1, math.ceil(round(float(keep) * patches, 9)))


def drop_tokens(graph: Graph, drop: TokenDrop) -> Graph:
    """``graph`` with a TOKEN_SELECT after each block of ``drop.drop_at``; UsageError when a
    block does not exist, is not a ``… → SOFTMAX → … → residual ADD`` block, or a later op
    cannot run on fewer tokens."""
    vb = vit_blocks(graph)
    for b in drop.drop_at:
        vb.resolve(b)  # exists (a UsageError naming the model's blocks otherwise)
    sites = {_block_end(graph, vb, b): b for b in drop.drop_at}
    shapes: dict[str, tuple[int, ...]] = {}  # activations whose shape changed
    renamed: dict[str, str] = {}  # a dropped stream -> its kept rows
    origin: dict[str, str] = {}  # kept rows -> the stream they come from (its shape before)
    new_tensors: list[Tensor] = []
    ops: list[Op] = []
    first_changed = len(graph.ops)
    for i, op in enumerate(graph.ops):
        op = replace(op, inputs=tuple(None if n is None else renamed.get(n, n) for n in op.inputs))
        if any(n in shapes for n in op.inputs if n is not None):
            op = _reshape_op(graph, op, shapes, origin, new_tensors)
        ops.append(op)
        if i in sites:
            b = sites[i]
            first_changed = min(first_changed, len(ops))
            sel, made = _token_select(graph, vb, b, op.outputs[0], shapes, drop.keep)
            ops.append(sel)
            new_tensors.extend(made)
            renamed[op.outputs[0]] = sel.outputs[0]
            origin[sel.outputs[0]] = op.outputs[0]
            shapes.update({t.name: t.shape for t in made})
    tensors = [replace(t, shape=shapes[t.name]) if t.name in shapes else t for t in graph.tensors]
    tensors += [replace(t, shape=shapes.get(t.name, t.shape)) for t in new_tensors]
    used = {n for op in ops for n in (*op.inputs, *op.outputs) if n is not None} | set(graph.inputs)
    out = Graph(
        name=graph.name,
        tensors=tuple(t for t in tensors if t.name in used or t.name in graph.outputs),
        ops=tuple(ops),
        inputs=graph.inputs,
        outputs=tuple(renamed.get(n, n) for n in graph.outputs),
    )
    verify(out)
    _check_kernels(out, first_changed)
    return out


def block_tokens(graph: Graph) -> dict[int, int]:
    """Tokens each transformer block runs on (the token axis of its first op's input)."""
    vb = vit_blocks(graph)
    out: dict[int, int] = {}
    for i, b in enumerate(vb.op_block):
        if b is None or b in out:
            continue
        x = graph.tensor(str(graph.ops[i].inputs[0]))
        if len(x.shape) == 3:
            out[b] = x.shape[1]
    return out


# ---------------------------------------------------------------- the TOKEN_SELECT op


def _block_end(graph: Graph, vb: ViTBlocks, b: int) -> int:
    idx = [i for i, ob in enumerate(vb.op_block) if ob == b]
    end = graph.ops[idx[-1]]
    x = graph.tensor(end.outputs[0])
    if end.kind is not OpKind.ADD or len(x.shape) != 3 or x.shape[0] != 1 or x.dtype is not DType.INT8:
        raise UsageError(
            f"cannot drop tokens after block {b}: its last op {end.describe()} is not a residual ADD "
            f"writing an int8 [1, T, D] stream (shape {list(x.shape)})"
        )
    return idx[-1]


def _token_select(
    graph: Graph, vb: ViTBlocks, b: int, x_name: str, shapes: Mapping[str, tuple[int, ...]], keep: float
) -> tuple[Op, list[Tensor]]:
    soft = [op for op, ob in zip(graph.ops, vb.op_block, strict=True) if ob == b and op.kind is OpKind.SOFTMAX]
    if len(soft) != 1:
        raise UsageError(f"cannot drop tokens after block {b}: it has {len(soft)} SOFTMAX ops (attention), not 1")
    p_name = soft[0].outputs[0]
    x = graph.tensor(x_name)
    t, d = _shape(graph, x_name, shapes)[1:]
    if t < 2:
        raise UsageError(f"cannot drop tokens after block {b}: its output has {t} token(s) left")
    k = kept_count(keep, t - 1)
    kept = Tensor(f"{x_name}/token_select", (1, 1 + k, d), x.dtype, TensorKind.ACTIVATION, x.quant)
    idx = Tensor(f"{x_name}/token_select_idx", (1, k), DType.UINT8, TensorKind.ACTIVATION)
    for tn in (kept, idx):
        if graph.has_tensor(tn.name):
            raise UsageError(f"cannot drop tokens after block {b}: the model already has a tensor {tn.name!r}")
    op = Op(OpKind.TOKEN_SELECT, (x_name, p_name), (kept.name, idx.name), TokenSelectAttrs(k), -1)
    return op, [kept, idx]


# ---------------------------------------------------------------- shapes of later ops


def _shape(graph: Graph, name: str | None, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    assert name is not None
    return shapes[name] if name in shapes else graph.tensor(name).shape


def _reshape_op(
    graph: Graph, op: Op, shapes: dict[str, tuple[int, ...]], origin: Mapping[str, str], new_tensors: list[Tensor]
) -> Op:
    """Derives ``op``'s output shapes from its (changed) input shapes into ``shapes``; returns
    the op, with a new shape constant for a RESHAPE."""
    ins = [None if n is None else _shape(graph, n, shapes) for n in op.inputs]
    x = ins[0]
    assert x is not None
    new: tuple[int, ...] | None = None
    if op.kind in BROADCAST_OPS and len(ins) == 2 and ins[1] is not None:
        try:
            new = tuple(int(v) for v in np.broadcast_shapes(x, ins[1]))
        except ValueError:
            raise _cannot(op, f"shapes {list(x)} and {list(ins[1])} do not broadcast") from None
    elif op.kind in SAME_SHAPE_OPS:
        new = x
    elif op.kind in REDUCE_OPS and isinstance(op.attrs, ReduceAttrs):
        axes = {a % len(x) for a in _const(graph, op, 1).reshape(-1).tolist()}
        keep = op.attrs.keep_dims
        new = tuple(1 if a in axes else v for a, v in enumerate(x) if keep or a not in axes)
    elif op.kind is OpKind.FULLY_CONNECTED and isinstance(op.attrs, FullyConnectedAttrs):
        units = graph.tensor(str(op.inputs[1])).shape[0]
        new = (*x[:-1], units) if op.attrs.keep_num_dims else (math.prod(x) // x[-1], units)
    elif op.kind is OpKind.TRANSPOSE:
        new = tuple(x[a] for a in _const(graph, op, 1).reshape(-1).tolist())
    elif op.kind is OpKind.BATCH_MATMUL and isinstance(op.attrs, BatchMatMulAttrs) and ins[1] is not None:
        y = ins[1]
        m = x[-1] if op.attrs.adj_x else x[-2]
        n = y[-2] if op.attrs.adj_y else y[-1]
        try:
            batch = tuple(int(v) for v in np.broadcast_shapes(x[:-2], y[:-2]))
        except ValueError:
            raise _cannot(op, f"batch shapes {list(x[:-2])} and {list(y[:-2])} do not broadcast") from None
        new = (*batch, m, n)
    elif op.kind is OpKind.CONCATENATION and isinstance(op.attrs, ConcatenationAttrs):
        axis = op.attrs.axis % len(x)
        new = tuple(sum(s[axis] for s in ins if s is not None) if a == axis else v for a, v in enumerate(x))
    elif op.kind is OpKind.RESHAPE:
        return _reshape_reshape(graph, op, shapes, origin, new_tensors)
    if new is not None:
        shapes[op.outputs[0]] = new
    return op


def _reshape_reshape(
    graph: Graph, op: Op, shapes: dict[str, tuple[int, ...]], origin: Mapping[str, str], new_tensors: list[Tensor]
) -> Op:
    """A RESHAPE keeps each changed input axis as a whole output axis at the same position
    (the same number of elements before it): that output axis takes the new size."""
    x_name = str(op.inputs[0])
    old_in, new_in = graph.tensor(origin.get(x_name, x_name)).shape, shapes[x_name]
    old_out = graph.tensor(op.outputs[0]).shape
    out = list(old_out)
    changed: list[int] = []
    for a, (o, n) in enumerate(zip(old_in, new_in, strict=True)):
        if o == n:
            continue
        before = math.prod(old_in[:a])
        cands = [c for c in range(len(old_out)) if math.prod(old_out[:c]) == before and old_out[c] == o]
        if not cands:
            raise _cannot(op, f"axis {a} of {list(old_in)} (the tokens) is not an axis of the output {list(old_out)}")
        out[cands[-1]] = n
        changed.append(cands[-1])
    if not changed:
        return op
    shapes[op.outputs[0]] = tuple(out)
    attrs = op.attrs
    if isinstance(attrs, ReshapeAttrs) and attrs.new_shape:
        attrs = ReshapeAttrs(_new_shape_values(attrs.new_shape, changed, out))
    inputs = list(op.inputs)
    if len(op.inputs) > 1 and op.inputs[1] is not None:
        c = graph.tensor(op.inputs[1])
        values = tuple(int(v) for v in _const(graph, op, 1).reshape(-1).tolist())
        if len(values) != len(out):
            raise _cannot(op, f"its shape constant {list(values)} does not have the output's rank")
        data = np.array(_new_shape_values(values, changed, out), dtype=c.dtype.np).reshape(c.shape)
        name = f"{c.name}@{'x'.join(str(v) for v in out)}"
        if not any(t.name == name for t in new_tensors):
            new_tensors.append(replace(c, name=name, data=data, kind=TensorKind.CONSTANT))
        inputs[1] = name
    return replace(op, inputs=tuple(inputs), attrs=attrs)


def _new_shape_values(values: tuple[int, ...], changed: list[int], out: list[int]) -> tuple[int, ...]:
    return tuple(out[a] if a in changed and v != -1 else v for a, v in enumerate(values))


def _const(graph: Graph, op: Op, k: int) -> np.ndarray:
    name = op.inputs[k] if k < len(op.inputs) else None
    data = None if name is None else graph.tensor(name).data
    if data is None:
        raise _cannot(op, f"input {k} is not a constant")
    return data


def _cannot(op: Op, detail: str) -> UsageError:
    return UsageError(f"cannot drop tokens before {op.describe()}: {detail}")


def _check_kernels(graph: Graph, start: int) -> None:
    """Every op from the first TOKEN_SELECT on accepts its new shapes (forward ``prepare``)."""
    for op in graph.ops[start - 1 :]:
        spec = KERNELS.get(op.kind)
        if spec is None:
            raise _cannot(op, "the simulator has no kernel for it")
        try:
            spec.prepare(op, graph.op_inputs(op), graph.op_outputs(op))
        except TinytrainError as exc:
            raise _cannot(op, f"it does not run on the kept tokens ({exc})") from None
