"""IR operators: the op kinds tinytrain knows and their (frozen) attributes.

Inputs that a kernel reads as parameters (a MEAN's axes, a TRANSPOSE's permutation,
a PAD's paddings, ...) stay constant *input tensors*, as in a .tflite file, so the
graph stays a faithful copy of what the frontends read. Static options live in an
attribute dataclass per op kind.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class OpKind(enum.Enum):
    ADD = "ADD"
    SUB = "SUB"
    MUL = "MUL"
    SQUARED_DIFFERENCE = "SQUARED_DIFFERENCE"
    RSQRT = "RSQRT"
    CONV_2D = "CONV_2D"
    DEPTHWISE_CONV_2D = "DEPTHWISE_CONV_2D"
    FULLY_CONNECTED = "FULLY_CONNECTED"
    BATCH_MATMUL = "BATCH_MATMUL"
    MEAN = "MEAN"
    SUM = "SUM"
    AVERAGE_POOL_2D = "AVERAGE_POOL_2D"
    MAX_POOL_2D = "MAX_POOL_2D"
    PAD = "PAD"
    PADV2 = "PADV2"
    RESHAPE = "RESHAPE"
    SQUEEZE = "SQUEEZE"
    EXPAND_DIMS = "EXPAND_DIMS"
    TRANSPOSE = "TRANSPOSE"
    CONCATENATION = "CONCATENATION"
    SOFTMAX = "SOFTMAX"
    LOG_SOFTMAX = "LOG_SOFTMAX"
    LOGISTIC = "LOGISTIC"
    TANH = "TANH"
    RELU = "RELU"
    RELU6 = "RELU6"
    LEAKY_RELU = "LEAKY_RELU"
    HARD_SWISH = "HARD_SWISH"
    RESIZE_NEAREST_NEIGHBOR = "RESIZE_NEAREST_NEIGHBOR"
    STRIDED_SLICE = "STRIDED_SLICE"
    SLICE = "SLICE"
    GATHER = "GATHER"
    QUANTIZE = "QUANTIZE"
    DEQUANTIZE = "DEQUANTIZE"
    # tinytrain-internal (no .tflite holds it): BSR's token dropping (TokenSelectAttrs)
    TOKEN_SELECT = "TOKEN_SELECT"


class Activation(enum.Enum):
    """Fused activation of an op (TFLite's ActivationFunctionType subset)."""

    NONE = "NONE"
    RELU = "RELU"
    RELU_N1_TO_1 = "RELU_N1_TO_1"
    RELU6 = "RELU6"


class Padding(enum.Enum):
    SAME = "SAME"
    VALID = "VALID"


@dataclass(frozen=True)
class NoAttrs:
    pass


@dataclass(frozen=True)
class Conv2DAttrs:
    stride_h: int
    stride_w: int
    dilation_h: int = 1
    dilation_w: int = 1
    padding: Padding = Padding.SAME
    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class DepthwiseConv2DAttrs:
    stride_h: int
    stride_w: int
    depth_multiplier: int = 1
    dilation_h: int = 1
    dilation_w: int = 1
    padding: Padding = Padding.SAME
    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class FullyConnectedAttrs:
    activation: Activation = Activation.NONE
    keep_num_dims: bool = False


@dataclass(frozen=True)
class Pool2DAttrs:
    filter_h: int
    filter_w: int
    stride_h: int
    stride_w: int
    padding: Padding = Padding.VALID
    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class ElementwiseAttrs:
    """ADD, SUB, MUL (with broadcasting)."""

    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class ReduceAttrs:
    """MEAN, SUM; the axes are the op's second (constant) input."""

    keep_dims: bool = False


@dataclass(frozen=True)
class ReshapeAttrs:
    new_shape: tuple[int, ...]


@dataclass(frozen=True)
class SqueezeAttrs:
    squeeze_dims: tuple[int, ...] = ()


@dataclass(frozen=True)
class ConcatenationAttrs:
    axis: int
    activation: Activation = Activation.NONE


@dataclass(frozen=True)
class SoftmaxAttrs:
    beta: float = 1.0


@dataclass(frozen=True)
class LeakyReluAttrs:
    alpha: float


@dataclass(frozen=True)
class ResizeAttrs:
    align_corners: bool = False
    half_pixel_centers: bool = False


@dataclass(frozen=True)
class StridedSliceAttrs:
    begin_mask: int = 0
    end_mask: int = 0
    ellipsis_mask: int = 0
    new_axis_mask: int = 0
    shrink_axis_mask: int = 0
    offset: bool = False


@dataclass(frozen=True)
class GatherAttrs:
    axis: int = 0
    batch_dims: int = 0


@dataclass(frozen=True)
class BatchMatMulAttrs:
    adj_x: bool = False
    adj_y: bool = False


@dataclass(frozen=True)
class TokenSelectAttrs:
    """TOKEN_SELECT (Block Selective Reprogramming, docs/schemes.md; inserted by
    tinytrain/passes/token_drop.py, never read from a file): inputs ``x`` [1, T, D] (a
    residual stream) and ``p`` [1, H, T, T] (the int8 attention probabilities of the block
    that wrote ``x``); outputs ``x'`` [1, 1 + kept, D] (the class token, then the ``kept``
    patch tokens of the largest class-token attention summed over the heads, in their
    original order; ties to the lower index) and their positions in ``x`` [1, kept] (uint8,
    ascending, each in 1..T−1; T ≤ 256)."""

    kept: int


OpAttrs = (
    NoAttrs
    | Conv2DAttrs
    | DepthwiseConv2DAttrs
    | FullyConnectedAttrs
    | Pool2DAttrs
    | ElementwiseAttrs
    | ReduceAttrs
    | ReshapeAttrs
    | SqueezeAttrs
    | ConcatenationAttrs
    | SoftmaxAttrs
    | LeakyReluAttrs
    | ResizeAttrs
    | StridedSliceAttrs
    | GatherAttrs
    | BatchMatMulAttrs
    | TokenSelectAttrs
)


@dataclass(frozen=True)
class Op:
    """One operator: kind, tensor names in and out (``None`` for an absent optional
    input, e.g. a convolution without bias), attributes, and the op's index in the
    source model (for error messages)."""

    kind: OpKind
    inputs: tuple[str | None, ...]
    outputs: tuple[str, ...]
    attrs: OpAttrs = NoAttrs()
    index: int = -1

    def describe(self) -> str:
        names = [n for n in (*self.inputs, *self.outputs) if n is not None]
        return f"op #{self.index} {self.kind.value} (tensors: {', '.join(names)})"
