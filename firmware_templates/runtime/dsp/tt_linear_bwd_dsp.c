/*
 * Backward of the linear layers on the Cortex-M DSP extension (include/tt_dsp.h),
 * optimized backend: replaces src/tt_linear_bwd.c (see dsp/README.md); the same
 * functions, scratch sizes and bytes. C twin of tinytrain/train/kernels/linear_bwd.py.
 *
 *   - tt_linear_bwd_input_s16, in ONE pass over the sums instead of the reference's two
 *     (one-pass normalization, sp_state below):
 *       1x1, stride-1, unpadded CONV_2D (every expansion / projection conv of MobileNetV2):
 *       per pixel the non-zero scaled gradients g'[o] four rows at a time (axpy4: one
 *       4-byte load per weight row and 4 input channels, SXTB16, one SMLAxy per product,
 *       g' packed in pairs), the pixel's int32 sums in the scratch; a zero g' costs a
 *       compare; trained channels: the reference's correction per row, or, when the
 *       slice holds every channel in order, the slice as the weights;
 *       DEPTHWISE_CONV_2D: channel quads outermost; a quad's g' precomputed into the g_x
 *       slots of the last quad (written last) and read per covering tap, 4 channels per
 *       weight load (SMLABB / SMLABT / SMLATB / SMLATT); the last quad computes g' per tap.
 *   - tt_linear_bwd_weight_row_s16 of a 1x1 conv / FULLY_CONNECTED row: g (x - zp) =
 *     g x - zp g with exact int32 sums (weight_row_1x1), 8 or 4 channels per step.
 *   - everything else (other convolutions, fully connected input gradients, depthwise
 *     channels with trained weights, bias gradients, the saved input, the checks): the
 *     reference code of src/tt_linear_bwd.c, included below.
 *
 * Exactness: the reference accumulates every input-gradient sum modulo 2^32 (uint32) and
 * reads it back with tt_wrap32; so do we (the SMLAxy wrap, the fallbacks use uint32), in
 * another order, which gives the same int32. g' = RoundingDivideByPOT(g_y mu, 15 + d)
 * lies in [-2^15, 2^15 - 1] (|g_y| <= 2^15, 0 <= mu <= 2^15), an exact int16 operand.
 */
#include "tt_linear_bwd.h"

#include "tt_dsp.h"
#include "tt_grad.h"

/* the reference entry points replaced here become static fallbacks (ref_*): declared
 * static first, so that their definitions in the included file have internal linkage */
static tt_status ref_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                               const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch);
static tt_status ref_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                    int32_t row, int64_t *grad_row);
#define tt_linear_bwd_input_s16 ref_input_s16
#define tt_linear_bwd_weight_row_s16 ref_weight_row_s16
#include "../src/tt_linear_bwd.c"
#undef tt_linear_bwd_input_s16
#undef tt_linear_bwd_weight_row_s16

/* Keeps a hot loop out of its caller (its own register allocation: inlined into the big
 * entry point, GCC spills the row pointers of axpy4 inside the loop). */
#if defined(__GNUC__)
#define DSP_NOINLINE __attribute__((noinline))
#else
#define DSP_NOINLINE
#endif

/* RoundingDivideByPOT(x, e) for |x| <= 2^30 and 15 <= e <= 29 (the shifts 15 + drop used
 * here), half = 2^(e-1), branch-free: x / 2^e rounded half away from zero =
 * floor((x + 2^(e-1) - [x < 0]) / 2^e): with x = q 2^e + t (0 <= t < 2^e) both add 1 to q
 * exactly when t >= 2^(e-1) + [x < 0], which is tt_rdbpot32's test (remainder > threshold).
 * |x + half - 1| < 2^30 + 2^28 stays within int32. */
static inline int32_t dsp_rdbpot(int32_t x, int32_t e, int32_t half) {
    return tt_asr32(x + half + tt_asr32(x, 31), e);
}

/* Packs the int16 values lo and hi into one word (lo in bits 0..15). */
static inline uint32_t pack16(int32_t lo, int32_t hi) {
    return ((uint32_t)lo & 0xFFFFu) | ((uint32_t)hi << 16);
}

/* ac[0] = lo, ac[1] = hi as one 8-byte store (STRD: ac is 4-byte aligned). */
static inline void store_pair(uint32_t *ac, uint32_t lo, uint32_t hi) {
#if TT_DSP_NATIVE
    __asm__("strd %1, %2, [%0]" : : "r"(ac), "r"(lo), "r"(hi) : "memory");
#else
    ac[0] = lo;
    ac[1] = hi;
#endif
}

/* acc[i] += w0[i] g0 + w1[i] g1 + w2[i] g2 + w3[i] g3 (modulo 2^32) for i < len, with
 * g0..g3 = gps[0..3] (packed in pairs): per 4 channels one 4-byte load per row,
 * SXTB16 (channels i, i+2) and SXTB16 ror 8 (i+1, i+3), one SMLAxy per product. */
