/* Fused concat and concat+conv over slices (see tp_kernels.h). */
#include "tp_kernels.h"

#include <string.h>

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

/* An int32 accumulator of output channel oc to int8, as TFLite's per-channel kernels:
 * bias, MultiplyByQuantizedMultiplier, output offset, activation clamp. */
static int8_t requantize(int32_t acc, const int32_t *bias, const int32_t *multiplier,
                         const int32_t *shift, int32_t oc, int32_t output_offset,
                         int32_t act_min, int32_t act_max) {
  int64_t v;
  /* A bias that overflows the sum wraps, as the reference kernel's int32 does in practice
   * (unsigned arithmetic: defined behaviour here). */
  if (bias != NULL) acc = (int32_t)((uint32_t)acc + (uint32_t)bias[oc]);
  v = (int64_t)tp_multiply_by_quantized_multiplier(acc, multiplier[oc], shift[oc]) +
      output_offset;
  if (v < act_min) v = act_min;
  if (v > act_max) v = act_max;
  return (int8_t)v;
}

/* Filter element (oc, ky, kx, c) with c relative to the group's first input channel:
 * OHWI for (grouped) CONV_2D, 1HWO for DEPTHWISE_CONV_2D. */
typedef struct {
  size_t oc, k, c;
} filter_strides;

/* The filter geometry of a conv: input channels per group, output channels per group,
 * and the filter strides. TP_OK or TP_ECONFIG. */
typedef struct {
  int32_t group_in, per_group;
  filter_strides fs;
} conv_geometry;

static int conv_geometry_of(const tp_conv_params *p, conv_geometry *g) {
  if (p->k_h > TP_MAX_KERNEL_H || p->k_h <= 0 || p->k_w <= 0 || p->out_c <= 0 || p->in_c <= 0)
    return TP_ECONFIG;
  if (p->depthwise) {
    /* Depth multiplier m = out_c / in_c: output channel oc reads input channel oc / m. */
    if (p->out_c % p->in_c != 0) return TP_ECONFIG;
    g->group_in = 1;
    g->per_group = p->out_c / p->in_c;
    g->fs.oc = 1;
    g->fs.k = (size_t)p->out_c;
    g->fs.c = 0;
  } else {
    g->group_in = p->filter_in_c > 0 ? p->filter_in_c : p->in_c;
    if (p->in_c % g->group_in != 0 || p->out_c % (p->in_c / g->group_in) != 0) return TP_ECONFIG;
    g->per_group = p->out_c / (p->in_c / g->group_in);
    g->fs.oc = (size_t)p->k_h * p->k_w * g->group_in;
    g->fs.k = (size_t)g->group_in;
    g->fs.c = 1;
  }
  return TP_OK;
}

static void conv_output_row(const tp_conv_params *p, const conv_geometry *g,
                            const int8_t *rows[][TP_MAX_SLICES], const uint32_t *strides,
                            const int32_t *starts, const uint32_t *channels, int n_slices,
                            int8_t *out_row) {
  int32_t ox, oc, ky, kx, c, i;
  for (ox = 0; ox < p->out_w; ox++) {
    const int32_t x0 = ox * p->stride_w - p->pad_left;
    for (oc = 0; oc < p->out_c; oc++) {
      /* The input channels [c_lo, c_hi) this output channel reads. */
      const int32_t c_lo = (oc / g->per_group) * g->group_in, c_hi = c_lo + g->group_in;
      const int8_t *f_oc = p->filter + (size_t)oc * g->fs.oc;
      int32_t acc = 0;
      for (ky = 0; ky < p->k_h; ky++) {
        if (rows[ky][0] == NULL) continue; /* padding row */
        for (kx = 0; kx < p->k_w; kx++) {
          const int32_t x = x0 + kx * p->dilation_w;
          const int8_t *f = f_oc + ((size_t)ky * p->k_w + kx) * g->fs.k;
          if (x < 0 || x >= p->in_w) continue;
          for (i = 0; i < n_slices; i++) {
            const int32_t lo = starts[i] > c_lo ? starts[i] : c_lo;
            const int32_t end = starts[i] + (int32_t)channels[i];
            const int32_t hi = end < c_hi ? end : c_hi;
            const int8_t *px = rows[ky][i] + (size_t)x * strides[i];
            for (c = lo; c < hi; c++)
              acc += (int32_t)f[(size_t)(c - c_lo) * g->fs.c] *
                     ((int32_t)px[c - starts[i]] + p->input_offset);
          }
        }
      }
      out_row[(size_t)ox * p->out_c + oc] =
          requantize(acc, p->bias, p->out_multiplier, p->out_shift, oc, p->output_offset,
                     p->act_min, p->act_max);
    }
  }
}

