"""Keras (or ``tf.function``) → full-int8 ``.tflite`` through the TFLite converter.

This is tinytrain's one path from Keras: post-training integer quantization with
``tf.lite.TFLiteConverter`` (``Optimize.DEFAULT``, a representative dataset made of
the caller's calibration samples, ``TFLITE_BUILTINS_INT8`` only), int8 or float32
input/output, of the model's inference call traced at batch 1 (see
:func:`_keras_converter` for why not ``from_keras_model``). The result is ordinary
``.tflite`` bytes that the .tflite frontend reads; ops the converter could not
quantize are reported (:func:`float_op_names`) and refused.

TensorFlow is imported lazily, inside the functions, so ``tinytrain`` imports without
it. TensorFlow's log output is silenced while converting; a failed conversion becomes a
one-line :class:`~tinytrain.errors.ModelFormatError`, bad arguments a
:class:`~tinytrain.errors.UsageError`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinytrain.errors import ModelFormatError, NotQuantizedError, TinytrainError, UsageError

CalibrationSource = np.ndarray | Iterable[Any] | str | os.PathLike[str]

_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def convert_keras(
    model_or_path: Any, calibration: CalibrationSource, *, int8_io: bool = True, allow_float_ops: bool = False
) -> bytes:
    """Converts a Keras model (object or ``.keras``/``.h5`` path) to full-int8 ``.tflite`` bytes.

    ``calibration`` holds the representative samples: an array whose axis 0 runs over
    samples (each sample shaped like the model input without its batch axis, or with a
    batch axis of 1), an iterable of such samples (for a model with several inputs, each
    sample a sequence with one array per input), or the path of a ``.npy``/``.npz`` file.
    ``int8_io=False`` keeps float32 model inputs and outputs (QUANTIZE/DEQUANTIZE at the
    boundary). The converter leaves ops it cannot quantize in float32 (wrapped in
    DEQUANTIZE/QUANTIZE); that raises :class:`NotQuantizedError` unless ``allow_float_ops``.
    """
    with _quiet():
        model = _keras_model(model_or_path)
        # Whatever batch size the model declares, it is converted for batch 1.
        shapes = [(None, *_static_shape(t.shape, f"Keras model input {i}")[1:]) for i, t in enumerate(model.inputs)]
        samples = _calibration_samples(calibration, shapes)
        converter = _keras_converter(model, shapes)
        return _run_converter(converter, samples, int8_io, allow_float_ops=allow_float_ops)


def convert_tf_function(
    fn: Callable[..., Any],
    input_shapes: Sequence[Sequence[int]],
    calibration: CalibrationSource,
    *,
    int8_io: bool = True,
    input_types: tuple[bool, bool] | None = None,
    allow_float_ops: bool = False,
) -> bytes:
    """Converts a Python function of TF ops (one float32 argument per input shape).

    Used to build single-op test models. ``input_types`` = (int8 input, int8 output)
    overrides ``int8_io`` to mix an int8 side with a float side.
    """
    with _quiet():
        import tensorflow as tf

        shapes = [tuple(int(d) for d in s) for s in input_shapes]
        samples = _calibration_samples(calibration, shapes)
        signature = [tf.TensorSpec(s, tf.float32) for s in shapes]
        function = tf.function(fn, input_signature=signature)
        try:
            concrete = function.get_concrete_function()
            converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
        except Exception as exc:
            raise ModelFormatError(f"cannot trace the function: {_first_line(exc)}") from None
        return _run_converter(converter, samples, int8_io, input_types, allow_float_ops=allow_float_ops)


def load_calibration(path: str | os.PathLike[str]) -> np.ndarray:
    """Loads calibration samples from ``.npy`` (the array) or ``.npz`` (its only array,
    or the one named ``x``, ``calibration`` or ``samples``) as float32."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"calibration file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise UsageError(f"calibration file must be .npy or .npz, not {p.name}")
    try:
        loaded = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"cannot read calibration file {p}: {_first_line(exc)}") from None
    if isinstance(loaded, np.ndarray):
        arr = loaded
    else:
        with loaded as npz:
            names = list(npz.files)
            preferred = [n for n in ("x", "calibration", "samples") if n in names]
            if len(names) == 1:
                arr = npz[names[0]]
            elif preferred:
                arr = npz[preferred[0]]
            else:
                raise UsageError(f"{p.name} holds several arrays ({', '.join(names)}); name the samples 'x'")
    if arr.dtype.kind not in "fiub" or arr.ndim < 1 or arr.shape[0] == 0:
        raise UsageError(f"{p.name}: expected a non-empty numeric array of samples, got {arr.dtype} {arr.shape}")
    return np.asarray(arr, dtype=np.float32)


