/*
 * tinytrain board layer: the few services a generated training program needs from the
 * board it runs on (see firmware_templates/boards/README.md).
 *
 * Every target (qemu-m4, qemu-m7, stm32f746g-disco, nrf52840, host) implements this API.
 * On the microcontroller targets the startup code (common/tt_startup.c) copies .data,
 * zeroes .bss, enables the FPU, switches main() onto its own stack and calls main();
 * main() calls tt_board_init() first, and main's return value becomes the exit status
 * (tt_board_exit). Faults are reported on the UART and end the program with
 * TT_BOARD_EXIT_FAULT.
 *
 * The UART is 8N1, polled (no interrupts, no buffering): a host talking to the firmware
 * must use a request/response protocol (send only when the firmware waits for input).
 */
#ifndef TT_BOARD_H
#define TT_BOARD_H

#include <stddef.h>
#include <stdint.h>

/* Exit status of a program stopped by a CPU fault (HardFault, MemManage, BusFault,
 * UsageFault, NMI) and of one stopped by an interrupt nobody enabled. */
#define TT_BOARD_EXIT_FAULT 99
#define TT_BOARD_EXIT_UNEXPECTED_IRQ 98

#if defined(__GNUC__)
#define TT_BOARD_NORETURN __attribute__((noreturn))
#else
#define TT_BOARD_NORETURN
#endif

/* Clocks (real boards: STM32F746 216 MHz, nRF52840 64 MHz HFXO), caches, UART and the
 * cycle counter. Call once, first thing in main(). */
void tt_board_init(void);

/* The board's name ("qemu-m4", "stm32f746g-disco", ...). */
const char *tt_board_name(void);

/* UART (115200 8N1 on real boards). tt_board_init() calls tt_board_uart_init(); output
 * written before it is dropped (the QEMU boards initialise on first use). */
void tt_board_uart_init(void);
void tt_board_uart_putc(uint8_t c);
/* Blocks until a byte arrives; returns it (0..255), or -1 at end of input (host only). */
int tt_board_uart_getc(void);
void tt_board_uart_write(const void *buf, size_t n);
/* Reads exactly n bytes (blocking); returns n, or fewer at end of input (host only). */
size_t tt_board_uart_read(void *buf, size_t n);

/* Formatting helpers on top of tt_board_uart_write (no stdio, no division by
 * non-constants): a NUL-terminated string, decimal and fixed-width hexadecimal numbers. */
void tt_board_puts(const char *s);
void tt_board_put_u32(uint32_t v);
void tt_board_put_u64(uint64_t v);
void tt_board_put_i32(int32_t v);
void tt_board_put_hex32(uint32_t v);

/* Ends the program with `status` (0..255): semihosting SYS_EXIT_EXTENDED on QEMU (QEMU
 * exits with that status), exit() on the host, an endless loop on real boards. */
void tt_board_exit(int status) TT_BOARD_NORETURN;

/* Free-running 64-bit counter, started by tt_board_init():
 *   qemu-m4/qemu-m7: guest instructions executed (QEMU -icount shift=0; SysTick at
 *                    25 MHz = one tick per 40 instructions, so the resolution is 40);
 *   stm32f746g-disco/nrf52840: CPU clock cycles (DWT CYCCNT, resolution 1);
 *   host: nanoseconds of CLOCK_MONOTONIC.
 * Read it around a region and subtract. Costs a few dozen instructions per call. */
uint64_t tt_board_cycles(void);
/* The counter's resolution in its unit (40 on QEMU, 1 elsewhere). */
uint32_t tt_board_cycles_resolution(void);
/* The counter's unit: "instructions", "cycles" or "ns". */
const char *tt_board_counter_unit(void);

#endif /* TT_BOARD_H */
