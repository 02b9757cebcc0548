/*
 * Cycle counter of the real boards (stm32f746g-disco, nrf52840): DWT CYCCNT (32 bits, one
 * count per CPU clock cycle) extended to 64 bits in software.
 *
 * SysTick runs from the CPU clock with the largest reload (2^24 cycles per period) only to
 * fold CYCCNT into the 64-bit total at least once per 2^24 cycles, far below CYCCNT's wrap
 * at 2^32 cycles (20 s at 216 MHz), so no wrap is ever lost, even if nobody reads the
 * counter for hours. Resolution: 1 cycle.
 */
#include <stdint.h>

#include "tt_board.h"
#include "tt_cortexm.h"

void SysTick_Handler(void);

static volatile uint64_t tt_cycles_total;
static volatile uint32_t tt_cycles_last;

/* Adds the cycles since the last fold (mod 2^32: exact while folds are < 2^32 apart). */
static void tt_cycles_fold(void) {
    uint32_t now = TT_DWT_CYCCNT;
    tt_cycles_total = tt_cycles_total + (uint32_t)(now - tt_cycles_last);
    tt_cycles_last = now;
}

void SysTick_Handler(void) { tt_cycles_fold(); }

void tt_counter_init(void) {
    TT_DEMCR |= TT_DEMCR_TRCENA;
    TT_DWT_LAR = TT_DWT_LAR_KEY; /* unlock (needed on Cortex-M7, ignored on M4) */
    TT_DWT_CYCCNT = 0u;
    TT_DWT_CTRL |= TT_DWT_CTRL_CYCCNTENA;
    tt_cycles_total = 0u;
    tt_cycles_last = 0u;
    TT_SYST_CSR = 0u;
    TT_SYST_RVR = TT_SYST_MAX_RELOAD;
    TT_SYST_CVR = 0u;
    TT_SYST_CSR = TT_SYST_CSR_CLKSOURCE_CPU | TT_SYST_CSR_TICKINT | TT_SYST_CSR_ENABLE;
}

uint64_t tt_board_cycles(void) {
    uint32_t primask = tt_irq_save();
    tt_cycles_fold();
    uint64_t total = tt_cycles_total;
    tt_irq_restore(primask);
    return total;
}

uint32_t tt_board_cycles_resolution(void) { return 1u; }

const char *tt_board_counter_unit(void) { return "cycles"; }
