"""Lowering: a compiled training program → an ordered, frozen list of C kernel calls.

No C text is produced here: a :class:`Lowered` holds data only (kernel names, the
arguments as :data:`Arg` values, ``static const`` params structs as nested field values,
flash arrays as numpy arrays) and :mod:`codegen.emit` renders it with Jinja2 templates.

Every call does what :meth:`tinytrain.train.executor.Executor.step` does, in its order:
the whole forward pass (the device has no frozen-feature cache) from the native sample
(``tt_preprocess_u8_s8``, streamed into the first fused block when the plan has no model
input buffer), with the clamp masks and saved input channels of the live ops; the softmax
cross-entropy gradient; the backward steps with their updates (input gradients first,
with the old weights; then per layer the weight rows and the bias, the PRNG draws in the
simulator's order). Every buffer is the plan's (``Plan.offset``); gradients ``grad:X`` are
laid out as [int32 exponent][int16 mantissas].
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codegen.cparams import backward as cb
from codegen.cparams import forward as cf
from codegen.cparams import fused_block as cfb
from codegen.cparams import update as cu
from tinytrain.errors import UsageError
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import OpKind
from tinytrain.passes.fuse_blocks import FusedBlock
from tinytrain.sim.kernels.fused_block import prepare_fused_block
from tinytrain.testing.c_hard_swish import hard_swish_c_params
from tinytrain.train import alast, dgsu
from tinytrain.train.build import BackwardStep, TrainingProgram
from tinytrain.train.compile import Compiled
from tinytrain.train.data import preprocess_for_graph
from tinytrain.train.grad_rules import saved_tensor
from tinytrain.train.kernels.mask import mask_nbytes
from tinytrain.train.memory import save_keys, saved_copies, saved_name

GRAD_EXP_BYTES = 4  # grad:X = [int32 exponent][int16 mantissas]

# ------------------------------------------------------------------ arguments


@dataclass(frozen=True)
class ArenaPtr:
    """``(ctype *)(tt_arena + offset)``: a planned buffer (plus a byte offset inside it)."""

    buffer: str
    offset: int
    ctype: str


@dataclass(frozen=True)
class ArenaValue:
    """``*(const ctype *)(tt_arena + offset)``: a scalar read from the arena (an exponent)."""

    buffer: str
    offset: int
    ctype: str


@dataclass(frozen=True)
class Sym:
    """A flash symbol (an array name, or ``&name`` of a params struct)."""

    text: str


@dataclass(frozen=True)
class Lit:
    value: int


@dataclass(frozen=True)
class Local:
    """A name of the generated function's scope (``sample``, ``row``, ``&step``, ``NULL``...)."""

    text: str


Arg = ArenaPtr | ArenaValue | Sym | Lit | Local
NULL = Local("NULL")


@dataclass(frozen=True)
class Call:
    kernel: str
    comment: str
    args: tuple[Arg, ...]
    phase: str  # forward | loss | backward


@dataclass(frozen=True)
class RowSource:
    """The rows of a run-time row loop: ``count`` (an int32 in the arena) entries of the
    uint16 index array ``sel`` (a DGSU layer's chosen rows)."""

    count: ArenaValue
    sel: ArenaPtr


@dataclass(frozen=True)
class Loop:
    """``for (row = 0; row < count; ++row) { calls }``; with ``rows_from``, the loop runs
    over ``sel[0 .. *count)`` instead (``for (j …) { row = sel[j]; calls }``; ``count`` is
    then the most rows it can run)."""

    count: int
    comment: str
    calls: tuple[Call, ...]
    phase: str
    rows_from: RowSource | None = None


Item = Call | Loop

# ------------------------------------------------------------------ constants


@dataclass(frozen=True, eq=False)
class ConstArray:
    name: str
    ctype: str
    values: np.ndarray  # 1-D
    comment: str


@dataclass(frozen=True)
class StructInit:
    """A struct initialiser: (field, value) pairs; values are ints, tuples of ints (arrays,
    possibly nested), :class:`StructInit` or an :data:`Arg` (pointer fields)."""

    fields: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class ConstStruct:
    name: str
    ctype: str
    init: StructInit
    comment: str


@dataclass(frozen=True)
class TrainedTensor:
    """A trained tensor as the device holds it: ``buffer`` (the arena slice) of ``dtype``;
    ``channels`` the trained input channels of a weight (the slice ``w[..., channels]``,
    fully connected ``w[:, channels]``), empty for a bias (whole)."""

    name: str
    buffer: str
    dtype: str
    shape: tuple[int, ...]  # of the full tensor
    channels: tuple[int, ...]
    kind: OpKind
    flash: str  # the initial slice's flash array


@dataclass(frozen=True)
class Lowered:
    calls: tuple[Item, ...]
    arrays: tuple[ConstArray, ...]
    structs: tuple[ConstStruct, ...]
    trained: tuple[TrainedTensor, ...]
    arena_size: int
    offsets: Mapping[str, int]
    sample_bytes: int
    sample_shape: tuple[int, ...]
    sample_buffer: str | None  # "sample" when the plan holds the native sample
    logits: ArenaPtr
    classes: int
    preprocess: str  # the preprocess params struct name
    stream_row_source: bool
    kernels: tuple[str, ...] = field(default=())


_CTYPE = {
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.uint16): "uint16_t",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.int64): "int64_t",
}


def c_ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


