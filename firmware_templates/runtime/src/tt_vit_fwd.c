/*
 * The tiny-ViT forward kernels (see tt_vit.h): broadcast ADD / SUB / MUL, the RSQRT table,
 * SOFTMAX, BATCH_MATMUL, TRANSPOSE / STRIDED_SLICE gathers and CONCATENATION.
 */
#include "tt_vit.h"

#include "tt_fixedpoint.h"

static int zp_ok(int32_t zp) {
    return zp >= TT_INT8_MIN && zp <= TT_INT8_MAX;
}

static int act_ok(int32_t lo, int32_t hi) {
    return lo >= TT_INT8_MIN && hi <= TT_INT8_MAX && lo <= hi;
}

/* ------------------------------------------------------------------ ADD / SUB / MUL */

static int binary_params_ok(const tt_binary_params *p) {
    if (p->kind < TT_BINARY_ADD || p->kind > TT_BINARY_MUL || !zp_ok(p->in1_zp) || !zp_ok(p->in2_zp) ||
        !zp_ok(p->out_zp) || !act_ok(p->act_min, p->act_max) || p->out_shift < -31 || p->out_shift > 31) {
        return 0;
    }
    if (p->kind == TT_BINARY_MUL) {
        return 1;
    }
    return p->left_shift >= 0 && p->left_shift <= 22 && p->in1_shift >= -31 && p->in1_shift <= 0 &&
           p->in2_shift >= -31 && p->in2_shift <= 0;
}

/* The rescaled input term of ADD / SUB: tt_mbqm((x - zp) * 2^left_shift, mult, shift). */
static inline int32_t add_term(int32_t x, int32_t zp, int32_t scale, int32_t mult, int32_t shift) {
    return tt_mbqm((x - zp) * scale, mult, shift);
}

static inline int8_t clamp_out(const tt_binary_params *p, int32_t v, int32_t lo_z, int32_t hi_z) {
    return (int8_t)(tt_clamp32(v, lo_z, hi_z) + p->out_zp);
}

/*
 * One row of n outputs (the formula numpy tabulates in core_elementwise._binary_tables). An
 * input with stride 0 along the row (broadcast, e.g. x - mean) has its term computed once.
 */
static void binary_row(const tt_binary_params *p, const int8_t *a, int32_t s1, const int8_t *b, int32_t s2,
                       int32_t n, int8_t *o) {
    const int32_t lo_z = p->act_min - p->out_zp;
    const int32_t hi_z = p->act_max - p->out_zp;
    if (p->kind == TT_BINARY_MUL) {
        for (int32_t i = 0; i < n; ++i) {
            const int32_t v = ((int32_t)a[i * s1] - p->in1_zp) * ((int32_t)b[i * s2] - p->in2_zp);
            o[i] = clamp_out(p, tt_mbqm(v, p->out_mult, p->out_shift), lo_z, hi_z);
        }
        return;
    }
    const int32_t scale = (int32_t)1 << p->left_shift;
    const int sub = p->kind == TT_BINARY_SUB;
    const int32_t ta0 = add_term(a[0], p->in1_zp, scale, p->in1_mult, p->in1_shift);
    const int32_t tb0 = add_term(b[0], p->in2_zp, scale, p->in2_mult, p->in2_shift);
    for (int32_t i = 0; i < n; ++i) {
        const int32_t ta = s1 == 0 ? ta0 : add_term(a[i * s1], p->in1_zp, scale, p->in1_mult, p->in1_shift);
        const int32_t tb = s2 == 0 ? tb0 : add_term(b[i * s2], p->in2_zp, scale, p->in2_mult, p->in2_shift);
        o[i] = clamp_out(p, tt_mbqm(sub ? ta - tb : ta + tb, p->out_mult, p->out_shift), lo_z, hi_z);
    }
}

