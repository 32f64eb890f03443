/* Fused concat and concat+conv over slices (see tp_kernels.h). */
#include "tp_kernels.h"

#include <string.h>

#ifndef TP_MAX_SLICES
#define TP_MAX_SLICES 8
#endif
#ifndef TP_MAX_KERNEL_H
#define TP_MAX_KERNEL_H 16
#endif

static int32_t saturating_rounding_doubling_high_mul(int32_t a, int32_t b) {
  int64_t ab;
  int32_t nudge;
  if (a == b && a == INT32_MIN) return INT32_MAX;
  ab = (int64_t)a * (int64_t)b;
  nudge = ab >= 0 ? (1 << 30) : (1 - (1 << 30));
  return (int32_t)((ab + nudge) / ((int64_t)1 << 31));
}

static int32_t rounding_divide_by_pot(int32_t x, int32_t exponent) {
  const int32_t mask = (int32_t)(((int64_t)1 << exponent) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TFLite's MultiplyByQuantizedMultiplier (double rounding, the reference default). */
int32_t tp_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int32_t shift) {
  const int32_t left = shift > 0 ? shift : 0;
  const int32_t right = shift > 0 ? 0 : -shift;
  return rounding_divide_by_pot(
      saturating_rounding_doubling_high_mul((int32_t)((uint32_t)x << left), multiplier), right);
}

int32_t tp_same_padding(int32_t in, int32_t out, int32_t k, int32_t stride, int32_t dilation) {
  int32_t eff = (k - 1) * dilation + 1;
  int32_t total = (out - 1) * stride + eff - in;
  return total > 0 ? total / 2 : 0;
}

int tp_fused_concat_conv2d(tp_runtime *rt, const tp_conv_params *p, const tp_slice *slices,
                           int n_slices, int8_t *output) {
  const int8_t *rows[TP_MAX_KERNEL_H][TP_MAX_SLICES];
  uint32_t strides[TP_MAX_SLICES];
  int32_t oy, ox, oc, ky, kx, c, i, total = 0;
  if (n_slices <= 0 || n_slices > TP_MAX_SLICES || p->k_h > TP_MAX_KERNEL_H) return TP_ECONFIG;
  for (i = 0; i < n_slices; i++) {
    total += (int32_t)slices[i].channels;
    if (slices[i].stream != NULL && p->dilation_h != 1) return TP_ECONFIG;
  }
  if (total != p->in_c) return TP_EPLAN;
  for (oy = 0; oy < p->out_h; oy++) {
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    /* Rows of this window, fetched in ascending order so that streams only move forward. */
    for (ky = 0; ky < p->k_h; ky++) {
      const int32_t y = y0 + ky * p->dilation_h;
      for (i = 0; i < n_slices; i++) {
        rows[ky][i] = NULL;
        if (y >= 0 && y < p->in_h) {
          int rc = tp_slice_row(rt, &slices[i], (uint32_t)p->in_w, (uint32_t)y, &rows[ky][i],
                                &strides[i]);
          if (rc != TP_OK) return rc;
        }
      }
    }
    for (ox = 0; ox < p->out_w; ox++) {
      const int32_t x0 = ox * p->stride_w - p->pad_left;
      for (oc = 0; oc < p->out_c; oc++) {
        int32_t acc = 0;
        const int8_t *f_oc = p->filter + (size_t)oc * p->k_h * p->k_w * p->in_c;
        for (ky = 0; ky < p->k_h; ky++) {
          if (rows[ky][0] == NULL) continue; /* padding row */
          for (kx = 0; kx < p->k_w; kx++) {
            const int32_t x = x0 + kx * p->dilation_w;
            const int8_t *f = f_oc + ((size_t)ky * p->k_w + kx) * p->in_c;
            if (x < 0 || x >= p->in_w) continue;
            for (i = 0; i < n_slices; i++) {
              const int8_t *px = rows[ky][i] + (size_t)x * strides[i];
              for (c = 0; c < (int32_t)slices[i].channels; c++)
                acc += (int32_t)f[c] * ((int32_t)px[c] + p->input_offset);
              f += slices[i].channels;
            }
          }
        }
        if (p->bias != NULL) acc += p->bias[oc];
        acc = tp_multiply_by_quantized_multiplier(acc, p->out_multiplier[oc], p->out_shift[oc]);
        acc += p->output_offset;
        if (acc < p->act_min) acc = p->act_min;
        if (acc > p->act_max) acc = p->act_max;
        output[((size_t)oy * p->out_w + ox) * p->out_c + oc] = (int8_t)acc;
      }
    }
  }
  return TP_OK;
}

int tp_fused_concat(tp_runtime *rt, const tp_slice *slices, int n_slices, int32_t height,
                    int32_t width, int8_t *output) {
  uint32_t total = 0, at;
  int32_t y, x, i;
  for (i = 0; i < n_slices; i++) total += slices[i].channels;
  for (y = 0; y < height; y++) {
    at = 0;
    for (i = 0; i < n_slices; i++) {
      const int8_t *row;
      uint32_t stride;
      int rc = tp_slice_row(rt, &slices[i], (uint32_t)width, (uint32_t)y, &row, &stride);
      if (rc != TP_OK) return rc;
      for (x = 0; x < width; x++)
        memcpy(output + ((size_t)y * width + x) * total + at, row + (size_t)x * stride,
               slices[i].channels);
      at += slices[i].channels;
    }
  }
  return TP_OK;
}
