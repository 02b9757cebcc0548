/*
 * tinytrain runtime: the tiny-ViT ops, forward (int8, TFLite Micro reference semantics) and
 * backward (int16 gradient mantissas + one exponent, docs/numerics.md "ViT ops").
 *
 * Forward twins (tinytrain/sim/kernels/...):
 *   tt_binary_s8          ADD / SUB / MUL with numpy broadcasting (core_elementwise.run_binary)
 *   tt_lut_s8             RSQRT as a 256-entry table (nl_rsqrt.run_rsqrt)
 *   tt_softmax_s8         SOFTMAX int8 -> int8, last axis (nl_softmax.run_softmax)
 *   tt_batch_matmul_s8    BATCH_MATMUL with adj_x / adj_y / broadcast batch (core_matmul.run_batch_matmul)
 *   tt_transpose_s8       TRANSPOSE, rank <= 6 (core_shape.run_transpose)
 *   tt_strided_slice_s8   STRIDED_SLICE, rank <= 6 (core_index.run_slice)
 *   tt_concat_s8          CONCATENATION (core_shape.run_concatenation); tt_concat2_s8 for two inputs
 *   tt_token_select_s8    TOKEN_SELECT, BSR's token dropping (token_select.run_token_select)
 *   MEAN over the last axis is tt_mean_s8 of tt_pool.h (outer = rows, n = last dim, inner = 1).
 * Backward twins (tinytrain/train/kernels/{attn_bwd,norm_bwd,layout_bwd}.py):
 *   tt_batch_matmul_bwd_s16, tt_softmax_bwd_s16, tt_mul_bwd_s16, tt_sub_bwd_s16, tt_mean_last_bwd_s16,
 *   tt_rsqrt_bwd_s16, tt_transpose_bwd_s16, tt_strided_slice_bwd_s16, tt_concat_bwd_s16,
 *   tt_token_select_bwd_s16 (train/kernels/token_bwd.py).
 *
 * Shapes are left-padded with 1 to TT_VIT_MAX_RANK (row-major order is unchanged). A "stride"
 * field is an element stride; a broadcast axis has stride 0. No kernel needs scratch memory:
 * the normalizing backward kernels run two passes (max |acc|, then the values), recomputing
 * the accumulators. Gradient exponents must satisfy |e| <= TT_GRAD_EXP_LIMIT (TT_ERR_RANGE).
 */
#ifndef TT_VIT_H
#define TT_VIT_H

#include "tt_common.h"

#define TT_VIT_MAX_RANK 6
#define TT_CONCAT_MAX_INPUTS 10

/* ------------------------------------------------------------------------------ forward */

typedef enum { TT_BINARY_ADD = 0, TT_BINARY_SUB = 1, TT_BINARY_MUL = 2 } tt_binary_kind;

/*
 * int8 ADD / SUB / MUL, output [out_dims] (row-major), input k read at
 * sum_d o[d] * in_strides[k][d] (0 on a broadcast axis). With a = in1 - in1_zp, b = in2 - in2_zp:
 *   ADD / SUB: s = tt_mbqm(a * 2^left_shift, in1_mult, in1_shift) +/- tt_mbqm(b * 2^left_shift, ...)
 *              v = tt_mbqm(s, out_mult, out_shift)   (TFLite: left_shift 20, input and output
 *              multipliers below one, |s| < 2^29)
 *   MUL:       v = tt_mbqm(a * b, out_mult, out_shift)   (in*_mult / in*_shift / left_shift unused)
 *   out = clamp(v, act_min - out_zp, act_max - out_zp) + out_zp.
 * out may alias an input of the output's shape (each element is read before it is written).
 */
typedef struct {
    int32_t kind;                              /* tt_binary_kind */
    int32_t out_dims[TT_VIT_MAX_RANK];
    int32_t in_strides[2][TT_VIT_MAX_RANK];
    int32_t in1_zp, in2_zp;                    /* [-128, 127] */
    int32_t left_shift;                        /* [0, 22] */
    int32_t in1_mult, in1_shift;               /* ADD/SUB: shift in [-31, 0] */
    int32_t in2_mult, in2_shift;               /* ADD/SUB: shift in [-31, 0] */
    int32_t out_mult, out_shift;               /* shift in [-31, 31] */
    int32_t out_zp;                            /* [-128, 127] */
    int32_t act_min, act_max;                  /* -128 <= act_min <= act_max <= 127 */
} tt_binary_params;

