/*
 * Board support of the nRF52840 (Cortex-M4F, nRF52840-DK): 64 MHz CPU clock from the
 * 32 MHz crystal (HFXO), flash instruction cache, UARTE0 on the DK's interface-MCU virtual
 * COM port, DWT cycle counter (common/tt_counter_dwt.c). Registers are written by address
 * from the nRF52840 Product Specification v1.x (CLOCK 6.4, NVMC 6.10, GPIO 6.9, UARTE
 * 6.34); no nrfx/HAL. No SoftDevice: the program owns the whole chip.
 *
 * Clock: the CPU always runs at 64 MHz from HFCLK; starting the HFXO makes that clock
 * crystal-accurate (needed for the UART baud rate to hold over temperature).
 *
 * UART: UARTE0 at 115200 8N1, no flow control, TXD on P0.06 and RXD on P0.08 (the DK's VCOM0).
 * UARTE moves data by EasyDMA, which reads and writes RAM only: transmitted bytes are first
 * copied into a RAM buffer (they may come from flash). Reception is started for one byte at a
 * time when tt_board_uart_getc() waits; bytes arriving while nobody waits can be lost
 * (the host protocol is request/response).
 *
 * tt_board_exit: no debugger is assumed, so it masks interrupts and waits forever.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"
#include "tt_board_config.h"
#include "tt_board_uart.h"
#include "tt_cortexm.h"

/* CLOCK */
#define TT_CLOCK_BASE 0x40000000u
#define TT_CLOCK_TASKS_HFCLKSTART TT_REG32(TT_CLOCK_BASE + 0x000u)
#define TT_CLOCK_EVENTS_HFCLKSTARTED TT_REG32(TT_CLOCK_BASE + 0x100u)

/* NVMC: instruction cache for flash reads */
#define TT_NVMC_ICACHECNF TT_REG32(0x4001E540u)
#define TT_NVMC_ICACHECNF_CACHEEN (1u << 0)

/* GPIO port 0 */
#define TT_P0_BASE 0x50000000u
#define TT_P0_OUTSET TT_REG32(TT_P0_BASE + 0x508u)
#define TT_P0_PIN_CNF(n) TT_REG32(TT_P0_BASE + 0x700u + 4u * (n))
#define TT_PIN_CNF_OUTPUT_DISCONNECTED_INPUT 0x3u /* DIR = output, INPUT = disconnect */
#define TT_PIN_CNF_INPUT 0x0u                     /* DIR = input, INPUT = connect, no pull */

/* UARTE0 */
#define TT_UARTE0_BASE 0x40002000u
#define TT_UARTE_REG(off) TT_REG32(TT_UARTE0_BASE + (off))
#define TT_UARTE_TASKS_STARTRX TT_UARTE_REG(0x000u)
#define TT_UARTE_TASKS_STARTTX TT_UARTE_REG(0x008u)
#define TT_UARTE_EVENTS_ENDRX TT_UARTE_REG(0x110u)
#define TT_UARTE_EVENTS_ENDTX TT_UARTE_REG(0x120u)
#define TT_UARTE_ENABLE TT_UARTE_REG(0x500u)
#define TT_UARTE_PSEL_RTS TT_UARTE_REG(0x508u)
#define TT_UARTE_PSEL_TXD TT_UARTE_REG(0x50Cu)
#define TT_UARTE_PSEL_CTS TT_UARTE_REG(0x510u)
#define TT_UARTE_PSEL_RXD TT_UARTE_REG(0x514u)
#define TT_UARTE_BAUDRATE TT_UARTE_REG(0x524u)
#define TT_UARTE_RXD_PTR TT_UARTE_REG(0x534u)
#define TT_UARTE_RXD_MAXCNT TT_UARTE_REG(0x538u)
#define TT_UARTE_TXD_PTR TT_UARTE_REG(0x544u)
#define TT_UARTE_TXD_MAXCNT TT_UARTE_REG(0x548u)
#define TT_UARTE_CONFIG TT_UARTE_REG(0x56Cu)
#define TT_UARTE_ENABLE_ON 8u
#define TT_UARTE_BAUDRATE_115200 0x01D60000u /* UARTE value (actual rate 115108 baud) */
#define TT_UARTE_PSEL_DISCONNECTED 0xFFFFFFFFu
#define TT_UART_TX_PIN 6u /* P0.06 */
#define TT_UART_RX_PIN 8u /* P0.08 */
#define TT_UART_TX_CHUNK 64u