int tp_conv_row(const tp_conv_params *p, const uint8_t *input, int32_t rows_held, int32_t oy,
                int8_t *out_row) {
  const int8_t *rows[TP_MAX_KERNEL_H][TP_MAX_SLICES];
  const uint32_t stride = (uint32_t)p->in_c, channels = (uint32_t)p->in_c;
  const int32_t start = 0;
  conv_geometry g;
  int32_t ky;
  int rc = conv_geometry_of(p, &g);
  if (rc != TP_OK) return rc;
  if (rows_held <= 0 || oy < 0 || oy >= p->out_h || p->in_h <= 0 || p->in_w <= 0 ||
      p->out_w <= 0 || p->stride_w <= 0 || p->dilation_h <= 0 || p->dilation_w <= 0)
    return TP_ECONFIG;
  for (ky = 0; ky < p->k_h; ky++) {
    const int32_t y = oy * p->stride_h - p->pad_top + ky * p->dilation_h;
    rows[ky][0] = (y >= 0 && y < p->in_h)
                      ? (const int8_t *)(input + (size_t)(y % rows_held) * p->in_w * p->in_c)
                      : NULL;
  }
  conv_output_row(p, &g, rows, &stride, &start, &channels, 1, out_row);
  return TP_OK;
}

int tp_fused_concat_conv2d(tp_runtime *rt, const tp_conv_params *p, const tp_slice *slices,
                           int n_slices, int8_t *output) {
  const int8_t *rows[TP_MAX_KERNEL_H][TP_MAX_SLICES];
  uint32_t strides[TP_MAX_SLICES], channels[TP_MAX_SLICES];
  int32_t starts[TP_MAX_SLICES];
  int32_t oy, ky, i, total = 0;
  conv_geometry g;
  int rc;
  if (n_slices <= 0 || n_slices > TP_MAX_SLICES) return TP_ECONFIG;
  rc = conv_geometry_of(p, &g);
  if (rc != TP_OK) return rc;
  for (i = 0; i < n_slices; i++) {
    starts[i] = total;
    channels[i] = slices[i].channels;
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
          rc = tp_slice_row(rt, &slices[i], (uint32_t)p->in_w, (uint32_t)y, &rows[ky][i],
                            &strides[i]);
          if (rc != TP_OK) return rc;
        }
      }
    }
    conv_output_row(p, &g, rows, strides, starts, channels, n_slices,
                    output + (size_t)oy * p->out_w * p->out_c);
  }
  return TP_OK;
}

/* A streamed slice: its compact bytes come in stream rows; byte b of the slice belongs
 * to repeat b / chunk at offset b % chunk of the slice's chunk. */
static int concat_stream(tp_stream_state *st, uint8_t *output, uint32_t chunk, uint32_t total,
                         uint32_t at, uint32_t nbytes) {
  const tp_action *a = st->action;
  uint32_t row, pos = 0;
  for (row = 0; row < a->rows && pos < nbytes; row++) {
    const uint8_t *src;
    uint32_t len = a->nbytes - row * a->row_bytes;
    int rc = tp_stream_row(st, row, &src);
    if (rc != TP_OK) return rc;
    if (len > a->row_bytes) len = a->row_bytes;
    while (len > 0) {
      const uint32_t o = pos / chunk, in = pos % chunk;
      const uint32_t take = chunk - in < len ? chunk - in : len;
      memcpy(output + (size_t)o * total + at + in, src, take);
      src += take;
      pos += take;
      len -= take;
    }
  }
  return pos == nbytes ? TP_OK : TP_EPLAN;
}

