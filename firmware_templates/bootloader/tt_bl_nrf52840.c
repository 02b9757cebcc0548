/*
 * Flash driver of the bootloader on the nRF52840: the NVMC (non-volatile memory
 * controller), nRF52840 Product Specification v1.7, section 4.3 "NVMC". Flash is 1 MiB at
 * 0x00000000 in 4 KiB pages; words are written with CONFIG.WEN = Wen, pages erased with
 * CONFIG.WEN = Een and ERASEPAGE; READY tells when the controller is idle. The CPU halts
 * while the NVMC writes or erases (PS 4.3.1), so the code runs from the same flash.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_bootloader.h"
#include "tt_cortexm.h"

#define TT_NVMC_BASE 0x4001E000u
#define TT_NVMC_READY TT_REG32(TT_NVMC_BASE + 0x400u)     /* 4.3.9.1: 1 = ready */
#define TT_NVMC_CONFIG TT_REG32(TT_NVMC_BASE + 0x504u)    /* 4.3.9.3: WEN 0 Ren, 1 Wen, 2 Een */
#define TT_NVMC_ERASEPAGE TT_REG32(TT_NVMC_BASE + 0x508u) /* 4.3.9.4: page address to erase */
#define TT_NVMC_CONFIG_REN 0u
#define TT_NVMC_CONFIG_WEN 1u
#define TT_NVMC_CONFIG_EEN 2u

#define TT_NRF_FLASH_SIZE 0x00100000u
#define TT_NRF_PAGE 4096u

/* UARTE0 (PS 6.34): the transmitter has stopped once TXSTOPPED follows STOPTX. */
#define TT_UARTE0_TASKS_STOPTX TT_REG32(0x4000200Cu)
#define TT_UARTE0_EVENTS_TXSTOPPED TT_REG32(0x40002158u)
#define TT_UARTE0_ENABLE TT_REG32(0x40002500u)

static void nvmc_wait(void) {
    while ((TT_NVMC_READY & 1u) == 0u) {
    }
}

void tt_bl_flash_init(void) {}

int tt_bl_flash_erase(uint32_t addr, uint32_t len) {
    uint32_t start = addr - addr % TT_NRF_PAGE;
    if (len == 0u || addr >= TT_NRF_FLASH_SIZE || len > TT_NRF_FLASH_SIZE - addr) {
        return -1;
    }
    for (uint32_t a = start; a < addr + len; a += TT_NRF_PAGE) {
        nvmc_wait();
        TT_NVMC_CONFIG = TT_NVMC_CONFIG_EEN;
        nvmc_wait();
        TT_NVMC_ERASEPAGE = a;
        nvmc_wait();
    }
    TT_NVMC_CONFIG = TT_NVMC_CONFIG_REN;
    nvmc_wait();
    for (uint32_t a = start; a < addr + len; a += 4u) {
        if (TT_REG32(a) != 0xFFFFFFFFu) {
            return -1;
        }
    }
    return 0;
}

int tt_bl_flash_program(uint32_t addr, const uint8_t *data, uint32_t len) {
    if (addr % TT_BL_WRITE_ALIGN != 0u || len % TT_BL_WRITE_ALIGN != 0u || addr >= TT_NRF_FLASH_SIZE ||
        len > TT_NRF_FLASH_SIZE - addr) {
        return -1;
    }
    nvmc_wait();
    TT_NVMC_CONFIG = TT_NVMC_CONFIG_WEN;
    nvmc_wait();
    for (uint32_t i = 0; i < len; i += 4u) {
        uint32_t w = (uint32_t)data[i] | ((uint32_t)data[i + 1u] << 8) | ((uint32_t)data[i + 2u] << 16) |
                     ((uint32_t)data[i + 3u] << 24);
        TT_REG32(addr + i) = w; /* a word write; the NVMC allows two writes per word between erases */
        nvmc_wait();
    }
    TT_NVMC_CONFIG = TT_NVMC_CONFIG_REN;
    nvmc_wait();
    return 0;
}

void tt_bl_handoff_prepare(void) {
    if (TT_UARTE0_ENABLE != 0u) { /* the board layer waits for ENDTX; wait for the last stop bit too */
        TT_UARTE0_EVENTS_TXSTOPPED = 0u;
        TT_UARTE0_TASKS_STOPTX = 1u;
        for (uint32_t i = 0; i < 1000000u && TT_UARTE0_EVENTS_TXSTOPPED == 0u; ++i) {
        } /* bounded: ~15 ms at 64 MHz, far more than one byte at 115200 baud */
        TT_UARTE0_EVENTS_TXSTOPPED = 0u;
    }
}
