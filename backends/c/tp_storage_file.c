/* File-backed storage: a host file of fixed capacity (also an SD card through a FAT layer). */
#include "tp_storage.h"

#include <string.h>

static int in_range(const tp_storage *s, uint32_t address, uint32_t n) {
  return address <= s->capacity && n <= s->capacity - address;
}

static int file_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_file_storage *f = (tp_file_storage *)s->ctx;
  size_t got;
  if (!in_range(s, address, n)) return TP_ERANGE;
  if (fseek(f->file, (long)address, SEEK_SET) != 0) return TP_EIO;
  got = fread(dst, 1, n, f->file);
  if (got < n) {
    /* Past the end of what was ever written: the file is not grown in advance (a
     * storage of 1 GiB would take 1 GiB of disk), unwritten bytes read as zero. */
    if (ferror(f->file)) return TP_EIO;
    clearerr(f->file);
    memset(dst + got, 0, n - got);
  }
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
  memset(s, 0, sizeof *s);
  state->file = fopen(path, "r+b");
  if (state->file == NULL) state->file = fopen(path, "w+b");
  if (state->file == NULL) return TP_EIO;
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
