/* Round trips of the spill compression over sizes 1..600 and skewed, flat and random
 * data: whole reads, per-section reads, and sequential reads in odd chunks with skips.
 * Prints "ok CASES elided=N raw=N" or a reason and exits 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tp_compress.h"

static uint8_t image[4096];
static uint8_t src[700], got[700];

static int fail(const char *what, uint32_t n, int kind) {
  fprintf(stderr, "FAIL %s: n=%u pattern=%d\n", what, (unsigned)n, kind);
  exit(1);
  return 1;
}

static void fill(uint32_t n, int kind, uint32_t seed) {
  uint32_t i, h = seed * 2654435761u + 1u;
  for (i = 0; i < n; i++) {
    h ^= h << 13;
    h ^= h >> 17;
    h ^= h << 5;
    if (kind == 0) src[i] = (uint8_t)h;                       /* random: stored raw */
    else if (kind == 1) src[i] = 7;                           /* flat */
    else src[i] = (uint8_t)(h % 4u ? 0x80 : h >> 8);           /* skewed */
  }
}

int main(void) {
  tp_flash_hal hal;
  tp_flash_ram ram;
  tp_storage s;
  tp_flash_storage fs;
  static tp_writer w;
  static tp_reader r;
  tp_spill_record rec;
  uint32_t n, cases = 0, elided = 0, raw = 0;
  int kind;
  tp_flash_ram_hal(&hal, &ram, image, sizeof image, 64, 1);
  if (tp_flash_storage_init(&s, &fs, &hal) != TP_OK) return fail("init", 0, 0);
  for (n = 1; n <= 600; n += (n < 40 ? 1 : 37)) {
    for (kind = 0; kind < 3; kind++) {
      uint32_t hist[256] = {0}, i, best = 0, sec, pos, step;
      uint8_t mode, value;
      fill(n, kind, n);
      for (i = 0; i < n; i++) hist[src[i]]++;
      for (i = 1; i < 256; i++)
        if (hist[i] > hist[best]) best = i;
      mode = tp_elided_size(n, hist[best]) < n ? TP_MODE_ELIDE : TP_MODE_RAW;
      value = (uint8_t)best;
      s.erase(&s, 0, sizeof image);
      tp_writer_begin(&w, &s, 100, &rec, n, mode, value);
      /* Put in uneven pieces, as a channel gather does. */
      for (pos = 0; pos < n; pos += step) {
        step = 1u + (pos * 7u) % 13u;
        if (step > n - pos) step = n - pos;
        if (tp_writer_put(&w, src + pos, step) != TP_OK) return fail("put", n, kind);
      }
      if (tp_writer_end(&w) != TP_OK) return fail("end", n, kind);
      if (rec.stored_bytes > n) return fail("stored more than raw", n, kind);
      if (mode == TP_MODE_ELIDE && rec.stored_bytes != tp_elided_size(n, hist[best]))
        return fail("stored size differs from the prediction", n, kind);
      elided += mode == TP_MODE_ELIDE;
      raw += mode == TP_MODE_RAW;
      /* Each section on its own. */
      memset(got, 0xEE, sizeof got);
      for (sec = 0; sec < TP_SECTIONS; sec++) {
        uint32_t a = sec * rec.section_raw, b = a + rec.section_raw;
        if (a >= n) break;
        if (b > n) b = n;
        if (tp_reader_begin(&r, &s, 100, &rec, sec) != TP_OK ||
            tp_reader_get(&r, got + a, b - a) != TP_OK)
          return fail("section read", n, kind);
      }
      if (memcmp(got, src, n) != 0) return fail("section data", n, kind);
      /* Sequentially in odd chunks, every third chunk skipped. */
      memset(got, 0xEE, sizeof got);
      if (tp_reader_begin(&r, &s, 100, &rec, 0) != TP_OK) return fail("begin", n, kind);
      for (pos = 0, i = 0; pos < n; pos += step, i++) {
        step = 1u + (pos * 5u) % 11u;
        if (step > n - pos) step = n - pos;
        if (tp_reader_get(&r, i % 3u == 2u ? NULL : got + pos, step) != TP_OK)
          return fail("sequential read", n, kind);
        if (i % 3u != 2u && memcmp(got + pos, src + pos, step) != 0)
          return fail("sequential data", n, kind);
      }
      if (tp_reader_get(&r, got, 1) == TP_OK) return fail("read past the end", n, kind);
      cases++;
    }
  }
  printf("ok cases=%u elided=%u raw=%u\n", (unsigned)cases, (unsigned)elided, (unsigned)raw);
  return 0;
}
