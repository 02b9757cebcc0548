/*
 * Row-streamed fused inverted-residual block (int8): see include/tt_fused_block.h.
 * C twin of tinytrain/sim/kernels/fused_block.py: run_fused_block (padded-row geometry:
 * tinytrain/sim/kernels/fused_rows.py: PaddedRows / padded_rows).
 * This file is the driver (checks, geometry, scratch, ring schedule, padding, lead
 * window, masks, residual ADD); the stage convolutions are in src/tt_fused_block_stages.c
 * (or its dsp replacement), see include/tt_fused_block_internal.h.
 */
#include "tt_fused_block_internal.h"

#include <string.h>

#include "tt_dsp.h"
#include "tt_fixedpoint.h"

#define TT_FB_MAX_DIM 32767

/* ------------------------------------------------------------------ padded maps */

/* Columns a padding adds before the source (the first source column). */
static int32_t pad_before_w(const tt_fb_padding *pd) {
    int32_t s = 0;
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        s += pd->level[k].left;
    }
    return s;
}

static int32_t padded_h(const tt_fb_padding *pd, int32_t src_h) {
    int32_t s = src_h;
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        s += pd->level[k].top + pd->level[k].bottom;
    }
    return s;
}

static int32_t padded_w(const tt_fb_padding *pd, int32_t src_w) {
    int32_t s = src_w;
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        s += pd->level[k].left + pd->level[k].right;
    }
    return s;
}

/* The source row shown by padded row r, or -1 - k for a padding row of level k (the
 * outermost level whose top/bottom border holds the row). 0 <= r < padded_h. */
static int32_t padded_source(const tt_fb_padding *pd, int32_t src_h, int32_t r) {
    int32_t inner[TT_FB_MAX_PAD_LEVELS];
    int32_t h = src_h;
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        inner[k] = h;
        h += pd->level[k].top + pd->level[k].bottom;
    }
    for (int32_t k = pd->n_levels - 1; k >= 0; --k) {
        const tt_fb_pad_level *lv = &pd->level[k];
        if (r < lv->top || r >= lv->top + inner[k]) {
            return -1 - k;
        }
        r -= lv->top;
    }
    return r;
}

/* Fill byte of padded column col in a row that is padding at level `row_level`
 * (row_level < 0: a source row, col outside the source columns). Levels outside the
 * row's own level win on their border columns; inside them the row holds its level's
 * value. */
static int8_t pad_byte(const tt_fb_padding *pd, int32_t src_w, int32_t col, int32_t row_level) {
    int32_t inner[TT_FB_MAX_PAD_LEVELS];
    int32_t w = src_w;
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        inner[k] = w;
        w += pd->level[k].left + pd->level[k].right;
    }
    for (int32_t k = pd->n_levels - 1; k > row_level; --k) {
        const tt_fb_pad_level *lv = &pd->level[k];
        if (col < lv->left || col >= lv->left + inner[k]) {
            return (int8_t)lv->value;
        }
        col -= lv->left;
    }
    /* row_level >= 0 here (a source column of a source row is never asked for) */
    return (int8_t)pd->level[row_level >= 0 ? row_level : 0].value;
}

/* Writes the padding bytes of padded row dst (padded_w x c): every column of a padding
 * row of level row_level >= 0, or the non-source columns of a source row (row_level < 0). */
static void fill_padding(const tt_fb_padding *pd, int32_t src_w, int32_t c, int32_t row_level, int8_t *dst) {
    const int32_t pw = padded_w(pd, src_w);
    const int32_t col0 = pad_before_w(pd);
    /* a source row keeps columns col0 .. col0 + src_w - 1 for the source bytes */
    const int32_t skip_from = row_level < 0 ? col0 : pw;
    const int32_t skip_to = row_level < 0 ? col0 + src_w : pw;
    for (int32_t col = 0; col < pw; ++col) {
        if (col >= skip_from && col < skip_to) {
            continue;
        }
        memset(dst + (size_t)col * (size_t)c, pad_byte(pd, src_w, col, row_level), (size_t)c);
    }
}

