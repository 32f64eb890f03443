/* Spill, fetch, stream and compaction of a generated plan's schedule. */
#include "tp_runtime.h"

#include <string.h>

int tp_runtime_init(tp_runtime *rt, const tp_plan *plan, uint8_t *arena, uint32_t arena_bytes,
                    tp_storage *const *storages) {
  uint32_t i;
  memset(rt, 0, sizeof *rt);
  rt->plan = plan;
  rt->arena = arena;
  if (arena == NULL || arena_bytes < plan->arena_bytes || plan->num_storages > TP_MAX_STORAGES)
    return rt->error = TP_ECONFIG;
  for (i = 0; i < plan->num_storages; i++) {
    tp_storage *s = storages != NULL ? storages[i] : NULL;
    const tp_storage_desc *d = &plan->storages[i];
    if (s == NULL || s->capacity < d->capacity) return rt->error = TP_ECONFIG;
    rt->storages[i] = s;
    if (d->compression) rt->compress_mask |= 1u << i;
  }
  return TP_OK;
}

int tp_runtime_begin(tp_runtime *rt) {
  uint32_t i;
  const tp_plan *plan = rt->plan;
  for (i = 0; i < plan->num_records; i++) plan->records[i].valid = 0;
  for (i = 0; i < plan->num_streams; i++) plan->streams[i].open = 0;
  rt->spilled_raw = rt->spilled_stored = rt->fetched_raw = 0;
  rt->error = TP_OK;
  return TP_OK;
}

int tp_runtime_end(tp_runtime *rt) {
  uint32_t i;
  int rc = tp_channel_drain(rt, TP_MAX_STORAGES);
  if (rt->error == TP_OK) rt->error = rc;
  for (i = 0; i < rt->plan->num_storages && rt->error == TP_OK; i++)
    rt->error = tp_io_storage(rt, i)->flush(tp_io_storage(rt, i));
  return rt->error;
}

static const uint8_t *chunk_at(const uint8_t *base, const tp_action *a, uint32_t o) {
  return base + o * a->gather.stride + a->gather.chunk_off;
}

/* The spill itself, on whichever thread runs it, with the staging state of its caller
 * (the runtime's, or its channel's). Counters are the caller's to update. */
static int spill_into(tp_runtime *rt, const tp_action *a, const uint8_t *base,
                      tp_spill_record *rec, tp_writer *w, uint32_t *hist) {
  tp_storage *s = rt->storages[a->storage];
  uint8_t mode = TP_MODE_RAW, value = 0;
  uint32_t o, i;
  int rc;
  if (a->gather.outer * a->gather.chunk_len != a->nbytes) return TP_EPLAN;
  if (rt->compress_mask & (1u << a->storage)) {
    uint32_t best = 0;
    memset(hist, 0, 256 * sizeof *hist);
    for (o = 0; o < a->gather.outer; o++) {
      const uint8_t *p = chunk_at(base, a, o);
      for (i = 0; i < a->gather.chunk_len; i++) hist[p[i]]++;
    }
    for (i = 1; i < 256; i++)
      if (hist[i] > hist[best]) best = i;
    if (tp_elided_size(a->nbytes, hist[best]) < a->nbytes) {
      mode = TP_MODE_ELIDE;
      value = (uint8_t)best;
    }
  }
  if (a->erase_bytes > 0) {
    rc = s->erase(s, a->erase_start, a->erase_bytes);
    if (rc != TP_OK) return rc;
  }
  tp_writer_begin(w, s, a->address, rec, a->nbytes, mode, value);
  for (o = 0; o < a->gather.outer; o++)
    tp_writer_put(w, chunk_at(base, a, o), a->gather.chunk_len);
  return tp_writer_end(w);
}

int tp_spill_data(tp_runtime *rt, const tp_action *a, const uint8_t *base,
                  tp_spill_record *rec) {
  int rc = spill_into(rt, a, base, rec, &rt->writer, rt->hist);
  rt->spilled_raw += a->nbytes;
  rt->spilled_stored += rec->stored_bytes;
  return rc;
}

