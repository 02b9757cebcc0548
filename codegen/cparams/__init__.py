"""numpy kernel params → C params structs (ctypes mirrors of the runtime's headers).

One module per runtime family: :mod:`.forward` (``tt_conv.h``, ``tt_fc.h``, ...),
:mod:`.fused_block`, :mod:`.backward` (``tt_grad.h``, ``tt_linear_bwd.h``, ...) and
:mod:`.update` (``tt_update.h``, ``tt_prng.h``, ``tt_fused_bwd.h``, ...). The code generator
renders these structs as ``static const`` initialisers; ``tinytrain.testing.c_*`` re-export
them for the ctypes tests.
"""
