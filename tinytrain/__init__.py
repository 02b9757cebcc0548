"""tinytrain: on-device training for microcontrollers.

int8 model frontends (.tflite, Keras, MCUNet checkpoints), an IR, and a numpy
simulator bit-exact with TensorFlow Lite Micro's reference kernels.
"""

__version__ = "0.1.0"
