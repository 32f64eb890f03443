/* Scratch-light int8 kernels (NHWC, batch 1 unless stated), bit-identical to TFLite's
 * reference kernels:
 *
 * - tp_fused_concat_conv2d: reference_integer_ops::ConvPerChannel (CONV_2D, grouped CONV_2D)
 *   or DepthwiseConvPerChannel (DEPTHWISE_CONV_2D) applied to the concatenation of its
 *   slices, without materialising that concatenation: resident slices are read in place,
 *   streamed slices row by row through their line buffers. All concat inputs must share
 *   the concat output's scale and zero point (then TFLite's concat is a plain copy).
 * - tp_fused_concat: the concatenation itself, on byte geometry (any dtype, any axis).
 * - tp_transpose_conv_rows: reference_integer_ops::TransposeConv (TRANSPOSE_CONV) in a
 *   gather formulation: each output element is one int32 sum over the input pixels that
 *   reach it, instead of TFLite's whole-output int32 scatter buffer. int32 addition is
 *   exact, so the result is the same. The row streaming runner (tp_rows.c) shares the
 *   per-row functions tp_conv_row / tp_transpose_conv_row.
 *
 * Limits (named constants; the planner's kernel table states them): at most
 * TP_MAX_SLICES slices per fused op, kernel height at most TP_MAX_KERNEL_H.
 */
#ifndef TP_KERNELS_H
#define TP_KERNELS_H

#include "tp_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifndef TP_MAX_SLICES
#define TP_MAX_SLICES 8
#endif
#ifndef TP_MAX_KERNEL_H
#define TP_MAX_KERNEL_H 16
#endif

typedef struct {
  int32_t in_h, in_w, in_c;     /* the virtual concatenation */
  int32_t out_h, out_w, out_c;
  int32_t k_h, k_w;
  int32_t stride_h, stride_w;
  int32_t dilation_h, dilation_w; /* streamed slices need dilation_h == 1 */
  int32_t pad_top, pad_left;
  int32_t input_offset;  /* -input zero point */
  int32_t output_offset; /* output zero point */
  int32_t act_min, act_max;
  const int8_t *filter;  /* conv: [out_c][k_h][k_w][filter_in_c]; depthwise: [1][k_h][k_w][out_c] */
  const int32_t *bias;   /* [out_c] or NULL */
  const int32_t *out_multiplier; /* [out_c] */
  const int32_t *out_shift;      /* [out_c], TFLite convention: > 0 shifts left */
  /* Grouped conv: input channels per filter (the filter's last dim); groups =
   * in_c / filter_in_c, out_c must be a multiple of groups. 0 means in_c (no groups). */
  int32_t filter_in_c;
  /* Depthwise conv (DEPTHWISE_CONV_2D): output channel oc reads input channel
   * oc / (out_c / in_c); filter_in_c is ignored. */
  int32_t depthwise;
} tp_conv_params;

int32_t tp_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);
/* TFLite's SAME padding (top/left) for one dimension. */
int32_t tp_same_padding(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t dilation);

int tp_fused_concat_conv2d(tp_runtime *rt, const tp_conv_params *p, const tp_slice *slices,
                           int n_slices, int8_t *output);
/* One output row oy of the same conv (one slice: all in_c channels) whose input row y is at
 * input + (y % rows_held) * in_w * in_c: a whole tensor (rows_held = in_h) or a ring.
 * The arithmetic is tp_fused_concat_conv2d's. TP_OK, or TP_ECONFIG. */
int tp_conv_row(const tp_conv_params *p, const uint8_t *input, int32_t rows_held, int32_t oy,
                int8_t *out_row);

/* The concatenation on byte geometry: the output is `outer` repeats of the slices' chunks
 * in slice order; slice i contributes channels_i * inner bytes per repeat (`inner` = bytes
 * per channel per repeat: the element size for an NHWC channel concat, H*W*element for an
 * NCHW one, whose outer is 1). A resident slice's repeat o starts at
 * data + o * pixel_stride * inner; a streamed slice delivers its compact bytes in stream
 * rows, in order. Works for every dtype. */
int tp_fused_concat(tp_runtime *rt, const tp_slice *slices, int n_slices, uint32_t outer,
                    uint32_t inner, uint8_t *output);

typedef struct {
  int32_t batches;               /* 0 means 1 */
  int32_t in_h, in_w, in_c;
  int32_t out_h, out_w, out_c;
  int32_t k_h, k_w;
  int32_t stride_h, stride_w;
  int32_t pad_top, pad_left;     /* tp_tconv_padding */
  int32_t input_offset;          /* -input zero point */
  int32_t output_offset;         /* output zero point */
  int32_t act_min, act_max;
  const int8_t *filter;          /* [out_c][k_h][k_w][in_c] (TFLite's TRANSPOSE_CONV layout) */
  const int32_t *bias;           /* [out_c] or NULL */
  const int32_t *out_multiplier; /* [out_c] */
  const int32_t *out_shift;      /* [out_c] */
} tp_tconv_params;

/* Bytes of the row_acc callers reserve for tp_transpose_conv_rows: out_w * out_c * 4
 * (kept for the scratch TinyPlanTransposeConv requests; the gather form writes none). */
uint32_t tp_tconv_scratch_bytes(const tp_tconv_params *p);
/* TFLite's TRANSPOSE_CONV padding (top or left) for one dimension: computed, as TFLite
 * does, from the output size alone (same: 1 for SAME, 0 for VALID). */
int32_t tp_tconv_padding(int32_t out, int32_t k, int32_t stride, int same);
/* TRANSPOSE_CONV int8, one output row at a time, in gather form (each output element is
 * one int32 sum over the input pixels that reach it). row_acc (out_w * out_c int32, the
 * scratch TinyPlanTransposeConv reserves) is no longer written; it stays in the signature
 * so callers and plans are unchanged. TP_OK, or TP_ECONFIG for inconsistent parameters. */
int tp_transpose_conv_rows(const tp_tconv_params *p, const int8_t *input, int32_t *row_acc,
                           int8_t *output);
/* Output row oy of the same TRANSPOSE_CONV (batch 1), input row y at
 * input + (y % rows_held) * in_w * in_c. TP_OK, or TP_ECONFIG. */
int tp_transpose_conv_row(const tp_tconv_params *p, const uint8_t *input, int32_t rows_held,
                          int32_t oy, int8_t *out_row);

/* TRANSPOSE_CONV 16x8 (int16 activations, zero points 0, int8 filter, int64 bias), as
 * TFLite's reference kernel: int64 accumulators, requantised with the 64-bit
 * MultiplyByQuantizedMultiplier. p->filter / out_multiplier / out_shift / act range as
 * for int8; p->bias and the offsets are ignored (use bias64). row_acc holds
 * out_w * out_c int64: tp_tconv_scratch_bytes_s16. */
uint32_t tp_tconv_scratch_bytes_s16(const tp_tconv_params *p);
int32_t tp_multiply_by_quantized_multiplier64(int64_t x, int32_t multiplier, int32_t shift);
int tp_transpose_conv_rows_s16(const tp_tconv_params *p, const int64_t *bias64,
                               const int16_t *input, int64_t *row_acc, int16_t *output);

#ifdef __cplusplus
}
#endif

#endif /* TP_KERNELS_H */