class _Builder:
    def __init__(self, compiled: Compiled) -> None:
        self.c = compiled
        self.graph: Graph = compiled.program.graph
        self.plan = compiled.plan
        self.items: list[Item] = []
        self.arrays: list[ConstArray] = []
        self.structs: list[ConstStruct] = []
        self._array_keys: dict[tuple[str, bytes], str] = {}
        self._names: set[str] = set()
        self.trained: list[TrainedTensor] = []
        self.linear_bwd: dict[int, Sym] = {}  # op index -> its tt_linear_bwd_params
        # gradients computed in place over another one (plan.json gradient_aliases)
        self.aliases: dict[str, str] = dict(compiled.memory.grad_aliases)
        self.saved_names = saved_buffers(compiled.program)
        self.saved_done: set[str] = set()  # saved copies the forward pass already wrote

    # ---------------------------------------------------------------- helpers

    def name(self, hint: str) -> str:
        base = "tt_" + c_ident(hint)[:48]
        n, k = base, 1
        while n in self._names:
            k += 1
            n = f"{base}_{k}"
        self._names.add(n)
        return n

    def array(self, hint: str, values: np.ndarray, comment: str = "") -> Sym:
        a = np.ascontiguousarray(values).reshape(-1)
        ctype = _CTYPE[a.dtype]
        key = (ctype, a.tobytes())
        if key in self._array_keys:
            return Sym(self._array_keys[key])
        nm = self.name(hint)
        self._array_keys[key] = nm
        self.arrays.append(ConstArray(nm, ctype, a, comment))
        return Sym(nm)

    def struct(self, hint: str, ctype: str, init: StructInit, comment: str = "") -> Sym:
        nm = self.name(hint)
        self.structs.append(ConstStruct(nm, ctype, init, comment))
        return Sym("&" + nm)

    def has(self, buf: str) -> bool:
        return any(p.name == buf for p in self.plan.buffers)

    def arena(self, buf: str, ctype: str, skip: int = 0) -> ArenaPtr:
        return ArenaPtr(buf, self.plan.offset(buf) + skip, ctype)

    def grad(self, tensor: str, buf: str | None = None) -> tuple[ArenaPtr, ArenaPtr, ArenaValue]:
        """(mantissas, exponent pointer, exponent value) of a gradient buffer."""
        b = buf or f"grad:{tensor}"
        b = self.aliases.get(b, b)
        off = self.plan.offset(b)
        return ArenaPtr(b, off + GRAD_EXP_BYTES, "int16_t"), ArenaPtr(b, off, "int32_t"), ArenaValue(b, off, "int32_t")

    def saved_buffer(self, op_index: int, tensor: str) -> str:
        """The plan's saved copy of ``tensor`` that op ``op_index``'s backward reads."""
        name = self.saved_names.get((op_index, tensor))
        if name is None:
            raise UsageError(f"op {op_index}: the plan saves no copy of {tensor!r} for its backward")
        return name

    def call(self, kernel: str, comment: str, args: Sequence[Arg], phase: str) -> None:
        self.items.append(Call(kernel, comment, tuple(args), phase))

    def act(self, tensor: str) -> Arg:
        t = self.graph.tensor(tensor)
        if t.data is not None:
            return self.array(f"c_{tensor}", np.asarray(t.data), f"constant {tensor}")
        return self.arena(f"act:{tensor}", "int8_t")

    # ---------------------------------------------------------------- trained params

    def trained_weight(self, i: int) -> tuple[Arg, BackwardStep | None]:
        """(w_train arena pointer or NULL, the backward step) of op i."""
        st = self.c.program.backward_of(i)
        if st is None or not st.params.request.weight_channels:
            return NULL, st
        w = str(self.graph.ops[i].inputs[1])
        return self.arena(f"train:{w}", "int8_t"), st

    def bias_arg(self, i: int) -> Arg:
        op = self.graph.ops[i]
        if len(op.inputs) < 3 or op.inputs[2] is None:
            return NULL
        b = op.inputs[2]
        st = self.c.program.backward_of(i)
        if st is not None and st.params.request.bias:
            return self.arena(f"train:{b}", "int32_t")
        data = self.graph.tensor(b).data
        assert data is not None
        return self.array(f"b_{b}", np.asarray(data, dtype=np.int32), f"bias {b}")

    def weight_arg(self, i: int) -> Sym:
        w = str(self.graph.ops[i].inputs[1])
        data = self.graph.tensor(w).data
        assert data is not None
        return self.array(f"w_{w}", np.asarray(data, dtype=np.int8), f"weights {w}")

    def patch_arg(self, i: int) -> Arg:
        w_train, st = self.trained_weight(i)
        if st is None or w_train is NULL:
            return NULL
        ch = self.array(f"ch_{i}", np.asarray(st.params.request.weight_channels, dtype=np.uint16))
        init = StructInit((("n", len(st.params.request.weight_channels)), ("ch", ch), ("w_train", w_train)))
        return self.struct(f"patch_{i}", "tt_weight_patch", init, f"trained channels of op {i}")


def saved_buffers(program: TrainingProgram) -> dict[tuple[int, str], str]:
    """(op index, tensor) -> the name of the saved copy of ``tensor`` its backward reads, as
    tinytrain/train/memory.py names it (``saved:X@i``, ``saved:X`` shared or read whole by a
    rule, ``saved:X@i+j`` a channel subset several layers read)."""
    copies = saved_copies(program, {}, 0)
    out: dict[tuple[int, str], str] = {}
    for st in program.all_steps:
        for key, _ in save_keys(program.graph, st):
            out[(st.op_index, key[0])] = saved_name(key, copies[key])
    return out


def ctypes_init(s: ctypes.Structure, ptrs: Mapping[str, Arg], prefix: str = "") -> StructInit:
    """The initialiser of a ctypes struct; pointer fields from ``ptrs`` by path (else NULL)."""
    out: list[tuple[str, Any]] = []
    for entry in s._fields_:
        name, ctype = entry[0], entry[1]
        path = prefix + name
        v = getattr(s, name)
        if isinstance(v, ctypes.Structure):
            out.append((name, ctypes_init(v, ptrs, path + ".")))
        elif isinstance(v, ctypes.Array):
            out.append((name, _array_value(v)))
        elif (isinstance(ctype, type) and issubclass(ctype, ctypes._Pointer)) or ctype is ctypes.c_void_p:
            out.append((name, ptrs.get(path, NULL)))
        else:
            out.append((name, int(v)))
    return StructInit(tuple(out))


def _array_value(v: Any) -> Any:
    if isinstance(v, ctypes.Array):
        if len(v) and isinstance(v[0], ctypes.Structure):
            return tuple(ctypes_init(e, {}) for e in v)
        return tuple(_array_value(e) for e in v)
    if isinstance(v, ctypes.Structure):
        return ctypes_init(v, {})
    return int(v)


# ------------------------------------------------------------------ forward


