/*
 * Board support of the STM32F746G-DISCO (STM32F746NG, Cortex-M7): 216 MHz system clock
 * from the 25 MHz HSE crystal through the main PLL, Cortex-M7 caches, USART1 on the
 * ST-LINK virtual COM port, DWT cycle counter (common/tt_counter_dwt.c). Registers are
 * written by address; the references are RM0385 (STM32F75xxx/74xxx reference manual) and
 * UM1907 (the DISCO board's user manual). No vendor HAL.
 *
 * Clock tree after tt_board_init(): SYSCLK = HCLK = 216 MHz (PLL: 25 MHz / M 25 * N 432 /
 * P 2; PLL48CK = 432 / Q 9 = 48 MHz), APB1 = 54 MHz (max 54), APB2 = 108 MHz (max 108),
 * voltage scale 1 with over-drive, 7 flash wait states with ART accelerator and prefetch.
 * If the HSE does not start, the PLL runs from the 16 MHz HSI (M 16) to the same 216 MHz.
 *
 * UART: USART1 at 115200 8N1 from PCLK2 (108 MHz), TX on PA9 and RX on PB7 (AF7): the
 * DISCO board routes USART1 to the ST-LINK VCP on PA9/PB7 (UM1907; PA10 is the USB OTG FS
 * ID pin there). Overrun detection is disabled so a missed byte never blocks reception.
 *
 * tt_board_exit: no debugger is assumed, so it masks interrupts and waits forever.
 */
#include <stddef.h>
#include <stdint.h>

#include "tt_board.h"
#include "tt_board_config.h"
#include "tt_board_uart.h"
#include "tt_cortexm.h"

/* RCC (RM0385 section 5.3) */
#define TT_RCC_BASE 0x40023800u
#define TT_RCC_CR TT_REG32(TT_RCC_BASE + 0x00u)
#define TT_RCC_PLLCFGR TT_REG32(TT_RCC_BASE + 0x04u)
#define TT_RCC_CFGR TT_REG32(TT_RCC_BASE + 0x08u)
#define TT_RCC_AHB1ENR TT_REG32(TT_RCC_BASE + 0x30u)
#define TT_RCC_APB1ENR TT_REG32(TT_RCC_BASE + 0x40u)
#define TT_RCC_APB2ENR TT_REG32(TT_RCC_BASE + 0x44u)
#define TT_RCC_DCKCFGR2 TT_REG32(TT_RCC_BASE + 0x90u)
#define TT_RCC_CR_HSEON (1u << 16)
#define TT_RCC_CR_HSERDY (1u << 17)
#define TT_RCC_CR_HSEBYP (1u << 18)
#define TT_RCC_CR_PLLON (1u << 24)
#define TT_RCC_CR_PLLRDY (1u << 25)
#define TT_RCC_PLLCFGR_FIELDS 0x0F437FFFu   /* PLLM[5:0] PLLN[14:6] PLLP[17:16] PLLSRC[22] PLLQ[27:24] */
#define TT_RCC_PLLCFGR_SRC_HSE (1u << 22)
#define TT_RCC_CFGR_SW_MASK 0x3u
#define TT_RCC_CFGR_SW_PLL 0x2u
#define TT_RCC_CFGR_SWS_MASK (0x3u << 2)
#define TT_RCC_CFGR_SWS_PLL (0x2u << 2)
#define TT_RCC_CFGR_HPRE_MASK (0xFu << 4)   /* 0xxx: AHB = SYSCLK */
#define TT_RCC_CFGR_PPRE1_MASK (0x7u << 10)
#define TT_RCC_CFGR_PPRE1_DIV4 (0x5u << 10)
#define TT_RCC_CFGR_PPRE2_MASK (0x7u << 13)
#define TT_RCC_CFGR_PPRE2_DIV2 (0x4u << 13)
#define TT_RCC_AHB1ENR_GPIOAEN (1u << 0)
#define TT_RCC_AHB1ENR_GPIOBEN (1u << 1)
#define TT_RCC_APB1ENR_PWREN (1u << 28)
#define TT_RCC_APB2ENR_USART1EN (1u << 4)
#define TT_RCC_DCKCFGR2_USART1SEL_MASK 0x3u /* 00: PCLK2 */

