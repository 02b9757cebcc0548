/*
 * tinytrain serial bootloader: main() of the bootloader firmware (tt_bootloader.h,
 * docs/protocol.md "Bootloader").
 *
 * At reset: if the no-init RAM word asks to stay (the application's RESET mode 2), the
 * request is cleared and the bootloader stays; otherwise, if the boot record is valid (magic,
 * its own CRC) and names an image whose CRC-32 over the application region matches and whose
 * vector table points into the region and RAM, it boots that image at once. Else it runs the
 * command loop over the UART (the frame protocol of tt_frame.h, with its repeat cache):
 * IDENTIFY (role 0), BL_INFO, BL_ERASE, BL_WRITE, BL_VERIFY, BL_BOOT.
 *
 * Writing an image: BL_ERASE(size) first erases the boot record (from then on no image is
 * valid, whatever happens), then the units covering the image; BL_WRITE programs chunks;
 * BL_VERIFY(size, crc) computes the CRC-32 of the region's first `size` bytes and, when it
 * matches and the vector table is plausible, programs the boot record last. A power loss at
 * any point leaves either no valid record (the bootloader stays) or a complete verified image.
 *
 * Booting: SysTick and the MPU off, pending SysTick cleared, interrupts unmasked (the
 * application expects reset state), caches back to reset state (tt_bl_handoff_prepare), VTOR
 * = the image's vector table, MSP = its word 0, thread mode back on the MSP, jump to its word 1.
 * The application's own startup then sets its PSP, VTOR, MPU guard, etc.
 *
 * C99, no malloc, no stdio.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_board.h"
#include "tt_bootloader.h"
#include "tt_cortexm.h"
#include "tt_frame.h"

#define TT_SCB_ICSR_PENDSTCLR (1u << 25)

extern uint32_t _tt_noinit_start[]; /* linker script (noinit_bytes > 0): the stay request */

static tt_frame_decoder tt_bl_dec;
static tt_frame_cache tt_bl_cache;
static uint8_t tt_bl_reply[TT_FRAME_MAX_PAYLOAD];
static uint8_t tt_bl_bad_frame[TT_FRAME_ENCODED_SIZE(1u)];

static uint8_t tt_bl_state;       /* TT_BL_STATE_* */
static uint32_t tt_bl_erased;     /* bytes erased by the last BL_ERASE (state WRITTEN) */
static uint32_t tt_bl_image_size; /* of the valid image (state VALID) */
static uint32_t tt_bl_image_crc;
static uint8_t tt_bl_boot_pending; /* BL_BOOT answered: boot once the response is sent */

/* ------------------------------------------------------------------ little-endian fields */

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void wr16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
}

static void wr32(uint8_t *p, uint32_t v) {
    wr16(p, v & 0xFFFFu);
    wr16(p + 2, (v >> 16) & 0xFFFFu);
}

static uint32_t rd_flash32(uint32_t addr) { return *(const volatile uint32_t *)(uintptr_t)addr; }

/* CRC-32 of n bytes of flash at addr. */
static uint32_t flash_crc(uint32_t addr, uint32_t n) {
    return tt_frame_crc32(0u, (const uint8_t *)(uintptr_t)addr, (size_t)n);
}

/* ------------------------------------------------------------------ image checks */

/* The image's vector table: initial SP inside RAM (8-aligned, top of RAM allowed) and a
 * Thumb reset handler inside the image. */
static int vectors_ok(uint32_t size) {
    uint32_t sp = rd_flash32(TT_BL_APP_BASE);
    uint32_t pc = rd_flash32(TT_BL_APP_BASE + 4u);
    uint32_t entry = pc & ~1u;
    if (size < 8u) {
        return 0;
    }
    if (sp % 8u != 0u || sp <= (uint32_t)TT_BL_RAM_BASE || sp - (uint32_t)TT_BL_RAM_BASE > (uint32_t)TT_BL_RAM_SIZE) {
        return 0;
    }
    return (pc & 1u) != 0u && entry >= (uint32_t)TT_BL_APP_BASE && entry - (uint32_t)TT_BL_APP_BASE < size;
}

static int size_ok(uint32_t size) {
    return size > 0u && size <= (uint32_t)TT_BL_APP_SIZE && size % TT_BL_WRITE_ALIGN == 0u;
}

/* The boot record, if valid: *size and *crc of the image it names (not checked here). */
static int record_read(uint32_t *size, uint32_t *crc) {
    uint8_t rec[12];
    uint32_t i;
    for (i = 0; i < 3u; ++i) {
        wr32(rec + 4u * i, rd_flash32(TT_BL_RECORD_ADDR + 4u * i));
    }
    if (rd32(rec) != TT_BL_RECORD_MAGIC || rd_flash32(TT_BL_RECORD_ADDR + 12u) != tt_frame_crc32(0u, rec, 12u)) {
        return 0;
    }
    *size = rd32(rec + 4);
    *crc = rd32(rec + 8);
    return size_ok(*size);
}

