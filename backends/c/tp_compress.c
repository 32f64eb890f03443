/* Most-frequent-byte elision with 8-byte mask groups in four independent sections. */
#include "tp_compress.h"

#include <string.h>

uint32_t tp_section_raw(uint32_t n) { return (((n + 3u) / 4u) + 7u) & ~7u; }

static uint32_t section_end(uint32_t n, uint32_t L, uint32_t pos) {
  uint32_t end;
  if (L == 0) return n;
  end = (pos / L + 1u) * L;
  return end < n ? end : n;
}

uint32_t tp_elided_size(uint32_t n, uint32_t count) {
  uint32_t L = tp_section_raw(n), groups = 0, s;
  for (s = 0; s < TP_SECTIONS; s++) {
    uint32_t a = s * L, b = a + L;
    if (a >= n) break;
    if (b > n) b = n;
    groups += (b - a + 7u) / 8u;
  }
  return groups + n - count;
}

static int flush_buf(tp_writer *w) {
  if (w->buf_len > 0 && w->error == TP_OK) {
    w->error = w->storage->write(w->storage, w->address + w->stored_pos - w->buf_len, w->buf,
                                 w->buf_len);
  }
  w->buf_len = 0;
  return w->error;
}

static void emit(tp_writer *w, const uint8_t *src, uint32_t n) {
  while (n > 0) {
    uint32_t k = TP_IO_CHUNK - w->buf_len;
    if (k > n) k = n;
    memcpy(w->buf + w->buf_len, src, k);
    w->buf_len += k;
    w->stored_pos += k;
    src += k;
    n -= k;
    if (w->buf_len == TP_IO_CHUNK) flush_buf(w);
  }
}

static void emit_group(tp_writer *w) {
  uint8_t out[9];
  uint32_t k = 1, j;
  out[0] = 0;
  for (j = 0; j < w->group_len; j++) {
    if (w->group[j] != w->rec->elided) {
      out[0] |= (uint8_t)(1u << j);
      out[k++] = w->group[j];
    }
  }
  emit(w, out, k);
  w->group_len = 0;
}

void tp_writer_begin(tp_writer *w, tp_storage *storage, uint32_t address, tp_spill_record *rec,
                     uint32_t n, uint8_t mode, uint8_t value) {
  uint32_t s;
  w->storage = storage;
  w->address = address;
  w->rec = rec;
  w->raw_pos = 0;
  w->stored_pos = 0;
  w->buf_len = 0;
  w->group_len = 0;
  w->error = TP_OK;
  rec->raw_bytes = n;
  rec->stored_bytes = 0;
  rec->section_raw = tp_section_raw(n);
  rec->mode = mode;
  rec->elided = value;
  rec->valid = 0;
  for (s = 0; s < TP_SECTIONS; s++) rec->section_at[s] = 0;
}

int tp_writer_put(tp_writer *w, const uint8_t *src, uint32_t n) {
  tp_spill_record *rec = w->rec;
  if (w->error != TP_OK) return w->error;
  if (n > rec->raw_bytes - w->raw_pos) return w->error = TP_EPLAN;
  if (rec->mode == TP_MODE_RAW) {
    emit(w, src, n);
    w->raw_pos += n;
    return w->error;
  }
  while (n > 0) {
    uint32_t end;
    if (w->group_len == 0 && w->raw_pos % rec->section_raw == 0)
      rec->section_at[w->raw_pos / rec->section_raw] = w->stored_pos;
    w->group[w->group_len++] = *src++;
    w->raw_pos++;
    n--;
    end = section_end(rec->raw_bytes, rec->section_raw, w->raw_pos - 1u);
    if (w->group_len == 8 || w->raw_pos == end) emit_group(w);
  }
  return w->error;
}

int tp_writer_end(tp_writer *w) {
  uint32_t s;
  if (w->raw_pos != w->rec->raw_bytes && w->error == TP_OK) w->error = TP_EPLAN;
  flush_buf(w);
  w->rec->stored_bytes = w->stored_pos;
  /* Empty trailing sections start where the data ends. */
  for (s = 0; s < TP_SECTIONS; s++) {
    uint32_t start = s * w->rec->section_raw;
    if (w->rec->mode == TP_MODE_RAW) w->rec->section_at[s] = start < w->rec->raw_bytes
                                                                 ? start : w->rec->raw_bytes;
    else if (start >= w->rec->raw_bytes) w->rec->section_at[s] = w->stored_pos;
  }
  w->rec->valid = w->error == TP_OK;
  return w->error;
}

int tp_reader_begin(tp_reader *r, tp_storage *storage, uint32_t address,
                    const tp_spill_record *rec, uint32_t section) {
  r->storage = storage;
  r->address = address;
  r->rec = rec;
  r->buf_pos = r->buf_len = 0;
  r->group_pos = r->group_len = 0;
  r->error = TP_OK;
  if (!rec->valid || section >= TP_SECTIONS) return r->error = TP_EPLAN;
  r->decoded = section * rec->section_raw;
  if (r->decoded > rec->raw_bytes) r->decoded = rec->raw_bytes;
  r->stored_pos = rec->section_at[section];
  r->stored_end = rec->stored_bytes;
  return TP_OK;
}

static int next_byte(tp_reader *r, uint8_t *out) {
  if (r->buf_pos == r->buf_len) {
    uint32_t k = r->stored_end - r->stored_pos;
    if (k == 0) return r->error = TP_EPLAN;
    if (k > TP_IO_CHUNK) k = TP_IO_CHUNK;
    r->error = r->storage->read(r->storage, r->address + r->stored_pos, r->buf, k);
    if (r->error != TP_OK) return r->error;
    r->stored_pos += k;
    r->buf_len = k;
    r->buf_pos = 0;
  }
  *out = r->buf[r->buf_pos++];
  return TP_OK;
}

static int decode_group(tp_reader *r) {
  const tp_spill_record *rec = r->rec;
  uint32_t len = section_end(rec->raw_bytes, rec->section_raw, r->decoded) - r->decoded;
  uint8_t mask, j;
  if (len == 0) return r->error = TP_EPLAN;
  if (len > 8) len = 8;
  if (next_byte(r, &mask) != TP_OK) return r->error;
  for (j = 0; j < len; j++) {
    if (mask & (1u << j)) {
      if (next_byte(r, &r->group[j]) != TP_OK) return r->error;
    } else {
      r->group[j] = rec->elided;
    }
  }
  r->group_len = (uint8_t)len;
  r->group_pos = 0;
  r->decoded += len;
  return TP_OK;
}

int tp_reader_get(tp_reader *r, uint8_t *dst, uint32_t n) {
  const tp_spill_record *rec = r->rec;
  if (r->error != TP_OK) return r->error;
  if (rec->mode == TP_MODE_RAW) {
    if (n > rec->raw_bytes - r->decoded) return r->error = TP_EPLAN;
    if (dst != NULL) r->error = r->storage->read(r->storage, r->address + r->decoded, dst, n);
    r->decoded += n;
    return r->error;
  }
  while (n > 0) {
    uint32_t k;
    if (r->group_pos == r->group_len && decode_group(r) != TP_OK) return r->error;
    k = (uint32_t)(r->group_len - r->group_pos);
    if (k > n) k = n;
    if (dst != NULL) {
      memcpy(dst, r->group + r->group_pos, k);
      dst += k;
    }
    r->group_pos = (uint8_t)(r->group_pos + k);
    n -= k;
  }
  return TP_OK;
}
