"""ctypes test helpers of the runtime family ``fused_block``: re-exports :mod:`codegen.cparams.fused_block`
(the params converters moved there: package code never imports ``tinytrain.testing``)."""

from codegen.cparams.fused_block import (
    ADD_LEFT_SHIFT as ADD_LEFT_SHIFT,
)
from codegen.cparams.fused_block import (
    MAX_PAD_LEVELS as MAX_PAD_LEVELS,
)
from codegen.cparams.fused_block import (
    ROLES as ROLES,
)
from codegen.cparams.fused_block import (
    ROW_SOURCE as ROW_SOURCE,
)
from codegen.cparams.fused_block import (
    Add as Add,
)
from codegen.cparams.fused_block import (
    CAdd as CAdd,
)
from codegen.cparams.fused_block import (
    CFusedBlockParams as CFusedBlockParams,
)
from codegen.cparams.fused_block import (
    CPadding as CPadding,
)
from codegen.cparams.fused_block import (
    CPadLevel as CPadLevel,
)
from codegen.cparams.fused_block import (
    CParams as CParams,
)
from codegen.cparams.fused_block import (
    CResult as CResult,
)
from codegen.cparams.fused_block import (
    CStage as CStage,
)
from codegen.cparams.fused_block import (
    CWindow as CWindow,
)
from codegen.cparams.fused_block import (
    FusedBlockC as FusedBlockC,
)
from codegen.cparams.fused_block import (
    Stage as Stage,
)
from codegen.cparams.fused_block import (
    Window as Window,
)
from codegen.cparams.fused_block import (
    c_scratch_bytes as c_scratch_bytes,
)
from codegen.cparams.fused_block import (
    declare as declare,
)
from codegen.cparams.fused_block import (
    fused_block_c as fused_block_c,
)
from codegen.cparams.fused_block import (
    row_source as row_source,
)
from codegen.cparams.fused_block import (
    run_c_fused_block as run_c_fused_block,
)
