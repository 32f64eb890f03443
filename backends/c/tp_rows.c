/* Row kernels and the streamed-group runner (see tp_rows.h for the program words). */
#include "tp_rows.h"

#include <string.h>

/* ---- row kernels ------------------------------------------------------------------------ */

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
/* Sums of a requantised value and an offset, kept in int64 so no input overflows them. */
static int32_t clamp64(int64_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : (int32_t)v);
}

int tp_pool_row(const tp_pool_params *p, const uint8_t *input, int32_t rows_held, int32_t oy,
                int8_t *out_row) {
  const size_t in_row = (size_t)p->in_w * p->channels;
  int32_t ox, c, ky, kx;
  if (p->in_h <= 0 || p->in_w <= 0 || p->channels <= 0 || p->out_w <= 0 || p->k_h <= 0 ||
      p->k_w <= 0 || p->stride_h <= 0 || p->stride_w <= 0 || rows_held <= 0 || oy < 0 ||
      oy >= p->out_h)
    return TP_ECONFIG;
  {
    /* reference_integer_ops::MaxPool / AveragePool: the window clipped to the image. */
    const int32_t y0 = oy * p->stride_h - p->pad_top;
    const int32_t ky_lo = y0 < 0 ? -y0 : 0;
    const int32_t ky_hi = p->in_h - y0 < p->k_h ? p->in_h - y0 : p->k_h;
    for (ox = 0; ox < p->out_w; ox++) {
      const int32_t x0 = ox * p->stride_w - p->pad_left;
      const int32_t kx_lo = x0 < 0 ? -x0 : 0;
      const int32_t kx_hi = p->in_w - x0 < p->k_w ? p->in_w - x0 : p->k_w;
      for (c = 0; c < p->channels; c++) {
        int32_t acc = p->average ? 0 : -128, count = 0;
        for (ky = ky_lo; ky < ky_hi; ky++) {
          const int8_t *row =
              (const int8_t *)(input + (size_t)((y0 + ky) % rows_held) * in_row);
          for (kx = kx_lo; kx < kx_hi; kx++) {
            const int32_t v = row[(size_t)(x0 + kx) * p->channels + c];
            if (p->average)
              acc += v;
            else if (v > acc)
              acc = v;
            count++;
          }
        }
        if (p->average) {
          if (count == 0) return TP_ECONFIG; /* TFLite refuses an empty window too */
          /* Round to the nearest, halves away from zero (TFLite's integer average). */
          acc = acc > 0 ? (acc + count / 2) / count : (acc - count / 2) / count;
        }
        out_row[(size_t)ox * p->channels + c] = (int8_t)clamp(acc, p->act_min, p->act_max);
      }
    }
  }
  return TP_OK;
}

int tp_add_row(const tp_add_params *p, const int8_t *a, const int8_t *b, int32_t n,
               int8_t *out) {
  int32_t i;
  if (n < 0 || p->left_shift < 0 || p->left_shift > 20) return TP_ECONFIG;
  for (i = 0; i < n; i++) {
    const int32_t x = (p->input1_offset + a[i]) * (1 << p->left_shift);
    const int32_t y = (p->input2_offset + b[i]) * (1 << p->left_shift);
    const int32_t sx = tp_multiply_by_quantized_multiplier(x, p->input1_multiplier,
                                                           p->input1_shift);
    const int32_t sy = tp_multiply_by_quantized_multiplier(y, p->input2_multiplier,
                                                           p->input2_shift);
    const int64_t raw = (int64_t)tp_multiply_by_quantized_multiplier(
                            sx + sy, p->output_multiplier, p->output_shift) +
                        p->output_offset;
    out[i] = (int8_t)clamp64(raw, p->act_min, p->act_max);
  }
  return TP_OK;
}

int tp_mul_row(const tp_mul_params *p, const int8_t *a, const int8_t *b, int32_t n,
               int8_t *out) {
  int32_t i;
  if (n < 0) return TP_ECONFIG;
  for (i = 0; i < n; i++) {
    const int32_t prod = (p->input1_offset + a[i]) * (p->input2_offset + b[i]);
    const int64_t raw =
        p->output_offset +
        (int64_t)tp_multiply_by_quantized_multiplier(prod, p->output_multiplier, p->output_shift);
    out[i] = (int8_t)clamp64(raw, p->act_min, p->act_max);
  }
  return TP_OK;
}