static int fetch_into(tp_runtime *rt, const tp_action *a, uint8_t *dst,
                      const tp_spill_record *rec, tp_reader *r) {
  uint32_t sec;
  if (!rec->valid || rec->raw_bytes != a->nbytes) return TP_EPLAN;
  /* Section by section: each decodes on its own (a DMA or second core could take one). */
  for (sec = 0; sec < TP_SECTIONS; sec++) {
    uint32_t start = sec * rec->section_raw, stop = start + rec->section_raw;
    int rc;
    if (start >= a->nbytes) break;
    if (stop > a->nbytes) stop = a->nbytes;
    rc = tp_reader_begin(r, rt->storages[a->storage], a->address, rec, sec);
    if (rc == TP_OK) rc = tp_reader_get(r, dst + start, stop - start);
    if (rc != TP_OK) return rc;
  }
  return TP_OK;
}

int tp_fetch_data(tp_runtime *rt, const tp_action *a, uint8_t *dst,
                  const tp_spill_record *rec) {
  int rc = fetch_into(rt, a, dst, rec, &rt->reader);
  if (rc == TP_OK) rt->fetched_raw += a->nbytes;
  return rc;
}

/* ---- channels: asynchronous transfers (tp_async.h) ---------------------------------- */
static int run_slot(void *arg) {
  tp_inflight *f = (tp_inflight *)arg;
  tp_channel *ch = f->channel;
  if (f->spill) return spill_into(f->rt, &f->action, f->src, f->rec, &ch->writer, ch->hist);
  return fetch_into(f->rt, &f->action, f->dst, f->rec, &ch->reader);
}

/* Waits for a busy slot and books its counters (main thread only). */
static int finish_slot(tp_runtime *rt, tp_inflight *f) {
  int rc = f->channel->driver->wait(f->channel->driver, &f->xfer);
  f->busy = 0;
  if (f->spill) {
    rt->spilled_raw += f->action.nbytes;
    rt->spilled_stored += f->rec->stored_bytes;
  } else if (rc == TP_OK) {
    rt->fetched_raw += f->action.nbytes;
  }
  return rc;
}

static tp_inflight *oldest_slot(tp_channel *ch) {
  tp_inflight *best = NULL;
  uint32_t i, age = 0;
  for (i = 0; i < TP_MAX_INFLIGHT; i++)
    if (ch->slots[i].busy && (best == NULL || ch->serial - ch->order[i] > age)) {
      best = &ch->slots[i];
      age = ch->serial - ch->order[i];
    }
  return best;
}

int tp_channel_drain(tp_runtime *rt, uint32_t storage) {
  uint32_t first = storage < TP_MAX_STORAGES ? storage : 0;
  uint32_t last = storage < TP_MAX_STORAGES ? storage : TP_MAX_STORAGES - 1;
  uint32_t i;
  int rc = TP_OK;
  for (i = first; i <= last; i++) {
    tp_channel *ch = rt->channels[i];
    tp_inflight *f;
    if (ch == NULL) continue;
    while ((f = oldest_slot(ch)) != NULL) {
      int r = finish_slot(rt, f);
      if (rc == TP_OK) rc = r;
    }
  }
  return rc;
}

static int start_slot(tp_runtime *rt, const tp_action *a, int spill, int async,
                      const uint8_t *src, uint8_t *dst, tp_spill_record *rec) {
  tp_channel *ch = rt->channels[a->storage];
  tp_inflight *f = NULL;
  uint32_t i;
  int rc;
  for (i = 0; i < TP_MAX_INFLIGHT && f == NULL; i++)
    if (!ch->slots[i].busy) f = &ch->slots[i];
  if (f == NULL) { /* every slot in flight: the oldest finishes first anyway (FIFO) */
    f = oldest_slot(ch);
    rc = finish_slot(rt, f);
    if (rc != TP_OK) return rc;
  }
  f->action = *a;
  f->spill = spill;
  f->rt = rt;
  f->channel = ch;
  f->src = src;
  f->dst = dst;
  f->rec = rec;
  f->busy = 1;
  ch->order[f - ch->slots] = ch->serial++;
  tp_xfer_job(&f->xfer, run_slot, f);
  rc = ch->driver->start(ch->driver, &f->xfer);
  if (rc != TP_OK) {
    f->busy = 0;
    return rc;
  }
  if (async) {
    rt->async_started++;
    return TP_OK;
  }
  return finish_slot(rt, f); /* a blocking transfer, in its turn on the channel */
}

