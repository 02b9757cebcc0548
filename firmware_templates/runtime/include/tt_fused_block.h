/*
 * tinytrain runtime: row-streamed fused inverted-residual block (int8).
 *
 * Twin of tinytrain/sim/kernels/fused_block.py: run_fused_block (one sample, N = 1).
 * The chain  [PAD] -> [CONV_2D "lead"] -> [PAD] -> DEPTHWISE_CONV_2D -> CONV_2D 1x1
 * "projection" -> [ADD(block input, projection)]  is computed one output row at a time;
 * the lead output (e.g. the expansion) and the depthwise output never exist as tensors:
 *
 *   - a ring of R = (dw.kh - 1) * dw.dh + 1 padded depthwise-input rows; padded row r
 *     lives in slot r % R. For output row oy the rows oy*sh .. oy*sh + R - 1 not produced
 *     yet are produced in increasing order: a padding row from its pad bytes, a source
 *     row by the lead convolution (one row of its output) or, without a lead, copied
 *     from the block input;
 *   - the depthwise window over the ring gives one depthwise row (out_w x mid_c);
 *   - its 1x1 projection goes to the output row, or with a residual ADD to a projection
 *     row that the ADD combines with the block-input row oy.
 *
 * Arithmetic of every stage is TFLite Micro's int8 reference arithmetic: int32
 * accumulation of w * (x - input_zp), + bias (int32, wrapping like the numpy twin),
 * tt_mbqm per output channel, + output_zp, clamp to [act_min, act_max]; the ADD is
 * TFLite Micro's int8 ADD (left shift 20, per-input and output multipliers).
 *
 * Scratch (bytes, int8, no alignment needed; the numpy twin's Scratch, in this order):
 *   lead_window = lead.kh * Wp_lead * in_c   if the lead conv has a window, a stride or
 *                                            padding (0 for a 1x1 stride-1 unpadded lead
 *                                            conv, which reads the input rows in place,
 *                                            and without a lead conv)
 *   ring        = R * Wp_dw * mid_c
 *   dw_row      = out_w * mid_c
 *   proj_row    = out_w * out_c              with a residual ADD, else 0
 * where Wp_* is the width of the padded map (source width + every level's left + right).
 * tt_fused_block_scratch_bytes() returns the total (Python: FusedBlockParams.scratch_bytes).
 *
 * Weight patches: a stage whose weights train a channel subset (tt_weight_patch, the arena
 * slice w_train) computes with w_flash[..., ch[j]] replaced by w_train[..., j]: patched
 * channels are read directly when ch = 0..n-1 (lead, projection) or per channel
 * (depthwise); otherwise the flash dot product gets the correction
 * sum_j (x[ch[j]] - zp) * (w_train[j] - w_flash[ch[j]]) (modulo 2^32, which is exact within
 * the bound below since the current weights are int8 too).
 *
 * Accumulator bound: every product |w * (x - zp)| <= 128 * 255, so an int32 accumulator
 * cannot overflow for up to 65793 taps per output value (lead kh*kw*in_c, depthwise
 * kh*kw, projection mid_c); parameters beyond that are refused (TT_ERR_ARG). The bias is
 * added with int32 wrap-around (tt_wrap_add32), as the numpy twin reproduces.
 */
#ifndef TT_FUSED_BLOCK_H
#define TT_FUSED_BLOCK_H

#include "tt_common.h"
#include "tt_conv.h" /* tt_weight_patch */

#define TT_FB_MAX_PAD_LEVELS 2
#define TT_FB_MAX_TAPS 65793

/* Window geometry of a convolution: kernel size, stride, dilation. */
typedef struct {
    int32_t kh, kw, sh, sw, dh, dw;
} tt_fb_window;

/* One padding level: rows/columns added on each side and their fill byte (int8 range). */
typedef struct {
    int32_t top, bottom, left, right, value;
} tt_fb_pad_level;

/* The padding of a window op's source, innermost level first: an explicit PAD op (fill =
 * its pad value), then the op's own SAME padding (fill = its input zero point). A padded
 * pixel belongs to the outermost level whose border contains it. */
typedef struct {
    int32_t n_levels; /* 0 .. TT_FB_MAX_PAD_LEVELS */
    tt_fb_pad_level level[TT_FB_MAX_PAD_LEVELS];
} tt_fb_padding;

