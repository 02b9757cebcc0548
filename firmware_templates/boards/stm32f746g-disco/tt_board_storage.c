/*
 * Checkpoint storage of the STM32F746G-DISCO: flash sectors 6 and 7 of the STM32F746NG
 * (256 KiB each, 0x08080000-0x080FFFFF, the last 512 KiB of the 1 MiB single-bank flash),
 * erased and programmed through the flash interface registers (RM0385 section 3 "Embedded
 * Flash memory": 3.3.2 unlocking, 3.3.5 sector erase, 3.3.6 programming, 3.7 registers).
 * One "page" of tt_board_storage.h is one 256 KiB sector (erase takes ~1-2 s, the CPU stalls
 * on flash reads meanwhile); programming is by 32-bit word (PSIZE x32, valid at 2.7-3.6 V,
 * the DISCO board's 3.3 V). Reads are plain memory reads; the D-cache lines of a changed
 * range are invalidated by address (the flash is write-through: no line is ever dirty).
 *
 * The firmware's flash budget (linker script FLASH region) must end at TT_STORAGE_BASE.
 * Not run on hardware here: compiled and linked by the tests only.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_board_storage.h"
#include "tt_cortexm.h"

#ifndef TT_STORAGE_FIRST_SECTOR
#define TT_STORAGE_FIRST_SECTOR 6u
#endif
#ifndef TT_STORAGE_PAGES
#define TT_STORAGE_PAGES 2u
#endif
#define TT_STORAGE_BASE (0x08040000u + (TT_STORAGE_FIRST_SECTOR - 5u) * 0x40000u) /* sectors 5..7: 256 KiB */
#define TT_STORAGE_PAGE 0x40000u
#define TT_STORAGE_SIZE (TT_STORAGE_PAGES * TT_STORAGE_PAGE)

#if TT_STORAGE_FIRST_SECTOR < 5u || TT_STORAGE_FIRST_SECTOR + TT_STORAGE_PAGES > 8u
#error "the storage region must be among the 256 KiB sectors 5..7"
#endif

/* Flash interface (RM0385 3.7) */
#define TT_FLASH_KEYR TT_REG32(0x40023C04u)
#define TT_FLASH_SR TT_REG32(0x40023C0Cu)
#define TT_FLASH_CR TT_REG32(0x40023C10u)
#define TT_FLASH_KEY1 0x45670123u
#define TT_FLASH_KEY2 0xCDEF89ABu
#define TT_FLASH_SR_EOP (1u << 0)
#define TT_FLASH_SR_OPERR (1u << 1)
#define TT_FLASH_SR_WRPERR (1u << 4)
#define TT_FLASH_SR_PGAERR (1u << 5)
#define TT_FLASH_SR_PGPERR (1u << 6)
#define TT_FLASH_SR_ERSERR (1u << 7)
#define TT_FLASH_SR_BSY (1u << 16)
#define TT_FLASH_SR_ERRORS                                                                                  \
    (TT_FLASH_SR_OPERR | TT_FLASH_SR_WRPERR | TT_FLASH_SR_PGAERR | TT_FLASH_SR_PGPERR | TT_FLASH_SR_ERSERR)
#define TT_FLASH_CR_PG (1u << 0)
#define TT_FLASH_CR_SER (1u << 1)
#define TT_FLASH_CR_SNB(n) ((uint32_t)(n) << 3)
#define TT_FLASH_CR_PSIZE_X32 (2u << 8)
#define TT_FLASH_CR_STRT (1u << 16)
#define TT_FLASH_CR_LOCK (1u << 31)

/* Cortex-M7 D-cache invalidate by address to the point of coherency (ARMv7-M B2.2.7) */
#define TT_SCB_DCIMVAC TT_REG32(0xE000EF5Cu)
#define TT_DCACHE_LINE 32u

int tt_board_storage_init(void) { return TT_STORAGE_OK; }

uint32_t tt_board_storage_page_size(void) { return TT_STORAGE_PAGE; }

