"""The memory of a training program: every buffer with its lifetime, and the arena plan.

The program runs in *steps*: one per forward unit (a fused frozen block or a single
op), then the loss, then one per backward step (an op's gradients and, right after,
its parameter update). Buffers:

* activations: from the step that writes them to the last forward step that reads
  them (tensors inside fused blocks never exist; the fused kernels' scratch does);
* saved for the backward pass: 1-bit clamp masks and the trained input channels of
  a layer's input, from the op's forward step to its backward step; the int8 values a
  rule reads whole (``BackwardParams.saves``: attention operands and probabilities, a
  LayerNorm's centred input and reciprocal deviation) once per tensor (``saved:<tensor>``),
  from the first forward step that saves it to the last backward step that reads it;
* gradients (int16 mantissas + an int32 exponent), from the backward step that
  produces them to the one that consumes them; a gradient streamed between the parts of
  a fused step (projection → depthwise → expansion) never exists, the step's scratch
  holds its rows. An input gradient is computed in two
  passes (the maximum of its int32 sums, then the normalized int16 values), so no
  int32 copy of it exists; a weight gradient exists one output channel (int64) at a
  time, consumed at once by the update;
* trainable slices (the trained weight channels, int8, and trained biases, int32) and
  the run state (PRNG, step counter, learning rate), for the whole program.

Frozen weights stay in flash and are not arena buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind
from tinytrain.passes.fuse_blocks import FusedBlock
from tinytrain.stats import op_macs
from tinytrain.train.build import BackwardStep, TrainingProgram
from tinytrain.train.dgsu import dgsu_state_requests, dgsu_step_requests
from tinytrain.train.grad_rules import saved_tensor
from tinytrain.train.kernels.accumulate import bias_accumulator, weight_accumulator
from tinytrain.train.kernels.mask import mask_nbytes
from tinytrain.train.planner import BufferKind, BufferRequest, Plan, plan_buffers, plan_or_raise

STATE_BYTES = 24  # PRNG state, step counter, learning-rate multiplier and shift, schedule kind and length


@dataclass(frozen=True)
class StepInfo:
    index: int
    phase: str  # forward | loss | backward
    text: str


@dataclass(frozen=True)
class ProgramMemory:
    requests: tuple[BufferRequest, ...]
    steps: tuple[StepInfo, ...]
    trainable_bytes: int
    flash_bytes: int
    macs_forward: int
    macs_backward: int
    # Gradients computed in place over another one: (its buffer name, the buffer it uses).
    grad_aliases: tuple[tuple[str, str], ...] = ()


def _weight_grad_shape(kind: OpKind, cout: int, kh: int, kw: int, n: int) -> tuple[int, ...]:
    """The layout of a weight-gradient slice ``w[..., channels]``."""
    if kind is OpKind.DEPTHWISE_CONV_2D:
        return (1, kh, kw, n)
    if kind is OpKind.FULLY_CONNECTED:
        return (cout, n)
    return (cout, kh, kw, n)


def _grad_bytes(n: int) -> int:
    return 2 * n + 4


def _in_place(graph: Graph, part: BackwardStep, k: int) -> bool:
    """``part`` may write input ``k``'s gradient over its output gradient: its rule allows it
    (an elementwise or row-wise backward whose output gradient row is read before the input
    gradient row is written: GradRule.in_place), it produces that one input gradient, of the
    output gradient's size."""
    op = part.op
    return (
        part.params.rule.in_place
        and part.params.request.input_grads == frozenset({k})
        and graph.tensor(str(part.target(k))).size == graph.tensor(op.outputs[0]).size
        and op.outputs[0] not in graph.outputs
    )


def _linear_input_scratch(graph: Graph, op: Op) -> int:
    """Bytes of ``tt_linear_bwd_input_s16``'s scratch: 4·in_c (conv), 0 (depthwise), 4·out_c (FC)."""
    if op.kind is OpKind.CONV_2D:
        return 4 * graph.tensor(str(op.inputs[0])).shape[-1]
    if op.kind is OpKind.FULLY_CONNECTED:
        return 4 * graph.tensor(op.outputs[0]).shape[-1]
    return 0


