/*
 * tinytrain training application: power-loss-safe checkpoints of the trained state in the
 * board's storage region (tt_board_storage.h). Format and rules: docs/protocol.md,
 * section "Checkpoints".
 *
 * The region is split into two slots of equal size (TT_CKPT_SLOTS). A slot is a 32-byte
 * header followed by the payload:
 *
 *   header (little-endian u32 fields)
 *     0  magic            TT_CKPT_MAGIC ("TTCK")
 *     4  format version   TT_CKPT_VERSION
 *     8  model id         TT_MODEL_ID of the program that wrote it
 *    12  sequence number  1 for the first checkpoint, +1 for each later one
 *    16  payload length   bytes
 *    20  payload CRC-32   zlib.crc32 of the payload
 *    24  run-state words  how many i32 words of generated run state the payload carries
 *    28  header CRC-32    of bytes 0..27
 *   payload
 *     u32 step            the application's step counter (TRAIN's step)
 *     i32 run_state[n]    tt_get_run_state() when the generated program has it (n = TT_RUN_STATE_WORDS), else n = 0
 *     every trained tensor's bytes, in tt_tensor_info order (the device's slices)
 *
 * Save: the slot not holding the newest valid checkpoint is erased, the payload programmed
 * and verified, then the header programmed last (the commit record) and verified. A power
 * loss at any moment leaves the other slot untouched and this one either without a valid
 * header or complete. Load: the valid slot (magic, version, header CRC, this program's model
 * id, the expected payload length, payload CRC) with the highest sequence number is applied
 * only after it was fully validated.
 */
#ifndef TT_CKPT_H
#define TT_CKPT_H

#include <stdint.h>

#define TT_CKPT_MAGIC 0x4B435454u /* "TTCK" little-endian */
#define TT_CKPT_VERSION 1u
#define TT_CKPT_HEADER_SIZE 32u
#define TT_CKPT_SLOTS 2u

/* Results (negative: nothing was applied / the previous checkpoints are intact). */
#define TT_CKPT_OK 0
#define TT_CKPT_ERR_NONE (-1)        /* load: no valid checkpoint of this program */
#define TT_CKPT_ERR_UNAVAILABLE (-2) /* no storage on this board / build / command line */
#define TT_CKPT_ERR_SIZE (-3)        /* save: the checkpoint does not fit a slot */
#define TT_CKPT_ERR_IO (-4)          /* an erase, program or read failed */
#define TT_CKPT_ERR_VERIFY (-5)      /* save: the data read back differs; load: it changed while applied */
#define TT_CKPT_ERR_STATE (-6)       /* load: the generated program refused the saved run state */

typedef struct {
    uint32_t sequence;
    uint32_t slot;
    uint32_t step;
    uint32_t payload_bytes;
    uint32_t payload_crc;
    uint32_t state_words; /* run-state words saved / restored (0 until the program exposes them) */
} tt_ckpt_info;

/* Saves the trained tensors (+ step and run state) of the current program as a new checkpoint. */
int tt_ckpt_save(uint32_t model_id, uint32_t step, tt_ckpt_info *info);
/* Applies the newest valid checkpoint of model_id; *info (and info->step) describes it. */
int tt_ckpt_load(uint32_t model_id, tt_ckpt_info *info);

#endif /* TT_CKPT_H */
