/*
 * Instruction counter of the QEMU targets (qemu-m4, qemu-m7): SysTick as a free-running
 * counter extended to 64 bits.
 *
 * QEMU's mps2 machines clock SysTick (CLKSOURCE = processor clock) at 25 MHz of virtual
 * time. With `-icount shift=0` every guest instruction advances virtual time by exactly
 * 1 ns, so SysTick ticks once per 40 instructions, deterministically: tt_board_cycles()
 * returns ticks * 40 = instructions executed since tt_counter_init(), with a resolution of
 * 40 instructions (a difference of two readings is exact to +-40). Without -icount the
 * value is virtual nanoseconds and means nothing.
 *
 * The 24-bit down counter reloads with TT_SYSTICK_RELOAD (default 2^24 - 1: one wrap per
 * 671 M instructions); the SysTick exception counts wraps. A reading masks interrupts,
 * takes the wrap count and the current value, and if a wrap is pending but not yet counted
 * (the reader runs at a priority that blocks SysTick, or the wrap happened since masking)
 * re-reads the value and adds the wrap itself.
 */
#include <stdint.h>

#include "tt_board.h"
#include "tt_cortexm.h"

#ifndef TT_SYSTICK_RELOAD
#define TT_SYSTICK_RELOAD TT_SYST_MAX_RELOAD
#endif
#if TT_SYSTICK_RELOAD < 255 || TT_SYSTICK_RELOAD > 0xFFFFFF
#error "TT_SYSTICK_RELOAD must be in 255..0xFFFFFF"
#endif

/* Instructions per SysTick tick: 1e9 ns/s (icount shift=0) / 25 MHz. */
#define TT_INSNS_PER_TICK 40u

void SysTick_Handler(void);

static volatile uint32_t tt_systick_wraps;

void SysTick_Handler(void) { tt_systick_wraps = tt_systick_wraps + 1u; }

void tt_counter_init(void) {
    TT_SYST_CSR = 0u;
    tt_systick_wraps = 0u;
    TT_SYST_RVR = TT_SYSTICK_RELOAD;
    TT_SYST_CVR = 0u; /* any write clears the counter: it reloads on the next tick */
    TT_SYST_CSR = TT_SYST_CSR_CLKSOURCE_CPU | TT_SYST_CSR_TICKINT | TT_SYST_CSR_ENABLE;
}

uint64_t tt_board_cycles(void) {
    uint32_t primask = tt_irq_save();
    uint32_t wraps = tt_systick_wraps;
    uint32_t value = TT_SYST_CVR;
    if (TT_SCB_ICSR & TT_SCB_ICSR_PENDSTSET) {
        /* A wrap the handler has not counted yet: the value read may predate it. */
        value = TT_SYST_CVR;
        wraps += 1u;
    }
    tt_irq_restore(primask);
    /* The counter runs RELOAD, ..., 1, 0 (wrap counted here), RELOAD, ...: ticks within
     * the current period are (RELOAD + 1 - value) mod (RELOAD + 1). */
    uint32_t within = value == 0u ? 0u : (uint32_t)TT_SYSTICK_RELOAD + 1u - value;
    uint64_t ticks = (uint64_t)wraps * ((uint64_t)TT_SYSTICK_RELOAD + 1u) + within;
    return ticks * TT_INSNS_PER_TICK;
}

uint32_t tt_board_cycles_resolution(void) { return TT_INSNS_PER_TICK; }

const char *tt_board_counter_unit(void) { return "instructions"; }
