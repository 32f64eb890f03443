/* Host harness: replays a generated plan's spill/fetch/stream schedule over a real arena.
 *
 * Each tensor gets a distinct, compressible byte pattern (per inference) when produced;
 * every byte is checked at every use, through the runtime (fetched segments, streamed
 * rows through line buffers, compacted parts). Bytes no live segment owns are trashed
 * before every step, so data that only survives by luck is caught too.
 *
 *   harness [-c0|-c1] [-a0|-a1|-a2] INFERENCES SPEC...   one SPEC per plan storage:
 *     file:PATH | flash:GRANULE | tcp:PORT
 * -a routes every storage through an asynchronous channel (tp_async.h): -a0 the blocking
 * driver, -a1 a host worker thread that runs each transfer as soon as it can, -a2 one
 * that runs each at the end of its window (a spill reads its source at completion, a
 * fetch fills its destination at completion).
 * Prints "ok spilled=N stored=N fetched=N checked=N retried=N async=N worker=N" and
 * exits 0, or a reason and 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tinyplan_plan.h"
#include "tp_async.h"
#include "tp_stream_tcp.h"

static uint8_t arena[TP_ARENA_BYTES + 1];
static uint8_t keep[TP_ARENA_BYTES + 1];
static tp_runtime rt;
static unsigned inference;
static unsigned long checked;

static uint8_t pattern(uint32_t tensor, uint32_t i) {
  /* About 60% of bytes share one per-tensor value: compression has something to elide. */
  uint32_t h = (i + 1u) * 2654435761u ^ (tensor + 1u) * 40503u ^ (inference + 1u) * 97u;
  h ^= h >> 15;
  h *= 2246822519u;
  h ^= h >> 13;
  if (h % 5u < 3u) return (uint8_t)(tensor * 37u + inference * 11u + 5u);
  return (uint8_t)(h >> 8);
}

static const tp_plan *P(void) { return &tinyplan_plan; }

static int fail(const char *what, uint32_t tensor, int32_t part, uint32_t step, uint32_t at) {
  fprintf(stderr, "FAIL %s: tensor %u '%s' part %d step %u byte %u (inference %u)\n", what,
          (unsigned)tensor, P()->tensors[tensor].name, (int)part, (unsigned)step,
          (unsigned)at, inference);
  exit(1);
  return 1;
}

/* Byte j of a part's compact layout -> byte index in the whole tensor. */
static uint32_t part_index(uint32_t tensor, int32_t part, uint32_t j) {
  const tp_tensor *t = &P()->tensors[tensor];
  uint32_t c0, c1, len, stride;
  if (part < 0) return j;
  c0 = part == 0 ? 0 : t->split;
  c1 = part == 0 ? t->split : t->channels;
  len = (c1 - c0) * t->inner;
  stride = t->channels * t->inner;
  return (j / len) * stride + c0 * t->inner + j % len;
}

static uint32_t part_bytes(uint32_t tensor, int32_t part) {
  const tp_tensor *t = &P()->tensors[tensor];
  if (part < 0) return t->nbytes;
  return (part == 0 ? t->split : t->channels - t->split) * t->inner * t->outer;
}

static void check_bytes(const uint8_t *p, uint32_t tensor, int32_t part, uint32_t from,
                        uint32_t n, uint32_t step) {
  uint32_t j;
  for (j = 0; j < n; j++)
    if (p[j] != pattern(tensor, part_index(tensor, part, from + j)))
      fail("data", tensor, part, step, from + j);
  checked += n;
}

static void check_stream(tp_stream_state *st, uint32_t tensor, int32_t part, uint32_t step) {
  const tp_action *a = st->action;
  uint32_t r;
  for (r = 0; r < a->rows; r++) {
    const uint8_t *row = NULL;
    uint32_t start = r * a->row_bytes;
    uint32_t len = a->nbytes - start < a->row_bytes ? a->nbytes - start : a->row_bytes;
    if (tp_stream_row(st, r, &row) != TP_OK) fail("stream row", tensor, part, step, start);
    check_bytes(row, tensor, part, start, len, step);
  }
}

/* Check (tensor, part) at step: resident in a segment, or streamed when allowed. */
static void check_part(uint32_t tensor, int32_t part, uint32_t step, int streamable) {
  const tp_segment *seg = tp_segment_at(P(), tensor, part, step);
  tp_stream_state *st;
  if (seg != NULL) {
    check_bytes(arena + seg->offset, tensor, part, 0, part_bytes(tensor, part), step);
    return;
  }
  st = streamable ? tp_stream_at(&rt, tensor, part, step) : NULL;
  if (st == NULL) fail("neither resident nor streamed", tensor, part, step, 0);
  check_stream(st, tensor, part, step);
}

/* streamable: a fused concat (+conv) may stream it; parts: a channel concat may take the
 * two parts of a split tensor (streamable implies parts). */
