"""Integer training kernels (numpy twins of the C runtime's training kernels).

Modules: :mod:`.gradient` (gradient tensors, ``normalize``), :mod:`.mask` (1-bit clamp
masks), :mod:`.loss` (softmax cross-entropy gradient), :mod:`.linear_bwd` (conv /
depthwise / fully connected backward), :mod:`.pool_bwd` (MEAN / AVERAGE_POOL_2D
backward), :mod:`.shape_bwd` (ADD, PAD, RESHAPE backward), :mod:`.update` (SGD step with
stochastic rounding), :mod:`.prng` (xorshift32), :mod:`.schedule` (learning-rate
schedule factors). Arithmetic: ``docs/numerics.md``, "Training (integer only)".
"""

from tinytrain.train.kernels.gradient import GRAD_BITS, Grad, grad_to_float, normalize

__all__ = ["GRAD_BITS", "Grad", "grad_to_float", "normalize"]
