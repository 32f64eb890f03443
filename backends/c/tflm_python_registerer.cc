// Host-only glue that lets the tflite-micro Python wheel run a rewritten .tflite:
//
//   * `TinyPlanRegisterer`, the custom-op registerer the wheel looks up by name
//     (`Interpreter.from_bytes(..., custom_op_registerers=["TinyPlanRegisterer"])`
//     calls `bool NAME(tflite::PythonOpsResolver*)` found with dlsym), adding every op
//     of tflm_ops.cc with the same `AddCustom` calls an application makes
//     (docs/c_runtime.md);
//   * `tp_py_*`, plain C functions called through ctypes before an Invoke to set up the
//     storages the Spill/Fetch ops use: RAM, a host file, or NOR flash emulated on a RAM
//     image (programming ANDs bits, so a missing erase corrupts data), and optionally an
//     asynchronous channel per storage (tp_async.h: the blocking driver, or a host worker
//     thread that moves data as early or as late as the windows allow).
//
// Built by backends/tflm/custom.py against a TFLM tree the user names; it uses malloc,
// which is fine on the host and is why this file is not part of the device runtime.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "python/tflite_micro/python_ops_resolver.h"

extern "C" {
#include "tp_async.h"
#include "tp_runtime.h"
#include "tp_storage.h"
#include "tp_stream_tcp.h"
int tp_tflm_set_storages(tp_storage* const* storages, uint32_t count, uint32_t compress_mask);
int tp_tflm_set_channel(uint32_t id, tp_channel* channel, tp_async* driver);
uint32_t tp_tflm_async_started(void);
}

namespace tinyplan {
TFLMRegistration* Register_SPILL();
TFLMRegistration* Register_FETCH();
TFLMRegistration* Register_FUSED_CONCAT();
TFLMRegistration* Register_FUSED_CONCAT_CONV2D();
TFLMRegistration* Register_TRANSPOSE_CONV_ROWS();
TFLMRegistration* Register_SPLIT();
TFLMRegistration* Register_STREAMED_GROUP();
TFLMRegistration* Register_WAIT();
}  // namespace tinyplan

namespace {

// The registrations of tflm_ops.cc, in the order docs/c_runtime.md lists them.
struct Op {
  const char* name;
  TFLMRegistration* (*registration)();
};
const Op kOps[] = {
    {"Spill", tinyplan::Register_SPILL},
    {"Fetch", tinyplan::Register_FETCH},
    {"FusedConcat", tinyplan::Register_FUSED_CONCAT},
    {"FusedConcatConv2D", tinyplan::Register_FUSED_CONCAT_CONV2D},
    {"TinyPlanTransposeConv", tinyplan::Register_TRANSPOSE_CONV_ROWS},
    {"TinyPlanSplit", tinyplan::Register_SPLIT},
    {"TinyPlanStreamedGroup", tinyplan::Register_STREAMED_GROUP},
    {"TinyPlanWait", tinyplan::Register_WAIT},
};

enum { kRam = 0, kFile = 1, kFlash = 2, kRemote = 3 };

struct HostStorage {
  int kind;
  tp_storage storage;
  uint8_t* image;  // RAM and flash
  tp_file_storage file;
  tp_flash_ram ram;
  tp_flash_storage flash;
  char host[64];  // the TCP stream keeps a pointer to it
  tp_tcp_stream tcp;
  tp_remote_storage remote;
};

HostStorage g_host[TP_MAX_STORAGES];
uint32_t g_count = 0;

// Asynchronous channels, one per storage, while tp_py_set_async has set them.
tp_async g_drivers[TP_MAX_STORAGES];
tp_channel g_channels[TP_MAX_STORAGES];
#if defined(TP_ASYNC_HAVE_THREADS)
tp_async_thread g_threads[TP_MAX_STORAGES];
#endif
uint32_t g_threads_open = 0;
int g_async_mode = -1;

void CloseChannels() {
  for (uint32_t i = 0; i < TP_MAX_STORAGES; ++i) tp_tflm_set_channel(i, nullptr, nullptr);
#if defined(TP_ASYNC_HAVE_THREADS)
  for (uint32_t i = 0; i < g_threads_open; ++i) tp_async_thread_close(&g_drivers[i]);
#endif
  g_threads_open = 0;
  g_async_mode = -1;
}

int RamRead(tp_storage* s, uint32_t address, uint8_t* dst, uint32_t n) {
  if (address > s->capacity || n > s->capacity - address) return TP_ERANGE;
  memcpy(dst, static_cast<HostStorage*>(s->ctx)->image + address, n);
  return TP_OK;
}

int RamWrite(tp_storage* s, uint32_t address, const uint8_t* src, uint32_t n) {
  if (address > s->capacity || n > s->capacity - address) return TP_ERANGE;
  memcpy(static_cast<HostStorage*>(s->ctx)->image + address, src, n);
  return TP_OK;
}

int RamErase(tp_storage*, uint32_t, uint32_t) { return TP_OK; }
int RamFlush(tp_storage*) { return TP_OK; }

void Release(HostStorage& h) {
  if (h.kind == kFile && h.file.file != nullptr) tp_file_storage_close(&h.storage);
  if (h.kind == kRemote) tp_tcp_stream_close(&h.tcp);
  free(h.image);
  memset(&h, 0, sizeof h);
}

}  // namespace

