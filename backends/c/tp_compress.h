/* Spilled-data compression (TinySeg's scheme) and the sequential writer/reader the
 * runtime moves every spilled byte through.
 *
 * Layout of a compressed spill of n raw bytes: four sections of L raw bytes each
 * (L = ceil(n / 4) rounded up to 8; the last ones may be shorter or empty), stored one
 * after the other. A section is a run of groups of up to 8 raw bytes; a group is one
 * mask byte (bit j set: raw byte j is stored) followed by the raw bytes that differ
 * from the elided value, the most frequent byte of the whole spill. Each section
 * decodes on its own from its storage offset. When elision would not save space the
 * spill is stored raw. The per-spill header (mode, value, section offsets) stays in RAM.
 */
#ifndef TP_COMPRESS_H
#define TP_COMPRESS_H

#include "tp_storage.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TP_SECTIONS 4
#ifndef TP_IO_CHUNK
#define TP_IO_CHUNK 256 /* staging bytes per writer/reader; bounds storage request sizes */
#endif

enum { TP_MODE_RAW = 0, TP_MODE_ELIDE = 1 };

typedef struct {
  uint32_t raw_bytes;
  uint32_t stored_bytes;
  uint32_t section_raw;                 /* L */
  uint32_t section_at[TP_SECTIONS];     /* storage offset of each section */
  uint8_t mode;
  uint8_t elided;
  uint8_t valid;                        /* set once the spill completed */
} tp_spill_record;

/* Bytes an elided spill of n raw bytes takes when `count` of them equal the value. */
uint32_t tp_elided_size(uint32_t n, uint32_t count);
uint32_t tp_section_raw(uint32_t n);

typedef struct {
  tp_storage *storage;
  uint32_t address;
  tp_spill_record *rec;
  uint32_t raw_pos;
  uint32_t stored_pos; /* bytes produced so far, flushed or staged */
  uint32_t buf_len;
  uint8_t group[8];
  uint8_t group_len;
  int error;
  uint8_t buf[TP_IO_CHUNK];
} tp_writer;

/* mode TP_MODE_ELIDE with `value`, or TP_MODE_RAW; n raw bytes will follow. */
void tp_writer_begin(tp_writer *w, tp_storage *storage, uint32_t address, tp_spill_record *rec,
                     uint32_t n, uint8_t mode, uint8_t value);
int tp_writer_put(tp_writer *w, const uint8_t *src, uint32_t n);
int tp_writer_end(tp_writer *w);

typedef struct {
  tp_storage *storage;
  uint32_t address;
  const tp_spill_record *rec;
  uint32_t decoded;    /* raw bytes decoded so far (raw mode: read position) */
  uint32_t stored_pos; /* next storage offset to fetch into buf */
  uint32_t stored_end; /* where this reader stops fetching */
  uint32_t buf_pos, buf_len;
  uint8_t group[8];
  uint8_t group_pos, group_len;
  int error;
  uint8_t buf[TP_IO_CHUNK];
} tp_reader;

/* Start reading at raw byte section * L (0 for the whole spill). */
int tp_reader_begin(tp_reader *r, tp_storage *storage, uint32_t address,
                    const tp_spill_record *rec, uint32_t section);
/* The next n raw bytes into dst; dst NULL skips them. */
int tp_reader_get(tp_reader *r, uint8_t *dst, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* TP_COMPRESS_H */
