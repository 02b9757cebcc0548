/*
 * Checkpoint storage of the host target: a plain file, named by the environment variable
 * TT_STORAGE_FILE (or, when it is unset, by -DTT_STORAGE_FILE_DEFAULT="path" at build time;
 * with neither there is no storage: TT_STORAGE_ERR_UNAVAILABLE). The file holds
 * TT_STORAGE_PAGES pages of 4 KiB; a missing or short file is extended with 0xFF. Flash
 * behaviour is emulated (tt_board_storage.h): program ANDs into the old bytes, erase writes
 * 0xFF. Every write is flushed before the call returns.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tt_board_storage.h"

#ifndef TT_STORAGE_PAGES
#define TT_STORAGE_PAGES 64u /* 256 KiB */
#endif
#define TT_STORAGE_PAGE 4096u
#define TT_STORAGE_SIZE (TT_STORAGE_PAGES * TT_STORAGE_PAGE)

static int tt_st_state; /* 0: not tried, 1: open, <0: the error */
static FILE *tt_st_file;
static uint8_t tt_st_buf[TT_STORAGE_PAGE];

static int tt_st_at(uint32_t offset) { return fseek(tt_st_file, (long)offset, SEEK_SET) == 0; }

static int tt_st_open(void) {
    const char *path = getenv("TT_STORAGE_FILE");
    long len;
#ifdef TT_STORAGE_FILE_DEFAULT
    if (path == NULL || path[0] == '\0') {
        path = TT_STORAGE_FILE_DEFAULT;
    }
#endif
    if (path == NULL || path[0] == '\0') {
        return TT_STORAGE_ERR_UNAVAILABLE;
    }
    tt_st_file = fopen(path, "r+b");
    if (tt_st_file == NULL) {
        tt_st_file = fopen(path, "w+b");
        if (tt_st_file == NULL) {
            return TT_STORAGE_ERR_UNAVAILABLE;
        }
    }
    if (fseek(tt_st_file, 0L, SEEK_END) != 0 || (len = ftell(tt_st_file)) < 0) {
        return TT_STORAGE_ERR_IO;
    }
    memset(tt_st_buf, 0xFF, sizeof tt_st_buf);
    while ((unsigned long)len < (unsigned long)TT_STORAGE_SIZE) {
        size_t k = (size_t)((unsigned long)TT_STORAGE_SIZE - (unsigned long)len);
        k = k < sizeof tt_st_buf ? k : sizeof tt_st_buf;
        if (fwrite(tt_st_buf, 1, k, tt_st_file) != k) {
            return TT_STORAGE_ERR_IO;
        }
        len += (long)k;
    }
    return fflush(tt_st_file) == 0 ? TT_STORAGE_OK : TT_STORAGE_ERR_IO;
}

int tt_board_storage_init(void) {
    if (tt_st_state == 0) {
        int s = tt_st_open();
        tt_st_state = s == TT_STORAGE_OK ? 1 : s;
    }
    return tt_st_state == 1 ? TT_STORAGE_OK : tt_st_state;
}

uint32_t tt_board_storage_page_size(void) { return TT_STORAGE_PAGE; }

uint32_t tt_board_storage_pages(void) { return TT_STORAGE_PAGES; }

static int tt_st_range(uint32_t offset, size_t n) {
    return offset <= TT_STORAGE_SIZE && n <= (size_t)(TT_STORAGE_SIZE - offset);
}

int tt_board_storage_erase(uint32_t page) {
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (page >= TT_STORAGE_PAGES) {
        return TT_STORAGE_ERR_RANGE;
    }
    memset(tt_st_buf, 0xFF, sizeof tt_st_buf);
    if (!tt_st_at(page * TT_STORAGE_PAGE) || fwrite(tt_st_buf, 1, TT_STORAGE_PAGE, tt_st_file) != TT_STORAGE_PAGE ||
        fflush(tt_st_file) != 0) {
        return TT_STORAGE_ERR_IO;
    }
    return TT_STORAGE_OK;
}

int tt_board_storage_program(uint32_t offset, const void *data, size_t n) {
    const uint8_t *src = (const uint8_t *)data;
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (!tt_st_range(offset, n) || offset % TT_STORAGE_WRITE_ALIGN != 0u || n % TT_STORAGE_WRITE_ALIGN != 0u) {
        return TT_STORAGE_ERR_RANGE;
    }
    while (n > 0u) {
        size_t k = n < sizeof tt_st_buf ? n : sizeof tt_st_buf, i;
        if (!tt_st_at(offset) || fread(tt_st_buf, 1, k, tt_st_file) != k) {
            return TT_STORAGE_ERR_IO;
        }
        for (i = 0; i < k; ++i) {
            tt_st_buf[i] &= src[i];
        }
        if (!tt_st_at(offset) || fwrite(tt_st_buf, 1, k, tt_st_file) != k || fflush(tt_st_file) != 0) {
            return TT_STORAGE_ERR_IO;
        }
        offset += (uint32_t)k;
        src += k;
        n -= k;
    }
    return TT_STORAGE_OK;
}

int tt_board_storage_read(uint32_t offset, void *data, size_t n) {
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (!tt_st_range(offset, n)) {
        return TT_STORAGE_ERR_RANGE;
    }
    if (n > 0u && (!tt_st_at(offset) || fread(data, 1, n, tt_st_file) != n)) {
        return TT_STORAGE_ERR_IO;
    }
    return TT_STORAGE_OK;
}
