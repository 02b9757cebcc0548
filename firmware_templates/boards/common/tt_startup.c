/*
 * Startup code of every Cortex-M target (qemu-m4, qemu-m7, stm32f746g-disco, nrf52840).
 *
 * - Vector table (section .isr_vector, first in FLASH): initial MSP, Reset_Handler, the
 *   fault handlers and 16 * TT_BOARD_IRQ_BLOCKS external interrupts (tt_board_config.h),
 *   all of which report "unexpected" (the board layer polls; only SysTick is used).
 * - Reset_Handler: enables the FPU (CPACR) when compiled for one, then runs main() on the
 *   process stack (PSP) placed at the *bottom* of RAM by the linker script, so that a
 *   stack overflow hits the unmapped memory below RAM and faults instead of silently
 *   overwriting .data/.bss; exceptions run on their own small stack (MSP) above it and
 *   can still report. Then copies .data from FLASH, zeroes .bss, points VTOR at the table,
 *   enables the MemManage/BusFault/UsageFault handlers and the divide-by-zero trap,
 *   calls main() and ends with tt_board_exit(main's return value).
 * - Stack guard: an MPU region forbids every access to the TT_STACK_GUARD_BYTES below
 *   RAM, so a main stack overflow faults even where that memory exists or reads as zero
 *   (QEMU's mps2 machines); the rest of the map keeps its default attributes (PRIVDEFENA).
 * - Faults print the exception, the stacked registers and the fault status registers on
 *   the UART, then exit with TT_BOARD_EXIT_FAULT (QEMU exits; real boards stop).
 *
 * RAM layout (linker script, common/cortex_m.ld.j2):
 *   ORIGIN(RAM): [main stack (PSP)][exception stack (MSP)][.data][.bss] :ORIGIN+LENGTH
 * There is no heap: _sbrk is not defined, so a program calling malloc does not link.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"
#include "tt_board_config.h"
#include "tt_cortexm.h"

#if !defined(TT_BOARD_IRQ_BLOCKS) || TT_BOARD_IRQ_BLOCKS < 0 || TT_BOARD_IRQ_BLOCKS > 8
#error "tt_board_config.h must define TT_BOARD_IRQ_BLOCKS in 0..8 (16 interrupts per block)"
#endif

/* Size of the no-access MPU region right below RAM (a power of two, RAM origin aligned to it). */
#define TT_STACK_GUARD_LOG2 16u
#define TT_STACK_GUARD_BYTES (1u << TT_STACK_GUARD_LOG2)

/* Symbols of the linker script. */
extern uint32_t _tt_stack_limit[];        /* bottom of main()'s stack = start of RAM */
extern uint32_t _tt_stack_top[];          /* top of main()'s stack (PSP) */
extern uint32_t _tt_handler_stack_top[];  /* top of the exception stack (MSP) */
extern uint32_t _tt_data_load[];          /* .data initial values in FLASH */
extern uint32_t _tt_data_start[];
extern uint32_t _tt_data_end[];
extern uint32_t _tt_bss_start[];
extern uint32_t _tt_bss_end[];
extern uint32_t _tt_ram_start[];
extern uint32_t _tt_ram_end[];

int main(void);
void Reset_Handler(void);
void SysTick_Handler(void);  /* common/tt_counter_*.c */
void tt_reset_c(void) __attribute__((noreturn, used));
void tt_fault_entry(void);
void tt_fault_report(const uint32_t *frame, uint32_t exc_return) __attribute__((noreturn, used));
void tt_unexpected_irq(void);
void _exit(int status) __attribute__((noreturn));

typedef union {
    void (*handler)(void);
    void *stack_top;
} tt_vector;

#define TT_IRQ {.handler = tt_unexpected_irq}
#define TT_IRQ4 TT_IRQ, TT_IRQ, TT_IRQ, TT_IRQ
#define TT_IRQ16 TT_IRQ4, TT_IRQ4, TT_IRQ4, TT_IRQ4
#define TT_NUM_VECTORS (16 + 16 * TT_BOARD_IRQ_BLOCKS)

