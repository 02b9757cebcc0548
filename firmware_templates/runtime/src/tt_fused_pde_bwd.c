/* Row-streamed fused backward of projection P <- depthwise D <- expansion E; see tt_fused_pde_bwd.h.
 * Twin of tinytrain/train/kernels/fused_bwd_project.py:run_fused_project_backward: the
 * fused E->D core (tt_fused_bwd_core.h) reads D's output-gradient rows from P's ring. */
#include "tt_fused_pde_bwd.h"

#include "tt_fixedpoint.h"
#include "tt_fused_bwd_core.h"
#include "tt_grad.h"

#define GRAD_BITS 14
#define Q15_BITS 15
#define MAX_DROP 14

/* The row source's state (numpy: fused_bwd_project._ProjectRows). */
typedef struct {
    const tt_fused_pde_params *p;
    const int16_t *g_p;
    const uint8_t *mask_p; /* NULL: no mask */
    const tt_fbwd_weights *w_p;
    int16_t *ring;  /* [R · d_out_w · C] */
    int32_t next;   /* ring mode: rows 0 .. next - 1 computed in this sweep */
    int32_t r;      /* r_P, set after pass 0 */
    int32_t on_row; /* 1: every computed row also adds to D's gradients (first sweep, ring mode) */
    const uint8_t *mask_d; /* NULL: no mask */
    const int8_t *x_sub_d;
    const tt_fbwd_weights *w_d;
    int64_t *d_bias;  /* [C] or NULL */
    int64_t *d_wgrad; /* [kh·kw·n] or NULL */
} pde_rows;

static int bit_at(const uint8_t *mask, int32_t i) {
    return (mask[i >> 3] >> (i & 7)) & 1;
}

/* g'_P of element (oy, ox, o): masked, times μ, rounded down by 15 + d (|g · μ| <= 2^30). */
static int32_t p_scaled(const pde_rows *s, int32_t oy, int32_t ox, int32_t o) {
    const tt_fused_pde_params *p = s->p;
    const int32_t k = (oy * p->ed.d_out_w + ox) * p->p_cout + o;
    if (s->mask_p != NULL && !bit_at(s->mask_p, k)) {
        return 0;
    }
    return tt_rdbpot32((int32_t)s->g_p[k] * p->p_mu[o], Q15_BITS + p->p_drop);
}

/* P's input-gradient sum of element (oy, ox, c), modulo 2^32 (numpy: _ProjectRows.sums):
 * Σ_o g'_P · W_P[o, c] with the trained slice's value for a trained channel (column j >= 0). */
static uint32_t p_sum(const pde_rows *s, int32_t oy, int32_t ox, int32_t c, int32_t j) {
    const tt_fused_pde_params *p = s->p;
    const tt_fbwd_weights *w = s->w_p;
    const int32_t C = p->ed.channels;
    uint32_t acc = 0u;
    for (int32_t o = 0; o < p->p_cout; ++o) {
        const int32_t gp = p_scaled(s, oy, ox, o);
        if (gp != 0) {
            const int32_t wv = j < 0 ? (int32_t)w->w[o * C + c] : (int32_t)w->w_train[o * w->n + j];
            acc += (uint32_t)(gp * wv);
        }
    }
    return acc;
}

/* The column j of channel c in the trained slice of w (-1: not trained). */
static int32_t trained_col(const tt_fbwd_weights *w, int32_t c) {
    for (int32_t j = 0; j < w->n; ++j) {
        if ((int32_t)w->ch[j] == c) {
            return j;
        }
    }
    return -1;
}

/* The int32 value of P's input-gradient sum of element (oy, ox, c) with the current weights. */
static int32_t p_value(const pde_rows *s, int32_t oy, int32_t ox, int32_t c) {
    const int32_t j = s->w_p->n > 0 ? trained_col(s->w_p, c) : -1;
    return tt_wrap32((int64_t)p_sum(s, oy, ox, c, j));
}

