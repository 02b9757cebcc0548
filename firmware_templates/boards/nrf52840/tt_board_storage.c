/*
 * Checkpoint storage of the nRF52840: the top 256 KiB of its 1 MiB flash (64 pages of
 * 4 KiB from 0x000C0000), erased and written through the NVMC (nRF52840 Product
 * Specification v1.7, section 4.3 "NVMC - Non-volatile memory controller": CONFIG selects
 * read / write / erase, ERASEPAGE erases one page, a 32-bit aligned word store programs
 * a word, READY reports the end of the operation). The CPU halts during an erase (~85 ms).
 * Reads are plain memory reads (the NVMC cache serves instruction fetches only).
 *
 * The firmware's flash budget (linker script FLASH region) must end at TT_STORAGE_BASE.
 * Not run on hardware here: compiled and linked by the tests only.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_board_storage.h"
#include "tt_cortexm.h"

#ifndef TT_STORAGE_BASE
#define TT_STORAGE_BASE 0x000C0000u
#endif
#ifndef TT_STORAGE_PAGES
#define TT_STORAGE_PAGES 64u
#endif
#define TT_STORAGE_PAGE 4096u
#define TT_STORAGE_SIZE (TT_STORAGE_PAGES * TT_STORAGE_PAGE)

#if TT_STORAGE_BASE % 4096u != 0u || TT_STORAGE_BASE + TT_STORAGE_SIZE > 0x00100000u
#error "the storage region must be page-aligned inside the 1 MiB flash"
#endif

#define TT_NVMC_READY TT_REG32(0x4001E400u)
#define TT_NVMC_CONFIG TT_REG32(0x4001E504u)
#define TT_NVMC_ERASEPAGE TT_REG32(0x4001E508u)
#define TT_NVMC_CONFIG_REN 0u
#define TT_NVMC_CONFIG_WEN 1u
#define TT_NVMC_CONFIG_EEN 2u

int tt_board_storage_init(void) { return TT_STORAGE_OK; }

uint32_t tt_board_storage_page_size(void) { return TT_STORAGE_PAGE; }

uint32_t tt_board_storage_pages(void) { return TT_STORAGE_PAGES; }

static int tt_st_range(uint32_t offset, size_t n) {
    return offset <= TT_STORAGE_SIZE && n <= (size_t)(TT_STORAGE_SIZE - offset);
}

static void tt_nvmc_wait(void) {
    while ((TT_NVMC_READY & 1u) == 0u) {
    }
}

static void tt_nvmc_config(uint32_t mode) {
    tt_nvmc_wait();
    TT_NVMC_CONFIG = mode;
    tt_dsb();
}

int tt_board_storage_erase(uint32_t page) {
    if (page >= TT_STORAGE_PAGES) {
        return TT_STORAGE_ERR_RANGE;
    }
    tt_nvmc_config(TT_NVMC_CONFIG_EEN);
    TT_NVMC_ERASEPAGE = TT_STORAGE_BASE + page * TT_STORAGE_PAGE;
    tt_dsb();
    tt_nvmc_config(TT_NVMC_CONFIG_REN);
    return TT_STORAGE_OK;
}

int tt_board_storage_program(uint32_t offset, const void *data, size_t n) {
    const uint8_t *src = (const uint8_t *)data;
    uint32_t i;
    if (!tt_st_range(offset, n) || offset % TT_STORAGE_WRITE_ALIGN != 0u || n % TT_STORAGE_WRITE_ALIGN != 0u) {
        return TT_STORAGE_ERR_RANGE;
    }
    tt_nvmc_config(TT_NVMC_CONFIG_WEN);
    for (i = 0; i < (uint32_t)n; i += 4u) {
        uint32_t w = (uint32_t)src[i] | ((uint32_t)src[i + 1u] << 8) | ((uint32_t)src[i + 2u] << 16) |
                     ((uint32_t)src[i + 3u] << 24);
        TT_REG32(TT_STORAGE_BASE + offset + i) = w;
        tt_dsb();
        tt_nvmc_wait();
    }
    tt_nvmc_config(TT_NVMC_CONFIG_REN);
    return TT_STORAGE_OK;
}

int tt_board_storage_read(uint32_t offset, void *data, size_t n) {
    if (!tt_st_range(offset, n)) {
        return TT_STORAGE_ERR_RANGE;
    }
    if (n > 0u) {
        memcpy(data, (const void *)(uintptr_t)(TT_STORAGE_BASE + offset), n);
    }
    return TT_STORAGE_OK;
}
