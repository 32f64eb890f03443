/* Storage interface for spilled tensors, and its three drivers (flash, file, remote).
 *
 * C99, no dynamic allocation: every driver keeps its state in a struct the caller owns.
 * All functions return TP_OK (0) or a negative TP_E* code.
 */
#ifndef TP_STORAGE_H
#define TP_STORAGE_H

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  TP_OK = 0,
  TP_EIO = -1,        /* the medium failed */
  TP_ERANGE = -2,     /* address range outside the storage */
  TP_EPROTO = -3,     /* remote: refused, or no good answer after every retry */
  TP_EPLAN = -4,      /* the plan tables and the runtime disagree */
  TP_ECONFIG = -5     /* unsupported parameter (alignment, dilation with streaming, ...) */
};

typedef struct tp_storage tp_storage;

struct tp_storage {
  int (*read)(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n);
  int (*write)(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n);
  /* Make [address, address+n) writable; flash erases whole blocks, others may no-op. */
  int (*erase)(tp_storage *s, uint32_t address, uint32_t n);
  int (*flush)(tp_storage *s);
  uint32_t capacity;
  uint32_t erase_block;  /* 1 when writes need no erase */
  void *ctx;
};

/* ---- file driver: a host file of `capacity` bytes ---------------------------------- */
typedef struct {
  FILE *file;
} tp_file_storage;

int tp_file_storage_open(tp_storage *s, tp_file_storage *state, const char *path,
                         uint32_t capacity);
void tp_file_storage_close(tp_storage *s);

/* ---- flash driver: erase-block and write-alignment aware ------------------------------
 * The hardware layer programs whole aligned granules and erases whole blocks; on the
 * host it is a RAM image with NOR semantics (program can only clear bits), so a write
 * to unerased flash shows up as corrupted data instead of passing silently. */
#ifndef TP_FLASH_MAX_GRANULE
#define TP_FLASH_MAX_GRANULE 256
#endif

typedef struct {
  int (*read)(void *ctx, uint32_t address, uint8_t *dst, uint32_t n);
  int (*program)(void *ctx, uint32_t address, const uint8_t *src, uint32_t n); /* aligned */
  int (*erase)(void *ctx, uint32_t block_address);
  void *ctx;
  uint32_t size;
  uint32_t erase_block;  /* bytes per erase block (power of two not required) */
  uint32_t granule;      /* program granularity, <= TP_FLASH_MAX_GRANULE */
} tp_flash_hal;

typedef struct {
  tp_flash_hal hal;
  uint32_t erases;    /* blocks erased so far (diagnostics) */
  uint32_t programs;  /* granule-aligned program calls */
} tp_flash_storage;

int tp_flash_storage_init(tp_storage *s, tp_flash_storage *state, const tp_flash_hal *hal);

typedef struct {
  uint8_t *image;
  uint32_t size;
  uint32_t erase_block;
} tp_flash_ram;

/* A host flash HAL over `image` (NOR semantics); the image starts erased (0xFF). */
void tp_flash_ram_hal(tp_flash_hal *hal, tp_flash_ram *ram, uint8_t *image, uint32_t size,
                      uint32_t erase_block, uint32_t granule);

/* ---- remote driver: the framed protocol over any byte stream -------------------------- */
typedef struct {
  int (*send)(void *ctx, const uint8_t *src, uint32_t n);  /* TP_OK or error */
  /* Up to n bytes, waiting at most timeout_ms: count read, 0 on timeout, < 0 on error. */
  int32_t (*recv)(void *ctx, uint8_t *dst, uint32_t n, uint32_t timeout_ms);
  /* Drop partial frames: reconnect a socket, drain a UART. May be NULL. */
  int (*reset)(void *ctx);
  void *ctx;
} tp_byte_stream;

#ifndef TP_REMOTE_MAX_PAYLOAD
#define TP_REMOTE_MAX_PAYLOAD 1024 /* per frame; the host accepts up to 4096 */
#endif

typedef struct {
  tp_byte_stream io;
  uint16_t next_id;
  uint8_t retries;      /* resends after the first attempt */
  uint32_t timeout_ms;  /* per attempt */
  uint32_t retried;     /* resends so far (diagnostics) */
  int last_status;      /* status of the last refused request */
} tp_remote_storage;

int tp_remote_storage_init(tp_storage *s, tp_remote_storage *state, const tp_byte_stream *io,
                           uint32_t capacity, uint8_t retries, uint32_t timeout_ms);

uint32_t tp_crc32(uint32_t crc, const uint8_t *data, uint32_t n);

#ifdef __cplusplus
}
#endif

#endif /* TP_STORAGE_H */
