/* Row streaming (issue #15): one-output-row int8 kernels and the streamed-group runner.
 *
 * A streamed group is a run of ops executed row by row: the tensors between its members
 * live in rings of a few rows, row r in slot r % rows_held. Every kernel here computes ONE
 * output row and reads its input rows through views (row r at base + (r % rows_held) *
 * row_bytes), so a whole tensor (rows_held = height), a ring and a line buffer are read
 * the same way. Bit-identical to TFLite's reference kernels (reference_integer_ops):
 * CONV_2D (grouped, 1x1, any stride), DEPTHWISE_CONV_2D (depth multiplier),
 * MAX_POOL_2D, AVERAGE_POOL_2D, ADD, MUL (fused activation), CONCATENATION on the channel
 * axis (a byte copy: inputs share the output's scale and zero point), and TRANSPOSE_CONV
 * (gather form, tp_kernels.c). Conv and transpose-conv arithmetic is tp_kernels.c's.
 * C99, no allocation, no TFLM dependency.
 *
 * ---------------------------------------------------------------------------------------
 * Program words (int32), written only by backends/c/group_program.py (encode):
 *
 *   header  [0] TP_GROUP_MAGIC   [1] TP_GROUP_VERSION   [2] n_views   [3] n_ops
 *           [4] n_steps          [5] words (total, must equal tp_group_run's `words`)
 *   views   n_views x 5 words:   mode, height, row_bytes, rows_held, address
 *           mode: TP_VIEW_WHOLE | TP_VIEW_RING | TP_VIEW_STREAM_IN | TP_VIEW_SPILL_ROWS.
 *           The buffer bases[v] holds rows_held * row_bytes bytes; row r of the tensor
 *           (0 <= r < height) is at bases[v] + (r % rows_held) * row_bytes. WHOLE needs
 *           rows_held == height; a constant is WHOLE with height 1, row_bytes = its bytes.
 *           address: storage byte address of row 0 (stream_in, spill_rows; else 0); row r
 *           is at address + r * row_bytes in storage.
 *   ops     n_ops records:       kind, record words, n_in, in_view[n_in], out_view, params
 *           (in_view -1: an omitted optional input, the bias only)
 *     TP_OPK_CONV / TP_OPK_DEPTHWISE  n_in 3 (input, filter, bias|-1); params:
 *           in_h in_w in_c out_h out_w out_c k_h k_w stride_h stride_w pad_top pad_left
 *           input_offset output_offset act_min act_max filter_in_c
 *           multiplier[out_c] shift[out_c]                  (17 + 2 out_c words)
 *           filter OHWI [out_c][k_h][k_w][filter_in_c] (grouped when filter_in_c < in_c);
 *           depthwise 1HWO [1][k_h][k_w][out_c], filter_in_c written as 0.
 *     TP_OPK_TCONV  n_in 3 (input, filter OHWI [out_c][k_h][k_w][in_c], bias|-1); params:
 *           in_h in_w in_c out_h out_w out_c k_h k_w stride_h stride_w pad_top pad_left
 *           input_offset output_offset act_min act_max multiplier[out_c] shift[out_c]
 *                                                           (16 + 2 out_c words)
 *     TP_OPK_MAX_POOL / TP_OPK_AVG_POOL  n_in 1; params:
 *           in_h in_w c out_h out_w k_h k_w stride_h stride_w pad_top pad_left
 *           act_min act_max                                 (13 words)
 *     TP_OPK_ADD  n_in 2; params: input1_offset input2_offset output_offset left_shift
 *           input1_multiplier input1_shift input2_multiplier input2_shift
 *           output_multiplier output_shift act_min act_max  (12 words)
 *     TP_OPK_MUL  n_in 2; params: input1_offset input2_offset output_offset
 *           output_multiplier output_shift act_min act_max  (7 words)
 *     TP_OPK_CONCAT  n_in >= 1 (at most TP_MAX_SLICES); params: width, channels[n_in]
 *                                                           (1 + n_in words)
 *     Offsets are TFLite's: input_offset = -input zero point (in [-255, 255]),
 *     output_offset = output zero point (in [-128, 127]). Shifts: > 0 left, in [-31, 31];
 *     ADD's left_shift in [0, 20]. Sizes, kernels, strides, pads: at most TP_GROUP_MAX_DIM. Heights and row bytes of the views must
 *     agree with the params (a conv's input view: height in_h, row_bytes in_w * in_c).
 *   schedule  n_steps x 2 words: (op position, output row): compute that row; or
 *           (-1 - v, row): read that row of STREAM_IN view v from storage into its slot
 *           (the encoder puts it just before the first member row that reads it; rows no
 *           band reads are never read). Each op's rows come in order 0 .. out_h - 1, each
 *           exactly once, after the rows they read.
 * ---------------------------------------------------------------------------------------
 *
 * Runner semantics: a STREAM_IN view's row r is read through io->read (address + r *
 * row_bytes) into slot r % rows_held by its schedule entry, at its first need; a SPILL_ROWS view's row is written through io->write right after it
 * is produced (it may also be read by later members while its slot holds it). A ring or
 * line slot that is recycled (row r >= rows_held goes in) is first overwritten with
 * *poison when poison != NULL. Rings are not checked for residency: an undersized ring
 * gives wrong numbers (what the executor's poisoning shows), never an out-of-bounds
 * access. Every index, count and geometry of the program is validated first.
 */