int tp_concat_row(const int8_t *const *rows, const int32_t *channels, int32_t n_in,
                  int32_t width, int8_t *out_row) {
  int32_t i, x, total = 0;
  if (n_in <= 0 || n_in > TP_MAX_SLICES || width <= 0) return TP_ECONFIG;
  for (i = 0; i < n_in; i++) {
    if (channels[i] <= 0) return TP_ECONFIG;
    total += channels[i];
  }
  for (x = 0; x < width; x++) {
    int8_t *dst = out_row + (size_t)x * total;
    for (i = 0; i < n_in; i++) {
      memcpy(dst, rows[i] + (size_t)x * channels[i], (size_t)channels[i]);
      dst += channels[i];
    }
  }
  return TP_OK;
}

/* ---- program decoding ------------------------------------------------------------------- */

typedef struct {
  const int32_t *views; /* n_views x TP_GROUP_VIEW_WORDS */
  const int32_t *sched; /* n_steps x 2 */
  int32_t n_views, n_ops, n_steps;
  int32_t op_off[TP_GROUP_MAX_OPS]; /* word offset of each op record */
  const int32_t *program;
} group;

enum { V_MODE = 0, V_HEIGHT = 1, V_ROW_BYTES = 2, V_ROWS_HELD = 3, V_ADDRESS = 4 };

static int32_t vw(const group *g, int32_t v, int field) {
  return g->views[v * TP_GROUP_VIEW_WORDS + field];
}

/* One member op, decoded from its record (pointers NULL when bases is NULL). */
typedef struct {
  int32_t kind, n_in, out;
  const int32_t *in;
  int32_t out_h;
  union {
    tp_conv_params conv;
    tp_tconv_params tconv;
    tp_pool_params pool;
    tp_add_params add;
    tp_mul_params mul;
  } u;
  int32_t width;             /* concat */
  const int32_t *channels;   /* concat */
} member;

static int shift_ok(int32_t s) { return s >= -31 && s <= 31; }
static int dim_ok(int32_t d) { return d > 0 && d <= TP_GROUP_MAX_DIM; }
static int pad_ok(int32_t d) { return d >= 0 && d <= TP_GROUP_MAX_DIM; }
static int offsets_ok(int32_t in1, int32_t in2, int32_t out) {
  return in1 >= -255 && in1 <= 255 && in2 >= -255 && in2 <= 255 && out >= -128 && out <= 127;
}
static int act_ok(int32_t lo, int32_t hi) { return lo >= -128 && lo <= hi && hi <= 127; }

/* View v holds an activation of this height and row size (as an input, or as an output:
 * then it must not be a stream_in view). */
static int act_view_ok(const group *g, int32_t v, int64_t height, int64_t row_bytes,
                       int output) {
  if (v < 0 || v >= g->n_views) return 0;
  if (output && vw(g, v, V_MODE) == TP_VIEW_STREAM_IN) return 0;
  return vw(g, v, V_HEIGHT) == height && vw(g, v, V_ROW_BYTES) == row_bytes;
}

/* View v is a WHOLE constant of exactly nbytes bytes. */
static int const_view_ok(const group *g, int32_t v, int64_t nbytes) {
  if (v < 0 || v >= g->n_views || vw(g, v, V_MODE) != TP_VIEW_WHOLE) return 0;
  return (int64_t)vw(g, v, V_HEIGHT) * vw(g, v, V_ROW_BYTES) == nbytes;
}

static const uint8_t *base_of(uint8_t *const *bases, int32_t v) {
  return bases == NULL || v < 0 ? NULL : bases[v];
}