def _forward_op(b: _Builder, i: int) -> None:
    from codegen import lower_vit  # the ViT ops (codegen/lower_vit.py imports this module)

    g = b.graph
    op = g.ops[i]
    ins, outs = g.op_inputs(op), g.op_outputs(op)
    k = op.kind
    desc = f"op {i} {k.value} -> {op.outputs[0]}"
    out = b.arena(f"act:{op.outputs[0]}", "int8_t")
    if k in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
        conv: dict[OpKind, tuple[Any, str, str]] = {
            OpKind.CONV_2D: (cf.conv_c_params, "tt_conv_params", "tt_conv_s8"),
            OpKind.DEPTHWISE_CONV_2D: (cf.depthwise_c_params, "tt_dw_params", "tt_depthwise_conv_s8"),
            OpKind.FULLY_CONNECTED: (cf.fc_c_params, "tt_fc_params", "tt_fc_s8"),
        }
        fn, ctype, kernel = conv[k]
        cp = fn(op, ins, outs)
        ptrs = {p: b.array(f"q_{i}_{p}", a) for p, a in cp.arrays.items()}
        ps = b.struct(f"p_{i}", ctype, ctypes_init(cp.struct, ptrs), desc)
        args = (ps, b.act(str(op.inputs[0])), b.weight_arg(i), b.bias_arg(i), b.patch_arg(i), out)
        b.call(kernel, desc, args, "forward")
    elif k is OpKind.ADD and lower_vit.plain_add(b, i):
        cp = cf.add_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_add_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_add_s8", desc, (ps, b.act(str(op.inputs[0])), b.act(str(op.inputs[1])), out), "forward")
    elif k in (OpKind.AVERAGE_POOL_2D, OpKind.MAX_POOL_2D):
        cp = cf.pool_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_pool_params", ctypes_init(cp.struct, {}), desc)
        kernel = "tt_avg_pool_s8" if k is OpKind.AVERAGE_POOL_2D else "tt_max_pool_s8"
        b.call(kernel, desc, (ps, b.act(str(op.inputs[0])), out), "forward")
    elif k in (OpKind.MEAN, OpKind.SUM):
        cp = cf.mean_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_mean_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_mean_s8", desc, (ps, b.act(str(op.inputs[0])), out), "forward")
    elif k in (OpKind.PAD, OpKind.PADV2):
        cp = cf.pad_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_pad_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_pad_s8", desc, (ps, b.act(str(op.inputs[0])), out), "forward")
    elif k in (OpKind.RESHAPE, OpKind.SQUEEZE, OpKind.EXPAND_DIMS):
        cp = cf.reshape_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_reshape_params", ctypes_init(cp.struct, {}), desc)
        b.call("tt_reshape_s8", desc, (ps, b.act(str(op.inputs[0])), out), "forward")
    elif k is OpKind.HARD_SWISH:
        hs = hard_swish_c_params(op, ins, outs)
        ps = b.struct(f"p_{i}", "tt_hard_swish_params", ctypes_init(hs.struct, {}), desc)
        b.call("tt_hard_swish_s8", desc, (ps, b.act(str(op.inputs[0])), Lit(outs[0].size), out), "forward")
    elif k in lower_vit.FORWARD_KINDS:
        lower_vit.forward_op(b, i)
    else:
        raise UsageError(f"{op.describe()}: the C code generator has no kernel for {k.value}")
    _after_forward(b, i, op.outputs[0])


def _linear_bwd(b: _Builder, st: BackwardStep) -> Sym:
    """The ``tt_linear_bwd_params`` of a linear step (one struct per op)."""
    if st.op_index in b.linear_bwd:
        return b.linear_bwd[st.op_index]
    nm = f"lb_{st.op_index}"
    clb = cb.linear_bwd_struct(st.params.kernel, st.params.request.weight_channels)
    ptrs: dict[str, Arg] = {"mu": b.array(f"mu_{st.op_index}", clb.mu)}
    if clb.channels.size:
        ptrs["channels"] = b.array(f"chan_{st.op_index}", clb.channels)
        ptrs["slot"] = b.array(f"slot_{st.op_index}", clb.slot)
    sym = b.struct(nm, "tt_linear_bwd_params", ctypes_init(clb.struct, ptrs), f"backward of {st.op.describe()}")
    b.linear_bwd[st.op_index] = sym
    return sym


def _after_forward(b: _Builder, i: int, out_name: str, block_input: str | None = None) -> None:
    """Clamp mask and saved channels of a live op (the executor's save_forward)."""
    if i < b.c.program.first_live_op:
        return
    st = b.c.program.backward_of(i)
    if st is None:
        return
    if st.params.clamp is not None and block_input is None:
        lo, hi = st.params.clamp
        n = b.graph.tensor(out_name).size
        mask = b.arena(f"mask:{out_name}", "uint8_t")
        if lo < -128:  # a ViT rule's mask with the lower test disabled (norm_bwd.NO_LOW)
            b.call("tt_vit_clamp_mask_s8", f"clamp mask of op {i}",
                   (b.arena(f"act:{out_name}", "int8_t"), Lit(n), Lit(lo), Lit(hi), mask), "forward")  # fmt: skip
        elif hi > 127:  # MobileTL's sign rule (upper test disabled), of the input for a HARD_SWISH
            src = str(b.graph.ops[i].inputs[0]) if st.params.mask_input else out_name
            b.call("tt_sign_mask_s8", f"sign mask of op {i}", (b.arena(f"act:{src}", "int8_t"), Lit(n), Lit(lo), mask),
                   "forward")  # fmt: skip
        else:
            b.call(
                "tt_clamp_mask_s8",
                f"clamp mask of op {i}",
                (b.arena(f"act:{out_name}", "int8_t"), Lit(n), Lit(lo), Lit(hi), mask),
                "forward",
            )
    if st.params.save_input:  # the exact HARD_SWISH backward's int8 input
        _save_whole(b, i, str(st.op.inputs[0]), f"save the input of op {i}")
    if st.params.save_channels:
        src = str(st.target(0))
        buf = b.saved_buffer(i, src)
        if buf not in b.saved_done:  # a copy several layers share is written once
            b.saved_done.add(buf)
            b.call(
                "tt_linear_save_input_s8",
                f"save the trained input channels of op {i}",
                (_linear_bwd(b, st), b.act(src), b.arena(buf, "int8_t")),
                "forward",
            )
    for name in st.params.saves:  # the values a ViT rule reads whole
        _save_whole(b, i, saved_tensor(st.op, name), f"save {name} of op {i} for its backward")


def _save_whole(b: _Builder, i: int, tensor: str, comment: str) -> None:
    """Copies ``tensor`` (int8, or TOKEN_SELECT's uint8 indices: bytes) into op i's saved buffer,
    unless an earlier op wrote that (shared) copy already."""
    buf = b.saved_buffer(i, tensor)
    if buf in b.saved_done:
        return
    b.saved_done.add(buf)
    n = b.graph.tensor(tensor).nbytes
    b.call("tt_copy_s8", comment, (b.act(tensor), Lit(n), b.arena(buf, "int8_t")), "forward")