static void check_use(int32_t tensor, uint32_t step, int streamable, int parts) {
  const tp_tensor *t;
  if (tensor < 0 || (uint32_t)tensor >= P()->num_tensors) return;
  t = &P()->tensors[tensor];
  if (t->num_segments == 0) return; /* not in the arena (constant) */
  if (t->split == 0) {
    check_part((uint32_t)tensor, -1, step, streamable);
  } else if (tp_interleaved_at(P(), (uint32_t)tensor, step)) {
    const tp_segment *k = tp_segment_at(P(), (uint32_t)tensor, 0, step);
    check_bytes(arena + k->offset, (uint32_t)tensor, -1, 0, t->nbytes, step);
  } else {
    if (!streamable && !parts) fail("split tensor read whole", (uint32_t)tensor, -1, step, 0);
    check_part((uint32_t)tensor, 0, step, streamable);
    check_part((uint32_t)tensor, 1, step, streamable);
  }
}

/* First step the tensor exists in the arena (its producer, or 0 for inputs). */
static int32_t created_at(uint32_t tensor) {
  const tp_tensor *t = &P()->tensors[tensor];
  int32_t best = -1;
  uint32_t i;
  for (i = t->first_segment; i < t->first_segment + t->num_segments; i++) {
    const tp_segment *s = &P()->segments[i];
    if (s->role == TP_ROLE_TENSOR && (best < 0 || (int32_t)s->first < best))
      best = (int32_t)s->first;
  }
  return best;
}

static int is_scratch(uint32_t tensor, uint32_t step) {
  const tp_op *op;
  uint32_t i;
  if (step == 0) return 0;
  op = &P()->ops[step - 1];
  for (i = 0; i < op->num_scratch; i++)
    if (P()->op_io[op->io_start + op->num_inputs + op->num_outputs + i] == (int32_t)tensor)
      return 1;
  return 0;
}

/* The op writes its outputs: whole tensor at its first segment (part 0's for a split). */
static void produce(uint32_t step) {
  uint32_t t, i;
  for (t = 0; t < P()->num_tensors; t++) {
    const tp_segment *seg;
    if (P()->tensors[t].num_segments == 0 || created_at(t) != (int32_t)step) continue;
    seg = tp_segment_at(P(), t, P()->tensors[t].split ? 0 : -1, step);
    if (seg == NULL) fail("no segment at creation", t, -1, step, 0);
    if (is_scratch(t, step)) {
      memset(arena + seg->offset, 0xA5, seg->size); /* kernels trash their scratch */
      continue;
    }
    for (i = 0; i < P()->tensors[t].nbytes; i++) arena[seg->offset + i] = pattern(t, i);
  }
}

/* Trash every byte no segment carries from step - 1 into step. */
static void trash(uint32_t step) {
  uint32_t i, b;
  memset(keep, 0, sizeof keep);
  for (i = 0; i < P()->num_segments && step > 0; i++) {
    const tp_segment *s = &P()->segments[i];
    if (s->role == TP_ROLE_TENSOR && s->first < step && step <= s->last)
      memset(keep + s->offset, 1, s->size);
  }
  for (b = 0; b < TP_ARENA_BYTES; b++)
    if (!keep[b]) arena[b] = (uint8_t)(0x5Au ^ b ^ step);
}

static void run_op(uint32_t step) {
  const tp_op *op = &P()->ops[step - 1];
  const int32_t *io = P()->op_io + op->io_start;
  uint32_t i;
  if (op->fused == TP_OP_FUSED_AWAY) return; /* runs inside its conv */
  if (op->fused == TP_OP_FUSED_CONV) {
    const tp_op *concat = &P()->ops[op->partner];
    const int32_t *cio = P()->op_io + concat->io_start;
    int32_t virtual_out = cio[concat->num_inputs];
    for (i = 0; i < concat->num_inputs; i++) check_use(cio[i], step, 1, 1);
    for (i = 0; i < op->num_inputs; i++)
      if (io[i] != virtual_out) check_use(io[i], step, 0, 0);
  } else {
    for (i = 0; i < op->num_inputs; i++)
      check_use(io[i], step, op->fused == TP_OP_STREAM_CONCAT,
                op->fused == TP_OP_STREAM_CONCAT || op->fused == TP_OP_CHANNEL_CONCAT);
  }
}

static int open_storage(uint32_t i, const char *spec, tp_storage *s) {
  const tp_storage_desc *d = &P()->storages[i];
  if (strncmp(spec, "file:", 5) == 0) {
    static tp_file_storage files[TP_MAX_STORAGES];
    return tp_file_storage_open(s, &files[i], spec + 5, d->capacity);
  }
  if (strncmp(spec, "flash:", 6) == 0) {
    static tp_flash_storage flashes[TP_MAX_STORAGES];
    static tp_flash_ram rams[TP_MAX_STORAGES];
    tp_flash_hal hal;
    uint32_t block = d->erase_block, size = d->capacity;
    uint8_t *image;
    if (size % block) size += block - size % block;
    image = (uint8_t *)malloc(size); /* test code: the runtime itself never allocates */
    if (image == NULL) return TP_EIO;
    tp_flash_ram_hal(&hal, &rams[i], image, size, block, (uint32_t)atoi(spec + 6));
    return tp_flash_storage_init(s, &flashes[i], &hal);
  }
  if (strncmp(spec, "tcp:", 4) == 0) {
    static tp_tcp_stream tcps[TP_MAX_STORAGES];
    static tp_remote_storage remotes[TP_MAX_STORAGES];
    tp_byte_stream io;
    int rc = tp_tcp_stream_open(&io, &tcps[i], "127.0.0.1", (uint16_t)atoi(spec + 4));
    if (rc != TP_OK) return rc;
    return tp_remote_storage_init(s, &remotes[i], &io, d->capacity, 3, 1000);
  }
  return TP_ECONFIG;
}

