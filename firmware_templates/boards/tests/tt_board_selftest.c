/*
 * Self-test firmware of the board layer (tests/test_boards.py builds it for each target).
 * TT_SELFTEST_MODE selects what it does:
 *   0 hello:     prints the board name, counter unit, a .data and a .bss word and a few
 *                numbers, exits with TT_SELFTEST_STATUS;
 *   1 count:     times a loop of exactly 2 instructions per iteration for 1, N, 2N and 4N
 *                iterations (N = TT_SELFTEST_N) and prints "count <iterations> <delta>";
 *   2 bad read:  reads TT_SELFTEST_BAD_ADDR (unmapped on QEMU mps2) -> BusFault;
 *   3 udf:       executes a permanently undefined instruction -> UsageFault;
 *   4 big RAM:   a zero-initialised array of TT_SELFTEST_BYTES bytes (.bss);
 *   5 big flash: a constant table of TT_SELFTEST_BYTES bytes (.rodata);
 *   6 echo:      reads bytes until '\n', prints them back after "echo: ", exits with the count;
 *   7 stack:     a local array larger than the main stack -> fault below RAM;
 *   8 div0:      an integer division by zero -> UsageFault (trap enabled by the startup code);
 *   9 malloc:    calls malloc (must not link: there is no heap).
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"

#ifndef TT_SELFTEST_MODE
#define TT_SELFTEST_MODE 0
#endif
#ifndef TT_SELFTEST_STATUS
#define TT_SELFTEST_STATUS 0
#endif
#ifndef TT_SELFTEST_N
#define TT_SELFTEST_N 100000u
#endif
#ifndef TT_SELFTEST_BAD_ADDR
#define TT_SELFTEST_BAD_ADDR 0xF0000000u
#endif
#ifndef TT_SELFTEST_BYTES
#define TT_SELFTEST_BYTES 1024u
#endif

#if TT_SELFTEST_MODE == 0
static volatile uint32_t tt_data_word = 0x600DDA7Au; /* .data: copied from flash at reset */
static volatile uint32_t tt_bss_word;                /* .bss: zeroed at reset */
#endif

#if TT_SELFTEST_MODE == 1
/* Exactly 2 * n instructions in the loop (n >= 1): SUBS + BNE per iteration. */
__attribute__((noinline)) static void tt_spin(uint32_t n) {
    __asm__ volatile("1:\n\tsubs %0, %0, #1\n\tbne 1b" : "+r"(n)::"cc");
}

static void tt_time(uint32_t n) {
    uint64_t t0 = tt_board_cycles();
    tt_spin(n);
    uint64_t t1 = tt_board_cycles();
    tt_board_puts("count ");
    tt_board_put_u32(n);
    tt_board_puts(" ");
    tt_board_put_u64(t1 - t0);
    tt_board_puts("\n");
}
#endif

#if TT_SELFTEST_MODE == 4
static uint8_t tt_big_ram[TT_SELFTEST_BYTES];
#endif
#if TT_SELFTEST_MODE == 5
static const uint8_t tt_big_flash[TT_SELFTEST_BYTES] = {1u, 2u, 3u};
#endif
#if TT_SELFTEST_MODE == 7
__attribute__((noinline)) static uint32_t tt_deep(volatile uint32_t *sink) {
    volatile uint8_t big[TT_SELFTEST_BYTES];
    for (size_t i = 0; i < sizeof big; ++i) {
        big[i] = (uint8_t)i;
    }
    *sink = big[0];
    return big[sizeof big - 1];
}
#endif
#if TT_SELFTEST_MODE == 9
#include <stdlib.h>
#endif

int main(void) {
    tt_board_init();
    tt_board_puts("hello from ");
    tt_board_puts(tt_board_name());
    tt_board_puts("\ncounter ");
    tt_board_puts(tt_board_counter_unit());
    tt_board_puts(" resolution ");
    tt_board_put_u32(tt_board_cycles_resolution());
    tt_board_puts("\n");
#if TT_SELFTEST_MODE == 0
    tt_board_puts("data 0x");
    tt_board_put_hex32(tt_data_word);
    tt_board_puts(" bss 0x");
    tt_board_put_hex32(tt_bss_word);
    tt_board_puts("\nnumbers ");
    tt_board_put_i32(-2147483647 - 1);
    tt_board_puts(" ");
    tt_board_put_u64(18446744073709551615u);
    tt_board_puts(" 0x");
    tt_board_put_hex32(0xDEADBEEFu);
    tt_board_puts("\n");
    return TT_SELFTEST_STATUS;
#elif TT_SELFTEST_MODE == 1
    tt_time(1u);
    tt_time(TT_SELFTEST_N);
    tt_time(2u * TT_SELFTEST_N);
    tt_time(4u * TT_SELFTEST_N);
    return 0;
#elif TT_SELFTEST_MODE == 2
    volatile uint32_t *bad = (volatile uint32_t *)(uintptr_t)TT_SELFTEST_BAD_ADDR;
    tt_board_put_u32(*bad);
    return 0;
#elif TT_SELFTEST_MODE == 3
    __asm__ volatile("udf #0");
    return 0;
#elif TT_SELFTEST_MODE == 4
    volatile uint8_t *p = tt_big_ram;
    p[TT_SELFTEST_BYTES - 1u] = 1u;
    return p[0];
#elif TT_SELFTEST_MODE == 5
    volatile size_t i = TT_SELFTEST_BYTES - 1u;
    return tt_big_flash[i];
#elif TT_SELFTEST_MODE == 6
    int n = 0;
    tt_board_puts("echo: ");
    for (;;) {
        int c = tt_board_uart_getc();
        if (c < 0 || c == '\n') {
            break;
        }
        tt_board_uart_putc((uint8_t)c);
        ++n;
    }
    tt_board_puts("\n");
    return n;
#elif TT_SELFTEST_MODE == 7
    volatile uint32_t sink = 0u;
    return (int)tt_deep(&sink);
#elif TT_SELFTEST_MODE == 8
    volatile int32_t num = 7;
    volatile int32_t den = 0;
    return (int)(num / den);
#elif TT_SELFTEST_MODE == 9
    return malloc(16) != NULL;
#else
#error "unknown TT_SELFTEST_MODE"
#endif
}
