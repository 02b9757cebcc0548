/* Board configuration of nrf52840: nRF52840 (Cortex-M4F, 64 MHz), nRF52840-DK pinout. */
#ifndef TT_BOARD_CONFIG_H
#define TT_BOARD_CONFIG_H

#define TT_BOARD_NAME "nrf52840"
#define TT_BOARD_IRQ_BLOCKS 3 /* 48 external interrupts (nRF52840 PS, instantiation table) */
#define TT_BOARD_CPU_HZ 64000000u

#endif /* TT_BOARD_CONFIG_H */
