/* File-backed storage: a host file of fixed capacity (also an SD card through a FAT layer). */
#include "tp_storage.h"

#include <string.h>

static int in_range(const tp_storage *s, uint32_t address, uint32_t n) {
  return address <= s->capacity && n <= s->capacity - address;
}

static int file_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_file_storage *f = (tp_file_storage *)s->ctx;
  if (!in_range(s, address, n)) return TP_ERANGE;
  if (fseek(f->file, (long)address, SEEK_SET) != 0) return TP_EIO;
  if (fread(dst, 1, n, f->file) != n) return TP_EIO;
  return TP_OK;
}

static int file_write(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n) {
  tp_file_storage *f = (tp_file_storage *)s->ctx;
  if (!in_range(s, address, n)) return TP_ERANGE;
  if (fseek(f->file, (long)address, SEEK_SET) != 0) return TP_EIO;
  if (fwrite(src, 1, n, f->file) != n) return TP_EIO;
  return TP_OK;
}

static int file_erase(tp_storage *s, uint32_t address, uint32_t n) {
  /* Files overwrite in place: nothing to prepare, only the range to check. */
  return in_range(s, address, n) ? TP_OK : TP_ERANGE;
}

static int file_flush(tp_storage *s) {
  tp_file_storage *f = (tp_file_storage *)s->ctx;
  return fflush(f->file) == 0 ? TP_OK : TP_EIO;
}

int tp_file_storage_open(tp_storage *s, tp_file_storage *state, const char *path,
                         uint32_t capacity) {
  static const uint8_t zeros[256];
  long size;
  memset(s, 0, sizeof *s);
  state->file = fopen(path, "r+b");
  if (state->file == NULL) state->file = fopen(path, "w+b");
  if (state->file == NULL) return TP_EIO;
  if (fseek(state->file, 0, SEEK_END) != 0) return TP_EIO;
  size = ftell(state->file);
  /* Grow the file to its capacity so that every in-range read succeeds. */
  while (size >= 0 && (uint32_t)size < capacity) {
    uint32_t n = capacity - (uint32_t)size;
    if (n > sizeof zeros) n = sizeof zeros;
    if (fwrite(zeros, 1, n, state->file) != n) return TP_EIO;
    size += (long)n;
  }
  s->read = file_read;
  s->write = file_write;
  s->erase = file_erase;
  s->flush = file_flush;
  s->capacity = capacity;
  s->erase_block = 1;
  s->ctx = state;
  return TP_OK;
}

void tp_file_storage_close(tp_storage *s) {
  tp_file_storage *f = (tp_file_storage *)s->ctx;
  if (f != NULL && f->file != NULL) {
    fclose(f->file);
    f->file = NULL;
  }
}
