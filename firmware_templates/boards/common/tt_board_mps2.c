/*
 * Board support of the QEMU targets qemu-m4 (machine mps2-an386, Cortex-M4F) and qemu-m7
 * (mps2-an500, Cortex-M7): CMSDK APB UART0, semihosting exit, SysTick instruction counter
 * (common/tt_counter_systick.c). QEMU needs no clock set-up.
 *
 * UART0 (CMSDK APB UART, 0x40004000) is QEMU's first -serial. The board layer polls it:
 * the transmitter waits while TX is full, the receiver while RX is empty. Enabling RX is
 * followed by one read of DATA, without which QEMU delays the first host byte (~1 s): the
 * read makes QEMU offer its pending input at once. QEMU's I/O thread may deliver the first
 * byte between the enable and that read, which then consumes it (seen once under load as a
 * run driver that got "TRN" instead of "TTRN"): the read happens only while RX is empty,
 * and a value that differs from the receive buffer read just before the enable (0 after
 * reset; a bootloader's last byte after a hand-over) is a byte that arrived in between and
 * is handed to the next getc. A byte equal to that earlier value arriving in exactly that
 * window stays indistinguishable from no byte; the protocols spoken to these boards start
 * with a magic byte that differs from what precedes it.
 *
 * tt_board_exit uses the semihosting call SYS_EXIT_EXTENDED (QEMU must run with
 * `-semihosting-config enable=on,target=native`; without it the BKPT faults).
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"
#include "tt_board_config.h"
#include "tt_board_uart.h"
#include "tt_cortexm.h"

#define TT_UART0_DATA TT_REG32(0x40004000u)
#define TT_UART0_STATE TT_REG32(0x40004004u)   /* bit 0: TX full, bit 1: RX full */
#define TT_UART0_CTRL TT_REG32(0x40004008u)    /* bit 0: TX enable, bit 1: RX enable */
#define TT_UART0_BAUDDIV TT_REG32(0x40004010u) /* >= 16 */
#define TT_UART_STATE_TXFULL (1u << 0)
#define TT_UART_STATE_RXFULL (1u << 1)
#define TT_UART_CTRL_TXEN (1u << 0)
#define TT_UART_CTRL_RXEN (1u << 1)

/* Semihosting (ARM "Semihosting for AArch32 and AArch64", v2.0). */
#define TT_SEMIHOST_SYS_EXIT_EXTENDED 0x20u
#define TT_SEMIHOST_ADP_STOPPED_APPLICATION_EXIT 0x20026u

static int tt_uart_ready;
static int tt_uart_pending = -1; /* a byte taken by the kick read of the first init */

const char *tt_board_name(void) { return TT_BOARD_NAME; }

void tt_board_uart_init(void) {
    uint32_t before;
    TT_UART0_CTRL = 0u;
    TT_UART0_BAUDDIV = 16u;
    before = TT_UART0_DATA & 0xFFu; /* the receive buffer's value before RX is enabled */
    TT_UART0_CTRL = TT_UART_CTRL_TXEN | TT_UART_CTRL_RXEN;
    if (tt_uart_pending < 0 && !(TT_UART0_STATE & TT_UART_STATE_RXFULL)) {
        uint32_t d = TT_UART0_DATA & 0xFFu; /* lets QEMU deliver the first received byte at once */
        if (d != before) {
            tt_uart_pending = (int)d;
        }
    }
    tt_uart_ready = 1;
}

/* The QEMU UART needs no clock: it is brought up on first use (e.g. by a fault report
 * before main() ran tt_board_init). */
static void tt_uart_ensure(void) {
    if (!tt_uart_ready) {
        tt_board_uart_init();
    }
}

void tt_board_uart_putc(uint8_t c) {
    tt_uart_ensure();
    while (TT_UART0_STATE & TT_UART_STATE_TXFULL) {
    }
    TT_UART0_DATA = c;
}

int tt_board_uart_getc(void) {
    tt_uart_ensure();
    if (tt_uart_pending >= 0) {
        int c = tt_uart_pending;
        tt_uart_pending = -1;
        return c;
    }
    while (!(TT_UART0_STATE & TT_UART_STATE_RXFULL)) {
    }
    return (int)(TT_UART0_DATA & 0xFFu);
}

void tt_board_uart_write(const void *buf, size_t n) { tt_board_uart_write_bytes(buf, n); }

size_t tt_board_uart_read(void *buf, size_t n) { return tt_board_uart_read_bytes(buf, n); }

void tt_board_init(void) {
    tt_board_uart_init();
    tt_counter_init();
}

void tt_board_exit(int status) {
    uint32_t block[2] = {TT_SEMIHOST_ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    register uint32_t r0 __asm__("r0") = TT_SEMIHOST_SYS_EXIT_EXTENDED;
    register uint32_t *r1 __asm__("r1") = block;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    for (;;) {
    }
}
