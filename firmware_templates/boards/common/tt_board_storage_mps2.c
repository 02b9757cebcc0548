/*
 * Checkpoint storage of the QEMU targets (qemu-m4, qemu-m7): the region is a host file
 * reached through ARM semihosting (SYS_OPEN / SYS_SEEK / SYS_READ / SYS_WRITE / SYS_FLEN;
 * QEMU runs with `-semihosting-config enable=on,target=native`, as for the exit status).
 * It survives QEMU restarts: a later QEMU with the same file sees the same bytes.
 *
 * Configuration comes from the semihosting command line (SYS_GET_CMDLINE; QEMU builds it
 * from `-kernel ELF -append "..."`, codegen/targets.py qemu_command(storage=...)):
 *   tt_storage=PATH       the backing file (no spaces in PATH); without it: no storage
 *   tt_storage_cut=K      fault injection: after K erase/program units the firmware stops
 *                         at once (semihosting exit, status TT_STORAGE_CUT_STATUS), a
 *                         deterministic power loss
 *
 * The file holds TT_STORAGE_PAGES pages of 4 KiB; a missing or short file is extended with
 * 0xFF (erased flash). Flash behaviour is emulated (tt_board_storage.h): program ANDs the
 * new bytes into the old ones (read, and, write back), erase writes 0xFF. Each semihosting
 * SYS_WRITE is one host write() of TT_STORAGE_PROGRAM_UNIT = 8 bytes (program) or
 * TT_STORAGE_ERASE_UNIT = 256 bytes (erase): a QEMU killed mid-operation (SIGKILL) leaves the
 * file changed up to a unit boundary, like a flash interrupted between two words.
 *
 * Flash timing: before each unit the firmware busy-waits TT_STORAGE_PROGRAM_SPIN (program)
 * or TT_STORAGE_ERASE_SPIN (erase) loop iterations (~5 instructions each), so that a save
 * takes a few million instructions of virtual time, as it takes milliseconds on a real part
 * (nRF52840: 41 us per word, 85 ms per page), and a power loss can land inside it. Define
 * them as 0 for the fastest saves.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tt_board.h"
#include "tt_board_storage.h"

#ifndef TT_STORAGE_PAGES
#define TT_STORAGE_PAGES 64u /* 256 KiB */
#endif
#define TT_STORAGE_PAGE 4096u
#ifndef TT_STORAGE_PROGRAM_SPIN
#define TT_STORAGE_PROGRAM_SPIN 2000u
#endif
#ifndef TT_STORAGE_ERASE_SPIN
#define TT_STORAGE_ERASE_SPIN 20000u
#endif
#define TT_STORAGE_PROGRAM_UNIT 8u
#define TT_STORAGE_ERASE_UNIT 256u
#define TT_STORAGE_CUT_STATUS 97
#define TT_STORAGE_CMDLINE 512u
#define TT_STORAGE_PATH_MAX 400u

#if TT_STORAGE_WRITE_ALIGN % TT_STORAGE_PROGRAM_UNIT != 0 || TT_STORAGE_PAGE % TT_STORAGE_ERASE_UNIT != 0
#error "inconsistent storage units"
#endif

/* Semihosting operations (ARM "Semihosting for AArch32 and AArch64", v2.0). */
#define TT_SH_SYS_OPEN 0x01u
#define TT_SH_SYS_WRITE 0x05u
#define TT_SH_SYS_READ 0x06u
#define TT_SH_SYS_SEEK 0x0Au
#define TT_SH_SYS_FLEN 0x0Cu
#define TT_SH_SYS_GET_CMDLINE 0x15u
#define TT_SH_MODE_RPLUS_B 3u /* fopen "r+b" */
#define TT_SH_MODE_WPLUS_B 7u /* fopen "w+b" */

static int tt_st_state;       /* 0: not tried, 1: open, <0: the error */
static uint32_t tt_st_handle; /* semihosting file handle */
static uint32_t tt_st_cut;    /* units left before the injected power loss; 0: none */
static char tt_st_cmdline[TT_STORAGE_CMDLINE];
static char tt_st_path[TT_STORAGE_PATH_MAX];
static uint8_t tt_st_buf[TT_STORAGE_ERASE_UNIT];

