/* Remote storage: the framed protocol of docs/remote_protocol.md over any byte stream.
 *
 *   A5 5A | id u16 | op u8 | status u8 | position u32 | size u32 | length u32 |
 *   payload | crc32 u32 (IEEE, over id..payload) | 5A A5        (little-endian)
 *
 * Every request is idempotent, so a damaged, lost or late answer is handled by sending
 * the request again with a fresh id (bounded by `retries`); answers with another id are
 * stale and skipped. No frame buffer: payloads go straight from and to the caller.
 */
#include "tp_storage.h"

#include <string.h>

#define OP_READ 1
#define OP_WRITE 2
#define OP_ERASE 3
#define OP_FLUSH 4
#define OP_RESPONSE 0x80
#define ST_OK 0
#define ST_CHECKSUM 1
#define WIRE_MAX_PAYLOAD 4096u
#define HEADER 16u /* after the start marker */

enum { GOT_ANSWER = 0, RESEND = 1 };

uint32_t tp_crc32(uint32_t crc, const uint8_t *data, uint32_t n) {
  uint32_t i;
  int k;
  crc = ~crc;
  for (i = 0; i < n; i++) {
    crc ^= data[i];
    for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

static void put16(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
  put16(p, v);
  put16(p + 2, v >> 16);
}

static uint32_t get16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static uint32_t get32(const uint8_t *p) { return get16(p) | (get16(p + 2) << 16); }

/* 1: got n bytes; 0: timeout; < 0: stream error. */
static int recv_exact(tp_remote_storage *r, uint8_t *dst, uint32_t n) {
  uint32_t got = 0;
  while (got < n) {
    int32_t k = r->io.recv(r->io.ctx, dst + got, n - got, r->timeout_ms);
    if (k < 0) return (int)k;
    if (k == 0) return 0;
    got += (uint32_t)k;
  }
  return 1;
}

static int send_request(tp_remote_storage *r, uint16_t id, uint8_t op, uint32_t position,
                        uint32_t size, const uint8_t *payload, uint32_t length) {
  uint8_t head[2 + HEADER];
  uint8_t tail[6];
  uint32_t crc;
  int rc;
  head[0] = 0xA5;
  head[1] = 0x5A;
  put16(head + 2, id);
  head[4] = op;
  head[5] = ST_OK;
  put32(head + 6, position);
  put32(head + 10, size);
  put32(head + 14, length);
  crc = tp_crc32(0, head + 2, HEADER);
  crc = tp_crc32(crc, payload, length);
  put32(tail, crc);
  tail[4] = 0x5A;
  tail[5] = 0xA5;
  rc = r->io.send(r->io.ctx, head, sizeof head);
  if (rc == TP_OK && length > 0) rc = r->io.send(r->io.ctx, payload, length);
  if (rc == TP_OK) rc = r->io.send(r->io.ctx, tail, sizeof tail);
  return rc;
}

/* Wait for the answer to `id`; GOT_ANSWER with *status set, or RESEND. */
static int await_answer(tp_remote_storage *r, uint16_t id, uint8_t *dst, uint32_t want,
                        int *status) {
  for (;;) {
    uint8_t b = 0, head[HEADER], tail[6], sink[32];
    uint32_t length, crc, left;
    int own, rc;
    /* Hunt for the start marker; a timeout ends the attempt. */
    do {
      if (recv_exact(r, &b, 1) != 1) return RESEND;
      while (b == 0xA5) {
        if (recv_exact(r, &b, 1) != 1) return RESEND;
        if (b == 0x5A) break;
      }
    } while (b != 0x5A);
    if (recv_exact(r, head, HEADER) != 1) return RESEND;
    length = get32(head + 12);
    if (length > WIRE_MAX_PAYLOAD) return RESEND; /* damaged header */
    own = get16(head) == id && (head[2] & OP_RESPONSE) != 0;
    crc = tp_crc32(0, head, HEADER);
    if (own && head[3] == ST_OK && length == want && want > 0) {
      if (recv_exact(r, dst, length) != 1) return RESEND;
      crc = tp_crc32(crc, dst, length);
    } else {
      for (left = length; left > 0;) {
        uint32_t k = left < sizeof sink ? left : (uint32_t)sizeof sink;
        if (recv_exact(r, sink, k) != 1) return RESEND;
        crc = tp_crc32(crc, sink, k);
        left -= k;
      }
    }
    if (recv_exact(r, tail, sizeof tail) != 1) return RESEND;
    rc = get32(tail) == crc && tail[4] == 0x5A && tail[5] == 0xA5;
    if (!rc) return RESEND;             /* damaged: cannot trust whose answer it was */
    if (!own) continue;                 /* stale answer to an earlier attempt */
    if (head[3] == ST_CHECKSUM) return RESEND;
    if (head[3] == ST_OK && length != want) return RESEND;
    *status = head[3];
    return GOT_ANSWER;
  }
}

static int request(tp_remote_storage *r, uint8_t op, uint32_t position, uint32_t size,
                   const uint8_t *payload, uint32_t length, uint8_t *dst, uint32_t want) {
  uint32_t attempt;
  for (attempt = 0; attempt <= r->retries; attempt++) {
    uint16_t id;
    int status = ST_OK;
    if (attempt > 0) {
      r->retried++;
      if (r->io.reset != NULL && r->io.reset(r->io.ctx) != TP_OK) continue;
    }
    id = r->next_id;
    r->next_id = (uint16_t)(r->next_id == 0xFFFF ? 1 : r->next_id + 1);
    if (send_request(r, id, op, position, size, payload, length) != TP_OK) continue;
    if (await_answer(r, id, dst, want, &status) == RESEND) continue;
    if (status != ST_OK) {
      r->last_status = status;
      return TP_EPROTO;
    }
    return TP_OK;
  }
  return TP_EPROTO;
}

static int in_range(const tp_storage *s, uint32_t address, uint32_t n) {
  return address <= s->capacity && n <= s->capacity - address;
}

static int remote_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_remote_storage *r = (tp_remote_storage *)s->ctx;
  if (!in_range(s, address, n)) return TP_ERANGE;
  while (n > 0) {
    uint32_t k = n < TP_REMOTE_MAX_PAYLOAD ? n : TP_REMOTE_MAX_PAYLOAD;
    int rc = request(r, OP_READ, address, k, NULL, 0, dst, k);
    if (rc != TP_OK) return rc;
    address += k;
    dst += k;
    n -= k;
  }
  return TP_OK;
}

static int remote_write(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n) {
  tp_remote_storage *r = (tp_remote_storage *)s->ctx;
  if (!in_range(s, address, n)) return TP_ERANGE;
  while (n > 0) {
    uint32_t k = n < TP_REMOTE_MAX_PAYLOAD ? n : TP_REMOTE_MAX_PAYLOAD;
    int rc = request(r, OP_WRITE, address, k, src, k, NULL, 0);
    if (rc != TP_OK) return rc;
    address += k;
    src += k;
    n -= k;
  }
  return TP_OK;
}

static int remote_erase(tp_storage *s, uint32_t address, uint32_t n) {
  (void)address;
  (void)n;
  (void)s;
  return TP_OK; /* the host overwrites in place */
}

static int remote_flush(tp_storage *s) {
  return request((tp_remote_storage *)s->ctx, OP_FLUSH, 0, 0, NULL, 0, NULL, 0);
}

int tp_remote_storage_init(tp_storage *s, tp_remote_storage *state, const tp_byte_stream *io,
                           uint32_t capacity, uint8_t retries, uint32_t timeout_ms) {
  memset(s, 0, sizeof *s);
  if (TP_REMOTE_MAX_PAYLOAD > WIRE_MAX_PAYLOAD || TP_REMOTE_MAX_PAYLOAD == 0) return TP_ECONFIG;
  state->io = *io;
  state->next_id = 1;
  state->retries = retries;
  state->timeout_ms = timeout_ms;
  state->retried = 0;
  state->last_status = ST_OK;
  s->read = remote_read;
  s->write = remote_write;
  s->erase = remote_erase;
  s->flush = remote_flush;
  s->capacity = capacity;
  s->erase_block = 1;
  s->ctx = state;
  return TP_OK;
}