/* max |int32 value| of row oy of P's sums (pass 0). */
static uint64_t row_max(const pde_rows *s, int32_t oy) {
    const tt_fused_pde_params *p = s->p;
    uint64_t top = 0;
    for (int32_t ox = 0; ox < p->ed.d_out_w; ++ox) {
        for (int32_t c = 0; c < p->ed.channels; ++c) {
            const uint64_t a = tt_abs_u32(p_value(s, oy, ox, c));
            top = a > top ? a : top;
        }
    }
    return top;
}

/* Adds D's masked output-gradient row oy (row: d_out_w × C) to D's bias and weight
 * gradients (numpy: d_params in run_fused_project_backward, _dw_weight_grad_row). */
static void d_params(const pde_rows *s, int32_t oy, const int16_t *row) {
    const tt_fused_ed_params *q = &s->p->ed;
    const int32_t C = q->channels, W = q->d_out_w;
    const int32_t base = oy * W * C;
#define G_AT(ox, c) ((s->mask_d != NULL && !bit_at(s->mask_d, base + (ox) * C + (c))) ? 0 : (int32_t)row[(ox) * C + (c)])
    if (s->d_bias != NULL) {
        for (int32_t ox = 0; ox < W; ++ox) {
            for (int32_t c = 0; c < C; ++c) {
                s->d_bias[c] += G_AT(ox, c);
            }
        }
    }
    if (s->d_wgrad != NULL) {
        const int32_t n = s->p->d_weight_n;
        const int32_t zp = s->p->d_in_zp;
        for (int32_t ky = 0; ky < q->d_kh; ++ky) {
            const int32_t iy = oy * q->d_sh + ky - q->d_pad_top;
            if (iy < 0 || iy >= q->height) {
                continue;
            }
            for (int32_t kx = 0; kx < q->d_kw; ++kx) {
                int64_t *wg = s->d_wgrad + (ky * q->d_kw + kx) * n;
                for (int32_t ox = 0; ox < W; ++ox) {
                    const int32_t ix = ox * q->d_sw + kx - q->d_pad_left;
                    if (ix < 0 || ix >= q->width) {
                        continue;
                    }
                    const int8_t *xs = s->x_sub_d + (iy * q->width + ix) * n;
                    for (int32_t j = 0; j < n; ++j) {
                        const int32_t g = G_AT(ox, (int32_t)s->w_d->ch[j]);
                        wg[j] += (int64_t)(g * ((int32_t)xs[j] - zp));
                    }
                }
            }
        }
    }
#undef G_AT
}

/* Computes row oy of D's output gradient into its ring slot (numpy: _ProjectRows._fill). */
static const int16_t *fill(pde_rows *s, int32_t oy) {
    const tt_fused_pde_params *p = s->p;
    const int32_t C = p->ed.channels;
    int16_t *row = s->ring + (oy % p->ring_rows) * p->ed.d_out_w * C;
    for (int32_t ox = 0; ox < p->ed.d_out_w; ++ox) {
        int16_t *out = row + ox * C;
        for (int32_t c = 0; c < C; ++c) {
            out[c] = tt_grad_scale32(p_value(s, oy, ox, c), s->r);
        }
    }
    if (s->on_row) {
        d_params(s, oy, row);
    }
    return row;
}

/* The row source of the E->D core (numpy: _ProjectRows.d_row). */
static const int16_t *ring_row(const tt_ed_ctx *x, int32_t oy) {
    pde_rows *s = (pde_rows *)x->src;
    const int32_t n = s->p->ring_rows;
    if (n == 1) {
        return fill(s, oy);
    }
    while (s->next <= oy) {
        (void)fill(s, s->next);
        s->next += 1;
    }
    return s->ring + (oy % n) * s->p->ed.d_out_w * s->p->ed.channels;
}

