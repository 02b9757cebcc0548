"""The MCUNet / tiny-training checkpoint frontend: ``.pkl`` → IR graph (and → ``.tflite``).

The checkpoint (see :mod:`tinytrain.frontends.mcunet_format`) stores an int8
MobileNetV2-style network in PyTorch conventions; this module rewrites it in TFLite's
conventions, op for op, so that the IR, the simulator and TFLite Micro all run the same
integer program:

* input: NHWC int8 ``[1, R, R, C]`` with the stored ``x_scale``/``x_zero`` (1/127.5, 0);
* each conv: weights OIHW → OHWI (``CONV_2D``) or 1HWC (``DEPTHWISE_CONV_2D``, multiplier 1),
  per-channel symmetric scales ``w_scales`` on the output-channel axis, the int32 bias as
  stored (it is in ``x_scale·w_scale`` units, as TFLite's is);
* padding: PyTorch pads ``k//2`` on each side. Where that equals TFLite's SAME padding
  (always for stride 1; for stride 2 when the input size is odd) the conv uses SAME
  (VALID for 1×1); otherwise (stride 2 on an even size: SAME would pad 0 before and 1
  after) an explicit ``PAD`` whose pad value is the input zero point (the quantized real
  0) is followed by a VALID conv;
* ReLU6 is not an op: tiny-training folds it into the output quantization
  (``y_zero = −128``, ``y_scale ≤ 6/255``), so the int8 clamp of the requantization is the
  activation; every op is written with fused activation NONE;
* residual: ``ADD(block input, pointwise2 output)``, the inputs quantized as
  ``residual.x`` (= the block input) and ``pointwise2.y``, the sum as ``residual.y``;
* head: ``AVERAGE_POOL_2D`` over the whole final feature map (input and output share one
  quantization, as TFLite Micro requires; it averages the int8 codes, rounding half away
  from zero), ``RESHAPE`` to ``[1, C]``, and the classifier as a per-channel
  ``FULLY_CONNECTED`` giving int8 logits ``[1, classes]``.

Numerics — the one integer arithmetic of the pipeline. The checkpoint stores float
requantization scales; tiny-training itself evaluates ``x_scale·w_scale/y_scale`` in
float at run time. tinytrain instead keeps the scales as :class:`Quantization`
(rounded to float32, exactly what a .tflite file holds) and every consumer derives the
fixed-point multipliers the way TFLite Micro's Prepare does: ``QuantizeMultiplier(
double(x_scale) · double(w_scale) / double(y_scale))`` (float32 values widened to double;
see :func:`tinytrain.sim.fixedpoint.quantize_multiplier`), then
``MultiplyByQuantizedMultiplier`` with double rounding. The simulator, the generated C and
TFLite Micro therefore compute identical bytes. Multipliers below 2^-31 flush to 0:
that is what happens to the "dead" channels of real checkpoints (all-zero weights,
``w_scale ≈ 3.9e-9``, bias saturated at ±(2^31−1)) when ``x_scale/y_scale`` is small; the
others give a constant output near ``y_zero`` — the same in all three.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinytrain.errors import GraphError, ModelFormatError
from tinytrain.frontends.mcunet_format import McunetCheckpoint, QConv, QParams, read_checkpoint
from tinytrain.frontends.tflite_writer import write_tflite
from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import (
    Conv2DAttrs,
    DepthwiseConv2DAttrs,
    ElementwiseAttrs,
    FullyConnectedAttrs,
    NoAttrs,
    Op,
    OpAttrs,
    OpKind,
    Padding,
    Pool2DAttrs,
    ReshapeAttrs,
)
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind
from tinytrain.ir.verify import verify

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def load_mcunet(path: str | Path) -> Graph:
    """Reads an MCUNet / tiny-training ``.pkl`` checkpoint into an IR graph."""
    ckpt = read_checkpoint(path)
    return checkpoint_to_graph(ckpt, Path(path).stem)


def export_mcunet_tflite(path_in: str | Path, path_out: str | Path) -> bytes:
    """Converts a checkpoint to a .tflite file; returns the bytes written."""
    data = write_tflite(load_mcunet(path_in))
    try:
        Path(path_out).write_bytes(data)
    except OSError as exc:
        raise ModelFormatError(f"cannot write {path_out}: {exc.strerror or exc}") from None
    return data


def checkpoint_to_graph(ckpt: McunetCheckpoint, name: str = "mcunet") -> Graph:
    """Builds the IR graph of a validated checkpoint."""
    try:
        graph = _GraphBuilder(ckpt).build(name)
        verify(graph)
        return graph
    except GraphError as exc:  # an inconsistency the IR itself detects
        raise ModelFormatError(f"inconsistent checkpoint: {exc}") from None


def pytorch_padding(size: int, kernel: int, stride: int) -> tuple[int, Padding | None]:
    """Output size of a PyTorch conv padded ``kernel//2`` on each side, and the TFLite
    padding that computes the same windows (``None``: no TFLite padding does)."""
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    if pad == 0 and (size - kernel) // stride + 1 == out:
        return out, Padding.VALID
    same_out = -(-size // stride)
    same_before = max((same_out - 1) * stride + kernel - size, 0) // 2
    return out, (Padding.SAME if same_out == out and same_before == pad else None)


def _f32(x: float) -> float:
    return float(np.float32(x))


def _qt(q: QParams) -> Quantization:
    return Quantization.per_tensor(_f32(q.scale), q.zero)


class _GraphBuilder:
    """Accumulates tensors and ops (state local to one conversion)."""

    def __init__(self, ckpt: McunetCheckpoint) -> None:
        self.ckpt = ckpt
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []

    # -- helpers -------------------------------------------------------------------------

    def _add_tensor(self, t: Tensor) -> str:
        if t.name in self.tensors:
            raise ModelFormatError(f"two layers of the checkpoint produce the tensor name {t.name!r}")
        self.tensors[t.name] = t
        return t.name

    def _const(self, name: str, data: np.ndarray, quant: Quantization | None = None) -> str:
        return self._add_tensor(
            Tensor(name, tuple(int(d) for d in data.shape), DType.from_numpy(data.dtype), TensorKind.CONSTANT, quant,
                   data)
        )

    def _act(self, name: str, shape: tuple[int, ...], quant: Quantization) -> str:
        return self._add_tensor(Tensor(name, shape, DType.INT8, TensorKind.ACTIVATION, quant))

    def _op(self, kind: OpKind, inputs: tuple[str | None, ...], output: str, attrs: OpAttrs) -> None:
        self.ops.append(Op(kind, inputs, (output,), attrs, len(self.ops)))

    def _shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    @staticmethod
    def _expect_input(conv: QConv, q: QParams, producer: str) -> None:
        if _f32(conv.x.scale) != _f32(q.scale) or conv.x.zero != q.zero:
            raise ModelFormatError(
                f"{conv.name}: input quantization (scale {conv.x.scale!r}, zero {conv.x.zero}) differs from "
                f"the output quantization of {producer} (scale {q.scale!r}, zero {q.zero})"
            )

    # -- layers --------------------------------------------------------------------------

    def conv(self, conv: QConv, x: str, xq: QParams, producer: str) -> tuple[str, QParams]:
        """Appends one convolution (with its PAD if needed); returns (output, its quantization)."""
        self._expect_input(conv, xq, producer)
        _, h, w, c = self._shape(x)
        if c != conv.in_channels:
            raise ModelFormatError(f"{conv.name}: expects {conv.in_channels} input channels, gets {c}")
        if h != w:
            raise ModelFormatError(f"{conv.name}: non-square feature map {h}×{w}")  # pragma: no cover
        if conv.in_size is not None and conv.in_size != h:
            raise ModelFormatError(f"{conv.name}: in_shape {conv.in_size} but the feature map is {h}×{w}")
        (kh, kw), (sh, sw) = conv.kernel, conv.stride
        out_h, pad_h = pytorch_padding(h, kh, sh)
        out_w, pad_w = pytorch_padding(w, kw, sw)
        if out_h <= 0 or out_w <= 0:
            raise ModelFormatError(f"{conv.name}: kernel {kh}×{kw} does not fit a {h}×{w} input")
        if conv.out_size is not None and conv.out_size != out_h:
            raise ModelFormatError(f"{conv.name}: out_shape {conv.out_size} but the conv gives {out_h}×{out_w}")
        padding = pad_h if pad_h == pad_w else None
        if padding is None:
            ph, pw = kh // 2, kw // 2
            paddings = np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]], dtype=np.int32)
            padded = self._act(f"{conv.name}.pad", (1, h + 2 * ph, w + 2 * pw, c), _qt(xq))
            self._op(OpKind.PAD, (x, self._const(f"{conv.name}.paddings", paddings)), padded, NoAttrs())
            x, padding = padded, Padding.VALID

        x_scale = _f32(conv.x.scale)
        w_scales = tuple(float(s) for s in conv.w_scales)
        bias_scales = tuple(_f32(x_scale * s) for s in w_scales)
        if min(bias_scales) <= 0.0:
            raise ModelFormatError(f"{conv.name}: x_scale·w_scale underflows float32")
        zeros = (0,) * conv.out_channels
        kind: OpKind
        attrs: OpAttrs
        if conv.depthwise:
            weight = np.transpose(conv.weight, (1, 2, 3, 0))  # [C,1,kh,kw] -> [1,kh,kw,C]
            wq = Quantization(w_scales, zeros, 3)
            kind = OpKind.DEPTHWISE_CONV_2D
            attrs = DepthwiseConv2DAttrs(stride_h=sh, stride_w=sw, depth_multiplier=1, padding=padding)
        else:
            weight = np.transpose(conv.weight, (0, 2, 3, 1))  # OIHW -> OHWI
            wq = Quantization(w_scales, zeros, 0)
            kind = OpKind.CONV_2D
            attrs = Conv2DAttrs(stride_h=sh, stride_w=sw, padding=padding)
        w_name = self._const(f"{conv.name}.weight", np.ascontiguousarray(weight), wq)
        b_name = self._const(f"{conv.name}.bias", conv.bias, Quantization(bias_scales, zeros, 0))
        y = self._act(f"{conv.name}.y", (1, out_h, out_w, conv.out_channels), _qt(conv.y))
        self._op(kind, (x, w_name, b_name), y, attrs)
        return y, conv.y

    def head(self, x: str, xq: QParams, producer: str) -> str:
        cls = self.ckpt.classifier
        self._expect_input(cls, xq, producer)
        _, h, w, c = self._shape(x)
        if cls.kernel != (1, 1) or cls.stride != (1, 1) or cls.depthwise or cls.in_channels != c:
            raise ModelFormatError(
                f"classifier: expected a 1×1 stride-1 conv on {c} channels, got kernel {cls.kernel}, stride "
                f"{cls.stride}, {cls.in_channels} input channels"
            )
        pooled = self._act("pool.y", (1, 1, 1, c), _qt(xq))
        self._op(OpKind.AVERAGE_POOL_2D, (x,), pooled, Pool2DAttrs(filter_h=h, filter_w=w, stride_h=h, stride_w=w))
        flat = self._act("pool.flat", (1, c), _qt(xq))
        shape = self._const("pool.flat.shape", np.array([1, c], dtype=np.int32))
        self._op(OpKind.RESHAPE, (pooled, shape), flat, ReshapeAttrs(new_shape=(1, c)))

        x_scale = _f32(cls.x.scale)
        w_scales = tuple(float(s) for s in cls.w_scales)
        zeros = (0,) * cls.out_channels
        bias_scales = tuple(_f32(x_scale * s) for s in w_scales)
        if min(bias_scales) <= 0.0:
            raise ModelFormatError("classifier: x_scale·w_scale underflows float32")
        weight = np.ascontiguousarray(cls.weight.reshape(cls.out_channels, c))
        w_name = self._const("classifier.weight", weight, Quantization(w_scales, zeros, 0))
        b_name = self._const("classifier.bias", cls.bias, Quantization(bias_scales, zeros, 0))
        y = self._act(OUTPUT_NAME, (1, cls.out_channels), _qt(cls.y))
        self._op(OpKind.FULLY_CONNECTED, (flat, w_name, b_name), y, FullyConnectedAttrs())
        return y

    def build(self, name: str) -> Graph:
        first = self.ckpt.first_conv
        if first.in_size is None:  # pragma: no cover - the format reader guarantees it
            raise ModelFormatError("first_conv has no in_shape")
        size = first.in_size
        self._add_tensor(
            Tensor(INPUT_NAME, (1, size, size, first.in_channels), DType.INT8, TensorKind.INPUT, _qt(first.x))
        )
        x, xq = self.conv(first, INPUT_NAME, first.x, "the input")
        producer = first.name
        for block in self.ckpt.blocks:
            block_in, block_q = x, xq
            if block.pointwise1 is not None:
                x, xq = self.conv(block.pointwise1, x, xq, producer)
                producer = block.pointwise1.name
            x, xq = self.conv(block.depthwise, x, xq, producer)
            x, xq = self.conv(block.pointwise2, x, xq, block.depthwise.name)
            producer = block.pointwise2.name
            res = block.residual
            if res is not None:
                where = f"blocks.{block.index}.residual"
                if _f32(res.x.scale) != _f32(block_q.scale) or res.x.zero != block_q.zero:
                    raise ModelFormatError(f"{where}: its x quantization differs from the block input's")
                if self._shape(block_in) != self._shape(x):
                    raise ModelFormatError(
                        f"{where}: block input {list(self._shape(block_in))} and output "
                        f"{list(self._shape(x))} differ in shape"
                    )
                if res.in_channels != self._shape(x)[3]:
                    raise ModelFormatError(f"{where}: in_channel {res.in_channels} != {self._shape(x)[3]}")
                y = self._act(f"blocks.{block.index}.add.y", self._shape(x), _qt(res.y))
                self._op(OpKind.ADD, (block_in, x), y, ElementwiseAttrs())
                x, xq, producer = y, res.y, where
        if self.ckpt.feature_mix is not None:
            x, xq = self.conv(self.ckpt.feature_mix, x, xq, producer)
            producer = self.ckpt.feature_mix.name
        out = self.head(x, xq, producer)
        tensors = tuple(self.tensors.values())
        return Graph(name=name, tensors=tensors, ops=tuple(self.ops), inputs=(INPUT_NAME,), outputs=(out,))
