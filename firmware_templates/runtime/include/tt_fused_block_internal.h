/*
 * The fused block's split between its driver and its stage compute (internal: not part of
 * the kernel's API, see include/tt_fused_block.h for that).
 *
 *   src/tt_fused_block.c          the driver: checks, geometry, scratch, the ring schedule,
 *                                 padding, the lead window, masks, patch modes, the residual
 *                                 ADD; calls the three stages below once per row.
 *   src/tt_fused_block_stages.c   the stages, reference loops.
 *   dsp/tt_fused_block_stages_dsp.c  the stages on the DSP extension (replaces the file above
 *                                 in the dsp backend, codegen/runtime_sources.py; it includes
 *                                 the reference loops for what it does not optimize).
 *
 * Each stage writes one output row and must produce exactly the reference's bytes.
 */
#ifndef TT_FUSED_BLOCK_INTERNAL_H
#define TT_FUSED_BLOCK_INTERNAL_H

#include "tt_fused_block.h"

/* What the stages see of one run; set up by the driver after the checks passed. */
typedef struct {
    const tt_fused_block_params *p;             /* validated */
    const int32_t *lead_bias, *dw_bias, *proj_bias; /* NULL: no bias */
    int lead_mode, dw_mode, proj_mode;          /* TT_PATCH_* of each stage's weight patch */
    int direct;        /* the lead is 1x1, stride 1, unpadded: its rows are the input rows */
    int32_t n_ring;    /* ring slots: (dw_win.kh - 1) * dw_win.dh + 1 padded mid rows */
    size_t slot_bytes; /* bytes of one ring slot: padded mid width * mid_c */
} tt_fb_ctx;

/* Lead convolution output row (mid_w x mid_c) into dst. Window row ky (0 .. kh - 1) of
 * that output row starts at rows + ky * row_stride (padded input columns x in_c); a
 * direct lead passes the input row itself (row_stride 0). */
void tt_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst);

/* Depthwise output row oy (out_w x mid_c) into dst; padded mid row r is in ring slot
 * r % n_ring (ring + slot * slot_bytes). */
void tt_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst);

/* 1x1 projection of a depthwise row (out_w x mid_c) into dst (out_w x out_c). */
void tt_fb_project_row(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst);

#endif /* TT_FUSED_BLOCK_INTERNAL_H */
