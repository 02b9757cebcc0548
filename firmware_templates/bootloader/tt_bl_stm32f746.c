/*
 * Flash driver of the bootloader on the STM32F746G-DISCO (STM32F746NG): the embedded flash
 * interface, RM0385 (STM32F75xxx/74xxx reference manual) section 3 "Embedded Flash memory".
 * 1 MiB single bank at 0x08000000 (AXIM), sectors (RM0385 3.3.2, table 3): 0-3 of 32 KiB,
 * 4 of 128 KiB, 5-7 of 256 KiB. The bootloader takes sector 0, the boot record sector 1,
 * the application sectors 2-7 (host_tools/bootloader.py).
 *
 * Unlock with the KEYR sequence (3.3.3), erase a sector with SER + SNB + STRT (3.3.6),
 * program 32-bit words with PG and PSIZE = x32 (3.3.7; 2.7-3.6 V), wait for BSY to clear
 * and check the error flags of FLASH_SR (3.7.5) after each operation; lock again after.
 * The Cortex-M7 data cache is switched off by tt_bl_flash_init (clean + invalidate by
 * set/way, then CCR.DC = 0; ARMv7-M ARM B2.2.7): flash reads after an erase or a program
 * then never return stale cached lines, and the application starts with the caches as after
 * a reset (its board layer invalidates and enables them).
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_bootloader.h"
#include "tt_cortexm.h"

#define TT_FLASH_BASE_REG 0x40023C00u
#define TT_FLASH_KEYR TT_REG32(TT_FLASH_BASE_REG + 0x04u)
#define TT_FLASH_SR TT_REG32(TT_FLASH_BASE_REG + 0x0Cu)
#define TT_FLASH_CR TT_REG32(TT_FLASH_BASE_REG + 0x10u)
#define TT_FLASH_KEY1 0x45670123u
#define TT_FLASH_KEY2 0xCDEF89ABu
#define TT_FLASH_SR_EOP (1u << 0)
#define TT_FLASH_SR_OPERR (1u << 1)
#define TT_FLASH_SR_WRPERR (1u << 4)
#define TT_FLASH_SR_PGAERR (1u << 5)
#define TT_FLASH_SR_PGPERR (1u << 6)
#define TT_FLASH_SR_ERSERR (1u << 7)
#define TT_FLASH_SR_BSY (1u << 16)
#define TT_FLASH_SR_ERRORS \
    (TT_FLASH_SR_OPERR | TT_FLASH_SR_WRPERR | TT_FLASH_SR_PGAERR | TT_FLASH_SR_PGPERR | TT_FLASH_SR_ERSERR)
#define TT_FLASH_CR_PG (1u << 0)
#define TT_FLASH_CR_SER (1u << 1)
#define TT_FLASH_CR_SNB(n) ((uint32_t)(n) << 3) /* SNB[3:0] at bits 6:3 */
#define TT_FLASH_CR_PSIZE_X32 (2u << 8)
#define TT_FLASH_CR_STRT (1u << 16)
#define TT_FLASH_CR_LOCK (1u << 31)

#define TT_STM32_FLASH_ORIGIN 0x08000000u
#define TT_STM32_FLASH_SIZE 0x00100000u
#define TT_STM32_SECTORS 8u

/* Cortex-M7 data cache clean and invalidate by set/way (ARMv7-M ARM B2.2.7). */
#define TT_SCB_DCCISW TT_REG32(0xE000EF74u)

/* USART1 (RM0385 31.8.8): TC = the last frame has left the shift register. */
#define TT_USART1_CR1 TT_REG32(0x40011000u)
#define TT_USART1_ISR TT_REG32(0x4001101Cu)
#define TT_USART_CR1_UE (1u << 0)
#define TT_USART_ISR_TC (1u << 6)

static const uint32_t tt_sector_start[TT_STM32_SECTORS + 1u] = {
    0x08000000u, 0x08008000u, 0x08010000u, 0x08018000u, 0x08020000u,
    0x08040000u, 0x08080000u, 0x080C0000u, 0x08100000u,
};