int tp_fused_concat(tp_runtime *rt, const tp_slice *slices, int n_slices, uint32_t outer,
                    uint32_t inner, uint8_t *output) {
  uint32_t total = 0, at = 0, o;
  int32_t i;
  (void)rt;
  if (n_slices <= 0 || n_slices > TP_MAX_SLICES || inner == 0) return TP_ECONFIG;
  for (i = 0; i < n_slices; i++) total += slices[i].channels * inner;
  /* Slice by slice: each stream has its own reader, so each only moves forward. */
  for (i = 0; i < n_slices; i++) {
    const uint32_t chunk = slices[i].channels * inner;
    if (slices[i].stream != NULL) {
      if (slices[i].stream->action->nbytes != outer * chunk) return TP_EPLAN;
      {
        int rc = concat_stream(slices[i].stream, output, chunk, total, at, outer * chunk);
        if (rc != TP_OK) return rc;
      }
    } else {
      const uint8_t *src = (const uint8_t *)slices[i].data;
      const size_t stride = (size_t)slices[i].pixel_stride * inner;
      for (o = 0; o < outer; o++) memcpy(output + (size_t)o * total + at, src + o * stride, chunk);
    }
    at += chunk;
  }
  return TP_OK;
}

uint32_t tp_tconv_scratch_bytes(const tp_tconv_params *p) {
  return (uint32_t)p->out_w * (uint32_t)p->out_c * 4u;
}

int32_t tp_tconv_padding(int32_t out, int32_t k, int32_t stride, int same) {
  /* TFLite: ComputePaddingHeightWidth(stride, 1, out, k, padding) with the transpose
   * conv's output as the "input" image: a conv over it would give `n` values. */
  int64_t n, total;
  if (stride <= 0 || k <= 0 || out < 0) return 0;
  n = same ? ((int64_t)out + stride - 1) / stride : ((int64_t)out + stride - k) / stride;
  if (n < 0) return 0;
  total = (n - 1) * stride + k - out;
  return total > 0 ? (int32_t)(total / 2) : 0;
}

/* Both row kernels (int8 and 16x8) need positive sizes and strides. */
static int tconv_shape_ok(const tp_tconv_params *p) {
  return p->in_h > 0 && p->in_w > 0 && p->in_c > 0 && p->out_h > 0 && p->out_w > 0 &&
         p->out_c > 0 && p->k_h > 0 && p->k_w > 0 && p->stride_h > 0 && p->stride_w > 0;
}

/* Output row oy in gather form: output pixel (oy, ox) takes input pixel (iy, ix) through
 * filter tap (ky, kx) when iy * stride_h - pad_top + ky == oy and likewise for x. Each
 * output element accumulates in one int32; int32 addition is exact, so the order differs
 * from TFLite's scatter but the sum does not. */
static void tconv_output_row(const tp_tconv_params *p, const uint8_t *input, int32_t rows_held,
                             int32_t oy, int8_t *out_row) {
  const size_t f_oc = (size_t)p->k_h * p->k_w * p->in_c;
  const size_t in_row_bytes = (size_t)p->in_w * p->in_c;
  int32_t ox, ky, kx, oc, c;
  for (ox = 0; ox < p->out_w; ox++) {
    for (oc = 0; oc < p->out_c; oc++) {
      const int8_t *f_o = p->filter + (size_t)oc * f_oc;
      int32_t acc = 0;
      for (ky = 0; ky < p->k_h; ky++) {
        const int32_t t = oy + p->pad_top - ky;
        const int8_t *in_row;
        if (t < 0 || t % p->stride_h != 0 || t / p->stride_h >= p->in_h) continue;
        in_row = (const int8_t *)(input + (size_t)((t / p->stride_h) % rows_held) * in_row_bytes);
        for (kx = 0; kx < p->k_w; kx++) {
          const int32_t u = ox + p->pad_left - kx;
          const int8_t *px, *f;
          if (u < 0 || u % p->stride_w != 0 || u / p->stride_w >= p->in_w) continue;
          px = in_row + (size_t)(u / p->stride_w) * p->in_c;
          f = f_o + ((size_t)ky * p->k_w + kx) * p->in_c;
          for (c = 0; c < p->in_c; c++) acc += ((int32_t)px[c] + p->input_offset) * f[c];
        }
      }
      out_row[(size_t)ox * p->out_c + oc] =
          requantize(acc, p->bias, p->out_multiplier, p->out_shift, oc, p->output_offset,
                     p->act_min, p->act_max);
    }
  }
}

int tp_transpose_conv_row(const tp_tconv_params *p, const uint8_t *input, int32_t rows_held,
                          int32_t oy, int8_t *out_row) {
  if (!tconv_shape_ok(p) || rows_held <= 0 || oy < 0 || oy >= p->out_h) return TP_ECONFIG;
  tconv_output_row(p, input, rows_held, oy, out_row);
  return TP_OK;
}

