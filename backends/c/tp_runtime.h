/* tinyplan runtime: replays a checked plan's spill / fetch / stream schedule over an arena.
 *
 * The generated tinyplan_plan.c fills one tp_plan (all tables const except the per-spill
 * records and stream states, which are statically allocated there). Per inference:
 *
 *   tp_runtime_begin(&rt);
 *   for each op k (step s = k + 1):
 *     tp_before_op(&rt, s);   fetches into new segments, opens streams
 *     ... run the op (fused ops read streamed inputs with tp_stream_row / tp_input_slices)
 *     tp_after_op(&rt, s);    spills, then compaction of split tensors, closes streams
 *   tp_runtime_end(&rt);
 *
 * Step 0 (graph inputs) has tp_after_op(&rt, 0) only. No dynamic allocation; the only
 * memory outside the arena is tp_runtime itself (a histogram and two TP_IO_CHUNK staging
 * buffers) and one reader per concurrently open stream.
 */
#ifndef TP_RUNTIME_H
#define TP_RUNTIME_H

#include "tp_async.h"
#include "tp_compress.h"
#include "tp_storage.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TP_MAX_STORAGES 8

/* Asynchronous windows (planner/plan.py, Transfer.window): TP_SPILL_ASYNC is issued after
 * the op at `step` and completed by the TP_WAIT_SPILL of the same storage and address
 * after the op at its window's last step; TP_FETCH_ASYNC is issued before the op at its
 * window's first step and completed by the TP_WAIT_FETCH before the op at `step`. They
 * are new kinds, not new fields, so tp_action (which the TFLM ops keep per fused input)
 * does not grow. */
enum {
  TP_SPILL = 0,
  TP_FETCH = 1,
  TP_STREAM = 2,
  TP_COMPACT = 3,
  TP_WAIT_SPILL = 4,
  TP_WAIT_FETCH = 5,
  TP_SPILL_ASYNC = 6,
  TP_FETCH_ASYNC = 7
};
enum { TP_ROLE_TENSOR = 0, TP_ROLE_LINE = 1 };
/* Op roles: plain; concat streaming inputs; concat fused into its conv (never runs);
 * conv of a fused pair (reads the concat's inputs); channel concat not fused, which may
 * take both parts of a split tensor (resident) as inputs. */
enum {
  TP_OP_PLAIN = 0,
  TP_OP_STREAM_CONCAT = 1,
  TP_OP_FUSED_AWAY = 2,
  TP_OP_FUSED_CONV = 3,
  TP_OP_CHANNEL_CONCAT = 4
};

/* Bytes of the part's channels inside one repeat of the tensor: for NHWC a repeat is a
 * pixel, for NCHW the whole tensor. */
typedef struct {
  uint32_t outer;     /* repeats */
  uint32_t stride;    /* bytes between repeats in the arena */
  uint32_t chunk_off; /* offset of the part's bytes inside a repeat */
  uint32_t chunk_len; /* the part's bytes per repeat */
} tp_gather;

typedef struct {
  const char *name;
  uint32_t nbytes;
  uint32_t outer, inner;   /* channel geometry: repeats, bytes per channel per repeat */
  uint32_t channels;       /* 0 when the tensor has no channel axis */
  uint32_t split;          /* first channel of part 1; 0 when not split */
  uint32_t height, width;  /* NHWC spatial size of 4-D tensors, else 0 */
  uint32_t rows;           /* rows a stream moves: the height of 4-D tensors, else 1 */
  uint32_t first_segment, num_segments;
} tp_tensor;

typedef struct {
  uint32_t tensor;
  int32_t part;  /* -1 whole tensor */
  uint32_t role; /* TP_ROLE_* */
  uint32_t first, last;
  uint32_t offset, size;
} tp_segment;

