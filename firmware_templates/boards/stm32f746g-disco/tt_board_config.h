/* Board configuration of stm32f746g-disco: STM32F746NG (Cortex-M7, 216 MHz). */
#ifndef TT_BOARD_CONFIG_H
#define TT_BOARD_CONFIG_H

#define TT_BOARD_NAME "stm32f746g-disco"
#define TT_BOARD_IRQ_BLOCKS 7 /* 98 external interrupts (RM0385 table 40), rounded up to 112 */
#define TT_BOARD_CPU_HZ 216000000u

#endif /* TT_BOARD_CONFIG_H */