DSP_NOINLINE static void axpy4(uint32_t *acc, const int8_t *const rows[4], const int32_t gps[4], int32_t len) {
    const int8_t *w0 = rows[0], *w1 = rows[1], *w2 = rows[2], *w3 = rows[3];
    const uint32_t g01 = pack16(gps[0], gps[1]), g23 = pack16(gps[2], gps[3]);
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t *ac = acc + i;
        uint32_t s0 = ac[0], s1 = ac[1], s2 = ac[2], s3 = ac[3];
        uint32_t v = tt_ld32(w0 + i);
        uint32_t e = tt_sxtb16(v), o = tt_sxtb16_ror8(v);
        s0 = tt_smlabb(e, g01, s0);
        s2 = tt_smlatb(e, g01, s2);
        s1 = tt_smlabb(o, g01, s1);
        s3 = tt_smlatb(o, g01, s3);
        v = tt_ld32(w1 + i);
        e = tt_sxtb16(v);
        o = tt_sxtb16_ror8(v);
        s0 = tt_smlabt(e, g01, s0);
        s2 = tt_smlatt(e, g01, s2);
        s1 = tt_smlabt(o, g01, s1);
        s3 = tt_smlatt(o, g01, s3);
        v = tt_ld32(w2 + i);
        e = tt_sxtb16(v);
        o = tt_sxtb16_ror8(v);
        s0 = tt_smlabb(e, g23, s0);
        s2 = tt_smlatb(e, g23, s2);
        s1 = tt_smlabb(o, g23, s1);
        s3 = tt_smlatb(o, g23, s3);
        v = tt_ld32(w3 + i);
        e = tt_sxtb16(v);
        o = tt_sxtb16_ror8(v);
        s0 = tt_smlabt(e, g23, s0);
        s2 = tt_smlatt(e, g23, s2);
        s1 = tt_smlabt(o, g23, s1);
        s3 = tt_smlatt(o, g23, s3);
        store_pair(ac, s0, s1); /* STRD */
        store_pair(ac + 2, s2, s3);
    }
    const int32_t g0 = gps[0], g1 = gps[1], g2 = gps[2], g3 = gps[3];
    for (; i < len; ++i) {
        acc[i] += (uint32_t)((int32_t)w0[i] * g0) + (uint32_t)((int32_t)w1[i] * g1) +
                  (uint32_t)((int32_t)w2[i] * g2) + (uint32_t)((int32_t)w3[i] * g3);
    }
}

/* acc[i] += w0[i] * g (modulo 2^32): the rows left over by axpy4. */
static void axpy1(uint32_t *acc, const int8_t *w0, int32_t g, int32_t len) {
    const uint32_t gw = (uint32_t)g;
    int32_t i = 0;
    for (; i + 4 <= len; i += 4) {
        uint32_t *ac = acc + i;
        const uint32_t v = tt_ld32(w0 + i);
        const uint32_t e = tt_sxtb16(v), o = tt_sxtb16_ror8(v);
        ac[0] = tt_smlabb(e, gw, ac[0]);
        ac[1] = tt_smlabb(o, gw, ac[1]);
        ac[2] = tt_smlatb(e, gw, ac[2]);
        ac[3] = tt_smlatb(o, gw, ac[3]);
    }
    for (; i < len; ++i) {
        acc[i] += (uint32_t)((int32_t)w0[i] * g);
    }
}

/* The reference's trained-channel correction of one weight row (conv_input_pass). */
static void sub_correction(const tt_linear_bwd_params *p, uint32_t *acc, const int8_t *row, const int8_t *srow,
                           int32_t gp) {
    for (int32_t j = 0; j < p->n_channels; ++j) {
        const int32_t c = p->channels[j];
        acc[c] += (uint32_t)(((int32_t)srow[j] - (int32_t)row[c]) * gp);
    }
}

/* The rows of a group (axpy4 / axpy1 over the whole row) where the trained channels are the
 * contiguous range [c0, c0 + n) (c0 >= 0, srows: the rows' slices of current weights): the
 * row before and after the range, the slice inside it. For c in the range the reference adds
 * row[c] gp and then its correction (srow[c - c0] - row[c]) gp: modulo 2^32 that is srow gp. */
static void axpy4_split(uint32_t *acc, const int8_t *const rows[4], const int8_t *const srows[4], const int32_t gps[4],
                        int32_t cin, int32_t c0, int32_t n) {
    if (c0 > 0) {
        axpy4(acc, rows, gps, c0);
    }
    axpy4(acc + c0, srows, gps, n);
    const int32_t e = c0 + n;
    if (e < cin) {
        const int8_t *const after[4] = {rows[0] + e, rows[1] + e, rows[2] + e, rows[3] + e};
        axpy4(acc + e, after, gps, cin - e);
    }
}

static void axpy1_split(uint32_t *acc, const int8_t *row, const int8_t *srow, int32_t gp, int32_t cin, int32_t c0,
                        int32_t n) {
    if (c0 > 0) {
        axpy1(acc, row, gp, c0);
    }
    axpy1(acc + c0, srow, gp, n);
    const int32_t e = c0 + n;
    if (e < cin) {
        axpy1(acc + e, row + e, gp, cin - e);
    }
}

/* The int32 sums (modulo 2^32) of input pixel pos of a 1x1, stride-1, unpadded conv with
 * out == in (the pixel reads g_y row pos only) into acc[in_c]: the non-zero g' taken four
 * rows at a time (axpy4), the rows left over one by one, the trained-channel corrections
 * of conv_input_pass. */