static int decode_conv(const group *g, member *m, const int32_t *q, int32_t n_prm,
                       uint8_t *const *bases) {
  tp_conv_params *p = &m->u.conv;
  int64_t filter_bytes;
  int32_t i;
  if (n_prm < 17) return TP_EPROGRAM;
  memset(p, 0, sizeof(*p));
  p->in_h = q[0], p->in_w = q[1], p->in_c = q[2], p->out_h = q[3], p->out_w = q[4];
  p->out_c = q[5], p->k_h = q[6], p->k_w = q[7], p->stride_h = q[8], p->stride_w = q[9];
  p->pad_top = q[10], p->pad_left = q[11], p->input_offset = q[12], p->output_offset = q[13];
  p->act_min = q[14], p->act_max = q[15], p->filter_in_c = q[16];
  p->dilation_h = p->dilation_w = 1;
  p->depthwise = m->kind == TP_OPK_DEPTHWISE;
  if (!dim_ok(p->in_h) || !dim_ok(p->in_w) || !dim_ok(p->in_c) || !dim_ok(p->out_h) ||
      !dim_ok(p->out_w) || !dim_ok(p->out_c) || !dim_ok(p->k_h) || p->k_h > TP_MAX_KERNEL_H ||
      !dim_ok(p->k_w) || !dim_ok(p->stride_h) || !dim_ok(p->stride_w) || !pad_ok(p->pad_top) ||
      !pad_ok(p->pad_left) || !offsets_ok(p->input_offset, 0, p->output_offset) ||
      !act_ok(p->act_min, p->act_max) || n_prm != 17 + 2 * (int64_t)p->out_c)
    return TP_EPROGRAM;
  if (p->depthwise) {
    if (p->out_c % p->in_c != 0) return TP_EPROGRAM;
    p->filter_in_c = 0;
    filter_bytes = (int64_t)p->k_h * p->k_w * p->out_c;
  } else {
    if (p->filter_in_c <= 0 || p->in_c % p->filter_in_c != 0 ||
        p->out_c % (p->in_c / p->filter_in_c) != 0)
      return TP_EPROGRAM;
    filter_bytes = (int64_t)p->out_c * p->k_h * p->k_w * p->filter_in_c;
  }
  for (i = 0; i < p->out_c; i++)
    if (!shift_ok(q[17 + p->out_c + i])) return TP_EPROGRAM;
  if (!act_view_ok(g, m->in[0], p->in_h, (int64_t)p->in_w * p->in_c, 0) ||
      !act_view_ok(g, m->out, p->out_h, (int64_t)p->out_w * p->out_c, 1) ||
      !const_view_ok(g, m->in[1], filter_bytes) ||
      (m->in[2] != -1 && !const_view_ok(g, m->in[2], 4 * (int64_t)p->out_c)))
    return TP_EPROGRAM;
  p->filter = (const int8_t *)base_of(bases, m->in[1]);
  p->bias = (const int32_t *)(const void *)base_of(bases, m->in[2]);
  p->out_multiplier = q + 17;
  p->out_shift = q + 17 + p->out_c;
  m->out_h = p->out_h;
  return TP_OK;
}

static int decode_tconv(const group *g, member *m, const int32_t *q, int32_t n_prm,
                        uint8_t *const *bases) {
  tp_tconv_params *p = &m->u.tconv;
  int32_t i;
  if (n_prm < 16) return TP_EPROGRAM;
  memset(p, 0, sizeof(*p));
  p->batches = 1;
  p->in_h = q[0], p->in_w = q[1], p->in_c = q[2], p->out_h = q[3], p->out_w = q[4];
  p->out_c = q[5], p->k_h = q[6], p->k_w = q[7], p->stride_h = q[8], p->stride_w = q[9];
  p->pad_top = q[10], p->pad_left = q[11], p->input_offset = q[12], p->output_offset = q[13];
  p->act_min = q[14], p->act_max = q[15];
  if (!dim_ok(p->in_h) || !dim_ok(p->in_w) || !dim_ok(p->in_c) || !dim_ok(p->out_h) ||
      !dim_ok(p->out_w) || !dim_ok(p->out_c) || !dim_ok(p->k_h) || !dim_ok(p->k_w) ||
      !dim_ok(p->stride_h) || !dim_ok(p->stride_w) || !pad_ok(p->pad_top) ||
      !pad_ok(p->pad_left) || !offsets_ok(p->input_offset, 0, p->output_offset) ||
      !act_ok(p->act_min, p->act_max) || n_prm != 16 + 2 * (int64_t)p->out_c)
    return TP_EPROGRAM;
  for (i = 0; i < p->out_c; i++)
    if (!shift_ok(q[16 + p->out_c + i])) return TP_EPROGRAM;
  if (!act_view_ok(g, m->in[0], p->in_h, (int64_t)p->in_w * p->in_c, 0) ||
      !act_view_ok(g, m->out, p->out_h, (int64_t)p->out_w * p->out_c, 1) ||
      !const_view_ok(g, m->in[1], (int64_t)p->out_c * p->k_h * p->k_w * p->in_c) ||
      (m->in[2] != -1 && !const_view_ok(g, m->in[2], 4 * (int64_t)p->out_c)))
    return TP_EPROGRAM;
  p->filter = (const int8_t *)base_of(bases, m->in[1]);
  p->bias = (const int32_t *)(const void *)base_of(bases, m->in[2]);
  p->out_multiplier = q + 16;
  p->out_shift = q + 16 + p->out_c;
  m->out_h = p->out_h;
  return TP_OK;
}

