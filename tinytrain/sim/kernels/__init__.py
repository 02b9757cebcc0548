"""The forward kernel table of the simulator: ``OpKind -> KernelSpec``."""

from __future__ import annotations

from types import MappingProxyType

from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels.core import KERNELS as _CORE
from tinytrain.sim.kernels.nonlinear import KERNELS as _NONLINEAR
from tinytrain.sim.kernels.token_select import KERNELS as _TOKEN_SELECT  # BSR (passes/token_drop.py)

KERNELS: MappingProxyType[OpKind, KernelSpec] = MappingProxyType({**_CORE, **_NONLINEAR, **_TOKEN_SELECT})

__all__ = ["KERNELS"]