static void conv1x1_pixel(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub, const int16_t *gy,
                          uint32_t *acc) {
    const int32_t cin = p->in_c, cout = p->out_c, n = p->n_channels;
    const int32_t shift = Q15_BITS + p->drop; /* 15..29 */
    const int32_t half = (int32_t)1 << (shift - 1);
    const int32_t *mu = p->mu;
    for (int32_t i = 0; i < cin; ++i) {
        acc[i] = 0u;
    }
    const int8_t *rows[4];
    int32_t gps[4];
    int32_t k = 0;
    for (int32_t o = 0; o < cout; ++o) {
        const int32_t g = gy[o];
        if (g == 0) {
            continue;
        }
        const int32_t gp = dsp_rdbpot(g * mu[o], shift, half);
        if (gp == 0) {
            continue;
        }
        const int8_t *row = w + o * cin;
        if (w_sub != NULL) {
            sub_correction(p, acc, row, w_sub + o * n, gp);
        }
        rows[k] = row;
        gps[k] = gp;
        if (++k == 4) {
            axpy4(acc, rows, gps, cin);
            k = 0;
        }
    }
    for (int32_t j = 0; j < k; ++j) {
        axpy1(acc, rows[j], gps[j], cin);
    }
}

/* conv1x1_pixel when the trained channels are c0 .. c0 + n - 1 in order (w_sub != NULL):
 * the slices read in place of the corrections (axpy4_split / axpy1_split). */
static void conv1x1_pixel_split(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub, int32_t c0,
                                const int16_t *gy, uint32_t *acc) {
    const int32_t cin = p->in_c, cout = p->out_c, n = p->n_channels;
    const int32_t shift = Q15_BITS + p->drop; /* 15..29 */
    const int32_t half = (int32_t)1 << (shift - 1);
    const int32_t *mu = p->mu;
    for (int32_t i = 0; i < cin; ++i) {
        acc[i] = 0u;
    }
    const int8_t *rows[4];
    const int8_t *srows[4];
    int32_t gps[4];
    int32_t k = 0;
    for (int32_t o = 0; o < cout; ++o) {
        const int32_t g = gy[o];
        if (g == 0) {
            continue;
        }
        const int32_t gp = dsp_rdbpot(g * mu[o], shift, half);
        if (gp == 0) {
            continue;
        }
        rows[k] = w + o * cin;
        srows[k] = w_sub + o * n;
        gps[k] = gp;
        if (++k == 4) {
            axpy4_split(acc, rows, srows, gps, cin, c0, n);
            k = 0;
        }
    }
    for (int32_t j = 0; j < k; ++j) {
        axpy1_split(acc, rows[j], srows[j], gps[j], cin, c0, n);
    }
}

/* c0 when the trained channels are c0, c0 + 1, ..., c0 + n - 1 (within in_c), else -1. */
static int32_t contiguous_channels(const tt_linear_bwd_params *p) {
    const int32_t n = p->n_channels;
    if (n <= 0 || p->channels == NULL) {
        return -1;
    }
    const int32_t c0 = p->channels[0];
    if (c0 < 0 || c0 > p->in_c - n) {
        return -1;
    }
    for (int32_t j = 1; j < n; ++j) {
        if (p->channels[j] != c0 + j) {
            return -1;
        }
    }
    return c0;
}

/*
 * One-pass normalization. normalize(acc, r) needs r = bitlen(max |acc|) - 14 of the whole
 * tensor; the reference gets it from a first pass and recomputes every sum in a second.
 * Here each unit (pixel) of sums is computed once and stored in its own int16 output
 * slots, at the shift a = max(r_now - 1, 0) of the running maximum m (this unit
 * included, r_now = bitlen(m) - 14, so |acc| <= m < 2^(a + 15)):
 *   a = 0:  s = acc itself (|acc| < 2^15); final value tt_grad_scale32(acc, r);
 *   a >= 1: s = floor((acc - [acc < 0]) / 2^a), which lies in [-2^15, 2^15) (acc = -2^(a+15)
 *           is impossible), and as r_now only grows, the final r >= a + 1 and
 *             RoundingDivideByPOT(acc, r) = floor((acc - [acc < 0] + 2^(r-1)) / 2^r)
 *                                         = floor((s + 2^(r-1-a)) / 2^(r-a))
 *           (write acc - [acc < 0] = s 2^a + t, 0 <= t < 2^a: t never carries past a
 *           multiple of 2^a, hence of 2^r).
 * The shift of every unit is recovered from the list of the units where a changed (a
 * only grows, from 0 to at most 17: at most 17 changes).
 */
#define SP_STEPS 18

typedef struct {
    uint32_t m;      /* running max |sum| */
    int32_t a;       /* the current storage shift */
    int32_t n_steps; /* units where a changed: from unit step_unit[k] on, a = step_a[k] */
    int32_t step_unit[SP_STEPS];
    int32_t step_a[SP_STEPS];
} sp_state;

static void sp_init(sp_state *st) {
    st->m = 0u;
    st->a = 0;
    st->n_steps = 0;
}

/* Stores unit `unit`'s len sums (modulo 2^32) as described above into out[len]. */
static inline void sp_store(sp_state *st, int32_t unit, const uint32_t *acc, int32_t len, int16_t *out) {
    uint32_t m = st->m;
    for (int32_t i = 0; i < len; ++i) {
        const uint32_t v = tt_abs_u32(tt_wrap32((int64_t)acc[i]));
        m = v > m ? v : m;
    }
    if (m != st->m) {
        st->m = m;
        const int32_t r = tt_grad_shift_u32(m, TT_GRAD_BITS);
        const int32_t a_new = r > 1 ? r - 1 : 0; /* 0 .. 17 */
        if (a_new != st->a && st->n_steps < SP_STEPS) { /* the bound always holds (see above) */
            st->a = a_new;
            st->step_unit[st->n_steps] = unit;
            st->step_a[st->n_steps] = a_new;
            st->n_steps += 1;
        }
    }
    const int32_t a = st->a;
    if (a == 0) {
        for (int32_t i = 0; i < len; ++i) {
            out[i] = (int16_t)tt_wrap32((int64_t)acc[i]); /* |acc| <= m < 2^15 */
        }
        return;
    }
    const uint32_t mask = ((uint32_t)1 << a) - 1u;
    for (int32_t i = 0; i < len; ++i) {
        const int32_t v = tt_wrap32((int64_t)acc[i]);
        /* floor((v - [v < 0]) / 2^a) without forming v - 1 (v may be INT32_MIN) */
        const int32_t dec = v < 0 && (acc[i] & mask) == 0u;
        out[i] = (int16_t)(tt_asr32(v, a) - dec);
    }
}