/* The sweep hook (numpy: _ProjectRows.begin / end). */
static void ring_sweep(const tt_ed_ctx *x, int sweep, int begin) {
    pde_rows *s = (pde_rows *)x->src;
    (void)sweep;
    if (begin) {
        s->next = 0;
        return;
    }
    if (s->on_row && s->p->ring_rows > 1) {
        while (s->next < s->p->ed.d_out_h) { /* rows no input row reads still add to D's gradients */
            (void)fill(s, s->next);
            s->next += 1;
        }
    }
    s->on_row = 0;
}

/* The widest window of D's output rows one input row reads (numpy: fused_bwd.dw_reads). */
static int32_t read_window(const tt_fused_ed_params *q) {
    int32_t window = 0;
    for (int32_t iy = 0; iy < q->height; ++iy) {
        int32_t hits = 0;
        for (int32_t ky = 0; ky < q->d_kh; ++ky) {
            const int32_t t = iy + q->d_pad_top - ky;
            if (t >= 0 && t % q->d_sh == 0 && t / q->d_sh < q->d_out_h) {
                ++hits;
            }
        }
        window = hits > window ? hits : window;
    }
    return window;
}

static size_t d_bias_bytes(const tt_fused_pde_params *p) {
    return p->d_bias ? (size_t)8 * (size_t)p->ed.channels : 0u;
}

static size_t d_wgrad_bytes(const tt_fused_pde_params *p) {
    return p->d_weight_n > 0 ? (size_t)8 * (size_t)p->ed.d_kh * (size_t)p->ed.d_kw * (size_t)p->d_weight_n : 0u;
}

/* Twin of tinytrain/train/kernels/fused_bwd_project.py:project_scratch_bytes. */
size_t tt_fused_pde_scratch_bytes(const tt_fused_pde_params *p) {
    if (p == NULL) {
        return 0u;
    }
    const size_t ring = (size_t)2 * (size_t)p->ring_rows * (size_t)p->ed.d_out_w * (size_t)p->ed.channels;
    return d_bias_bytes(p) + d_wgrad_bytes(p) + tt_fused_ed_scratch_bytes(&p->ed) + ring;
}

int64_t *tt_fused_pde_d_bias_grad(const tt_fused_pde_params *p, void *scratch) {
    if (p == NULL || scratch == NULL || !p->d_bias) {
        return NULL;
    }
    return (int64_t *)scratch;
}

int64_t *tt_fused_pde_d_weight_grad(const tt_fused_pde_params *p, void *scratch) {
    if (p == NULL || scratch == NULL || p->d_weight_n <= 0) {
        return NULL;
    }
    return (int64_t *)((uint8_t *)scratch + d_bias_bytes(p));
}

int32_t *tt_fused_pde_exponents(const tt_fused_pde_params *p, void *scratch) {
    if (p == NULL || scratch == NULL || (size_t)2 * (size_t)p->ring_rows * (size_t)p->ed.d_out_w * (size_t)p->ed.channels < 8u) {
        return NULL;
    }
    return (int32_t *)((uint8_t *)scratch + d_bias_bytes(p) + d_wgrad_bytes(p) + tt_fused_ed_scratch_bytes(&p->ed));
}

void *tt_fused_pde_ed_scratch(const tt_fused_pde_params *p, void *scratch) {
    if (p == NULL || scratch == NULL) {
        return NULL;
    }
    return (uint8_t *)scratch + d_bias_bytes(p) + d_wgrad_bytes(p);
}

static int valid_pde(const tt_fused_pde_params *p) {
    const tt_fused_ed_params *q = &p->ed;
    if (p->p_cout < 1 || p->p_drop < 0 || p->p_drop > MAX_DROP || !tt_fbwd_valid_mu(p->p_mu, p->p_cout) ||
        p->ring_rows < 1 || p->d_weight_n < 0 || p->d_weight_n > q->channels) {
        return 0;
    }
    return p->ring_rows == 1 || p->ring_rows >= read_window(q);
}

/* Twin of tinytrain/train/kernels/fused_bwd_project.py:run_fused_project_backward (D's and
 * E's results; P's parameter gradients come from the unfused kernels). */