def _fused_block(b: _Builder, u: FusedBlock, stream_from: Arg | None) -> None:
    g = b.graph
    prog = b.c.program
    p = prepare_fused_block(g, list(u.op_indices))
    chain = p.chain
    roles = {"lead": chain.lead, "depthwise": chain.depthwise, "project": chain.project}
    bounds: dict[str, tuple[int, int]] = {}
    masks: dict[str, Arg] = {}
    for role, i in roles.items():
        if i is None or i < prog.first_live_op:
            continue
        st = prog.backward_of(i)
        if st is not None and st.params.clamp is not None:
            bounds[role] = st.params.clamp
            masks[role] = b.arena(f"mask:{g.ops[i].outputs[0]}", "uint8_t")
    fb = cfb.fused_block_c(g, u, bounds)
    desc = f"fused block ops {u.start}..{u.stop - 1} -> {u.output}"
    ptrs: dict[str, Arg] = {}
    stages = {"lead": fb.lead, "dw": fb.dw, "proj": fb.proj}
    for nm, stage in stages.items():
        if stage is None:
            continue
        ptrs[f"{nm}.weights"] = b.array(f"fw_{u.start}_{nm}", stage.weights)
        ptrs[f"{nm}.multiplier"] = b.array(f"fq_{u.start}_{nm}", stage.multiplier)
        ptrs[f"{nm}.shift"] = b.array(f"fs_{u.start}_{nm}", stage.shift)
    for nm, i in (("lead", chain.lead), ("dw", chain.depthwise), ("proj", chain.project)):
        if i is not None:  # a stage training a channel subset reads its arena slice (tt_weight_patch)
            patch = b.patch_arg(i)
            if patch is not NULL:
                ptrs[f"{nm}.patch"] = patch
    ps = b.struct(f"fb_{u.start}", "tt_fused_block_params", ctypes_init(fb.to_ctypes().struct, ptrs), desc)
    # saved input channels of the block's lead conv (its input is the block input)
    for i in u.op_indices:
        if i >= prog.first_live_op:
            st = prog.backward_of(i)
            if st is not None and st.params.save_channels:
                _after_forward(b, i, g.ops[i].outputs[0], block_input=u.input)
    biases = [NULL if r is None else b.bias_arg(r) for r in (chain.lead, chain.depthwise, chain.project)]
    mask_args = [masks.get(r, NULL) for r in ("lead", "depthwise", "project")]
    out = b.arena(f"act:{u.output}", "int8_t")
    scratch = b.arena(f"scratch:{u.output}", "void")
    if stream_from is not None:
        ctx = Local("(void *)sample")
        args: tuple[Arg, ...] = (ps, Local("tt_sample_row"), ctx, *biases, out, *mask_args, scratch)
        b.call("tt_fused_block_stream_s8", desc + " (input rows preprocessed from the sample)", args, "forward")
    else:
        args = (ps, b.act(u.input), *biases, out, *mask_args, scratch)
        b.call("tt_fused_block_s8", desc, args, "forward")
    if chain.add is not None and chain.add >= prog.first_live_op:
        st = prog.backward_of(chain.add)
        if st is not None and st.params.clamp is not None:
            _after_forward(b, chain.add, u.output)


# ------------------------------------------------------------------ backward


def _backward_step(b: _Builder, st: BackwardStep, have: set[str]) -> None:
    from codegen import lower_vit

    g = b.graph
    op = st.op
    i = st.op_index
    out = op.outputs[0]
    gy, _, ey = b.grad(out)
    n_out = g.tensor(out).size
    desc = st.op.describe()
    if st.params.clamp is not None:
        b.call(
            "tt_apply_mask_s16",
            f"mask the output gradient of op {i}",
            (gy, b.arena(f"mask:{out}", "uint8_t"), Lit(n_out), gy),
            "backward",
        )
    sums: list[tuple[str, str]] = []

    def dest(k: int) -> tuple[ArenaPtr, ArenaPtr]:
        return _grad_dest(b, st, k, have, sums)

    req = st.params.request
    k = op.kind
    kp = st.params.kernel
    if lower_vit.handles_backward(st):
        lower_vit.backward_op(b, st, dest, gy, ey)
        _finish_sums(b, sums, have, st)
        return
    if k in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
        lb = _linear_bwd(b, st)
        if 0 in req.input_grads:
            gx, ex = dest(0)
            w_train, _ = b.trained_weight(i)
            buf = f"scratch:bwd-in:{i}"
            scratch: Arg = b.arena(buf, "void") if b.has(buf) else NULL
            b.call(
                "tt_linear_bwd_input_s16",
                f"input gradient of {desc}",
                (lb, b.weight_arg(i), w_train, gy, ey, gx, ex, scratch),
                "backward",
            )
        _finish_sums(b, sums, have, st)
        _linear_update(b, st, gy, ey)
        return
    if k in (OpKind.MEAN, OpKind.AVERAGE_POOL_2D):
        cp = cb.pool_bwd_struct(kp)
        if k is OpKind.MEAN:
            ps = b.struct(f"pb_{i}", "tt_mean_bwd_params", ctypes_init(cp.struct, {}), f"backward of {desc}")
            kernel = "tt_mean_bwd_s16"
        else:
            ps = b.struct(
                f"pb_{i}",
                "tt_avgpool_bwd_params",
                ctypes_init(cp.struct, {"mu": b.array(f"pmu_{i}", cp.mu)}),
                f"backward of {desc}",
            )
            kernel = "tt_avgpool_bwd_s16"
        if 0 in req.input_grads:
            gx, ex = dest(0)
            b.call(kernel, f"input gradient of {desc}", (ps, gy, ey, gx, ex), "backward")
    elif k is OpKind.ADD:
        s = cb.add_bwd_struct(kp)
        ps = b.struct(f"ab_{i}", "tt_add_bwd_params", ctypes_init(s, {}), f"backward of {desc}")
        for which in sorted(req.input_grads):
            gx, ex = dest(which)
            b.call(
                "tt_add_bwd_s16", f"gradient of input {which} of {desc}", (ps, Lit(which), gy, ey, gx, ex), "backward"
            )
    elif k in (OpKind.PAD, OpKind.PADV2):
        s2 = cb.pad_bwd_struct(kp)
        ps = b.struct(f"pdb_{i}", "tt_pad_bwd_params", ctypes_init(s2, {}), f"backward of {desc}")
        if 0 in req.input_grads:
            gx, ex = dest(0)
            b.call("tt_pad_bwd_s16", f"input gradient of {desc}", (ps, gy, ey, gx, ex), "backward")
    elif k is OpKind.HARD_SWISH and st.params.save_input:
        # the exact derivative from the saved int8 input (kernels/act_bwd.py)
        if 0 in req.input_grads:
            gx, ex = dest(0)
            saved = b.arena(b.saved_buffer(i, str(op.inputs[0])), "int8_t")
            deriv = b.array(f"hsd_{i}", kp.deriv)
            b.call("tt_hard_swish_bwd_s16", f"input gradient of {desc}", (deriv, gy, ey, saved, Lit(n_out), gx, ex),
                   "backward")  # fmt: skip
    elif k in (OpKind.RESHAPE, OpKind.SQUEEZE, OpKind.EXPAND_DIMS, OpKind.HARD_SWISH):
        # HARD_SWISH: MobileTL's sign rule, the masked output gradient passes unchanged (a copy)
        if 0 in req.input_grads:
            gx, ex = dest(0)
            b.call("tt_reshape_bwd_s16", f"input gradient of {desc}", (Lit(n_out), gy, ey, gx, ex), "backward")
    else:
        raise UsageError(f"{op.describe()}: the C code generator has no backward kernel for {k.value}")
    _finish_sums(b, sums, have, st)