tt_status tt_binary_s8(const tt_binary_params *p, const int8_t *in1, const int8_t *in2, int8_t *out);

/*
 * An int8 -> int8 map by a 256-entry table (RSQRT: the numpy kernel's table, indexed by
 * x + 128). Inputs below min_value are refused with TT_ERR_RANGE (RSQRT: the input zero point,
 * TFLite Micro fails Invoke on a negative real input); -128 accepts everything.
 * out may be in.
 */
typedef struct {
    int32_t size;
    int32_t min_value;     /* [-128, 127] */
    const int8_t *table;   /* [256] */
} tt_lut_params;

tt_status tt_lut_s8(const tt_lut_params *p, const int8_t *in, int8_t *out);

/*
 * SOFTMAX over the last axis of an input viewed as [rows][n], int8 output of scale 1/256 and
 * zero point -128 (TFLite reference_ops::Softmax with gemmlowp's exp_on_negative_values,
 * Q5.26 differences, Q12.19 sums, GetReciprocal). The exponentials of the <= 256 possible
 * differences are tabulated once per call (1 KB of stack). out may be in. TT_ERR_RANGE where
 * TFLite Micro aborts (the output exponent outside [0, 31], e.g. >= 512 equal row maxima).
 */
typedef struct {
    int32_t rows, n;
    int32_t input_multiplier;   /* > 0 */
    int32_t input_left_shift;   /* [0, 31] */
    int32_t diff_min;           /* <= 0 */
} tt_softmax_params;

tt_status tt_softmax_s8(const tt_softmax_params *p, const int8_t *in, int8_t *out);

/*
 * BATCH_MATMUL: out[b][m][c] = clamp(tt_mbqm(sum_k (L - lhs_zp)(R - rhs_zp), mult, shift) + out_zp)
 * (the int32 sum wraps like TFLite's accumulator). b runs over the output batch dims (batch[3],
 * left-padded with 1); lhs element (m, k) of batch b is at sum_d b[d] * lhs_batch[d] + m * lhs_m +
 * k * lhs_k (adj_x swaps lhs_m / lhs_k), rhs element (k, c) at ... + k * rhs_k + c * rhs_c.
 * out must not overlap the inputs.
 */
#define TT_BMM_BATCH_RANK 3
typedef struct {
    int32_t batch[TT_BMM_BATCH_RANK];
    int32_t lhs_batch[TT_BMM_BATCH_RANK], rhs_batch[TT_BMM_BATCH_RANK]; /* 0: broadcast */
    int32_t rows, depth, cols;
    int32_t lhs_m, lhs_k, rhs_k, rhs_c;
    int32_t lhs_zp, rhs_zp, out_zp;    /* [-128, 127] */
    int32_t mult, shift;               /* shift in [-31, 31] */
    int32_t act_min, act_max;
} tt_batch_matmul_params;

tt_status tt_batch_matmul_s8(const tt_batch_matmul_params *p, const int8_t *lhs, const int8_t *rhs, int8_t *out);

/*
 * Gathers of a strided view: out (row-major [out_dims]) element o comes from
 * in[offset + sum_d o[d] * src_strides[d]]. TRANSPOSE: src_strides = the input strides permuted,
 * offset 0; STRIDED_SLICE: out_dims = the per-axis counts (a shrunk axis: 1), src_strides =
 * step * input stride, offset = sum start * input stride. out must not overlap in.
 */
typedef struct {
    int32_t out_dims[TT_VIT_MAX_RANK];
    int32_t src_strides[TT_VIT_MAX_RANK]; /* may be negative (a negative slice step) */
    int32_t offset;
} tt_gather_params;

typedef tt_gather_params tt_transpose_params;
typedef tt_gather_params tt_strided_slice_params;