/* The semihosting call `op` with parameter block `arg`; r0 as returned (two's complement bits). */
static uint32_t tt_sh(uint32_t op, void *arg) {
    register uint32_t r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static int tt_sh_failed(uint32_t r) { return r >= 0x80000000u; } /* -1 */

static int tt_st_seek(uint32_t pos) {
    uint32_t block[2] = {tt_st_handle, pos};
    return tt_sh(TT_SH_SYS_SEEK, block) == 0u ? TT_STORAGE_OK : TT_STORAGE_ERR_IO;
}

/* SYS_WRITE / SYS_READ return the number of bytes NOT transferred. */
static int tt_st_xfer(uint32_t op, const void *data, uint32_t n) {
    uint32_t block[3];
    block[0] = tt_st_handle;
    block[1] = (uint32_t)(uintptr_t)data;
    block[2] = n;
    return tt_sh(op, block) == 0u ? TT_STORAGE_OK : TT_STORAGE_ERR_IO;
}

static void tt_st_spin(uint32_t n) {
    volatile uint32_t i;
    for (i = 0; i < n; i = i + 1u) {
    }
}

/* One unit of an erase or a program (after its flash time): the injected power loss comes
 * before the unit it stops. */
static int tt_st_write_unit(const void *data, uint32_t n) {
    tt_st_spin(n == TT_STORAGE_ERASE_UNIT ? TT_STORAGE_ERASE_SPIN : TT_STORAGE_PROGRAM_SPIN);
    if (tt_st_cut != 0u) {
        if (tt_st_cut == 1u) {
            tt_board_exit(TT_STORAGE_CUT_STATUS);
        }
        tt_st_cut -= 1u;
    }
    return tt_st_xfer(TT_SH_SYS_WRITE, data, n);
}

/* The value of `key` (e.g. "tt_storage=") in the command line, copied into out[0..cap); 1 if found. */
static int tt_st_option(const char *key, char *out, size_t cap) {
    size_t klen = strlen(key), i = 0, n = 0;
    while (tt_st_cmdline[i] != '\0') {
        if ((i == 0u || tt_st_cmdline[i - 1u] == ' ') && strncmp(tt_st_cmdline + i, key, klen) == 0) {
            const char *v = tt_st_cmdline + i + klen;
            while (v[n] != '\0' && v[n] != ' ' && n + 1u < cap) {
                out[n] = v[n];
                n++;
            }
            out[n] = '\0';
            return 1;
        }
        i++;
    }
    return 0;
}

static int tt_st_open(void) {
    uint32_t block[3];
    char cut[16];
    uint32_t len, r, i;
    block[0] = (uint32_t)(uintptr_t)tt_st_cmdline;
    block[1] = TT_STORAGE_CMDLINE - 1u;
    if (tt_sh(TT_SH_SYS_GET_CMDLINE, block) != 0u) {
        return TT_STORAGE_ERR_UNAVAILABLE;
    }
    tt_st_cmdline[TT_STORAGE_CMDLINE - 1u] = '\0';
    if (!tt_st_option("tt_storage=", tt_st_path, sizeof tt_st_path) || tt_st_path[0] == '\0') {
        return TT_STORAGE_ERR_UNAVAILABLE;
    }
    if (tt_st_option("tt_storage_cut=", cut, sizeof cut)) {
        for (i = 0; cut[i] >= '0' && cut[i] <= '9' && tt_st_cut < 100000000u; ++i) {
            tt_st_cut = tt_st_cut * 10u + (uint32_t)(cut[i] - '0');
        }
        tt_st_cut += (tt_st_cut != 0u) ? 1u : 0u; /* stop before unit K + 1 */
    }
    block[0] = (uint32_t)(uintptr_t)tt_st_path;
    block[1] = TT_SH_MODE_RPLUS_B;
    block[2] = (uint32_t)strlen(tt_st_path);
    r = tt_sh(TT_SH_SYS_OPEN, block);
    if (tt_sh_failed(r)) {
        block[1] = TT_SH_MODE_WPLUS_B; /* missing: create it */
        r = tt_sh(TT_SH_SYS_OPEN, block);
        if (tt_sh_failed(r)) {
            return TT_STORAGE_ERR_UNAVAILABLE;
        }
    }
    tt_st_handle = r;
    r = tt_sh(TT_SH_SYS_FLEN, &tt_st_handle);
    if (tt_sh_failed(r)) {
        return TT_STORAGE_ERR_IO;
    }
    len = r;
    if (len < TT_STORAGE_PAGES * TT_STORAGE_PAGE) { /* extend with erased bytes (not fault-injected) */
        memset(tt_st_buf, 0xFF, sizeof tt_st_buf);
        if (tt_st_seek(len) != TT_STORAGE_OK) {
            return TT_STORAGE_ERR_IO;
        }
        while (len < TT_STORAGE_PAGES * TT_STORAGE_PAGE) {
            uint32_t k = TT_STORAGE_PAGES * TT_STORAGE_PAGE - len;
            k = k < TT_STORAGE_ERASE_UNIT ? k : TT_STORAGE_ERASE_UNIT;
            if (tt_st_xfer(TT_SH_SYS_WRITE, tt_st_buf, k) != TT_STORAGE_OK) {
                return TT_STORAGE_ERR_IO;
            }
            len += k;
        }
    }
    return TT_STORAGE_OK;
}

int tt_board_storage_init(void) {
    if (tt_st_state == 0) {
        int s = tt_st_open();
        tt_st_state = s == TT_STORAGE_OK ? 1 : s;
    }
    return tt_st_state == 1 ? TT_STORAGE_OK : tt_st_state;
}

uint32_t tt_board_storage_page_size(void) { return TT_STORAGE_PAGE; }

uint32_t tt_board_storage_pages(void) { return TT_STORAGE_PAGES; }

static int tt_st_range(uint32_t offset, size_t n) {
    return offset <= TT_STORAGE_PAGES * TT_STORAGE_PAGE && n <= (size_t)(TT_STORAGE_PAGES * TT_STORAGE_PAGE - offset);
}

int tt_board_storage_erase(uint32_t page) {
    int s = tt_board_storage_init();
    uint32_t k;
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (page >= TT_STORAGE_PAGES) {
        return TT_STORAGE_ERR_RANGE;
    }
    memset(tt_st_buf, 0xFF, sizeof tt_st_buf);
    if (tt_st_seek(page * TT_STORAGE_PAGE) != TT_STORAGE_OK) {
        return TT_STORAGE_ERR_IO;
    }
    for (k = 0; k < TT_STORAGE_PAGE; k += TT_STORAGE_ERASE_UNIT) {
        if (tt_st_write_unit(tt_st_buf, TT_STORAGE_ERASE_UNIT) != TT_STORAGE_OK) {
            return TT_STORAGE_ERR_IO;
        }
    }
    return TT_STORAGE_OK;
}

int tt_board_storage_program(uint32_t offset, const void *data, size_t n) {
    const uint8_t *src = (const uint8_t *)data;
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (!tt_st_range(offset, n) || offset % TT_STORAGE_WRITE_ALIGN != 0u || n % TT_STORAGE_WRITE_ALIGN != 0u) {
        return TT_STORAGE_ERR_RANGE;
    }
    while (n > 0u) {
        uint32_t k = n < sizeof tt_st_buf ? (uint32_t)n : (uint32_t)sizeof tt_st_buf, i;
        /* flash semantics: the stored bytes become old & new */
        if (tt_st_seek(offset) != TT_STORAGE_OK || tt_st_xfer(TT_SH_SYS_READ, tt_st_buf, k) != TT_STORAGE_OK) {
            return TT_STORAGE_ERR_IO;
        }
        for (i = 0; i < k; ++i) {
            tt_st_buf[i] &= src[i];
        }
        if (tt_st_seek(offset) != TT_STORAGE_OK) {
            return TT_STORAGE_ERR_IO;
        }
        for (i = 0; i < k; i += TT_STORAGE_PROGRAM_UNIT) {
            if (tt_st_write_unit(tt_st_buf + i, TT_STORAGE_PROGRAM_UNIT) != TT_STORAGE_OK) {
                return TT_STORAGE_ERR_IO;
            }
        }
        offset += k;
        src += k;
        n -= k;
    }
    return TT_STORAGE_OK;
}

int tt_board_storage_read(uint32_t offset, void *data, size_t n) {
    int s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        return s;
    }
    if (!tt_st_range(offset, n)) {
        return TT_STORAGE_ERR_RANGE;
    }
    if (n == 0u) {
        return TT_STORAGE_OK;
    }
    if (tt_st_seek(offset) != TT_STORAGE_OK || tt_st_xfer(TT_SH_SYS_READ, data, (uint32_t)n) != TT_STORAGE_OK) {
        return TT_STORAGE_ERR_IO;
    }
    return TT_STORAGE_OK;
}
