"""ctypes test helpers of the runtime family ``forward``: re-exports :mod:`codegen.cparams.forward`
(the params converters moved there: package code never imports ``tinytrain.testing``)."""

from codegen.cparams.forward import (
    ADD_LEFT_SHIFT as ADD_LEFT_SHIFT,
)
from codegen.cparams.forward import (
    PAD_MAX_RANK as PAD_MAX_RANK,
)
from codegen.cparams.forward import (
    CKernelParams as CKernelParams,
)
from codegen.cparams.forward import (
    FieldValue as FieldValue,
)
from codegen.cparams.forward import (
    S as S,
)
from codegen.cparams.forward import (
    TtAddParams as TtAddParams,
)
from codegen.cparams.forward import (
    TtConvParams as TtConvParams,
)
from codegen.cparams.forward import (
    TtDwParams as TtDwParams,
)
from codegen.cparams.forward import (
    TtFcParams as TtFcParams,
)
from codegen.cparams.forward import (
    TtMeanParams as TtMeanParams,
)
from codegen.cparams.forward import (
    TtPadParams as TtPadParams,
)
from codegen.cparams.forward import (
    TtPoolParams as TtPoolParams,
)
from codegen.cparams.forward import (
    TtPreprocessParams as TtPreprocessParams,
)
from codegen.cparams.forward import (
    TtReshapeParams as TtReshapeParams,
)
from codegen.cparams.forward import (
    TtResizeAxis as TtResizeAxis,
)
from codegen.cparams.forward import (
    TtWeightPatch as TtWeightPatch,
)
from codegen.cparams.forward import (
    add_c_params as add_c_params,
)
from codegen.cparams.forward import (
    conv_c_params as conv_c_params,
)
from codegen.cparams.forward import (
    declare_forward as declare_forward,
)
from codegen.cparams.forward import (
    depthwise_c_params as depthwise_c_params,
)
from codegen.cparams.forward import (
    fc_c_params as fc_c_params,
)
from codegen.cparams.forward import (
    mean_c_params as mean_c_params,
)
from codegen.cparams.forward import (
    pad_c_params as pad_c_params,
)
from codegen.cparams.forward import (
    pool_c_params as pool_c_params,
)
from codegen.cparams.forward import (
    preprocess_c_params as preprocess_c_params,
)
from codegen.cparams.forward import (
    reshape_c_params as reshape_c_params,
)
from codegen.cparams.forward import (
    run_add_c as run_add_c,
)
from codegen.cparams.forward import (
    run_conv_c as run_conv_c,
)
from codegen.cparams.forward import (
    run_depthwise_c as run_depthwise_c,
)
from codegen.cparams.forward import (
    run_fc_c as run_fc_c,
)
from codegen.cparams.forward import (
    run_mean_c as run_mean_c,
)
from codegen.cparams.forward import (
    run_pad_c as run_pad_c,
)
from codegen.cparams.forward import (
    run_pool_c as run_pool_c,
)
from codegen.cparams.forward import (
    run_preprocess_c as run_preprocess_c,
)
from codegen.cparams.forward import (
    run_reshape_c as run_reshape_c,
)
from codegen.cparams.forward import (
    weight_patch as weight_patch,
)