tt_status tt_transpose_s8(const tt_transpose_params *p, const int8_t *in, int8_t *out);
tt_status tt_strided_slice_s8(const tt_strided_slice_params *p, const int8_t *in, int8_t *out);

/*
 * CONCATENATION of n_inputs tensors along one axis, each viewed as [outer][axis_len[i]][inner]
 * (equal quantization: bytes are copied). out must not overlap the inputs.
 */
typedef struct {
    int32_t outer, inner;
    int32_t n_inputs;                           /* 1 .. TT_CONCAT_MAX_INPUTS */
    int32_t axis_len[TT_CONCAT_MAX_INPUTS];
} tt_concat_params;

tt_status tt_concat_s8(const tt_concat_params *p, const int8_t *const *ins, int8_t *out);

/* tt_concat_s8 of two inputs (p->n_inputs == 2) passed as two pointers (generated code). */
tt_status tt_concat2_s8(const tt_concat_params *p, const int8_t *in0, const int8_t *in1, int8_t *out);

/*
 * TOKEN_SELECT (Block Selective Reprogramming): x [tokens][dim] int8, attn [heads][tokens][tokens]
 * int8 (the attention probabilities of the block that wrote x, zero point p_zp). The score of
 * token j is s_j = sum_h (attn[h][0][j] - p_zp) (int32); idx [kept] (uint8) receives the kept
 * patch tokens (1 .. tokens - 1) of the largest scores, ties to the lower index, in ascending
 * order; out [1 + kept][dim] is row 0 of x (the class token) followed by the rows idx.
 * tokens <= 256 (the scores live on the stack, 1 KB), 1 <= kept < tokens. out must not overlap x.
 */
#define TT_TOKEN_SELECT_MAX_TOKENS 256
typedef struct {
    int32_t tokens, dim, heads, kept;
    int32_t p_zp;   /* [-128, 127] */
} tt_token_select_params;

tt_status tt_token_select_s8(const tt_token_select_params *p, const int8_t *x, const int8_t *attn, int8_t *out,
                             uint8_t *idx);

/* ----------------------------------------------------------------------------- backward */

/*
 * The clamp mask of tt_clamp_mask_s8 (tt_mask.h) with a side disabled, as the ViT rules record
 * it (numpy: mask.clamp_mask with norm_bwd's NO_LOW / NO_HIGH): bit i = act_min < y[i] < act_max,
 * act_min in [-129, 127] (-129: no lower test), act_max in [-128, 128] (128: no upper test).
 */
tt_status tt_vit_clamp_mask_s8(const int8_t *y, int32_t n, int32_t act_min, int32_t act_max, uint8_t *mask);

/*
 * BATCH_MATMUL (numpy: attn_bwd.batch_matmul_input_grads), the gradient of operand `which`
 * (0: lhs, 1: rhs) from g_y [batch][rows][cols] and the other operand's int8 values `other`
 * (saved activation or constant). With g' = RoundingDivideByPOT(g, drop[which]):
 *   dL[m][k] = sum over the batch copies and c of g'[m][c] (R[k][c] - rhs_zp)
 *   dR[k][c] = sum over the batch copies and m of (L[m][k] - lhs_zp) g'[m][c]
 * acc = that sum (int64 here, exact for any int16 g) * mu[1 - which], written in the operand's
 * stored layout (lhs_m / lhs_k / rhs_k / rhs_c and the batch strides of the forward params,
 * which must be the operand's own contiguous layout), then normalize(acc, e_y + drop + k[1 - which] - 15).
 * g_x [the operand's size] must not overlap g_y. TT_ERR_SHAPE when more than 2^22 products
 * (batch copies times cols / rows) sum into one element (the int64 sum could overflow).
 */
typedef struct {
    tt_batch_matmul_params fwd;   /* geometry and zero points (the requantization fields unused) */
    int32_t mu[2];                /* Q15 mantissas of the operand scales, [1, 32768] */
    int32_t k[2];                 /* scale ~ mu * 2^(k - 15) */
    int32_t drop[2];              /* [0, 14] */
} tt_batch_matmul_bwd_params;