int main(int argc, char **argv) {
  static tp_storage storages[TP_MAX_STORAGES];
  tp_storage *ptrs[TP_MAX_STORAGES];
  static tp_async drivers[TP_MAX_STORAGES];
  static tp_channel channels[TP_MAX_STORAGES];
#if defined(TP_ASYNC_HAVE_THREADS)
  static tp_async_thread threads[TP_MAX_STORAGES];
#endif
  int arg = 1, compress = -1, async = -1, inferences;
  uint32_t i, step, retried = 0, worker = 0;
  if (arg < argc && strncmp(argv[arg], "-c", 2) == 0) compress = atoi(argv[arg++] + 2);
  if (arg < argc && strncmp(argv[arg], "-a", 2) == 0) async = atoi(argv[arg++] + 2);
  if (argc - arg != 1 + (int)TP_NUM_STORAGES) {
    fprintf(stderr, "usage: harness [-c0|-c1] INFERENCES SPEC x %u\n", (unsigned)TP_NUM_STORAGES);
    return 2;
  }
  inferences = atoi(argv[arg++]);
  for (i = 0; i < P()->num_storages; i++) {
    int rc = open_storage(i, argv[arg + (int)i], &storages[i]);
    if (rc != TP_OK) {
      fprintf(stderr, "FAIL storage %u (%s): %d\n", (unsigned)i, argv[arg + (int)i], rc);
      return 1;
    }
    ptrs[i] = &storages[i];
  }
  if (tp_runtime_init(&rt, P(), arena, TP_ARENA_BYTES, ptrs) != TP_OK) {
    fprintf(stderr, "FAIL runtime init\n");
    return 1;
  }
  if (compress >= 0) rt.compress_mask = compress ? 0xFFFFFFFFu : 0u;
  for (i = 0; i < P()->num_storages && async >= 0; i++) {
    int rc = TP_OK;
    if (async == 0) {
      tp_async_blocking(&drivers[i]);
    } else {
#if defined(TP_ASYNC_HAVE_THREADS)
      rc = tp_async_thread_open(&drivers[i], &threads[i],
                                async == 2 ? TP_ASYNC_LATEST : TP_ASYNC_EAGER);
#else
      rc = TP_ECONFIG;
#endif
    }
    if (rc == TP_OK) rc = tp_runtime_set_channel(&rt, i, &channels[i], &drivers[i]);
    if (rc != TP_OK) {
      fprintf(stderr, "FAIL async channel %u: %d\n", (unsigned)i, rc);
      return 1;
    }
  }
  for (inference = 0; inference < (unsigned)inferences; inference++) {
    tp_runtime_begin(&rt);
    for (step = 0; step < P()->num_steps; step++) {
      trash(step);
      if (tp_before_op(&rt, step) != TP_OK) fail("before op", 0, -1, step, (uint32_t)rt.error);
      if (step > 0) run_op(step);
      produce(step);
      if (tp_after_op(&rt, step) != TP_OK) fail("after op", 0, -1, step, (uint32_t)rt.error);
    }
    /* Graph outputs (and anything else still resident) at the last step. */
    for (i = 0; i < P()->num_tensors; i++)
      if (P()->tensors[i].num_segments > 0 &&
          tp_segment_at(P(), i, -1, P()->num_steps - 1) != NULL &&
          !is_scratch(i, P()->num_steps - 1))
        check_use((int32_t)i, P()->num_steps - 1, 0, 0);
    if (tp_runtime_end(&rt) != TP_OK) fail("flush", 0, -1, 0, (uint32_t)rt.error);
  }
  for (i = 0; i < P()->num_storages; i++)
    if (storages[i].read != NULL && strncmp(argv[arg + (int)i], "tcp:", 4) == 0)
      retried += ((tp_remote_storage *)storages[i].ctx)->retried;
  for (i = 0; i < P()->num_storages && async >= 0; i++) {
    worker += drivers[i].on_worker;
#if defined(TP_ASYNC_HAVE_THREADS)
    if (async > 0) tp_async_thread_close(&drivers[i]);
#endif
  }
  printf("ok spilled=%u stored=%u fetched=%u checked=%lu retried=%u async=%u worker=%u\n",
         (unsigned)rt.spilled_raw, (unsigned)rt.spilled_stored, (unsigned)rt.fetched_raw,
         checked, (unsigned)retried, (unsigned)rt.async_started, (unsigned)worker);
  return 0;
}
