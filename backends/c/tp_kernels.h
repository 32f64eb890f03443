/* Fused int8 kernels over a virtual channel concatenation (NHWC, batch 1).
 *
 * tp_fused_concat_conv2d computes exactly TFLite's reference int8 CONV_2D
 * (reference_integer_ops::ConvPerChannel) applied to the concatenation of its slices,
 * without ever materialising that concatenation: resident slices are read in place,
 * streamed slices row by row through their line buffers. All concat inputs must share
 * the concat output's scale and zero point (then TFLite's concat is a plain copy).
 */
#ifndef TP_KERNELS_H
#define TP_KERNELS_H

#include "tp_runtime.h"

#ifdef __cplusplus
extern "C" {
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
  const int8_t *filter;  /* [out_c][k_h][k_w][in_c] */
  const int32_t *bias;   /* [out_c] or NULL */
  const int32_t *out_multiplier; /* [out_c] */
  const int32_t *out_shift;      /* [out_c], TFLite convention: > 0 shifts left */
} tp_conv_params;

int32_t tp_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift);
/* TFLite's SAME padding (top/left) for one dimension. */
int32_t tp_same_padding(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t dilation);

int tp_fused_concat_conv2d(tp_runtime *rt, const tp_conv_params *p, const tp_slice *slices,
                           int n_slices, int8_t *output);
/* The concatenation itself (fused fetch into a materialised concat output). */
int tp_fused_concat(tp_runtime *rt, const tp_slice *slices, int n_slices, int32_t height,
                    int32_t width, int8_t *output);

#ifdef __cplusplus
}
#endif

#endif /* TP_KERNELS_H */
