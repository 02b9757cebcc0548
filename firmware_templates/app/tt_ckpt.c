/*
 * tinytrain training application: power-loss-safe checkpoints (tt_ckpt.h; format in
 * docs/protocol.md, "Checkpoints"). C99, no malloc: one 256-byte static buffer; the payload
 * streams between the arena's trained tensors and the storage.
 *
 * Run state: the generated program keeps its PRNG, step, learning rate and schedule in the
 * arena behind its API. When tt_model.h defines TT_RUN_STATE_WORDS with
 *   tt_status tt_get_run_state(int32_t *words);        (TT_RUN_STATE_WORDS words)
 *   tt_status tt_set_run_state(const int32_t *words);  (validates before it stores)
 * the checkpoint carries it; without them the payload holds n = 0 words (the host sets the
 * learning rate and schedule again after a load).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_board_storage.h"
#include "tt_ckpt.h"
#include "tt_frame.h"
#include "tt_model.h"

#ifdef TT_RUN_STATE_WORDS
#define TT_CKPT_STATE_WORDS TT_RUN_STATE_WORDS
#else
#define TT_CKPT_STATE_WORDS 0
#endif

#define TT_CKPT_BUF 256u
#if TT_CKPT_BUF % TT_STORAGE_WRITE_ALIGN != 0 || TT_CKPT_HEADER_SIZE % TT_STORAGE_WRITE_ALIGN != 0
#error "the checkpoint buffer and header must be multiples of the storage write alignment"
#endif
#if 8 + 4 * TT_CKPT_STATE_WORDS > TT_CKPT_BUF
#error "the payload's prefix (step, run state) must fit the checkpoint buffer"
#endif

static uint8_t tt_ckpt_buf[TT_CKPT_BUF];

typedef struct {
    uint32_t base;     /* slot's byte offset in the region */
    uint32_t capacity; /* bytes of the slot */
} tt_ckpt_slot;

/* A payload writer: bytes are staged in tt_ckpt_buf and programmed in TT_CKPT_BUF pieces. */
typedef struct {
    uint32_t at; /* storage offset of tt_ckpt_buf[0] */
    uint32_t fill;
    uint32_t crc;
    int status;
} tt_ckpt_writer;

static uint32_t ck_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void ck_wr32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static int ck_from_storage(int s) {
    return s == TT_STORAGE_ERR_UNAVAILABLE ? TT_CKPT_ERR_UNAVAILABLE : TT_CKPT_ERR_IO;
}

static tt_ckpt_slot ck_slot_of(uint32_t i) {
    tt_ckpt_slot s;
    uint32_t pages = tt_board_storage_pages() / TT_CKPT_SLOTS;
    s.capacity = pages * tt_board_storage_page_size();
    s.base = i * s.capacity;
    return s;
}

/* Bytes of this program's payload. */
static uint32_t ck_payload_bytes(void) {
    uint32_t total = 8u + 4u * (uint32_t)TT_CKPT_STATE_WORDS;
    int32_t i;
    for (i = 0; i < tt_num_tensors(); ++i) {
        int32_t bytes = 0;
        (void)tt_tensor_info(i, NULL, NULL, &bytes);
        total += (uint32_t)(bytes < 0 ? 0 : bytes);
    }
    return total;
}

/* ------------------------------------------------------------------ validation */

/* Reads and checks slot i's header and its payload's CRC; 1 if valid (then *info describes it). */
static int ck_slot_valid(uint32_t i, uint32_t model_id, tt_ckpt_info *info) {
    tt_ckpt_slot sl = ck_slot_of(i);
    uint8_t h[TT_CKPT_HEADER_SIZE];
    uint32_t len, crc = 0, off;
    if (tt_board_storage_read(sl.base, h, sizeof h) != TT_STORAGE_OK) {
        return 0;
    }
    len = ck_rd32(h + 16);
    if (sl.capacity < TT_CKPT_HEADER_SIZE || ck_rd32(h) != TT_CKPT_MAGIC || ck_rd32(h + 4) != TT_CKPT_VERSION ||
        ck_rd32(h + 28) != tt_frame_crc32(0u, h, 28u) || ck_rd32(h + 8) != model_id || len != ck_payload_bytes() ||
        len > sl.capacity - TT_CKPT_HEADER_SIZE || ck_rd32(h + 24) != (uint32_t)TT_CKPT_STATE_WORDS) {
        return 0;
    }
    for (off = 0; off < len; off += TT_CKPT_BUF) {
        uint32_t k = len - off < TT_CKPT_BUF ? len - off : TT_CKPT_BUF;
        if (tt_board_storage_read(sl.base + TT_CKPT_HEADER_SIZE + off, tt_ckpt_buf, k) != TT_STORAGE_OK) {
            return 0;
        }
        if (off == 0u) {
            info->step = ck_rd32(tt_ckpt_buf);
        }
        crc = tt_frame_crc32(crc, tt_ckpt_buf, k);
    }
    if (crc != ck_rd32(h + 20)) {
        return 0;
    }
    info->sequence = ck_rd32(h + 12);
    info->slot = i;
    info->payload_bytes = len;
    info->payload_crc = crc;
    info->state_words = (uint32_t)TT_CKPT_STATE_WORDS;
    return 1;
}

