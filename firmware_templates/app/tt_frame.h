/*
 * tinytrain serial frame protocol, device side (see docs/protocol.md).
 *
 * Twin of host_tools/frame.py: both parsers accept exactly the same frames and decode the
 * same fields (tests/test_frame.py feeds both the same fuzzed byte streams).
 *
 * On the wire a frame is   COBS(body || crc32_le(body)) 0x00
 * body = u8 version | u8 kind | u16 seq (LE) | u8 cmd | u8 status | u16 length (LE) | payload[length]
 *
 * C99, no malloc, no stdio; only <stdint.h>, <stddef.h> and <string.h>. Every buffer is
 * fixed-size (the macros below): a decoder (~1.1 KB) and a repeat cache (~1.1 KB) are
 * meant to be static objects of the command loop.
 */
#ifndef TT_FRAME_H
#define TT_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define TT_FRAME_VERSION 1u
#define TT_FRAME_HEADER_SIZE 8u
#define TT_FRAME_CRC_SIZE 4u
/* Largest payload: a 1024-byte data chunk (weights, image) plus an 8-byte chunk header;
 * a 28x28 uint8 sample (784 bytes) plus its label fits in one TRAIN request. */
#define TT_FRAME_MAX_PAYLOAD 1032u
#define TT_FRAME_MAX_BODY (TT_FRAME_HEADER_SIZE + TT_FRAME_MAX_PAYLOAD)
/* Body plus CRC: the most bytes a decoder stores for one frame. */
#define TT_FRAME_MAX_DECODED (TT_FRAME_MAX_BODY + TT_FRAME_CRC_SIZE)
/* Most bytes on the wire for a frame with an n-byte payload, delimiter included: COBS adds
 * one code byte per 254 data bytes plus one. */
#define TT_FRAME_ENCODED_SIZE(n) \
    ((n) + TT_FRAME_HEADER_SIZE + TT_FRAME_CRC_SIZE + ((n) + TT_FRAME_HEADER_SIZE + TT_FRAME_CRC_SIZE) / 254u + 2u)
#define TT_FRAME_MAX_ENCODED TT_FRAME_ENCODED_SIZE(TT_FRAME_MAX_PAYLOAD)

/* Field `kind`. */
#define TT_FRAME_KIND_REQUEST 0u  /* host -> device */
#define TT_FRAME_KIND_RESPONSE 1u /* device -> host */

/* The seq of an unsolicited BAD_FRAME response; hosts never use it for a request. */
#define TT_FRAME_SEQ_NONE 0xFFFFu

/* Field `status` of a response (0 in every request). */
#define TT_FRAME_STATUS_OK 0u
#define TT_FRAME_STATUS_BAD_FRAME 1u     /* a frame was dropped; payload: u8 reject reason */
#define TT_FRAME_STATUS_UNKNOWN_CMD 2u   /* no such command (in this firmware: app or bootloader) */
#define TT_FRAME_STATUS_BAD_LENGTH 3u    /* payload size wrong for the command */
#define TT_FRAME_STATUS_BAD_ARG 4u       /* an argument out of range (tensor id, offset, label, ...) */
#define TT_FRAME_STATUS_BUSY 5u          /* cannot run now; retry later with a new seq */
#define TT_FRAME_STATUS_BAD_STATE 6u     /* not allowed in the current state (e.g. boot without a verified image) */
#define TT_FRAME_STATUS_FLASH_ERROR 7u   /* erase / program failed */
#define TT_FRAME_STATUS_VERIFY_FAILED 8u /* CRC of an image or checkpoint does not match */
#define TT_FRAME_STATUS_NO_CHECKPOINT 9u /* no valid checkpoint slot */
#define TT_FRAME_STATUS_INTERNAL 10u     /* a kernel refused its arguments (a tt_status != TT_OK) */

/* Result of tt_frame_feed / tt_frame_encode. A negative value is the reason a frame was
 * dropped (its absolute value is the reject reason, the u8 payload of a BAD_FRAME). */
typedef enum {
    TT_FRAME_NONE = 0,            /* byte consumed, no frame ended (or an empty frame) */
    TT_FRAME_READY = 1,           /* dec->frame holds a valid frame */
    TT_FRAME_ERR_COBS = -1,       /* the delimiter came inside a COBS block */
    TT_FRAME_ERR_OVERSIZE = -2,   /* more than TT_FRAME_MAX_DECODED decoded bytes */
    TT_FRAME_ERR_SHORT = -3,      /* fewer than header + CRC bytes */
    TT_FRAME_ERR_CRC = -4,        /* CRC-32 mismatch */
    TT_FRAME_ERR_VERSION = -5,    /* version != TT_FRAME_VERSION */
    TT_FRAME_ERR_KIND = -6,       /* not the kind this decoder expects */
    TT_FRAME_ERR_STATUS = -7,     /* a request with a non-zero status */
    TT_FRAME_ERR_LENGTH = -8,     /* length field != actual payload size */
    TT_FRAME_ERR_BUFFER = -9,     /* tt_frame_encode: the output buffer is too small */
    TT_FRAME_ERR_ARG = -10        /* tt_frame_encode: payload too long or kind/status invalid */
} tt_frame_result;

