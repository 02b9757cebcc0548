"""ctypes test helpers of the runtime family ``update``: re-exports :mod:`codegen.cparams.update`
(the params converters moved there: package code never imports ``tinytrain.testing``)."""

from codegen.cparams.update import (
    I32 as I32,
)
from codegen.cparams.update import (
    I64 as I64,
)
from codegen.cparams.update import (
    INT32_MAX as INT32_MAX,
)
from codegen.cparams.update import (
    INT32_MIN as INT32_MIN,
)
from codegen.cparams.update import (
    P_I8 as P_I8,
)
from codegen.cparams.update import (
    P_I32 as P_I32,
)
from codegen.cparams.update import (
    P_I64 as P_I64,
)
from codegen.cparams.update import (
    P_U16 as P_U16,
)
from codegen.cparams.update import (
    P_U32 as P_U32,
)
from codegen.cparams.update import (
    U32 as U32,
)
from codegen.cparams.update import (
    AccBuffers as AccBuffers,
)
from codegen.cparams.update import (
    AccParamsC as AccParamsC,
)
from codegen.cparams.update import (
    AccStateC as AccStateC,
)
from codegen.cparams.update import (
    CStruct as CStruct,
)
from codegen.cparams.update import (
    FbwdWeights as FbwdWeights,
)
from codegen.cparams.update import (
    FusedArrays as FusedArrays,
)
from codegen.cparams.update import (
    FusedEdParamsC as FusedEdParamsC,
)
from codegen.cparams.update import (
    GradRow as GradRow,
)
from codegen.cparams.update import (
    P as P,
)
from codegen.cparams.update import (
    ScheduleParams as ScheduleParams,
)
from codegen.cparams.update import (
    SgdStep as SgdStep,
)
from codegen.cparams.update import (
    UpdateArrays as UpdateArrays,
)
from codegen.cparams.update import (
    UpdateParamsC as UpdateParamsC,
)
from codegen.cparams.update import (
    acc_struct as acc_struct,
)
from codegen.cparams.update import (
    as_ptr as as_ptr,
)
from codegen.cparams.update import (
    declare as declare,
)
from codegen.cparams.update import (
    fbwd_weights as fbwd_weights,
)
from codegen.cparams.update import (
    fused_arrays as fused_arrays,
)
from codegen.cparams.update import (
    fused_struct as fused_struct,
)
from codegen.cparams.update import (
    mean_values as mean_values,
)
from codegen.cparams.update import (
    schedule_params as schedule_params,
)
from codegen.cparams.update import (
    sgd_step as sgd_step,
)
from codegen.cparams.update import (
    slice_rows as slice_rows,
)
from codegen.cparams.update import (
    update_arrays as update_arrays,
)
from codegen.cparams.update import (
    update_struct as update_struct,
)
