"""The .tflite frontend: flatbuffer (via the schema module tflite-micro ships) → IR graph.

Reads full-int8 models and int8 models with float input/output (QUANTIZE/DEQUANTIZE at
the boundary). Everything wrong with the bytes becomes a :class:`ModelFormatError`;
ops tinytrain does not implement become an :class:`UnsupportedOpError` naming the op,
its index and its tensors; float models a :class:`NotQuantizedError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from tinytrain.errors import GraphError, ModelFormatError, NotQuantizedError, TinytrainError, UnsupportedOpError
from tinytrain.frontends.tflite_schema import (
    ACTIVATIONS,
    PADDINGS,
    TENSOR_TYPE_NAMES,
    TENSOR_TYPES,
    builtin_name,
    op_kind_of_code,
    schema,
)
from tinytrain.ir import ops as irops
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Op, OpKind
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.ir.verify import verify

MAX_MODEL_BYTES = 1 << 31
# Ops that do arithmetic on their main input; if any of them computes in float32 the
# model is a float model, which tinytrain refuses.
_COMPUTE_OPS = frozenset(
    {OpKind.CONV_2D, OpKind.DEPTHWISE_CONV_2D, OpKind.FULLY_CONNECTED, OpKind.BATCH_MATMUL}
)


def load_tflite(source: str | Path | bytes | bytearray, *, allow_float: bool = False) -> Graph:
    """Reads a .tflite model (path or bytes) into a verified IR graph.

    Float models are refused unless ``allow_float`` (tests of the float kernels use it).
    """
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        name = "model"
    else:
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
        name = path.stem
    return _Reader(data, name, allow_float).graph()


def _parse(data: bytes) -> Any:
    if len(data) < 8:
        raise ModelFormatError(f"not a .tflite model: {len(data)} bytes is too short")
    if len(data) > MAX_MODEL_BYTES:
        raise ModelFormatError("model file larger than 2 GiB")
    if data[4:8] != b"TFL3":
        raise ModelFormatError("not a .tflite model: missing the 'TFL3' file identifier")
    try:
        return schema().ModelT.InitFromPackedBuf(data, 0)
    except TinytrainError:
        raise
    except Exception as exc:  # the generated reader raises anything on corrupt bytes
        raise ModelFormatError(f"corrupt .tflite flatbuffer ({type(exc).__name__}: {exc})") from None


def _text(value: object, fallback: str) -> str:
    if value is None:
        return fallback
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        text = str(value)
    return text or fallback


def _ints(value: object) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        return tuple(int(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError, OverflowError):
        raise ModelFormatError("corrupt integer vector in the flatbuffer") from None


class _Reader:
    def __init__(self, data: bytes, name: str, allow_float: bool = False) -> None:
        self.data = data
        self.name = name
        self.allow_float = allow_float
        self.model = _parse(data)

    def graph(self) -> Graph:
        try:
            return self._graph()
        except TinytrainError:
            raise
        except (AttributeError, TypeError, ValueError, IndexError, KeyError, OverflowError, MemoryError) as exc:
            raise ModelFormatError(f"corrupt .tflite model ({type(exc).__name__}: {exc})") from None

    def _graph(self) -> Graph:
        m = self.model
        subgraphs = m.subgraphs or []
        if len(subgraphs) == 0:
            raise ModelFormatError("the model has no subgraph")
        if len(subgraphs) > 1:
            raise UnsupportedOpError(
                "SUBGRAPHS", -1, (), f"{len(subgraphs)} subgraphs (control flow) are not supported"
            )
        sg = subgraphs[0]
        raw_tensors = sg.tensors or []
        names = self._unique_names(raw_tensors)
        graph_inputs = _ints(sg.inputs)
        graph_outputs = _ints(sg.outputs)
        for idx in (*graph_inputs, *graph_outputs):
            if not 0 <= idx < len(raw_tensors):
                raise ModelFormatError(f"graph input/output refers to tensor {idx} of {len(raw_tensors)}")
        input_set = set(graph_inputs)
        tensors = tuple(self._tensor(i, t, names[i], i in input_set) for i, t in enumerate(raw_tensors))
        ops = tuple(self._op(i, o, names, len(raw_tensors)) for i, o in enumerate(sg.operators or []))
        if not self.allow_float:
            self._check_quantized(ops, tensors)
        graph = Graph(
            name=_text(sg.name, self.name) if sg.name else self.name,
            tensors=tensors,
            ops=ops,
            inputs=tuple(names[i] for i in graph_inputs),
            outputs=tuple(names[i] for i in graph_outputs),
        )
        verify(graph)
        return graph

    @staticmethod
    def _unique_names(raw_tensors: list[Any]) -> list[str]:
        seen: set[str] = set()
        out: list[str] = []
        for i, t in enumerate(raw_tensors):
            base = _text(t.name, f"tensor_{i}")
            name = base if base not in seen else f"{base}#{i}"
            seen.add(name)
            out.append(name)
        return out

    def _buffer_bytes(self, index: int) -> bytes | None:
        buffers = self.model.buffers or []
        if index <= 0:
            return None
        if index >= len(buffers):
            raise ModelFormatError(f"tensor refers to buffer {index} of {len(buffers)}")
        buf = buffers[index]
        if buf.offset and buf.offset > 1:
            end = buf.offset + buf.size
            if end > len(self.data):
                raise ModelFormatError(
                    f"buffer {index} lies outside the file (ends at {end}, file has {len(self.data)})"
                )
            return self.data[buf.offset : end]
        if buf.data is None or len(buf.data) == 0:
            return None
        arr = buf.data
        return arr.tobytes() if isinstance(arr, np.ndarray) else bytes(arr)

    def _tensor(self, index: int, t: Any, name: str, is_input: bool) -> Tensor:
        ttype = int(t.type)
        dtype = TENSOR_TYPES.get(ttype)
        if dtype is None:
            kind_name = TENSOR_TYPE_NAMES.get(ttype, f"type {ttype}")
            raise UnsupportedOpError("TENSOR", index, (name,), f"element type {kind_name} is not supported")
        shape = _ints(t.shape)
        if any(d < 0 for d in shape):
            raise ModelFormatError(f"tensor {name!r} has a negative dimension {list(shape)}")
        if t.sparsity is not None:
            raise UnsupportedOpError("TENSOR", index, (name,), "sparse tensors are not supported")
        quant = self._quant(t.quantization, name, shape)
        raw = self._buffer_bytes(int(t.buffer))
        data = None
        if raw is not None:
            count = 1
            for d in shape:
                count *= d
            if len(raw) != count * dtype.itemsize:
                raise ModelFormatError(
                    f"tensor {name!r}: buffer has {len(raw)} bytes, shape {list(shape)} of {dtype.value} needs "
                    f"{count * dtype.itemsize}"
                )
            data = np.frombuffer(raw, dtype=dtype.np.newbyteorder("<")).astype(dtype.np).reshape(shape)
        if is_input:
            kind = TensorKind.INPUT
        elif data is not None:
            kind = TensorKind.CONSTANT
        else:
            kind = TensorKind.ACTIVATION
        try:
            return Tensor(name=name, shape=shape, dtype=dtype, kind=kind, quant=quant, data=data)
        except GraphError as exc:
            raise ModelFormatError(f"tensor {name!r}: {exc}") from None

    @staticmethod
    def _quant(q: Any, name: str, shape: tuple[int, ...]) -> Quantization | None:
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        scales = tuple(float(s) for s in q.scale)
        zps = _ints(q.zeroPoint) or (0,) * len(scales)
        if len(zps) != len(scales):
            raise ModelFormatError(f"tensor {name!r}: {len(scales)} scales but {len(zps)} zero points")
        axis: int | None = None
        if len(scales) > 1:
            axis = int(q.quantizedDimension)
            if not 0 <= axis < len(shape) or shape[axis] != len(scales):
                raise ModelFormatError(
                    f"tensor {name!r}: {len(scales)} per-channel scales do not match dimension {axis} of {list(shape)}"
                )
        try:
            return Quantization(scales, zps, axis)
        except GraphError as exc:
            raise ModelFormatError(f"tensor {name!r}: {exc}") from None

    def _op(self, index: int, o: Any, names: list[str], n_tensors: int) -> Op:
        codes = self.model.operatorCodes or []
        ci = int(o.opcodeIndex)
        if not 0 <= ci < len(codes):
            raise ModelFormatError(f"op #{index} refers to operator code {ci} of {len(codes)}")
        code_t = codes[ci]
        code = max(int(code_t.deprecatedBuiltinCode), int(code_t.builtinCode))

        def tensor_names(idx: tuple[int, ...], optional: bool) -> tuple[str | None, ...]:
            out: list[str | None] = []
            for i in idx:
                if i == -1 and optional:
                    out.append(None)
                elif 0 <= i < n_tensors:
                    out.append(names[i])
                else:
                    raise ModelFormatError(f"op #{index} refers to tensor {i} of {n_tensors}")
            return tuple(out)

        inputs = tensor_names(_ints(o.inputs), True)
        outputs = tuple(n for n in tensor_names(_ints(o.outputs), False) if n is not None)
        all_names = tuple(n for n in (*inputs, *outputs) if n is not None)
        if code == 32:  # CUSTOM
            custom = _text(code_t.customCode, "?")
            raise UnsupportedOpError(f"CUSTOM({custom})", index, all_names, "custom ops are not supported")
        kind = op_kind_of_code(code)
        if kind is None:
            raise UnsupportedOpError(builtin_name(code), index, all_names)
        parse = _ATTR_PARSERS.get(kind)
        attrs: irops.OpAttrs = (
            irops.NoAttrs() if parse is None else parse(o.builtinOptions, kind.value, index, all_names)
        )
        return Op(kind=kind, inputs=inputs, outputs=outputs, attrs=attrs, index=index)

    @staticmethod
    def _check_quantized(ops: tuple[Op, ...], tensors: tuple[Tensor, ...]) -> None:
        by_name = {t.name: t for t in tensors}
        if ops and not any(t.quant is not None and not t.dtype.is_float for t in tensors):
            raise NotQuantizedError(
                "the model has no quantized tensor: this is a float model; quantize it to int8 first "
                "(e.g. `tinytrain convert` with calibration data)"
            )
        for op in ops:
            if op.kind in _COMPUTE_OPS and op.inputs and op.inputs[0] is not None:
                t = by_name[op.inputs[0]]
                if t.dtype.is_float:
                    raise NotQuantizedError(
                        f"{op.describe()} computes in float32: this is a float model; quantize it to int8 "
                        "first (e.g. `tinytrain convert` with calibration data)"
                    )


def _options(opts: Any, op_name: str, index: int, tensors: tuple[str, ...]) -> Any:
    if opts is None:
        raise UnsupportedOpError(op_name, index, tensors, "the op has no builtin options")
    return opts


def _activation(code: int, op_name: str, index: int, tensors: tuple[str, ...]) -> irops.Activation:
    act = ACTIVATIONS.get(int(code))
    if act is None:
        raise UnsupportedOpError(op_name, index, tensors, f"fused activation {code} is not supported")
    return act


def _padding(code: int, op_name: str, index: int, tensors: tuple[str, ...]) -> irops.Padding:
    pad = PADDINGS.get(int(code))
    if pad is None:
        raise ModelFormatError(f"op #{index} {op_name}: invalid padding code {code}")
    return pad


def _positive(*values: int, what: str, op_name: str, index: int) -> None:
    for v in values:
        if int(v) <= 0:
            raise ModelFormatError(f"op #{index} {op_name}: {what} must be positive, got {v}")


def _conv(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    o = _options(o, n, i, ts)
    _positive(o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor, what="strides/dilations", op_name=n, index=i)
    return irops.Conv2DAttrs(
        stride_h=int(o.strideH), stride_w=int(o.strideW), dilation_h=int(o.dilationHFactor),
        dilation_w=int(o.dilationWFactor), padding=_padding(o.padding, n, i, ts),
        activation=_activation(o.fusedActivationFunction, n, i, ts),
    )


def _depthwise(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    o = _options(o, n, i, ts)
    _positive(o.strideH, o.strideW, o.dilationHFactor, o.dilationWFactor, what="strides/dilations", op_name=n, index=i)
    return irops.DepthwiseConv2DAttrs(
        stride_h=int(o.strideH), stride_w=int(o.strideW), depth_multiplier=int(o.depthMultiplier),
        dilation_h=int(o.dilationHFactor), dilation_w=int(o.dilationWFactor),
        padding=_padding(o.padding, n, i, ts), activation=_activation(o.fusedActivationFunction, n, i, ts),
    )


def _fully_connected(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.FullyConnectedAttrs()
    if int(o.weightsFormat) != 0:
        raise UnsupportedOpError(n, i, ts, "shuffled weights format is not supported")
    return irops.FullyConnectedAttrs(
        activation=_activation(o.fusedActivationFunction, n, i, ts), keep_num_dims=bool(o.keepNumDims)
    )


def _pool(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    o = _options(o, n, i, ts)
    _positive(o.filterHeight, o.filterWidth, o.strideH, o.strideW, what="filter sizes/strides", op_name=n, index=i)
    return irops.Pool2DAttrs(
        filter_h=int(o.filterHeight), filter_w=int(o.filterWidth), stride_h=int(o.strideH),
        stride_w=int(o.strideW), padding=_padding(o.padding, n, i, ts),
        activation=_activation(o.fusedActivationFunction, n, i, ts),
    )


def _elementwise(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.ElementwiseAttrs()
    return irops.ElementwiseAttrs(activation=_activation(o.fusedActivationFunction, n, i, ts))


def _reduce(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    return irops.ReduceAttrs(keep_dims=bool(o.keepDims) if o is not None else False)


def _reshape(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    return irops.ReshapeAttrs(new_shape=_ints(o.newShape) if o is not None else ())


def _squeeze(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    return irops.SqueezeAttrs(squeeze_dims=_ints(o.squeezeDims) if o is not None else ())


def _concat(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    o = _options(o, n, i, ts)
    return irops.ConcatenationAttrs(axis=int(o.axis), activation=_activation(o.fusedActivationFunction, n, i, ts))


def _softmax(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    return irops.SoftmaxAttrs(beta=float(o.beta) if o is not None else 1.0)


def _leaky_relu(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    o = _options(o, n, i, ts)
    return irops.LeakyReluAttrs(alpha=float(o.alpha))


def _resize(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.ResizeAttrs()
    return irops.ResizeAttrs(align_corners=bool(o.alignCorners), half_pixel_centers=bool(o.halfPixelCenters))


def _strided_slice(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.StridedSliceAttrs()
    return irops.StridedSliceAttrs(
        begin_mask=int(o.beginMask), end_mask=int(o.endMask), ellipsis_mask=int(o.ellipsisMask),
        new_axis_mask=int(o.newAxisMask), shrink_axis_mask=int(o.shrinkAxisMask), offset=bool(o.offset),
    )


def _gather(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.GatherAttrs()
    return irops.GatherAttrs(axis=int(o.axis), batch_dims=int(o.batchDims))


def _batch_matmul(o: Any, n: str, i: int, ts: tuple[str, ...]) -> irops.OpAttrs:
    if o is None:
        return irops.BatchMatMulAttrs()
    return irops.BatchMatMulAttrs(adj_x=bool(o.adjX), adj_y=bool(o.adjY))


_AttrParser = Callable[[Any, str, int, tuple[str, ...]], irops.OpAttrs]
_ATTR_PARSERS: MappingProxyType[OpKind, _AttrParser] = MappingProxyType(
    {
        OpKind.CONV_2D: _conv,
        OpKind.DEPTHWISE_CONV_2D: _depthwise,
        OpKind.FULLY_CONNECTED: _fully_connected,
        OpKind.AVERAGE_POOL_2D: _pool,
        OpKind.MAX_POOL_2D: _pool,
        OpKind.ADD: _elementwise,
        OpKind.SUB: _elementwise,
        OpKind.MUL: _elementwise,
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
    }
)
