"""The forward kernel table of the simulator: ``OpKind -> KernelSpec``."""

from __future__ import annotations

from types import MappingProxyType

from tinytrain.ir.ops import OpKind
from tinytrain.sim.kernel_spec import KernelSpec
from tinytrain.sim.kernels.core import KERNELS as _CORE
from tinytrain.sim.kernels.nonlinear import KERNELS as _NONLINEAR

KERNELS: MappingProxyType[OpKind, KernelSpec] = MappingProxyType({**_CORE, **_NONLINEAR})

__all__ = ["KERNELS"]