/* ------------------------------------------------------------------ arithmetic */

/* Sets bit (bit0 + i) of mask for every value v[i] strictly inside (lo, hi). */
static void emit_mask(uint8_t *mask, size_t bit0, const int8_t *v, int32_t n, int32_t lo, int32_t hi) {
    if (mask == NULL) {
        return;
    }
    for (int32_t i = 0; i < n; ++i) {
        if (v[i] > lo && v[i] < hi) {
            size_t b = bit0 + (size_t)i;
            mask[b >> 3] = (uint8_t)(mask[b >> 3] | (1u << (b & 7u)));
        }
    }
}

/* ------------------------------------------------------------------ validation */

static int in_range(int32_t v, int32_t lo, int32_t hi) { return v >= lo && v <= hi; }

static int valid_window(const tt_fb_window *w) {
    return in_range(w->kh, 1, TT_FB_MAX_DIM) && in_range(w->kw, 1, TT_FB_MAX_DIM) && in_range(w->sh, 1, TT_FB_MAX_DIM) &&
           in_range(w->sw, 1, TT_FB_MAX_DIM) && in_range(w->dh, 1, TT_FB_MAX_DIM) && in_range(w->dw, 1, TT_FB_MAX_DIM);
}

static int valid_padding(const tt_fb_padding *pd) {
    if (!in_range(pd->n_levels, 0, TT_FB_MAX_PAD_LEVELS)) {
        return 0;
    }
    for (int32_t k = 0; k < pd->n_levels; ++k) {
        const tt_fb_pad_level *lv = &pd->level[k];
        if (!in_range(lv->top, 0, TT_FB_MAX_DIM) || !in_range(lv->bottom, 0, TT_FB_MAX_DIM) ||
            !in_range(lv->left, 0, TT_FB_MAX_DIM) || !in_range(lv->right, 0, TT_FB_MAX_DIM) ||
            !in_range(lv->value, TT_INT8_MIN, TT_INT8_MAX)) {
            return 0;
        }
    }
    return 1;
}

static int valid_stage(const tt_fb_stage *s, int32_t channels) {
    if (s->weights == NULL || s->multiplier == NULL || s->shift == NULL ||
        !in_range(s->input_zp, TT_INT8_MIN, TT_INT8_MAX) || !in_range(s->output_zp, TT_INT8_MIN, TT_INT8_MAX) ||
        !in_range(s->act_min, TT_INT8_MIN, TT_INT8_MAX) || !in_range(s->act_max, s->act_min, TT_INT8_MAX)) {
        return 0;
    }
    for (int32_t c = 0; c < channels; ++c) {
        if (s->multiplier[c] < 0 || !in_range(s->shift[c], -31, 31)) {
            return 0;
        }
    }
    return 1;
}

static int valid_add(const tt_fb_add *a) {
    return in_range(a->x_zp, TT_INT8_MIN, TT_INT8_MAX) && in_range(a->p_zp, TT_INT8_MIN, TT_INT8_MAX) &&
           in_range(a->out_zp, TT_INT8_MIN, TT_INT8_MAX) && a->x_multiplier >= 0 && a->p_multiplier >= 0 &&
           a->out_multiplier >= 0 && in_range(a->x_shift, -31, 31) && in_range(a->p_shift, -31, 31) &&
           in_range(a->out_shift, -31, 31) && in_range(a->left_shift, 0, 22) &&
           in_range(a->act_min, TT_INT8_MIN, TT_INT8_MAX) && in_range(a->act_max, a->act_min, TT_INT8_MAX);
}

/* The window of w over a padded map of size (ph, pw) yields out_h x out_w positions
 * without reading outside it. */
