/* See tt_dsp_renamed.c: the dsp fused block (the shared driver + the dsp stages) under the
 * names tt_dsp_fused_block_* (its stage entry points: tt_dsp_fb_*), next to the reference
 * driver + stages. */
#define tt_fused_block_s8 tt_dsp_fused_block_s8
#define tt_fused_block_stream_s8 tt_dsp_fused_block_stream_s8
#define tt_fused_block_scratch_bytes tt_dsp_fused_block_scratch_bytes
#define tt_fb_lead_row tt_dsp_fb_lead_row
#define tt_fb_depthwise_row tt_dsp_fb_depthwise_row
#define tt_fb_project_row tt_dsp_fb_project_row
#include "../../src/tt_fused_block.c"
#include "../tt_fused_block_stages_dsp.c"