#ifndef TP_ROWS_H
#define TP_ROWS_H

#include <stdint.h>

#include "tp_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TP_GROUP_MAX_OPS 32
#define TP_GROUP_MAX_VIEWS 64
#define TP_GROUP_MAGIC 0x31475054 /* "TPG1" little-endian */
#define TP_GROUP_VERSION 1
#define TP_GROUP_HEADER_WORDS 6
#define TP_GROUP_VIEW_WORDS 5
/* Largest size, kernel, stride or padding a program may give: products of two stay in
 * int32 (row positions like oy * stride - pad never overflow). */
#define TP_GROUP_MAX_DIM 32767

/* Error codes beside tp_storage.h's TP_E* (-1..-5). */
#define TP_EPROGRAM (-6)  /* malformed program: magic, counts, indices, geometry, params */
#define TP_ESCHEDULE (-7) /* schedule: a row out of order, repeated, or missing */
#define TP_EIO_CALLBACK (-8) /* io->read / io->write failed, or io missing where needed */

enum { TP_VIEW_WHOLE = 0, TP_VIEW_RING = 1, TP_VIEW_STREAM_IN = 2, TP_VIEW_SPILL_ROWS = 3 };
enum {
  TP_OPK_CONV = 1,
  TP_OPK_DEPTHWISE = 2,
  TP_OPK_TCONV = 3,
  TP_OPK_MAX_POOL = 4,
  TP_OPK_AVG_POOL = 5,
  TP_OPK_ADD = 6,
  TP_OPK_MUL = 7,
  TP_OPK_CONCAT = 8
};

typedef struct {
  void *ctx;
  int (*read)(void *ctx, uint32_t address, uint8_t *dst, int32_t nbytes);        /* stream in */
  int (*write)(void *ctx, uint32_t address, const uint8_t *src, int32_t nbytes); /* spill rows */
} tp_group_io;

/* Runs the group program. bases[v]: the buffer of view v (the group op's inputs, then
 * outputs, then rings). poison: NULL, or a byte written over a ring/line slot each time
 * it is recycled. Returns 0 (TP_OK), or a negative error code. */
int tp_group_run(const int32_t *program, int32_t words, uint8_t *const *bases,
                 const tp_group_io *io, const uint8_t *poison);

/* Only validates the program (what tp_group_run does before running): TP_OK or the code. */
int tp_group_check(const int32_t *program, int32_t words);

/* ---- the row kernels (also callable one by one) ---------------------------------------- */

typedef struct {
  int32_t in_h, in_w, channels;
  int32_t out_h, out_w;
  int32_t k_h, k_w, stride_h, stride_w, pad_top, pad_left;
  int32_t act_min, act_max;
  int32_t average; /* 0 MAX_POOL_2D, 1 AVERAGE_POOL_2D */
} tp_pool_params;

typedef struct {
  int32_t input1_offset, input2_offset, output_offset, left_shift;
  int32_t input1_multiplier, input1_shift, input2_multiplier, input2_shift;
  int32_t output_multiplier, output_shift;
  int32_t act_min, act_max;
} tp_add_params;

typedef struct {
  int32_t input1_offset, input2_offset, output_offset;
  int32_t output_multiplier, output_shift;
  int32_t act_min, act_max;
} tp_mul_params;

/* Pooling output row oy; input row y at input + (y % rows_held) * in_w * channels. */
int tp_pool_row(const tp_pool_params *p, const uint8_t *input, int32_t rows_held, int32_t oy,
                int8_t *out_row);
/* n elements of one row: reference_integer_ops::AddElementwise / MulElementwise. */
int tp_add_row(const tp_add_params *p, const int8_t *a, const int8_t *b, int32_t n,
               int8_t *out);
int tp_mul_row(const tp_mul_params *p, const int8_t *a, const int8_t *b, int32_t n,
               int8_t *out);
/* Channel concatenation of one row of width pixels: input i gives channels[i] bytes per
 * pixel from rows[i]. */
int tp_concat_row(const int8_t *const *rows, const int32_t *channels, int32_t n_in,
                  int32_t width, int8_t *out_row);
/* Conv / depthwise / transpose conv rows: tp_conv_row and tp_transpose_conv_row
 * (tp_kernels.h). */

#ifdef __cplusplus
}
#endif

#endif /* TP_ROWS_H */