static uint8_t tt_uart_tx_buf[TT_UART_TX_CHUNK];
static volatile uint8_t tt_uart_rx_buf[1];
static int tt_uart_ready;

const char *tt_board_name(void) { return TT_BOARD_NAME; }

static void tt_clock_init(void) {
    TT_CLOCK_EVENTS_HFCLKSTARTED = 0u;
    TT_CLOCK_TASKS_HFCLKSTART = 1u;
    while (TT_CLOCK_EVENTS_HFCLKSTARTED == 0u) {
    }
    TT_CLOCK_EVENTS_HFCLKSTARTED = 0u;
    TT_NVMC_ICACHECNF = TT_NVMC_ICACHECNF_CACHEEN;
}

void tt_board_uart_init(void) {
    TT_P0_OUTSET = 1u << TT_UART_TX_PIN; /* TX idles high */
    TT_P0_PIN_CNF(TT_UART_TX_PIN) = TT_PIN_CNF_OUTPUT_DISCONNECTED_INPUT;
    TT_P0_PIN_CNF(TT_UART_RX_PIN) = TT_PIN_CNF_INPUT;
    TT_UARTE_ENABLE = 0u;
    TT_UARTE_PSEL_TXD = TT_UART_TX_PIN; /* port 0, CONNECT (bit 31) = 0 */
    TT_UARTE_PSEL_RXD = TT_UART_RX_PIN;
    TT_UARTE_PSEL_RTS = TT_UARTE_PSEL_DISCONNECTED;
    TT_UARTE_PSEL_CTS = TT_UARTE_PSEL_DISCONNECTED;
    TT_UARTE_CONFIG = 0u; /* no parity, one stop bit, no hardware flow control */
    TT_UARTE_BAUDRATE = TT_UARTE_BAUDRATE_115200;
    TT_UARTE_ENABLE = TT_UARTE_ENABLE_ON;
    tt_uart_ready = 1;
}

/* Sends n <= TT_UART_TX_CHUNK bytes already in tt_uart_tx_buf and waits for the end. */
static void tt_uart_send_buffer(size_t n) {
    TT_UARTE_TXD_PTR = (uint32_t)(uintptr_t)tt_uart_tx_buf;
    TT_UARTE_TXD_MAXCNT = (uint32_t)n;
    TT_UARTE_EVENTS_ENDTX = 0u;
    TT_UARTE_TASKS_STARTTX = 1u;
    while (TT_UARTE_EVENTS_ENDTX == 0u) {
    }
    TT_UARTE_EVENTS_ENDTX = 0u;
}

void tt_board_uart_write(const void *buf, size_t n) {
    if (!tt_uart_ready) {
        return; /* a fault before tt_board_init: nothing can be printed */
    }
    const uint8_t *p = (const uint8_t *)buf;
    while (n > 0u) {
        size_t k = n < TT_UART_TX_CHUNK ? n : TT_UART_TX_CHUNK;
        for (size_t i = 0; i < k; ++i) {
            tt_uart_tx_buf[i] = p[i];
        }
        tt_uart_send_buffer(k);
        p += k;
        n -= k;
    }
}

void tt_board_uart_putc(uint8_t c) { tt_board_uart_write(&c, 1u); }

int tt_board_uart_getc(void) {
    if (!tt_uart_ready) {
        tt_board_uart_init();
    }
    TT_UARTE_RXD_PTR = (uint32_t)(uintptr_t)tt_uart_rx_buf;
    TT_UARTE_RXD_MAXCNT = 1u;
    TT_UARTE_EVENTS_ENDRX = 0u;
    TT_UARTE_TASKS_STARTRX = 1u;
    while (TT_UARTE_EVENTS_ENDRX == 0u) {
    }
    TT_UARTE_EVENTS_ENDRX = 0u;
    return (int)tt_uart_rx_buf[0];
}

size_t tt_board_uart_read(void *buf, size_t n) { return tt_board_uart_read_bytes(buf, n); }

void tt_board_init(void) {
    tt_clock_init();
    tt_board_uart_init();
    tt_counter_init();
}

void tt_board_exit(int status) {
    (void)status;
    (void)tt_irq_save();
    for (;;) {
    }
}
