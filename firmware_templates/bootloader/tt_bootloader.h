/*
 * tinytrain serial bootloader: command codes, the boot record, the memory layout macros and
 * the flash driver API (one driver per target: tt_bl_mps2.c, tt_bl_stm32f746.c,
 * tt_bl_nrf52840.c). Protocol: docs/protocol.md, section "Bootloader"; host side:
 * host_tools/flash.py; build and layouts: host_tools/bootloader.py.
 *
 * Flash of a target with the bootloader (addresses passed with -D by host_tools/bootloader.py):
 *
 *   [flash origin, TT_BL_RECORD_ADDR)              the bootloader itself
 *   [TT_BL_RECORD_ADDR, + TT_BL_RECORD_UNIT)       the boot record (its own erase unit)
 *   [TT_BL_APP_BASE, + TT_BL_APP_SIZE)             the application region: the application
 *                                                  is linked at TT_BL_APP_BASE (its vector
 *                                                  table first) and flashed there
 *
 * RAM: the first TT_BL_NOINIT_BYTES of RAM (linker section .tt_noinit, symbol
 * _tt_noinit_start) are left alone by the startup code of the bootloader and of an
 * application built for it; word 0 = TT_BL_STAY_MAGIC and word 1 = its complement ask the
 * bootloader to stay after the next reset (tt_boot_request.h, the application's RESET mode 2).
 */
#ifndef TT_BOOTLOADER_H
#define TT_BOOTLOADER_H

#include <stddef.h>
#include <stdint.h>

#define TT_BL_VERSION 1u
#define TT_BL_ROLE 0u /* IDENTIFY role (the application answers 1) */

/* Bootloader commands (0x40-0x4F); IDENTIFY (0x01) is answered as well. */
#define TT_BL_CMD_IDENTIFY 0x01u
#define TT_BL_CMD_INFO 0x40u
#define TT_BL_CMD_ERASE 0x41u
#define TT_BL_CMD_WRITE 0x42u
#define TT_BL_CMD_VERIFY 0x43u
#define TT_BL_CMD_BOOT 0x44u

#define TT_BL_MAX_CHUNK 1024u     /* data bytes of one BL_WRITE */
#define TT_BL_WRITE_ALIGN 4u      /* offsets, chunk lengths and image sizes are multiples of it */
#define TT_BL_INFO_RESPONSE 25u   /* BL_INFO payload bytes */
#define TT_BL_IDENTIFY_FIXED 32u  /* IDENTIFY: fixed part, then the board name */

/* Image states (BL_INFO). */
#define TT_BL_STATE_NONE 0u    /* no image: nothing erased for writing, no valid record */
#define TT_BL_STATE_WRITTEN 1u /* erased by BL_ERASE, being written, not verified */
#define TT_BL_STATE_VALID 2u   /* verified: the boot record names it */

/* The boot record: 4 words at TT_BL_RECORD_ADDR, programmed after a successful BL_VERIFY. */
#define TT_BL_RECORD_MAGIC 0x49425454u /* "TTBI" */
#define TT_BL_RECORD_BYTES 16u
/* word 0 magic, word 1 image size, word 2 image CRC-32, word 3 CRC-32 of words 0..2 */

/* The "stay in the bootloader" request in no-init RAM. */
#define TT_BL_STAY_MAGIC 0x59415453u /* "STAY" */
#define TT_BL_NOINIT_BYTES 16u

#if !defined(TT_BL_APP_BASE) || !defined(TT_BL_APP_SIZE) || !defined(TT_BL_RECORD_ADDR) || \
    !defined(TT_BL_RECORD_UNIT) || !defined(TT_BL_RAM_BASE) || !defined(TT_BL_RAM_SIZE)
#error "host_tools/bootloader.py passes TT_BL_APP_BASE/SIZE, TT_BL_RECORD_ADDR/UNIT and TT_BL_RAM_BASE/SIZE"
#endif

/* ------------------------------------------------------------------ flash driver (per target) */

/* Target set-up after tt_board_init() (e.g. the Cortex-M7 data cache off, so that reads of
 * freshly erased or programmed flash never hit stale lines). */
void tt_bl_flash_init(void);

/* Erases every erase unit (page or sector) overlapping [addr, addr + len) to 0xFF. Returns 0,
 * or -1 if the controller reported an error or the range is outside the flash it manages. */
int tt_bl_flash_erase(uint32_t addr, uint32_t len);

/* Programs len bytes (addr and len multiples of TT_BL_WRITE_ALIGN) of erased flash. Returns 0
 * or -1 (controller error). The caller reads back to verify. */
int tt_bl_flash_program(uint32_t addr, const uint8_t *data, uint32_t len);

/* Before the jump to the application: waits until the UART has sent its last byte and puts
 * the caches back to their reset state. */
void tt_bl_handoff_prepare(void);

#endif /* TT_BOOTLOADER_H */
