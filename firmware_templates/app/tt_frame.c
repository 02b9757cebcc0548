/*
 * tinytrain serial frame protocol, device side: CRC-32, streaming COBS decoder, encoder and
 * the duplicate-request cache. Twin of host_tools/frame.py (see tt_frame.h, docs/protocol.md).
 */
#include "tt_frame.h"

#include <string.h>

/* CRC-32, reflected polynomial 0xEDB88320, four bits per step (a 64-byte table in flash
 * instead of 1 KB; about 2x slower than a byte table, ~20 cycles per byte on Cortex-M4). */
static const uint32_t tt_crc32_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t tt_frame_crc32(uint32_t crc, const uint8_t *data, size_t n) {
    size_t i;
    crc = ~crc;
    for (i = 0; i < n; i++) {
        crc ^= data[i];
        crc = (crc >> 4) ^ tt_crc32_nibble[crc & 0xFu];
        crc = (crc >> 4) ^ tt_crc32_nibble[crc & 0xFu];
    }
    return ~crc;
}

static uint16_t tt_get_u16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] | (uint16_t)((uint16_t)p[1] << 8));
}

static uint32_t tt_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void tt_decoder_restart(tt_frame_decoder *d) {
    d->len = 0;
    d->code = 0;
    d->remaining = 0;
    d->active = 0;
    d->overflow = 0;
}

void tt_frame_decoder_init(tt_frame_decoder *dec, uint8_t expect_kind) {
    memset(dec, 0, sizeof(*dec));
    dec->expect_kind = expect_kind;
    tt_decoder_restart(dec);
}

static void tt_decoder_push(tt_frame_decoder *d, uint8_t b) {
    if (d->len < TT_FRAME_MAX_DECODED) {
        d->buf[d->len] = b;
        d->len++;
    } else {
        d->overflow = 1;
    }
}

/* Validates the decoded bytes of a frame that just ended, in the order of the Python twin
 * (host_tools.frame.FrameDecoder): oversize, COBS, short, CRC, version, kind, status,
 * length field. */
static int tt_decoder_finish(tt_frame_decoder *d) {
    size_t n = d->len;
    size_t body;
    uint32_t crc;
    uint8_t kind;
    uint16_t length;

    if (d->overflow) {
        return TT_FRAME_ERR_OVERSIZE;
    }
    if (d->remaining != 0) {
        return TT_FRAME_ERR_COBS;
    }
    if (n < TT_FRAME_HEADER_SIZE + TT_FRAME_CRC_SIZE) {
        return TT_FRAME_ERR_SHORT;
    }
    body = n - TT_FRAME_CRC_SIZE;
    crc = tt_frame_crc32(0, d->buf, body);
    if (crc != tt_get_u32(d->buf + body)) {
        return TT_FRAME_ERR_CRC;
    }
    if (d->buf[0] != TT_FRAME_VERSION) {
        return TT_FRAME_ERR_VERSION;
    }
    kind = d->buf[1];
    if (kind != d->expect_kind) {
        return TT_FRAME_ERR_KIND;
    }
    if (kind == TT_FRAME_KIND_REQUEST && d->buf[5] != 0) {
        return TT_FRAME_ERR_STATUS;
    }
    length = tt_get_u16(d->buf + 6);
    if ((size_t)length != body - TT_FRAME_HEADER_SIZE) {
        return TT_FRAME_ERR_LENGTH;
    }
    d->frame.kind = kind;
    d->frame.seq = tt_get_u16(d->buf + 2);
    d->frame.cmd = d->buf[4];
    d->frame.status = d->buf[5];
    d->frame.length = length;
    d->frame.payload = d->buf + TT_FRAME_HEADER_SIZE;
    d->frame.crc = crc;
    return TT_FRAME_READY;
}

int tt_frame_feed(tt_frame_decoder *dec, uint8_t byte) {
    int r;
    if (byte != 0) {
        dec->active = 1;
        if (dec->remaining == 0) {
            /* A code byte. The block before it (unless it was a full 254-byte block)
             * ended with an implicit zero. */
            if (dec->code != 0 && dec->code != 0xFFu) {
                tt_decoder_push(dec, 0);
            }
            dec->code = byte;
            dec->remaining = (uint8_t)(byte - 1u);
        } else {
            tt_decoder_push(dec, byte);
            dec->remaining--;
        }
        return TT_FRAME_NONE;
    }
    if (!dec->active) {
        return TT_FRAME_NONE; /* empty frame (repeated delimiter): ignored */
    }
    r = tt_decoder_finish(dec);
    tt_decoder_restart(dec);
    if (r == TT_FRAME_READY) {
        dec->accepted++;
    } else {
        dec->rejected[-r]++;
    }
    return r;
}

