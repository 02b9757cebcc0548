"""The core forward kernels of the simulator (``OpKind -> KernelSpec``).

Each kernel reproduces TFLite Micro's reference kernel byte for byte; the modules
``core_*`` document how (and why the fast numpy formulations are exact).
"""

from __future__ import annotations

from types import MappingProxyType

from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels import (
    core_conv,
    core_elementwise,
    core_index,
    core_matmul,
    core_pool,
    core_reduce,
    core_shape,
)

KERNELS: MappingProxyType[OpKind, KernelSpec] = MappingProxyType(
    {
        OpKind.CONV_2D: core_conv.CONV_2D,
        OpKind.DEPTHWISE_CONV_2D: core_conv.DEPTHWISE_CONV_2D,
        OpKind.FULLY_CONNECTED: core_matmul.FULLY_CONNECTED,
        OpKind.BATCH_MATMUL: core_matmul.BATCH_MATMUL,
        OpKind.ADD: core_elementwise.ADD,
        OpKind.SUB: core_elementwise.SUB,
        OpKind.MUL: core_elementwise.MUL,
        OpKind.SQUARED_DIFFERENCE: core_elementwise.SQUARED_DIFFERENCE,
        OpKind.RELU: core_elementwise.RELU,
        OpKind.RELU6: core_elementwise.RELU6,
        OpKind.LEAKY_RELU: core_elementwise.LEAKY_RELU,
        OpKind.MEAN: core_reduce.MEAN,
        OpKind.SUM: core_reduce.SUM,
        OpKind.AVERAGE_POOL_2D: core_pool.AVERAGE_POOL_2D,
        OpKind.MAX_POOL_2D: core_pool.MAX_POOL_2D,
        OpKind.PAD: core_shape.PAD,
        OpKind.PADV2: core_shape.PADV2,
        OpKind.RESHAPE: core_shape.RESHAPE,
        OpKind.SQUEEZE: core_shape.SQUEEZE,
        OpKind.EXPAND_DIMS: core_shape.EXPAND_DIMS,
        OpKind.TRANSPOSE: core_shape.TRANSPOSE,
        OpKind.CONCATENATION: core_shape.CONCATENATION,
        OpKind.RESIZE_NEAREST_NEIGHBOR: core_index.RESIZE_NEAREST_NEIGHBOR,
        OpKind.STRIDED_SLICE: core_index.STRIDED_SLICE,
        OpKind.SLICE: core_index.SLICE,
        OpKind.GATHER: core_index.GATHER,
    }
)

__all__ = ["KERNELS"]