/* PWR (RM0385 section 4.4) */
#define TT_PWR_CR1 TT_REG32(0x40007000u)
#define TT_PWR_CSR1 TT_REG32(0x40007004u)
#define TT_PWR_CR1_VOS_SCALE1 (0x3u << 14)
#define TT_PWR_CR1_ODEN (1u << 16)
#define TT_PWR_CR1_ODSWEN (1u << 17)
#define TT_PWR_CSR1_ODRDY (1u << 16)
#define TT_PWR_CSR1_ODSWRDY (1u << 17)

/* Flash interface (RM0385 section 3.7) */
#define TT_FLASH_ACR TT_REG32(0x40023C00u)
#define TT_FLASH_ACR_LATENCY_MASK 0xFu
#define TT_FLASH_ACR_LATENCY_7WS 7u         /* 210 < HCLK <= 216 MHz at 2.7-3.6 V */
#define TT_FLASH_ACR_PRFTEN (1u << 8)
#define TT_FLASH_ACR_ARTEN (1u << 9)

/* GPIO (RM0385 section 6.4) */
#define TT_GPIOA_BASE 0x40020000u
#define TT_GPIOB_BASE 0x40020400u
#define TT_GPIO_MODER(b) TT_REG32((b) + 0x00u)
#define TT_GPIO_OSPEEDR(b) TT_REG32((b) + 0x08u)
#define TT_GPIO_PUPDR(b) TT_REG32((b) + 0x0Cu)
#define TT_GPIO_AFRL(b) TT_REG32((b) + 0x20u)
#define TT_GPIO_AFRH(b) TT_REG32((b) + 0x24u)
#define TT_GPIO_MODE_AF 0x2u
#define TT_GPIO_SPEED_HIGH 0x2u
#define TT_GPIO_PULL_UP 0x1u
#define TT_GPIO_AF7_USART1 0x7u

/* USART1 (RM0385 section 31.8) */
#define TT_USART1_BASE 0x40011000u
#define TT_USART1_CR1 TT_REG32(TT_USART1_BASE + 0x00u)
#define TT_USART1_CR2 TT_REG32(TT_USART1_BASE + 0x04u)
#define TT_USART1_CR3 TT_REG32(TT_USART1_BASE + 0x08u)
#define TT_USART1_BRR TT_REG32(TT_USART1_BASE + 0x0Cu)
#define TT_USART1_ISR TT_REG32(TT_USART1_BASE + 0x1Cu)
#define TT_USART1_RDR TT_REG32(TT_USART1_BASE + 0x24u)
#define TT_USART1_TDR TT_REG32(TT_USART1_BASE + 0x28u)
#define TT_USART_CR1_UE (1u << 0)
#define TT_USART_CR1_RE (1u << 2)
#define TT_USART_CR1_TE (1u << 3)
#define TT_USART_CR3_OVRDIS (1u << 12)
#define TT_USART_ISR_RXNE (1u << 5)
#define TT_USART_ISR_TXE (1u << 7)
#define TT_USART_PCLK2_HZ 108000000u
#define TT_USART_BAUD 115200u
/* Oversampling by 16: BRR = round(f_ck / baud) = 938 (115139 baud, +0.05 %). */
#define TT_USART_BRR ((TT_USART_PCLK2_HZ + TT_USART_BAUD / 2u) / TT_USART_BAUD)

/* Bounded wait for an oscillator: polls `reg & mask` up to `tries` times. */
static int tt_wait_set(volatile uint32_t *reg, uint32_t mask, uint32_t tries) {
    for (uint32_t i = 0; i < tries; ++i) {
        if (*reg & mask) {
            return 1;
        }
    }
    return 0;
}