/* Output cursor of the encoder: writes never go beyond cap. */
typedef struct {
    uint8_t *out;
    size_t cap;
    size_t pos;
    size_t code_pos;
    uint8_t code;
    uint8_t open; /* a block is open (its code byte reserved at code_pos) */
    uint8_t full; /* ran out of space */
} tt_cobs_writer;

static void tt_cobs_open(tt_cobs_writer *w) {
    if (w->pos >= w->cap) {
        w->full = 1;
        return;
    }
    w->code_pos = w->pos;
    w->pos++;
    w->code = 1;
    w->open = 1;
}

static void tt_cobs_close(tt_cobs_writer *w) {
    if (w->open) {
        w->out[w->code_pos] = w->code;
        w->open = 0;
    }
}

/* Encodes n more bytes of the COBS input. A block that reaches 254 data bytes is closed at
 * once and the next one is opened only when another byte follows, so a full block at the
 * very end is not followed by an empty one (the canonical encoding). */
static void tt_cobs_put(tt_cobs_writer *w, const uint8_t *data, size_t n) {
    size_t i;
    for (i = 0; i < n && !w->full; i++) {
        uint8_t b = data[i];
        if (!w->open) {
            tt_cobs_open(w);
            if (w->full) {
                return;
            }
        }
        if (b == 0) {
            tt_cobs_close(w);
            tt_cobs_open(w); /* a zero always starts a new block, even at the end */
        } else {
            if (w->pos >= w->cap) {
                w->full = 1;
                return;
            }
            w->out[w->pos] = b;
            w->pos++;
            w->code++;
            if (w->code == 0xFFu) {
                tt_cobs_close(w); /* the next block opens lazily, only if a byte follows */
            }
        }
    }
}

int32_t tt_frame_encode(uint8_t *out, size_t cap, uint8_t kind, uint16_t seq, uint8_t cmd, uint8_t status,
                        const uint8_t *payload, size_t length) {
    uint8_t header[TT_FRAME_HEADER_SIZE];
    uint8_t trailer[TT_FRAME_CRC_SIZE];
    uint32_t crc;
    tt_cobs_writer w;

    if (length > TT_FRAME_MAX_PAYLOAD || kind > TT_FRAME_KIND_RESPONSE ||
        (kind == TT_FRAME_KIND_REQUEST && status != 0) || (payload == NULL && length != 0)) {
        return TT_FRAME_ERR_ARG;
    }
    header[0] = (uint8_t)TT_FRAME_VERSION;
    header[1] = kind;
    header[2] = (uint8_t)(seq & 0xFFu);
    header[3] = (uint8_t)(seq >> 8);
    header[4] = cmd;
    header[5] = status;
    header[6] = (uint8_t)(length & 0xFFu);
    header[7] = (uint8_t)(length >> 8);
    crc = tt_frame_crc32(0, header, sizeof(header));
    if (length != 0) {
        crc = tt_frame_crc32(crc, payload, length);
    }
    trailer[0] = (uint8_t)(crc & 0xFFu);
    trailer[1] = (uint8_t)((crc >> 8) & 0xFFu);
    trailer[2] = (uint8_t)((crc >> 16) & 0xFFu);
    trailer[3] = (uint8_t)(crc >> 24);

    w.out = out;
    w.cap = cap;
    w.pos = 0;
    w.code_pos = 0;
    w.code = 1;
    w.open = 0;
    w.full = 0;
    tt_cobs_open(&w); /* the first block always exists */
    tt_cobs_put(&w, header, sizeof(header));
    if (length != 0) {
        tt_cobs_put(&w, payload, length);
    }
    tt_cobs_put(&w, trailer, sizeof(trailer));
    tt_cobs_close(&w);
    if (w.full || w.pos >= cap) {
        return TT_FRAME_ERR_BUFFER;
    }
    out[w.pos] = 0; /* delimiter */
    return (int32_t)(w.pos + 1u);
}

void tt_frame_cache_init(tt_frame_cache *cache) {
    cache->valid = 0;
    cache->seq = 0;
    cache->crc = 0;
    cache->response_len = 0;
}

int tt_frame_is_repeat(const tt_frame_cache *cache, const tt_frame *req) {
    return cache->valid && cache->seq == req->seq && cache->crc == req->crc;
}

int32_t tt_frame_cache_respond(tt_frame_cache *cache, const tt_frame *req, uint8_t status, const uint8_t *payload,
                               size_t length) {
    int32_t n = tt_frame_encode(cache->response, sizeof(cache->response), TT_FRAME_KIND_RESPONSE, req->seq, req->cmd,
                                status, payload, length);
    if (n < 0) {
        cache->valid = 0;
        cache->response_len = 0;
        return n;
    }
    cache->valid = 1;
    cache->seq = req->seq;
    cache->crc = req->crc;
    cache->response_len = (uint16_t)n;
    return n;
}