/* VTOR needs the table aligned to the power of two above its size (at most 128 words). */
__attribute__((section(".isr_vector"), used, aligned(512)))
const tt_vector tt_vectors[TT_NUM_VECTORS] = {
    {.stack_top = _tt_handler_stack_top},
    {.handler = Reset_Handler},
    {.handler = tt_fault_entry},     /*  2 NMI */
    {.handler = tt_fault_entry},     /*  3 HardFault */
    {.handler = tt_fault_entry},     /*  4 MemManage */
    {.handler = tt_fault_entry},     /*  5 BusFault */
    {.handler = tt_fault_entry},     /*  6 UsageFault */
    {.handler = 0},                  /*  7 reserved */
    {.handler = 0},                  /*  8 reserved */
    {.handler = 0},                  /*  9 reserved */
    {.handler = 0},                  /* 10 reserved */
    {.handler = tt_unexpected_irq},  /* 11 SVCall */
    {.handler = tt_unexpected_irq},  /* 12 DebugMonitor */
    {.handler = 0},                  /* 13 reserved */
    {.handler = tt_unexpected_irq},  /* 14 PendSV */
    {.handler = SysTick_Handler},    /* 15 SysTick: the cycle counter */
#if TT_BOARD_IRQ_BLOCKS > 0
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 1
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 2
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 3
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 4
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 5
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 6
    TT_IRQ16,
#endif
#if TT_BOARD_IRQ_BLOCKS > 7
    TT_IRQ16,
#endif
};

/* Runs on the reset MSP with nothing on it: FPU on, switch thread mode to the PSP, go to C.
 * Written in assembly because the stack pointer changes under it. */
__attribute__((naked, used)) void Reset_Handler(void) {
    __asm__ volatile(
#if defined(__ARM_FP)
        "movw r0, #0xED88\n\t"          /* CPACR */
        "movt r0, #0xE000\n\t"
        "ldr r1, [r0]\n\t"
        "orr r1, r1, #0xF00000\n\t"     /* CP10, CP11: full access */
        "str r1, [r0]\n\t"
        "dsb\n\t"
        "isb\n\t"
#endif
        "movw r0, #:lower16:_tt_stack_top\n\t"
        "movt r0, #:upper16:_tt_stack_top\n\t"
        "msr psp, r0\n\t"
        "movs r0, #2\n\t"               /* CONTROL.SPSEL = 1: thread mode uses the PSP */
        "msr control, r0\n\t"
        "isb\n\t"
        "b tt_reset_c\n\t");
}

/* Forbids all access to [RAM origin - TT_STACK_GUARD_BYTES, RAM origin) (MPU region 0). */
static void tt_stack_guard_init(void) {
    uint32_t ram = (uint32_t)(uintptr_t)_tt_ram_start;
    if (((TT_MPU_TYPE >> 8) & 0xFFu) == 0u || ram < TT_STACK_GUARD_BYTES || ram % TT_STACK_GUARD_BYTES != 0u) {
        return; /* no MPU, or a RAM origin the guard cannot sit below */
    }
    TT_MPU_CTRL = 0u;
    TT_MPU_RNR = 0u;
    TT_MPU_RBAR = ram - TT_STACK_GUARD_BYTES;
    TT_MPU_RASR = TT_MPU_RASR_XN | TT_MPU_RASR_AP_NO_ACCESS | TT_MPU_RASR_SIZE(TT_STACK_GUARD_LOG2) |
                  TT_MPU_RASR_ENABLE;
    TT_MPU_CTRL = TT_MPU_CTRL_PRIVDEFENA | TT_MPU_CTRL_ENABLE;
    tt_dsb();
    tt_isb();
}

void tt_reset_c(void) {
    size_t n_data = (size_t)((uintptr_t)_tt_data_end - (uintptr_t)_tt_data_start) / sizeof(uint32_t);
    size_t n_bss = (size_t)((uintptr_t)_tt_bss_end - (uintptr_t)_tt_bss_start) / sizeof(uint32_t);
    for (size_t i = 0; i < n_data; ++i) {
        _tt_data_start[i] = _tt_data_load[i];
    }
    for (size_t i = 0; i < n_bss; ++i) {
        _tt_bss_start[i] = 0u;
    }
    TT_SCB_VTOR = (uint32_t)(uintptr_t)tt_vectors;
    TT_SCB_SHCSR |= TT_SCB_SHCSR_MEMFAULTENA | TT_SCB_SHCSR_BUSFAULTENA | TT_SCB_SHCSR_USGFAULTENA;
    TT_SCB_CCR |= TT_SCB_CCR_DIV_0_TRP;
    tt_stack_guard_init();
    tt_dsb();
    tt_isb();
    tt_board_exit(main());
}

/* newlib's exit() ends here. */
void _exit(int status) { tt_board_exit(status); }

/* Every fault: hand the stacked frame (MSP or PSP, per EXC_RETURN bit 2) to C. */
__attribute__((naked)) void tt_fault_entry(void) {
    __asm__ volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mov r1, lr\n\t"
        "b tt_fault_report\n\t");
}

static const char *const tt_exception_names[7] = {
    "thread mode", "Reset", "NMI", "HardFault", "MemManage", "BusFault", "UsageFault",
};

