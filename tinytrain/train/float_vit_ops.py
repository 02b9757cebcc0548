"""Float (Keras) equivalents of the transformer ops of an int8 tiny ViT, for the float baseline
(:func:`tinytrain.train.float_baseline.float_model`): ADD / SUB / MUL of two activations (with
broadcasting) or of an activation and a constant, MEAN over any axes, RSQRT, TRANSPOSE,
BATCH_MATMUL (``adj_x`` / ``adj_y``), HARD_SWISH, CONCATENATION with constant parts (the
class token) and STRIDED_SLICE (the class-token read-out).

Constant operands are dequantized (``s · (q − z)``,
:func:`~tinytrain.train.float_baseline.dequantized`). A constant of more than one element (the
class token, the position embedding, a LayerNorm scale or shift) becomes a **trainable**
variable initialised to that value, since full fine-tuning trains every parameter of the
network; a single-element constant (the attention scale, the LayerNorm epsilon) stays fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tinytrain.ir.ops import BatchMatMulAttrs, ConcatenationAttrs, Op, OpKind, ReduceAttrs, StridedSliceAttrs
from tinytrain.ir.tensor import Tensor

VIT_OPS = frozenset(
    {
        OpKind.ADD,
        OpKind.SUB,
        OpKind.MUL,
        OpKind.MEAN,
        OpKind.RSQRT,
        OpKind.TRANSPOSE,
        OpKind.BATCH_MATMUL,
        OpKind.HARD_SWISH,
        OpKind.CONCATENATION,
        OpKind.STRIDED_SLICE,
    }
)


def vit_float_op(keras: Any, op: Op, ins: Sequence[Tensor | None], args: list[Any], name: str) -> Any:
    """The Keras tensor of ``op`` (one of :data:`VIT_OPS`); ``args`` holds the Keras tensors
    of the activation inputs (None for constants)."""
    ops = keras.ops
    k = op.kind
    from tinytrain.train.float_baseline import _unsupported
    if k in (OpKind.ADD, OpKind.SUB, OpKind.MUL):
        fn: Callable[[Any, Any], Any] = {OpKind.ADD: ops.add, OpKind.SUB: ops.subtract, OpKind.MUL: ops.multiply}[k]
        return _binary(keras, op, ins, args, fn, name)
    x = args[0]
    if k is OpKind.MEAN:
        axes = tuple(int(a) for a in _param(op, ins, 1).reshape(-1))
        keep = isinstance(op.attrs, ReduceAttrs) and op.attrs.keep_dims
        return keras.layers.Lambda(lambda t: ops.mean(t, axis=axes, keepdims=keep), name=name)(x)
    if k is OpKind.RSQRT:
        return keras.layers.Lambda(lambda t: ops.rsqrt(t), name=name)(x)
    if k is OpKind.TRANSPOSE:
        perm = tuple(int(a) for a in _param(op, ins, 1).reshape(-1))
        return keras.layers.Lambda(lambda t: ops.transpose(t, perm), name=name)(x)
    if k is OpKind.HARD_SWISH:
        return keras.layers.Lambda(lambda t: t * ops.clip(t + 3.0, 0.0, 6.0) / 6.0, name=name)(x)
    if k is OpKind.BATCH_MATMUL:
        a = op.attrs
        assert isinstance(a, BatchMatMulAttrs)
        if args[0] is None or args[1] is None:
            raise _unsupported(op, "BATCH_MATMUL of two activations only")

        def matmul(pair: list[Any]) -> Any:
            lhs = ops.swapaxes(pair[0], -1, -2) if a.adj_x else pair[0]
            rhs = ops.swapaxes(pair[1], -1, -2) if a.adj_y else pair[1]
            return ops.matmul(lhs, rhs)

        return keras.layers.Lambda(matmul, name=name)([args[0], args[1]])
    if k is OpKind.CONCATENATION:
        return _concat(keras, op, ins, args, name)
    if k is OpKind.STRIDED_SLICE:
        return _strided_slice(keras, op, ins, x, name)
    raise _unsupported(op, "no float equivalent in the baseline")


def _binary(
    keras: Any, op: Op, ins: Sequence[Tensor | None], args: list[Any], fn: Callable[[Any, Any], Any], name: str
) -> Any:
    from tinytrain.train.float_baseline import _unsupported, dequantized

    if args[0] is not None and args[1] is not None:
        return keras.layers.Lambda(lambda pair: fn(pair[0], pair[1]), name=name)([args[0], args[1]])
    const_first = args[0] is None
    t = ins[0] if const_first else ins[1]
    x = args[1] if const_first else args[0]
    if t is None or t.data is None or x is None:
        raise _unsupported(op, "needs an activation operand")
    value = dequantized(t)
    layer = _constant_layer(keras)(value, fn, const_first, value.size > 1, name=name)
    return layer(x)


def _concat(keras: Any, op: Op, ins: Sequence[Tensor | None], args: list[Any], name: str) -> Any:
    from tinytrain.train.float_baseline import _unsupported, dequantized

    a = op.attrs
    assert isinstance(a, ConcatenationAttrs)
    live = [x for x in args if x is not None]
    if len(live) != 1:
        raise _unsupported(op, "CONCATENATION of constants and exactly one activation")
    pos = next(i for i, x in enumerate(args) if x is not None)
    parts = [None if x is not None else dequantized(t) for x, t in zip(args, ins, strict=True) if t is not None]
    layer = _concat_layer(keras)(parts, pos, a.axis, name=name)
    return layer(live[0])


def _strided_slice(keras: Any, op: Op, ins: Sequence[Tensor | None], x: Any, name: str) -> Any:
    import tensorflow as tf

    from tinytrain.train.float_baseline import _unsupported

    a = op.attrs
    assert isinstance(a, StridedSliceAttrs)
    if a.ellipsis_mask or a.new_axis_mask or a.offset:
        raise _unsupported(op, "ellipsis, new-axis and offset masks")
    begin, end, strides = (tuple(int(v) for v in _param(op, ins, i).reshape(-1)) for i in (1, 2, 3))
    masks = (a.begin_mask, a.end_mask, a.shrink_axis_mask)

    def cut(t: Any) -> Any:
        b, e, shrink = masks
        return tf.strided_slice(t, begin, end, strides, begin_mask=b, end_mask=e, shrink_axis_mask=shrink)

    return keras.layers.Lambda(cut, name=name)(x)


def _constant_layer(keras: Any) -> Any:
    class ConstantOperand(keras.layers.Layer):  # type: ignore[misc]
        """``fn(x, c)`` (or ``fn(c, x)``) with the constant ``c`` as a variable."""

        def __init__(
            self, value: np.ndarray, fn: Callable[[Any, Any], Any], const_first: bool, train: bool, **kw: Any
        ) -> None:
            super().__init__(**kw)
            self._fn, self._first = fn, const_first
            init = keras.initializers.Constant(value.astype(np.float32))
            self.value = self.add_weight(shape=value.shape, initializer=init, trainable=train, name="value")

        def call(self, x: Any) -> Any:
            return self._fn(self.value, x) if self._first else self._fn(x, self.value)

    return ConstantOperand


def _concat_layer(keras: Any) -> Any:
    class ConcatConstants(keras.layers.Layer):  # type: ignore[misc]
        """Concatenates trainable constant parts (broadcast over the batch) around one activation."""

        def __init__(self, parts: list[np.ndarray | None], pos: int, axis: int, **kw: Any) -> None:
            super().__init__(**kw)
            self._pos, self._axis = pos, axis
            self.parts = [
                None
                if p is None
                else self.add_weight(
                    shape=p.shape, initializer=keras.initializers.Constant(p.astype(np.float32)), name=f"part{i}"
                )
                for i, p in enumerate(parts)
            ]

        def call(self, x: Any) -> Any:
            n = keras.ops.shape(x)[0]
            pieces = [
                x if p is None else keras.ops.broadcast_to(p, (n, *tuple(p.shape[1:]))) for p in self.parts
            ]
            return keras.ops.concatenate(pieces, axis=self._axis)

    return ConcatConstants


def _param(op: Op, ins: Sequence[Tensor | None], k: int) -> np.ndarray:
    from tinytrain.train.float_baseline import _const

    return _const(op, ins, k)
