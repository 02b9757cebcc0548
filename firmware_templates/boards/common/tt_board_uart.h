/*
 * Byte-at-a-time UART transfers of the microcontroller boards, on top of the board's
 * tt_board_uart_putc / tt_board_uart_getc (tt_board.h). A board defines its
 * tt_board_uart_write / tt_board_uart_read with these when it has nothing faster.
 */
#ifndef TT_BOARD_UART_H
#define TT_BOARD_UART_H

#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"

/* Sends the n bytes at buf with tt_board_uart_putc. */
static inline void tt_board_uart_write_bytes(const void *buf, size_t n) {
    const uint8_t *p = (const uint8_t *)buf;
    for (size_t i = 0; i < n; ++i) {
        tt_board_uart_putc(p[i]);
    }
}

/* Receives exactly n bytes into buf with tt_board_uart_getc (blocking); returns n. */
static inline size_t tt_board_uart_read_bytes(void *buf, size_t n) {
    uint8_t *p = (uint8_t *)buf;
    for (size_t i = 0; i < n; ++i) {
        p[i] = (uint8_t)tt_board_uart_getc();
    }
    return n;
}

#endif /* TT_BOARD_UART_H */
