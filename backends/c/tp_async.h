/* Asynchronous transfers over the storage drivers: start / poll / wait per handle.
 *
 * A tp_async is one storage *channel*: it carries one transfer at a time, in the order
 * they were started (FIFO), as the latency model assumes (planner/latency.py). A transfer
 * is a tp_transfer the caller owns (no dynamic allocation): a raw read or write of one
 * storage, or a job (any function, e.g. a spill that gathers and compresses as it writes).
 *
 * Drivers:
 *   - tp_async_blocking: the fallback for every target. start runs the transfer to the
 *     end, poll says done, wait returns its result. A plan's windows then cost nothing
 *     and change nothing: the data moves at the issue step.
 *   - tp_async_thread (hosts with POSIX threads; TP_ASYNC_HAVE_THREADS): one worker thread
 *     per channel runs the queued transfers. Mode TP_ASYNC_EAGER starts each as soon as
 *     the channel is free (what a DMA engine does); TP_ASYNC_LATEST holds each until it is
 *     waited for (or a later one is), so the data moves at the *end* of its window: a
 *     spill then reads its source at its completion and a fetch fills its destination at
 *     its completion, the worst case a plan's windows must survive.
 *
 * A handle's buffer belongs to the transfer from start until wait returns.
 * tp_row_stream reads rows of a raw spill double-buffered: row k+1 is in flight while the
 * caller uses row k.
 */
#ifndef TP_ASYNC_H
#define TP_ASYNC_H

#include "tp_storage.h"

#if (defined(__unix__) || defined(__APPLE__)) && !defined(TP_NO_THREADS)
#define TP_ASYNC_HAVE_THREADS 1
#include <pthread.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum { TP_XFER_READ = 0, TP_XFER_WRITE = 1, TP_XFER_JOB = 2 };
enum { TP_XFER_IDLE = 0, TP_XFER_QUEUED = 1, TP_XFER_DONE = 2 };

typedef struct tp_transfer tp_transfer;
struct tp_transfer {
  int kind;             /* TP_XFER_* */
  tp_storage *storage;  /* read / write */
  uint32_t address;
  uint8_t *buf;         /* read: destination; write: source (not modified) */
  uint32_t n;
  int (*job)(void *arg); /* TP_XFER_JOB */
  void *arg;
  int state;            /* TP_XFER_*; the driver's to change (under its lock) */
  int rc;               /* result, valid once done */
  int released;         /* TP_ASYNC_LATEST: may run now */
  tp_transfer *next;    /* the driver's queue */
};

static inline void tp_xfer_read(tp_transfer *t, tp_storage *s, uint32_t address, uint8_t *dst,
                                uint32_t n) {
  t->kind = TP_XFER_READ;
  t->storage = s;
  t->address = address;
  t->buf = dst;
  t->n = n;
  t->job = 0;
  t->arg = 0;
  t->state = TP_XFER_IDLE;
}

static inline void tp_xfer_write(tp_transfer *t, tp_storage *s, uint32_t address,
                                 const uint8_t *src, uint32_t n) {
  tp_xfer_read(t, s, address, (uint8_t *)src, n);
  t->kind = TP_XFER_WRITE;
}

static inline void tp_xfer_job(tp_transfer *t, int (*job)(void *arg), void *arg) {
  tp_xfer_read(t, 0, 0, 0, 0);
  t->kind = TP_XFER_JOB;
  t->job = job;
  t->arg = arg;
}

/* Run a transfer to its end on the calling thread (what every driver does with it). */
int tp_xfer_run(tp_transfer *t);

typedef struct tp_async tp_async;
struct tp_async {
  int (*start)(tp_async *a, tp_transfer *t); /* TP_OK: queued (or, blocking, done) */
  int (*poll)(tp_async *a, tp_transfer *t);  /* 1 done, 0 in flight, < 0 not started */
  int (*wait)(tp_async *a, tp_transfer *t);  /* blocks until done: the transfer's result */
  void *ctx;
  uint32_t started;   /* diagnostics: transfers started */
  uint32_t on_worker; /* diagnostics: transfers that ran on another thread */
};

/* ---- blocking fallback: start does the transfer, wait returns its result ---------- */
void tp_async_blocking(tp_async *a);

#if defined(TP_ASYNC_HAVE_THREADS)
/* ---- host driver: one worker thread per channel (POSIX threads) -------------------- */
enum { TP_ASYNC_EAGER = 0, TP_ASYNC_LATEST = 1 };

typedef struct {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t work; /* queue changed, released or stop */
  pthread_cond_t done; /* a transfer finished */
  tp_transfer *head, *tail;
  int mode;
  int stop;
  int running;
  uint32_t ran; /* transfers the worker ran */
} tp_async_thread;

int tp_async_thread_open(tp_async *a, tp_async_thread *state, int mode);
/* Runs what is queued, then joins the worker. */
void tp_async_thread_close(tp_async *a);
#endif

/* ---- double-buffered row reads of a raw (uncompressed) spill ------------------------ */
typedef struct {
  tp_async *channel;
  tp_storage *storage;
  uint32_t address, nbytes, rows, row_bytes;
  uint8_t *buf[2];     /* two buffers of row_bytes each */
  tp_transfer xfer[2];
  uint32_t next;       /* the row the next tp_row_stream_next hands out */
  int pending[2];      /* xfer[i] started and not yet waited */
} tp_row_stream;

/* Starts reading row 0. rows >= 1; row_bytes = ceil(nbytes / rows). */
int tp_row_stream_open(tp_row_stream *s, tp_async *channel, tp_storage *storage,
                       uint32_t address, uint32_t nbytes, uint32_t rows, uint8_t *buf0,
                       uint8_t *buf1);
/* Waits for the next row, starts the one after it into the other buffer, and hands out
 * the row (valid until the next call) and its length. */
int tp_row_stream_next(tp_row_stream *s, const uint8_t **row, uint32_t *len);
/* Waits for a read still in flight (a stream closed before its last row). */
int tp_row_stream_close(tp_row_stream *s);

#ifdef __cplusplus
}
#endif

#endif /* TP_ASYNC_H */
