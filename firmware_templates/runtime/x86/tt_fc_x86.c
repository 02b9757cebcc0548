/*
 * int8 FULLY_CONNECTED (and the 1x1 path of tt_conv_s8) on x86-64 (AVX2), host backend:
 * replaces src/tt_fc.c (see x86/README.md); same function, same bytes. The product runs
 * through the x86 GEMM of tt_x86.h (rows gathered as int16 in chunks, the weights minus
 * the weights zero point widened to int16 with the patch written over them); depths above
 * TT_X86_MAX_K: the dsp kernel. Without AVX2 this file is exactly dsp/tt_fc_dsp.c.
 * C twin of tinytrain.sim.kernels.core_matmul.run_fully_connected (int8 path).
 */
#include "tt_x86.h"

#if !TT_X86_AVX2

#include "../dsp/tt_fc_dsp.c"

#else

#include "tt_fc.h"
#include "tt_internal.h"

#define tt_fc_s8 tt_x86_dsp_fc_s8
tt_status tt_x86_dsp_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                           const tt_weight_patch *patch, int8_t *out);
#include "../dsp/tt_fc_dsp.c"
#undef tt_fc_s8

tt_status tt_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                   const tt_weight_patch *patch, int8_t *out) {
    int mode;
    const tt_status st = tt_fc_check(p, in, w, out, patch, &mode);
    if (st != TT_OK) {
        return st;
    }
    if (p->in_c > TT_X86_MAX_K || p->rows == 0 || p->out_c == 0) {
        return tt_x86_dsp_fc_s8(p, in, w, bias, patch, out);
    }
    const int patched = mode != TT_PATCH_NONE;
    const x86_gemm g = {p->in_c,
                        (p->in_c + 15) & ~15,
                        p->out_c,
                        w,
                        bias,
                        (uint32_t)(-p->in_zp),
                        p->mult,
                        p->shift,
                        p->out_zp,
                        p->act_min - p->out_zp,
                        p->act_max - p->out_zp,
                        p->in_c,
                        patched ? patch->w_train : NULL,
                        patched ? patch->ch : NULL,
                        patched ? patch->n : 0,
                        p->w_zp};
    x86_gemm_pixels(&g, p->rows, 1, p->in_c, in, (size_t)p->in_c, 0, out, (size_t)p->out_c);
    return TT_OK;
}

#endif /* TT_X86_AVX2 */