/* The newest valid slot (highest sequence number); -1 if none. */
static int ck_newest(uint32_t model_id, tt_ckpt_info *best) {
    int found = -1;
    uint32_t i;
    for (i = 0; i < TT_CKPT_SLOTS; ++i) {
        tt_ckpt_info c;
        memset(&c, 0, sizeof c);
        if (ck_slot_valid(i, model_id, &c) && (found < 0 || c.sequence > best->sequence)) {
            *best = c;
            found = (int)i;
        }
    }
    return found;
}

/* ------------------------------------------------------------------ save */

static void ck_writer_flush(tt_ckpt_writer *w) {
    uint32_t n = w->fill;
    int s;
    if (w->status != TT_CKPT_OK || n == 0u) {
        return;
    }
    while (n % TT_STORAGE_WRITE_ALIGN != 0u) {
        tt_ckpt_buf[n++] = 0xFFu; /* padding: left erased */
    }
    s = tt_board_storage_program(w->at, tt_ckpt_buf, n);
    if (s != TT_STORAGE_OK) {
        w->status = ck_from_storage(s);
    }
    w->at += w->fill;
    w->fill = 0;
}

static void ck_writer_put(tt_ckpt_writer *w, const uint8_t *data, uint32_t n) {
    w->crc = tt_frame_crc32(w->crc, data, n);
    while (n > 0u && w->status == TT_CKPT_OK) {
        uint32_t k = TT_CKPT_BUF - w->fill;
        k = k < n ? k : n;
        memcpy(tt_ckpt_buf + w->fill, data, k);
        w->fill += k;
        data += k;
        n -= k;
        if (w->fill == TT_CKPT_BUF) {
            ck_writer_flush(w);
        }
    }
}

/* CRC-32 of n stored bytes at offset (0 and *ok = 0 on a read error). */
static uint32_t ck_stored_crc(uint32_t offset, uint32_t n, int *ok) {
    uint32_t crc = 0, off;
    for (off = 0; off < n; off += TT_CKPT_BUF) {
        uint32_t k = n - off < TT_CKPT_BUF ? n - off : TT_CKPT_BUF;
        if (tt_board_storage_read(offset + off, tt_ckpt_buf, k) != TT_STORAGE_OK) {
            *ok = 0;
            return 0u;
        }
        crc = tt_frame_crc32(crc, tt_ckpt_buf, k);
    }
    *ok = 1;
    return crc;
}

