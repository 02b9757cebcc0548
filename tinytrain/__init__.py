"""tinytrain: on-device training for microcontrollers.

int8 model frontends (.tflite, Keras, MCUNet checkpoints), an IR, and a numpy
simulator bit-exact with TensorFlow Lite Micro's reference kernels.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``tinytrain.search(...)``: the scheme search (docs/search.md), imported on first use;
    the ``tinytrain.search`` package is callable (it calls ``tinytrain.search.search``)."""
    if name == "search":
        import importlib

        return importlib.import_module("tinytrain.search")
    raise AttributeError(f"module 'tinytrain' has no attribute {name!r}")
