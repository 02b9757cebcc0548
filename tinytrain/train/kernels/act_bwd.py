"""The exact backward of an int8 HARD_SWISH (MobileTL's ``act=exact``, and every scheme
other than MobileTL's sign rule).

``y = x·relu6(x + 3)/6`` in real values has the derivative ``d(x) = 0`` for ``x ≤ −3``,
``(2x + 3)/6`` on ``(−3, 3)`` and ``1`` for ``x ≥ 3``. The forward saves the op's int8
input (the whole tensor: 8 bits per element, against the sign rule's 1); the backward
multiplies the output gradient by ``D[x_q]``, a compile-time table of
``round(d(s_x·(q − z_x))·2^14)`` over the 256 input values (``|D| ≤ 1.5·2^14``: the int64
products are exact), and normalizes (``e_x = e_y − 14 + r``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinytrain.errors import UsageError
from tinytrain.ir.ops import Op
from tinytrain.sim.kernel_spec import Inputs, Outputs
from tinytrain.train.kernels.gradient import Grad, normalize

HSWISH_DERIV_BITS = 14


@dataclass(frozen=True, eq=False)
class HardSwishBwdParams:
    deriv: np.ndarray  # int32 [256]: D[q + 128]
    n: int  # elements of the input (= output)


def prepare_hard_swish_backward(op: Op, inputs: Inputs, outputs: Outputs) -> HardSwishBwdParams:
    """The derivative table of an int8 HARD_SWISH (compile time, float64 like a multiplier)."""
    x = inputs[0]
    if x is None or x.quant is None or x.dtype.is_float or len(outputs) != 1 or outputs[0].shape != x.shape:
        raise UsageError(f"{op.describe()}: the HARD_SWISH backward needs an int8 input of the output's shape")
    scale, zp = float(x.quant.scale[0]), int(x.quant.zero_point[0])
    real = scale * (np.arange(-128, 128, dtype=np.float64) - zp)
    d = np.where(real <= -3.0, 0.0, np.where(real >= 3.0, 1.0, (2.0 * real + 3.0) / 6.0))
    table = np.floor(d * (1 << HSWISH_DERIV_BITS) + 0.5).astype(np.int32)
    table.flags.writeable = False
    return HardSwishBwdParams(table, x.size)


def save_hard_swish_input(x_q: np.ndarray) -> np.ndarray:
    """The int8 input kept for the backward (a copy).

    C twin: tt_copy_s8 in firmware_templates/runtime/src/tt_hard_swish.c."""
    return np.array(x_q, dtype=np.int8, copy=True)


def hard_swish_input_grad(p: HardSwishBwdParams, g_y: Grad, x_q: np.ndarray) -> Grad:
    """``g_x = normalize(g_y · D[x_q], e_y − 14)``.

    C twin: tt_hard_swish_bwd_s16 in firmware_templates/runtime/src/tt_hard_swish.c."""
    x = np.asarray(x_q)
    if x.size != g_y.g.size or x.dtype != np.int8:
        raise UsageError(f"HARD_SWISH backward: {x.dtype}[{x.size}] saved input for a gradient of {g_y.g.size}")
    acc = g_y.g.astype(np.int64) * p.deriv[x.reshape(g_y.shape).astype(np.int64) + 128].astype(np.int64)
    return normalize(acc, g_y.e - HSWISH_DERIV_BITS)
