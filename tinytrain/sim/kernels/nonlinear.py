"""Nonlinear and conversion forward kernels, bit-exact with TFLite Micro's reference kernels.

SOFTMAX, LOG_SOFTMAX, LOGISTIC, TANH, HARD_SWISH, RSQRT, QUANTIZE and DEQUANTIZE. The
arithmetic lives in the ``nl_*`` modules; gemmlowp's fixed-point helpers in
:mod:`tinytrain.sim.kernels.nl_fixedpoint`.
"""

from __future__ import annotations

from types import MappingProxyType

from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels.nl_activations import prepare_hard_swish, prepare_logistic, prepare_tanh, run_hard_swish
from tinytrain.sim.kernels.nl_common import run_table
from tinytrain.sim.kernels.nl_quantize import prepare_dequantize, prepare_quantize, run_dequantize, run_quantize
from tinytrain.sim.kernels.nl_rsqrt import prepare_rsqrt, run_rsqrt
from tinytrain.sim.kernels.nl_softmax import (
    prepare_log_softmax,
    prepare_softmax,
    run_log_softmax,
    run_softmax,
    softmax_batch_safe,
)

KERNELS: MappingProxyType[OpKind, KernelSpec] = MappingProxyType(
    {
        OpKind.SOFTMAX: KernelSpec(prepare_softmax, run_softmax, softmax_batch_safe),
        OpKind.LOG_SOFTMAX: KernelSpec(prepare_log_softmax, run_log_softmax, softmax_batch_safe),
        OpKind.LOGISTIC: KernelSpec(prepare_logistic, run_table),
        OpKind.TANH: KernelSpec(prepare_tanh, run_table),
        OpKind.HARD_SWISH: KernelSpec(prepare_hard_swish, run_hard_swish),
        OpKind.RSQRT: KernelSpec(prepare_rsqrt, run_rsqrt),
        OpKind.QUANTIZE: KernelSpec(prepare_quantize, run_quantize),
        OpKind.DEQUANTIZE: KernelSpec(prepare_dequantize, run_dequantize),
    }
)

__all__ = ["KERNELS"]