def _update_struct(b: _Builder, st: BackwardStep) -> tuple[Sym, int]:
    """The ``tt_update_params`` of a trained linear step and its number of weight rows."""
    assert st.params.update is not None
    i = st.op_index
    op = st.op
    req = st.params.request
    w_shape = b.graph.tensor(str(op.inputs[1])).shape
    ua = cu.update_arrays(st.params.update, w_shape, req.weight_channels)
    uptrs: dict[str, Arg] = {
        "w_mult": b.array(f"uwm_{i}", ua.w_mult),
        "w_shift": b.array(f"uws_{i}", ua.w_shift),
        "b_mult": b.array(f"ubm_{i}", ua.b_mult),
        "b_shift": b.array(f"ubs_{i}", ua.b_shift),
    }
    if ua.row_channel is not None:
        uptrs["row_channel"] = b.array(f"urc_{i}", ua.row_channel)
    us = cu.update_struct(ua)
    up = b.struct(f"up_{i}", "tt_update_params", ctypes_init(us.struct, uptrs), f"update of {op.describe()}")
    return up, ua.rows


def _linear_update(b: _Builder, st: BackwardStep, gy: ArenaPtr, ey: ArenaValue) -> None:
    """The SGD step of a linear op from its (masked) output gradient: weight rows one at a
    time (gradient row, then its update), then the bias."""
    if st.params.update is None:
        return
    if st.layer is not None and st.layer.dynamic is not None:
        _dgsu_update(b, st, gy, ey)
        return
    op = st.op
    req = st.params.request
    desc = op.describe()
    lb = _linear_bwd(b, st)
    up, rows = _update_struct(b, st)
    if req.weight_channels:
        body = _weight_row_body(b, st, lb, up, gy, ey)
        b.items.append(Loop(rows, f"weights of {desc}: one row at a time", body, "backward"))
    if req.bias:
        b_name = str(op.inputs[2])
        b.call(
            "tt_bias_step_s16",
            f"bias gradient and SGD step of {desc}, channel by channel",
            (lb, up, Local("&step"), gy, ey, b.arena(f"train:{b_name}", "int32_t")),
            "backward",
        )
    _record_trained(b, st)


def _weight_row_body(b: _Builder, st: BackwardStep, lb: Arg, up: Arg, gy: ArenaPtr, ey: ArenaValue) -> tuple[Call, ...]:
    """The body of a loop over weight rows (index ``row``): the row's weight gradient into
    ``wgrad-row:``, then its SGD step on the trainable slice."""
    w_name = str(st.op.inputs[1])
    row = b.arena(f"wgrad-row:{w_name}", "int64_t")
    saved = b.arena(b.saved_buffer(st.op_index, str(st.target(0))), "int8_t")
    return (
        Call("tt_linear_bwd_weight_row_s16", "weight-gradient row", (lb, gy, saved, Local("row"), row), "backward"),
        Call(
            "tt_update_weight_row_s8",
            "SGD step of the row",
            (up, Local("&step"), Local("row"), row, ey, b.arena(f"train:{w_name}", "int8_t"), Local("prng")),
            "backward",
        ),
    )


def _dgsu_update(b: _Builder, st: BackwardStep, gy: ArenaPtr, ey: ArenaValue) -> None:
    """The SGD step of a DGSU layer (the executor's ``_dgsu_update``): its int64 bias
    gradient, the row selection (ages; the layer's flag of this step's layer selection),
    the chosen rows one at a time in ascending order, the whole bias, the layer signal."""
    op = st.op
    plan = st.layer
    assert plan is not None and plan.dynamic is not None
    d = plan.dynamic
    desc = op.describe()
    lb = _linear_bwd(b, st)
    up, _ = _update_struct(b, st)
    w_name = str(op.inputs[1])
    bgrad = b.arena(f"dgsu_bgrad:{w_name}", "int64_t")
    b.call("tt_linear_bwd_bias_s16", f"bias gradient of {desc} (the row scores)", (lb, gy, bgrad), "backward")
    sel_buf = f"dgsu_sel:{w_name}"
    sel_at, chosen_at = dgsu.sel_layout(d.k)
    age: Arg = b.arena(dgsu.age_name(plan), "uint16_t") if dgsu.needs_age(plan) else NULL
    active: Arg = NULL if d.candidate < 0 else b.arena(dgsu.LAYERS_BUFFER, "uint8_t", d.candidate)
    count = b.arena(sel_buf, "int32_t")
    sel = b.arena(sel_buf, "uint16_t", sel_at)
    chosen = b.arena(sel_buf, "uint8_t", chosen_at)
    args = (bgrad, Lit(d.rows), age, Lit(d.k), Lit(d.explore), active, chosen, sel, count)
    b.call("tt_select_dgsu_rows", f"the {d.k} of {d.rows} rows of {desc} to update", args, "backward")
    body = _weight_row_body(b, st, lb, up, gy, ey)
    source = RowSource(ArenaValue(count.buffer, count.offset, "int32_t"), sel)
    b.items.append(Loop(d.k, f"weights of {desc}: the chosen rows, ascending", body, "backward", source))
    if st.params.request.bias:
        b.call(
            "tt_update_bias_s32",
            f"SGD step of the bias of {desc}",
            (up, Local("&step"), bgrad, ey, b.arena(f"train:{op.inputs[2]}", "int32_t")),
            "backward",
        )
    ls = b.c.program.scheme.layer_select
    if d.candidate >= 0 and ls is not None and ls.cls is None:  # DGSU's signal (ALaST's: the forward)
        b.call(
            "tt_select_layer_signal",
            f"layer-selection signal of {desc}",
            (
                bgrad,
                Lit(d.rows),
                ey,
                b.arena(dgsu.LAYER_EMA, "int32_t", 4 * d.candidate),
                b.arena(dgsu.LAYER_SCORE, "int64_t", 8 * d.candidate),
            ),
            "backward",
        )
    _record_trained(b, st)