static int decode_pool(const group *g, member *m, const int32_t *q, int32_t n_prm) {
  tp_pool_params *p = &m->u.pool;
  if (n_prm != 13) return TP_EPROGRAM;
  p->in_h = q[0], p->in_w = q[1], p->channels = q[2], p->out_h = q[3], p->out_w = q[4];
  p->k_h = q[5], p->k_w = q[6], p->stride_h = q[7], p->stride_w = q[8], p->pad_top = q[9];
  p->pad_left = q[10], p->act_min = q[11], p->act_max = q[12];
  p->average = m->kind == TP_OPK_AVG_POOL;
  if (!dim_ok(p->in_h) || !dim_ok(p->in_w) || !dim_ok(p->channels) || !dim_ok(p->out_h) ||
      !dim_ok(p->out_w) || !dim_ok(p->k_h) || !dim_ok(p->k_w) || !dim_ok(p->stride_h) ||
      !dim_ok(p->stride_w) || !pad_ok(p->pad_top) || !pad_ok(p->pad_left) ||
      !act_ok(p->act_min, p->act_max))
    return TP_EPROGRAM;
  /* Every window must hold a pixel (an average over none is undefined). */
  if ((int64_t)(p->out_h - 1) * p->stride_h - p->pad_top >= p->in_h ||
      (int64_t)(p->out_w - 1) * p->stride_w - p->pad_left >= p->in_w ||
      p->pad_top >= p->k_h || p->pad_left >= p->k_w)
    return TP_EPROGRAM;
  if (!act_view_ok(g, m->in[0], p->in_h, (int64_t)p->in_w * p->channels, 0) ||
      !act_view_ok(g, m->out, p->out_h, (int64_t)p->out_w * p->channels, 1))
    return TP_EPROGRAM;
  m->out_h = p->out_h;
  return TP_OK;
}

static int decode_elementwise(const group *g, member *m, const int32_t *q, int32_t n_prm) {
  int32_t h, rb;
  if (m->out < 0 || m->out >= g->n_views) return TP_EPROGRAM;
  h = vw(g, m->out, V_HEIGHT), rb = vw(g, m->out, V_ROW_BYTES);
  if (!act_view_ok(g, m->in[0], h, rb, 0) || !act_view_ok(g, m->in[1], h, rb, 0) ||
      !act_view_ok(g, m->out, h, rb, 1))
    return TP_EPROGRAM;
  if (m->kind == TP_OPK_ADD) {
    tp_add_params *p = &m->u.add;
    if (n_prm != 12) return TP_EPROGRAM;
    p->input1_offset = q[0], p->input2_offset = q[1], p->output_offset = q[2];
    p->left_shift = q[3], p->input1_multiplier = q[4], p->input1_shift = q[5];
    p->input2_multiplier = q[6], p->input2_shift = q[7], p->output_multiplier = q[8];
    p->output_shift = q[9], p->act_min = q[10], p->act_max = q[11];
    if (p->left_shift < 0 || p->left_shift > 20 || !shift_ok(p->input1_shift) ||
        !shift_ok(p->input2_shift) || !shift_ok(p->output_shift) ||
        !act_ok(p->act_min, p->act_max) ||
        !offsets_ok(p->input1_offset, p->input2_offset, p->output_offset))
      return TP_EPROGRAM;
  } else {
    tp_mul_params *p = &m->u.mul;
    if (n_prm != 7) return TP_EPROGRAM;
    p->input1_offset = q[0], p->input2_offset = q[1], p->output_offset = q[2];
    p->output_multiplier = q[3], p->output_shift = q[4], p->act_min = q[5], p->act_max = q[6];
    if (!shift_ok(p->output_shift) || !act_ok(p->act_min, p->act_max) ||
        !offsets_ok(p->input1_offset, p->input2_offset, p->output_offset))
      return TP_EPROGRAM;
  }
  m->out_h = h;
  return TP_OK;
}

