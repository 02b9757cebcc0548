"""The IR graph: tensors by name, ops in execution order, inputs and outputs."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from tinytrain.errors import GraphError
from tinytrain.ir.ops import Op
from tinytrain.ir.tensor import Tensor


@dataclass(frozen=True)
class Graph:
    """An immutable dataflow graph. ``ops`` are in a valid execution order."""

    name: str
    tensors: tuple[Tensor, ...]
    ops: tuple[Op, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    _by_name: Mapping[str, Tensor] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Tensor] = {}
        for t in self.tensors:
            if t.name in by_name:
                raise GraphError(f"duplicate tensor name {t.name!r}")
            by_name[t.name] = t
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))

    def tensor(self, name: str) -> Tensor:
        try:
            return self._by_name[name]
        except KeyError:
            raise GraphError(f"graph {self.name!r} has no tensor {name!r}") from None

    def has_tensor(self, name: str) -> bool:
        return name in self._by_name

    def op_inputs(self, op: Op) -> tuple[Tensor | None, ...]:
        return tuple(None if n is None else self.tensor(n) for n in op.inputs)

    def op_outputs(self, op: Op) -> tuple[Tensor, ...]:
        return tuple(self.tensor(n) for n in op.outputs)

    def iter_ops(self) -> Iterator[tuple[Op, tuple[Tensor | None, ...], tuple[Tensor, ...]]]:
        for op in self.ops:
            yield op, self.op_inputs(op), self.op_outputs(op)

    def producer(self) -> Mapping[str, int]:
        """Tensor name -> index (in ``ops``) of the op that writes it."""
        return MappingProxyType({out: i for i, op in enumerate(self.ops) for out in op.outputs})

    def consumers(self) -> Mapping[str, tuple[int, ...]]:
        acc: dict[str, list[int]] = {}
        for i, op in enumerate(self.ops):
            for name in op.inputs:
                if name is not None:
                    acc.setdefault(name, []).append(i)
        return MappingProxyType({k: tuple(v) for k, v in acc.items()})

    def with_changes(self, **changes: object) -> Graph:
        return replace(self, **changes)  # type: ignore[arg-type]
