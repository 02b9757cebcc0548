/*
 * tinytrain runtime: common types and conventions of every kernel.
 *
 * - C99, no malloc, no stdio; every buffer is passed in by the caller (the generated
 *   program hands out pointers into its one statically sized arena or into flash).
 * - Names: tt_<op>_<dtype>() (CMSIS-NN style); small const dims/params structs; each
 *   kernel returns a tt_status (TT_OK or the reason it refused its arguments).
 * - Layouts are TFLite's: activations NHWC with N = 1, CONV_2D filters OHWI, DEPTHWISE
 *   filters 1HWC, FULLY_CONNECTED weights [out][in]; gradients keep their tensor's layout.
 * - Every reference kernel is the twin of one numpy kernel of the simulator
 *   (tinytrain/sim/..., tinytrain/train/kernels/...): the comment above the C function
 *   names the numpy function and the numpy docstring names the C function. Both compute
 *   the same bytes; the tests compare them with np.array_equal.
 * - No implementation-defined behaviour: right shifts of negative values go through
 *   tt_asr32/tt_asr64, int32 wrap-around through unsigned arithmetic (tt_wrap_add32).
 */
#ifndef TT_COMMON_H
#define TT_COMMON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    TT_OK = 0,
    TT_ERR_ARG = 1,    /* a size, shift or pointer outside the kernel's legal range */
    TT_ERR_SHAPE = 2,  /* inconsistent dims */
    TT_ERR_RANGE = 3   /* a value outside the documented range (e.g. a label >= classes) */
} tt_status;

#define TT_INT8_MIN (-128)
#define TT_INT8_MAX 127
#define TT_INT16_MIN (-32768)
#define TT_INT16_MAX 32767
#define TT_INT32_MIN (-2147483647 - 1)
#define TT_INT32_MAX 2147483647

/* Arithmetic (sign-extending) right shift, defined for negative values. 0 <= e < 32. */
static inline int32_t tt_asr32(int32_t x, int e) {
    return x < 0 ? (int32_t)~(~(uint32_t)x >> e) : (int32_t)((uint32_t)x >> e);
}

/* Arithmetic right shift of an int64. 0 <= e < 64. */
static inline int64_t tt_asr64(int64_t x, int e) {
    return x < 0 ? (int64_t)~(~(uint64_t)x >> e) : (int64_t)((uint64_t)x >> e);
}

/* Two's-complement wrap of an int64 to int32 (numpy: fixedpoint.wrap_int32). */
static inline int32_t tt_wrap32(int64_t x) {
    uint32_t u = (uint32_t)(uint64_t)x;
    return u > 0x7FFFFFFFu ? (int32_t)(u - 0x80000000u) - (int32_t)0x7FFFFFFF - 1 : (int32_t)u;
}

/* int32 addition with wrap-around (no signed-overflow UB). */
static inline int32_t tt_wrap_add32(int32_t a, int32_t b) {
    return tt_wrap32((int64_t)a + (int64_t)b);
}

static inline int32_t tt_clamp32(int32_t x, int32_t lo, int32_t hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

static inline int64_t tt_clamp64(int64_t x, int64_t lo, int64_t hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

#endif /* TT_COMMON_H */