tt_status tt_batch_matmul_bwd_s16(const tt_batch_matmul_bwd_params *p, int32_t which, const int16_t *g_y,
                                  int32_t e_y, const int8_t *other, int16_t *g_x, int32_t *e_x);

/*
 * SOFTMAX (numpy: attn_bwd.softmax_input_grads) from the saved int8 output y [rows][n]:
 * u = y - out_zp, S = sum_j g_j u_j per row, t = g * 2^out_bits - S, acc = u * t * beta_mu (int64),
 * normalize(acc, e_y - 2 out_bits + beta_k - 15). g_x may be g_y (in place).
 */
typedef struct {
    int32_t rows, n;
    int32_t out_zp;      /* [-128, 127] */
    int32_t out_bits;    /* [0, 15] */
    int32_t beta_mu;     /* [0, 32768] */
    int32_t beta_k;
} tt_softmax_bwd_params;

tt_status tt_softmax_bwd_s16(const tt_softmax_bwd_params *p, const int16_t *g_y, int32_t e_y, const int8_t *y,
                             int16_t *g_x, int32_t *e_x);

/*
 * MUL (numpy: norm_bwd.mul_input_grads), the gradient of input `which` given the other
 * operand's int8 values `other` (saved activation or constant; for x*x, the input itself):
 *   acc = mu[j] * sum over the broadcast copies of g * (other - zp[j])  (j = 1 - which; int64)
 *   normalize(acc, e_y + k[j] - 15)
 * square = 1 (x*x): which must be 0, j = 0, acc = g * (x - zp[0]) * mu[0], exponent + 1.
 * Input strides as in tt_binary_params (element strides over out_dims, 0 on broadcast axes).
 * g_x may be g_y when input `which` has the output's size (in place). TT_ERR_SHAPE when input
 * `which` is broadcast more than 2^22 times (the int64 sum could overflow).
 */
typedef struct {
    int32_t out_dims[TT_VIT_MAX_RANK];
    int32_t in_strides[2][TT_VIT_MAX_RANK];
    int32_t zp[2];          /* [-128, 127] */
    int32_t mu[2];          /* [0, 32768] */
    int32_t k[2];
    int32_t square;
} tt_mul_bwd_params;

tt_status tt_mul_bwd_s16(const tt_mul_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y,
                         const int8_t *other, int16_t *g_x, int32_t *e_x);

/*
 * SUB (numpy: norm_bwd.sub_input_grads): input 0 gets g, input 1 gets -g (int16 wrap, as numpy's
 * astype), same exponent, when same_shape[which] (its unpadded shape is the output's); otherwise
 * the int64 sum over its broadcast axes, normalized. g_x may be g_y for a same_shape input.
 */
typedef struct {
    int32_t out_dims[TT_VIT_MAX_RANK];
    int32_t in_strides[2][TT_VIT_MAX_RANK];
    int32_t same_shape[2];
} tt_sub_bwd_params;

tt_status tt_sub_bwd_s16(const tt_sub_bwd_params *p, int32_t which, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                         int32_t *e_x);

/*
 * MEAN (numpy: norm_bwd.mean_input_grads): g_x [in_dims] element i reads g_y at
 * sum_d i[d] * g_strides[d] (0 on the reduced axes). mu = 32768 (n = 2^k): the mantissas are
 * copied, exponent e_y - k; otherwise acc = g * mu (int32), normalize(acc, e_y - k - 15).
 * g_x must not overlap g_y.
 */
typedef struct {
    int32_t in_dims[TT_VIT_MAX_RANK];
    int32_t g_strides[TT_VIT_MAX_RANK];
    int32_t mu;   /* [1, 32768] */
    int32_t k;    /* [0, 31] */
} tt_mean_last_bwd_params;

tt_status tt_mean_last_bwd_s16(const tt_mean_last_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                               int32_t *e_x);

/*
 * RSQRT (numpy: norm_bwd.rsqrt_input_grads) from the saved int8 output y: u = y - out_zp,
 * acc = -(g * u^3) * mu (int64), normalize(acc, e_y + k - 16). g_x may be g_y (in place).
 */