def model_op_names(model: bytes) -> tuple[str, ...]:
    """Builtin op names of the main subgraph of ``.tflite`` bytes, in execution order."""
    m = _parse(model)
    names = [_opcode_name(m.OperatorCodes(i)) for i in range(m.OperatorCodesLength())]
    sg = m.Subgraphs(0)
    return tuple(names[sg.Operators(i).OpcodeIndex()] for i in range(sg.OperatorsLength()))


def float_op_names(model: bytes) -> tuple[str, ...]:
    """Ops of the main subgraph that read or write a float32 tensor, except the QUANTIZE
    ops that read a float model input and the DEQUANTIZE ops that write a float model
    output: what keeps a model from being full int8."""
    m = _parse(model)
    names = [_opcode_name(m.OperatorCodes(i)) for i in range(m.OperatorCodesLength())]
    sg = m.Subgraphs(0)
    float32 = 0
    graph_inputs = {sg.Inputs(k) for k in range(sg.InputsLength())}
    graph_outputs = {sg.Outputs(k) for k in range(sg.OutputsLength())}
    found: list[str] = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        name = names[op.OpcodeIndex()]
        ins = [op.Inputs(k) for k in range(op.InputsLength()) if op.Inputs(k) >= 0]
        outs = [op.Outputs(k) for k in range(op.OutputsLength())]
        float_ins = {t for t in ins if sg.Tensors(t).Type() == float32}
        float_outs = {t for t in outs if sg.Tensors(t).Type() == float32}
        if name == "QUANTIZE" and not float_outs and float_ins <= graph_inputs:
            continue
        if name == "DEQUANTIZE" and not float_ins and float_outs <= graph_outputs:
            continue
        if float_ins or float_outs:
            found.append(name)
    return tuple(found)


def tensorflow_version() -> str:
    """The installed TensorFlow's version, read from package metadata (no import)."""
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "none"


# ----------------------------------------------------------------------------- internals


def _parse(model: bytes) -> Any:
    from tinytrain.frontends.tflite_schema import schema

    data = bytes(model)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelFormatError("not a .tflite model: missing the 'TFL3' file identifier")
    try:
        m = schema().Model.GetRootAs(data, 0)
        if m.SubgraphsLength() < 1:
            raise ModelFormatError(".tflite model has no subgraph")
        return m
    except TinytrainError:
        raise
    except Exception as exc:
        raise ModelFormatError(f"corrupt .tflite flatbuffer ({type(exc).__name__})") from None


def _opcode_name(opcode: Any) -> str:
    from tinytrain.frontends.tflite_schema import builtin_name

    # Newer files store the code in BuiltinCode; old readers use DeprecatedBuiltinCode.
    return builtin_name(max(int(opcode.BuiltinCode()), int(opcode.DeprecatedBuiltinCode())))


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        text = line.strip()
        if text and not text.startswith(("<unknown>", "W0000", "I0000", "E0000")):
            return text[:300]
    return type(exc).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences TensorFlow while converting: its C++ logs (fd 2, some on fd 1), Python
    warnings and absl/TF Python loggers."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    with warnings.catch_warnings(), _redirect_fds():
        warnings.simplefilter("ignore")
        try:
            import absl.logging
            import tensorflow as tf
        except ImportError:
            raise UsageError("converting Keras models needs TensorFlow: pip install 'tinytrain[tf]'") from None
        absl.logging.set_verbosity(absl.logging.ERROR)
        tf.get_logger().setLevel("ERROR")
        yield