static void dcache_off(void) {
    uint32_t sets, ways, line_shift, way_shift = 32u;
    if ((TT_SCB_CCR & TT_SCB_CCR_DC) == 0u) {
        return;
    }
    TT_SCB_CSSELR = 0u;
    tt_dsb();
    sets = ((TT_SCB_CCSIDR >> 13) & 0x7FFFu) + 1u;
    ways = ((TT_SCB_CCSIDR >> 3) & 0x3FFu) + 1u;
    line_shift = (TT_SCB_CCSIDR & 0x7u) + 4u;
    for (uint32_t w = ways - 1u; w != 0u; w >>= 1) {
        --way_shift;
    }
    TT_SCB_CCR &= ~TT_SCB_CCR_DC; /* no new allocations while the lines are cleaned */
    tt_dsb();
    for (uint32_t set = 0; set < sets; ++set) {
        for (uint32_t way = 0; way < ways; ++way) {
            TT_SCB_DCCISW = (way_shift < 32u ? way << way_shift : 0u) | (set << line_shift);
        }
    }
    tt_dsb();
    tt_isb();
}

static int flash_wait(void) {
    uint32_t sr;
    while (TT_FLASH_SR & TT_FLASH_SR_BSY) {
    }
    sr = TT_FLASH_SR;
    TT_FLASH_SR = sr & (TT_FLASH_SR_ERRORS | TT_FLASH_SR_EOP); /* write 1 to clear */
    return (sr & TT_FLASH_SR_ERRORS) ? -1 : 0;
}

static void flash_unlock(void) {
    if (TT_FLASH_CR & TT_FLASH_CR_LOCK) {
        TT_FLASH_KEYR = TT_FLASH_KEY1;
        TT_FLASH_KEYR = TT_FLASH_KEY2;
    }
    (void)flash_wait(); /* clears stale error flags */
}

static void flash_lock(void) { TT_FLASH_CR = TT_FLASH_CR_LOCK; }

void tt_bl_flash_init(void) { dcache_off(); }

int tt_bl_flash_erase(uint32_t addr, uint32_t len) {
    int rc = 0;
    if (len == 0u || addr < TT_STM32_FLASH_ORIGIN || addr - TT_STM32_FLASH_ORIGIN >= TT_STM32_FLASH_SIZE ||
        len > TT_STM32_FLASH_SIZE - (addr - TT_STM32_FLASH_ORIGIN)) {
        return -1;
    }
    flash_unlock();
    for (uint32_t s = 0; s < TT_STM32_SECTORS && rc == 0; ++s) {
        if (tt_sector_start[s + 1u] <= addr || tt_sector_start[s] >= addr + len) {
            continue; /* sector outside the range */
        }
        TT_FLASH_CR = TT_FLASH_CR_SER | TT_FLASH_CR_SNB(s) | TT_FLASH_CR_PSIZE_X32;
        TT_FLASH_CR |= TT_FLASH_CR_STRT;
        tt_dsb();
        rc = flash_wait();
        TT_FLASH_CR = 0u;
    }
    flash_lock();
    return rc;
}

int tt_bl_flash_program(uint32_t addr, const uint8_t *data, uint32_t len) {
    int rc = 0;
    if (addr % TT_BL_WRITE_ALIGN != 0u || len % TT_BL_WRITE_ALIGN != 0u || addr < TT_STM32_FLASH_ORIGIN ||
        addr - TT_STM32_FLASH_ORIGIN >= TT_STM32_FLASH_SIZE || len > TT_STM32_FLASH_SIZE - (addr - TT_STM32_FLASH_ORIGIN)) {
        return -1;
    }
    flash_unlock();
    TT_FLASH_CR = TT_FLASH_CR_PG | TT_FLASH_CR_PSIZE_X32;
    for (uint32_t i = 0; i < len && rc == 0; i += 4u) {
        uint32_t w = (uint32_t)data[i] | ((uint32_t)data[i + 1u] << 8) | ((uint32_t)data[i + 2u] << 16) |
                     ((uint32_t)data[i + 3u] << 24);
        TT_REG32(addr + i) = w;
        tt_dsb();
        rc = flash_wait();
    }
    TT_FLASH_CR = 0u;
    flash_lock();
    return rc;
}

void tt_bl_handoff_prepare(void) {
    if (TT_USART1_CR1 & TT_USART_CR1_UE) {
        while ((TT_USART1_ISR & TT_USART_ISR_TC) == 0u) {
        }
    }
    dcache_off();
    TT_SCB_CCR &= ~TT_SCB_CCR_IC; /* the application's board layer invalidates and enables it */
    tt_dsb();
    tt_isb();
    TT_SCB_ICIALLU = 0u;
    tt_dsb();
    tt_isb();
}