static void tt_clock_init(void) {
    /* Power controller clock, voltage scale 1 (needed above 180 MHz with over-drive). */
    TT_RCC_APB1ENR |= TT_RCC_APB1ENR_PWREN;
    (void)TT_RCC_APB1ENR; /* read back: the enable takes effect before the next access */
    TT_PWR_CR1 |= TT_PWR_CR1_VOS_SCALE1;

    /* HSE: the DISCO board's 25 MHz crystal (not bypass). ~1 M polls at 16 MHz HSI is
     * far longer than the crystal's start-up; on failure the PLL runs from the HSI. */
    TT_RCC_CR = (TT_RCC_CR & ~TT_RCC_CR_HSEBYP) | TT_RCC_CR_HSEON;
    int hse = tt_wait_set(&TT_RCC_CR, TT_RCC_CR_HSERDY, 1000000u);

    /* Run from the HSI while the PLL is reconfigured (a bootloader may have left SYSCLK on
     * the PLL, which then cannot be switched off). */
    TT_RCC_CFGR &= ~TT_RCC_CFGR_SW_MASK;
    while ((TT_RCC_CFGR & TT_RCC_CFGR_SWS_MASK) != 0u) {
    }

    /* Main PLL (off at reset): VCO in = 1 MHz, VCO out = 432 MHz, SYSCLK = 216 MHz, 48 MHz
     * clock = 48 MHz. Reserved PLLCFGR bits keep their reset value. */
    TT_RCC_CR &= ~TT_RCC_CR_PLLON;
    uint32_t pllm = hse ? 25u : 16u;
    uint32_t pll = pllm | (432u << 6) | (0u << 16) /* P = 2 */ | (9u << 24) /* Q */;
    if (hse) {
        pll |= TT_RCC_PLLCFGR_SRC_HSE;
    }
    TT_RCC_PLLCFGR = (TT_RCC_PLLCFGR & ~TT_RCC_PLLCFGR_FIELDS) | pll;
    TT_RCC_CR |= TT_RCC_CR_PLLON;
    while (!(TT_RCC_CR & TT_RCC_CR_PLLRDY)) {
    }

    /* Over-drive on, then switch to it (RM0385 4.1.4), required for 216 MHz. */
    TT_PWR_CR1 |= TT_PWR_CR1_ODEN;
    while (!(TT_PWR_CSR1 & TT_PWR_CSR1_ODRDY)) {
    }
    TT_PWR_CR1 |= TT_PWR_CR1_ODSWEN;
    while (!(TT_PWR_CSR1 & TT_PWR_CSR1_ODSWRDY)) {
    }

    /* Flash wait states before raising the clock; ART accelerator and prefetch on. */
    TT_FLASH_ACR = (TT_FLASH_ACR & ~TT_FLASH_ACR_LATENCY_MASK) | TT_FLASH_ACR_LATENCY_7WS |
                   TT_FLASH_ACR_PRFTEN | TT_FLASH_ACR_ARTEN;
    while ((TT_FLASH_ACR & TT_FLASH_ACR_LATENCY_MASK) != TT_FLASH_ACR_LATENCY_7WS) {
    }

    /* AHB /1, APB1 /4 (54 MHz), APB2 /2 (108 MHz), then SYSCLK from the PLL. */
    uint32_t cfgr = TT_RCC_CFGR & ~(TT_RCC_CFGR_HPRE_MASK | TT_RCC_CFGR_PPRE1_MASK | TT_RCC_CFGR_PPRE2_MASK);
    TT_RCC_CFGR = cfgr | TT_RCC_CFGR_PPRE1_DIV4 | TT_RCC_CFGR_PPRE2_DIV2;
    TT_RCC_CFGR = (TT_RCC_CFGR & ~TT_RCC_CFGR_SW_MASK) | TT_RCC_CFGR_SW_PLL;
    while ((TT_RCC_CFGR & TT_RCC_CFGR_SWS_MASK) != TT_RCC_CFGR_SWS_PLL) {
    }
}

/* Cortex-M7 L1 caches (ARMv7-M ARM B2.2.7, Cortex-M7 TRM 4.1): invalidate, then enable.
 * No DMA touches memory in tinytrain firmware, so no maintenance is needed afterwards. */
static void tt_cache_init(void) {
    tt_dsb();
    tt_isb();
    TT_SCB_ICIALLU = 0u;
    tt_dsb();
    tt_isb();
    TT_SCB_CCR |= TT_SCB_CCR_IC;
    tt_dsb();
    tt_isb();

    TT_SCB_CSSELR = 0u; /* level 1 data cache */
    tt_dsb();
    uint32_t ccsidr = TT_SCB_CCSIDR;
    uint32_t sets = ((ccsidr >> 13) & 0x7FFFu) + 1u;
    uint32_t ways = ((ccsidr >> 3) & 0x3FFu) + 1u;
    uint32_t line_shift = (ccsidr & 0x7u) + 4u; /* log2(line bytes) */
    uint32_t way_shift = 32u;                   /* 32 - ceil(log2(ways)) */
    for (uint32_t w = ways - 1u; w != 0u; w >>= 1) {
        --way_shift;
    }
    for (uint32_t set = 0; set < sets; ++set) {
        for (uint32_t way = 0; way < ways; ++way) {
            uint32_t way_bits = way_shift < 32u ? way << way_shift : 0u;
            TT_SCB_DCISW = way_bits | (set << line_shift);
        }
    }
    tt_dsb();
    TT_SCB_CCR |= TT_SCB_CCR_DC;
    tt_dsb();
    tt_isb();
}