typedef struct {
  uint32_t kind;     /* TP_SPILL / TP_FETCH / TP_STREAM / TP_COMPACT */
  uint32_t step;
  uint32_t tensor;
  int32_t part;      /* -1 whole tensor */
  uint32_t storage;  /* index into tp_plan.storages */
  uint32_t record;   /* index into tp_plan.records (spill, fetch, stream) */
  uint32_t address;  /* storage byte position */
  uint32_t nbytes;   /* raw bytes of the tensor or part */
  uint32_t arena_offset; /* spill/compact: source base; fetch: destination; stream: line buffer */
  tp_gather gather;      /* spill source layout / compact move */
  uint32_t channel_start, channel_stop;
  uint32_t erase_start, erase_bytes; /* spill: flash blocks first touched by this spill */
  uint32_t rows, row_bytes;          /* stream: rows of the part and bytes per row */
  uint32_t line_rows, line_bytes;    /* stream: rows the line buffer holds, its size */
  uint32_t stream;                   /* stream: index into tp_plan.streams */
} tp_action;

typedef struct {
  const char *name;
  uint32_t capacity;
  uint32_t erase_block;
  uint32_t write_granularity;
  uint32_t compression;
} tp_storage_desc;

typedef struct {
  const char *type;
  uint32_t fused;   /* TP_OP_* */
  int32_t partner;  /* fused concat <-> conv op index, -1 */
  uint32_t io_start, num_inputs, num_outputs, num_scratch; /* into tp_plan.op_io */
} tp_op;

typedef struct {
  const tp_action *action;
  uint8_t *line; /* the line buffer: action->line_rows rows of action->row_bytes */
  tp_reader reader;
  uint32_t next_row;
  uint32_t open;
} tp_stream_state;

typedef struct {
  uint32_t arena_bytes;
  uint32_t num_steps;
  uint32_t num_tensors;
  const tp_tensor *tensors;
  uint32_t num_segments;
  const tp_segment *segments;
  uint32_t num_actions;
  const tp_action *actions;
  const uint32_t *phase_start; /* 2 * num_steps + 1 entries: step s before = 2s, after = 2s+1 */
  uint32_t num_storages;
  const tp_storage_desc *storages;
  uint32_t num_records;
  tp_spill_record *records;
  uint32_t num_streams;
  tp_stream_state *streams;
  uint32_t num_ops;
  const tp_op *ops;
  const int32_t *op_io; /* per op: inputs (-1 omitted), outputs, scratch tensor ids */
} tp_plan;

/* Asynchronous transfers (tp_async.h): a storage given a channel moves all its data
 * through the channel's driver, one transfer at a time in start order, so the storage
 * is only ever touched by one thread. A spill or fetch whose window is longer than one
 * step is started at its issue and waited where its TP_WAIT says; every other transfer
 * on that storage is started and waited at once (streams read through `io`). */
#ifndef TP_MAX_INFLIGHT
#define TP_MAX_INFLIGHT 8 /* transfers in flight per channel */
#endif

struct tp_runtime;
struct tp_channel;

typedef struct {
  tp_transfer xfer;
  tp_action action; /* a copy: the TFLM ops build theirs on the stack */
  struct tp_runtime *rt;
  struct tp_channel *channel;
  const uint8_t *src; /* spill source base */
  uint8_t *dst;       /* fetch destination */
  tp_spill_record *rec;
  int spill; /* 1 spill, 0 fetch */
  int busy;
} tp_inflight;

typedef struct tp_channel {
  tp_async *driver;
  tp_storage *storage; /* the driver's own */
  tp_storage io;       /* the storage as the main thread sees it: every call via driver */
  tp_writer writer;    /* used by one transfer at a time (the channel's) */
  tp_reader reader;
  uint32_t hist[256];
  tp_inflight slots[TP_MAX_INFLIGHT];
  uint32_t serial, order[TP_MAX_INFLIGHT]; /* start order of the slots */
} tp_channel;

typedef struct tp_runtime {
  const tp_plan *plan;
  uint8_t *arena;
  tp_storage *storages[TP_MAX_STORAGES];
  tp_channel *channels[TP_MAX_STORAGES]; /* NULL: blocking, on the calling thread */
  uint32_t compress_mask; /* bit i: compress spills to storage i (from the plan; may be changed) */
  int error;
  uint32_t spilled_raw, spilled_stored, fetched_raw;
  uint32_t hist[256];
  tp_writer writer;
  tp_reader reader;
  uint32_t async_started; /* transfers started with a window longer than one step */
} tp_runtime;

