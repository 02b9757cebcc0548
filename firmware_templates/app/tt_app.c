/*
 * tinytrain training application: main() of the training firmware. A command loop over the
 * UART speaking the frame protocol (tt_frame.h, docs/protocol.md): the host identifies the
 * program, sets the learning rate and schedule, streams samples to train on or to evaluate,
 * reads statistics, reads or writes the trained tensors, and saves or loads checkpoints
 * (tt_ckpt.c: two slots in the board's storage, power-loss safe). The host client is
 * host_tools/device.py; host_tools/firmware.py builds this file with a generated program.
 *
 * Boot: the application starts from the compiled initial weights (tt_init(0)) and does NOT
 * load a checkpoint by itself; the host sends LOAD_CKPT when it wants to resume.
 *
 * Every command validates its whole request (payload size, indices, ranges) before it
 * touches any state: a request answered with a status other than OK changed nothing. A
 * retransmitted request (same seq and CRC as the last executed one) is answered from the
 * repeat cache and not executed again, so a TRAIN is never trained twice.
 *
 * C99, no malloc, no stdio; static buffers only (decoder, repeat cache, reply, staged sample).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_app.h"
#include "tt_board.h"
#include "tt_ckpt.h"
#include "tt_frame.h"
#include "tt_model.h"


#ifdef TT_HAS_BOOTLOADER
#include "tt_boot_request.h" /* RESET mode 2: restart into the bootloader */
#endif

#ifndef TT_MODEL_ID
#error "TT_MODEL_ID is not defined (host_tools/firmware.py passes it with -D)"
#endif
#ifndef TT_MODEL_NAME
#error "TT_MODEL_NAME is not defined (host_tools/firmware.py passes it with -D)"
#endif
#ifndef TT_MODEL_SCHEME
#error "TT_MODEL_SCHEME is not defined (host_tools/firmware.py passes it with -D)"
#endif

#if TT_NUM_CLASSES > 0xFFFF || TT_NUM_TRAINED > 0xFFFF
#error "the protocol carries classes and tensor counts as u16"
#endif
#if TT_NUM_CLASSES + 2 > TT_FRAME_MAX_PAYLOAD
#error "EVAL's response (u16 predicted + logits) must fit one frame"
#endif

/* SAVE_CKPT / LOAD_CKPT response payload bytes. */
#define TT_APP_CKPT_RESPONSE 20u

/* Statistics since the last clear (RESET, STATS with TT_APP_STATS_CLEAR). */
typedef struct {
    uint32_t steps;
    uint32_t correct;
    uint32_t evals;
    uint64_t p_label_sum; /* sum of p_label (units of 2^-16) over the steps */
    uint64_t counter_total;
    uint64_t counter_last_step;
    uint64_t counter_last_eval;
} tt_app_stats;

static tt_frame_decoder tt_app_dec;
static tt_frame_cache tt_app_cache;
static uint8_t tt_app_reply[TT_FRAME_MAX_PAYLOAD];
static uint8_t tt_app_bad_frame[TT_FRAME_ENCODED_SIZE(1u)];
static uint8_t tt_app_staged[TT_INPUT_BYTES]; /* SAMPLE_WRITE: samples larger than one frame */
static tt_app_stats tt_app_st;
static uint32_t tt_app_step; /* training steps since the last tt_init */
#ifdef TT_HAS_BOOTLOADER
static int tt_app_reboot; /* RESET mode 2 accepted: restart into the bootloader after the response */
#endif

/* ------------------------------------------------------------------ little-endian fields */

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8));
}

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/* The int32 of two's complement bits u (no implementation-defined conversion). */
static int32_t as_i32(uint32_t u) {
    return u > 0x7FFFFFFFu ? (int32_t)(u - 0x80000000u) - (int32_t)0x7FFFFFFF - 1 : (int32_t)u;
}

static void wr16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}

static void wr32(uint8_t *p, uint32_t v) {
    wr16(p, v & 0xFFFFu);
    wr16(p + 2, (v >> 16) & 0xFFFFu);
}

