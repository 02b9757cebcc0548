/*
 * The fused block's stages (lead convolution, depthwise, projection), reference loops:
 * see include/tt_fused_block_internal.h (the driver is src/tt_fused_block.c).
 * C twin of the stage convolutions of tinytrain/sim/kernels/fused_block.py: run_fused_block.
 *
 * The loops are the static *_generic functions. The dsp backend replaces this file with
 * dsp/tt_fused_block_stages_dsp.c, which #includes it with TT_FB_GENERIC_STAGES_ONLY
 * defined (no tt_fb_* entry points then) and falls back to these loops for what it does
 * not optimize (weight patches, column-dilated leads, leftover channels).
 */
#include "tt_fused_block_internal.h"

#include "tt_fixedpoint.h"

/* clamp(MBQM(acc + bias, q, shift) + zp): the requantization of TFLite Micro's int8 conv. */
static inline int8_t requantize(int32_t acc, int32_t bias, int32_t q, int32_t shift, int32_t zp, int32_t lo,
                                int32_t hi) {
    int64_t v = (int64_t)tt_mbqm(tt_wrap_add32(acc, bias), q, (int)shift) + zp;
    return (int8_t)tt_clamp64(v, lo, hi);
}

/* The patch of a stage in the mode the checks found (n = 0 and NULL arrays: none). */
typedef struct {
    int32_t n;
    const uint16_t *ch;
    const int8_t *wt;
} fb_patch;

static fb_patch stage_patch(const tt_fb_stage *st, int mode) {
    fb_patch r = {0, NULL, NULL};
    if (mode != TT_PATCH_NONE) {
        r.n = st->patch->n;
        r.ch = st->patch->ch;
        r.wt = st->patch->w_train;
    }
    return r;
}

/* tt_fb_lead_row, any lead window and patch mode. */
static void lead_row_generic(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->lead_win;
    const tt_fb_stage *st = &p->lead;
    const int32_t cin = p->in_c;
    const int32_t zp = st->input_zp;
    const int32_t taps_row = g->kw * cin; /* weights per (output channel, ky) */
    const fb_patch pt = stage_patch(st, c->lead_mode);
    const size_t taps = (size_t)g->kh * (size_t)g->kw;
    for (int32_t ox = 0; ox < p->mid_w; ++ox) {
        const size_t px0 = (size_t)ox * (size_t)g->sw * (size_t)cin;
        for (int32_t co = 0; co < p->mid_c; ++co) {
            const int8_t *w = st->weights + (size_t)co * (size_t)g->kh * (size_t)taps_row;
            const int8_t *wt = pt.n != 0 ? pt.wt + (size_t)co * taps * (size_t)pt.n : NULL;
            uint32_t acc = 0;
            for (int32_t ky = 0; ky < g->kh; ++ky) {
                const int8_t *row = rows + (size_t)ky * row_stride + px0;
                for (int32_t kx = 0; kx < g->kw; ++kx) {
                    const int8_t *px = row + (size_t)kx * (size_t)g->dw * (size_t)cin;
                    acc += tt_dot_patched_s8(px, -zp, w, cin, c->lead_mode, wt, pt.ch, pt.n);
                    w += cin;
                    if (wt != NULL) {
                        wt += pt.n;
                    }
                }
            }
            int32_t bias = c->lead_bias != NULL ? c->lead_bias[co] : 0;
            dst[(size_t)ox * (size_t)p->mid_c + (size_t)co] = requantize(
                tt_wrap32((int64_t)acc), bias, st->multiplier[co], st->shift[co], st->output_zp, st->act_min,
                st->act_max);
        }
    }
}

/* tt_fb_depthwise_row for channels ch_from .. mid_c - 1 only (the others of dst are left
 * alone), any window and patch mode. */