/* The final value (shift r) of one unit's len stored values o[], stored at shift a. */
static inline void sp_finish_unit(int16_t *o, int32_t len, int32_t a, int32_t r) {
    if (a == 0) {
        for (int32_t i = 0; i < len; ++i) {
            o[i] = tt_grad_scale32((int32_t)o[i], r);
        }
    } else {
        const int32_t sh = r - a; /* >= 1 */
        const int32_t bias = (int32_t)1 << (sh - 1);
        for (int32_t i = 0; i < len; ++i) {
            o[i] = (int16_t)tt_asr32((int32_t)o[i] + bias, sh);
        }
    }
}

/* The storage shift of unit `unit`, for units visited in increasing order (*k, *a: the
 * walk's state, both 0 at the start). */
static int32_t sp_unit_shift(const sp_state *st, int32_t unit, int32_t *k, int32_t *a) {
    while (*k < st->n_steps && st->step_unit[*k] <= unit) {
        *a = st->step_a[*k];
        *k += 1;
    }
    return *a;
}

/* The final normalized values (shift r) of every unit: units of len values at out + unit * len. */
static void sp_finish(const sp_state *st, int32_t units, int32_t len, int16_t *out, int32_t r) {
    int32_t k = 0, a = 0;
    for (int32_t unit = 0; unit < units; ++unit) {
        sp_finish_unit(out + unit * len, len, sp_unit_shift(st, unit, &k, &a), r);
    }
}

/* The 1x1 conv input gradient in one pass (see sp_state); returns r. */
static int32_t conv1x1_input_grad(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                  const int16_t *g_y, int16_t *g_x, uint32_t *acc) {
    const int32_t cin = p->in_c, cout = p->out_c;
    const int32_t positions = p->in_h * p->in_w;
    const int32_t c0 = w_sub != NULL ? contiguous_channels(p) : -1;
    sp_state st;
    sp_init(&st);
    for (int32_t pos = 0; pos < positions; ++pos) {
        if (c0 >= 0) {
            conv1x1_pixel_split(p, w, w_sub, c0, g_y + pos * cout, acc);
        } else {
            conv1x1_pixel(p, w, w_sub, g_y + pos * cout, acc);
        }
        sp_store(&st, pos, acc, cin, g_x + pos * cin);
    }
    const int32_t r = tt_grad_shift_u32(st.m, TT_GRAD_BITS);
    sp_finish(&st, positions, cin, g_x, r);
    return r;
}

static int32_t conv1x1_fast(const tt_linear_bwd_params *p) {
    return p->kind == TT_LINEAR_CONV && p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->pad_top == 0 &&
           p->pad_left == 0 && p->pad_bottom == 0 && p->pad_right == 0 && p->out_h == p->in_h &&
           p->out_w == p->in_w;
}

/* One channel of dw_input_pass at pixel (iy, ix) (the reference's per-channel loop):
 * channels whose current weights live in w_sub, and the leftover channels. */
static uint32_t dw_channel_sum(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                               const int16_t *g_y, int32_t c, int32_t py, int32_t px, int32_t oy0, int32_t oy1,
                               int32_t ox0, int32_t ox1) {
    const int32_t ch = p->in_c, kw = p->kw;
    const int32_t shift = Q15_BITS + p->drop;
    const int8_t *wc = w + c;
    int32_t ws = ch;
    if (w_sub != NULL && p->slot[c] >= 0) {
        wc = w_sub + p->slot[c];
        ws = p->n_channels;
    }
    const int32_t mu = p->mu[c];
    uint32_t sum = 0u;
    for (int32_t oy = oy0; oy <= oy1; ++oy) {
        const int32_t ky = py - oy * p->sh;
        for (int32_t ox = ox0; ox <= ox1; ++ox) {
            const int32_t kx = px - ox * p->sw;
            const int32_t gv = g_y[(oy * p->out_w + ox) * ch + c];
            if (gv != 0) {
                sum += (uint32_t)((int32_t)wc[(ky * kw + kx) * ws] * scaled_grad(gv, mu, shift));
            }
        }
    }
    return sum;
}

/* 1 when one of the channels c..c+3 reads its weights from w_sub. */
static int32_t dw_quad_has_sub(const tt_linear_bwd_params *p, const int8_t *w_sub, int32_t c) {
    if (w_sub == NULL) {
        return 0;
    }
    const int32_t *s = p->slot + c;
    return (s[0] & s[1] & s[2] & s[3]) != -1; /* all -1 <=> none trained */
}

/* What the assembly block of dw_quad_sums reads (gt[0..3], wt[0..3]): "m" operands when
 * optimizing; at -O0 those would need address registers of their own (GCC: "impossible
 * constraints"), so a "memory" clobber instead. */