/* Number of reject reasons counted by the decoder (indices 1..8 of tt_frame_decoder.rejected). */
#define TT_FRAME_N_REASONS 9

/* A decoded frame. `payload` points into the decoder's buffer: valid until the next
 * tt_frame_feed call. `crc` is the frame's CRC-32 (identifies the request in the repeat cache). */
typedef struct {
    uint8_t kind;
    uint8_t cmd;
    uint8_t status;
    uint16_t seq;
    uint16_t length;
    const uint8_t *payload;
    uint32_t crc;
} tt_frame;

/* Byte-at-a-time decoder. Memory is fixed: a stream without delimiter is counted as one
 * oversize frame once the delimiter finally comes, whatever its length. */
typedef struct {
    uint8_t buf[TT_FRAME_MAX_DECODED];
    uint16_t len;          /* decoded bytes of the current frame (saturates at the buffer size) */
    uint8_t code;          /* COBS code of the current block, 0 before the first block */
    uint8_t remaining;     /* data bytes still to come in the current block */
    uint8_t active;        /* a non-zero byte came since the last delimiter */
    uint8_t overflow;      /* the current frame exceeded TT_FRAME_MAX_DECODED */
    uint8_t expect_kind;   /* TT_FRAME_KIND_REQUEST on a device */
    tt_frame frame;        /* the last frame returned with TT_FRAME_READY */
    uint32_t accepted;     /* frames returned with TT_FRAME_READY */
    uint32_t rejected[TT_FRAME_N_REASONS]; /* dropped frames by reason (index = -result) */
} tt_frame_decoder;

/* CRC-32 (IEEE 802.3, reflected, init and final xor 0xFFFFFFFF: zlib.crc32) of n bytes,
 * continuing from `crc` (pass 0 to start). */
uint32_t tt_frame_crc32(uint32_t crc, const uint8_t *data, size_t n);

void tt_frame_decoder_init(tt_frame_decoder *dec, uint8_t expect_kind);

/* Feeds one received byte. Returns TT_FRAME_READY when it completed a valid frame (then
 * dec->frame is set), TT_FRAME_NONE when no frame ended, or a TT_FRAME_ERR_* (negative)
 * when a frame ended and was dropped. Never fails otherwise. */
int tt_frame_feed(tt_frame_decoder *dec, uint8_t byte);

/* Writes COBS(body || crc) 0x00 into out[0..cap) and returns the number of bytes written
 * (at most TT_FRAME_ENCODED_SIZE(length)), or TT_FRAME_ERR_BUFFER if cap is too small
 * (out may then be partly written, never beyond cap), or TT_FRAME_ERR_ARG if length >
 * TT_FRAME_MAX_PAYLOAD, kind > 1, or a request has a non-zero status. `payload` may be
 * NULL when length is 0; it must not overlap `out`. */
int32_t tt_frame_encode(uint8_t *out, size_t cap, uint8_t kind, uint16_t seq, uint8_t cmd, uint8_t status,
                        const uint8_t *payload, size_t length);

/* The device's duplicate-request filter: the last executed request (seq and CRC) and
 * its encoded response. A request is a repeat when both its seq and its CRC equal the
 * last executed one's: it is answered with `response` and not executed again. */
typedef struct {
    uint8_t valid;
    uint16_t seq;
    uint32_t crc;
    uint16_t response_len;
    uint8_t response[TT_FRAME_MAX_ENCODED];
} tt_frame_cache;

void tt_frame_cache_init(tt_frame_cache *cache);

/* 1 if `req` repeats the last executed request (send cache->response, don't execute). */
int tt_frame_is_repeat(const tt_frame_cache *cache, const tt_frame *req);

/* After executing `req`: encodes the response (kind RESPONSE, req's seq and cmd) into
 * cache->response, records req as the last executed request and returns the number of
 * bytes to send (cache->response), or TT_FRAME_ERR_ARG (length > TT_FRAME_MAX_PAYLOAD or
 * payload NULL with a non-zero length; the cache is then invalidated). */
int32_t tt_frame_cache_respond(tt_frame_cache *cache, const tt_frame *req, uint8_t status, const uint8_t *payload,
                               size_t length);

#endif /* TT_FRAME_H */
