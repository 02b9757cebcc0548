/*
 * int8 FULLY_CONNECTED (and the 1x1 convolution fast path): an int8 matrix product with
 * per-output-channel requantization. See tt_fc.h for the arithmetic.
 *
 * Speed: 2 rows x 2 output channels per block (four uint32 accumulators in registers, every
 * loaded input and weight byte used twice); the input offset is added once per loaded byte.
 * All sums are modulo 2^32 (uint32): no signed overflow whatever the depth.
 */
#include "tt_fc.h"

#include "tt_internal.h"

/* C twin of tinytrain.sim.kernels.core_matmul.run_fully_connected (int8 path). */
tt_status tt_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                   const tt_weight_patch *patch, int8_t *out) {
    int mode;
    const tt_status st = tt_fc_check(p, in, w, out, patch, &mode);
    if (st != TT_OK) {
        return st;
    }
    const int32_t k = p->in_c;
    const int32_t cols = p->out_c;
    const int32_t off = -p->in_zp;
    const int32_t zp = p->out_zp;
    const int32_t lo_z = p->act_min - zp;
    const int32_t hi_z = p->act_max - zp;
    const int32_t n = mode == TT_PATCH_NONE ? 0 : patch->n;
    /* (w - w_zp)(x + off) = w (x + off) - w_zp (x + off): the row sum of (x + off) times -w_zp. */
    const uint32_t neg_wzp = (uint32_t)(-p->w_zp);

    int32_t r = 0;
    for (; r < p->rows; r += 2) {
        const int32_t nr = p->rows - r >= 2 ? 2 : 1;
        const int8_t *x0 = in + (size_t)r * (size_t)k;
        const int8_t *x1 = nr == 2 ? x0 + k : x0;
        uint32_t corr0 = 0, corr1 = 0;
        if (neg_wzp != 0u) {
            uint32_t s0 = 0, s1 = 0;
            for (int32_t i = 0; i < k; ++i) {
                s0 += (uint32_t)((int32_t)x0[i] + off);
                s1 += (uint32_t)((int32_t)x1[i] + off);
            }
            corr0 = neg_wzp * s0;
            corr1 = neg_wzp * s1;
        }
        int8_t *y0 = out + (size_t)r * (size_t)cols;
        int8_t *y1 = nr == 2 ? y0 + cols : y0;
        int32_t o = 0;
        if (nr == 2) {
            for (; o + 2 <= cols; o += 2) {
                const int8_t *w0 = w + (size_t)o * (size_t)k;
                const int8_t *w1 = w0 + k;
                uint32_t acc[4] = {0u, 0u, 0u, 0u};
                if (mode == TT_PATCH_PREFIX) {
                    const int8_t *t0 = patch->w_train + (size_t)o * (size_t)n;
                    tt_dot_2x2(x0, x1, off, t0, t0 + n, n, acc);
                    tt_dot_2x2(x0 + n, x1 + n, off, w0 + n, w1 + n, k - n, acc);
                } else {
                    tt_dot_2x2(x0, x1, off, w0, w1, k, acc);
                    if (mode == TT_PATCH_DELTA) {
                        const int8_t *t0 = patch->w_train + (size_t)o * (size_t)n;
                        acc[0] += tt_patch_delta_s8(x0, off, w0, t0, patch->ch, n);
                        acc[1] += tt_patch_delta_s8(x0, off, w1, t0 + n, patch->ch, n);
                        acc[2] += tt_patch_delta_s8(x1, off, w0, t0, patch->ch, n);
                        acc[3] += tt_patch_delta_s8(x1, off, w1, t0 + n, patch->ch, n);
                    }
                }
                const uint32_t b0 = bias != NULL ? (uint32_t)bias[o] : 0u;
                const uint32_t b1 = bias != NULL ? (uint32_t)bias[o + 1] : 0u;
                y0[o] = tt_requant_s8(acc[0] + corr0 + b0, p->mult[o], p->shift[o], zp, lo_z, hi_z);
                y0[o + 1] = tt_requant_s8(acc[1] + corr0 + b1, p->mult[o + 1], p->shift[o + 1], zp, lo_z, hi_z);
                y1[o] = tt_requant_s8(acc[2] + corr1 + b0, p->mult[o], p->shift[o], zp, lo_z, hi_z);
                y1[o + 1] = tt_requant_s8(acc[3] + corr1 + b1, p->mult[o + 1], p->shift[o + 1], zp, lo_z, hi_z);
            }
        }
        for (; o < cols; ++o) {
            const int8_t *wr = w + (size_t)o * (size_t)k;
            const uint32_t b = bias != NULL ? (uint32_t)bias[o] : 0u;
            const int8_t *t = mode == TT_PATCH_NONE ? NULL : patch->w_train + (size_t)o * (size_t)n;
            const uint16_t *ch = mode == TT_PATCH_NONE ? NULL : patch->ch;
            uint32_t a0 = tt_dot_patched_s8(x0, off, wr, k, mode, t, ch, n);
            y0[o] = tt_requant_s8(a0 + corr0 + b, p->mult[o], p->shift[o], zp, lo_z, hi_z);
            if (nr == 2) {
                uint32_t a1 = tt_dot_patched_s8(x1, off, wr, k, mode, t, ch, n);
                y1[o] = tt_requant_s8(a1 + corr1 + b, p->mult[o], p->shift[o], zp, lo_z, hi_z);
            }
        }
    }
    return TT_OK;
}
