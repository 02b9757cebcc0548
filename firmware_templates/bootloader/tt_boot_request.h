/*
 * For an application started by the tinytrain bootloader: restart into the bootloader
 * (the application's RESET mode 2). Writes the stay request (TT_BL_STAY_MAGIC and its
 * complement) into the no-init RAM words at the start of RAM (linker symbol
 * _tt_noinit_start: the application must be linked with noinit_bytes > 0, which
 * host_tools/firmware.py build_app(for_bootloader=True) does), then requests a system reset
 * (AIRCR.SYSRESETREQ, ARMv7-M ARM B3.2.6). The bootloader consumes the request and stays.
 * Send the command's response first: this does not return.
 */
#ifndef TT_BOOT_REQUEST_H
#define TT_BOOT_REQUEST_H

#include "tt_board.h"

void tt_boot_request_bootloader(void) TT_BOARD_NORETURN;

#endif /* TT_BOOT_REQUEST_H */
