/*
 * Formatting helpers of the board API (tt_board.h), shared by every target: strings,
 * decimal and hexadecimal numbers written through tt_board_uart_write. No stdio.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"

void tt_board_puts(const char *s) {
    size_t n = 0;
    while (s[n] != '\0') {
        ++n;
    }
    tt_board_uart_write(s, n);
}

void tt_board_put_u64(uint64_t v) {
    char buf[20]; /* 2^64 - 1 has 20 digits */
    size_t i = sizeof buf;
    do {
        buf[--i] = (char)('0' + (int)(v % 10u));
        v /= 10u;
    } while (v != 0u);
    tt_board_uart_write(buf + i, sizeof buf - i);
}

void tt_board_put_u32(uint32_t v) { tt_board_put_u64(v); }

void tt_board_put_i32(int32_t v) {
    if (v < 0) {
        tt_board_uart_putc((uint8_t)'-');
        /* -(v + 1) + 1 in unsigned arithmetic: no overflow for INT32_MIN. */
        tt_board_put_u32((uint32_t)(-(v + 1)) + 1u);
    } else {
        tt_board_put_u32((uint32_t)v);
    }
}

void tt_board_put_hex32(uint32_t v) {
    static const char digits[16] = {'0', '1', '2', '3', '4', '5', '6', '7',
                                    '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
    char buf[8];
    for (int i = 7; i >= 0; --i) {
        buf[i] = digits[v & 0xFu];
        v >>= 4;
    }
    tt_board_uart_write(buf, sizeof buf);
}
