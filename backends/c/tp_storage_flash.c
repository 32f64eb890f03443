/* Flash storage: erases whole blocks, programs whole aligned granules.
 *
 * An unaligned head or tail is merged with what the granule already holds (NOR flash
 * can program a granule again as long as bits only go from 1 to 0, and erased bytes are
 * 0xFF). Flashes with ECC words that forbid a second program need spill addresses
 * aligned to the granule; the plan's write_granularity says so.
 */
#include "tp_storage.h"

#include <string.h>

static int in_range(const tp_storage *s, uint32_t address, uint32_t n) {
  return address <= s->capacity && n <= s->capacity - address;
}

static int flash_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_flash_storage *f = (tp_flash_storage *)s->ctx;
  if (!in_range(s, address, n)) return TP_ERANGE;
  return f->hal.read(f->hal.ctx, address, dst, n);
}

static int flash_write(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n) {
  tp_flash_storage *f = (tp_flash_storage *)s->ctx;
  const uint32_t g = f->hal.granule;
  uint8_t granule[TP_FLASH_MAX_GRANULE];
  if (!in_range(s, address, n)) return TP_ERANGE;
  while (n > 0) {
    uint32_t base = address - address % g;
    uint32_t skip = address - base;
    uint32_t take;
    int rc;
    if (skip == 0 && n >= g) {
      /* Aligned middle: program as many whole granules as possible in one call. */
      take = n - n % g;
      rc = f->hal.program(f->hal.ctx, address, src, take);
    } else {
      take = g - skip;
      if (take > n) take = n;
      rc = f->hal.read(f->hal.ctx, base, granule, g);
      if (rc != TP_OK) return rc;
      memcpy(granule + skip, src, take);
      rc = f->hal.program(f->hal.ctx, base, granule, g);
    }
    if (rc != TP_OK) return rc;
    f->programs++;
    address += take;
    src += take;
    n -= take;
  }
  return TP_OK;
}

static int flash_erase(tp_storage *s, uint32_t address, uint32_t n) {
  tp_flash_storage *f = (tp_flash_storage *)s->ctx;
  const uint32_t b = f->hal.erase_block;
  uint32_t block;
  if (!in_range(s, address, n)) return TP_ERANGE;
  if (n == 0) return TP_OK;
  for (block = address - address % b; block < address + n; block += b) {
    int rc = f->hal.erase(f->hal.ctx, block);
    if (rc != TP_OK) return rc;
    f->erases++;
  }
  return TP_OK;
}

static int flash_flush(tp_storage *s) {
  (void)s;  /* programs complete synchronously */
  return TP_OK;
}

int tp_flash_storage_init(tp_storage *s, tp_flash_storage *state, const tp_flash_hal *hal) {
  memset(s, 0, sizeof *s);
  if (hal->granule == 0 || hal->granule > TP_FLASH_MAX_GRANULE || hal->erase_block == 0 ||
      hal->size % hal->erase_block != 0 || hal->erase_block % hal->granule != 0)
    return TP_ECONFIG;
  state->hal = *hal;
  state->erases = 0;
  state->programs = 0;
  s->read = flash_read;
  s->write = flash_write;
  s->erase = flash_erase;
  s->flush = flash_flush;
  s->capacity = hal->size;
  s->erase_block = hal->erase_block;
  s->ctx = state;
  return TP_OK;
}

/* ---- host RAM image with NOR semantics ------------------------------------------------ */
static int ram_read(void *ctx, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_flash_ram *ram = (tp_flash_ram *)ctx;
  if (address > ram->size || n > ram->size - address) return TP_ERANGE;
  memcpy(dst, ram->image + address, n);
  return TP_OK;
}

static int ram_program(void *ctx, uint32_t address, const uint8_t *src, uint32_t n) {
  tp_flash_ram *ram = (tp_flash_ram *)ctx;
  uint32_t i;
  if (address > ram->size || n > ram->size - address) return TP_ERANGE;
  for (i = 0; i < n; i++) ram->image[address + i] &= src[i]; /* bits only go 1 -> 0 */
  return TP_OK;
}

static int ram_erase_block(void *ctx, uint32_t block_address) {
  tp_flash_ram *ram = (tp_flash_ram *)ctx;
  uint32_t n = ram->erase_block;
  if (block_address >= ram->size) return TP_ERANGE;
  if (n > ram->size - block_address) n = ram->size - block_address;
  memset(ram->image + block_address, 0xFF, n);
  return TP_OK;
}

void tp_flash_ram_hal(tp_flash_hal *hal, tp_flash_ram *ram, uint8_t *image, uint32_t size,
                      uint32_t erase_block, uint32_t granule) {
  ram->image = image;
  ram->size = size;
  memset(image, 0xFF, size);
  ram->erase_block = erase_block;
  hal->read = ram_read;
  hal->program = ram_program;
  hal->erase = ram_erase_block;
  hal->ctx = ram;
  hal->size = size;
  hal->erase_block = erase_block;
  hal->granule = granule;
}