def _cls_rows(b: _Builder) -> dict[str, int]:
    """ALaST: the residual-stream tensors whose class-token row the forward copies, by row."""
    ls = b.c.program.scheme.layer_select
    if ls is None or ls.cls is None:
        return {}
    return {name: r for r, name in enumerate(ls.cls.tensors)}


def _copy_cls_row(b: _Builder, tensor: str, row: int) -> None:
    """Copies token 0 of ``tensor`` into row ``row`` of ALaST's class-token buffer."""
    ls = b.c.program.scheme.layer_select
    assert ls is not None and ls.cls is not None
    dim = ls.cls.dim
    dst = b.arena(alast.CLS_BUFFER, "int8_t", row * dim)
    b.call("tt_copy_s8", f"ALaST: class token of {tensor}", (b.act(tensor), Lit(dim), dst), "forward")


def _cls_scores(b: _Builder) -> None:
    """ALaST: this step's class-token change of every candidate block, the layer scores."""
    ls = b.c.program.scheme.layer_select
    assert ls is not None and ls.cls is not None
    cs = ls.cls
    args = (
        b.arena(alast.CLS_BUFFER, "int8_t"),
        Lit(len(cs.tensors)),
        Lit(cs.dim),
        b.array("alast_zp", np.asarray(cs.zero_points, np.int32)),
        b.array("alast_mult", np.asarray(cs.mults, np.int32)),
        b.array("alast_src", np.asarray(cs.src, np.uint16)),
        b.array("alast_dst", np.asarray(cs.dst, np.uint16)),
        Lit(len(cs.blocks)),
        b.arena(dgsu.LAYER_SCORE, "int64_t"),
    )
    b.call("tt_select_cls_change", f"ALaST: class-token change of blocks {list(cs.blocks)}", args, "backward")


def _select_layers(b: _Builder) -> None:
    """DGSU layer selection at the start of the backward pass (the executor's ``_select_layers``)."""
    ls = b.c.program.scheme.layer_select
    if ls is None:
        return
    if ls.cls is not None:
        _cls_scores(b)
    n = len(ls.candidates)
    args = (
        b.arena(dgsu.LAYER_SCORE, "int64_t"),
        Lit(n),
        Lit(0),
        b.arena(dgsu.LAYER_AGE, "uint16_t"),
        Lit(ls.budget),
        Lit(ls.explore),
        b.arena(dgsu.LAYERS_BUFFER, "uint8_t"),
        b.arena(dgsu.LAYERS_BUFFER, "uint16_t", dgsu.layers_layout(n)),
    )
    b.call("tt_select_rows", f"the {ls.budget} of {n} DGSU layers that update their weights", args, "backward")


def _record_state(b: _Builder) -> None:
    """The DGSU state tensors (ages, layer signal) in the tensor table after the trained ones."""
    prog = b.c.program
    kind = prog.scheme.dynamic[0].layer.kind if prog.scheme.dynamic else OpKind.FULLY_CONNECTED
    for t in dgsu.state_tensors(prog.scheme):
        flash = b.array(f"init_{t.name}", t.initial, f"initial {t.name}")
        b.trained.append(TrainedTensor(t.name, t.name, str(t.initial.dtype), t.initial.shape, (), kind, flash.text))


def _scratch_update(b: _Builder, st: BackwardStep, bias_grad: Arg | None, weight_grad: Arg | None, e: Arg) -> None:
    """The SGD step of a fused part whose whole int64 gradients a fused kernel left in its
    scratch (weights, then bias, as the simulator's apply_update)."""
    if st.params.update is None:
        return
    op = st.op
    desc = op.describe()
    up, _ = _update_struct(b, st)
    req = st.params.request
    if req.weight_channels:
        assert weight_grad is not None
        w_train = b.arena(f"train:{op.inputs[1]}", "int8_t")
        b.call(
            "tt_update_weights_s8",
            f"SGD step of the weights of {desc}",
            (up, Local("&step"), weight_grad, e, w_train, Local("prng")),
            "backward",
        )
    if req.bias:
        assert bias_grad is not None
        b.call(
            "tt_update_bias_s32",
            f"SGD step of the bias of {desc}",
            (up, Local("&step"), bias_grad, e, b.arena(f"train:{op.inputs[2]}", "int32_t")),
            "backward",
        )
    _record_trained(b, st)


def _fbwd_weights(b: _Builder, st: BackwardStep) -> Sym:
    """A ``tt_fbwd_weights``: the flash tensor and the trained slice (if any)."""
    i = st.op_index
    w_train, _ = b.trained_weight(i)
    fields: list[tuple[str, Any]] = [("w", b.weight_arg(i))]
    ch = st.params.request.weight_channels
    if w_train is not NULL:
        fields += [("n", len(ch)), ("ch", b.array(f"ch_{i}", np.asarray(ch, dtype=np.uint16))), ("w_train", w_train)]
    else:
        fields += [("n", 0), ("ch", NULL), ("w_train", NULL)]
    return b.struct(f"fw_{i}", "tt_fbwd_weights", StructInit(tuple(fields)), f"current weights of op {i}")


def _grad_dest(
    b: _Builder, st: BackwardStep, k: int, have: set[str], sums: list[tuple[str, str]]
) -> tuple[ArenaPtr, ArenaPtr]:
    """(mantissas, exponent pointer) where input k's gradient of st goes: its grad buffer,
    or a second buffer summed into it afterwards (``_finish_sums``)."""
    target = st.target(k)
    assert target is not None
    if target in have:
        buf = f"grad-sum:{target}@{st.op_index}"
        sums.append((target, buf))
        gx, ex, _ = b.grad(target, buf)
    else:
        gx, ex, _ = b.grad(target)
    return gx, ex