/* C twin of tinytrain.sim.kernels.core_elementwise.run_binary (int8 ADD / SUB / MUL, broadcast). */
tt_status tt_binary_s8(const tt_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out) {
    if (p == NULL || in1 == NULL || in2 == NULL || out == NULL || !binary_params_ok(p)) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    const int32_t last = TT_VIT_MAX_RANK - 1;
    const int32_t n = p->out_dims[last];
    const int32_t zero[TT_VIT_MAX_RANK] = {0};
    tt_vit_walk w;
    tt_vit_walk_init(&w);
    int8_t *o = out;
    do {
        binary_row(p, in1 + w.off[0], p->in_strides[0][last], in2 + w.off[1], p->in_strides[1][last], n, o);
        o += n;
    } while (tt_vit_walk_next(&w, p->out_dims, p->in_strides[0], p->in_strides[1], zero));
    return TT_OK;
}

/* ------------------------------------------------------------------------ RSQRT table */

/* C twin of tinytrain.sim.kernels.nl_rsqrt.run_rsqrt (int8: the prepared table). */
tt_status tt_lut_s8(const tt_lut_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || p->table == NULL || p->size < 0 || !zp_ok(p->min_value) ||
        (p->size > 0 && (in == NULL || out == NULL))) {
        return TT_ERR_ARG;
    }
    for (int32_t i = 0; i < p->size; ++i) {
        if (in[i] < p->min_value) {
            return TT_ERR_RANGE;
        }
    }
    for (int32_t i = 0; i < p->size; ++i) {
        out[i] = p->table[(int32_t)in[i] + 128];
    }
    return TT_OK;
}

/* ----------------------------------------------------------------------------- SOFTMAX */

/* gemmlowp fixed-point pieces, twins of tinytrain.sim.kernels.nl_fixedpoint. */

static inline int32_t fx_add(int32_t a, int32_t b) {
    return tt_wrap_add32(a, b);
}

static inline int32_t fx_sub(int32_t a, int32_t b) {
    return tt_wrap32((int64_t)a - (int64_t)b);
}

/* saturating_rounding_multiply_by_pot with a constant exponent e (|e| <= 31). */
static inline int32_t fx_srmbp(int32_t x, int e) {
    if (e < 0) {
        return tt_rdbpot32(x, -e);
    }
    if (e == 0) {
        return x;
    }
    const int32_t threshold = (int32_t)(((uint32_t)1 << (31 - e)) - 1u);
    if (x > threshold) {
        return TT_INT32_MAX;
    }
    if (x < -threshold) {
        return TT_INT32_MIN;
    }
    return (int32_t)((uint32_t)x << e);
}

/* gemmlowp exp on [-1/4, 0) (Q0.31 in and out). */
static int32_t fx_exp_interval(int32_t a) {
    const int32_t constant_term = 1895147668;
    const int32_t one_third = 715827883;
    const int32_t x = fx_add(a, (int32_t)1 << 28);
    const int32_t x2 = tt_srdhm(x, x);
    const int32_t x3 = tt_srdhm(x2, x);
    const int32_t x4 = tt_srdhm(x2, x2);
    const int32_t x4_over_4 = tt_rdbpot32(x4, 2);
    const int32_t poly = tt_rdbpot32(fx_add(tt_srdhm(fx_add(x4_over_4, x3), one_third), x2), 1);
    return fx_add(constant_term, tt_srdhm(constant_term, fx_add(x, poly)));
}

