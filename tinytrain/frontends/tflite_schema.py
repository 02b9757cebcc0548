"""Tables shared by the .tflite reader and writer: op codes, enums, element types.

The flatbuffer classes themselves come from the schema module that the
``tflite-micro`` package ships; nothing here parses bytes by hand.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from tinytrain.errors import UsageError
from tinytrain.ir.dtypes import DType
from tinytrain.ir.ops import Activation, OpKind, Padding


def schema() -> Any:
    """The generated flatbuffer schema module (imported lazily: it is large)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


def _builtin_codes() -> MappingProxyType[OpKind, int]:
    ops = schema().BuiltinOperator
    return MappingProxyType({kind: int(getattr(ops, kind.value)) for kind in OpKind if hasattr(ops, kind.value)})


def builtin_code(kind: OpKind) -> int:
    """The schema op code of ``kind``; tinytrain's internal ops (e.g. TOKEN_SELECT) have none."""
    code = _builtin_codes().get(kind)
    if code is None:
        raise UsageError(f"{kind.value} is an op of tinytrain's passes: it has no .tflite form")
    return code


def op_kind_of_code(code: int) -> OpKind | None:
    for kind, c in _builtin_codes().items():
        if c == code:
            return kind
    return None


def builtin_name(code: int) -> str:
    ops = schema().BuiltinOperator
    for name in dir(ops):
        if not name.startswith("_") and getattr(ops, name) == code:
            return str(name)
    return f"BUILTIN_{code}"


TENSOR_TYPES: MappingProxyType[int, DType] = MappingProxyType(
    {0: DType.FLOAT32, 2: DType.INT32, 3: DType.UINT8, 4: DType.INT64, 6: DType.BOOL, 7: DType.INT16, 9: DType.INT8}
)
TENSOR_TYPE_OF_DTYPE: MappingProxyType[DType, int] = MappingProxyType({v: k for k, v in TENSOR_TYPES.items()})
TENSOR_TYPE_NAMES: MappingProxyType[int, str] = MappingProxyType(
    {1: "FLOAT16", 5: "STRING", 8: "COMPLEX64", 10: "FLOAT64", 11: "COMPLEX128", 12: "UINT64", 13: "RESOURCE",
     14: "VARIANT", 15: "UINT32", 16: "UINT16", 17: "INT4", 18: "BFLOAT16", 19: "INT2"}
)

ACTIVATIONS: MappingProxyType[int, Activation] = MappingProxyType(
    {0: Activation.NONE, 1: Activation.RELU, 2: Activation.RELU_N1_TO_1, 3: Activation.RELU6}
)
ACTIVATION_CODES: MappingProxyType[Activation, int] = MappingProxyType({v: k for k, v in ACTIVATIONS.items()})
PADDINGS: MappingProxyType[int, Padding] = MappingProxyType({0: Padding.SAME, 1: Padding.VALID})
PADDING_CODES: MappingProxyType[Padding, int] = MappingProxyType({v: k for k, v in PADDINGS.items()})
