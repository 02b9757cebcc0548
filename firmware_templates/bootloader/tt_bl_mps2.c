/*
 * Flash driver of the bootloader on the QEMU targets (qemu-m4: mps2-an386, qemu-m7:
 * mps2-an500). Their "flash" is the 4 MiB code SSRAM at 0x00000000, writable by the CPU:
 * erasing fills with 0xFF (as a flash erase would, in 4 KiB units) and programming is a
 * plain store, so the bootloader's state machine runs unchanged on the emulator. QEMU keeps
 * this memory across a system reset (only the bootloader's own ELF segments are reloaded),
 * so an application flashed here survives the reset that re-enters the bootloader.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_bootloader.h"
#include "tt_cortexm.h"

#define TT_BL_MPS2_FLASH_SIZE 0x00400000u
#define TT_BL_MPS2_UNIT 4096u

void tt_bl_flash_init(void) {}

int tt_bl_flash_erase(uint32_t addr, uint32_t len) {
    uint32_t start = addr - addr % TT_BL_MPS2_UNIT;
    uint32_t end;
    if (len == 0u || addr >= TT_BL_MPS2_FLASH_SIZE || len > TT_BL_MPS2_FLASH_SIZE - addr) {
        return -1;
    }
    end = addr + len;
    end = end % TT_BL_MPS2_UNIT ? end + (TT_BL_MPS2_UNIT - end % TT_BL_MPS2_UNIT) : end;
    for (uint32_t a = start; a < end; a += 4u) {
        TT_REG32(a) = 0xFFFFFFFFu;
    }
    tt_dsb();
    return 0;
}

int tt_bl_flash_program(uint32_t addr, const uint8_t *data, uint32_t len) {
    if (addr % TT_BL_WRITE_ALIGN != 0u || len % TT_BL_WRITE_ALIGN != 0u || addr >= TT_BL_MPS2_FLASH_SIZE ||
        len > TT_BL_MPS2_FLASH_SIZE - addr) {
        return -1;
    }
    for (uint32_t i = 0; i < len; i += 4u) {
        uint32_t w = (uint32_t)data[i] | ((uint32_t)data[i + 1u] << 8) | ((uint32_t)data[i + 2u] << 16) |
                     ((uint32_t)data[i + 3u] << 24);
        TT_REG32(addr + i) &= w; /* like flash: programming only clears bits */
    }
    tt_dsb();
    tt_isb();
    return 0;
}

void tt_bl_handoff_prepare(void) {} /* the CMSDK UART has sent a byte once TX is not full */