SaveKey = tuple[str, tuple[int, ...] | None]  # (tensor, saved channels | None: the whole tensor)


@dataclass(frozen=True)
class SavedCopy:
    """One saved int8 copy, shared by every backward step that reads it (q, k and v read the
    same LayerNorm output; SOFTMAX and the BATCH_MATMUL after it read the probabilities)."""

    first: int  # the earliest forward step that saves it
    last: int  # the last backward step that reads it
    readers: tuple[int, ...]  # op indices
    by_rule: bool  # some reader's rule reads it whole (BackwardParams.saves)

    @property
    def name_suffix(self) -> str:
        """``@<op>`` for a copy one op reads through the layer / HARD_SWISH rules (the names of
        the CNN schemes' plans); empty for a shared or rule-read copy."""
        return f"@{self.readers[0]}" if len(self.readers) == 1 and not self.by_rule else ""


def save_keys(graph: Graph, part: BackwardStep) -> tuple[tuple[SaveKey, bool], ...]:
    """The int8 copies ``part``'s backward reads, each with whether its rule reads it whole:
    the HARD_SWISH input, a layer input's trained channels (all of them: the whole tensor),
    the values in ``params.saves``."""
    out: dict[SaveKey, bool] = {}
    x_name = part.target(0)
    if part.params.save_input and x_name is not None:
        out[(x_name, None)] = False
    ch = part.params.save_channels
    if ch and x_name is not None:
        whole = ch == tuple(range(graph.tensor(x_name).shape[-1]))
        out.setdefault((x_name, None if whole else ch), False)
    for n in part.params.saves:
        out[(saved_tensor(part.op, n), None)] = True
    return tuple(out.items())


def saved_copies(program: TrainingProgram, fwd_step_of_op: dict[int, int], loss_step: int) -> dict[SaveKey, SavedCopy]:
    out: dict[SaveKey, SavedCopy] = {}
    for j, b in enumerate(program.backward):
        s = loss_step + 1 + j
        for part in b.parts:
            fs = fwd_step_of_op.get(part.op_index, 0)
            for key, by_rule in save_keys(program.graph, part):
                c = out.get(key)
                out[key] = (
                    SavedCopy(fs, s, (part.op_index,), by_rule)
                    if c is None
                    else SavedCopy(min(c.first, fs), max(c.last, s), (*c.readers, part.op_index), c.by_rule or by_rule)
                )
    return out


def saved_name(key: SaveKey, copy: SavedCopy) -> str:
    """``saved:<tensor>@<op>`` (one reader, layer / HARD_SWISH rule), ``saved:<tensor>`` (a
    whole copy otherwise), ``saved:<tensor>@<op>+<op>…`` (a channel subset several layers read)."""
    tensor, channels = key
    if copy.name_suffix or channels is None:
        return f"saved:{tensor}{copy.name_suffix}"
    return f"saved:{tensor}@" + "+".join(str(i) for i in sorted(copy.readers))


