/*
 * Test firmware of the dsp backend (tests/test_c_dsp.py): runs the reference and the dsp
 * version of every replaced kernel on the same pseudo-random inputs (xorshift32, fixed
 * seeds) with the shapes of real MobileNetV2-w0.35 layers, compares the outputs byte for
 * byte on the device and prints one line per kernel:
 *     kernel <name> ref <instructions> dsp <instructions> equal <0|1>
 * (board counter: instructions on the QEMU targets), then "done <failures>". Exit status:
 * 0 when every output agrees, 1 otherwise.
 */
#include <string.h>

#include "tt_board.h"
#include "tt_dsp.h"
#include "tt_fc.h"
#include "tt_fused_block.h"

tt_status tt_dsp_fc_s8(const tt_fc_params *p, const int8_t *in, const int8_t *w, const int32_t *bias,
                       const tt_weight_patch *patch, int8_t *out);
tt_status tt_dsp_fused_block_s8(const tt_fused_block_params *p, const int8_t *input, const int32_t *lead_bias,
                                const int32_t *dw_bias, const int32_t *proj_bias, int8_t *output, uint8_t *lead_mask,
                                uint8_t *dw_mask, uint8_t *proj_mask, void *scratch);
size_t tt_dsp_fused_block_scratch_bytes(const tt_fused_block_params *p);

#define MAX_IN (96 * 96 * 3)
#define MAX_OUT (48 * 48 * 48)
#define MAX_W (1280 * 112)
#define MAX_C 1280
#define MAX_SCRATCH 16384

static uint32_t rng_state;

static uint32_t xorshift32(void) {
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    rng_state = x;
    return x;
}

static void fill_s8(int8_t *v, int32_t n) {
    for (int32_t i = 0; i < n; ++i) {
        v[i] = (int8_t)((int32_t)(xorshift32() >> 24) - 128);
    }
}

/* uniform in [lo, hi] (hi - lo < 2^16) */
static int32_t uniform(int32_t lo, int32_t hi) { return lo + (int32_t)((xorshift32() >> 8) % (uint32_t)(hi - lo + 1)); }

static void fill_requant(int32_t *mult, int32_t *shift, int32_t *bias, int32_t n, int32_t shift_lo, int32_t shift_hi) {
    for (int32_t i = 0; i < n; ++i) {
        mult[i] = (int32_t)(0x40000000u | (xorshift32() >> 2));
        shift[i] = uniform(shift_lo, shift_hi);
        bias[i] = uniform(-20000, 20000);
    }
}

static int8_t input[MAX_IN];
static int8_t out_ref[MAX_OUT];
static int8_t out_dsp[MAX_OUT];
static int8_t w_a[MAX_W];
static int8_t w_b[16384];
static int8_t w_c[16384];
static int32_t mult_a[MAX_C], shift_a[MAX_C], bias_a[MAX_C];
static int32_t mult_b[MAX_C], shift_b[MAX_C], bias_b[MAX_C];
static int32_t mult_c[MAX_C], shift_c[MAX_C], bias_c[MAX_C];
static uint8_t scratch[MAX_SCRATCH];
static int failures;

static void report(const char *name, uint64_t ref, uint64_t dsp, int equal) {
    tt_board_puts("kernel ");
    tt_board_puts(name);
    tt_board_puts(" ref ");
    tt_board_put_u64(ref);
    tt_board_puts(" dsp ");
    tt_board_put_u64(dsp);
    tt_board_puts(" equal ");
    tt_board_put_u32((uint32_t)equal);
    tt_board_puts("\n");
    if (!equal) {
        ++failures;
    }
}

static void bench_fc(const char *name, uint32_t seed, int32_t rows, int32_t k, int32_t cols) {
    rng_state = seed;
    if (rows * k > MAX_IN || cols * k > MAX_W || rows * cols > MAX_OUT || cols > MAX_C) {
        report(name, 0, 0, 0);
        return;
    }
    fill_s8(input, rows * k);
    fill_s8(w_a, cols * k);
    fill_requant(mult_a, shift_a, bias_a, cols, -12, -6);
    const tt_fc_params p = {rows, k, cols, uniform(-128, 127), 0, uniform(-128, 127), -128, 127, mult_a, shift_a};
    memset(out_ref, 0x11, (size_t)(rows * cols));
    memset(out_dsp, 0x22, (size_t)(rows * cols));
    uint64_t t0 = tt_board_cycles();
    tt_status s_ref = tt_fc_s8(&p, input, w_a, bias_a, NULL, out_ref);
    uint64_t t1 = tt_board_cycles();
    tt_status s_dsp = tt_dsp_fc_s8(&p, input, w_a, bias_a, NULL, out_dsp);
    uint64_t t2 = tt_board_cycles();
    int equal = s_ref == TT_OK && s_dsp == TT_OK && memcmp(out_ref, out_dsp, (size_t)(rows * cols)) == 0;
    report(name, t1 - t0, t2 - t1, equal);
}

