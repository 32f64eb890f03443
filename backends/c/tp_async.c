/* Asynchronous transfer drivers: the blocking fallback, the host worker thread, and
 * double-buffered row reads on top of either. */
#if defined(__unix__) || defined(__APPLE__)
#define _POSIX_C_SOURCE 200112L
#endif
#include "tp_async.h"

#include <string.h>

int tp_xfer_run(tp_transfer *t) {
  switch (t->kind) {
    case TP_XFER_READ: return t->storage->read(t->storage, t->address, t->buf, t->n);
    case TP_XFER_WRITE: return t->storage->write(t->storage, t->address, t->buf, t->n);
    case TP_XFER_JOB: return t->job(t->arg);
    default: return TP_ECONFIG;
  }
}

/* ---- blocking fallback ------------------------------------------------------------- */
static int blocking_start(tp_async *a, tp_transfer *t) {
  a->started++;
  t->rc = tp_xfer_run(t);
  t->state = TP_XFER_DONE;
  return TP_OK;
}

static int blocking_poll(tp_async *a, tp_transfer *t) {
  (void)a;
  return t->state == TP_XFER_DONE ? 1 : -1;
}

static int blocking_wait(tp_async *a, tp_transfer *t) {
  (void)a;
  return t->state == TP_XFER_DONE ? t->rc : TP_EPLAN;
}

void tp_async_blocking(tp_async *a) {
  memset(a, 0, sizeof *a);
  a->start = blocking_start;
  a->poll = blocking_poll;
  a->wait = blocking_wait;
}