extern "C" {

// The registerer the wheel calls; false (the wheel then refuses the model) on any failure.
bool TinyPlanRegisterer(tflite::PythonOpsResolver* resolver) {
  for (const Op& op : kOps)
    if (resolver->AddCustom(op.name, op.registration()) != kTfLiteOk) return false;
  return true;
}

// The custom-op names TinyPlanRegisterer adds, comma-separated (what a model may use).
const char* tp_py_registered_ops(void) {
  static char names[256];
  names[0] = '\0';
  for (const Op& op : kOps) {
    if (names[0] != '\0') strncat(names, ",", sizeof names - strlen(names) - 1);
    strncat(names, op.name, sizeof names - strlen(names) - 1);
  }
  return names;
}

// Drops every storage (closing files, freeing images).
void tp_py_reset(void) {
  CloseChannels();
  for (uint32_t i = 0; i < g_count; ++i) Release(g_host[i]);
  g_count = 0;
  tp_tflm_set_storages(nullptr, 0, 0);
}

// Appends storage id g_count: kind 0 RAM, 1 file at `path` (created or truncated),
// 2 NOR flash emulated on RAM (starts erased, 0xFF), 3 a storage host (docs/
// remote_protocol.md) at `path` = "IPv4:PORT" over TCP. Returns the id or a TP_E* code.
int tp_py_add_storage(int kind, const char* path, uint32_t capacity, uint32_t erase_block,
                      uint32_t granule) {
  if (g_count == TP_MAX_STORAGES || capacity == 0) return TP_ECONFIG;
  HostStorage& h = g_host[g_count];
  memset(&h, 0, sizeof h);
  h.kind = kind;
  int rc = TP_OK;
  if (kind == kRam) {
    h.image = static_cast<uint8_t*>(calloc(capacity, 1));
    if (h.image == nullptr) return TP_EIO;
    h.storage.read = RamRead;
    h.storage.write = RamWrite;
    h.storage.erase = RamErase;
    h.storage.flush = RamFlush;
    h.storage.capacity = capacity;
    h.storage.erase_block = 1;
    h.storage.ctx = &h;
  } else if (kind == kFile) {
    if (path == nullptr) return TP_ECONFIG;
    FILE* f = fopen(path, "w+b");  // a fresh file: earlier contents must not leak in
    if (f == nullptr) return TP_EIO;
    fclose(f);
    rc = tp_file_storage_open(&h.storage, &h.file, path, capacity);
  } else if (kind == kFlash) {
    if (erase_block == 0 || granule == 0 || granule > TP_FLASH_MAX_GRANULE) return TP_ECONFIG;
    const uint32_t size = (capacity + erase_block - 1) / erase_block * erase_block;
    h.image = static_cast<uint8_t*>(malloc(size));
    if (h.image == nullptr) return TP_EIO;
    tp_flash_hal hal;
    tp_flash_ram_hal(&hal, &h.ram, h.image, size, erase_block, granule);
    rc = tp_flash_storage_init(&h.storage, &h.flash, &hal);
  } else if (kind == kRemote) {
    const char* colon = path != nullptr ? strrchr(path, ':') : nullptr;
    if (colon == nullptr || static_cast<size_t>(colon - path) >= sizeof h.host) return TP_ECONFIG;
    memcpy(h.host, path, colon - path);
    h.host[colon - path] = '\0';
    const long port = strtol(colon + 1, nullptr, 10);
    if (port <= 0 || port > 65535) return TP_ECONFIG;
    tp_byte_stream io;
    h.tcp.fd = -1;
    rc = tp_tcp_stream_open(&io, &h.tcp, h.host, static_cast<uint16_t>(port));
    if (rc == TP_OK) rc = tp_remote_storage_init(&h.storage, &h.remote, &io, capacity, 3, 2000);
  } else {
    return TP_ECONFIG;
  }
  if (rc != TP_OK) {
    Release(h);
    return rc;
  }
  return static_cast<int>(g_count++);
}

// Hands the storages added so far to the ops (ids in order) and starts a new session.
int tp_py_apply(uint32_t compress_mask) {
  tp_storage* list[TP_MAX_STORAGES];
  for (uint32_t i = 0; i < g_count; ++i) list[i] = &g_host[i].storage;
  return tp_tflm_set_storages(list, g_count, compress_mask);
}

// Asynchronous channels for every storage applied so far: mode -1 none (blocking calls),
// 0 the blocking driver, 1 a worker thread per storage moving data as soon as it can,
// 2 one moving it at the end of each window (tp_async.h). Call after tp_py_apply.
int tp_py_set_async(int mode) {
  CloseChannels();
  if (mode < 0) return TP_OK;
  for (uint32_t i = 0; i < g_count; ++i) {
    int rc = TP_OK;
    if (mode == 0) {
      tp_async_blocking(&g_drivers[i]);
    } else {
#if defined(TP_ASYNC_HAVE_THREADS)
      rc = tp_async_thread_open(&g_drivers[i], &g_threads[i],
                                mode == 2 ? TP_ASYNC_LATEST : TP_ASYNC_EAGER);
      if (rc == TP_OK) g_threads_open = i + 1;
#else
      rc = TP_ECONFIG;
#endif
    }
    if (rc == TP_OK) rc = tp_tflm_set_channel(i, &g_channels[i], &g_drivers[i]);
    if (rc != TP_OK) {
      CloseChannels();
      return rc;
    }
  }
  g_async_mode = mode;
  return TP_OK;
}

// Spills and fetches started with a window, and transfers run on a worker thread, so far.
int64_t tp_py_async_started(void) { return tp_tflm_async_started(); }

int64_t tp_py_async_on_worker(void) {
  int64_t n = 0;
  for (uint32_t i = 0; i < g_count && g_async_mode >= 0; ++i) n += g_drivers[i].on_worker;
  return n;
}

// Flash blocks erased so far on storage `id` (-1 if it is not a flash storage).
int64_t tp_py_flash_erases(uint32_t id) {
  if (id >= g_count || g_host[id].kind != kFlash) return -1;
  return g_host[id].flash.erases;
}

}  // extern "C"