/* tt_dsp_rq_s8 (the inline-assembly SMLAL path on the device) == tt_requant_s8 on random
 * accumulators (small and full-range), multipliers (edge values included) and shifts. */
#define RQ_N 4096
static uint32_t rq_acc[RQ_N];
static int32_t rq_q[RQ_N], rq_shift[RQ_N];

static void bench_rq(const char *name, uint32_t seed) {
    static const int32_t q_edges[4] = {0x40000000, 0x40000001, 0x7FFFFFFF, 0};
    rng_state = seed;
    for (int32_t i = 0; i < RQ_N; ++i) {
        const uint32_t r = xorshift32();
        rq_acc[i] = (r & 1u) ? xorshift32() : (uint32_t)uniform(-1000000, 1000000);
        rq_q[i] = (r & 6u) == 0u ? q_edges[(r >> 3) & 3u] : (int32_t)(0x40000000u | (xorshift32() >> 2));
        rq_shift[i] = (r & 0x60u) == 0u ? uniform(-31, 3) : uniform(-14, -1);
    }
    const int32_t zp = uniform(-128, 127), lo = uniform(-128, 0), hi = uniform(1, 127);
    uint32_t h_ref = 0, h_dsp = 0;
    int equal = 1;
    uint64_t t0 = tt_board_cycles();
    for (int32_t i = 0; i < RQ_N; ++i) {
        out_ref[i] = tt_requant_s8(rq_acc[i], rq_q[i], (int)rq_shift[i], zp, lo - zp, hi - zp);
    }
    uint64_t t1 = tt_board_cycles();
    for (int32_t i = 0; i < RQ_N; ++i) {
        const tt_dsp_rq r = tt_dsp_rq_make(rq_q[i], rq_shift[i]);
        out_dsp[i] = tt_dsp_rq_s8(rq_acc[i], &r, zp, lo - zp, hi - zp);
    }
    uint64_t t2 = tt_board_cycles();
    for (int32_t i = 0; i < RQ_N; ++i) {
        h_ref = h_ref * 31u + (uint32_t)(uint8_t)out_ref[i];
        h_dsp = h_dsp * 31u + (uint32_t)(uint8_t)out_dsp[i];
        equal &= out_ref[i] == out_dsp[i];
    }
    report(name, t1 - t0, t2 - t1, equal && h_ref == h_dsp);
}

static tt_fb_stage stage(const int8_t *w, const int32_t *mult, const int32_t *shift, int32_t in_zp, int32_t relu6) {
    tt_fb_stage s;
    s.weights = w;
    s.multiplier = mult;
    s.shift = shift;
    s.input_zp = in_zp;
    s.output_zp = relu6 ? -128 : uniform(-20, 20);
    s.act_min = -128;
    s.act_max = relu6 ? uniform(60, 127) : 127;
    s.mask_lo = s.act_min;
    s.mask_hi = s.act_max;
    return s;
}

/* SAME padding of a k = 3 window with stride s over n (TFLite: the odd pixel at the end). */
static tt_fb_padding same_pad(int32_t n, int32_t s, int32_t value) {
    tt_fb_padding pd;
    memset(&pd, 0, sizeof pd);
    int32_t out = (n + s - 1) / s;
    int32_t total = (out - 1) * s + 3 - n;
    if (total < 0) {
        total = 0;
    }
    pd.n_levels = 1;
    pd.level[0].top = total / 2;
    pd.level[0].bottom = total - total / 2;
    pd.level[0].left = total / 2;
    pd.level[0].right = total - total / 2;
    pd.level[0].value = value;
    return pd;
}

/* One block: input h x w x cin; lead: 1x1 expansion to mid (or the 3x3 stride-2 stem
 * when stem != 0); depthwise 3x3 stride s; projection to cout; residual ADD if add. */