/* Programs the record of a verified image (after erasing its unit); 0 on success. */
static int record_write(uint32_t size, uint32_t crc) {
    uint8_t rec[TT_BL_RECORD_BYTES];
    uint32_t s = 0, c = 0;
    wr32(rec, TT_BL_RECORD_MAGIC);
    wr32(rec + 4, size);
    wr32(rec + 8, crc);
    wr32(rec + 12, tt_frame_crc32(0u, rec, 12u));
    if (tt_bl_flash_erase(TT_BL_RECORD_ADDR, TT_BL_RECORD_UNIT) != 0 ||
        tt_bl_flash_program(TT_BL_RECORD_ADDR, rec, TT_BL_RECORD_BYTES) != 0) {
        return -1;
    }
    return record_read(&s, &c) && s == size && c == crc ? 0 : -1;
}

/* ------------------------------------------------------------------ booting */

static void jump(uint32_t sp, uint32_t pc) __attribute__((noreturn));
static void jump(uint32_t sp, uint32_t pc) {
    __asm__ volatile(
        "msr msp, %0\n\t"
        "movs r2, #0\n\t"
        "msr control, r2\n\t" /* thread mode on the MSP, FPU context inactive */
        "isb\n\t"
        "bx %1\n\t"
        :
        : "r"(sp), "r"(pc)
        : "r2", "memory");
    for (;;) {
    }
}

static void boot_image(void) __attribute__((noreturn));
static void boot_image(void) {
    uint32_t sp = rd_flash32(TT_BL_APP_BASE);
    uint32_t pc = rd_flash32(TT_BL_APP_BASE + 4u);
    (void)tt_irq_save();
    tt_bl_handoff_prepare();
    TT_SYST_CSR = 0u;
    TT_SCB_ICSR = TT_SCB_ICSR_PENDSTCLR;
    TT_MPU_CTRL = 0u;
    TT_SCB_VTOR = (uint32_t)TT_BL_APP_BASE;
    tt_dsb();
    tt_isb();
    tt_irq_restore(0u); /* PRIMASK as after a reset */
    jump(sp, pc);
}

/* ------------------------------------------------------------------ commands */