static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)(v & 0xFFFFFFFFu));
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* Appends a string (at most 255 bytes) at p and returns its length. */
static uint8_t put_str(uint8_t *p, const char *s) {
    size_t n = strlen(s);
    if (n > 255u) {
        n = 255u;
    }
    memcpy(p, s, n);
    return (uint8_t)n;
}

static uint8_t counter_unit(void) {
    const char *u = tt_board_counter_unit();
    if (u[0] == 'i') {
        return TT_APP_UNIT_INSTRUCTIONS;
    }
    return u[0] == 'c' ? TT_APP_UNIT_CYCLES : TT_APP_UNIT_NS;
}

static uint8_t internal(tt_status s, uint8_t *reply, size_t *n) {
    reply[0] = (uint8_t)s;
    *n = 1;
    return TT_FRAME_STATUS_INTERNAL;
}

static uint32_t argmax(const int8_t *logits) {
    uint32_t i, best = 0;
    for (i = 1; i < (uint32_t)TT_NUM_CLASSES; ++i) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* ------------------------------------------------------------------ commands */

static uint8_t cmd_identify(uint32_t len, uint8_t *reply, size_t *n) {
    int32_t i, total = 0;
    uint8_t *s;
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    for (i = 0; i < tt_num_tensors(); ++i) {
        int32_t bytes = 0;
        (void)tt_tensor_info(i, NULL, NULL, &bytes);
        total += bytes;
    }
    reply[0] = TT_APP_ROLE;
    reply[1] = TT_FRAME_VERSION;
    wr16(reply + 2, TT_FRAME_MAX_PAYLOAD);
    wr32(reply + 4, (uint32_t)(TT_MODEL_ID));
    wr32(reply + 8, (uint32_t)TT_INPUT_BYTES);
    wr16(reply + 12, (uint32_t)TT_NUM_CLASSES);
    wr16(reply + 14, (uint32_t)tt_num_tensors());
    wr32(reply + 16, (uint32_t)total);
    wr32(reply + 20, (uint32_t)TT_ARENA_SIZE);
    wr32(reply + 24, tt_board_cycles_resolution());
    reply[28] = counter_unit();
    s = reply + TT_APP_IDENTIFY_FIXED;
    reply[29] = put_str(s, TT_MODEL_NAME);
    s += reply[29];
    reply[30] = put_str(s, TT_MODEL_SCHEME);
    s += reply[30];
    reply[31] = put_str(s, tt_board_name());
    s += reply[31];
    *n = (size_t)(s - reply);
    return TT_FRAME_STATUS_OK;
}

/* The sample of a TRAIN / EVAL: the payload's bytes from `at`, or the staged sample when
 * the payload ends at `at`. NULL when the size is neither. */
static const uint8_t *sample_of(const uint8_t *payload, uint32_t len, uint32_t at) {
    if (len == at) {
        return tt_app_staged;
    }
    if (len == at + (uint32_t)TT_INPUT_BYTES) {
        return payload + at;
    }
    return NULL;
}

static uint8_t cmd_train(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    const uint8_t *sample;
    uint32_t label;
    tt_step_result r = {0, 0};
    tt_status s;
    uint64_t t0, dt;
    if (len < 2u || (sample = sample_of(payload, len, 2u)) == NULL) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    label = rd16(payload);
    if (label >= (uint32_t)TT_NUM_CLASSES) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    t0 = tt_board_cycles();
    s = tt_train_step(sample, (int32_t)label, &r);
    dt = tt_board_cycles() - t0;
    if (s != TT_OK) {
        return internal(s, reply, n);
    }
    tt_app_step += 1u;
    tt_app_st.steps += 1u;
    tt_app_st.correct += (uint32_t)((uint32_t)r.predicted == label);
    tt_app_st.p_label_sum += (uint64_t)(r.p_label < 0 ? 0 : r.p_label);
    tt_app_st.counter_total += dt;
    tt_app_st.counter_last_step = dt;
    wr32(reply, tt_app_step);
    wr32(reply + 4, (uint32_t)r.p_label);
    wr16(reply + 8, (uint32_t)r.predicted & 0xFFFFu);
    reply[10] = (uint8_t)((uint32_t)r.predicted == label);
    reply[11] = 0u;
    *n = TT_APP_TRAIN_RESPONSE;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_eval(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    const uint8_t *sample = sample_of(payload, len, 0u);
    int8_t *logits = (int8_t *)(void *)(reply + 2);
    tt_status s;
    uint64_t t0, dt;
    if (sample == NULL) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    t0 = tt_board_cycles();
    s = tt_infer(sample, logits);
    dt = tt_board_cycles() - t0;
    if (s != TT_OK) {
        return internal(s, reply, n);
    }
    tt_app_st.evals += 1u;
    tt_app_st.counter_last_eval = dt;
    wr16(reply, argmax(logits));
    *n = 2u + (size_t)TT_NUM_CLASSES;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_stats(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    if (len != 1u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    if ((payload[0] & (uint8_t)~TT_APP_STATS_CLEAR) != 0u) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    wr32(reply, tt_app_step);
    wr32(reply + 4, tt_app_st.steps);
    wr32(reply + 8, tt_app_st.correct);
    wr32(reply + 12, tt_app_st.evals);
    wr64(reply + 16, tt_app_st.p_label_sum);
    wr64(reply + 24, tt_app_st.counter_total);
    wr64(reply + 32, tt_app_st.counter_last_step);
    wr64(reply + 40, tt_app_st.counter_last_eval);
    reply[48] = counter_unit();
    *n = TT_APP_STATS_RESPONSE;
    if (payload[0] & TT_APP_STATS_CLEAR) {
        memset(&tt_app_st, 0, sizeof tt_app_st);
    }
    return TT_FRAME_STATUS_OK;
}

/* Checks (tensor, count, offset) of a READ_TENSOR / WRITE_TENSOR header; *ptr = the bytes. */
static uint8_t tensor_range(const uint8_t *hdr, uint8_t **ptr) {
    uint32_t index = rd16(hdr), count = rd16(hdr + 2), offset = rd32(hdr + 4);
    void *base = NULL;
    int32_t bytes = 0;
    if (count > TT_APP_MAX_CHUNK || index >= (uint32_t)tt_num_tensors() ||
        tt_tensor_info((int32_t)index, NULL, &base, &bytes) != TT_OK || bytes < 0 || offset > (uint32_t)bytes ||
        count > (uint32_t)bytes - offset) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    *ptr = (uint8_t *)base + offset;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_read_tensor(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    uint8_t *src = NULL;
    uint8_t st;
    uint32_t count;
    if (len != 8u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    st = tensor_range(payload, &src);
    if (st != TT_FRAME_STATUS_OK) {
        return st;
    }
    count = rd16(payload + 2);
    memcpy(reply, payload, 8u);
    memcpy(reply + 8, src, count);
    *n = 8u + (size_t)count;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_write_tensor(const uint8_t *payload, uint32_t len) {
    uint8_t *dst = NULL;
    uint8_t st;
    if (len < 8u || len != 8u + (uint32_t)rd16(payload + 2)) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    st = tensor_range(payload, &dst);
    if (st != TT_FRAME_STATUS_OK) {
        return st;
    }
    memcpy(dst, payload + 8, len - 8u);
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_tensor_info(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    uint32_t index;
    const char *name = "";
    int32_t bytes = 0;
    size_t k;
    if (len != 2u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    index = rd16(payload);
    if (index >= (uint32_t)tt_num_tensors() || tt_tensor_info((int32_t)index, &name, NULL, &bytes) != TT_OK) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    wr16(reply, index);
    wr32(reply + 2, (uint32_t)bytes);
    k = strlen(name);
    if (k > TT_FRAME_MAX_PAYLOAD - 6u) {
        k = TT_FRAME_MAX_PAYLOAD - 6u;
    }
    memcpy(reply + 6, name, k);
    *n = 6u + k;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_sample_write(const uint8_t *payload, uint32_t len) {
    uint32_t offset, count;
    if (len < 4u || len - 4u > TT_APP_MAX_CHUNK) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    offset = rd32(payload);
    count = len - 4u;
    if (offset > (uint32_t)TT_INPUT_BYTES || count > (uint32_t)TT_INPUT_BYTES - offset) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    memcpy(tt_app_staged + offset, payload + 4, count);
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_reset(const uint8_t *payload, uint32_t len, uint8_t *reply, size_t *n) {
    tt_status s;
    if (len != 5u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    if (payload[0] == TT_APP_RESET_STATS) {
        memset(&tt_app_st, 0, sizeof tt_app_st);
        return TT_FRAME_STATUS_OK;
    }
#ifdef TT_HAS_BOOTLOADER
    if (payload[0] == TT_APP_RESET_BOOT) {
        tt_app_reboot = 1; /* main() restarts once the response is sent */
        return TT_FRAME_STATUS_OK;
    }
#endif
    if (payload[0] != TT_APP_RESET_WEIGHTS) {
        return TT_FRAME_STATUS_BAD_ARG; /* also TT_APP_RESET_BOOT in a build without the bootloader */
    }
    s = tt_init(rd32(payload + 1));
    if (s != TT_OK) {
        return internal(s, reply, n);
    }
    tt_app_step = 0u;
    memset(&tt_app_st, 0, sizeof tt_app_st);
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_set_lr(const uint8_t *payload, uint32_t len) {
    if (len != 8u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    /* tt_set_lr validates before it stores: a refusal changed nothing */
    return tt_set_lr(as_i32(rd32(payload)), as_i32(rd32(payload + 4))) == TT_OK ? TT_FRAME_STATUS_OK
                                                                                  : TT_FRAME_STATUS_BAD_ARG;
}

static uint8_t cmd_set_schedule(const uint8_t *payload, uint32_t len) {
    if (len != 8u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    return tt_set_schedule(as_i32(rd32(payload)), as_i32(rd32(payload + 4))) == TT_OK ? TT_FRAME_STATUS_OK
                                                                                        : TT_FRAME_STATUS_BAD_ARG;
}

/* SAVE_CKPT / LOAD_CKPT response: u32 sequence, u32 step, u32 payload bytes, u32 payload CRC,
 * u8 slot, u8 run-state words, u16 0. */
static uint8_t ckpt_reply(int r, const tt_ckpt_info *info, uint8_t *reply, size_t *n) {
    switch (r) {
    case TT_CKPT_OK:
        break;
    case TT_CKPT_ERR_NONE:
        return TT_FRAME_STATUS_NO_CHECKPOINT;
    case TT_CKPT_ERR_VERIFY:
        return TT_FRAME_STATUS_VERIFY_FAILED;
    case TT_CKPT_ERR_STATE:
        return TT_FRAME_STATUS_BAD_STATE;
    default: /* unavailable, too large, I/O: FLASH_ERROR with the reason */
        reply[0] = (uint8_t)(-r);
        *n = 1u;
        return TT_FRAME_STATUS_FLASH_ERROR;
    }
    wr32(reply, info->sequence);
    wr32(reply + 4, info->step);
    wr32(reply + 8, info->payload_bytes);
    wr32(reply + 12, info->payload_crc);
    reply[16] = (uint8_t)info->slot;
    reply[17] = (uint8_t)info->state_words;
    wr16(reply + 18, 0u);
    *n = TT_APP_CKPT_RESPONSE;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_save_ckpt(uint32_t len, uint8_t *reply, size_t *n) {
    tt_ckpt_info info;
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    memset(&info, 0, sizeof info);
    return ckpt_reply(tt_ckpt_save((uint32_t)(TT_MODEL_ID), tt_app_step, &info), &info, reply, n);
}

static uint8_t cmd_load_ckpt(uint32_t len, uint8_t *reply, size_t *n) {
    tt_ckpt_info info;
    int r;
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    memset(&info, 0, sizeof info);
    r = tt_ckpt_load((uint32_t)(TT_MODEL_ID), &info);
    if (r == TT_CKPT_OK) {
        tt_app_step = info.step;
    }
    return ckpt_reply(r, &info, reply, n);
}

/* Executes one request; the response payload goes to reply[0..*n). */
static uint8_t execute(const tt_frame *req, uint8_t *reply, size_t *n) {
    const uint8_t *p = req->payload;
    uint32_t len = req->length;
    *n = 0;
    switch (req->cmd) {
    case TT_APP_CMD_IDENTIFY:
        return cmd_identify(len, reply, n);
    case TT_APP_CMD_TRAIN:
        return cmd_train(p, len, reply, n);
    case TT_APP_CMD_EVAL:
        return cmd_eval(p, len, reply, n);
    case TT_APP_CMD_STATS:
        return cmd_stats(p, len, reply, n);
    case TT_APP_CMD_READ_TENSOR:
        return cmd_read_tensor(p, len, reply, n);
    case TT_APP_CMD_WRITE_TENSOR:
        return cmd_write_tensor(p, len);
    case TT_APP_CMD_RESET:
        return cmd_reset(p, len, reply, n);
    case TT_APP_CMD_TENSOR_INFO:
        return cmd_tensor_info(p, len, reply, n);
    case TT_APP_CMD_SAMPLE_WRITE:
        return cmd_sample_write(p, len);
    case TT_APP_CMD_SET_LR:
        return cmd_set_lr(p, len);
    case TT_APP_CMD_SET_SCHEDULE:
        return cmd_set_schedule(p, len);
    case TT_APP_CMD_SAVE_CKPT:
        return cmd_save_ckpt(len, reply, n);
    case TT_APP_CMD_LOAD_CKPT:
        return cmd_load_ckpt(len, reply, n);
    default:
        return TT_FRAME_STATUS_UNKNOWN_CMD;
    }
}

int main(void) {
    tt_board_init();
    tt_frame_decoder_init(&tt_app_dec, TT_FRAME_KIND_REQUEST);
    tt_frame_cache_init(&tt_app_cache);
    if (tt_init(0u) != TT_OK) {
        return 3;
    }
    for (;;) {
        int c = tt_board_uart_getc();
        int st;
        if (c < 0) {
            return 0; /* end of input (host builds only) */
        }
        st = tt_frame_feed(&tt_app_dec, (uint8_t)c);
        if (st == TT_FRAME_READY) {
            const tt_frame *req = &tt_app_dec.frame;
            if (!tt_frame_is_repeat(&tt_app_cache, req)) {
                size_t n = 0;
                uint8_t status = execute(req, tt_app_reply, &n);
                if (tt_frame_cache_respond(&tt_app_cache, req, status, tt_app_reply, n) < 0) {
                    continue; /* cannot happen: n <= TT_FRAME_MAX_PAYLOAD */
                }
            }
            tt_board_uart_write(tt_app_cache.response, tt_app_cache.response_len);
#ifdef TT_HAS_BOOTLOADER
            if (tt_app_reboot) {
                tt_boot_request_bootloader(); /* does not return */
            }
#endif
        } else if (st < 0) {
            /* report the dropped frame so that the host retransmits at once */
            uint8_t reason = (uint8_t)(-st);
            int32_t k = tt_frame_encode(tt_app_bad_frame, sizeof tt_app_bad_frame, TT_FRAME_KIND_RESPONSE,
                                        TT_FRAME_SEQ_NONE, 0u, TT_FRAME_STATUS_BAD_FRAME, &reason, 1u);
            if (k > 0) {
                tt_board_uart_write(tt_app_bad_frame, (size_t)k);
            }
        }
    }
}