int tp_transpose_conv_rows(const tp_tconv_params *p, const int8_t *input, int32_t *row_acc,
                           int8_t *output) {
  const int32_t batches = p->batches > 0 ? p->batches : 1;
  const size_t row_len = (size_t)p->out_w * p->out_c;
  int32_t b, oy;
  (void)row_acc; /* the gather form needs no row buffer; callers still reserve one */
  if (!tconv_shape_ok(p)) return TP_ECONFIG;
  for (b = 0; b < batches; b++) {
    const uint8_t *in_b = (const uint8_t *)(input + (size_t)b * p->in_h * p->in_w * p->in_c);
    int8_t *out_b = output + (size_t)b * p->out_h * row_len;
    for (oy = 0; oy < p->out_h; oy++)
      tconv_output_row(p, in_b, p->in_h, oy, out_b + (size_t)oy * row_len);
  }
  return TP_OK;
}

uint32_t tp_tconv_scratch_bytes_s16(const tp_tconv_params *p) {
  return (uint32_t)p->out_w * (uint32_t)p->out_c * 8u;
}

/* TFLite's MultiplyByQuantizedMultiplier for int64 accumulators (16x8 kernels): the
 * multiplier reduced to 16 bits, one rounding shift. */
int32_t tp_multiply_by_quantized_multiplier64(int64_t x, int32_t multiplier, int32_t shift) {
  const int32_t reduced = multiplier < 0x7FFF0000 ? (multiplier + (1 << 15)) >> 16 : 0x7FFF;
  const int32_t total_shift = 15 - shift;
  const int64_t round = (int64_t)1 << (total_shift - 1);
  return (int32_t)((x * (int64_t)reduced + round) >> total_shift);
}

int tp_transpose_conv_rows_s16(const tp_tconv_params *p, const int64_t *bias64,
                               const int16_t *input, int64_t *row_acc, int16_t *output) {
  const int32_t batches = p->batches > 0 ? p->batches : 1;
  const size_t row_len = (size_t)p->out_w * p->out_c;
  const size_t f_oc = (size_t)p->k_h * p->k_w * p->in_c;
  int32_t b, oy, ky, ix, kx, oc, c;
  if (!tconv_shape_ok(p)) return TP_ECONFIG;
  for (b = 0; b < batches; b++) {
    const int16_t *in_b = input + (size_t)b * p->in_h * p->in_w * p->in_c;
    int16_t *out_b = output + (size_t)b * p->out_h * row_len;
    for (oy = 0; oy < p->out_h; oy++) {
      int16_t *out_row = out_b + (size_t)oy * row_len;
      size_t j;
      memset(row_acc, 0, row_len * sizeof(int64_t));
      for (ky = 0; ky < p->k_h; ky++) {
        const int32_t t = oy + p->pad_top - ky;
        const int16_t *in_row;
        if (t < 0 || t % p->stride_h != 0 || t / p->stride_h >= p->in_h) continue;
        in_row = in_b + (size_t)(t / p->stride_h) * p->in_w * p->in_c;
        for (ix = 0; ix < p->in_w; ix++) {
          const int16_t *px = in_row + (size_t)ix * p->in_c;
          for (kx = 0; kx < p->k_w; kx++) {
            const int32_t ox = ix * p->stride_w - p->pad_left + kx;
            int64_t *acc;
            const int8_t *f;
            if (ox < 0 || ox >= p->out_w) continue;
            acc = row_acc + (size_t)ox * p->out_c;
            f = p->filter + ((size_t)ky * p->k_w + kx) * p->in_c;
            for (oc = 0; oc < p->out_c; oc++) {
              const int8_t *fo = f + (size_t)oc * f_oc;
              int64_t sum = 0;
              for (c = 0; c < p->in_c; c++) sum += (int32_t)px[c] * (int32_t)fo[c];
              acc[oc] += sum;
            }
          }
        }
      }
      for (j = 0; j < row_len; j++) {
        const int32_t oc_j = (int32_t)(j % (size_t)p->out_c);
        int64_t acc = row_acc[j];
        int32_t v;
        if (bias64 != NULL) acc += bias64[oc_j];
        v = tp_multiply_by_quantized_multiplier64(acc, p->out_multiplier[oc_j], p->out_shift[oc_j]);
        if (v < p->act_min) v = p->act_min;
        if (v > p->act_max) v = p->act_max;
        out_row[j] = (int16_t)v;
      }
    }
  }
  return TP_OK;
}