typedef struct {
    int32_t size;
    int32_t out_zp;   /* [-128, 127] */
    int32_t mu;       /* [0, 32768] */
    int32_t k;
} tt_rsqrt_bwd_params;

tt_status tt_rsqrt_bwd_s16(const tt_rsqrt_bwd_params *p, const int16_t *g_y, int32_t e_y, const int8_t *y,
                           int16_t *g_x, int32_t *e_x);

/*
 * TRANSPOSE (numpy: layout_bwd.transpose_input_grads): g_y gathered by the inverse permutation
 * (p: the gather of the [output shape] gradient into the input's layout), same exponent.
 * g_x must not overlap g_y.
 */
tt_status tt_transpose_bwd_s16(const tt_transpose_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                               int32_t *e_x);

/*
 * STRIDED_SLICE (numpy: layout_bwd.strided_slice_input_grads): g_x [in_size] zeroed, then g_y
 * scattered to the positions the forward read (p: the forward's params), same exponent.
 * g_x must not overlap g_y.
 */
tt_status tt_strided_slice_bwd_s16(const tt_strided_slice_params *p, int32_t in_size, const int16_t *g_y,
                                   int32_t e_y, int16_t *g_x, int32_t *e_x);

/*
 * CONCATENATION (numpy: layout_bwd.concatenation_input_grads), one input per call: g_x
 * [outer][in_len][inner] = g_y [outer][offset .. offset + in_len)[inner] of g_y
 * [outer][out_len][inner], same exponent. g_x must not overlap g_y.
 */
typedef struct {
    int32_t outer, inner;
    int32_t out_len, in_len, offset;
} tt_concat_bwd_params;

tt_status tt_concat_bwd_s16(const tt_concat_bwd_params *p, const int16_t *g_y, int32_t e_y, int16_t *g_x,
                            int32_t *e_x);

/*
 * TOKEN_SELECT (numpy: token_bwd.token_select_input_grads): g_x [tokens][dim] zeroed, then
 * g_x row 0 = g_y row 0 and g_x row idx[i] = g_y row 1 + i (idx: the forward's kept indices,
 * saved), same exponent (heads and p_zp unused). g_x must not overlap g_y.
 */
tt_status tt_token_select_bwd_s16(const tt_token_select_params *p, const int16_t *g_y, int32_t e_y,
                                  const uint8_t *idx, int16_t *g_x, int32_t *e_x);

/* ------------------------------------------------------------- internal: strided walks */

/*
 * Odometer over the outer TT_VIT_MAX_RANK - 1 axes of dims, carrying up to 3 element offsets
 * (strides s[j][axis]). Returns 0 after the last position. Internal to the tt_vit_* sources.
 */
typedef struct {
    int32_t idx[TT_VIT_MAX_RANK];
    int32_t off[3];
} tt_vit_walk;

static inline void tt_vit_walk_init(tt_vit_walk *w) {
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        w->idx[d] = 0;
    }
    w->off[0] = w->off[1] = w->off[2] = 0;
}

static inline int tt_vit_walk_next(tt_vit_walk *w, const int32_t *dims, const int32_t *s0, const int32_t *s1,
                                   const int32_t *s2) {
    for (int32_t d = TT_VIT_MAX_RANK - 2; d >= 0; --d) {
        w->off[0] += s0[d];
        w->off[1] += s1[d];
        w->off[2] += s2[d];
        if (++w->idx[d] < dims[d]) {
            return 1;
        }
        w->idx[d] = 0;
        w->off[0] -= s0[d] * dims[d];
        w->off[1] -= s1[d] * dims[d];
        w->off[2] -= s2[d] * dims[d];
    }
    return 0;
}

/* 1 when every dim is >= 1 and the product fits int32 (its value in *size). */
static inline int tt_vit_dims_ok(const int32_t *dims, int32_t *size) {
    int64_t n = 1;
    for (int32_t d = 0; d < TT_VIT_MAX_RANK; ++d) {
        if (dims[d] < 1) {
            return 0;
        }
        n *= dims[d];
        if (n > TT_INT32_MAX) {
            return 0;
        }
    }
    *size = (int32_t)n;
    return 1;
}

#endif /* TT_VIT_H */