#if defined(__OPTIMIZE__)
#define DW_QUAD_READS(gt, wt) , "m"(*(const int16_t(*)[4])(gt)), "m"(*(const uint8_t(*)[4])(wt))
#define DW_QUAD_CLOBBERS "cc"
#else
#define DW_QUAD_READS(gt, wt)
#define DW_QUAD_CLOBBERS "cc", "memory"
#endif

/* The four sums of channels c..c+3 at an input pixel whose covering output window is
 * [oy0, oy1] x [ox0, ox1]. pre (or NULL): g' with pre[(oy * out_w + ox) * C + c + k]
 * the value of channel c + k; otherwise g' is computed from g_y at each tap. */
static inline void dw_quad_sums(const tt_linear_bwd_params *p, const int8_t *w, const int16_t *g_y, const int16_t *pre,
                         int32_t c, int32_t py, int32_t px, int32_t oy0, int32_t oy1, int32_t ox0, int32_t ox1,
                         uint32_t sum[4]) {
    const int32_t ch = p->in_c, kw = p->kw, out_w = p->out_w;
    uint32_t s0 = 0u, s1 = 0u, s2 = 0u, s3 = 0u;
    if (pre != NULL) {
        const int32_t w_step = p->sw * ch; /* the tap moves left by sw when ox grows by 1 */
        const int32_t taps_x = ox1 - ox0 + 1;
        for (int32_t oy = oy0; oy <= oy1; ++oy) {
            const int32_t ky = py - oy * p->sh;
            const int8_t *wt = w + (ky * kw + (px - ox0 * p->sw)) * ch + c;
            const int16_t *gt = pre + (oy * out_w + ox0) * ch + c;
            for (int32_t t = 0; t < taps_x; ++t, wt -= w_step, gt += ch) {
#if TT_DSP_NATIVE
                /* one block (GCC otherwise spills around the four accumulators): skips a tap
                 * whose four g' are 0, else the four SMLAxy */
                uint32_t g01_, g23_, v_, e_;
                __asm__("ldr %[g01], [%[gt]]\n\t"
                        "ldr %[g23], [%[gt], #4]\n\t"
                        "orrs %[v], %[g01], %[g23]\n\t"
                        "beq 1f\n\t"
                        "ldr %[v], [%[wt]]\n\t"
                        "sxtb16 %[e], %[v]\n\t"
                        "sxtb16 %[v], %[v], ror #8\n\t"
                        "smlabb %[s0], %[e], %[g01], %[s0]\n\t"
                        "smlabt %[s1], %[v], %[g01], %[s1]\n\t"
                        "smlatb %[s2], %[e], %[g23], %[s2]\n\t"
                        "smlatt %[s3], %[v], %[g23], %[s3]\n"
                        "1:"
                        : [g01] "=&r"(g01_), [g23] "=&r"(g23_), [v] "=&r"(v_), [e] "=&r"(e_), [s0] "+r"(s0),
                          [s1] "+r"(s1), [s2] "+r"(s2), [s3] "+r"(s3)
                        : [gt] "r"(gt), [wt] "r"(wt) DW_QUAD_READS(gt, wt)
                        : DW_QUAD_CLOBBERS);
#else
                uint32_t g01, g23;
                memcpy(&g01, gt, 4);
                memcpy(&g23, gt + 2, 4);
                if ((g01 | g23) == 0u) {
                    continue;
                }
                const uint32_t v = tt_ld32(wt);
                const uint32_t e = tt_sxtb16(v), o = tt_sxtb16_ror8(v);
                s0 = tt_smlabb(e, g01, s0);
                s1 = tt_smlabt(o, g01, s1);
                s2 = tt_smlatb(e, g23, s2);
                s3 = tt_smlatt(o, g23, s3);
#endif
            }
        }
    } else {
        const int32_t shift = Q15_BITS + p->drop;
        const int32_t half = (int32_t)1 << (shift - 1);
        const int32_t m0 = p->mu[c], m1 = p->mu[c + 1], m2 = p->mu[c + 2], m3 = p->mu[c + 3];
        for (int32_t oy = oy0; oy <= oy1; ++oy) {
            const int32_t ky = py - oy * p->sh;
            for (int32_t ox = ox0; ox <= ox1; ++ox) {
                const int32_t kx = px - ox * p->sw;
                const int16_t *gy = g_y + (oy * out_w + ox) * ch + c;
                uint32_t g01, g23;
                memcpy(&g01, gy, 4);
                memcpy(&g23, gy + 2, 4);
                if ((g01 | g23) == 0u) {
                    continue;
                }
                const uint32_t v = tt_ld32(w + (ky * kw + kx) * ch + c);
                const uint32_t e = tt_sxtb16(v), o = tt_sxtb16_ror8(v);
                /* g' of the 4 channels (the low halves carry the int16 values) */
                s0 = tt_smlabb(e, (uint32_t)dsp_rdbpot((int32_t)gy[0] * m0, shift, half), s0);
                s1 = tt_smlabb(o, (uint32_t)dsp_rdbpot((int32_t)gy[1] * m1, shift, half), s1);
                s2 = tt_smlatb(e, (uint32_t)dsp_rdbpot((int32_t)gy[2] * m2, shift, half), s2);
                s3 = tt_smlatb(o, (uint32_t)dsp_rdbpot((int32_t)gy[3] * m3, shift, half), s3);
            }
        }
    }
    sum[0] = s0;
    sum[1] = s1;
    sum[2] = s2;
    sum[3] = s3;
}