static int window_fits(const tt_fb_window *w, int32_t ph, int32_t pw, int32_t out_h, int32_t out_w) {
    int64_t need_h = (int64_t)(out_h - 1) * w->sh + (int64_t)(w->kh - 1) * w->dh + 1;
    int64_t need_w = (int64_t)(out_w - 1) * w->sw + (int64_t)(w->kw - 1) * w->dw + 1;
    return need_h <= ph && need_w <= pw;
}

static int small_map(int32_t h, int32_t w, int32_t c) {
    return in_range(h, 1, TT_FB_MAX_DIM) && in_range(w, 1, TT_FB_MAX_DIM) && in_range(c, 1, TT_FB_MAX_DIM) &&
           (int64_t)h * w * c <= TT_INT32_MAX;
}

static int lead_is_direct(const tt_fused_block_params *p) {
    const tt_fb_window *g = &p->lead_win;
    return g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && padded_h(&p->lead_pad, p->in_h) == p->in_h &&
           padded_w(&p->lead_pad, p->in_w) == p->in_w;
}

static tt_status check_params(const tt_fused_block_params *p) {
    if (p == NULL) {
        return TT_ERR_ARG;
    }
    if (!small_map(p->in_h, p->in_w, p->in_c) || !small_map(p->mid_h, p->mid_w, p->mid_c) ||
        !small_map(p->out_h, p->out_w, p->out_c) || !in_range(p->has_lead, 0, 1) || !in_range(p->has_add, 0, 1)) {
        return TT_ERR_SHAPE;
    }
    if (!valid_window(&p->dw_win) || !valid_padding(&p->dw_pad)) {
        return TT_ERR_ARG;
    }
    if (!small_map(padded_h(&p->dw_pad, p->mid_h), padded_w(&p->dw_pad, p->mid_w), p->mid_c) ||
        !window_fits(&p->dw_win, padded_h(&p->dw_pad, p->mid_h), padded_w(&p->dw_pad, p->mid_w), p->out_h,
                     p->out_w)) {
        return TT_ERR_SHAPE;
    }
    if ((int64_t)p->dw_win.kh * p->dw_win.kw > TT_FB_MAX_TAPS || p->mid_c > TT_FB_MAX_TAPS) {
        return TT_ERR_ARG;
    }
    if (p->has_lead) {
        if (!valid_window(&p->lead_win) || !valid_padding(&p->lead_pad)) {
            return TT_ERR_ARG;
        }
        int32_t ph = padded_h(&p->lead_pad, p->in_h);
        int32_t pw = padded_w(&p->lead_pad, p->in_w);
        if (!small_map(ph, pw, p->in_c) || !window_fits(&p->lead_win, ph, pw, p->mid_h, p->mid_w)) {
            return TT_ERR_SHAPE;
        }
        if ((int64_t)p->lead_win.kh * p->lead_win.kw * p->in_c > TT_FB_MAX_TAPS ||
            (int64_t)p->lead_win.kh * pw * p->in_c > TT_INT32_MAX) {
            return TT_ERR_ARG;
        }
        if (!valid_stage(&p->lead, p->mid_c)) {
            return TT_ERR_ARG;
        }
    } else if (p->mid_h != p->in_h || p->mid_w != p->in_w || p->mid_c != p->in_c) {
        return TT_ERR_SHAPE;
    }
    if (!valid_stage(&p->dw, p->mid_c) || !valid_stage(&p->proj, p->out_c)) {
        return TT_ERR_ARG;
    }
    int mode;
    if ((p->has_lead && tt_patch_check(p->lead.patch, p->in_c, &mode) != TT_OK) ||
        (!p->has_lead && p->lead.patch != NULL && p->lead.patch->n != 0) ||
        tt_patch_check(p->dw.patch, p->mid_c, &mode) != TT_OK ||
        tt_patch_check(p->proj.patch, p->mid_c, &mode) != TT_OK) {
        return TT_ERR_ARG;
    }
    if (p->has_add) {
        if (p->out_h != p->in_h || p->out_w != p->in_w || p->out_c != p->in_c) {
            return TT_ERR_SHAPE;
        }
        if (!valid_add(&p->add)) {
            return TT_ERR_ARG;
        }
    }
    return TT_OK;
}

