/*
 * Board support of the host target (a POSIX machine, gcc): the board API over stdio, so that
 * a generated program runs as an ordinary executable. The UART is stdout (written unbuffered
 * with fwrite) and stdin; the counter is CLOCK_MONOTONIC in nanoseconds; tt_board_exit is
 * exit(). There is no startup code: main() is the C runtime's.
 */
#define _POSIX_C_SOURCE 199309L

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "tt_board.h"

const char *tt_board_name(void) { return "host"; }

void tt_board_uart_init(void) { setvbuf(stdout, NULL, _IONBF, 0); }

void tt_board_uart_putc(uint8_t c) { (void)fputc(c, stdout); }

int tt_board_uart_getc(void) {
    int c = fgetc(stdin);
    return c == EOF ? -1 : c;
}

void tt_board_uart_write(const void *buf, size_t n) { (void)fwrite(buf, 1, n, stdout); }

size_t tt_board_uart_read(void *buf, size_t n) { return fread(buf, 1, n, stdin); }

void tt_board_init(void) { tt_board_uart_init(); }

void tt_board_exit(int status) {
    (void)fflush(stdout);
    exit(status);
}

uint64_t tt_board_cycles(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        return 0u;
    }
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint32_t tt_board_cycles_resolution(void) { return 1u; }

const char *tt_board_counter_unit(void) { return "ns"; }