/* g' of channels c..c+3 of every output element, written at plane[(opos) * C + k] (k < 4). */
static void dw_scale_quad(const tt_linear_bwd_params *p, const int16_t *g_y, int32_t c, int16_t *plane) {
    const int32_t ch = p->in_c;
    const int32_t shift = Q15_BITS + p->drop;
    const int32_t half = (int32_t)1 << (shift - 1);
    const int32_t positions = p->out_h * p->out_w;
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int16_t *gy = g_y + pos * ch + c;
        int16_t *q = plane + pos * ch;
        for (int32_t k = 0; k < 4; ++k) {
            const int32_t g = gy[k];
            q[k] = (int16_t)(g == 0 ? 0 : dsp_rdbpot(g * p->mu[c + k], shift, half));
        }
    }
}

/* The units of channels c..c+cnt-1 (every input pixel, in order from unit `unit`): their
 * sums (the reference loop when generic, else dw_quad_sums with pre) stored by sp_store
 * into g_x. Returns the next unit. */
DSP_NOINLINE static int32_t dw_quad_pass(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                         const int16_t *g_y, const int16_t *pre, int32_t c, int32_t cnt,
                                         int32_t generic, sp_state *st, int32_t unit, int16_t *g_x) {
    const int32_t ch = p->in_c, kw = p->kw, out_w = p->out_w;
    for (int32_t iy = 0; iy < p->in_h; ++iy) {
        const int32_t py = iy + p->pad_top;
        int32_t oy0, oy1;
        covering(py, p->kh, p->sh, p->out_h, &oy0, &oy1);
        for (int32_t ix = 0; ix < p->in_w; ++ix) {
            const int32_t px = ix + p->pad_left;
            int32_t ox0, ox1;
            covering(px, kw, p->sw, out_w, &ox0, &ox1);
            uint32_t sum[4];
            if (generic) {
                for (int32_t k = 0; k < cnt; ++k) {
                    sum[k] = dw_channel_sum(p, w, w_sub, g_y, c + k, py, px, oy0, oy1, ox0, ox1);
                }
            } else {
                dw_quad_sums(p, w, g_y, pre, c, py, px, oy0, oy1, ox0, ox1, sum);
            }
            sp_store(st, unit++, sum, cnt, g_x + (iy * p->in_w + ix) * ch + c);
        }
    }
    return unit;
}

/*
 * The depthwise input gradient in one pass (sp_state), four channels per step, channel
 * quads outermost; a unit is (quad, input pixel), units in that order. While quad q
 * (channels 4q..4q+3) is computed, the g_x entries of the last quad hold nothing yet, so
 * when the output positions fit in g_x (out_h out_w <= in_h in_w) quad q < Q - 1 first
 * stores its g' there (dw_scale_quad) and reads them at each tap; the last quad computes
 * them from g_y at each tap. Quads holding a channel whose weights live in w_sub, and the
 * channels after the last quad: the reference loop (dw_channel_sum). Returns r.
 */
static int32_t dw_input_grad(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                             const int16_t *g_y, int16_t *g_x) {
    const int32_t ch = p->in_c, out_w = p->out_w;
    const int32_t slot = 4 * (ch / 4 - 1);
    const int32_t fit = (int64_t)p->out_h * out_w <= (int64_t)p->in_h * p->in_w;
    sp_state st;
    sp_init(&st);
    int32_t unit = 0;
    for (int32_t c = 0; c < ch; c += 4) {
        const int32_t cnt = c + 4 <= ch ? 4 : ch - c; /* < 4: the channels after the last quad */
        const int32_t generic = cnt < 4 || dw_quad_has_sub(p, w_sub, c);
        const int16_t *pre = NULL;
        if (!generic && fit && c < slot) {
            dw_scale_quad(p, g_y, c, g_x + slot);
            pre = g_x + slot - c; /* pre[off + c + k] = g' of channel c + k */
        }
        unit = dw_quad_pass(p, w, w_sub, g_y, pre, c, cnt, generic, &st, unit, g_x);
    }
    const int32_t r = tt_grad_shift_u32(st.m, TT_GRAD_BITS);
    const int32_t pixels = p->in_h * p->in_w;
    int32_t k = 0, a = 0;
    unit = 0;
    for (int32_t c = 0; c < ch; c += 4) {
        const int32_t cnt = c + 4 <= ch ? 4 : ch - c;
        for (int32_t pix = 0; pix < pixels; ++pix) {
            sp_finish_unit(g_x + pix * ch + c, cnt, sp_unit_shift(&st, unit++, &k, &a), r);
        }
    }
    return r;
}

/* 1 when the trained channels are 0, 1, ..., in_c - 1 in this order (then a conv's slice
 * w[..., channels] has the layout of w itself). */
static int32_t all_trained(const tt_linear_bwd_params *p) {
    if (p->n_channels != p->in_c) {
        return 0;
    }
    for (int32_t j = 0; j < p->n_channels; ++j) {
        if (p->channels[j] != j) {
            return 0;
        }
    }
    return 1;
}

/*
 * FULLY_CONNECTED input gradient (in_c a multiple of 4, current weights in one [out][in]
 * tensor) in one pass (sp_state): per row the g' of its outputs in the scratch (out_c
 * int32, the reference's scratch), then per group of 4 inputs the four sums in registers,
 * one 4-byte weight load + SXTB16 pair + 4 SMLAxy per output; units = (row, group) in order,
 * each 4 contiguous g_x values. Returns r.
 */