static int decode_concat(const group *g, member *m, const int32_t *q, int32_t n_prm) {
  int64_t total = 0;
  int32_t i, h;
  if (m->n_in < 1 || m->n_in > TP_MAX_SLICES || n_prm != 1 + m->n_in || !dim_ok(q[0]))
    return TP_EPROGRAM;
  if (m->out < 0 || m->out >= g->n_views) return TP_EPROGRAM;
  m->width = q[0];
  m->channels = q + 1;
  h = vw(g, m->out, V_HEIGHT);
  for (i = 0; i < m->n_in; i++) {
    if (!dim_ok(m->channels[i]) || !act_view_ok(g, m->in[i], h, (int64_t)m->width * m->channels[i], 0))
      return TP_EPROGRAM;
    total += m->channels[i];
  }
  if (!act_view_ok(g, m->out, h, (int64_t)m->width * total, 1)) return TP_EPROGRAM;
  m->out_h = h;
  return TP_OK;
}

/* Member i of the program; TP_OK or TP_EPROGRAM. */
static int decode_member(const group *g, int32_t i, uint8_t *const *bases, member *m) {
  const int32_t *r = g->program + g->op_off[i];
  const int32_t len = r[1];
  int32_t n_prm, k, bias_slot = -1;
  m->kind = r[0];
  m->n_in = r[2];
  if (m->n_in < 1 || m->n_in > TP_MAX_SLICES || 4 + m->n_in > len) return TP_EPROGRAM;
  m->in = r + 3;
  m->out = r[3 + m->n_in];
  n_prm = len - 4 - m->n_in;
  switch (m->kind) {
    case TP_OPK_CONV:
    case TP_OPK_DEPTHWISE:
    case TP_OPK_TCONV:
      if (m->n_in != 3) return TP_EPROGRAM;
      bias_slot = 2;
      break;
    case TP_OPK_MAX_POOL:
    case TP_OPK_AVG_POOL:
      if (m->n_in != 1) return TP_EPROGRAM;
      break;
    case TP_OPK_ADD:
    case TP_OPK_MUL:
      if (m->n_in != 2) return TP_EPROGRAM;
      break;
    case TP_OPK_CONCAT:
      break;
    default:
      return TP_EPROGRAM;
  }
  for (k = 0; k < m->n_in; k++)
    if (m->in[k] >= g->n_views || m->in[k] < (k == bias_slot ? -1 : 0) || m->in[k] == m->out)
      return TP_EPROGRAM;
  if (m->out < 0 || m->out >= g->n_views) return TP_EPROGRAM;
  switch (m->kind) {
    case TP_OPK_CONV:
    case TP_OPK_DEPTHWISE:
      return decode_conv(g, m, r + 4 + m->n_in, n_prm, bases);
    case TP_OPK_TCONV:
      return decode_tconv(g, m, r + 4 + m->n_in, n_prm, bases);
    case TP_OPK_MAX_POOL:
    case TP_OPK_AVG_POOL:
      return decode_pool(g, m, r + 4 + m->n_in, n_prm);
    case TP_OPK_ADD:
    case TP_OPK_MUL:
      return decode_elementwise(g, m, r + 4 + m->n_in, n_prm);
    default:
      return decode_concat(g, m, r + 4 + m->n_in, n_prm);
  }
}

