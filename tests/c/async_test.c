/* tp_async drivers on a RAM storage: the blocking fallback finishes at start, the host
 * worker thread runs transfers in start order (eager, or at their wait with
 * TP_ASYNC_LATEST), and tp_row_stream keeps the next row in flight while the caller holds
 * the current one. Prints "ok" and exits 0, or the failed check and 1. */
#include <stdio.h>
#include <string.h>

#include "tp_async.h"

static uint8_t image[4096];

static int ram_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  if (address + n > s->capacity) return TP_ERANGE;
  memcpy(dst, image + address, n);
  return TP_OK;
}

static int ram_write(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n) {
  if (address + n > s->capacity) return TP_ERANGE;
  memcpy(image + address, src, n);
  return TP_OK;
}

static int ram_erase(tp_storage *s, uint32_t address, uint32_t n) {
  return address + n <= s->capacity ? TP_OK : TP_ERANGE;
}

static int ram_flush(tp_storage *s) {
  (void)s;
  return TP_OK;
}

#define CHECK(cond)                                          \
  do {                                                       \
    if (!(cond)) {                                           \
      fprintf(stderr, "FAIL line %d: %s\n", __LINE__, #cond); \
      return 1;                                              \
    }                                                        \
  } while (0)

static int order[8], n_order;

static int note(void *arg) {
  order[n_order++] = *(int *)arg;
  return TP_OK;
}

/* Writes, reads back, FIFO order, and rows double-buffered, on one channel. */
static int exercise(tp_async *a, tp_storage *s, int latest) {
  uint8_t src[64], dst[64], b0[10], b1[10];
  tp_transfer w, r, jobs[3];
  tp_row_stream rows;
  int ids[3] = {1, 2, 3}, i;
  uint32_t row;
  for (i = 0; i < 64; i++) src[i] = (uint8_t)(i * 7 + 1);
  memset(dst, 0, sizeof dst);
  tp_xfer_write(&w, s, 100, src, 64);
  CHECK(a->start(a, &w) == TP_OK);
  tp_xfer_read(&r, s, 100, dst, 64);
  CHECK(a->start(a, &r) == TP_OK);
  if (latest) { /* nothing runs before a wait asks for it */
    CHECK(a->poll(a, &w) == 0 && a->poll(a, &r) == 0);
    CHECK(dst[5] == 0);
  }
  CHECK(a->wait(a, &r) == TP_OK); /* the write before it ran first (FIFO) */
  CHECK(a->wait(a, &w) == TP_OK);
  CHECK(memcmp(src, dst, 64) == 0);
  n_order = 0;
  for (i = 0; i < 3; i++) {
    tp_xfer_job(&jobs[i], note, &ids[i]);
    CHECK(a->start(a, &jobs[i]) == TP_OK);
  }
  CHECK(a->wait(a, &jobs[1]) == TP_OK);
  CHECK(a->wait(a, &jobs[2]) == TP_OK);
  CHECK(a->wait(a, &jobs[0]) == TP_OK);
  CHECK(n_order == 3 && order[0] == 1 && order[1] == 2 && order[2] == 3);
  /* 64 bytes in 7 rows of 10 (the last 4). */
  CHECK(tp_row_stream_open(&rows, a, s, 100, 64, 7, b0, b1) == TP_OK);
  for (row = 0; row < 7; row++) {
    const uint8_t *p = NULL;
    uint32_t len = 0;
    CHECK(tp_row_stream_next(&rows, &p, &len) == TP_OK);
    CHECK(len == (row < 6 ? 10u : 4u));
    CHECK(memcmp(p, src + row * 10, len) == 0);
    CHECK(p == (row % 2 ? b1 : b0));
    /* Row + 1 is already started into the other buffer; held back until asked, it is
     * still in flight, so the caller's row and the next one overlap. */
    if (row + 1 < 7) CHECK(rows.pending[(row + 1) % 2] == 1);
    if (row + 1 < 7 && latest) CHECK(a->poll(a, &rows.xfer[(row + 1) % 2]) == 0);
  }
  CHECK(tp_row_stream_next(&rows, NULL, NULL) == TP_EPLAN);
  CHECK(tp_row_stream_close(&rows) == TP_OK);
  return 0;
}

int main(void) {
  tp_storage s;
  tp_async a;
  tp_transfer t;
  uint8_t byte = 9;
  memset(&s, 0, sizeof s);
  s.read = ram_read;
  s.write = ram_write;
  s.erase = ram_erase;
  s.flush = ram_flush;
  s.capacity = sizeof image;
  s.erase_block = 1;
  tp_async_blocking(&a);
  tp_xfer_write(&t, &s, 0, &byte, 1);
  CHECK(a.poll(&a, &t) == -1);
  CHECK(a.start(&a, &t) == TP_OK && a.poll(&a, &t) == 1 && image[0] == 9);
  tp_xfer_write(&t, &s, sizeof image, &byte, 1);
  CHECK(a.start(&a, &t) == TP_OK && a.wait(&a, &t) == TP_ERANGE); /* errors come back */
  if (exercise(&a, &s, 0)) return 1;
  CHECK(a.on_worker == 0);
#if defined(TP_ASYNC_HAVE_THREADS)
  {
    tp_async_thread th;
    int latest;
    for (latest = 0; latest < 2; latest++) {
      CHECK(tp_async_thread_open(&a, &th, latest ? TP_ASYNC_LATEST : TP_ASYNC_EAGER) == TP_OK);
      if (exercise(&a, &s, latest)) return 1;
      CHECK(a.on_worker == a.started && th.ran == a.started);
      tp_xfer_write(&t, &s, 0, &byte, 1);
      CHECK(a.start(&a, &t) == TP_OK);
      tp_async_thread_close(&a); /* runs what is queued, then joins */
      CHECK(t.state == TP_XFER_DONE && image[0] == 9);
    }
  }
  printf("ok threads\n");
#else
  printf("ok blocking only\n");
#endif
  return 0;
}