/* ------------------------------------------------------------------ scratch */

typedef struct {
    size_t lead_window, ring, dw_row, proj_row;
} fb_scratch;

static int32_t ring_rows(const tt_fb_window *g) { return (g->kh - 1) * g->dh + 1; }

static fb_scratch scratch_parts(const tt_fused_block_params *p) {
    fb_scratch s;
    s.lead_window = 0;
    if (p->has_lead && !lead_is_direct(p)) {
        s.lead_window = (size_t)p->lead_win.kh * (size_t)padded_w(&p->lead_pad, p->in_w) * (size_t)p->in_c;
    }
    s.ring = (size_t)ring_rows(&p->dw_win) * (size_t)padded_w(&p->dw_pad, p->mid_w) * (size_t)p->mid_c;
    s.dw_row = (size_t)p->out_w * (size_t)p->mid_c;
    s.proj_row = p->has_add ? (size_t)p->out_w * (size_t)p->out_c : 0u;
    return s;
}

size_t tt_fused_block_scratch_bytes(const tt_fused_block_params *p) {
    if (check_params(p) != TT_OK) {
        return 0;
    }
    fb_scratch s = scratch_parts(p);
    return s.lead_window + s.ring + s.dw_row + s.proj_row;
}

/* ------------------------------------------------------------------ rows */

typedef struct {
    tt_fb_ctx c;         /* what the stages see */
    const int8_t *input; /* NULL in stream mode */
    tt_fb_row_source source;
    void *source_ctx;
    int8_t *window; /* lead window (NULL for a direct lead) */
    int32_t win_j;  /* the lead output row whose input rows the window holds, -1: none yet */
} fb_run;

/* The input rows of lead output row j: row ky of its window starts at the returned
 * pointer + ky * *row_stride (a direct lead: the input row itself; otherwise the lead
 * window, filled here with the padded input rows). When the window holds row j - 1's rows
 * (undilated, stride sh < kh), its last kh - sh rows are row j's first ones: moved up, and
 * only the sh new rows are produced (a streamed stem preprocesses each input row about once). */
static const int8_t *lead_rows(fb_run *run, int32_t j, size_t *row_stride) {
    const tt_fused_block_params *p = run->c.p;
    const tt_fb_window *g = &p->lead_win;
    const int32_t cin = p->in_c;
    if (run->c.direct) {
        *row_stride = 0;
        return run->input + (size_t)j * (size_t)p->in_w * (size_t)cin;
    }
    const int32_t pw = padded_w(&p->lead_pad, p->in_w);
    const int32_t col0 = pad_before_w(&p->lead_pad);
    *row_stride = (size_t)pw * (size_t)cin;
    int32_t keep = 0;
    if (run->win_j >= 0 && j == run->win_j + 1 && g->dh == 1 && g->sh < g->kh) {
        keep = g->kh - g->sh;
        memmove(run->window, run->window + (size_t)g->sh * *row_stride, (size_t)keep * *row_stride);
    }
    run->win_j = j;
    for (int32_t ky = keep; ky < g->kh; ++ky) {
        int8_t *wrow = run->window + (size_t)ky * *row_stride;
        int32_t r = j * g->sh + ky * g->dh;
        int32_t s = padded_source(&p->lead_pad, p->in_h, r);
        if (s < 0) {
            fill_padding(&p->lead_pad, p->in_w, cin, -1 - s, wrow);
            continue;
        }
        fill_padding(&p->lead_pad, p->in_w, cin, -1, wrow);
        int8_t *src_cols = wrow + (size_t)col0 * (size_t)cin;
        if (run->source != NULL) {
            run->source(run->source_ctx, s, src_cols);
        } else {
            memcpy(src_cols, run->input + (size_t)s * (size_t)p->in_w * (size_t)cin, (size_t)p->in_w * (size_t)cin);
        }
    }
    return run->window;
}