/* ---- host worker thread -------------------------------------------------------------- */
#if defined(TP_ASYNC_HAVE_THREADS)
static void *worker(void *arg) {
  tp_async_thread *w = (tp_async_thread *)arg;
  pthread_mutex_lock(&w->lock);
  for (;;) {
    tp_transfer *t;
    int rc;
    while (!w->stop && (w->head == NULL || (w->mode == TP_ASYNC_LATEST && !w->head->released)))
      pthread_cond_wait(&w->work, &w->lock);
    if (w->head == NULL) break; /* stop, nothing left */
    t = w->head;
    w->head = t->next;
    if (w->head == NULL) w->tail = NULL;
    /* Storage calls run unlocked: the main thread may start more or poll meanwhile. */
    pthread_mutex_unlock(&w->lock);
    rc = tp_xfer_run(t);
    pthread_mutex_lock(&w->lock);
    t->rc = rc;
    t->state = TP_XFER_DONE;
    w->ran++;
    pthread_cond_broadcast(&w->done);
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static int thread_start(tp_async *a, tp_transfer *t) {
  tp_async_thread *w = (tp_async_thread *)a->ctx;
  pthread_mutex_lock(&w->lock);
  if (!w->running || w->stop) {
    pthread_mutex_unlock(&w->lock);
    return TP_ECONFIG;
  }
  t->state = TP_XFER_QUEUED;
  t->released = 0;
  t->next = NULL;
  if (w->tail != NULL) w->tail->next = t;
  else w->head = t;
  w->tail = t;
  a->started++;
  a->on_worker++;
  pthread_cond_signal(&w->work);
  pthread_mutex_unlock(&w->lock);
  return TP_OK;
}

static int thread_poll(tp_async *a, tp_transfer *t) {
  tp_async_thread *w = (tp_async_thread *)a->ctx;
  int state;
  pthread_mutex_lock(&w->lock);
  state = t->state;
  pthread_mutex_unlock(&w->lock);
  return state == TP_XFER_DONE ? 1 : state == TP_XFER_QUEUED ? 0 : -1;
}

/* Lets every queued transfer up to `t` (all of them when t is NULL) run: FIFO, so a
 * transfer waited for runs after the ones started before it. Called locked. */
static void release_through(tp_async_thread *w, const tp_transfer *t) {
  tp_transfer *q;
  for (q = w->head; q != NULL; q = q->next) {
    q->released = 1;
    if (q == t) break;
  }
  pthread_cond_signal(&w->work);
}

static int thread_wait(tp_async *a, tp_transfer *t) {
  tp_async_thread *w = (tp_async_thread *)a->ctx;
  int rc;
  pthread_mutex_lock(&w->lock);
  if (t->state == TP_XFER_IDLE) {
    pthread_mutex_unlock(&w->lock);
    return TP_EPLAN;
  }
  if (t->state == TP_XFER_QUEUED) release_through(w, t);
  while (t->state != TP_XFER_DONE) pthread_cond_wait(&w->done, &w->lock);
  rc = t->rc;
  pthread_mutex_unlock(&w->lock);
  return rc;
}

int tp_async_thread_open(tp_async *a, tp_async_thread *state, int mode) {
  memset(a, 0, sizeof *a);
  memset(state, 0, sizeof *state);
  state->mode = mode;
  if (pthread_mutex_init(&state->lock, NULL) != 0) return TP_EIO;
  if (pthread_cond_init(&state->work, NULL) != 0 || pthread_cond_init(&state->done, NULL) != 0)
    return TP_EIO;
  if (pthread_create(&state->thread, NULL, worker, state) != 0) return TP_EIO;
  state->running = 1;
  a->start = thread_start;
  a->poll = thread_poll;
  a->wait = thread_wait;
  a->ctx = state;
  return TP_OK;
}

void tp_async_thread_close(tp_async *a) {
  tp_async_thread *w = (tp_async_thread *)a->ctx;
  if (w == NULL || !w->running) return;
  pthread_mutex_lock(&w->lock);
  release_through(w, NULL);
  w->stop = 1;
  pthread_cond_broadcast(&w->work);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);
  w->running = 0;
  pthread_cond_destroy(&w->work);
  pthread_cond_destroy(&w->done);
  pthread_mutex_destroy(&w->lock);
}
#endif

/* ---- double-buffered row reads ------------------------------------------------------- */
static uint32_t row_len(const tp_row_stream *s, uint32_t row) {
  uint32_t start = row * s->row_bytes;
  if (start >= s->nbytes) return 0;
  return s->nbytes - start < s->row_bytes ? s->nbytes - start : s->row_bytes;
}

static int start_row(tp_row_stream *s, uint32_t row) {
  int i = (int)(row % 2u);
  tp_xfer_read(&s->xfer[i], s->storage, s->address + row * s->row_bytes, s->buf[i],
               row_len(s, row));
  s->pending[i] = 1;
  return s->channel->start(s->channel, &s->xfer[i]);
}

int tp_row_stream_open(tp_row_stream *s, tp_async *channel, tp_storage *storage,
                       uint32_t address, uint32_t nbytes, uint32_t rows, uint8_t *buf0,
                       uint8_t *buf1) {
  memset(s, 0, sizeof *s);
  if (rows == 0 || buf0 == NULL || buf1 == NULL || buf0 == buf1) return TP_ECONFIG;
  s->channel = channel;
  s->storage = storage;
  s->address = address;
  s->nbytes = nbytes;
  s->rows = rows;
  s->row_bytes = (nbytes + rows - 1) / rows;
  s->buf[0] = buf0;
  s->buf[1] = buf1;
  return start_row(s, 0);
}

int tp_row_stream_next(tp_row_stream *s, const uint8_t **row, uint32_t *len) {
  int i, rc;
  if (s->next >= s->rows) return TP_EPLAN;
  i = (int)(s->next % 2u);
  if (!s->pending[i]) return TP_EPLAN;
  rc = s->channel->wait(s->channel, &s->xfer[i]);
  s->pending[i] = 0;
  if (rc != TP_OK) return rc;
  /* The other buffer held the row before this one, which the caller has given back. */
  if (s->next + 1 < s->rows) {
    rc = start_row(s, s->next + 1);
    if (rc != TP_OK) return rc;
  }
  *row = s->buf[i];
  *len = row_len(s, s->next);
  s->next++;
  return TP_OK;
}

int tp_row_stream_close(tp_row_stream *s) {
  int i, rc = TP_OK;
  for (i = 0; i < 2; i++)
    if (s->pending[i]) {
      int r = s->channel->wait(s->channel, &s->xfer[i]);
      s->pending[i] = 0;
      if (rc == TP_OK) rc = r;
    }
  return rc;
}