static int32_t fc_input_grad(const tt_linear_bwd_params *p, const int8_t *w, const int16_t *g_y, int16_t *g_x,
                             int32_t *gp) {
    const int32_t cin = p->in_c, cout = p->out_c;
    const int32_t shift = Q15_BITS + p->drop; /* 15..29 */
    const int32_t half = (int32_t)1 << (shift - 1);
    const int32_t groups = cin / 4;
    sp_state st;
    sp_init(&st);
    int32_t unit = 0;
    for (int32_t row = 0; row < p->in_h; ++row) {
        const int16_t *gy = g_y + row * cout;
        for (int32_t o = 0; o < cout; ++o) {
            const int32_t g = gy[o];
            gp[o] = g == 0 ? 0 : dsp_rdbpot(g * p->mu[o], shift, half);
        }
        int16_t *gx = g_x + row * cin;
        for (int32_t q = 0; q < groups; ++q) {
            uint32_t s0 = 0u, s1 = 0u, s2 = 0u, s3 = 0u;
            const int8_t *wc = w + 4 * q;
            for (int32_t o = 0; o < cout; ++o, wc += cin) {
                const uint32_t gw = (uint32_t)gp[o];
                const uint32_t v = tt_ld32(wc);
                const uint32_t e = tt_sxtb16(v), od = tt_sxtb16_ror8(v);
                s0 = tt_smlabb(e, gw, s0);
                s1 = tt_smlabb(od, gw, s1);
                s2 = tt_smlatb(e, gw, s2);
                s3 = tt_smlatb(od, gw, s3);
            }
            const uint32_t sums[4] = {s0, s1, s2, s3};
            sp_store(&st, unit++, sums, 4, gx + 4 * q);
        }
    }
    const int32_t r = tt_grad_shift_u32(st.m, TT_GRAD_BITS);
    sp_finish(&st, unit, 4, g_x, r);
    return r;
}

/* Twin of tinytrain.train.kernels.linear_bwd.input_grad. */
tt_status tt_linear_bwd_input_s16(const tt_linear_bwd_params *p, const int8_t *w, const int8_t *w_sub,
                                  const int16_t *g_y, int32_t e_y, int16_t *g_x, int32_t *e_x, void *scratch) {
    const int32_t dw = p != NULL && p->kind == TT_LINEAR_DEPTHWISE;
    if (p != NULL && p->kind == TT_LINEAR_FC && params_ok(p) && p->in_c % 4 == 0 &&
        (w_sub == NULL || all_trained(p))) {
        if (w == NULL || g_y == NULL || g_x == NULL || e_x == NULL || (w_sub != NULL && p->n_channels == 0) ||
            scratch == NULL) {
            return TT_ERR_ARG;
        }
        if (!tt_grad_exp_ok(e_y) || p->k < -4096 || p->k > 4096) {
            return TT_ERR_RANGE;
        }
        /* the slice of every channel in order is the whole current weight tensor */
        const int32_t r = fc_input_grad(p, w_sub != NULL ? w_sub : w, g_y, g_x, (int32_t *)scratch);
        *e_x = e_y + p->k + p->drop + r;
        return TT_OK;
    }
    if (!params_ok(p) || !(conv1x1_fast(p) || dw)) {
        return ref_input_s16(p, w, w_sub, g_y, e_y, g_x, e_x, scratch);
    }
    if (dw) {
        if (w == NULL || g_y == NULL || g_x == NULL || e_x == NULL || (w_sub != NULL && p->n_channels == 0)) {
            return TT_ERR_ARG;
        }
        if (!tt_grad_exp_ok(e_y) || p->k < -4096 || p->k > 4096) {
            return TT_ERR_RANGE;
        }
        const int32_t r = dw_input_grad(p, w, w_sub, g_y, g_x);
        *e_x = e_y + p->k + p->drop + r;
        return TT_OK;
    }
    if (w == NULL || g_y == NULL || g_x == NULL || e_x == NULL || (w_sub != NULL && p->n_channels == 0) ||
        scratch == NULL) {
        return TT_ERR_ARG;
    }
    if (!tt_grad_exp_ok(e_y) || p->k < -4096 || p->k > 4096) {
        return TT_ERR_RANGE;
    }
    if (w_sub != NULL && all_trained(p)) {
        /* the slice holds every channel in order: it is the whole current weight tensor */
        w = w_sub;
        w_sub = NULL;
    }
    const int32_t r = conv1x1_input_grad(p, w, w_sub, g_y, g_x, (uint32_t *)scratch);
    *e_x = e_y + p->k + p->drop + r;
    return TT_OK;
}

/* Sums over the positions pos of s[k] = g_y[pos * cout + o] * x[pos * n + j0 + k] (k < 4,
 * int32: exact, see weight_row_1x1) and, when gsum != NULL, *gsum = sum of the g_y. */
static void wrow_block4(const int16_t *gy, int32_t cout, const int8_t *x, int32_t n, int32_t positions,
                        int32_t *gsum, uint32_t s[4]) {
    uint32_t s0 = 0u, s1 = 0u, s2 = 0u, s3 = 0u, gs = 0u;
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int32_t g = gy[pos * cout];
        if (g == 0) {
            continue;
        }
        gs += (uint32_t)g;
        const uint32_t v = tt_ld32(x + pos * n);
        const uint32_t e = tt_sxtb16(v), od = tt_sxtb16_ror8(v);
        const uint32_t gw = (uint32_t)g;
        s0 = tt_smlabb(e, gw, s0);
        s1 = tt_smlabb(od, gw, s1);
        s2 = tt_smlatb(e, gw, s2);
        s3 = tt_smlatb(od, gw, s3);
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
    if (gsum != NULL) {
        *gsum = tt_wrap32((int64_t)gs);
    }
}