int tp_runtime_init(tp_runtime *rt, const tp_plan *plan, uint8_t *arena, uint32_t arena_bytes,
                    tp_storage *const *storages);
int tp_runtime_begin(tp_runtime *rt);
int tp_before_op(tp_runtime *rt, uint32_t step);
int tp_after_op(tp_runtime *rt, uint32_t step);
int tp_runtime_end(tp_runtime *rt);

/* Route storage `storage` through `driver` (tp_async_blocking or a host thread). The
 * channel is the caller's (no dynamic allocation); NULL driver: blocking again. */
int tp_runtime_set_channel(tp_runtime *rt, uint32_t storage, tp_channel *channel,
                           tp_async *driver);
/* The storage as the calling thread must use it (the channel's proxy, or the storage). */
tp_storage *tp_io_storage(tp_runtime *rt, uint32_t storage);
/* Start a spill / fetch (kind TP_SPILL_ASYNC / TP_FETCH_ASYNC: in flight until
 * tp_transfer_wait; otherwise, or without a channel, done on return). base / dst / rec
 * must stay until the wait. */
int tp_spill_start(tp_runtime *rt, const tp_action *a, const uint8_t *base,
                   tp_spill_record *rec);
int tp_fetch_start(tp_runtime *rt, const tp_action *a, uint8_t *dst, tp_spill_record *rec);
/* Complete the in-flight spill (kind TP_SPILL) or fetch (TP_FETCH) at (storage, address);
 * TP_OK when none is in flight (blocking storages finish at start). */
int tp_transfer_wait(tp_runtime *rt, uint32_t kind, uint32_t storage, uint32_t address);
/* Complete everything in flight on a storage (every storage: TP_MAX_STORAGES). */
int tp_channel_drain(tp_runtime *rt, uint32_t storage);

/* The tensor (part) segment resident at `step`, or NULL. part -1: whole tensor. */
const tp_segment *tp_segment_at(const tp_plan *plan, uint32_t tensor, int32_t part,
                                uint32_t step);
/* Whether both parts of a split tensor still sit interleaved (producer layout) at step. */
int tp_interleaved_at(const tp_plan *plan, uint32_t tensor, uint32_t step);
/* The open stream of (tensor, part) at `step`, or NULL. */
tp_stream_state *tp_stream_at(tp_runtime *rt, uint32_t tensor, int32_t part, uint32_t step);
/* Row `row` of a streamed part, read through the line buffer. Rows must be asked in
 * non-decreasing order of their window start; the last line_rows rows stay available. */
int tp_stream_row(tp_stream_state *st, uint32_t row, const uint8_t **out);

/* The transfers themselves, for callers that own the memory (TFLM kernels):
 * spill a->nbytes gathered from `base` by a->gather, fetch into `dst`, open a stream
 * whose line buffer is `line`. tp_before_op / tp_after_op use these on the arena. */
int tp_spill_data(tp_runtime *rt, const tp_action *a, const uint8_t *base,
                  tp_spill_record *rec);
int tp_fetch_data(tp_runtime *rt, const tp_action *a, uint8_t *dst, const tp_spill_record *rec);
int tp_stream_open(tp_stream_state *st, const tp_action *a, uint8_t *line, tp_storage *storage,
                   const tp_spill_record *rec);

/* One channel slice of a virtual concatenation (int8 NHWC): resident or streamed. */
typedef struct {
  uint32_t channels;
  const int8_t *data;     /* resident: row 0, pixel 0, first channel of the slice */
  uint32_t pixel_stride;  /* resident: bytes between pixels */
  tp_stream_state *stream; /* streamed: rows come through the line buffer */
} tp_slice;

/* Slices of concat input `tensor` at `step`: 1 or 2 (split tensor), or a negative error. */
int tp_input_slices(tp_runtime *rt, uint32_t tensor, uint32_t step, tp_slice *out, int max);
/* Row `y` of a slice: pointer to pixel 0's first channel and the pixel stride. */
int tp_slice_row(tp_runtime *rt, const tp_slice *s, uint32_t width, uint32_t y,
                 const int8_t **row, uint32_t *pixel_stride);

#ifdef __cplusplus
}
#endif

#endif /* TP_RUNTIME_H */
