/* Restart into the bootloader (tt_boot_request.h). */
#include <stdint.h>

#include "tt_boot_request.h"
#include "tt_cortexm.h"

#define TT_BOOT_STAY_MAGIC 0x59415453u /* TT_BL_STAY_MAGIC of tt_bootloader.h */
#define TT_SCB_AIRCR TT_REG32(0xE000ED0Cu)
#define TT_SCB_AIRCR_VECTKEY (0x05FAu << 16)
#define TT_SCB_AIRCR_SYSRESETREQ (1u << 2)

extern uint32_t _tt_noinit_start[];

void tt_boot_request_bootloader(void) {
    volatile uint32_t *w = _tt_noinit_start;
    /* the caller's last UART byte may still be in the shift register: ~1 M iterations is over
     * 4 ms on the boards here (>= 40 byte times at 115200 baud), 3 M instructions in QEMU */
    for (volatile uint32_t i = 0; i < 1000000u; ++i) {
    }
    (void)tt_irq_save();
    w[0] = TT_BOOT_STAY_MAGIC;
    w[1] = ~TT_BOOT_STAY_MAGIC;
    tt_dsb();
    TT_SCB_AIRCR = TT_SCB_AIRCR_VECTKEY | (TT_SCB_AIRCR & 0x700u) | TT_SCB_AIRCR_SYSRESETREQ; /* keeps PRIGROUP */
    tt_dsb();
    for (;;) {
    }
}
