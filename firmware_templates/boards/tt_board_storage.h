/*
 * tinytrain board layer: non-volatile storage for checkpoints (firmware_templates/app/tt_ckpt.c).
 *
 * A storage region of tt_board_storage_pages() pages of tt_board_storage_page_size() bytes,
 * addressed by byte offsets from 0. It behaves like NOR flash on every target:
 *   - erase sets every byte of one page to 0xFF;
 *   - program only clears bits (the stored byte becomes old & new), so a program over bytes
 *     that are not erased does not store the new data: erase first;
 *   - an interrupted erase or program (power loss, reset) leaves its range partly done,
 *     in units of the target's granularity below. Nothing else is changed.
 *
 * Implementations (one per target, listed with the board sources in codegen/targets.py):
 *
 * | target | file | backing | page | program unit (interrupt granularity) |
 * |---|---|---|---|---|
 * | qemu-m4 / qemu-m7 | common/tt_board_storage_mps2.c | a host file through ARM semihosting; its path comes from the semihosting command line (`tt_storage=PATH`, QEMU `-append`) | 4 KiB | program: 8 bytes per SYS_WRITE; erase: 256 bytes per SYS_WRITE |
 * | host | host/tt_board_storage_host.c | a file named by the environment variable TT_STORAGE_FILE (or -DTT_STORAGE_FILE_DEFAULT="...") | 4 KiB | one fwrite per call |
 * | stm32f746g-disco | stm32f746g-disco/tt_board_storage.c | flash sectors 6 and 7 (0x08080000, 2 x 256 KiB) by FLASH register address | 256 KiB | one 32-bit word |
 * | nrf52840 | nrf52840/tt_board_storage.c | the top 256 KiB of flash (0x000C0000, 64 x 4 KiB) through the NVMC | 4 KiB | one 32-bit word |
 *
 * On the real boards the storage region must lie outside the firmware's flash budget (the
 * linker script's FLASH region); TT_STORAGE_BASE / TT_STORAGE_PAGES may be overridden with -D.
 * Without a configured backing file (QEMU, host) every call returns TT_STORAGE_ERR_UNAVAILABLE.
 *
 * Alignment: `offset` and `n` of tt_board_storage_program must be multiples of
 * TT_STORAGE_WRITE_ALIGN (16, a multiple of every target's program unit). Reads take any range.
 * No function touches anything outside the region (out-of-range calls return
 * TT_STORAGE_ERR_RANGE and change nothing).
 */
#ifndef TT_BOARD_STORAGE_H
#define TT_BOARD_STORAGE_H

#include <stddef.h>
#include <stdint.h>

#define TT_STORAGE_OK 0
#define TT_STORAGE_ERR_UNAVAILABLE (-1) /* no backing store configured / it cannot be opened */
#define TT_STORAGE_ERR_RANGE (-2)       /* outside the region, or misaligned */
#define TT_STORAGE_ERR_IO (-3)          /* the erase / program / read failed (flash error flags, host I/O) */

#define TT_STORAGE_WRITE_ALIGN 16u

/* Opens the backing store (the first call; later calls return the first result). Every
 * other function calls it; calling it first only moves the cost (QEMU and host: opening the
 * file, creating it filled with 0xFF when it is missing or shorter than the region). */
int tt_board_storage_init(void);
/* Geometry of the region (valid without init). */
uint32_t tt_board_storage_page_size(void);
uint32_t tt_board_storage_pages(void);
/* Erases page `page` (all bytes 0xFF). Real flash: seconds for a 256 KiB STM32 sector. */
int tt_board_storage_erase(uint32_t page);
/* Programs n bytes at offset (both multiples of TT_STORAGE_WRITE_ALIGN): byte &= data. */
int tt_board_storage_program(uint32_t offset, const void *data, size_t n);
/* Reads n bytes at offset. */
int tt_board_storage_read(uint32_t offset, void *data, size_t n);

#endif /* TT_BOARD_STORAGE_H */
