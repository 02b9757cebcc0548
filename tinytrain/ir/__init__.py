"""tinytrain's intermediate representation: tensors, ops, graphs, verifier, dump."""

from tinytrain.ir.dtypes import DType
from tinytrain.ir.graph import Graph
from tinytrain.ir.ops import Activation, Op, OpKind, Padding
from tinytrain.ir.tensor import Quantization, Tensor, TensorKind

__all__ = ["Activation", "DType", "Graph", "Op", "OpKind", "Padding", "Quantization", "Tensor", "TensorKind"]
