"""IR graph → .tflite flatbuffer (the inverse of :mod:`tinytrain.frontends.tflite`).

The bytes are built with the object API of the schema module that the ``tflite-micro``
package ships (``ModelT`` … ``Pack``), so the file is a regular TFLite model that TFLite
Micro, LiteRT and the tinytrain reader load:

* model version 3, one subgraph, buffer 0 the empty sentinel; every tensor without data
  (graph inputs, activations) refers to buffer 0, every constant gets its own buffer
  holding its data in little-endian order, aligned to 16 bytes as the converter does;
* each op's builtin code is written to both ``builtinCode`` and
  ``deprecatedBuiltinCode`` (clamped to 127, the placeholder for codes that do not fit);
  op versions are written as 1 (the IR does not record them; TFLite Micro ignores them
  and LiteRT registers version 1 of every builtin);
* quantization: scales (as float32, the file's type), zero points, and
  ``quantizedDimension`` for per-channel tensors;
* the op's attribute dataclass becomes its ``*OptionsT`` table. ADD/SUB are written with
  ``pot_scale_int16 = false`` (general scales, the semantics the IR expresses).

Parameter-like inputs (RESHAPE's shape, PAD's paddings, MEAN's axes, ...) are ordinary
constant tensors of the IR and are written as such.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any, TypeVar

import flatbuffers
import numpy as np

from tinytrain.errors import GraphError
from tinytrain.frontends.tflite_schema import (
    ACTIVATION_CODES,
    PADDING_CODES,
    TENSOR_TYPE_OF_DTYPE,
    builtin_code,
    schema,
)
from tinytrain.ir import ops as irops
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind

MODEL_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
BUFFER_ALIGNMENT = 16
_MAX_DEPRECATED_CODE = 127
_A = TypeVar("_A")


def write_tflite(graph: Graph) -> bytes:
    """Serialises ``graph`` to the bytes of a .tflite model.

    Raises :class:`GraphError` when the graph cannot be expressed (an op whose
    attributes do not match its kind, a constant without data, an unknown tensor).
    """
    s = schema()
    index = {t.name: i for i, t in enumerate(graph.tensors)}
    buffers: list[Any] = [s.BufferT()]
    tensors = []
    for t in graph.tensors:
        buffer = 0
        if t.data is None and t.kind in (TensorKind.CONSTANT, TensorKind.TRAINABLE):
            raise GraphError(f"tensor {t.name!r} is a {t.kind.value} without data")
        if t.data is not None:
            buffers.append(_AlignedBufferT(_le_bytes(t)))
            buffer = len(buffers) - 1
        tensors.append(_tensor(s, t, buffer))

    codes: list[int] = []
    operators = []
    for op in graph.ops:
        code = builtin_code(op.kind)
        if code not in codes:
            codes.append(code)
        operators.append(_operator(s, op, codes.index(code), index))

    sub = s.SubGraphT()
    sub.tensors = tensors
    sub.inputs = [_lookup(index, n, f"graph input {n!r}") for n in graph.inputs]
    sub.outputs = [_lookup(index, n, f"graph output {n!r}") for n in graph.outputs]
    sub.operators = operators
    sub.name = graph.name

    model = s.ModelT()
    model.version = MODEL_VERSION
    model.description = "tinytrain"
    model.operatorCodes = [_opcode(s, c) for c in codes]
    model.subgraphs = [sub]
    model.buffers = buffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


class _AlignedBufferT:
    """A ``BufferT`` whose data vector starts on a 16-byte boundary of the file.

    (The generated ``BufferT.Pack`` aligns a byte vector to 1 byte only; TFLite Micro
    reads int32 biases and int16 data in place, so the converter aligns buffers.)
    """

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def Pack(self, builder: flatbuffers.Builder) -> int:
        s = schema()
        vector = 0
        if self.data.size:
            # Pad so that, once the bytes are written, the vector start is aligned.
            builder.Prep(BUFFER_ALIGNMENT, int(self.data.size))
            vector = builder.CreateNumpyVector(self.data)
        s.BufferStart(builder)
        if self.data.size:
            s.BufferAddData(builder, vector)
        return int(s.BufferEnd(builder))


def _le_bytes(t: Tensor) -> np.ndarray:
    assert t.data is not None
    little = np.ascontiguousarray(t.data, dtype=t.dtype.np.newbyteorder("<"))
    return np.frombuffer(little.tobytes(), dtype=np.uint8)


def _lookup(index: dict[str, int], name: str, what: str) -> int:
    try:
        return index[name]
    except KeyError:
        raise GraphError(f"{what} is not a tensor of the graph") from None


def _tensor(s: Any, t: Tensor, buffer: int) -> Any:
    ttype = TENSOR_TYPE_OF_DTYPE.get(t.dtype)
    if ttype is None:
        raise GraphError(f"tensor {t.name!r}: element type {t.dtype.value} has no .tflite equivalent")
    out = s.TensorT()
    out.shape = [int(d) for d in t.shape]
    out.type = ttype
    out.buffer = buffer
    out.name = t.name
    out.quantization = None if t.quant is None else _quantization(s, t.quant)
    return out


def _quantization(s: Any, q: Quantization) -> Any:
    out = s.QuantizationParametersT()
    out.scale = [float(np.float32(v)) for v in q.scale]
    out.zeroPoint = [int(z) for z in q.zero_point]
    out.quantizedDimension = 0 if q.axis is None else int(q.axis)
    return out


def _opcode(s: Any, code: int) -> Any:
    out = s.OperatorCodeT()
    out.deprecatedBuiltinCode = min(code, _MAX_DEPRECATED_CODE)
    out.builtinCode = code
    out.version = 1
    return out


def _operator(s: Any, op: Op, opcode_index: int, index: dict[str, int]) -> Any:
    out = s.OperatorT()
    out.opcodeIndex = opcode_index
    out.inputs = [-1 if n is None else _lookup(index, n, f"{op.describe()}: input {n!r}") for n in op.inputs]
    out.outputs = [_lookup(index, n, f"{op.describe()}: output {n!r}") for n in op.outputs]
    writer = _OPTION_WRITERS.get(op.kind)
    if writer is not None:
        options_type, options = writer(s, op)
        out.builtinOptionsType = options_type
        out.builtinOptions = options
    elif not isinstance(op.attrs, irops.NoAttrs):
        raise GraphError(f"{op.describe()}: unexpected attributes {type(op.attrs).__name__}")
    return out


def _attrs(op: Op, cls: type[_A]) -> _A:
    if not isinstance(op.attrs, cls):
        raise GraphError(f"{op.describe()}: expected {cls.__name__}, got {type(op.attrs).__name__}")
    return op.attrs


def _act(a: irops.Activation) -> int:
    return ACTIVATION_CODES[a]


def _conv(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.Conv2DAttrs)
    o = s.Conv2DOptionsT()
    o.padding = PADDING_CODES[a.padding]
    o.strideW, o.strideH = a.stride_w, a.stride_h
    o.dilationWFactor, o.dilationHFactor = a.dilation_w, a.dilation_h
    o.fusedActivationFunction = _act(a.activation)
    return s.BuiltinOptions.Conv2DOptions, o


def _depthwise(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.DepthwiseConv2DAttrs)
    o = s.DepthwiseConv2DOptionsT()
    o.padding = PADDING_CODES[a.padding]
    o.strideW, o.strideH = a.stride_w, a.stride_h
    o.depthMultiplier = a.depth_multiplier
    o.dilationWFactor, o.dilationHFactor = a.dilation_w, a.dilation_h
    o.fusedActivationFunction = _act(a.activation)
    return s.BuiltinOptions.DepthwiseConv2DOptions, o


def _fully_connected(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.FullyConnectedAttrs)
    o = s.FullyConnectedOptionsT()
    o.fusedActivationFunction = _act(a.activation)
    o.keepNumDims = a.keep_num_dims
    return s.BuiltinOptions.FullyConnectedOptions, o


def _pool(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.Pool2DAttrs)
    o = s.Pool2DOptionsT()
    o.padding = PADDING_CODES[a.padding]
    o.strideW, o.strideH = a.stride_w, a.stride_h
    o.filterWidth, o.filterHeight = a.filter_w, a.filter_h
    o.fusedActivationFunction = _act(a.activation)
    return s.BuiltinOptions.Pool2DOptions, o


def _add(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ElementwiseAttrs)
    o = s.AddOptionsT(fusedActivationFunction=_act(a.activation), potScaleInt16=False)
    return s.BuiltinOptions.AddOptions, o


def _sub(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ElementwiseAttrs)
    o = s.SubOptionsT(fusedActivationFunction=_act(a.activation), potScaleInt16=False)
    return s.BuiltinOptions.SubOptions, o


def _mul(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ElementwiseAttrs)
    return s.BuiltinOptions.MulOptions, s.MulOptionsT(fusedActivationFunction=_act(a.activation))


def _reduce(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ReduceAttrs)
    return s.BuiltinOptions.ReducerOptions, s.ReducerOptionsT(keepDims=a.keep_dims)


def _reshape(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ReshapeAttrs)
    return s.BuiltinOptions.ReshapeOptions, s.ReshapeOptionsT(newShape=[int(d) for d in a.new_shape])


def _squeeze(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.SqueezeAttrs)
    return s.BuiltinOptions.SqueezeOptions, s.SqueezeOptionsT(squeezeDims=[int(d) for d in a.squeeze_dims])


def _concat(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ConcatenationAttrs)
    o = s.ConcatenationOptionsT(axis=a.axis, fusedActivationFunction=_act(a.activation))
    return s.BuiltinOptions.ConcatenationOptions, o


def _softmax(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.SoftmaxAttrs)
    return s.BuiltinOptions.SoftmaxOptions, s.SoftmaxOptionsT(beta=float(a.beta))


def _leaky_relu(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.LeakyReluAttrs)
    return s.BuiltinOptions.LeakyReluOptions, s.LeakyReluOptionsT(alpha=float(a.alpha))


def _resize(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.ResizeAttrs)
    o = s.ResizeNearestNeighborOptionsT(alignCorners=a.align_corners, halfPixelCenters=a.half_pixel_centers)
    return s.BuiltinOptions.ResizeNearestNeighborOptions, o


def _strided_slice(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.StridedSliceAttrs)
    o = s.StridedSliceOptionsT(
        beginMask=a.begin_mask, endMask=a.end_mask, ellipsisMask=a.ellipsis_mask, newAxisMask=a.new_axis_mask,
        shrinkAxisMask=a.shrink_axis_mask, offset=a.offset,
    )
    return s.BuiltinOptions.StridedSliceOptions, o


def _gather(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.GatherAttrs)
    return s.BuiltinOptions.GatherOptions, s.GatherOptionsT(axis=a.axis, batchDims=a.batch_dims)


def _batch_matmul(s: Any, op: Op) -> tuple[int, Any]:
    a = _attrs(op, irops.BatchMatMulAttrs)
    return s.BuiltinOptions.BatchMatMulOptions, s.BatchMatMulOptionsT(adjX=a.adj_x, adjY=a.adj_y)


def _empty(options_name: str) -> Callable[[Any, Op], tuple[int, Any]]:
    """Ops whose options table has no field: write the (empty) table the converter writes."""

    def write(s: Any, op: Op) -> tuple[int, Any]:
        _attrs(op, irops.NoAttrs)
        return getattr(s.BuiltinOptions, options_name), getattr(s, options_name + "T")()

    return write


_OptionWriter = Callable[[Any, Op], tuple[int, Any]]
_OPTION_WRITERS: MappingProxyType[OpKind, _OptionWriter] = MappingProxyType(
    {
        OpKind.CONV_2D: _conv,
        OpKind.DEPTHWISE_CONV_2D: _depthwise,
        OpKind.FULLY_CONNECTED: _fully_connected,
        OpKind.AVERAGE_POOL_2D: _pool,
        OpKind.MAX_POOL_2D: _pool,
        OpKind.ADD: _add,
        OpKind.SUB: _sub,
        OpKind.MUL: _mul,
        OpKind.MEAN: _reduce,
        OpKind.SUM: _reduce,
        OpKind.RESHAPE: _reshape,
        OpKind.SQUEEZE: _squeeze,
        OpKind.CONCATENATION: _concat,
        OpKind.SOFTMAX: _softmax,
        OpKind.LEAKY_RELU: _leaky_relu,
        OpKind.RESIZE_NEAREST_NEIGHBOR: _resize,
        OpKind.STRIDED_SLICE: _strided_slice,
        OpKind.GATHER: _gather,
        OpKind.BATCH_MATMUL: _batch_matmul,
        OpKind.SQUARED_DIFFERENCE: _empty("SquaredDifferenceOptions"),
        OpKind.PAD: _empty("PadOptions"),
        OpKind.PADV2: _empty("PadV2Options"),
        OpKind.EXPAND_DIMS: _empty("ExpandDimsOptions"),
        OpKind.TRANSPOSE: _empty("TransposeOptions"),
        OpKind.LOG_SOFTMAX: _empty("LogSoftmaxOptions"),
        OpKind.HARD_SWISH: _empty("HardSwishOptions"),
        OpKind.SLICE: _empty("SliceOptions"),
    }
)