/* wrow_block4 for channels j0..j0+7 (two 4-byte loads per position). */
static void wrow_block8(const int16_t *gy, int32_t cout, const int8_t *x, int32_t n, int32_t positions,
                        int32_t *gsum, uint32_t s[8]) {
    uint32_t s0 = 0u, s1 = 0u, s2 = 0u, s3 = 0u, s4 = 0u, s5 = 0u, s6 = 0u, s7 = 0u, gs = 0u;
    for (int32_t pos = 0; pos < positions; ++pos) {
        const int32_t g = gy[pos * cout];
        if (g == 0) {
            continue;
        }
        gs += (uint32_t)g;
        const uint32_t gw = (uint32_t)g;
        const uint32_t v = tt_ld32(x + pos * n), u = tt_ld32(x + pos * n + 4);
        const uint32_t e = tt_sxtb16(v), od = tt_sxtb16_ror8(v);
        s0 = tt_smlabb(e, gw, s0);
        s1 = tt_smlabb(od, gw, s1);
        s2 = tt_smlatb(e, gw, s2);
        s3 = tt_smlatb(od, gw, s3);
        const uint32_t e2 = tt_sxtb16(u), od2 = tt_sxtb16_ror8(u);
        s4 = tt_smlabb(e2, gw, s4);
        s5 = tt_smlabb(od2, gw, s5);
        s6 = tt_smlatb(e2, gw, s6);
        s7 = tt_smlatb(od2, gw, s7);
    }
    s[0] = s0;
    s[1] = s1;
    s[2] = s2;
    s[3] = s3;
    s[4] = s4;
    s[5] = s5;
    s[6] = s6;
    s[7] = s7;
    if (gsum != NULL) {
        *gsum = tt_wrap32((int64_t)gs);
    }
}

/*
 * One weight-gradient row of a 1x1, stride-1, unpadded conv (out == in) or of a fully
 * connected layer: grad[j] = sum_pos g (x_j - zp) = sum_pos g x_j - zp sum_pos g. With
 * |g| <= 2^15 and |x| <= 2^7 each product is below 2^22 in magnitude, so for fewer than
 * 2^9 positions both sums are exact in int32 (accumulated modulo 2^32 in uint32), and
 * the int64 result equals the reference's exact sum. Eight, then four channels per step
 * (4-byte loads, SXTB16, SMLABB/SMLATB); n % 4 leftover channels: one more block of four
 * ending at n (its overlap with the previous block is recomputed, identically).
 */
static void weight_row_1x1(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub, int32_t o,
                           int64_t *grad_row) {
    const int32_t n = p->n_channels, cout = p->out_c, positions = p->out_h * p->out_w;
    const int16_t *gy = g_y + o;
    int32_t gsum = 0;
    if (n < 4) {
        for (int32_t j = 0; j < n; ++j) {
            uint32_t acc = 0u, gs = 0u;
            for (int32_t pos = 0; pos < positions; ++pos) {
                const int32_t g = gy[pos * cout];
                gs += (uint32_t)g;
                acc += (uint32_t)(g * (int32_t)x_sub[pos * n + j]);
            }
            gsum = tt_wrap32((int64_t)gs);
            grad_row[j] = (int64_t)tt_wrap32((int64_t)acc) - (int64_t)p->in_zp * (int64_t)gsum;
        }
        return;
    }
    uint32_t s[8];
    int32_t j0 = 0;
    for (; j0 + 8 <= n; j0 += 8) {
        wrow_block8(gy, cout, x_sub + j0, n, positions, j0 == 0 ? &gsum : NULL, s);
        const int64_t zg = (int64_t)p->in_zp * (int64_t)gsum;
        for (int32_t k = 0; k < 8; ++k) {
            grad_row[j0 + k] = (int64_t)tt_wrap32((int64_t)s[k]) - zg;
        }
    }
    for (; j0 < n; j0 += 4) {
        const int32_t j = j0 + 4 <= n ? j0 : n - 4; /* the last block ends at n */
        wrow_block4(gy, cout, x_sub + j, n, positions, j0 == 0 ? &gsum : NULL, s);
        const int64_t zg = (int64_t)p->in_zp * (int64_t)gsum;
        for (int32_t k = j0 - j; k < 4; ++k) {
            grad_row[j + k] = (int64_t)tt_wrap32((int64_t)s[k]) - zg;
        }
    }
}

/* Twin of tinytrain.train.kernels.linear_bwd.weight_grad (one output channel / subset channel). */
tt_status tt_linear_bwd_weight_row_s16(const tt_linear_bwd_params *p, const int16_t *g_y, const int8_t *x_sub,
                                       int32_t row, int64_t *grad_row) {
    if (!geometry_ok(p) || g_y == NULL || x_sub == NULL || grad_row == NULL || p->n_channels == 0 || row < 0 ||
        !(p->kind == TT_LINEAR_FC || conv1x1_fast(p)) || row >= p->out_c || p->out_h * p->out_w >= 512) {
        return ref_weight_row_s16(p, g_y, x_sub, row, grad_row);
    }
    weight_row_1x1(p, g_y, x_sub, row, grad_row);
    return TT_OK;
}
