/* See tt_dsp_renamed.c: the dsp fused block under the names tt_dsp_fused_block_*. */
#define tt_fused_block_s8 tt_dsp_fused_block_s8
#define tt_fused_block_stream_s8 tt_dsp_fused_block_stream_s8
#define tt_fused_block_scratch_bytes tt_dsp_fused_block_scratch_bytes
#include "../tt_fused_block_dsp.c"