/* TFLite Micro's int8 ADD of n values: out = ADD(x, proj). out may alias x. */
static void add_row(const tt_fb_add *a, const int8_t *x, const int8_t *proj, int8_t *out, int32_t n) {
    const int32_t scale = (int32_t)1 << a->left_shift;
    for (int32_t i = 0; i < n; ++i) {
        int32_t xs = tt_mbqm(((int32_t)x[i] - a->x_zp) * scale, a->x_multiplier, (int)a->x_shift);
        int32_t ps = tt_mbqm(((int32_t)proj[i] - a->p_zp) * scale, a->p_multiplier, (int)a->p_shift);
        int64_t v = (int64_t)tt_mbqm(tt_wrap_add32(xs, ps), a->out_multiplier, (int)a->out_shift) + a->out_zp;
        out[i] = (int8_t)tt_clamp64(v, a->act_min, a->act_max);
    }
}

/*
 * add_row for the usual constants, without 64-bit arithmetic: each of its three
 * MultiplyByQuantizedMultiplier(X, q, -r) (r >= 0, q > 0, |X| < 2^30) as
 *     asr(smmlar(2 X, q, K), r),   K = 2^(r-1) - [hm < 0] (r >= 1), K = 0 (r = 0),
 * hm = SaturatingRoundingDoublingHighMul(X, q). Proof: hm = floor((X q + 2^30) / 2^31)
 * (no saturation: X != INT32_MIN; see tt_dsp_requant_s8 in include/tt_dsp.h);
 * RoundingDivideByPOT(hm, r) = floor((hm + 2^(r-1) - [hm < 0]) / 2^r) for r >= 1 (remainder
 * above 2^(r-1) - 1 + [hm < 0] <=> remainder + 2^(r-1) - [hm < 0] >= 2^r); nested floors
 * merge: floor((X q + 2^30 + K 2^31) / 2^(31+r)) = floor(floor((K 2^32 + 2X q + 2^31) / 2^32)
 * / 2^r), and the inner floor is SMMLAR (every value fits an int64). The sign: for X >= 0,
 * hm >= 0; for X = -m < 0, hm < 0 <=> m q > 2^30 <=> m >= m0 = floor(2^30 / q) + 1, i.e.
 * 2X + c < 0 with c = 2 m0 - 1 (r = 0 needs no sign term: c = 2^30 keeps 2X + c >= 0).
 * The output zero point is folded into the output's K (+ zp 2^r: a multiple of 2^(32+r)
 * inside the floor adds zp), the input zero points into the products:
 * 2X = 2 (v - zp) 2^L = v 2^(L+1) - zp 2^(L+1).
 * The input term with q = 2^30 and shift 0 (TFLite gives the input of the larger scale the
 * multiplier 1/2) is hm = floor((X + 1) / 2) = X / 2 = (v - zp) 2^(L-1) for L >= 1 (X even).
 * Ranges (fb_fast_add_make checks them once per block): left_shift L <= 20, so that
 * |X| = |v - zp| 2^L <= 255 2^20 and each term |xs|, |ps| <= |X| + 1 (q < 2^31), their sum
 * |s| < 2^29 (no wrap: tt_wrap_add32(xs, ps) = s) and 2 s fits; q >= 2^28 (m0 <= 5); input
 * shifts in [-31, 0], the output's in [-23, 0] (|K| < 2^31 with the zero point folded in).
 */
typedef struct {
    int32_t q, r;
    int32_t k; /* 2^(r-1) (r >= 1) or 0, plus out_zp 2^r for the output */
    int32_t c; /* 2 m0 - 1 (r >= 1), 2^30 (r = 0) */
} fb_mq;

