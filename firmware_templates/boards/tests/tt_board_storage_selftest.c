/*
 * Test firmware of the checkpoint storage layer (tt_board_storage.h), built for every target
 * by tests/test_checkpoint.py: run on the host and in QEMU (file-backed storage), compiled
 * and linked for the real boards. Checks the flash semantics on the last page of the region:
 * erase gives 0xFF, program stores the data, a second program ANDs, misaligned or
 * out-of-range calls are refused and change nothing. Exit status: 0 when every check
 * passed, 20 + the number of the first failed check, or 10 + the init error (1: no storage).
 */
#include <stdint.h>
#include <string.h>

#include "tt_board.h"
#include "tt_board_storage.h"

#define TT_CHECK_OR_EXIT(n, cond)           \
    do {                                    \
        if (!(cond)) {                      \
            tt_board_puts("storage: check "); \
            tt_board_put_u32((uint32_t)(n)); \
            tt_board_puts(" failed\n");     \
            return 20 + (n);                \
        }                                   \
    } while (0)

static uint8_t data[64];
static uint8_t back[64];

static int all_bytes(const uint8_t *p, size_t n, uint8_t v) {
    size_t i;
    for (i = 0; i < n; ++i) {
        if (p[i] != v) {
            return 0;
        }
    }
    return 1;
}

int main(void) {
    uint32_t pages, size, page, at, i;
    int s;
    tt_board_init();
    s = tt_board_storage_init();
    if (s != TT_STORAGE_OK) {
        tt_board_puts("storage: unavailable\n");
        return 10 - s;
    }
    pages = tt_board_storage_pages();
    size = tt_board_storage_page_size();
    page = pages - 1u;
    at = page * size;
    for (i = 0; i < sizeof data; ++i) {
        data[i] = (uint8_t)(0xA5u ^ (i * 37u));
    }
    TT_CHECK_OR_EXIT(1, pages >= 2u && size >= 4096u && size % TT_STORAGE_WRITE_ALIGN == 0u);
    TT_CHECK_OR_EXIT(2, tt_board_storage_erase(page) == TT_STORAGE_OK);
    TT_CHECK_OR_EXIT(3, tt_board_storage_read(at, back, sizeof back) == TT_STORAGE_OK && all_bytes(back, 64, 0xFF));
    TT_CHECK_OR_EXIT(4, tt_board_storage_program(at, data, sizeof data) == TT_STORAGE_OK);
    TT_CHECK_OR_EXIT(5, tt_board_storage_read(at, back, sizeof back) == TT_STORAGE_OK && memcmp(back, data, 64) == 0);
    memset(back, 0x0F, sizeof back);
    TT_CHECK_OR_EXIT(6, tt_board_storage_program(at, back, 16u) == TT_STORAGE_OK); /* flash: old & new */
    TT_CHECK_OR_EXIT(7, tt_board_storage_read(at, back, sizeof back) == TT_STORAGE_OK);
    for (i = 0; i < 16u; ++i) {
        TT_CHECK_OR_EXIT(8, back[i] == (uint8_t)(data[i] & 0x0Fu));
    }
    TT_CHECK_OR_EXIT(9, memcmp(back + 16, data + 16, 48) == 0);
    TT_CHECK_OR_EXIT(10, tt_board_storage_program(at + 8u, data, 16u) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(11, tt_board_storage_program(at, data, 8u) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(12, tt_board_storage_program(pages * size, data, 16u) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(13, tt_board_storage_read(pages * size - 8u, back, 16u) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(14, tt_board_storage_read(0xFFFFFFF0u, back, 32u) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(15, tt_board_storage_erase(pages) == TT_STORAGE_ERR_RANGE);
    TT_CHECK_OR_EXIT(16, tt_board_storage_read(at + 16u, back, 48u) == TT_STORAGE_OK && memcmp(back, data + 16, 48) == 0);
    TT_CHECK_OR_EXIT(17, tt_board_storage_erase(page) == TT_STORAGE_OK);
    TT_CHECK_OR_EXIT(18, tt_board_storage_read(at, back, sizeof back) == TT_STORAGE_OK && all_bytes(back, 64, 0xFF));
    tt_board_puts("storage: ok\n");
    return 0;
}