int tp_spill_start(tp_runtime *rt, const tp_action *a, const uint8_t *base,
                   tp_spill_record *rec) {
  if (a->storage >= TP_MAX_STORAGES) return TP_EPLAN;
  if (rt->channels[a->storage] == NULL) return tp_spill_data(rt, a, base, rec);
  return start_slot(rt, a, 1, a->kind == TP_SPILL_ASYNC, base, NULL, rec);
}

int tp_fetch_start(tp_runtime *rt, const tp_action *a, uint8_t *dst, tp_spill_record *rec) {
  if (a->storage >= TP_MAX_STORAGES) return TP_EPLAN;
  if (rt->channels[a->storage] == NULL) return tp_fetch_data(rt, a, dst, rec);
  return start_slot(rt, a, 0, a->kind == TP_FETCH_ASYNC, NULL, dst, rec);
}

int tp_transfer_wait(tp_runtime *rt, uint32_t kind, uint32_t storage, uint32_t address) {
  tp_channel *ch;
  uint32_t i;
  if (storage >= TP_MAX_STORAGES) return TP_EPLAN;
  ch = rt->channels[storage];
  if (ch == NULL) return TP_OK; /* blocking: finished when started */
  for (i = 0; i < TP_MAX_INFLIGHT; i++) {
    tp_inflight *f = &ch->slots[i];
    if (f->busy && f->spill == (kind == TP_SPILL) && f->action.address == address)
      return finish_slot(rt, f);
  }
  return TP_OK; /* finished already (a full channel or a drain waited for it) */
}

/* The channel's storage as the main thread sees it: each call one transfer, in turn. */
static tp_channel *io_channel(tp_storage *s) { return (tp_channel *)s->ctx; }

static int io_call(tp_channel *ch, tp_transfer *t) {
  int rc = ch->driver->start(ch->driver, t);
  return rc != TP_OK ? rc : ch->driver->wait(ch->driver, t);
}

static int io_read(tp_storage *s, uint32_t address, uint8_t *dst, uint32_t n) {
  tp_transfer t;
  tp_xfer_read(&t, io_channel(s)->storage, address, dst, n);
  return io_call(io_channel(s), &t);
}

static int io_write(tp_storage *s, uint32_t address, const uint8_t *src, uint32_t n) {
  tp_transfer t;
  tp_xfer_write(&t, io_channel(s)->storage, address, src, n);
  return io_call(io_channel(s), &t);
}

typedef struct {
  tp_storage *storage;
  uint32_t address, n;
  int flush;
} io_op;

static int io_job(void *arg) {
  io_op *op = (io_op *)arg;
  return op->flush ? op->storage->flush(op->storage)
                   : op->storage->erase(op->storage, op->address, op->n);
}

static int io_erase(tp_storage *s, uint32_t address, uint32_t n) {
  tp_transfer t;
  io_op op;
  op.storage = io_channel(s)->storage;
  op.address = address;
  op.n = n;
  op.flush = 0;
  tp_xfer_job(&t, io_job, &op);
  return io_call(io_channel(s), &t);
}

static int io_flush(tp_storage *s) {
  tp_transfer t;
  io_op op;
  op.storage = io_channel(s)->storage;
  op.address = op.n = 0;
  op.flush = 1;
  tp_xfer_job(&t, io_job, &op);
  return io_call(io_channel(s), &t);
}

int tp_runtime_set_channel(tp_runtime *rt, uint32_t storage, tp_channel *channel,
                           tp_async *driver) {
  tp_storage *s;
  if (storage >= TP_MAX_STORAGES || rt->storages[storage] == NULL) return TP_ECONFIG;
  if (tp_channel_drain(rt, storage) != TP_OK) return TP_EIO;
  if (driver == NULL || channel == NULL) {
    rt->channels[storage] = NULL;
    return TP_OK;
  }
  s = rt->storages[storage];
  memset(channel, 0, sizeof *channel);
  channel->driver = driver;
  channel->storage = s;
  channel->io = *s;
  channel->io.read = io_read;
  channel->io.write = io_write;
  channel->io.erase = io_erase;
  channel->io.flush = io_flush;
  channel->io.ctx = channel;
  rt->channels[storage] = channel;
  return TP_OK;
}

tp_storage *tp_io_storage(tp_runtime *rt, uint32_t storage) {
  if (storage >= TP_MAX_STORAGES) return NULL;
  return rt->channels[storage] != NULL ? &rt->channels[storage]->io : rt->storages[storage];
}