int tt_ckpt_save(uint32_t model_id, uint32_t step, tt_ckpt_info *info) {
    tt_ckpt_info prev;
    tt_ckpt_slot sl;
    tt_ckpt_writer w;
    uint8_t word[4];
    uint8_t h[TT_CKPT_HEADER_SIZE];
    uint32_t len = ck_payload_bytes(), target, seq, page, pages, first, page_size = tt_board_storage_page_size();
    int32_t i;
    int s = tt_board_storage_init(), ok = 0;
    if (s != TT_STORAGE_OK) {
        return ck_from_storage(s);
    }
    memset(&prev, 0, sizeof prev);
    target = ck_newest(model_id, &prev) == 0 ? 1u : 0u; /* the slot not holding the newest checkpoint */
    seq = prev.sequence + 1u;
    sl = ck_slot_of(target);
    if (sl.capacity < TT_CKPT_HEADER_SIZE || len > sl.capacity - TT_CKPT_HEADER_SIZE) {
        return TT_CKPT_ERR_SIZE;
    }
    /* 1. erase the pages the new checkpoint occupies (the header's page first) */
    first = sl.base / page_size;
    pages = (TT_CKPT_HEADER_SIZE + len + page_size - 1u) / page_size;
    for (page = first; page < first + pages; ++page) {
        s = tt_board_storage_erase(page);
        if (s != TT_STORAGE_OK) {
            return ck_from_storage(s);
        }
    }
    /* 2. the payload, then read it back */
    w.at = sl.base + TT_CKPT_HEADER_SIZE;
    w.fill = 0;
    w.crc = 0;
    w.status = TT_CKPT_OK;
    ck_wr32(word, step);
    ck_writer_put(&w, word, 4u);
    ck_wr32(word, (uint32_t)TT_CKPT_STATE_WORDS);
    ck_writer_put(&w, word, 4u);
#ifdef TT_RUN_STATE_WORDS
    {
        int32_t state[TT_RUN_STATE_WORDS];
        uint32_t k;
        if (tt_get_run_state(state) != TT_OK) {
            return TT_CKPT_ERR_STATE;
        }
        for (k = 0; k < (uint32_t)TT_RUN_STATE_WORDS; ++k) {
            ck_wr32(word, (uint32_t)state[k]);
            ck_writer_put(&w, word, 4u);
        }
    }
#endif
    for (i = 0; i < tt_num_tensors(); ++i) {
        void *ptr = NULL;
        int32_t bytes = 0;
        if (tt_tensor_info(i, NULL, &ptr, &bytes) == TT_OK && bytes > 0) {
            ck_writer_put(&w, (const uint8_t *)ptr, (uint32_t)bytes);
        }
    }
    ck_writer_flush(&w);
    if (w.status != TT_CKPT_OK) {
        return w.status;
    }
    if (ck_stored_crc(sl.base + TT_CKPT_HEADER_SIZE, len, &ok) != w.crc || !ok) {
        return ok ? TT_CKPT_ERR_VERIFY : TT_CKPT_ERR_IO;
    }
    /* 3. the header: the commit record */
    ck_wr32(h, TT_CKPT_MAGIC);
    ck_wr32(h + 4, TT_CKPT_VERSION);
    ck_wr32(h + 8, model_id);
    ck_wr32(h + 12, seq);
    ck_wr32(h + 16, len);
    ck_wr32(h + 20, w.crc);
    ck_wr32(h + 24, (uint32_t)TT_CKPT_STATE_WORDS);
    ck_wr32(h + 28, tt_frame_crc32(0u, h, 28u));
    s = tt_board_storage_program(sl.base, h, sizeof h);
    if (s != TT_STORAGE_OK) {
        return ck_from_storage(s);
    }
    memset(info, 0, sizeof *info);
    if (!ck_slot_valid(target, model_id, info) || info->sequence != seq) {
        return TT_CKPT_ERR_VERIFY;
    }
    return TT_CKPT_OK;
}

/* ------------------------------------------------------------------ load */

int tt_ckpt_load(uint32_t model_id, tt_ckpt_info *info) {
    tt_ckpt_info best;
    tt_ckpt_slot sl;
    uint32_t at, crc = 0, prefix = 8u + 4u * (uint32_t)TT_CKPT_STATE_WORDS;
    int32_t i;
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return ck_from_storage(s);
    }
    memset(&best, 0, sizeof best);
    if (ck_newest(model_id, &best) < 0) {
        return TT_CKPT_ERR_NONE;
    }
    /* validated: apply. First the run state (the program validates it before it stores
     * anything), then the tensors, recomputing the CRC on the way. */
    sl = ck_slot_of(best.slot);
    at = sl.base + TT_CKPT_HEADER_SIZE;
    if (tt_board_storage_read(at, tt_ckpt_buf, prefix) != TT_STORAGE_OK) {
        return TT_CKPT_ERR_IO;
    }
    crc = tt_frame_crc32(crc, tt_ckpt_buf, prefix);
#ifdef TT_RUN_STATE_WORDS
    {
        int32_t state[TT_RUN_STATE_WORDS];
        uint32_t k;
        for (k = 0; k < (uint32_t)TT_RUN_STATE_WORDS; ++k) {
            uint32_t u = ck_rd32(tt_ckpt_buf + 8u + 4u * k);
            state[k] = u > 0x7FFFFFFFu ? (int32_t)(u - 0x80000000u) - (int32_t)0x7FFFFFFF - 1 : (int32_t)u;
        }
        if (tt_set_run_state(state) != TT_OK) {
            return TT_CKPT_ERR_STATE;
        }
    }
#endif
    at += prefix;
    for (i = 0; i < tt_num_tensors(); ++i) {
        void *ptr = NULL;
        int32_t bytes = 0;
        if (tt_tensor_info(i, NULL, &ptr, &bytes) == TT_OK && bytes > 0) {
            if (tt_board_storage_read(at, ptr, (size_t)bytes) != TT_STORAGE_OK) {
                return TT_CKPT_ERR_IO;
            }
            crc = tt_frame_crc32(crc, (const uint8_t *)ptr, (size_t)bytes);
            at += (uint32_t)bytes;
        }
    }
    *info = best;
    return crc == best.payload_crc ? TT_CKPT_OK : TT_CKPT_ERR_VERIFY;
}
