/*
 * int8 ADD (see tt_eltwise.h). The numpy twin evaluates the same formula once per pair of
 * input bytes into a 64 KB table at compile time; the device computes it per element.
 */
#include "tt_eltwise.h"

#include "tt_fixedpoint.h"

static int zp_ok(int32_t zp) {
    return zp >= TT_INT8_MIN && zp <= TT_INT8_MAX;
}

/* C twin of tinytrain.sim.kernels.core_elementwise.run_binary (int8 ADD). */
tt_status tt_add_s8(const tt_add_params *p, const int8_t *in1, const int8_t *in2, int8_t *out) {
    if (p == NULL || in1 == NULL || in2 == NULL || out == NULL) {
        return TT_ERR_ARG;
    }
    if (p->size < 0) {
        return TT_ERR_SHAPE;
    }
    if (!zp_ok(p->in1_zp) || !zp_ok(p->in2_zp) || !zp_ok(p->out_zp) || p->left_shift < 0 || p->left_shift > 22 ||
        p->in1_shift < -31 || p->in1_shift > 0 || p->in2_shift < -31 || p->in2_shift > 0 || p->out_shift < -31 ||
        p->out_shift > 31 || p->act_min < TT_INT8_MIN || p->act_max > TT_INT8_MAX || p->act_min > p->act_max) {
        return TT_ERR_ARG;
    }
    const int32_t scale = (int32_t)1 << p->left_shift;
    const int32_t zp = p->out_zp;
    const int32_t lo_z = p->act_min - zp;
    const int32_t hi_z = p->act_max - zp;
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t a = ((int32_t)in1[i] - p->in1_zp) * scale;
        const int32_t b = ((int32_t)in2[i] - p->in2_zp) * scale;
        const int32_t s = tt_mbqm(a, p->in1_mult, p->in1_shift) + tt_mbqm(b, p->in2_mult, p->in2_shift);
        const int32_t v = tt_mbqm(s, p->out_mult, p->out_shift);
        out[i] = (int8_t)(tt_clamp32(v, lo_z, hi_z) + zp);
    }
    return TT_OK;
}