/* CFSR (MMFSR | BFSR << 8 | UFSR << 16) and HFSR bits, ARMv7-M ARM B3.2.15/B3.2.16. */
typedef struct {
    uint32_t bit;
    const char *what;
} tt_fault_bit;

static const tt_fault_bit tt_cfsr_bits[] = {
    {1u << 0, "instruction access violation (MPU/XN)"},
    {1u << 1, "data access violation (MPU)"},
    {1u << 3, "MemManage on exception return unstacking"},
    {1u << 4, "MemManage on exception entry stacking (stack overflow?)"},
    {1u << 8, "instruction bus error"},
    {1u << 9, "precise data bus error (unmapped or faulting address)"},
    {1u << 10, "imprecise data bus error"},
    {1u << 11, "bus error on exception return unstacking"},
    {1u << 12, "bus error on exception entry stacking (stack overflow?)"},
    {1u << 16, "undefined instruction"},
    {1u << 17, "invalid state (Thumb bit clear / bad vector)"},
    {1u << 18, "invalid PC load on exception return"},
    {1u << 19, "no coprocessor (FPU disabled?)"},
    {1u << 24, "unaligned access"},
    {1u << 25, "integer division by zero"},
};

static void tt_put_reg(const char *name, uint32_t value) {
    tt_board_puts("  ");
    tt_board_puts(name);
    tt_board_puts("=0x");
    tt_board_put_hex32(value);
}

void tt_fault_report(const uint32_t *frame, uint32_t exc_return) {
    uint32_t exception = tt_ipsr() & 0x1FFu;
    uint32_t cfsr = TT_SCB_CFSR;
    uint32_t hfsr = TT_SCB_HFSR;
    uint32_t frame_addr = (uint32_t)(uintptr_t)frame;
    /* The frame is readable only if stacking succeeded and it lies inside RAM. */
    int stacking_failed = (cfsr & ((1u << 4) | (1u << 12))) != 0u;
    int frame_ok = !stacking_failed && frame_addr >= (uint32_t)(uintptr_t)_tt_ram_start &&
                   frame_addr + 32u <= (uint32_t)(uintptr_t)_tt_ram_end;

    tt_board_puts("\r\n*** tinytrain fault: ");
    tt_board_puts(exception < 7u ? tt_exception_names[exception] : "exception");
    tt_board_puts(" (exception ");
    tt_board_put_u32(exception);
    tt_board_puts(") on ");
    tt_board_puts(tt_board_name());
    tt_board_puts("\r\n");
    if (frame_ok) {
        tt_put_reg("pc", frame[6]);
        tt_put_reg("lr", frame[5]);
        tt_put_reg("xpsr", frame[7]);
    }
    tt_put_reg("sp", frame_addr);
    tt_put_reg("exc_return", exc_return);
    tt_board_puts("\r\n");
    tt_put_reg("cfsr", cfsr);
    tt_put_reg("hfsr", hfsr);
    if (cfsr & (1u << 7)) {
        tt_put_reg("mmfar", TT_SCB_MMFAR);
    }
    if (cfsr & (1u << 15)) {
        tt_put_reg("bfar", TT_SCB_BFAR);
    }
    tt_board_puts("\r\n");
    for (size_t i = 0; i < sizeof tt_cfsr_bits / sizeof tt_cfsr_bits[0]; ++i) {
        if (cfsr & tt_cfsr_bits[i].bit) {
            tt_board_puts("  cause: ");
            tt_board_puts(tt_cfsr_bits[i].what);
            tt_board_puts("\r\n");
        }
    }
    if ((exc_return & 4u) && frame_addr < (uint32_t)(uintptr_t)_tt_stack_limit + 32u) {
        tt_board_puts("  cause: main stack overflow (sp at or below the stack's limit 0x");
        tt_board_put_hex32((uint32_t)(uintptr_t)_tt_stack_limit);
        tt_board_puts("): give the program a larger stack\r\n");
    }
    if (hfsr & (1u << 1)) {
        tt_board_puts("  cause: bus fault on vector table read\r\n");
    }
    if (hfsr & (1u << 30)) {
        tt_board_puts("  cause: escalated to HardFault\r\n");
    }
    tt_board_exit(TT_BOARD_EXIT_FAULT);
}

void tt_unexpected_irq(void) {
    tt_board_puts("\r\n*** tinytrain: unexpected exception ");
    tt_board_put_u32(tt_ipsr() & 0x1FFu);
    tt_board_puts(" on ");
    tt_board_puts(tt_board_name());
    tt_board_puts("\r\n");
    tt_board_exit(TT_BOARD_EXIT_UNEXPECTED_IRQ);
}