static int do_compact(tp_runtime *rt, const tp_action *a) {
  uint8_t *base = rt->arena + a->arena_offset;
  uint32_t o;
  /* Destination never passes its source (chunk_len <= stride): move front to back. */
  for (o = 0; o < a->gather.outer; o++)
    memmove(base + o * a->gather.chunk_len, base + o * a->gather.stride + a->gather.chunk_off,
            a->gather.chunk_len);
  return TP_OK;
}

int tp_stream_open(tp_stream_state *st, const tp_action *a, uint8_t *line,
                   tp_storage *storage, const tp_spill_record *rec) {
  int rc;
  /* The ring holds line_rows full rows, or the whole part when it is that short. */
  int fits = a->line_rows * a->row_bytes <= a->line_bytes ||
             (a->line_rows >= a->rows && a->nbytes <= a->line_bytes);
  if (a->line_rows == 0 || a->row_bytes == 0 || !fits || !rec->valid) return TP_EPLAN;
  rc = tp_reader_begin(&st->reader, storage, a->address, rec, 0);
  st->action = a;
  st->line = line;
  st->next_row = 0;
  st->open = rc == TP_OK;
  return rc;
}

int tp_before_op(tp_runtime *rt, uint32_t step) {
  const tp_plan *plan = rt->plan;
  uint32_t i;
  if (rt->error != TP_OK) return rt->error;
  if (step >= plan->num_steps) return rt->error = TP_EPLAN;
  for (i = plan->phase_start[2 * step]; i < plan->phase_start[2 * step + 1]; i++) {
    const tp_action *a = &plan->actions[i];
    int rc = TP_EPLAN;
    if (a->kind == TP_FETCH || a->kind == TP_FETCH_ASYNC)
      rc = tp_fetch_start(rt, a, rt->arena + a->arena_offset, &plan->records[a->record]);
    else if (a->kind == TP_WAIT_FETCH)
      rc = tp_transfer_wait(rt, TP_FETCH, a->storage, a->address);
    else if (a->kind == TP_STREAM)
      rc = tp_stream_open(&plan->streams[a->stream], a, rt->arena + a->arena_offset,
                          tp_io_storage(rt, a->storage), &plan->records[a->record]);
    if (rc != TP_OK) return rt->error = rc;
  }
  return TP_OK;
}

int tp_after_op(tp_runtime *rt, uint32_t step) {
  const tp_plan *plan = rt->plan;
  uint32_t i;
  if (rt->error != TP_OK) return rt->error;
  if (step >= plan->num_steps) return rt->error = TP_EPLAN;
  for (i = plan->phase_start[2 * step]; i < plan->phase_start[2 * step + 1]; i++) {
    const tp_action *a = &plan->actions[i];
    if (a->kind == TP_STREAM) plan->streams[a->stream].open = 0;
  }
  for (i = plan->phase_start[2 * step + 1]; i < plan->phase_start[2 * step + 2]; i++) {
    const tp_action *a = &plan->actions[i];
    int rc = TP_EPLAN;
    if (a->kind == TP_SPILL || a->kind == TP_SPILL_ASYNC)
      rc = tp_spill_start(rt, a, rt->arena + a->arena_offset, &plan->records[a->record]);
    else if (a->kind == TP_WAIT_SPILL)
      rc = tp_transfer_wait(rt, TP_SPILL, a->storage, a->address);
    else if (a->kind == TP_COMPACT) rc = do_compact(rt, a);
    if (rc != TP_OK) return rt->error = rc;
  }
  return TP_OK;
}

const tp_segment *tp_segment_at(const tp_plan *plan, uint32_t tensor, int32_t part,
                                uint32_t step) {
  const tp_tensor *t;
  uint32_t i;
  if (tensor >= plan->num_tensors) return NULL;
  t = &plan->tensors[tensor];
  for (i = t->first_segment; i < t->first_segment + t->num_segments; i++) {
    const tp_segment *s = &plan->segments[i];
    if (s->part == part && s->role == TP_ROLE_TENSOR && s->first <= step && step <= s->last)
      return s;
  }
  return NULL;
}