@contextlib.contextmanager
def _redirect_fds() -> Iterator[None]:
    """Sends the process's fds 1 and 2 to a scratch file (TF's C++ code writes there
    directly, bypassing ``sys.stdout``)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:
                    continue
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _keras_converter(model: Any, shapes: Sequence[tuple[int | None, ...]]) -> Any:
    """A TFLite converter for ``model``'s inference call traced with a batch of 1.

    ``TFLiteConverter.from_keras_model`` would first export the model as a SavedModel
    with the batch axis left dynamic: the int8 result is the same (same ops, same
    quantization parameters, checked on MobileNetV2 and the tiny ViT), but it takes 3-4x
    longer, and every Flatten/Reshape of a model built without a batch size then
    becomes SHAPE/STRIDED_SLICE/PACK int32 arithmetic around a dynamic RESHAPE, ops no
    microcontroller runtime wants. Tracing ``model(x, training=False)`` at batch 1
    (what ``from_keras_model`` itself falls back to) keeps every shape static.
    """
    import tensorflow as tf

    names = [_input_name(t, i) for i, t in enumerate(model.inputs)]
    signature = [tf.TensorSpec((1, *s[1:]), tf.float32, name=n) for s, n in zip(shapes, names, strict=True)]

    def inference(*xs: Any) -> Any:
        return model(xs[0] if len(xs) == 1 else list(xs), training=False)

    try:
        function = tf.function(inference, input_signature=signature, autograph=False)
        concrete = function.get_concrete_function()
        return tf.lite.TFLiteConverter.from_concrete_functions([concrete], function)
    except TinytrainError:
        raise
    except Exception as exc:  # Keras/TF raise many types while tracing
        raise ModelFormatError(f"cannot trace the Keras model: {_first_line(exc)}") from None


def _input_name(tensor: Any, index: int) -> str:
    name = str(getattr(tensor, "name", "") or "").split(":")[0]
    clean = "".join(c if c.isalnum() or c in "_-." else "_" for c in name)
    return clean if clean and clean[0].isalpha() else f"input_{index}"


def _keras_model(model_or_path: Any) -> Any:
    import keras

    if isinstance(model_or_path, keras.Model):
        model = model_or_path
    elif isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.is_file():
            raise UsageError(f"Keras model file not found: {path}")
        if path.suffix.lower() not in _KERAS_SUFFIXES:
            raise UsageError(f"Keras model must be a .keras or .h5 file, not {path.name}")
        try:
            model = keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises ValueError, OSError, KeyError, zipfile errors...
            raise ModelFormatError(f"cannot load Keras model {path.name}: {_first_line(exc)}") from None
    else:
        raise UsageError(f"expected a Keras model or a .keras/.h5 path, got {type(model_or_path).__name__}")
    if not model.inputs:
        raise UsageError("the Keras model has no defined inputs (build it, or give it an Input layer)")
    return model


def _static_shape(shape: Any, what: str) -> tuple[int | None, ...]:
    dims = tuple(None if d is None else int(d) for d in shape)
    if any(d is None for d in dims[1:]):
        raise UsageError(f"{what} has a dynamic dimension {dims}; only the batch axis may be unknown")
    return dims


def _calibration_samples(
    calibration: CalibrationSource, shapes: Sequence[tuple[int | None, ...]]
) -> list[list[np.ndarray]]:
    """Validates the calibration data against the input shapes and returns, per sample,
    one float32 array per input shaped ``(1, *sample_shape)``."""
    if isinstance(calibration, (str, os.PathLike)):
        calibration = load_calibration(calibration)
    if isinstance(calibration, np.ndarray):
        if len(shapes) != 1:
            raise UsageError(
                f"the model has {len(shapes)} inputs; give the calibration as an iterable of per-sample sequences"
            )
        if calibration.ndim == 0 or calibration.shape[0] == 0:
            raise UsageError("the calibration array holds no samples")
        raw: list[Any] = list(calibration)
    else:
        try:
            raw = list(calibration)
        except TypeError:
            raise UsageError(
                f"calibration must be an array, an iterable of samples or a file, not {type(calibration).__name__}"
            ) from None
        if not raw:
            raise UsageError("the calibration data holds no samples")
    out: list[list[np.ndarray]] = []
    for k, sample in enumerate(raw):
        parts = [sample] if len(shapes) == 1 and not isinstance(sample, (list, tuple)) else list(sample)
        if len(parts) != len(shapes):
            raise UsageError(f"calibration sample {k} has {len(parts)} arrays for {len(shapes)} model inputs")
        pairs = enumerate(zip(parts, shapes, strict=True))
        out.append([_fit_sample(np.asarray(p), shape, k, i) for i, (p, shape) in pairs])
    return out


def _fit_sample(x: np.ndarray, shape: tuple[int | None, ...], k: int, i: int) -> np.ndarray:
    want = tuple(1 if d is None else d for d in shape)
    if want and x.shape == want[1:]:
        x = x[None]
    if x.shape != want:
        raise UsageError(
            f"calibration sample {k} (input {i}) has shape {x.shape}; the model expects {want[1:]} per sample"
        )
    if x.dtype.kind not in "fiub":
        raise UsageError(f"calibration sample {k} (input {i}) is not numeric ({x.dtype})")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise UsageError(f"calibration sample {k} (input {i}) holds NaN or infinity")
    return x


def _run_converter(
    converter: Any,
    samples: list[list[np.ndarray]],
    int8_io: bool,
    input_types: tuple[bool, bool] | None = None,
    *,
    allow_float_ops: bool,
) -> bytes:
    import tensorflow as tf

    def representative_dataset() -> Iterator[list[np.ndarray]]:
        yield from samples

    int8_in, int8_out = input_types if input_types is not None else (int8_io, int8_io)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8 if int8_in else tf.float32
    converter.inference_output_type = tf.int8 if int8_out else tf.float32
    try:
        result = converter.convert()
    except Exception as exc:  # ConverterError, ValueError, RuntimeError...
        raise ModelFormatError(f"TFLite conversion to full int8 failed: {_first_line(exc)}") from None
    model = bytes(result)
    left = float_op_names(model)
    if left and not allow_float_ops:
        counts = ", ".join(f"{n} x{left.count(n)}" for n in dict.fromkeys(left))
        raise NotQuantizedError(f"the converter left float32 ops that have no int8 version: {counts}")
    return model