/* The header, view table, op record boundaries and schedule length. */
static int decode_layout(const int32_t *w, int32_t words, group *g) {
  int64_t at;
  int32_t i;
  if (w == NULL || words < TP_GROUP_HEADER_WORDS) return TP_EPROGRAM;
  if (w[0] != TP_GROUP_MAGIC || w[1] != TP_GROUP_VERSION || w[5] != words) return TP_EPROGRAM;
  g->n_views = w[2], g->n_ops = w[3], g->n_steps = w[4];
  if (g->n_views < 1 || g->n_views > TP_GROUP_MAX_VIEWS || g->n_ops < 1 ||
      g->n_ops > TP_GROUP_MAX_OPS || g->n_steps < 0)
    return TP_EPROGRAM;
  g->program = w;
  g->views = w + TP_GROUP_HEADER_WORDS;
  at = TP_GROUP_HEADER_WORDS + (int64_t)g->n_views * TP_GROUP_VIEW_WORDS;
  if (at > words) return TP_EPROGRAM;
  for (i = 0; i < g->n_views; i++) {
    const int32_t mode = vw(g, i, V_MODE), h = vw(g, i, V_HEIGHT);
    const int32_t rb = vw(g, i, V_ROW_BYTES), held = vw(g, i, V_ROWS_HELD);
    if (mode < TP_VIEW_WHOLE || mode > TP_VIEW_SPILL_ROWS || h <= 0 || rb <= 0 || held <= 0 ||
        held > h || (int64_t)h * rb > INT32_MAX)
      return TP_EPROGRAM;
    if (mode == TP_VIEW_WHOLE && held != h) return TP_EPROGRAM;
    if (mode == TP_VIEW_WHOLE || mode == TP_VIEW_RING) {
      if (vw(g, i, V_ADDRESS) != 0) return TP_EPROGRAM;
    } else if ((int64_t)(uint32_t)vw(g, i, V_ADDRESS) + (int64_t)h * rb > (int64_t)UINT32_MAX) {
      return TP_EPROGRAM;
    }
  }
  for (i = 0; i < g->n_ops; i++) {
    if (at + 4 > words) return TP_EPROGRAM;
    g->op_off[i] = (int32_t)at;
    if (w[at + 1] < 4 || at + w[at + 1] > words) return TP_EPROGRAM;
    at += w[at + 1];
  }
  if (at + 2 * (int64_t)g->n_steps != words) return TP_EPROGRAM;
  g->sched = w + at;
  return TP_OK;
}

/* Layout, every member, one producer per written view, rings produced inside, and the
 * schedule (each op's rows in order, each once, all of them). */
static int check_program(const int32_t *w, int32_t words, group *g) {
  int32_t producer[TP_GROUP_MAX_VIEWS], done[TP_GROUP_MAX_OPS], out_h[TP_GROUP_MAX_OPS];
  int32_t i;
  int rc = decode_layout(w, words, g);
  if (rc != TP_OK) return rc;
  for (i = 0; i < g->n_views; i++) producer[i] = -1;
  for (i = 0; i < g->n_ops; i++) {
    member m;
    rc = decode_member(g, i, NULL, &m);
    if (rc != TP_OK) return rc;
    if (producer[m.out] != -1) return TP_EPROGRAM;
    producer[m.out] = i;
    out_h[i] = m.out_h;
    done[i] = 0;
  }
  for (i = 0; i < g->n_views; i++)
    if (vw(g, i, V_MODE) == TP_VIEW_RING && producer[i] == -1) return TP_EPROGRAM;
  for (i = 0; i < g->n_steps; i++) {
    const int32_t op = g->sched[2 * i], row = g->sched[2 * i + 1];
    if (op < 0) { /* load row `row` of stream_in view -1 - op */
      const int32_t v = -1 - op;
      if (v >= g->n_views || vw(g, v, V_MODE) != TP_VIEW_STREAM_IN || row < 0 ||
          row >= vw(g, v, V_HEIGHT))
        return TP_ESCHEDULE;
      continue;
    }
    if (op >= g->n_ops || row != done[op] || row >= out_h[op]) return TP_ESCHEDULE;
    done[op]++;
  }
  for (i = 0; i < g->n_ops; i++)
    if (done[i] != out_h[i]) return TP_ESCHEDULE;
  return TP_OK;
}

int tp_group_check(const int32_t *program, int32_t words) {
  group g;
  return check_program(program, words, &g);
}

/* ---- running ------------------------------------------------------------------------------ */

static uint8_t *slot(const group *g, uint8_t *const *bases, int32_t v, int32_t row) {
  return bases[v] + (size_t)(row % vw(g, v, V_ROWS_HELD)) * (size_t)vw(g, v, V_ROW_BYTES);
}

