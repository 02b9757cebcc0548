"""ctypes test helpers of the runtime family ``backward``: re-exports :mod:`codegen.cparams.backward`
(the params converters moved there: package code never imports ``tinytrain.testing``)."""

from codegen.cparams.backward import (
    LINEAR_KINDS as LINEAR_KINDS,
)
from codegen.cparams.backward import (
    MAX_RANK as MAX_RANK,
)
from codegen.cparams.backward import (
    TT_ERR_ARG as TT_ERR_ARG,
)
from codegen.cparams.backward import (
    TT_ERR_RANGE as TT_ERR_RANGE,
)
from codegen.cparams.backward import (
    TT_ERR_SHAPE as TT_ERR_SHAPE,
)
from codegen.cparams.backward import (
    TT_OK as TT_OK,
)
from codegen.cparams.backward import (
    CKernelError as CKernelError,
)
from codegen.cparams.backward import (
    CLinearBwd as CLinearBwd,
)
from codegen.cparams.backward import (
    CPoolBwd as CPoolBwd,
)
from codegen.cparams.backward import (
    CSoftmaxCE as CSoftmaxCE,
)
from codegen.cparams.backward import (
    TtAddBwdParams as TtAddBwdParams,
)
from codegen.cparams.backward import (
    TtAvgPoolBwdParams as TtAvgPoolBwdParams,
)
from codegen.cparams.backward import (
    TtLinearBwdParams as TtLinearBwdParams,
)
from codegen.cparams.backward import (
    TtMeanBwdParams as TtMeanBwdParams,
)
from codegen.cparams.backward import (
    TtPadBwdParams as TtPadBwdParams,
)
from codegen.cparams.backward import (
    TtSoftmaxCEParams as TtSoftmaxCEParams,
)
from codegen.cparams.backward import (
    add_bwd_struct as add_bwd_struct,
)
from codegen.cparams.backward import (
    c_add_grads as c_add_grads,
)
from codegen.cparams.backward import (
    c_add_input_grads as c_add_input_grads,
)
from codegen.cparams.backward import (
    c_apply_mask as c_apply_mask,
)
from codegen.cparams.backward import (
    c_clamp_mask as c_clamp_mask,
)
from codegen.cparams.backward import (
    c_linear_bias_grad as c_linear_bias_grad,
)
from codegen.cparams.backward import (
    c_linear_input_grad as c_linear_input_grad,
)
from codegen.cparams.backward import (
    c_linear_weight_grad as c_linear_weight_grad,
)
from codegen.cparams.backward import (
    c_normalize as c_normalize,
)
from codegen.cparams.backward import (
    c_pad_input_grad as c_pad_input_grad,
)
from codegen.cparams.backward import (
    c_pool_input_grad as c_pool_input_grad,
)
from codegen.cparams.backward import (
    c_reshape_input_grad as c_reshape_input_grad,
)
from codegen.cparams.backward import (
    c_select_input_channels as c_select_input_channels,
)
from codegen.cparams.backward import (
    c_softmax_ce_grad as c_softmax_ce_grad,
)
from codegen.cparams.backward import (
    declare as declare,
)
from codegen.cparams.backward import (
    linear_bwd_struct as linear_bwd_struct,
)
from codegen.cparams.backward import (
    linear_input_scratch_bytes as linear_input_scratch_bytes,
)
from codegen.cparams.backward import (
    linear_weight_row_len as linear_weight_row_len,
)
from codegen.cparams.backward import (
    pad_bwd_struct as pad_bwd_struct,
)
from codegen.cparams.backward import (
    pool_bwd_struct as pool_bwd_struct,
)
from codegen.cparams.backward import (
    softmax_ce_struct as softmax_ce_struct,
)
from codegen.cparams.backward import (
    struct_values as struct_values,
)
from codegen.cparams.backward import (
    trained_slice as trained_slice,
)