/* gemmlowp exp_on_negative_values for FixedPoint<int32, 5> (Q5.26 in, Q0.31 out). */
static int32_t fx_exp_on_negative_q5(int32_t a) {
    static const int32_t barrel[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    const int32_t fractional_bits = 26;
    const int32_t one_quarter = (int32_t)1 << (fractional_bits - 2);
    const int32_t a_mod = fx_sub((int32_t)((uint32_t)a & (uint32_t)(one_quarter - 1)), one_quarter);
    int32_t result = fx_exp_interval(fx_srmbp(a_mod, 5));
    const uint32_t remainder = (uint32_t)fx_sub(a_mod, a);
    for (int32_t j = 0; j < 7; ++j) {
        const uint32_t bit = (uint32_t)1 << (fractional_bits - 2 + j);
        if ((remainder & bit) != 0u) {
            result = tt_srdhm(result, barrel[j]);
        }
    }
    return a == 0 ? TT_INT32_MAX : result;
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1 (Q0.31). */
static int32_t fx_one_over_one_plus_x(int32_t a) {
    const int32_t c48_over_17 = 1515870810;
    const int32_t c_neg32_over_17 = -1010580540;
    const int32_t one_q2 = (int32_t)1 << 29;
    const int64_t total = (int64_t)a + (int64_t)TT_INT32_MAX;
    const int32_t half_denominator = (int32_t)((total + (total >= 0 ? 1 : -1)) / 2);
    int32_t x = fx_add(c48_over_17, tt_srdhm(half_denominator, c_neg32_over_17));
    for (int32_t it = 0; it < 3; ++it) {
        const int32_t one_minus = fx_sub(one_q2, tt_srdhm(half_denominator, x));
        x = fx_add(x, fx_srmbp(tt_srdhm(x, one_minus), 2));
    }
    return fx_srmbp(x, 1);
}

static int32_t clz_u32(uint32_t x) {
    int32_t n = 0;
    if (x == 0u) {
        return 32;
    }
    while ((x & 0x80000000u) == 0u) {
        x <<= 1;
        ++n;
    }
    return n;
}

/* The row's exponential of x (Q0.31), for diff = x - max >= diff_min. */
static inline int32_t softmax_exp(const tt_softmax_params *p, int32_t diff) {
    const int32_t scaled = tt_srdhm(tt_wrap32((int64_t)diff * ((int64_t)1 << p->input_left_shift)), p->input_multiplier);
    return fx_exp_on_negative_q5(scaled);
}

/*
 * C twin of tinytrain.sim.kernels.nl_softmax.run_softmax (int8 -> int8). A difference to the row
 * maximum lies in [-255, 0]: the exponentials of the valid ones are tabulated once per call
 * (1 KB of stack), then every row sums and scales table entries.
 */
tt_status tt_softmax_s8(const tt_softmax_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL || p->input_left_shift < 0 || p->input_left_shift > 31 ||
        p->diff_min > 0) {
        return TT_ERR_ARG;
    }
    if (p->rows < 0 || p->n < 1 || (int64_t)p->rows * p->n > TT_INT32_MAX) {
        return TT_ERR_SHAPE;
    }
    int32_t exps[256]; /* exps[d]: the exponential of the difference -d, for -d >= diff_min */
    const int32_t span = (int64_t)p->diff_min < -255 ? 255 : -p->diff_min; /* valid d: 0 .. span */
    for (int32_t d = 0; d <= span; ++d) {
        exps[d] = softmax_exp(p, -d);
    }
    for (int32_t r = 0; r < p->rows; ++r) {
        const int8_t *x = in + (int64_t)r * p->n;
        int8_t *y = out + (int64_t)r * p->n;
        int32_t max_val = x[0];
        for (int32_t i = 1; i < p->n; ++i) {
            max_val = x[i] > max_val ? x[i] : max_val;
        }
        uint32_t sum = 0u; /* Q12.19, wraps like the int32 sum */
        for (int32_t i = 0; i < p->n; ++i) {
            const int32_t d = max_val - (int32_t)x[i];
            if (d <= span) {
                sum += (uint32_t)fx_srmbp(exps[d], -12);
            }
        }
        const int32_t headroom_plus_one = clz_u32(sum);
        if (headroom_plus_one >= 32) {
            return TT_ERR_RANGE;
        }
        const int32_t num_bits_over_unit = 12 - headroom_plus_one;
        const int32_t shifted_minus_one = tt_wrap32((int64_t)(sum << headroom_plus_one) - ((int64_t)1 << 31));
        const int32_t reciprocal = fx_one_over_one_plus_x(shifted_minus_one);
        const int32_t exponent = num_bits_over_unit + 31 - 8;
        if (exponent < 0 || exponent > 31) {
            return TT_ERR_RANGE;
        }
        for (int32_t i = 0; i < p->n; ++i) {
            const int32_t d = max_val - (int32_t)x[i];
            int32_t v = TT_INT8_MIN;
            if (d <= span) {
                const int32_t unsat = tt_rdbpot32(tt_srdhm(reciprocal, exps[d]), exponent);
                v = tt_clamp32(unsat - 128, TT_INT8_MIN, TT_INT8_MAX);
            }
            y[i] = (int8_t)v;
        }
    }
    return TT_OK;
}

/* ------------------------------------------------------------------------ BATCH_MATMUL */

static int bmm_geometry_ok(const tt_batch_matmul_params *p) {
    if (p->rows < 1 || p->depth < 1 || p->cols < 1) {
        return 0;
    }
    for (int32_t d = 0; d < TT_BMM_BATCH_RANK; ++d) {
        if (p->batch[d] < 1) {
            return 0;
        }
    }
    return 1;
}

/* C twin of tinytrain.sim.kernels.core_matmul.run_batch_matmul (int8). */
tt_status tt_batch_matmul_s8(const tt_batch_matmul_params *p, const int8_t *lhs, const int8_t *rhs, int8_t *out) {
    if (p == NULL || lhs == NULL || rhs == NULL || out == NULL || !zp_ok(p->lhs_zp) || !zp_ok(p->rhs_zp) ||
        !zp_ok(p->out_zp) || !act_ok(p->act_min, p->act_max) || p->shift < -31 || p->shift > 31) {
        return TT_ERR_ARG;
    }
    if (!bmm_geometry_ok(p)) {
        return TT_ERR_SHAPE;
    }
    const int32_t lo_z = p->act_min - p->out_zp;
    const int32_t hi_z = p->act_max - p->out_zp;
    /* locals: the int8 stores below may alias *p, so the compiler would reload its fields */
    const int32_t depth = p->depth, lk = p->lhs_k, rk = p->rhs_k, lzp = p->lhs_zp, rzp = p->rhs_zp;
    int8_t *o = out;
    for (int32_t b0 = 0; b0 < p->batch[0]; ++b0) {
        for (int32_t b1 = 0; b1 < p->batch[1]; ++b1) {
            for (int32_t b2 = 0; b2 < p->batch[2]; ++b2) {
                const int8_t *l = lhs + b0 * p->lhs_batch[0] + b1 * p->lhs_batch[1] + b2 * p->lhs_batch[2];
                const int8_t *r = rhs + b0 * p->rhs_batch[0] + b1 * p->rhs_batch[1] + b2 * p->rhs_batch[2];
                for (int32_t m = 0; m < p->rows; ++m) {
                    const int8_t *lm = l + m * p->lhs_m;
                    for (int32_t c = 0; c < p->cols; ++c) {
                        const int8_t *rc = r + c * p->rhs_c;
                        uint32_t acc = 0u; /* int32 sum modulo 2^32 */
                        for (int32_t k = 0; k < depth; ++k) {
                            const int32_t a = (int32_t)lm[k * lk] - lzp;
                            const int32_t b = (int32_t)rc[k * rk] - rzp;
                            acc += (uint32_t)(a * b);
                        }
                        const int32_t v = tt_mbqm(tt_wrap32((int64_t)acc), p->mult, p->shift);
                        *o++ = (int8_t)(tt_clamp32(v, lo_z, hi_z) + p->out_zp);
                    }
                }
            }
        }
    }
    return TT_OK;
}

/* ------------------------------------------------------------ TRANSPOSE / STRIDED_SLICE */

static tt_status gather_s8(const tt_gather_params *p, const int8_t *in, int8_t *out) {
    if (p == NULL || in == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    int32_t size;
    if (!tt_vit_dims_ok(p->out_dims, &size)) {
        return TT_ERR_SHAPE;
    }
    const int32_t last = TT_VIT_MAX_RANK - 1;
    const int32_t n = p->out_dims[last];
    const int32_t s = p->src_strides[last];
    const int32_t zero[TT_VIT_MAX_RANK] = {0};
    tt_vit_walk w;
    tt_vit_walk_init(&w);
    int8_t *o = out;
    do {
        const int8_t *src = in + p->offset + w.off[0];
        for (int32_t i = 0; i < n; ++i) {
            o[i] = src[i * s];
        }
        o += n;
    } while (tt_vit_walk_next(&w, p->out_dims, p->src_strides, zero, zero));
    return TT_OK;
}

/* C twin of tinytrain.sim.kernels.core_shape.run_transpose (int8). */
tt_status tt_transpose_s8(const tt_transpose_params *p, const int8_t *in, int8_t *out) {
    return gather_s8(p, in, out);
}

/* C twin of tinytrain.sim.kernels.core_index.run_slice for STRIDED_SLICE (int8). */
tt_status tt_strided_slice_s8(const tt_strided_slice_params *p, const int8_t *in, int8_t *out) {
    return gather_s8(p, in, out);
}

/* ----------------------------------------------------------------------- CONCATENATION */

/* C twin of tinytrain.sim.kernels.core_shape.run_concatenation (int8). */
tt_status tt_concat_s8(const tt_concat_params *p, const int8_t *const *ins, int8_t *out) {
    if (p == NULL || ins == NULL || out == NULL || p->n_inputs < 1 || p->n_inputs > TT_CONCAT_MAX_INPUTS) {
        return TT_ERR_ARG;
    }
    if (p->outer < 0 || p->inner < 0) {
        return TT_ERR_SHAPE;
    }
    for (int32_t i = 0; i < p->n_inputs; ++i) {
        if (ins[i] == NULL) {
            return TT_ERR_ARG;
        }
        if (p->axis_len[i] < 0) {
            return TT_ERR_SHAPE;
        }
    }
    int8_t *o = out;
    for (int32_t q = 0; q < p->outer; ++q) {
        for (int32_t i = 0; i < p->n_inputs; ++i) {
            const int32_t chunk = p->axis_len[i] * p->inner;
            const int8_t *src = ins[i] + (int64_t)q * chunk;
            for (int32_t j = 0; j < chunk; ++j) {
                o[j] = src[j];
            }
            o += chunk;
        }
    }
    return TT_OK;
}

tt_status tt_concat2_s8(const tt_concat_params *p, const int8_t *in0, const int8_t *in1, int8_t *out) {
    if (p == NULL || p->n_inputs != 2) {
        return TT_ERR_ARG;
    }
    const int8_t *const ins[2] = {in0, in1};
    return tt_concat_s8(p, ins, out);
}

/* ------------------------------------------------------------------------ TOKEN_SELECT */

static int token_select_params_ok(const tt_token_select_params *p) {
    return p->tokens >= 2 && p->tokens <= TT_TOKEN_SELECT_MAX_TOKENS && p->dim >= 1 && p->heads >= 1 &&
           p->kept >= 1 && p->kept < p->tokens && zp_ok(p->p_zp);
}

/* C twin of tinytrain.sim.kernels.token_select.run_token_select. */
tt_status tt_token_select_s8(const tt_token_select_params *p, const int8_t *x, const int8_t *attn, int8_t *out,
                             uint8_t *idx) {
    if (p == NULL || x == NULL || attn == NULL || out == NULL || idx == NULL) {
        return TT_ERR_ARG;
    }
    if (!token_select_params_ok(p)) {
        return TT_ERR_SHAPE;
    }
    const int32_t t = p->tokens;
    int32_t score[TT_TOKEN_SELECT_MAX_TOKENS];
    for (int32_t j = 0; j < t; ++j) {
        int32_t s = 0;
        for (int32_t h = 0; h < p->heads; ++h) {
            s += (int32_t)attn[(int64_t)h * t * t + j] - p->p_zp;
        }
        score[j] = s;
    }
    /* token j is kept when fewer than `kept` patch tokens rank before it (a higher score, or
     * an equal score and a lower index); visiting j in order lists the kept ones ascending */
    int32_t n = 0;
    for (int32_t j = 1; j < t && n < p->kept; ++j) {
        int32_t before = 0;
        for (int32_t i = 1; i < t && before < p->kept; ++i) {
            if (score[i] > score[j] || (score[i] == score[j] && i < j)) {
                ++before;
            }
        }
        if (before < p->kept) {
            idx[n++] = (uint8_t)j;
        }
    }
    const int32_t d = p->dim;
    for (int32_t c = 0; c < d; ++c) {
        out[c] = x[c];
    }
    for (int32_t r = 0; r < p->kept; ++r) {
        const int8_t *src = x + (int64_t)idx[r] * d;
        int8_t *dst = out + (int64_t)(1 + r) * d;
        for (int32_t c = 0; c < d; ++c) {
            dst[c] = src[c];
        }
    }
    return TT_OK;
}