/* One convolution stage (lead, depthwise or projection): weights and requantization. */
typedef struct {
    const int8_t *weights;     /* lead [mid_c][kh][kw][in_c] (OHWI), depthwise [kh][kw][mid_c],
                                  projection [out_c][mid_c] */
    const int32_t *multiplier; /* per output channel, >= 0 */
    const int32_t *shift;      /* per output channel, -31 .. 30 (> 0: left shift) */
    int32_t input_zp;          /* -128 .. 127 (TFLite's input_offset = -input_zp) */
    int32_t output_zp;         /* -128 .. 127 */
    int32_t act_min, act_max;  /* fused activation clamp, within int8 */
    int32_t mask_lo, mask_hi;  /* clamp mask bit = (mask_lo < y < mask_hi) */
    const tt_weight_patch *patch; /* NULL, or the trained channel subset of this stage's weights
                                     (tt_conv.h layouts: lead [mid_c][kh][kw][n] with ch < in_c,
                                     depthwise [kh][kw][n] with ch < mid_c, projection [out_c][n]
                                     with ch < mid_c); the stage computes with the current weights */
} tt_fb_stage;

/* The residual ADD (TFLite Micro int8 ADD), its two inputs named by role. */
typedef struct {
    int32_t x_zp, x_multiplier, x_shift; /* the block input */
    int32_t p_zp, p_multiplier, p_shift; /* the projection output */
    int32_t left_shift;                  /* 0 .. 22 (TFLite: 20) */
    int32_t out_multiplier, out_shift, out_zp;
    int32_t act_min, act_max;
} tt_fb_add;

typedef struct {
    int32_t in_h, in_w, in_c;    /* block input */
    int32_t mid_h, mid_w, mid_c; /* depthwise input: lead output, or the block input */
    int32_t out_h, out_w, out_c; /* block output; the depthwise output is out_h x out_w x mid_c */
    int32_t has_lead;            /* 0/1 */
    tt_fb_window lead_win;
    tt_fb_padding lead_pad;
    tt_fb_stage lead;
    tt_fb_window dw_win;
    tt_fb_padding dw_pad;
    tt_fb_stage dw;
    tt_fb_stage proj;
    int32_t has_add; /* 0/1: out = ADD(block input, projection) */
    tt_fb_add add;
} tt_fused_block_params;

/* Writes block-input row `row` (0 .. in_h - 1: in_w * in_c int8) into dst, e.g. from a
 * preprocessing step that builds the model input from a native sample on the fly. */
typedef void (*tt_fb_row_source)(void *ctx, int32_t row, int8_t *dst);

/* Exact scratch size in bytes (see above); 0 when the params are invalid. */
size_t tt_fused_block_scratch_bytes(const tt_fused_block_params *p);

/*
 * Runs the block on one sample.
 *   input   in_h x in_w x in_c; output out_h x out_w x out_c. output may be input itself
 *           when the numpy twin says so (FusedBlockParams.inplace_ok); other overlaps are
 *           not allowed.
 *   *_bias  int32 per output channel of each stage, or NULL for a conv without bias.
 *   *_mask  NULL, or a packed clamp mask (8 per byte, little bit order, row-major) of the
 *           stage's output: lead mid_h x mid_w x mid_c, depthwise out_h x out_w x mid_c,
 *           projection out_h x out_w x out_c; ceil(n / 8) bytes each. The kernel zeroes it,
 *           then sets the bits of every row it computes (all rows, except lead-output rows
 *           no depthwise window reads, which stay 0). lead_mask needs a lead conv.
 *   scratch tt_fused_block_scratch_bytes(p) bytes.
 * Returns TT_ERR_ARG / TT_ERR_SHAPE for invalid params or pointers (nothing written).
 */
tt_status tt_fused_block_s8(const tt_fused_block_params *p, const int8_t *input, const int32_t *lead_bias,
                            const int32_t *dw_bias, const int32_t *proj_bias, int8_t *output, uint8_t *lead_mask,
                            uint8_t *dw_mask, uint8_t *proj_mask, void *scratch);

/*
 * The same, reading the block input row by row from `source` (called with rows in the
 * order the kernel needs them, possibly several times per row) instead of a materialized
 * input: the input image never exists. Needs a lead conv with a window (the rows go into
 * the lead window of the scratch) or no lead conv (they go into the ring), and no
 * residual ADD; otherwise TT_ERR_ARG.
 */
tt_status tt_fused_block_stream_s8(const tt_fused_block_params *p, tt_fb_row_source source, void *source_ctx,
                                   const int32_t *lead_bias, const int32_t *dw_bias, const int32_t *proj_bias,
                                   int8_t *output, uint8_t *lead_mask, uint8_t *dw_mask, uint8_t *proj_mask,
                                   void *scratch);

#endif /* TT_FUSED_BLOCK_H */
