/*
 * The dsp backend's replaced kernels under other names (tt_dsp_*), so that the test
 * firmware tt_dsp_bench.c links them next to the reference kernels of the same API.
 * Each dsp source is its own translation unit here (tt_dsp_renamed_fb.c holds the other).
 */
#define tt_fc_s8 tt_dsp_fc_s8
#include "../tt_fc_dsp.c"
