/* Board configuration of qemu-m7: QEMU mps2-an500 (Cortex-M7, CMSDK peripherals). */
#ifndef TT_BOARD_CONFIG_H
#define TT_BOARD_CONFIG_H

#define TT_BOARD_NAME "qemu-m7"
#define TT_BOARD_IRQ_BLOCKS 2 /* 32 external interrupts (CMSDK) */

#endif /* TT_BOARD_CONFIG_H */