typedef struct {
    fb_mq a, b, o;          /* input terms a (x or proj), b, the output */
    int32_t a_nz, b_nz;     /* -zp 2^(L+1) of each input (b_half: -zp 2^(L-1)) */
    int32_t scale2, half;   /* 2^(L+1), 2^(L-1) */
    int32_t b_half;         /* 1: term b is (v - zp) 2^(L-1) (q = 2^30, shift 0, L >= 1) */
    int32_t swap;           /* 1: term a reads the projection, b the block input */
    int32_t act_min, act_max;
} fb_fast_add;

static int fb_mq_make(int32_t q, int32_t shift, int32_t max_r, int32_t zp, fb_mq *m) {
    if (q < ((int32_t)1 << 28) || shift > 0 || shift < -max_r) {
        return 0;
    }
    const int32_t r = -shift;
    m->q = q;
    m->r = r;
    m->k = (r >= 1 ? ((int32_t)1 << (r - 1)) : 0) + zp * ((int32_t)1 << r);
    m->c = r >= 1 ? 2 * ((int32_t)((1u << 30) / (uint32_t)q) + 1) - 1 : ((int32_t)1 << 30);
    return 1;
}

static int fb_is_half(int32_t q, int32_t shift, int32_t left_shift) {
    return q == ((int32_t)1 << 30) && shift == 0 && left_shift >= 1;
}

/* 1 when add_row_fast applies to a (then f holds its constants). */
static int fb_fast_add_make(const tt_fb_add *a, fb_fast_add *f) {
    const int32_t L = a->left_shift;
    if (L > 20 || !fb_mq_make(a->x_multiplier, a->x_shift, 31, 0, &f->a) ||
        !fb_mq_make(a->p_multiplier, a->p_shift, 31, 0, &f->b) ||
        !fb_mq_make(a->out_multiplier, a->out_shift, 23, a->out_zp, &f->o)) {
        return 0;
    }
    f->scale2 = (int32_t)1 << (L + 1);
    f->half = L >= 1 ? (int32_t)1 << (L - 1) : 0;
    f->swap = 0;
    int32_t zp_a = a->x_zp, zp_b = a->p_zp;
    f->b_half = fb_is_half(a->p_multiplier, a->p_shift, L);
    if (!f->b_half && fb_is_half(a->x_multiplier, a->x_shift, L)) {
        const fb_mq t = f->a;
        f->a = f->b;
        f->b = t;
        f->swap = 1;
        f->b_half = 1;
        zp_a = a->p_zp;
        zp_b = a->x_zp;
    }
    f->a_nz = -zp_a * f->scale2;
    f->b_nz = -zp_b * (f->b_half ? f->half : f->scale2);
    f->act_min = a->act_min;
    f->act_max = a->act_max;
    return 1;
}

/* MultiplyByQuantizedMultiplier(X, q, -r) (+ zp for the output) from x2 = 2 X, see above. */
static inline int32_t fb_mq_apply(const fb_mq *m, int32_t x2) {
    const int32_t k = m->k + tt_dsp_asr(x2 + m->c, 31);
    return tt_dsp_asr(tt_smmlar(x2, m->q, k), m->r);
}

/* add_row with the constants of fb_fast_add_make: the same bytes. va feeds term a, vb term b;
 * out may alias either. */
static TT_DSP_ALWAYS_INLINE void add_row_fast_body(const fb_fast_add *f, const int8_t *va, const int8_t *vb,
                                                   int8_t *out, int32_t n, int b_half, int full) {
    const fb_mq ma = f->a, mb = f->b, mo = f->o;
    const int32_t a_nz = f->a_nz, b_nz = f->b_nz, scale2 = f->scale2, half = f->half;
    const int32_t lo = f->act_min, hi = f->act_max;
    for (int32_t i = 0; i < n; ++i) {
        const int32_t ta = fb_mq_apply(&ma, (int32_t)va[i] * scale2 + a_nz);
        const int32_t tb = b_half ? (int32_t)vb[i] * half + b_nz : fb_mq_apply(&mb, (int32_t)vb[i] * scale2 + b_nz);
        const int32_t v = fb_mq_apply(&mo, 2 * (ta + tb));
        out[i] = (int8_t)(full ? tt_ssat8(v) : tt_clamp32(v, lo, hi));
    }
}

