"""Error types of tinytrain.

Every failure caused by bad input (a corrupt file, an unsupported op, a model that is
not quantized, an inconsistent graph) is raised as a subclass of :class:`TinytrainError`,
so the CLI can print one line and exit with status 2, and the fuzz tests can check that
nothing else escapes.
"""

from __future__ import annotations


class TinytrainError(Exception):
    """Base class of every error tinytrain raises on purpose."""


class ModelFormatError(TinytrainError):
    """The model file is corrupt, truncated or not of the expected format."""


class NotQuantizedError(TinytrainError):
    """The model is a float model; tinytrain needs an int8-quantized one."""


class UnsupportedOpError(TinytrainError):
    """An op (or an op option) that tinytrain does not implement.

    The message always names the op, its index in the graph and its tensor names.
    """

    def __init__(self, op_name: str, index: int, tensors: tuple[str, ...], detail: str = "") -> None:
        where = f"op #{index} {op_name} (tensors: {', '.join(tensors) or '-'})"
        super().__init__(f"unsupported {where}" + (f": {detail}" if detail else ""))
        self.op_name = op_name
        self.index = index
        self.tensors = tensors


class GraphError(TinytrainError):
    """The IR graph violates an invariant (found by the verifier)."""


class UsageError(TinytrainError):
    """Bad command-line or API usage (wrong input shape, missing file, ...)."""