def _mask_in_place(b: _Builder, st: BackwardStep, gy: ArenaPtr) -> Arg:
    """Applies st's clamp mask to its output gradient in place (as the unfused step does);
    returns the mask pointer (NULL without a clamp)."""
    if st.params.clamp is None:
        return NULL
    out = st.op.outputs[0]
    mask = b.arena(f"mask:{out}", "uint8_t")
    n = b.graph.tensor(out).size
    b.call("tt_apply_mask_s16", f"mask the output gradient of op {st.op_index}", (gy, mask, Lit(n), gy), "backward")
    return mask


def _fused_ed_step(b: _Builder, st: BackwardStep, have: set[str]) -> None:
    """D (depthwise) fused with E (the conv feeding it): ``tt_fused_ed_bwd_s16`` streams D's
    input gradient into E's backward; D's own parameter gradients come from the unfused
    kernels on D's masked output gradient; E's are in the fused scratch. Updates after every
    gradient of the step, D's before E's (the simulator's order)."""
    d, e = st, st.fused_with
    assert e is not None and d.fused is not None
    fp = d.fused
    i = d.op_index
    gy, _, ey = b.grad(d.op.outputs[0])
    mask_d = _mask_in_place(b, d, gy)
    mask_e: Arg = NULL
    if e.params.clamp is not None:
        mask_e = b.arena(f"mask:{e.op.outputs[0]}", "uint8_t")
    fa = cu.fused_arrays(fp)
    cs = cu.fused_struct(fa)
    ptrs: dict[str, Arg] = {"d_mu": b.array(f"fdmu_{i}", fa.d_mu), "e_mu": b.array(f"femu_{i}", fa.e_mu)}
    desc = f"fused backward of {d.op.describe()} and {e.op.describe()}"
    ps = b.struct(f"fed_{i}", "tt_fused_ed_params", ctypes_init(cs.struct, ptrs), desc)
    sums: list[tuple[str, str]] = []
    g_in: Arg = NULL
    e_in: Arg = NULL
    if fp.e_input_grad:
        g_in, e_in = _grad_dest(b, e, 0, have, sums)
    x_sub: Arg = NULL
    if e.params.save_channels:
        x_sub = b.arena(b.saved_buffer(e.op_index, str(e.target(0))), "int8_t")
    scratch_buf = f"scratch:fused-bwd:{i}"
    scratch = b.arena(scratch_buf, "void")
    args = (ps, gy, ey, mask_d, mask_e, _fbwd_weights(b, d), _fbwd_weights(b, e), x_sub, g_in, e_in,
            Local("&e_param"), scratch)  # fmt: skip
    b.call("tt_fused_ed_bwd_s16", desc, args, "backward")
    _finish_sums(b, sums, have, e)
    _finish_sums(b, [], have, d)
    _linear_update(b, d, gy, ey)
    off = 0
    bias_grad: Arg | None = None
    weight_grad: Arg | None = None
    if fp.e.request.bias:
        bias_grad = b.arena(scratch_buf, "int64_t", off)
        off += 8 * fp.channels
    if fp.e.request.weight_channels:
        weight_grad = b.arena(scratch_buf, "int64_t", off)
    _scratch_update(b, e, bias_grad, weight_grad, Local("e_param"))


def _fused_pde_step(b: _Builder, st: BackwardStep, have: set[str]) -> None:
    """P (1×1 projection) fused in front of D (depthwise) and E: ``tt_fused_pde_bwd_s16``
    recomputes D's output gradient from P's output gradient row by row into its ring and
    streams D's input gradient into E's backward. P's own parameter gradients come from
    the unfused kernels on P's masked output gradient; D's and E's are in the fused
    scratch, their exponents in the (then dead) ring. Updates after every gradient of the
    step, in the order P, D, E (the simulator's)."""
    d, e, p = st, st.fused_with, st.fused_from
    fp = st.fused_project
    assert e is not None and p is not None and fp is not None
    i = d.op_index
    gy, _, ey = b.grad(p.op.outputs[0])
    mask_p = _mask_in_place(b, p, gy)
    mask_d: Arg = NULL
    if d.params.clamp is not None:
        mask_d = b.arena(f"mask:{d.op.outputs[0]}", "uint8_t")
    mask_e: Arg = NULL
    if e.params.clamp is not None:
        mask_e = b.arena(f"mask:{e.op.outputs[0]}", "uint8_t")
    pa = cu.project_arrays(fp)
    if pa.ring_bytes() < 8:
        raise UsageError(f"{d.op.describe()}: the fused projection backward's ring is too small for its exponents")
    cs = cu.project_struct(pa)
    ptrs: dict[str, Arg] = {
        "ed.d_mu": b.array(f"fdmu_{i}", pa.ed.d_mu),
        "ed.e_mu": b.array(f"femu_{i}", pa.ed.e_mu),
        "p_mu": b.array(f"fpmu_{i}", pa.p_mu),
    }
    desc = f"fused backward of {p.op.describe()}, {d.op.describe()} and {e.op.describe()}"
    ps = b.struct(f"fpde_{i}", "tt_fused_pde_params", ctypes_init(cs.struct, ptrs), desc)
    sums: list[tuple[str, str]] = []
    g_in: Arg = NULL
    e_in: Arg = NULL
    if fp.inner.e_input_grad:
        g_in, e_in = _grad_dest(b, e, 0, have, sums)
    x_sub_d: Arg = NULL
    if d.params.save_channels:
        x_sub_d = b.arena(b.saved_buffer(d.op_index, str(d.target(0))), "int8_t")
    x_sub_e: Arg = NULL
    if e.params.save_channels:
        x_sub_e = b.arena(b.saved_buffer(e.op_index, str(e.target(0))), "int8_t")
    scratch_buf = f"scratch:fused-bwd:{i}"
    scratch = b.arena(scratch_buf, "void")
    args = (ps, gy, ey, mask_p, mask_d, mask_e, _fbwd_weights(b, p), _fbwd_weights(b, d), _fbwd_weights(b, e),
            x_sub_d, x_sub_e, g_in, e_in, NULL, NULL, scratch)  # fmt: skip
    b.call("tt_fused_pde_bwd_s16", desc, args, "backward")
    _finish_sums(b, sums, have, e)
    _finish_sums(b, [], have, d)
    _finish_sums(b, [], have, p)
    _linear_update(b, p, gy, ey)
    d_off, dw_off, ed_off, ring_off = pa.scratch_offsets()
    e_d = ArenaValue(scratch_buf, b.plan.offset(scratch_buf) + ring_off, "int32_t")
    e_e = ArenaValue(scratch_buf, b.plan.offset(scratch_buf) + ring_off + 4, "int32_t")
    req_d, req_e = d.params.request, e.params.request
    _scratch_update(
        b,
        d,
        b.arena(scratch_buf, "int64_t", d_off) if req_d.bias else None,
        b.arena(scratch_buf, "int64_t", dw_off) if req_d.weight_channels else None,
        e_d,
    )
    off = ed_off
    e_bias: Arg | None = None
    if req_e.bias:
        e_bias = b.arena(scratch_buf, "int64_t", off)
        off += 8 * fp.channels
    e_weight = b.arena(scratch_buf, "int64_t", off) if req_e.weight_channels else None
    _scratch_update(b, e, e_bias, e_weight, e_e)


