/* Board configuration of qemu-m4: QEMU mps2-an386 (Cortex-M4F, CMSDK peripherals). */
#ifndef TT_BOARD_CONFIG_H
#define TT_BOARD_CONFIG_H

#define TT_BOARD_NAME "qemu-m4"
#define TT_BOARD_IRQ_BLOCKS 2 /* 32 external interrupts (CMSDK) */

#endif /* TT_BOARD_CONFIG_H */
