/*
 * tinytrain training application: command codes and payload sizes of the command loop
 * (firmware_templates/app/tt_app.c). The payload layouts are specified in docs/protocol.md,
 * section "Application commands"; the host client is host_tools/device.py.
 *
 * The application is built from a generated training program (tt_model.h) plus tt_frame.c
 * and tt_app.c (host_tools/firmware.py build_app). It needs these macros, passed with -D
 * until the generator emits them in tt_model.h:
 *   TT_MODEL_ID      u32, host_tools.firmware.model_id() of the compiled program
 *   TT_MODEL_NAME    C string literal, the model's name
 *   TT_MODEL_SCHEME  C string literal, the training scheme
 */
#ifndef TT_APP_H
#define TT_APP_H

#define TT_APP_ROLE 1u /* IDENTIFY role: 0 bootloader, 1 application */

/* Application commands (0x01-0x3F). */
#define TT_APP_CMD_IDENTIFY 0x01u
#define TT_APP_CMD_TRAIN 0x02u
#define TT_APP_CMD_EVAL 0x03u
#define TT_APP_CMD_STATS 0x04u
#define TT_APP_CMD_READ_TENSOR 0x05u
#define TT_APP_CMD_WRITE_TENSOR 0x06u
#define TT_APP_CMD_SAVE_CKPT 0x07u /* reserved: not in this firmware yet (UNKNOWN_CMD) */
#define TT_APP_CMD_LOAD_CKPT 0x08u /* reserved: not in this firmware yet (UNKNOWN_CMD) */
#define TT_APP_CMD_RESET 0x09u
#define TT_APP_CMD_TENSOR_INFO 0x0Au
#define TT_APP_CMD_SAMPLE_WRITE 0x0Bu
#define TT_APP_CMD_SET_LR 0x0Cu
#define TT_APP_CMD_SET_SCHEDULE 0x0Du

/* Largest data chunk of READ_TENSOR / WRITE_TENSOR / SAMPLE_WRITE (+ an 8- or 4-byte header). */
#define TT_APP_MAX_CHUNK 1024u

/* RESET modes. */
#define TT_APP_RESET_STATS 0u   /* clear the statistics */
#define TT_APP_RESET_WEIGHTS 1u /* tt_init(seed): initial weights, step 0, lr 1.0, constant schedule; + stats */
#define TT_APP_RESET_BOOT 2u    /* restart into the bootloader: BAD_ARG until there is one */

/* STATS flags. */
#define TT_APP_STATS_CLEAR 1u /* clear the statistics after reading them */

/* IDENTIFY: fixed part of the response, then the three strings (model, scheme, board). */
#define TT_APP_IDENTIFY_FIXED 32u

/* Payload sizes of the fixed-size responses. */
#define TT_APP_TRAIN_RESPONSE 12u
#define TT_APP_STATS_RESPONSE 49u

/* Counter units (IDENTIFY, STATS). */
#define TT_APP_UNIT_INSTRUCTIONS 0u
#define TT_APP_UNIT_CYCLES 1u
#define TT_APP_UNIT_NS 2u

#endif /* TT_APP_H */