static int tt_uart_ready;

const char *tt_board_name(void) { return TT_BOARD_NAME; }

void tt_board_uart_init(void) {
    TT_RCC_AHB1ENR |= TT_RCC_AHB1ENR_GPIOAEN | TT_RCC_AHB1ENR_GPIOBEN;
    TT_RCC_APB2ENR |= TT_RCC_APB2ENR_USART1EN;
    (void)TT_RCC_APB2ENR;
    TT_RCC_DCKCFGR2 &= ~TT_RCC_DCKCFGR2_USART1SEL_MASK; /* USART1 kernel clock = PCLK2 */

    /* PA9: USART1_TX, PB7: USART1_RX (with pull-up: the line idles high). */
    TT_GPIO_MODER(TT_GPIOA_BASE) = (TT_GPIO_MODER(TT_GPIOA_BASE) & ~(0x3u << 18)) | (TT_GPIO_MODE_AF << 18);
    TT_GPIO_OSPEEDR(TT_GPIOA_BASE) = (TT_GPIO_OSPEEDR(TT_GPIOA_BASE) & ~(0x3u << 18)) | (TT_GPIO_SPEED_HIGH << 18);
    TT_GPIO_AFRH(TT_GPIOA_BASE) = (TT_GPIO_AFRH(TT_GPIOA_BASE) & ~(0xFu << 4)) | (TT_GPIO_AF7_USART1 << 4);
    TT_GPIO_MODER(TT_GPIOB_BASE) = (TT_GPIO_MODER(TT_GPIOB_BASE) & ~(0x3u << 14)) | (TT_GPIO_MODE_AF << 14);
    TT_GPIO_PUPDR(TT_GPIOB_BASE) = (TT_GPIO_PUPDR(TT_GPIOB_BASE) & ~(0x3u << 14)) | (TT_GPIO_PULL_UP << 14);
    TT_GPIO_AFRL(TT_GPIOB_BASE) = (TT_GPIO_AFRL(TT_GPIOB_BASE) & ~(0xFu << 28)) | (TT_GPIO_AF7_USART1 << 28);

    /* 8N1, oversampling by 16, no flow control, overrun detection off. */
    TT_USART1_CR1 = 0u;
    TT_USART1_CR2 = 0u;
    TT_USART1_CR3 = TT_USART_CR3_OVRDIS;
    TT_USART1_BRR = TT_USART_BRR;
    TT_USART1_CR1 = TT_USART_CR1_TE | TT_USART_CR1_RE | TT_USART_CR1_UE;
    tt_uart_ready = 1;
}

void tt_board_uart_putc(uint8_t c) {
    if (!tt_uart_ready) {
        return; /* clocks not set up yet (e.g. a fault before tt_board_init) */
    }
    while (!(TT_USART1_ISR & TT_USART_ISR_TXE)) {
    }
    TT_USART1_TDR = c;
}

int tt_board_uart_getc(void) {
    if (!tt_uart_ready) {
        tt_board_uart_init();
    }
    while (!(TT_USART1_ISR & TT_USART_ISR_RXNE)) {
    }
    return (int)(TT_USART1_RDR & 0xFFu);
}

void tt_board_uart_write(const void *buf, size_t n) { tt_board_uart_write_bytes(buf, n); }

size_t tt_board_uart_read(void *buf, size_t n) { return tt_board_uart_read_bytes(buf, n); }

void tt_board_init(void) {
    tt_clock_init();
    tt_cache_init();
    tt_board_uart_init();
    tt_counter_init();
}

void tt_board_exit(int status) {
    (void)status;
    (void)tt_irq_save();
    for (;;) {
    }
}