static TT_DSP_NOINLINE void add_row_fast_half_full(const fb_fast_add *f, const int8_t *va, const int8_t *vb,
                                                   int8_t *out, int32_t n) {
    add_row_fast_body(f, va, vb, out, n, 1, 1);
}

static TT_DSP_NOINLINE void add_row_fast_any(const fb_fast_add *f, const int8_t *va, const int8_t *vb, int8_t *out,
                                             int32_t n) {
    add_row_fast_body(f, va, vb, out, n, f->b_half, 0);
}

static void add_row_fast(const fb_fast_add *f, const int8_t *x, const int8_t *proj, int8_t *out, int32_t n) {
    const int8_t *va = f->swap ? proj : x;
    const int8_t *vb = f->swap ? x : proj;
    if (f->b_half && f->act_min == TT_INT8_MIN && f->act_max == TT_INT8_MAX) {
        add_row_fast_half_full(f, va, vb, out, n);
    } else {
        add_row_fast_any(f, va, vb, out, n);
    }
}

static size_t mask_bytes(int32_t h, int32_t w, int32_t c) { return ((size_t)h * (size_t)w * (size_t)c + 7u) / 8u; }

/* ------------------------------------------------------------------ the block */

static tt_status run_block(const tt_fused_block_params *p, const int8_t *input, tt_fb_row_source source,
                           void *source_ctx, const int32_t *lead_bias, const int32_t *dw_bias,
                           const int32_t *proj_bias, int8_t *output, uint8_t *lead_mask, uint8_t *dw_mask,
                           uint8_t *proj_mask, void *scratch) {
    tt_status st = check_params(p);
    if (st != TT_OK) {
        return st;
    }
    if (output == NULL || scratch == NULL || (input == NULL && source == NULL) ||
        (lead_mask != NULL && !p->has_lead)) {
        return TT_ERR_ARG;
    }
    const tt_fb_window *g = &p->dw_win;
    fb_run run;
    run.c.p = p;
    run.c.lead_bias = lead_bias;
    run.c.dw_bias = dw_bias;
    run.c.proj_bias = proj_bias;
    run.c.direct = p->has_lead && lead_is_direct(p);
    run.c.lead_mode = TT_PATCH_NONE;
    if (p->has_lead) {
        (void)tt_patch_check(p->lead.patch, p->in_c, &run.c.lead_mode); /* validated by check_params */
    }
    (void)tt_patch_check(p->dw.patch, p->mid_c, &run.c.dw_mode);
    (void)tt_patch_check(p->proj.patch, p->mid_c, &run.c.proj_mode);
    run.c.n_ring = ring_rows(g);
    run.c.slot_bytes = (size_t)padded_w(&p->dw_pad, p->mid_w) * (size_t)p->mid_c;
    run.input = input;
    run.source = source;
    run.source_ctx = source_ctx;
    if (source != NULL && (p->has_add || run.c.direct)) {
        return TT_ERR_ARG; /* the input rows would be needed outside the scratch */
    }
    const fb_scratch parts = scratch_parts(p);
    int8_t *const base = (int8_t *)scratch;
    run.window = parts.lead_window ? base : NULL;
    run.win_j = -1;
    int8_t *const ring = base + parts.lead_window;
    int8_t *const dw_row = ring + parts.ring;
    int8_t *const proj_row = dw_row + parts.dw_row;

    if (lead_mask != NULL) {
        memset(lead_mask, 0, mask_bytes(p->mid_h, p->mid_w, p->mid_c));
    }
    if (dw_mask != NULL) {
        memset(dw_mask, 0, mask_bytes(p->out_h, p->out_w, p->mid_c));
    }
    if (proj_mask != NULL) {
        memset(proj_mask, 0, mask_bytes(p->out_h, p->out_w, p->out_c));
    }

    const int32_t n_ring = run.c.n_ring;
    const size_t slot_bytes = run.c.slot_bytes;
    const size_t col0 = (size_t)pad_before_w(&p->dw_pad) * (size_t)p->mid_c;
    const size_t mid_row = (size_t)p->mid_w * (size_t)p->mid_c;
    const size_t dw_row_n = (size_t)p->out_w * (size_t)p->mid_c;
    const size_t out_row = (size_t)p->out_w * (size_t)p->out_c;
    fb_fast_add fast_add;
    const int add_fast = p->has_add && fb_fast_add_make(&p->add, &fast_add);
    int32_t next_row = 0;
    for (int32_t oy = 0; oy < p->out_h; ++oy) {
        const int32_t top = oy * g->sh;
        for (int32_t r = next_row > top ? next_row : top; r < top + n_ring; ++r) {
            int8_t *slot = ring + (size_t)(r % n_ring) * slot_bytes;
            int32_t s = padded_source(&p->dw_pad, p->mid_h, r);
            if (s < 0) {
                fill_padding(&p->dw_pad, p->mid_w, p->mid_c, -1 - s, slot);
                continue;
            }
            fill_padding(&p->dw_pad, p->mid_w, p->mid_c, -1, slot);
            if (p->has_lead) {
                size_t row_stride;
                const int8_t *rows = lead_rows(&run, s, &row_stride);
                tt_fb_lead_row(&run.c, rows, row_stride, slot + col0);
                emit_mask(lead_mask, (size_t)s * mid_row, slot + col0, (int32_t)mid_row, p->lead.mask_lo,
                          p->lead.mask_hi);
            } else if (source != NULL) {
                source(source_ctx, s, slot + col0);
            } else {
                memcpy(slot + col0, input + (size_t)s * mid_row, mid_row);
            }
        }
        if (top + n_ring > next_row) {
            next_row = top + n_ring;
        }
        tt_fb_depthwise_row(&run.c, ring, oy, dw_row);
        emit_mask(dw_mask, (size_t)oy * dw_row_n, dw_row, (int32_t)dw_row_n, p->dw.mask_lo, p->dw.mask_hi);
        int8_t *out = output + (size_t)oy * out_row;
        int8_t *proj = p->has_add ? proj_row : out;
        tt_fb_project_row(&run.c, dw_row, proj);
        emit_mask(proj_mask, (size_t)oy * out_row, proj, (int32_t)out_row, p->proj.mask_lo, p->proj.mask_hi);
        if (add_fast) {
            add_row_fast(&fast_add, input + (size_t)oy * out_row, proj, out, (int32_t)out_row);
        } else if (p->has_add) {
            add_row(&p->add, input + (size_t)oy * out_row, proj, out, (int32_t)out_row);
        }
    }
    return TT_OK;
}

tt_status tt_fused_block_s8(const tt_fused_block_params *p, const int8_t *input, const int32_t *lead_bias,
                            const int32_t *dw_bias, const int32_t *proj_bias, int8_t *output, uint8_t *lead_mask,
                            uint8_t *dw_mask, uint8_t *proj_mask, void *scratch) {
    if (input == NULL) {
        return TT_ERR_ARG;
    }
    return run_block(p, input, NULL, NULL, lead_bias, dw_bias, proj_bias, output, lead_mask, dw_mask, proj_mask,
                     scratch);
}

tt_status tt_fused_block_stream_s8(const tt_fused_block_params *p, tt_fb_row_source source, void *source_ctx,
                                   const int32_t *lead_bias, const int32_t *dw_bias, const int32_t *proj_bias,
                                   int8_t *output, uint8_t *lead_mask, uint8_t *dw_mask, uint8_t *proj_mask,
                                   void *scratch) {
    if (source == NULL) {
        return TT_ERR_ARG;
    }
    return run_block(p, NULL, source, source_ctx, lead_bias, dw_bias, proj_bias, output, lead_mask, dw_mask,
                     proj_mask, scratch);
}