static const tp_segment *first_segment(const tp_plan *plan, uint32_t tensor, int32_t part) {
  const tp_tensor *t = &plan->tensors[tensor];
  const tp_segment *best = NULL;
  uint32_t i;
  for (i = t->first_segment; i < t->first_segment + t->num_segments; i++) {
    const tp_segment *s = &plan->segments[i];
    if (s->part == part && s->role == TP_ROLE_TENSOR && (best == NULL || s->first < best->first))
      best = s;
  }
  return best;
}

int tp_interleaved_at(const tp_plan *plan, uint32_t tensor, uint32_t step) {
  const tp_segment *k, *s;
  if (tensor >= plan->num_tensors || plan->tensors[tensor].split == 0) return 0;
  k = first_segment(plan, tensor, 0);
  s = first_segment(plan, tensor, 1);
  return k != NULL && s != NULL && k->first <= step && step <= k->last && s->first <= step &&
         step <= s->last;
}

tp_stream_state *tp_stream_at(tp_runtime *rt, uint32_t tensor, int32_t part, uint32_t step) {
  const tp_plan *plan = rt->plan;
  uint32_t i;
  if (step >= plan->num_steps) return NULL;
  for (i = plan->phase_start[2 * step]; i < plan->phase_start[2 * step + 1]; i++) {
    const tp_action *a = &plan->actions[i];
    if (a->kind == TP_STREAM && a->tensor == tensor && a->part == part &&
        plan->streams[a->stream].open)
      return &plan->streams[a->stream];
  }
  return NULL;
}

int tp_stream_row(tp_stream_state *st, uint32_t row, const uint8_t **out) {
  const tp_action *a = st->action;
  uint8_t *line = st->line;
  if (!st->open || row >= a->rows) return TP_EPLAN;
  if (row + a->line_rows < st->next_row) return TP_EPLAN; /* already left the line buffer */
  while (st->next_row <= row) {
    uint32_t start = st->next_row * a->row_bytes;
    uint32_t len = a->nbytes - start < a->row_bytes ? a->nbytes - start : a->row_bytes;
    /* Rows below the window that is asked for now are never needed: skip them. */
    uint8_t *dst = st->next_row + a->line_rows > row
                       ? line + (st->next_row % a->line_rows) * a->row_bytes : NULL;
    int rc = tp_reader_get(&st->reader, dst, len);
    if (rc != TP_OK) return rc;
    st->next_row++;
  }
  *out = line + (row % a->line_rows) * a->row_bytes;
  return TP_OK;
}

int tp_input_slices(tp_runtime *rt, uint32_t tensor, uint32_t step, tp_slice *out, int max) {
  const tp_plan *plan = rt->plan;
  const tp_tensor *t;
  int n = 0;
  int32_t part, first, last;
  if (tensor >= plan->num_tensors) return TP_EPLAN;
  t = &plan->tensors[tensor];
  if (t->split == 0) {
    first = last = -1;
  } else if (tp_interleaved_at(plan, tensor, step)) {
    const tp_segment *k = first_segment(plan, tensor, 0);
    if (max < 1) return TP_EPLAN;
    out[0].channels = t->channels;
    out[0].data = (const int8_t *)(rt->arena + k->offset);
    out[0].pixel_stride = t->channels;
    out[0].stream = NULL;
    return 1;
  } else {
    first = 0;
    last = 1;
  }
  for (part = first; part <= last; part++) {
    const tp_segment *seg = tp_segment_at(plan, tensor, part, step);
    uint32_t c = part < 0 ? t->channels : part == 0 ? t->split : t->channels - t->split;
    if (n >= max) return TP_EPLAN;
    out[n].channels = c;
    out[n].pixel_stride = c;
    out[n].data = seg != NULL ? (const int8_t *)(rt->arena + seg->offset) : NULL;
    out[n].stream = seg != NULL ? NULL : tp_stream_at(rt, tensor, part, step);
    if (seg == NULL && out[n].stream == NULL) return TP_EPLAN;
    n++;
  }
  return n;
}

int tp_slice_row(tp_runtime *rt, const tp_slice *s, uint32_t width, uint32_t y,
                 const int8_t **row, uint32_t *pixel_stride) {
  *pixel_stride = s->pixel_stride;
  if (s->stream == NULL) {
    *row = s->data + (uint32_t)(y * width * s->pixel_stride);
    return TP_OK;
  }
  {
    const uint8_t *p = NULL;
    int rc = tp_stream_row(s->stream, y, &p);
    (void)rt;
    *row = (const int8_t *)p;
    return rc;
  }
}