def _finish_sums(b: _Builder, sums: list[tuple[str, str]], have: set[str], st: BackwardStep) -> None:
    for target, buf in sums:
        ga, _, ea = b.grad(target)
        gb, _, eb = b.grad(target, buf)
        _, ep, _ = b.grad(target)
        n = b.graph.tensor(target).size
        b.call("tt_add_grads_s16", f"sum the second gradient of {target}", (ga, ea, gb, eb, Lit(n), ga, ep), "backward")
    sums.clear()
    req = st.params.request
    for k in sorted(req.input_grads):
        t = st.target(k)
        if t is not None:
            have.add(t)


def _record_trained(b: _Builder, st: BackwardStep) -> None:
    g = b.graph
    op = st.op
    req = st.params.request
    if req.weight_channels:
        w = str(op.inputs[1])
        data = g.tensor(w).data
        assert data is not None
        sl = cb.trained_slice(op.kind, np.asarray(data), req.weight_channels)
        flash = b.array(f"init_{w}", sl.astype(np.int8), f"initial trained slice of {w}")
        b.trained.append(
            TrainedTensor(w, f"train:{w}", "int8", tuple(data.shape), tuple(req.weight_channels), op.kind, flash.text)
        )
    if req.bias:
        bn = str(op.inputs[2])
        data = g.tensor(bn).data
        assert data is not None
        flash = b.array(f"b_{bn}", np.asarray(data, dtype=np.int32), f"bias {bn}")
        b.trained.append(TrainedTensor(bn, f"train:{bn}", "int32", tuple(data.shape), (), op.kind, flash.text))


# ------------------------------------------------------------------ driver


def check_supported(compiled: Compiled) -> None:
    """Raises UsageError for what the generator does not implement yet."""
    o = compiled.options
    if o.batch != 1:
        raise UsageError(
            f"the C code generator supports batch 1 only (--batch {o.batch}): "
            "gradient accumulation is not generated yet"
        )
    if o.momentum_q15:
        raise UsageError(f"the C code generator does not generate momentum yet (--momentum {o.momentum})")
    if o.sample_bytes is None:
        raise UsageError(
            "the C code generator needs a program compiled with --sample-shape (device-side preprocessing)"
        )


def lower(compiled: Compiled, sample_shape: Sequence[int]) -> Lowered:
    """The kernel calls of one training step (and of inference) for native samples of ``sample_shape``."""
    check_supported(compiled)
    b = _Builder(compiled)
    prog = compiled.program
    g = b.graph
    shape = tuple(int(d) for d in sample_shape)
    pre = preprocess_for_graph(g, shape)
    sample_bytes = int(np.prod(shape))
    if compiled.options.sample_bytes is not None and compiled.options.sample_bytes != sample_bytes:
        raise UsageError(
            f"samples of shape {list(shape)} have {sample_bytes} bytes; "
            f"the program was compiled for {compiled.options.sample_bytes}"
        )
    cp = cf.preprocess_c_params(pre)
    pptrs = {p: b.array(f"pre_{c_ident(p)}", a) for p, a in cp.arrays.items()}
    pre_sym = b.struct(
        "preprocess", "tt_preprocess_params", ctypes_init(cp.struct, pptrs), "native sample -> model input"
    )
    inp = g.inputs[0]
    streamed = not b.has(f"act:{inp}")
    sample_buffer = "sample" if b.has("sample") else None
    sample_arg: Arg = Local("sample")  # the arena copy when the plan holds the sample
    units = prog.fused.units()
    if not streamed:
        b.call(
            "tt_preprocess_u8_s8",
            "native sample -> model input",
            (pre_sym, sample_arg, b.arena(f"act:{inp}", "int8_t")),
            "forward",
        )
    cls_rows = _cls_rows(b)
    for k, u in enumerate(units):
        if isinstance(u, FusedBlock):
            _fused_block(b, u, sample_arg if streamed and k == 0 else None)
        else:
            _forward_op(b, u)
            for name in g.ops[u].outputs:
                if name in cls_rows:
                    _copy_cls_row(b, name, cls_rows[name])
    ce = cb.softmax_ce_struct(prog.loss)
    ce_sym = b.struct("loss", "tt_softmax_ce_params", ctypes_init(ce.struct, {}), "softmax cross-entropy")
    gl, el, _ = b.grad(prog.logits)
    logits = b.arena(f"act:{prog.logits}", "int8_t")
    b.call(
        "tt_softmax_ce_grad_s8",
        "loss gradient",
        (ce_sym, logits, Local("label"), gl, el, Local("&p_label"), Local("&predicted")),
        "loss",
    )
    have: set[str] = set()
    _select_layers(b)
    for st in prog.backward:
        if st.fused_project is not None:
            _fused_pde_step(b, st, have)
        elif st.fused is not None:
            _fused_ed_step(b, st, have)
        else:
            _backward_step(b, st, have)
    _record_state(b)
    kernels = sorted(
        {it.kernel for it in b.items if isinstance(it, Call)}
        | {c.kernel for it in b.items if isinstance(it, Loop) for c in it.calls}
    )
    return Lowered(
        calls=tuple(b.items),
        arrays=tuple(b.arrays),
        structs=tuple(b.structs),
        trained=tuple(b.trained),
        arena_size=compiled.plan.arena_size,
        offsets={p.name: p.offset for p in compiled.plan.buffers},
        sample_bytes=sample_bytes,
        sample_shape=shape,
        sample_buffer=sample_buffer,
        logits=logits,
        classes=prog.loss.classes,
        preprocess=pre_sym.text.lstrip("&"),
        stream_row_source=streamed,
        kernels=tuple(kernels),
    )


def mask_bytes(n: int) -> int:
    return mask_nbytes(n)