static void depthwise_row_generic(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int32_t ch_from,
                                  int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_window *g = &p->dw_win;
    const tt_fb_stage *st = &p->dw;
    const int32_t nc = p->mid_c;
    const int32_t n_ring = c->n_ring;
    const int32_t base = (oy * g->sh) % n_ring;
    const int32_t zp = st->input_zp;
    const fb_patch pt = stage_patch(st, c->dw_mode);
    int32_t j0 = 0; /* the first patched channel >= ch_from */
    while (j0 < pt.n && (int32_t)pt.ch[j0] < ch_from) {
        ++j0;
    }
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const size_t px0 = (size_t)ox * (size_t)g->sw * (size_t)nc;
        int32_t j = j0; /* patch cursor: pt.ch[j] is the next patched channel */
        for (int32_t ch = ch_from; ch < nc; ++ch) {
            int32_t acc = 0;
            const int8_t *w = st->weights + ch;
            size_t ws = (size_t)nc; /* weight stride between taps */
            if (j < pt.n && (int32_t)pt.ch[j] == ch) {
                w = pt.wt + j;
                ws = (size_t)pt.n;
                ++j;
            }
            for (int32_t ky = 0; ky < g->kh; ++ky) {
                int32_t slot = base + ky * g->dh;
                if (slot >= n_ring) {
                    slot -= n_ring;
                }
                const int8_t *px = ring + (size_t)slot * c->slot_bytes + px0 + (size_t)ch;
                for (int32_t kx = 0; kx < g->kw; ++kx) {
                    acc += (int32_t)*w * ((int32_t)*px - zp);
                    w += ws;
                    px += (size_t)g->dw * (size_t)nc;
                }
            }
            int32_t bias = c->dw_bias != NULL ? c->dw_bias[ch] : 0;
            dst[(size_t)ox * (size_t)nc + (size_t)ch] =
                requantize(acc, bias, st->multiplier[ch], st->shift[ch], st->output_zp, st->act_min, st->act_max);
        }
    }
}

/* tt_fb_project_row, any patch mode. */
static void project_row_generic(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst) {
    const tt_fused_block_params *p = c->p;
    const tt_fb_stage *st = &p->proj;
    const int32_t cin = p->mid_c;
    const int32_t zp = st->input_zp;
    const fb_patch pt = stage_patch(st, c->proj_mode);
    for (int32_t ox = 0; ox < p->out_w; ++ox) {
        const int8_t *in = dw_row + (size_t)ox * (size_t)cin;
        for (int32_t co = 0; co < p->out_c; ++co) {
            const int8_t *w = st->weights + (size_t)co * (size_t)cin;
            int32_t acc;
            if (c->proj_mode == TT_PATCH_NONE) {
                acc = 0;
                for (int32_t ci = 0; ci < cin; ++ci) {
                    acc += (int32_t)w[ci] * ((int32_t)in[ci] - zp);
                }
            } else {
                const int8_t *wt = pt.wt + (size_t)co * (size_t)pt.n;
                acc = tt_wrap32((int64_t)tt_dot_patched_s8(in, -zp, w, cin, c->proj_mode, wt, pt.ch, pt.n));
            }
            int32_t bias = c->proj_bias != NULL ? c->proj_bias[co] : 0;
            dst[(size_t)ox * (size_t)p->out_c + (size_t)co] =
                requantize(acc, bias, st->multiplier[co], st->shift[co], st->output_zp, st->act_min, st->act_max);
        }
    }
}

#ifndef TT_FB_GENERIC_STAGES_ONLY

void tt_fb_lead_row(const tt_fb_ctx *c, const int8_t *rows, size_t row_stride, int8_t *dst) {
    lead_row_generic(c, rows, row_stride, dst);
}

void tt_fb_depthwise_row(const tt_fb_ctx *c, const int8_t *ring, int32_t oy, int8_t *dst) {
    depthwise_row_generic(c, ring, oy, 0, dst);
}

void tt_fb_project_row(const tt_fb_ctx *c, const int8_t *dw_row, int8_t *dst) {
    project_row_generic(c, dw_row, dst);
}

#endif /* TT_FB_GENERIC_STAGES_ONLY */