static void bench_block(const char *name, uint32_t seed, int32_t h, int32_t w, int32_t cin, int32_t mid, int32_t s,
                        int32_t cout, int stem, int add) {
    rng_state = seed;
    tt_fused_block_params p;
    memset(&p, 0, sizeof p);
    const int32_t mh = stem ? (h + 1) / 2 : h, mw = stem ? (w + 1) / 2 : w;
    const int32_t oh = (mh + s - 1) / s, ow = (mw + s - 1) / s;
    p.in_h = h, p.in_w = w, p.in_c = cin;
    p.mid_h = mh, p.mid_w = mw, p.mid_c = mid;
    p.out_h = oh, p.out_w = ow, p.out_c = cout;
    fill_s8(input, h * w * cin);
    const int32_t kl = stem ? 9 : 1;
    fill_s8(w_a, mid * kl * cin);
    fill_s8(w_b, 9 * mid);
    fill_s8(w_c, cout * mid);
    fill_requant(mult_a, shift_a, bias_a, mid, -11, -7);
    fill_requant(mult_b, shift_b, bias_b, mid, -9, -5);
    fill_requant(mult_c, shift_c, bias_c, cout, -12, -7);
    const int32_t in_zp = uniform(-128, 127);
    p.has_lead = 1;
    p.lead_win.kh = p.lead_win.kw = stem ? 3 : 1;
    p.lead_win.sh = p.lead_win.sw = stem ? 2 : 1;
    p.lead_win.dh = p.lead_win.dw = 1;
    if (stem) {
        p.lead_pad = same_pad(h, 2, in_zp);
    }
    p.lead = stage(w_a, mult_a, shift_a, in_zp, 1);
    p.dw_win.kh = p.dw_win.kw = 3;
    p.dw_win.sh = p.dw_win.sw = s;
    p.dw_win.dh = p.dw_win.dw = 1;
    p.dw_pad = same_pad(mh, s, p.lead.output_zp);
    p.dw = stage(w_b, mult_b, shift_b, p.lead.output_zp, 1);
    p.proj = stage(w_c, mult_c, shift_c, p.dw.output_zp, 0);
    if (add) {
        p.has_add = 1;
        p.add.x_zp = in_zp;
        p.add.x_multiplier = 1518500250;
        p.add.x_shift = -1;
        p.add.p_zp = p.proj.output_zp;
        p.add.p_multiplier = 1073741824;
        p.add.p_shift = 0;
        p.add.left_shift = 20;
        p.add.out_multiplier = 1431655765;
        p.add.out_shift = -19;
        p.add.out_zp = uniform(-10, 10);
        p.add.act_min = -128;
        p.add.act_max = 127;
    }
    const size_t need = tt_fused_block_scratch_bytes(&p);
    const size_t n_out = (size_t)(oh * ow * cout);
    if (need == 0 || need > MAX_SCRATCH || tt_dsp_fused_block_scratch_bytes(&p) != need || n_out > MAX_OUT) {
        report(name, 0, 0, 0);
        return;
    }
    memset(out_ref, 0x11, n_out);
    memset(out_dsp, 0x22, n_out);
    memset(scratch, 0x5A, sizeof scratch);
    uint64_t t0 = tt_board_cycles();
    tt_status s_ref = tt_fused_block_s8(&p, input, bias_a, bias_b, bias_c, out_ref, NULL, NULL, NULL, scratch);
    uint64_t t1 = tt_board_cycles();
    memset(scratch, 0xA5, sizeof scratch);
    uint64_t t2 = tt_board_cycles();
    tt_status s_dsp = tt_dsp_fused_block_s8(&p, input, bias_a, bias_b, bias_c, out_dsp, NULL, NULL, NULL, scratch);
    uint64_t t3 = tt_board_cycles();
    int equal = s_ref == TT_OK && s_dsp == TT_OK && memcmp(out_ref, out_dsp, n_out) == 0;
    report(name, t1 - t0, t3 - t2, equal);
}

int main(void) {
    tt_board_init();
    tt_board_puts("dsp bench on ");
    tt_board_puts(tt_board_name());
    tt_board_puts(" (");
    tt_board_puts(tt_board_counter_unit());
    tt_board_puts(")\n");
    bench_rq("rq_random_a", 21u);
    bench_rq("rq_random_b", 22u);
    /* 1x1 convolutions / FC of MobileNetV2-w0.35 (96 x 96 input) */
    bench_fc("fc_expand_12x12_16to96", 1u, 144, 16, 96);
    bench_fc("fc_project_12x12_96to16", 2u, 144, 96, 16);
    bench_fc("fc_expand_48x48_8to48", 3u, 2304, 8, 48);
    bench_fc("fc_last_3x3_112to1280", 4u, 9, 112, 1280);
    bench_fc("fc_head_1280to10", 5u, 1, 1280, 10);
    bench_fc("fc_odd_7x7_13to5", 6u, 49, 13, 5);
    /* fused blocks */
    bench_block("fb_stem_96x96x3_16_8", 11u, 96, 96, 3, 16, 1, 8, 1, 0);
    bench_block("fb_s2_48x48x8_48_8", 12u, 48, 48, 8, 48, 2, 8, 0, 0);
    bench_block("fb_res_24x24x8_48", 13u, 24, 24, 8, 48, 1, 8, 0, 1);
    bench_block("fb_res_12x12x16_96", 14u, 12, 12, 16, 96, 1, 16, 0, 1);
    bench_block("fb_res_6x6x32_192", 15u, 6, 6, 32, 192, 1, 32, 0, 1);
    bench_block("fb_res_3x3x56_336", 16u, 3, 3, 56, 336, 1, 56, 0, 1);
    bench_block("fb_odd_7x9x5_30_s2", 17u, 7, 9, 5, 30, 2, 7, 0, 0);
    tt_board_puts("done ");
    tt_board_put_u32((uint32_t)failures);
    tt_board_puts("\n");
    return failures == 0 ? 0 : 1;
}