tt_status tt_fused_pde_bwd_s16(const tt_fused_pde_params *p, const int16_t *g_p, int32_t e_p, const uint8_t *mask_p,
                               const uint8_t *mask_d, const uint8_t *mask_e, const tt_fbwd_weights *w_p,
                               const tt_fbwd_weights *w_d, const tt_fbwd_weights *w_e, const int8_t *x_sub_d,
                               const int8_t *x_sub_e, int16_t *g_in, int32_t *e_in, int32_t *e_param_d,
                               int32_t *e_param_e, void *scratch) {
    if (p == NULL || g_p == NULL || scratch == NULL || !valid_pde(p) ||
        !tt_fbwd_valid_weights(w_p, p->ed.channels) || (p->p_mask && mask_p == NULL)) {
        return TT_ERR_ARG;
    }
    tt_ed_ctx x;
    const tt_status st = tt_fused_ed_ctx_init(&x, &p->ed, mask_d, mask_e, w_d, w_e, x_sub_e, g_in, e_in,
                                              tt_fused_pde_ed_scratch(p, scratch));
    if (st != TT_OK) {
        return st;
    }
    if (p->d_weight_n > 0 && (x_sub_d == NULL || w_d->n != p->d_weight_n)) {
        return TT_ERR_ARG; /* D's weight gradient is over its trained channels w_d->ch */
    }
    const tt_fused_ed_params *q = &p->ed;
    pde_rows s;
    s.p = p;
    s.g_p = g_p;
    s.mask_p = p->p_mask ? mask_p : NULL;
    s.w_p = w_p;
    s.ring = (int16_t *)((uint8_t *)tt_fused_pde_ed_scratch(p, scratch) + tt_fused_ed_scratch_bytes(q));
    s.next = 0;
    s.r = 0;
    s.on_row = 0;
    s.mask_d = x.mask_d;
    s.x_sub_d = x_sub_d;
    s.w_d = w_d;
    s.d_bias = tt_fused_pde_d_bias_grad(p, scratch);
    s.d_wgrad = tt_fused_pde_d_weight_grad(p, scratch);

    /* Pass 0: the global max of P's input-gradient sums. */
    uint64_t m_p = 0;
    for (int32_t oy = 0; oy < q->d_out_h; ++oy) {
        const uint64_t t = row_max(&s, oy);
        m_p = t > m_p ? t : m_p;
    }
    s.r = tt_grad_shift_u64(m_p, GRAD_BITS);
    const int64_t e_d = (int64_t)e_p + p->p_k + p->p_drop + s.r;

    /* D's parameter gradients: in sweep 1 with a ring, else in a loop of their own. */
    if (s.d_bias != NULL) {
        for (int32_t c = 0; c < q->channels; ++c) {
            s.d_bias[c] = 0;
        }
    }
    if (s.d_wgrad != NULL) {
        const int32_t nw = q->d_kh * q->d_kw * p->d_weight_n;
        for (int32_t k = 0; k < nw; ++k) {
            s.d_wgrad[k] = 0;
        }
    }
    if (s.d_bias != NULL || s.d_wgrad != NULL) {
        if (p->ring_rows > 1) {
            s.on_row = 1;
        } else {
            for (int32_t oy = 0; oy < q->d_out_h; ++oy) {
                d_params(&s, oy, fill(&s, oy));
            }
        }
    }

    /* Passes 1 to 3: the fused E->D core on the recomputed rows. */
    x.d_row = ring_row;
    x.sweep = ring_sweep;
    x.src = &s;
    int32_t e_e = 0;
    tt_fused_ed_stream(&x, e_d, g_in, e_in, &e_e);
    /* the exponents, written last: also into the (dead) ring for a generated caller */
    int32_t *ex = tt_fused_pde_exponents(p, scratch);
    if (ex != NULL) {
        ex[0] = tt_wrap32(e_d);
        ex[1] = e_e;
    }
    if (e_param_d != NULL) {
        *e_param_d = tt_wrap32(e_d);
    }
    if (e_param_e != NULL) {
        *e_param_e = e_e;
    }
    return TT_OK;
}