uint32_t tt_board_storage_pages(void) { return TT_STORAGE_PAGES; }

static int tt_st_range(uint32_t offset, size_t n) {
    return offset <= TT_STORAGE_SIZE && n <= (size_t)(TT_STORAGE_SIZE - offset);
}

static void tt_flash_wait(void) {
    while (TT_FLASH_SR & TT_FLASH_SR_BSY) {
    }
}

static void tt_flash_unlock(void) {
    tt_flash_wait();
    if (TT_FLASH_CR & TT_FLASH_CR_LOCK) {
        TT_FLASH_KEYR = TT_FLASH_KEY1;
        TT_FLASH_KEYR = TT_FLASH_KEY2;
    }
    TT_FLASH_SR = TT_FLASH_SR_ERRORS | TT_FLASH_SR_EOP; /* clear stale flags (write 1 to clear) */
}

/* Locks the interface again; the error flags of the operation decide the result. */
static int tt_flash_finish(void) {
    uint32_t sr;
    tt_flash_wait();
    sr = TT_FLASH_SR;
    TT_FLASH_CR = TT_FLASH_CR_LOCK;
    TT_FLASH_SR = TT_FLASH_SR_ERRORS | TT_FLASH_SR_EOP;
    return (sr & TT_FLASH_SR_ERRORS) ? TT_STORAGE_ERR_IO : TT_STORAGE_OK;
}

static void tt_dcache_invalidate(uint32_t addr, uint32_t n) {
    uint32_t a;
    if (!(TT_SCB_CCR & TT_SCB_CCR_DC)) {
        return;
    }
    tt_dsb();
    for (a = addr & ~(TT_DCACHE_LINE - 1u); a < addr + n; a += TT_DCACHE_LINE) {
        TT_SCB_DCIMVAC = a;
    }
    tt_dsb();
    tt_isb();
}

int tt_board_storage_erase(uint32_t page) {
    int s;
    if (page >= TT_STORAGE_PAGES) {
        return TT_STORAGE_ERR_RANGE;
    }
    tt_flash_unlock();
    TT_FLASH_CR = TT_FLASH_CR_SER | TT_FLASH_CR_SNB(TT_STORAGE_FIRST_SECTOR + page) | TT_FLASH_CR_PSIZE_X32;
    TT_FLASH_CR |= TT_FLASH_CR_STRT;
    tt_dsb();
    s = tt_flash_finish();
    tt_dcache_invalidate(TT_STORAGE_BASE + page * TT_STORAGE_PAGE, TT_STORAGE_PAGE);
    return s;
}

int tt_board_storage_program(uint32_t offset, const void *data, size_t n) {
    const uint8_t *src = (const uint8_t *)data;
    uint32_t i;
    int s = TT_STORAGE_OK;
    if (!tt_st_range(offset, n) || offset % TT_STORAGE_WRITE_ALIGN != 0u || n % TT_STORAGE_WRITE_ALIGN != 0u) {
        return TT_STORAGE_ERR_RANGE;
    }
    tt_flash_unlock();
    TT_FLASH_CR = TT_FLASH_CR_PG | TT_FLASH_CR_PSIZE_X32;
    for (i = 0; i < (uint32_t)n && s == TT_STORAGE_OK; i += 4u) {
        uint32_t w = (uint32_t)src[i] | ((uint32_t)src[i + 1u] << 8) | ((uint32_t)src[i + 2u] << 16) |
                     ((uint32_t)src[i + 3u] << 24);
        TT_REG32(TT_STORAGE_BASE + offset + i) = w;
        tt_dsb();
        tt_flash_wait();
        if (TT_FLASH_SR & TT_FLASH_SR_ERRORS) {
            s = TT_STORAGE_ERR_IO;
        }
    }
    if (tt_flash_finish() != TT_STORAGE_OK) {
        s = TT_STORAGE_ERR_IO;
    }
    tt_dcache_invalidate(TT_STORAGE_BASE + offset, (uint32_t)n);
    return s;
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