static uint8_t cmd_identify(uint32_t len, uint8_t *reply, size_t *n) {
    const char *board = tt_board_name();
    size_t k = strlen(board);
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    if (k > 255u) {
        k = 255u;
    }
    memset(reply, 0, TT_BL_IDENTIFY_FIXED);
    reply[0] = TT_BL_ROLE;
    reply[1] = TT_FRAME_VERSION;
    wr16(reply + 2, TT_FRAME_MAX_PAYLOAD);
    reply[31] = (uint8_t)k;
    memcpy(reply + TT_BL_IDENTIFY_FIXED, board, k);
    *n = TT_BL_IDENTIFY_FIXED + k;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_info(uint32_t len, uint8_t *reply, size_t *n) {
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    wr32(reply, TT_BL_VERSION);
    wr32(reply + 4, (uint32_t)TT_BL_APP_BASE);
    wr32(reply + 8, (uint32_t)TT_BL_APP_SIZE);
    wr16(reply + 12, TT_BL_MAX_CHUNK);
    wr16(reply + 14, TT_BL_WRITE_ALIGN);
    reply[16] = tt_bl_state;
    wr32(reply + 17, tt_bl_state == TT_BL_STATE_VALID ? tt_bl_image_size : tt_bl_erased);
    wr32(reply + 21, tt_bl_state == TT_BL_STATE_VALID ? tt_bl_image_crc : 0u);
    *n = TT_BL_INFO_RESPONSE;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_erase(const uint8_t *p, uint32_t len) {
    uint32_t size;
    if (len != 4u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    size = rd32(p);
    if (!size_ok(size)) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    /* the record first: from here on no image is valid until the next BL_VERIFY */
    tt_bl_state = TT_BL_STATE_NONE;
    tt_bl_erased = 0u;
    if (tt_bl_flash_erase(TT_BL_RECORD_ADDR, TT_BL_RECORD_UNIT) != 0 ||
        tt_bl_flash_erase(TT_BL_APP_BASE, size) != 0) {
        return TT_FRAME_STATUS_FLASH_ERROR;
    }
    tt_bl_erased = size;
    tt_bl_state = TT_BL_STATE_WRITTEN;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_write(const uint8_t *p, uint32_t len) {
    uint32_t offset, count, i;
    if (len < 4u || len - 4u > TT_BL_MAX_CHUNK || (len - 4u) % TT_BL_WRITE_ALIGN != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    if (tt_bl_state != TT_BL_STATE_WRITTEN) {
        return TT_FRAME_STATUS_BAD_STATE;
    }
    offset = rd32(p);
    count = len - 4u;
    if (offset % TT_BL_WRITE_ALIGN != 0u || offset > tt_bl_erased || count > tt_bl_erased - offset) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    if (tt_bl_flash_program(TT_BL_APP_BASE + offset, p + 4, count) != 0) {
        return TT_FRAME_STATUS_FLASH_ERROR;
    }
    for (i = 0; i < count; ++i) {
        if (((const volatile uint8_t *)(uintptr_t)(TT_BL_APP_BASE + offset))[i] != p[4u + i]) {
            return TT_FRAME_STATUS_FLASH_ERROR;
        }
    }
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_verify(const uint8_t *p, uint32_t len, uint8_t *reply, size_t *n) {
    uint32_t size, crc, computed;
    if (len != 8u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    size = rd32(p);
    crc = rd32(p + 4);
    if (tt_bl_state == TT_BL_STATE_NONE) {
        return TT_FRAME_STATUS_BAD_STATE;
    }
    if (!size_ok(size) || size > (tt_bl_state == TT_BL_STATE_VALID ? tt_bl_image_size : tt_bl_erased)) {
        return TT_FRAME_STATUS_BAD_ARG;
    }
    computed = flash_crc(TT_BL_APP_BASE, size);
    wr32(reply, computed);
    *n = 4u;
    if (computed != crc) {
        return TT_FRAME_STATUS_VERIFY_FAILED;
    }
    if (tt_bl_state == TT_BL_STATE_VALID) {
        return size == tt_bl_image_size && crc == tt_bl_image_crc ? TT_FRAME_STATUS_OK : TT_FRAME_STATUS_BAD_STATE;
    }
    if (!vectors_ok(size)) {
        return TT_FRAME_STATUS_BAD_ARG; /* not an application linked at TT_BL_APP_BASE */
    }
    if (record_write(size, crc) != 0) {
        return TT_FRAME_STATUS_FLASH_ERROR;
    }
    tt_bl_image_size = size;
    tt_bl_image_crc = crc;
    tt_bl_erased = 0u;
    tt_bl_state = TT_BL_STATE_VALID;
    return TT_FRAME_STATUS_OK;
}

static uint8_t cmd_boot(uint32_t len) {
    if (len != 0u) {
        return TT_FRAME_STATUS_BAD_LENGTH;
    }
    if (tt_bl_state != TT_BL_STATE_VALID) {
        return TT_FRAME_STATUS_BAD_STATE;
    }
    tt_bl_boot_pending = 1u;
    return TT_FRAME_STATUS_OK;
}

static uint8_t execute(const tt_frame *req, uint8_t *reply, size_t *n) {
    const uint8_t *p = req->payload;
    uint32_t len = req->length;
    *n = 0;
    switch (req->cmd) {
    case TT_BL_CMD_IDENTIFY:
        return cmd_identify(len, reply, n);
    case TT_BL_CMD_INFO:
        return cmd_info(len, reply, n);
    case TT_BL_CMD_ERASE:
        return cmd_erase(p, len);
    case TT_BL_CMD_WRITE:
        return cmd_write(p, len);
    case TT_BL_CMD_VERIFY:
        return cmd_verify(p, len, reply, n);
    case TT_BL_CMD_BOOT:
        return cmd_boot(len);
    default:
        return TT_FRAME_STATUS_UNKNOWN_CMD;
    }
}

/* ------------------------------------------------------------------ main */

/* 1 if the application asked to stay (the request is consumed). */
static int stay_requested(void) {
    volatile uint32_t *w = _tt_noinit_start;
    int stay = w[0] == TT_BL_STAY_MAGIC && w[1] == ~TT_BL_STAY_MAGIC;
    w[0] = 0u;
    w[1] = 0u;
    return stay;
}

int main(void) {
    uint32_t size = 0, crc = 0;
    int stay = stay_requested();
    if (record_read(&size, &crc) && flash_crc(TT_BL_APP_BASE, size) == crc && vectors_ok(size)) {
        if (!stay) {
            boot_image(); /* before tt_board_init: the application finds the board at reset state */
        }
        tt_bl_state = TT_BL_STATE_VALID;
        tt_bl_image_size = size;
        tt_bl_image_crc = crc;
    }
    tt_board_init();
    tt_bl_flash_init();
    tt_frame_decoder_init(&tt_bl_dec, TT_FRAME_KIND_REQUEST);
    tt_frame_cache_init(&tt_bl_cache);
    for (;;) {
        int st = tt_frame_feed(&tt_bl_dec, (uint8_t)tt_board_uart_getc());
        if (st == TT_FRAME_READY) {
            const tt_frame *req = &tt_bl_dec.frame;
            if (!tt_frame_is_repeat(&tt_bl_cache, req)) {
                size_t n = 0;
                uint8_t status = execute(req, tt_bl_reply, &n);
                if (tt_frame_cache_respond(&tt_bl_cache, req, status, tt_bl_reply, n) < 0) {
                    continue; /* cannot happen: n <= TT_FRAME_MAX_PAYLOAD */
                }
            }
            tt_board_uart_write(tt_bl_cache.response, tt_bl_cache.response_len);
            if (tt_bl_boot_pending) {
                boot_image();
            }
        } else if (st < 0) {
            uint8_t reason = (uint8_t)(-st);
            int32_t k = tt_frame_encode(tt_bl_bad_frame, sizeof tt_bl_bad_frame, TT_FRAME_KIND_RESPONSE,
                                        TT_FRAME_SEQ_NONE, 0u, TT_FRAME_STATUS_BAD_FRAME, &reason, 1u);
            if (k > 0) {
                tt_board_uart_write(tt_bl_bad_frame, (size_t)k);
            }
        }
    }
}