def program_memory(
    program: TrainingProgram, sample_bytes: int | None = None, batch: int = 1, momentum: bool = False
) -> ProgramMemory:
    """``sample_bytes``: the size of one native sample (e.g. 784 for a 28×28 grey image)
    when the device preprocesses on the fly; then a stem fused with the first block reads
    its input rows straight from the preprocessing (its row window is already part of the
    fused kernel's scratch) and the model-sized input image never exists. ``batch`` > 1
    adds the gradient accumulators of the trained parameters (persistent state)."""
    graph = program.graph
    units = program.fused.units()
    steps: list[StepInfo] = []
    first: dict[str, int] = {n: 0 for n in graph.inputs}
    last: dict[str, int] = {}
    requests: list[BufferRequest] = []
    fwd_step_of_op: dict[int, int] = {}
    for s, u in enumerate(units):
        if isinstance(u, FusedBlock):
            reads: tuple[str | None, ...] = (u.input,)
            writes: tuple[str, ...] = (u.output,)
            # A stage training a channel subset reads its trained slice through a weight patch.
            requests.append(BufferRequest(f"scratch:{u.output}", u.scratch_bytes, s, s, BufferKind.SCRATCH))
            for i in u.op_indices:  # masks of the block's ops are emitted at this step
                fwd_step_of_op[i] = s
            steps.append(StepInfo(s, "forward", f"fused block ops {u.start}..{u.stop - 1} -> {u.output}"))
        else:
            op = graph.ops[u]
            reads, writes = op.inputs, op.outputs
            fwd_step_of_op[u] = s
            steps.append(StepInfo(s, "forward", f"op {u} {op.kind.value} -> {', '.join(op.outputs)}"))
        for n in reads:
            if n is not None and graph.tensor(n).data is None:
                last[n] = s
        for n in writes:
            first.setdefault(n, s)
            last.setdefault(n, s)
    loss_step = len(units)
    last[program.logits] = loss_step
    steps.append(StepInfo(loss_step, "loss", f"softmax cross-entropy gradient of {program.logits}"))
    streamed = (
        sample_bytes is not None
        and len(graph.inputs) == 1
        and bool(units)
        and isinstance(units[0], FusedBlock)
        and units[0].input == graph.inputs[0]
        and last.get(graph.inputs[0]) == 0
    )
    for name, f in first.items():
        if streamed and name == graph.inputs[0]:
            assert sample_bytes is not None
            requests.append(BufferRequest("sample", sample_bytes, 0, 0))
            continue
        requests.append(BufferRequest(f"act:{name}", graph.tensor(name).nbytes, f, last.get(name, f)))

    # Gradients: produced at the first backward step that writes them, consumed at the
    # backward step of the op that produced the tensor.
    g_first: dict[str, int] = {program.logits: loss_step}
    g_last: dict[str, int] = {}
    alias: dict[str, str] = {}  # a gradient computed in place -> the tensor whose gradient buffer it reuses
    trainable = 0
    macs_bwd = 0
    dgsu_last = loss_step
    copies = saved_copies(program, fwd_step_of_op, loss_step)
    emitted: set[SaveKey] = set()
    for j, b in enumerate(program.backward):
        s = loss_step + 1 + j
        parts = b.parts
        head, tail = parts[0], parts[-1]
        text = "backward of " + ", fused with ".join(
            f"op {st.op_index} {st.op.kind.value}" + (" + update" if st.trains else "") for st in parts
        )
        if len(parts) > 1:
            requests.append(
                BufferRequest(f"scratch:fused-bwd:{b.op_index}", b.fused_scratch_bytes, s, s, BufferKind.SCRATCH)
            )
        steps.append(StepInfo(s, "backward", text))
        for part in parts:
            op = part.op
            out = op.outputs[0]
            if part is head:
                g_last[out] = s
            fs = fwd_step_of_op.get(part.op_index, 0)
            if part.params.clamp is not None:
                requests.append(
                    BufferRequest(f"mask:{out}", mask_nbytes(graph.tensor(out).size), fs, s, BufferKind.MASK)
                )
            for key, _ in save_keys(graph, part):  # int8 forward values kept for this step
                if key in emitted:
                    continue
                emitted.add(key)
                cp = copies[key]
                t = graph.tensor(key[0])
                # bytes: a whole copy of any type (TOKEN_SELECT's uint8 indices), int8 channel subsets
                size = t.nbytes if key[1] is None else t.size // t.shape[-1] * len(key[1]) * t.dtype.itemsize
                requests.append(BufferRequest(saved_name(key, cp), size, cp.first, cp.last, BufferKind.SAVED))
            for k in part.params.request.input_grads:
                target = part.target(k)
                assert target is not None
                if part is not tail and k == 0:
                    # Streamed between fused parts, never stored.
                    if part is b:
                        # D's input-gradient sums: three sweeps over D's input rows when E's
                        # input gradient is needed, two otherwise.
                        e_grad = bool(tail.params.request.input_grads)
                        macs_bwd += (3 if e_grad else 2) * op_macs(graph, op)
                    else:
                        # P's input-gradient rows, recomputed wherever D's output gradient is read.
                        assert b.fused_project is not None
                        per_row = op_macs(graph, op) // max(1, b.fused_project.out_h)
                        macs_bwd += b.fused_project.p_rows * per_row
                    continue
                if target in g_first:
                    # A second gradient of the tensor (e.g. a residual's): computed here,
                    # then summed into the first one (add_grads).
                    size = _grad_bytes(graph.tensor(target).size)
                    name = f"grad-sum:{target}@{part.op_index}"
                    requests.append(BufferRequest(name, size, s, s, BufferKind.GRADIENT))
                elif _in_place(graph, part, k):
                    # The first gradient of the target overwrites the output gradient (same
                    # size, read by this step alone): one buffer, the output gradient's.
                    alias[target] = alias.get(out, out)
                    steps[-1] = replace(steps[-1], text=steps[-1].text + " (input gradient in place)")
                g_first.setdefault(target, s)
                if op.kind in (OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED):
                    # Two passes (max of the int32 sums, then the normalized int16 values):
                    # no int32 buffer; twice the MACs. The int32 sums of one pixel (conv:
                    # 4·in_c bytes) or one row's scaled output gradient (fully connected:
                    # 4·out_c bytes) live in a scratch (tt_linear_bwd_input_scratch_bytes).
                    macs_bwd += 2 * op_macs(graph, op)
                    lin = _linear_input_scratch(graph, op)
                    if lin:
                        requests.append(BufferRequest(f"scratch:bwd-in:{part.op_index}", lin, s, s, BufferKind.SCRATCH))
            if part.layer is not None and part.params.save_channels:
                lay = part.layer.layer
                kh, kw = lay.kernel
                n_ch = len(part.params.save_channels)
                dw = lay.kind is OpKind.DEPTHWISE_CONV_2D
                w_bytes = kh * kw * n_ch if dw else lay.out_channels * kh * kw * n_ch
                trainable += w_bytes
                requests.append(BufferRequest(f"train:{op.inputs[1]}", w_bytes, 0, 0, BufferKind.TRAINABLE))
                if batch > 1:
                    shape = (
                        (1, kh, kw, n_ch)
                        if dw
                        else (
                            (lay.out_channels, n_ch)
                            if lay.kind is OpKind.FULLY_CONNECTED
                            else (lay.out_channels, kh, kw, n_ch)
                        )
                    )
                    acc = weight_accumulator(lay.kind, shape).state_bytes
                    requests.append(BufferRequest(f"acc:{op.inputs[1]}", acc, 0, 0, BufferKind.STATE))
                if momentum:  # the momentum buffer v has the accumulator's format
                    v = weight_accumulator(lay.kind, _weight_grad_shape(lay.kind, lay.out_channels, kh, kw, n_ch))
                    requests.append(BufferRequest(f"mom:{op.inputs[1]}", v.state_bytes, 0, 0, BufferKind.STATE))
                if part is head:  # the fused D's and E's whole int64 weight gradients are in the fused scratch
                    # One output channel's int64 weight gradient, consumed by its update at once.
                    row = (kh * kw if dw else w_bytes // lay.out_channels) * 8
                    requests.append(BufferRequest(f"wgrad-row:{op.inputs[1]}", row, s, s, BufferKind.SCRATCH))
                positions = graph.tensor(out).size // lay.out_channels
                dyn = part.layer.dynamic  # DGSU: only the k chosen rows' weight gradients
                macs_bwd += positions * w_bytes if dyn is None else positions * w_bytes // dyn.rows * dyn.k
            if part.params.request.bias:
                lay_b = op.inputs[2]
                assert lay_b is not None
                nb = graph.tensor(lay_b).nbytes
                trainable += nb
                requests.append(BufferRequest(f"train:{lay_b}", nb, 0, 0, BufferKind.TRAINABLE))
                # No bias-gradient buffer: each channel's gradient is consumed by its update as
                # soon as it is summed (tt_bias_step_s16); a fused D's after a fused P, and a
                # fused E's, are in the fused kernel's scratch.
                if batch > 1:
                    acc = bias_accumulator(graph.tensor(lay_b).size).state_bytes
                    requests.append(BufferRequest(f"acc:{lay_b}", acc, 0, 0, BufferKind.STATE))
                if momentum:
                    acc = bias_accumulator(graph.tensor(lay_b).size).state_bytes
                    requests.append(BufferRequest(f"mom:{lay_b}", acc, 0, 0, BufferKind.STATE))
            if part.layer is not None and part.layer.dynamic is not None:
                requests.extend(dgsu_step_requests(part.layer, str(op.inputs[1]), s))
                dgsu_last = s
    last_of_root: dict[str, int] = {}
    for name, root in alias.items():
        last_of_root[root] = max(last_of_root.get(root, 0), g_last.get(name, g_first[name]))
    for name, f in g_first.items():
        if name in alias:
            continue
        g_end = max(g_last.get(name, f), last_of_root.get(name, 0))
        size = _grad_bytes(graph.tensor(name).size)
        requests.append(BufferRequest(f"grad:{name}", size, f, g_end, BufferKind.GRADIENT))
    requests.append(BufferRequest("state", STATE_BYTES, 0, 0, BufferKind.STATE))
    requests.extend(dgsu_state_requests(program.scheme, loss_step, dgsu_last))
    flash = sum(t.nbytes for t in graph.tensors if t.data is not None)
    macs_fwd = sum(op_macs(graph, op) for op in graph.ops)
    aliases = tuple((f"grad:{name}", f"grad:{root}") for name, root in alias.items())
    return ProgramMemory(tuple(requests), tuple(steps), trainable, flash, macs_fwd, macs_bwd, aliases)


@dataclass(frozen=True)
class SavedActivations:
    """What the forward pass keeps for the backward (docs/schemes.md, "MobileTL"): the
    masks as bits plus the saved int8 input channels of the weight updates, against the
    same program keeping each masked activation as int8 instead of a mask (the saved input
    channels are the same in both)."""

    bytes: int
    int8_equivalent_bytes: int
    mask_elements: int  # activations saved as 1-bit masks
    input_bytes: int  # saved int8 input channels (the weight gradients' inputs)

    @property
    def reduction(self) -> float:
        """1 − bytes / int8_equivalent_bytes (0 when nothing is saved)."""
        return 1.0 - self.bytes / self.int8_equivalent_bytes if self.int8_equivalent_bytes else 0.0

    def to_json(self) -> dict[str, int | float]:
        return {
            "bytes": self.bytes,
            "int8_equivalent_bytes": self.int8_equivalent_bytes,
            "mask_elements": self.mask_elements,
            "input_bytes": self.input_bytes,
            "reduction": round(self.reduction, 4),
        }


def saved_activations(graph: Graph, plan: Plan) -> SavedActivations:
    """The saved-activation figure of a planned program, from its mask and saved buffers
    (``mask:<tensor>``: ⌈n/8⌉ bytes for the n elements of the tensor; ``saved:…``: int8)."""
    mask_bytes = mask_elems = inputs = 0
    for b in plan.buffers:
        r = b.request
        if r.kind is BufferKind.MASK:
            mask_bytes += r.size
            mask_elems += graph.tensor(r.name.removeprefix("mask:")).size
        elif r.kind is BufferKind.SAVED:
            inputs += r.size
    return SavedActivations(mask_bytes + inputs, mask_elems + inputs, mask_elems, inputs)


def plan_program(memory: ProgramMemory, budget: int | None = None) -> Plan:
    n = len(memory.steps)
    if budget is None:
        return plan_buffers(memory.requests, num_steps=n)
    return plan_or_raise(memory.requests, budget, num_steps=n)
