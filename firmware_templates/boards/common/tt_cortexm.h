/*
 * ARMv7-M core registers used by the board layer (System Control Block, SysTick, DWT,
 * debug), addressed directly (no CMSIS). Addresses and bits from the ARMv7-M
 * Architecture Reference Manual (B3.2 System Control Space).
 */
#ifndef TT_CORTEXM_H
#define TT_CORTEXM_H

#include <stdint.h>

#define TT_REG32(addr) (*(volatile uint32_t *)(uintptr_t)(addr))

/* System Control Block */
#define TT_SCB_ICSR TT_REG32(0xE000ED04u)   /* Interrupt Control and State */
#define TT_SCB_VTOR TT_REG32(0xE000ED08u)   /* Vector Table Offset */
#define TT_SCB_CCR TT_REG32(0xE000ED14u)    /* Configuration and Control */
#define TT_SCB_SHCSR TT_REG32(0xE000ED24u)  /* System Handler Control and State */
#define TT_SCB_CFSR TT_REG32(0xE000ED28u)   /* Configurable Fault Status (MMFSR|BFSR|UFSR) */
#define TT_SCB_HFSR TT_REG32(0xE000ED2Cu)   /* HardFault Status */
#define TT_SCB_MMFAR TT_REG32(0xE000ED34u)  /* MemManage Fault Address */
#define TT_SCB_BFAR TT_REG32(0xE000ED38u)   /* BusFault Address */
#define TT_SCB_CPACR TT_REG32(0xE000ED88u)  /* Coprocessor Access Control */

#define TT_SCB_ICSR_PENDSTSET (1u << 26)     /* SysTick exception pending */
#define TT_SCB_CCR_DIV_0_TRP (1u << 4)       /* trap integer division by zero */
#define TT_SCB_CCR_DC (1u << 16)             /* Cortex-M7: data cache enable */
#define TT_SCB_CCR_IC (1u << 17)             /* Cortex-M7: instruction cache enable */
#define TT_SCB_SHCSR_MEMFAULTENA (1u << 16)
#define TT_SCB_SHCSR_BUSFAULTENA (1u << 17)
#define TT_SCB_SHCSR_USGFAULTENA (1u << 18)
#define TT_SCB_CPACR_CP10_CP11_FULL (0xFu << 20) /* FPU (CP10, CP11) full access */

/* Cortex-M7 cache identification and maintenance */
#define TT_SCB_CCSIDR TT_REG32(0xE000ED80u)  /* Cache Size ID (of the cache CSSELR selects) */
#define TT_SCB_CSSELR TT_REG32(0xE000ED84u)  /* Cache Size Selection */
#define TT_SCB_ICIALLU TT_REG32(0xE000EF50u) /* I-cache invalidate all to PoU */
#define TT_SCB_DCISW TT_REG32(0xE000EF60u)   /* D-cache invalidate by set/way */

/* Memory Protection Unit (PMSAv7) */
#define TT_MPU_TYPE TT_REG32(0xE000ED90u)    /* DREGION[15:8]: number of regions, 0 = no MPU */
#define TT_MPU_CTRL TT_REG32(0xE000ED94u)
#define TT_MPU_RNR TT_REG32(0xE000ED98u)     /* region number */
#define TT_MPU_RBAR TT_REG32(0xE000ED9Cu)    /* region base address */
#define TT_MPU_RASR TT_REG32(0xE000EDA0u)    /* region attributes and size */
#define TT_MPU_CTRL_ENABLE (1u << 0)
#define TT_MPU_CTRL_PRIVDEFENA (1u << 2)     /* default memory map for privileged code */
#define TT_MPU_RASR_ENABLE (1u << 0)
#define TT_MPU_RASR_SIZE(log2_bytes) (((uint32_t)(log2_bytes) - 1u) << 1)
#define TT_MPU_RASR_AP_NO_ACCESS (0u << 24)
#define TT_MPU_RASR_XN (1u << 28)

/* SysTick (24-bit down counter) */
#define TT_SYST_CSR TT_REG32(0xE000E010u)    /* Control and Status */
#define TT_SYST_RVR TT_REG32(0xE000E014u)    /* Reload Value */
#define TT_SYST_CVR TT_REG32(0xE000E018u)    /* Current Value */
#define TT_SYST_CSR_ENABLE (1u << 0)
#define TT_SYST_CSR_TICKINT (1u << 1)
#define TT_SYST_CSR_CLKSOURCE_CPU (1u << 2)
#define TT_SYST_MAX_RELOAD 0x00FFFFFFu

/* Debug Exception and Monitor Control, Data Watchpoint and Trace unit */
#define TT_DEMCR TT_REG32(0xE000EDFCu)
#define TT_DEMCR_TRCENA (1u << 24)
#define TT_DWT_CTRL TT_REG32(0xE0001000u)
#define TT_DWT_CYCCNT TT_REG32(0xE0001004u)
#define TT_DWT_LAR TT_REG32(0xE0001FB0u)     /* Lock Access (Cortex-M7 requires the unlock key) */
#define TT_DWT_CTRL_CYCCNTENA (1u << 0)
#define TT_DWT_LAR_KEY 0xC5ACCE55u

static inline void tt_dsb(void) { __asm__ volatile("dsb 0xF" ::: "memory"); }
static inline void tt_isb(void) { __asm__ volatile("isb 0xF" ::: "memory"); }

/* Masks interrupts (PRIMASK) and returns the previous mask for tt_irq_restore. */
static inline uint32_t tt_irq_save(void) {
    uint32_t primask;
    __asm__ volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    return primask;
}

static inline void tt_irq_restore(uint32_t primask) {
    __asm__ volatile("msr primask, %0" ::"r"(primask) : "memory");
}

/* The number of the active exception (IPSR), 0 in thread mode. */
static inline uint32_t tt_ipsr(void) {
    uint32_t ipsr;
    __asm__ volatile("mrs %0, ipsr" : "=r"(ipsr));
    return ipsr;
}

/* Starts the free-running counter behind tt_board_cycles() (common/tt_counter_systick.c
 * on QEMU, common/tt_counter_dwt.c on real boards); called by tt_board_init(). */
void tt_counter_init(void);

#endif /* TT_CORTEXM_H */