/* Reads row r of stream_in view v from storage into its slot. */
static int load_row(const group *g, uint8_t *const *bases, const tp_group_io *io,
                    const uint8_t *poison, int32_t v, int32_t r) {
  const int32_t rb = vw(g, v, V_ROW_BYTES);
  uint8_t *dst = slot(g, bases, v, r);
  if (io == NULL || io->read == NULL) return TP_EIO_CALLBACK;
  if (poison != NULL && r >= vw(g, v, V_ROWS_HELD)) memset(dst, *poison, (size_t)rb);
  if (io->read(io->ctx, (uint32_t)vw(g, v, V_ADDRESS) + (uint32_t)r * (uint32_t)rb, dst, rb) != 0)
    return TP_EIO_CALLBACK;
  return TP_OK;
}

static int run_member_row(const group *g, uint8_t *const *bases, const member *m, int32_t r,
                          int8_t *out) {
  const uint8_t *in0 = bases[m->in[0]];
  const int32_t held0 = vw(g, m->in[0], V_ROWS_HELD);
  switch (m->kind) {
    case TP_OPK_CONV:
    case TP_OPK_DEPTHWISE:
      return tp_conv_row(&m->u.conv, in0, held0, r, out);
    case TP_OPK_TCONV:
      return tp_transpose_conv_row(&m->u.tconv, in0, held0, r, out);
    case TP_OPK_MAX_POOL:
    case TP_OPK_AVG_POOL:
      return tp_pool_row(&m->u.pool, in0, held0, r, out);
    case TP_OPK_ADD:
      return tp_add_row(&m->u.add, (const int8_t *)slot(g, bases, m->in[0], r),
                        (const int8_t *)slot(g, bases, m->in[1], r), vw(g, m->out, V_ROW_BYTES),
                        out);
    case TP_OPK_MUL:
      return tp_mul_row(&m->u.mul, (const int8_t *)slot(g, bases, m->in[0], r),
                        (const int8_t *)slot(g, bases, m->in[1], r), vw(g, m->out, V_ROW_BYTES),
                        out);
    default: {
      const int8_t *rows[TP_MAX_SLICES];
      int32_t k;
      for (k = 0; k < m->n_in; k++) rows[k] = (const int8_t *)slot(g, bases, m->in[k], r);
      return tp_concat_row(rows, m->channels, m->n_in, m->width, out);
    }
  }
}

int tp_group_run(const int32_t *program, int32_t words, uint8_t *const *bases,
                 const tp_group_io *io, const uint8_t *poison) {
  group g;
  int32_t i;
  int rc = check_program(program, words, &g);
  if (rc != TP_OK) return rc;
  if (bases == NULL) return TP_EPROGRAM;
  for (i = 0; i < g.n_views; i++)
    if (bases[i] == NULL) return TP_EPROGRAM;
  for (i = 0; i < g.n_steps; i++) {
    const int32_t op = g.sched[2 * i], r = g.sched[2 * i + 1];
    member m;
    uint8_t *out;
    int32_t mode, rb;
    if (op < 0) { /* a stream_in row, read at its first need */
      rc = load_row(&g, bases, io, poison, -1 - op, r);
      if (rc != TP_OK) return rc;
      continue;
    }
    rc = decode_member(&g, op, bases, &m);
    if (rc != TP_OK) return rc;
    mode = vw(&g, m.out, V_MODE);
    rb = vw(&g, m.out, V_ROW_BYTES);
    out = slot(&g, bases, m.out, r);
    if (poison != NULL && mode != TP_VIEW_WHOLE && r >= vw(&g, m.out, V_ROWS_HELD))
      memset(out, *poison, (size_t)rb);
    rc = run_member_row(&g, bases, &m, r, (int8_t *)out);
    if (rc != TP_OK) return rc;
    if (mode == TP_VIEW_SPILL_ROWS) {
      if (io == NULL || io->write == NULL) return TP_EIO_CALLBACK;
      if (io->write(io->ctx, (uint32_t)vw(&g, m.out, V_ADDRESS) + (uint32_t)r * (uint32_t)rb,
                    out, rb) != 0)
        return TP_EIO_CALLBACK;
    }
  }
  return TP_OK;
}
