// TFLM custom-op registrations for a rewritten .tflite (backends/tflite/rewrite.py):
// Spill, Fetch, FusedConcat, FusedConcatConv2D, TinyPlanTransposeConv, TinyPlanSplit,
// TinyPlanStreamedGroup.
// Compiled only where the TFLM headers are on the include path; elsewhere this file is
// empty. No builtin is replaced: every op here is registered with AddCustom.
//
// Custom options are little-endian int32 blobs (docs/tflm_backend.md):
//   Spill / Fetch: [version, storage_id, address, nbytes, axis, channel_start,
//                   channel_stop, part[, async]]; async 1: issued here, completed by the
//                   TinyPlanWait of the same storage and address (asynchronous windows)
//   TinyPlanWait: [version, kind (0 spill, 1 fetch), storage_id, address]; input 0 the
//                   transfer's arena tensor (spill source / fetch destination), so TFLM
//                   holds it until here; no outputs
//   FusedConcat / FusedConcatConv2D: [version, axis, n_inputs, activation, padding,
//                   stride_h, stride_w, dilation_h, dilation_w] then per concat input
//                   [source (0 arena, 1 stream), storage_id, address, nbytes,
//                    channel_start, channel_stop, line_buffer_output, line_rows]
//   TinyPlanTransposeConv: [version, padding (0 SAME, 1 VALID), stride_h, stride_w,
//                   fused_activation]; inputs as the builtin TRANSPOSE_CONV
//                   (output_shape, filter, input[, bias]), output 0; int8 (int32 bias)
//                   or 16x8 (int16 activations, int64 bias).
//   TinyPlanSplit: [version, axis, keep_channels]; input 0 the interleaved tensor,
//                   output 0 part 0 (compacted in place), optional output 1 part 1
//                   (already spilled: never written).
//   TinyPlanStreamedGroup: [version, storage_id (-1 none)], then the tp_rows program
//                   (backends/c/group_program.py; its view table says which inputs stream
//                   and which outputs spill rows, at which addresses). Inputs: the
//                   group's inputs (-1 streamed); outputs: its outputs (a spill_rows
//                   output's slot holds its line buffer), one per ring, then the line
//                   buffers of the streamed inputs in view order.
// Streamed inputs are -1 in the op's inputs; line buffer k is output 1 + k.
//
// Before the first Invoke the application hands over its storages:
//   tp_tflm_set_storages(storages, count, compress_mask);
// and, for asynchronous windows, optionally a channel (tp_async.h driver) per storage:
//   tp_tflm_set_channel(storage_id, &channel, &driver);
// and registers the ops (the complete snippet is in docs/c_runtime.md).
#if defined(__has_include)
#if __has_include("tensorflow/lite/micro/micro_common.h") && \
    __has_include("tensorflow/lite/micro/kernels/kernel_util.h")
#define TP_HAVE_TFLM 1
#endif
#endif

#if defined(TP_HAVE_TFLM)
#include <string.h>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/kernels/internal/quantization_util.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_common.h"
#include "tensorflow/lite/micro/micro_context.h"

extern "C" {
#include "tp_kernels.h"
#include "tp_rows.h"
#include "tp_runtime.h"
}

#ifndef TP_TFLM_MAX_SPILLS
#define TP_TFLM_MAX_SPILLS 32
#endif
#ifndef TP_TFLM_MAX_INPUTS
#define TP_TFLM_MAX_INPUTS 8
#endif
#ifndef TP_TFLM_GROUP_READERS
#define TP_TFLM_GROUP_READERS 2
#endif
#ifndef TP_TFLM_MAX_GROUP_VIEWS
#define TP_TFLM_MAX_GROUP_VIEWS 64
#endif

namespace tinyplan {
namespace {

constexpr int kTransferFields = 8;
// The optional 9th option word (async) is kept as bit 8 of the stored version word, so a
// Spill's or Fetch's persistent data stays 32 B (tail predicted by backends/tflite/tail.py).
constexpr int32_t kAsyncBit = 0x100;
constexpr int kFusedHeader = 9;
constexpr int kFusedInputFields = 8;

// One runtime for every op: the storages, staging buffers and the spill records,
// which are keyed by (storage, address) since the options carry no record index.
tp_runtime g_rt;
tp_spill_record g_records[TP_TFLM_MAX_SPILLS];
int32_t g_record_keys[TP_TFLM_MAX_SPILLS][2];
int g_num_records = 0;

// Flash erase bookkeeping. Every Spill erases the erase blocks it programs, except the
// blocks an earlier Spill of the same inference already erased (they may hold that
// spill's data). An inference starts when a Spill's record was already written in the
// current generation: each tensor (part) is spilled at most once per inference.
uint32_t g_generation = 1;
uint32_t g_record_generation[TP_TFLM_MAX_SPILLS];
uint32_t g_erased[TP_TFLM_MAX_SPILLS][3];  // storage, first byte, end (block aligned)
int g_num_erased = 0;

int RecordIndex(int32_t storage, int32_t address, bool create) {
  for (int i = 0; i < g_num_records; ++i)
    if (g_record_keys[i][0] == storage && g_record_keys[i][1] == address) return i;
  if (!create || g_num_records == TP_TFLM_MAX_SPILLS) return -1;
  g_record_keys[g_num_records][0] = storage;
  g_record_keys[g_num_records][1] = address;
  g_record_generation[g_num_records] = 0;
  g_records[g_num_records].valid = 0;
  return g_num_records++;
}

tp_spill_record* Record(int32_t storage, int32_t address, bool create) {
  const int i = RecordIndex(storage, address, create);
  return i < 0 ? nullptr : &g_records[i];
}

bool ErasedThisInference(uint32_t storage, uint32_t block) {
  for (int i = 0; i < g_num_erased; ++i)
    if (g_erased[i][0] == storage && g_erased[i][1] <= block && block < g_erased[i][2])
      return true;
  return false;
}

// Erase the blocks of [address, address + n) on `storage` not yet erased in this
// inference. Storages whose erase block is 1 (file, remote, RAM) need no erase.
int EraseForSpill(uint32_t storage, uint32_t address, uint32_t n) {
  tp_storage* s = tp_io_storage(&g_rt, storage);  // in turn on its channel, if any
  const uint32_t eb = s->erase_block;
  if (eb <= 1 || n == 0) return TP_OK;
  const uint32_t start = address - address % eb;
  uint32_t end = address + n;
  if (end % eb) end += eb - end % eb;
  if (end > s->capacity) return TP_ERANGE;
  for (uint32_t block = start; block < end; block += eb) {
    if (ErasedThisInference(storage, block)) continue;
    const int rc = s->erase(s, block, eb);
    if (rc != TP_OK) return rc;
  }
  if (g_num_erased == TP_TFLM_MAX_SPILLS) return TP_ECONFIG;
  g_erased[g_num_erased][0] = storage;
  g_erased[g_num_erased][1] = start;
  g_erased[g_num_erased][2] = end;
  ++g_num_erased;
  return TP_OK;
}

int32_t Option(const void* buffer, size_t length, int index) {
  int32_t v = 0;
  if ((index + 1) * 4 <= static_cast<int>(length))
    memcpy(&v, static_cast<const uint8_t*>(buffer) + 4 * index, 4);  // little-endian host
  return v;
}

struct TransferData {
  int32_t opts[kTransferFields];
};

void* InitTransfer(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<TransferData*>(
      context->AllocatePersistentBuffer(context, sizeof(TransferData)));
  if (d == nullptr) return nullptr;
  for (int i = 0; i < kTransferFields; ++i) d->opts[i] = Option(buffer, length, i);
  if (Option(buffer, length, kTransferFields) == 1) d->opts[0] |= kAsyncBit;
  return d;
}

bool Async(const TransferData* d) { return (d->opts[0] & kAsyncBit) != 0; }

TfLiteStatus PrepareTransfer(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TransferData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && (d->opts[0] & ~kAsyncBit) == 1);
  TF_LITE_ENSURE(context, d->opts[1] >= 0 && d->opts[1] < TP_MAX_STORAGES);
  TF_LITE_ENSURE_MSG(context, g_rt.storages[d->opts[1]] != nullptr,
                     "tinyplan: storage not set (call tp_tflm_set_storages first)");
  return kTfLiteOk;
}

size_t Bytes(const TfLiteEvalTensor* t) {
  size_t n = 0;
  if (tflite::TfLiteEvalTensorByteLength(t, &n) != kTfLiteOk) return 0;
  return n;
}

size_t ElementBytes(TfLiteType type) {
  size_t es = 1;
  if (tflite::TfLiteTypeSizeOf(type, &es) != kTfLiteOk) return 1;
  return es;
}

// The action of a Spill/Fetch; a source larger than the transfer is the whole
// interleaved tensor, gathered on its channel axis. The erase range stays empty here:
// EvalSpill erases through EraseForSpill, which knows what this inference erased.
tp_action TransferAction(const TransferData* d, const TfLiteEvalTensor* t) {
  tp_action a;
  memset(&a, 0, sizeof a);
  a.storage = static_cast<uint32_t>(d->opts[1]);
  a.address = static_cast<uint32_t>(d->opts[2]);
  a.nbytes = static_cast<uint32_t>(d->opts[3]);
  a.gather.outer = 1;
  a.gather.stride = a.nbytes;
  a.gather.chunk_len = a.nbytes;
  if (t != nullptr && Bytes(t) > a.nbytes && d->opts[4] >= 0) {
    const tflite::RuntimeShape shape = tflite::micro::GetTensorShape(t);
    const int axis = d->opts[4];
    uint32_t outer = 1, inner = static_cast<uint32_t>(ElementBytes(t->type));
    for (int i = 0; i < axis; ++i) outer *= shape.Dims(i);
    for (int i = axis + 1; i < shape.DimensionsCount(); ++i) inner *= shape.Dims(i);
    a.gather.outer = outer;
    a.gather.stride = shape.Dims(axis) * inner;
    a.gather.chunk_off = d->opts[5] * inner;
    a.gather.chunk_len = (d->opts[6] - d->opts[5]) * inner;
  }
  return a;
}

TfLiteStatus EvalSpill(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TransferData*>(node->user_data);
  const TfLiteEvalTensor* src = tflite::micro::GetEvalInput(context, node, 0);
  const int index = RecordIndex(d->opts[1], d->opts[2], true);
  TF_LITE_ENSURE(context, src != nullptr && index >= 0);
  tp_spill_record* rec = &g_records[index];
  if (g_record_generation[index] == g_generation) {  // spilled before: a new inference
    ++g_generation;
    g_num_erased = 0;
  }
  g_record_generation[index] = g_generation;
  tp_action a = TransferAction(d, src);
  TF_LITE_ENSURE(context, a.gather.outer * a.gather.chunk_len == a.nbytes);
  int rc = EraseForSpill(a.storage, a.address, a.nbytes);
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan Spill: flash erase failed");
  a.kind = Async(d) ? TP_SPILL_ASYNC : TP_SPILL;  // async: in flight until its TinyPlanWait
  rc = tp_spill_start(&g_rt, &a, tflite::micro::GetTensorData<uint8_t>(src), rec);
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan Spill failed");
  return kTfLiteOk;
}

TfLiteStatus EvalFetch(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TransferData*>(node->user_data);
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  tp_spill_record* rec = Record(d->opts[1], d->opts[2], false);
  TF_LITE_ENSURE(context, out != nullptr && rec != nullptr);
  TF_LITE_ENSURE(context, Bytes(out) >= static_cast<size_t>(d->opts[3]));
  tp_action a = TransferAction(d, nullptr);
  a.kind = Async(d) ? TP_FETCH_ASYNC : TP_FETCH;  // async: in flight until its TinyPlanWait
  int rc = tp_fetch_start(&g_rt, &a, tflite::micro::GetTensorData<uint8_t>(out), rec);
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan Fetch failed");
  return kTfLiteOk;
}

struct FusedData {
  int32_t header[kFusedHeader];
  int32_t inputs[TP_TFLM_MAX_INPUTS][kFusedInputFields];
  tp_action actions[TP_TFLM_MAX_INPUTS];
  tp_stream_state* streams;  // one per input, persistent
  tp_conv_params conv;
  int32_t* multiplier;
  int32_t* shift;
};

void* InitFused(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<FusedData*>(context->AllocatePersistentBuffer(context, sizeof(FusedData)));
  if (d == nullptr) return nullptr;
  memset(d, 0, sizeof *d);
  for (int i = 0; i < kFusedHeader; ++i) d->header[i] = Option(buffer, length, i);
  const int n = d->header[2];
  for (int k = 0; k < n && k < TP_TFLM_MAX_INPUTS; ++k)
    for (int i = 0; i < kFusedInputFields; ++i)
      d->inputs[k][i] = Option(buffer, length, kFusedHeader + k * kFusedInputFields + i);
  d->streams = static_cast<tp_stream_state*>(
      context->AllocatePersistentBuffer(context, sizeof(tp_stream_state) * TP_TFLM_MAX_INPUTS));
  return d;
}

// The first resident concat input: the geometry and zero point of the virtual concat.
int FirstResident(const FusedData* d) {
  for (int k = 0; k < d->header[2]; ++k)
    if (d->inputs[k][0] == 0) return k;
  return -1;
}

// Per-channel output multipliers and shifts as TFLM's PopulateConvolutionQuantizationParams
// computes them: double(input scale) * double(filter scale) / double(output scale).
TfLiteStatus PerChannel(TfLiteContext* context, const TfLiteTensor* input,
                        const TfLiteTensor* filter, const TfLiteTensor* output, int channels,
                        int32_t** multiplier, int32_t** shift) {
  const auto* fq = static_cast<const TfLiteAffineQuantization*>(filter->quantization.params);
  TF_LITE_ENSURE(context, fq != nullptr && fq->scale != nullptr);
  TF_LITE_ENSURE(context, fq->scale->size == 1 || fq->scale->size == channels);
  *multiplier = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * channels));
  *shift = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * channels));
  TF_LITE_ENSURE(context, *multiplier != nullptr && *shift != nullptr);
  for (int c = 0; c < channels; ++c) {
    const float fs = fq->scale->data[fq->scale->size == 1 ? 0 : c];
    const double m = static_cast<double>(input->params.scale) * static_cast<double>(fs) /
                     static_cast<double>(output->params.scale);
    int sh = 0;
    tflite::QuantizeMultiplier(m, &(*multiplier)[c], &sh);
    (*shift)[c] = sh;
  }
  return kTfLiteOk;
}

TfLiteStatus PrepareFused(TfLiteContext* context, TfLiteNode* node, bool conv) {
  auto* d = static_cast<FusedData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->streams != nullptr && d->header[0] == 1);
  const int n = d->header[2];
  TF_LITE_ENSURE(context, n > 0 && n <= TP_TFLM_MAX_INPUTS && n <= TP_MAX_SLICES);
  const int first = FirstResident(d);
  TF_LITE_ENSURE_MSG(context, first >= 0,
                     "tinyplan fused op needs one resident input (geometry, zero point)");
  if (!conv) return kTfLiteOk;
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* input = mc->AllocateTempInputTensor(node, first);
  TfLiteTensor* filter = mc->AllocateTempInputTensor(node, n);
  TfLiteTensor* output = mc->AllocateTempOutputTensor(node, 0);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr);
  TF_LITE_ENSURE_TYPES_EQ(context, input->type, kTfLiteInt8);
  TF_LITE_ENSURE(context, d->header[1] == 3 && filter->dims->size == 4);
  const int out_c = output->dims->data[3];
  int in_c = 0;
  for (int k = 0; k < n; ++k) in_c += d->inputs[k][5] - d->inputs[k][4];
  TF_LITE_ENSURE_STATUS(PerChannel(context, input, filter, output, out_c, &d->multiplier,
                                   &d->shift));
  tp_conv_params& p = d->conv;
  p.in_h = input->dims->data[1];
  p.in_w = input->dims->data[2];
  p.in_c = in_c;
  p.out_h = output->dims->data[1];
  p.out_w = output->dims->data[2];
  p.out_c = out_c;
  p.k_h = filter->dims->data[1];
  p.k_w = filter->dims->data[2];
  // DEPTHWISE_CONV_2D filters are [1, kh, kw, out_c]; CONV_2D ones [out_c, kh, kw,
  // in_c / groups]. The two readings only coincide when they compute the same thing
  // (one input and one output channel).
  p.depthwise = filter->dims->data[0] == 1 && filter->dims->data[3] == out_c && out_c > 1;
  p.filter_in_c = p.depthwise ? 0 : filter->dims->data[3];
  TF_LITE_ENSURE_MSG(context,
                     p.depthwise ? out_c % in_c == 0
                                 : in_c % p.filter_in_c == 0 &&
                                       out_c % (in_c / p.filter_in_c) == 0,
                     "tinyplan FusedConcatConv2D: channels do not split into groups");
  TF_LITE_ENSURE_MSG(context, p.k_h <= TP_MAX_KERNEL_H,
                     "tinyplan FusedConcatConv2D: kernel taller than TP_MAX_KERNEL_H");
  p.stride_h = d->header[5];
  p.stride_w = d->header[6];
  p.dilation_h = d->header[7];
  p.dilation_w = d->header[8];
  if (d->header[4] == 0) {  // tflite schema Padding: SAME = 0, VALID = 1
    p.pad_top = tp_same_padding(p.in_h, p.out_h, p.k_h, p.stride_h, p.dilation_h);
    p.pad_left = tp_same_padding(p.in_w, p.out_w, p.k_w, p.stride_w, p.dilation_w);
  }
  p.input_offset = -input->params.zero_point;
  p.output_offset = output->params.zero_point;
  int32_t act_min = 0, act_max = 0;
  TF_LITE_ENSURE_STATUS(tflite::CalculateActivationRangeQuantized(
      context, static_cast<TfLiteFusedActivation>(d->header[3]), output, &act_min, &act_max));
  p.act_min = act_min;
  p.act_max = act_max;
  p.out_multiplier = d->multiplier;
  p.out_shift = d->shift;
  mc->DeallocateTempTfLiteTensor(input);
  mc->DeallocateTempTfLiteTensor(filter);
  mc->DeallocateTempTfLiteTensor(output);
  return kTfLiteOk;
}

TfLiteStatus PrepareFusedConcat(TfLiteContext* context, TfLiteNode* node) {
  return PrepareFused(context, node, false);
}

TfLiteStatus PrepareFusedConv(TfLiteContext* context, TfLiteNode* node) {
  return PrepareFused(context, node, true);
}

// Slices of the virtual concatenation on `axis`: resident inputs in place, streamed ones
// opened on their line buffers, whose stream has `rows` rows. Returns the slice count or -1.
int Slices(TfLiteContext* context, TfLiteNode* node, FusedData* d, tp_slice* slices, int axis,
           int32_t rows) {
  const int n = d->header[2];
  for (int k = 0; k < n; ++k) {
    const int32_t* r = d->inputs[k];
    const uint32_t channels = static_cast<uint32_t>(r[5] - r[4]);
    tp_slice& s = slices[k];
    s.channels = channels;
    s.stream = nullptr;
    if (r[0] == 0) {
      const TfLiteEvalTensor* t = tflite::micro::GetEvalInput(context, node, k);
      if (t == nullptr || axis >= t->dims->size) return -1;
      const uint32_t c = static_cast<uint32_t>(t->dims->data[axis]);
      uint32_t inner = static_cast<uint32_t>(ElementBytes(t->type));
      for (int i = axis + 1; i < t->dims->size; ++i) inner *= t->dims->data[i];
      // A compact part copy holds only its channels; a whole tensor holds them all.
      const uint32_t skip = c == channels ? 0 : static_cast<uint32_t>(r[4]) * inner;
      s.data = tflite::micro::GetTensorData<int8_t>(t) + skip;
      s.pixel_stride = c;
      continue;
    }
    TfLiteEvalTensor* line = tflite::micro::GetEvalOutput(context, node, 1 + r[6]);
    const tp_spill_record* rec = Record(r[1], r[2], false);
    if (line == nullptr || rec == nullptr || rows <= 0) return -1;
    tp_action& a = d->actions[k];
    memset(&a, 0, sizeof a);
    a.kind = TP_STREAM;
    a.storage = static_cast<uint32_t>(r[1]);
    a.address = static_cast<uint32_t>(r[2]);
    a.nbytes = static_cast<uint32_t>(r[3]);
    a.rows = static_cast<uint32_t>(rows);
    a.row_bytes = (a.nbytes + a.rows - 1) / a.rows;
    a.line_rows = static_cast<uint32_t>(r[7] < rows ? r[7] : rows);
    a.line_bytes = static_cast<uint32_t>(Bytes(line));
    if (a.storage >= TP_MAX_STORAGES || g_rt.storages[a.storage] == nullptr) return -1;
    if (tp_stream_open(&d->streams[k], &a, tflite::micro::GetTensorData<uint8_t>(line),
                       tp_io_storage(&g_rt, a.storage), rec) != TP_OK)
      return -1;
    s.data = nullptr;
    s.pixel_stride = channels;
    s.stream = &d->streams[k];
  }
  return n;
}

TfLiteStatus EvalFusedConcat(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<FusedData*>(node->user_data);
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  TF_LITE_ENSURE(context, out != nullptr);
  int axis = d->header[1];
  const int rank = out->dims->size;
  if (axis < 0) axis += rank;
  TF_LITE_ENSURE(context, axis >= 0 && axis < rank);
  // Byte geometry of the concat: outer repeats of (channels x inner bytes).
  uint32_t outer = 1, inner = static_cast<uint32_t>(ElementBytes(out->type));
  for (int i = 0; i < axis; ++i) outer *= out->dims->data[i];
  for (int i = axis + 1; i < rank; ++i) inner *= out->dims->data[i];
  // Streams move in the plan's rows: the height of a 4-D tensor, else one row.
  const int32_t rows = rank == 4 ? out->dims->data[1] : 1;
  tp_slice slices[TP_TFLM_MAX_INPUTS];
  const int n = Slices(context, node, d, slices, axis, rows);
  TF_LITE_ENSURE_MSG(context, n > 0, "tinyplan FusedConcat: cannot open its inputs");
  int rc = tp_fused_concat(&g_rt, slices, n, outer, inner,
                           tflite::micro::GetTensorData<uint8_t>(out));
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan FusedConcat failed");
  return kTfLiteOk;
}

TfLiteStatus EvalFusedConv(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<FusedData*>(node->user_data);
  const int n = d->header[2];
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  const TfLiteEvalTensor* filter = tflite::micro::GetEvalInput(context, node, n);
  const TfLiteEvalTensor* bias = tflite::micro::GetEvalInput(context, node, n + 1);
  tp_slice slices[TP_TFLM_MAX_INPUTS];
  TF_LITE_ENSURE(context, out != nullptr && filter != nullptr);
  TF_LITE_ENSURE(context, Slices(context, node, d, slices, 3, d->conv.in_h) == n);
  d->conv.filter = tflite::micro::GetTensorData<int8_t>(filter);
  d->conv.bias = bias != nullptr ? tflite::micro::GetTensorData<int32_t>(bias) : nullptr;
  int rc = tp_fused_concat_conv2d(&g_rt, &d->conv, slices, n,
                                  tflite::micro::GetTensorData<int8_t>(out));
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan FusedConcatConv2D failed");
  return kTfLiteOk;
}

// ---- TinyPlanTransposeConv: TRANSPOSE_CONV int8 with one output row of int32 scratch ----
constexpr int kTconvFields = 5;
constexpr int kTconvOutputShape = 0, kTconvFilter = 1, kTconvInput = 2, kTconvBias = 3;

struct TconvData {
  int32_t opts[kTconvFields];
  tp_tconv_params params;
  int scratch_index;
  bool s16;  // 16x8: int16 activations, int64 bias and accumulators
};

void* InitTconv(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<TconvData*>(context->AllocatePersistentBuffer(context, sizeof(TconvData)));
  if (d == nullptr) return nullptr;
  memset(d, 0, sizeof *d);
  for (int i = 0; i < kTconvFields; ++i) d->opts[i] = Option(buffer, length, i);
  d->scratch_index = -1;
  return d;
}

TfLiteStatus PrepareTconv(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<TconvData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->opts[0] == 1);
  TF_LITE_ENSURE(context, node->inputs->size == 3 || node->inputs->size == 4);
  TF_LITE_ENSURE(context, node->outputs->size == 1);
  TF_LITE_ENSURE(context, (d->opts[1] == 0 || d->opts[1] == 1) && d->opts[2] > 0 &&
                              d->opts[3] > 0);
  tflite::MicroContext* mc = tflite::GetMicroContext(context);
  TfLiteTensor* input = mc->AllocateTempInputTensor(node, kTconvInput);
  TfLiteTensor* filter = mc->AllocateTempInputTensor(node, kTconvFilter);
  TfLiteTensor* output = mc->AllocateTempOutputTensor(node, 0);
  TfLiteTensor* shape = mc->AllocateTempInputTensor(node, kTconvOutputShape);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr);
  d->s16 = input->type == kTfLiteInt16;
  TF_LITE_ENSURE_MSG(context, (input->type == kTfLiteInt8 || d->s16) &&
                                  filter->type == kTfLiteInt8 && output->type == input->type,
                     "TinyPlanTransposeConv: int8 or int16 activations, int8 filter");
  TF_LITE_ENSURE(context, !d->s16 || (input->params.zero_point == 0 &&
                                      output->params.zero_point == 0));
  if (node->inputs->size == 4) {
    TfLiteTensor* bias = mc->AllocateTempInputTensor(node, kTconvBias);
    if (bias != nullptr) {
      TF_LITE_ENSURE_MSG(context, bias->type == (d->s16 ? kTfLiteInt64 : kTfLiteInt32),
                         "TinyPlanTransposeConv: int32 bias (int8) or int64 bias (16x8)");
      mc->DeallocateTempTfLiteTensor(bias);
    }
  }
  TF_LITE_ENSURE(context, input->dims->size == 4 && filter->dims->size == 4 &&
                              output->dims->size == 4);
  tp_tconv_params& p = d->params;
  p.batches = input->dims->data[0];
  p.in_h = input->dims->data[1];
  p.in_w = input->dims->data[2];
  p.in_c = input->dims->data[3];
  p.out_h = output->dims->data[1];
  p.out_w = output->dims->data[2];
  p.out_c = output->dims->data[3];
  p.k_h = filter->dims->data[1];
  p.k_w = filter->dims->data[2];
  TF_LITE_ENSURE(context, filter->dims->data[0] == p.out_c && filter->dims->data[3] == p.in_c &&
                              output->dims->data[0] == p.batches);
  if (shape != nullptr && shape->data.data != nullptr) {  // the constant output_shape
    TF_LITE_ENSURE(context, shape->type == kTfLiteInt32);
    const int32_t* dims = static_cast<const int32_t*>(shape->data.data);
    for (int i = 0; i < 4; ++i) TF_LITE_ENSURE(context, dims[i] == output->dims->data[i]);
  }
  p.stride_h = d->opts[2];
  p.stride_w = d->opts[3];
  const int same = d->opts[1] == 0;  // tflite schema Padding: SAME = 0, VALID = 1
  p.pad_top = tp_tconv_padding(p.out_h, p.k_h, p.stride_h, same);
  p.pad_left = tp_tconv_padding(p.out_w, p.k_w, p.stride_w, same);
  p.input_offset = -input->params.zero_point;
  p.output_offset = output->params.zero_point;
  int32_t* multiplier = nullptr;
  int32_t* shift = nullptr;
  TF_LITE_ENSURE_STATUS(PerChannel(context, input, filter, output, p.out_c, &multiplier, &shift));
  p.out_multiplier = multiplier;
  p.out_shift = shift;
  int32_t act_min = 0, act_max = 0;
  TF_LITE_ENSURE_STATUS(tflite::CalculateActivationRangeQuantized(
      context, static_cast<TfLiteFusedActivation>(d->opts[4]), output, &act_min, &act_max));
  p.act_min = act_min;
  p.act_max = act_max;
  // The whole point: one output row of accumulators, not the whole output.
  TF_LITE_ENSURE_STATUS(context->RequestScratchBufferInArena(
      context, d->s16 ? tp_tconv_scratch_bytes_s16(&p) : tp_tconv_scratch_bytes(&p),
      &d->scratch_index));
  mc->DeallocateTempTfLiteTensor(input);
  mc->DeallocateTempTfLiteTensor(filter);
  mc->DeallocateTempTfLiteTensor(output);
  if (shape != nullptr) mc->DeallocateTempTfLiteTensor(shape);
  return kTfLiteOk;
}

TfLiteStatus EvalTconv(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<TconvData*>(node->user_data);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, kTconvInput);
  const TfLiteEvalTensor* filter = tflite::micro::GetEvalInput(context, node, kTconvFilter);
  const TfLiteEvalTensor* bias = tflite::micro::GetEvalInput(context, node, kTconvBias);
  TfLiteEvalTensor* output = tflite::micro::GetEvalOutput(context, node, 0);
  void* row_acc = context->GetScratchBuffer(context, d->scratch_index);
  TF_LITE_ENSURE(context, input != nullptr && filter != nullptr && output != nullptr &&
                              row_acc != nullptr);
  d->params.filter = tflite::micro::GetTensorData<int8_t>(filter);
  int rc;
  if (d->s16) {
    d->params.bias = nullptr;
    rc = tp_transpose_conv_rows_s16(
        &d->params, bias != nullptr ? tflite::micro::GetTensorData<int64_t>(bias) : nullptr,
        tflite::micro::GetTensorData<int16_t>(input), static_cast<int64_t*>(row_acc),
        tflite::micro::GetTensorData<int16_t>(output));
  } else {
    d->params.bias = bias != nullptr ? tflite::micro::GetTensorData<int32_t>(bias) : nullptr;
    rc = tp_transpose_conv_rows(&d->params, tflite::micro::GetTensorData<int8_t>(input),
                                static_cast<int32_t*>(row_acc),
                                tflite::micro::GetTensorData<int8_t>(output));
  }
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "TinyPlanTransposeConv failed");
  return kTfLiteOk;
}

// ---- TinyPlanSplit: in-place compaction of a split tensor's part 0 -----------------------
// Part 0 (output 0) aliases the front of the interleaved input and is compacted forward
// over it; part 1 (output 1, optional) is already spilled and dead, so it is not written
// (writing it would clobber input bytes not yet moved).
constexpr int kSplitFields = 3;

struct SplitData {
  int32_t opts[kSplitFields];
};

void* InitSplit(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<SplitData*>(context->AllocatePersistentBuffer(context, sizeof(SplitData)));
  if (d == nullptr) return nullptr;
  for (int i = 0; i < kSplitFields; ++i) d->opts[i] = Option(buffer, length, i);
  return d;
}

TfLiteStatus PrepareSplit(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const SplitData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->opts[0] == 1 && d->opts[2] > 0);
  TF_LITE_ENSURE(context, node->inputs->size == 1);
  TF_LITE_ENSURE(context, node->outputs->size == 1 || node->outputs->size == 2);
  return kTfLiteOk;
}

TfLiteStatus EvalSplit(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const SplitData*>(node->user_data);
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, 0);
  TfLiteEvalTensor* part0 = tflite::micro::GetEvalOutput(context, node, 0);
  TF_LITE_ENSURE(context, input != nullptr && part0 != nullptr);
  const tflite::RuntimeShape shape = tflite::micro::GetTensorShape(input);
  int axis = d->opts[1];
  if (axis < 0) axis += shape.DimensionsCount();
  TF_LITE_ENSURE(context, axis >= 0 && axis < shape.DimensionsCount());
  const int32_t keep = d->opts[2];
  TF_LITE_ENSURE(context, keep <= shape.Dims(axis));
  uint32_t outer = 1, inner = static_cast<uint32_t>(ElementBytes(input->type));
  for (int i = 0; i < axis; ++i) outer *= shape.Dims(i);
  for (int i = axis + 1; i < shape.DimensionsCount(); ++i) inner *= shape.Dims(i);
  const uint32_t chunk = keep * inner, stride = shape.Dims(axis) * inner;
  TF_LITE_ENSURE(context, Bytes(part0) == static_cast<size_t>(outer) * chunk);
  const uint8_t* src = tflite::micro::GetTensorData<uint8_t>(input);
  uint8_t* dst = tflite::micro::GetTensorData<uint8_t>(part0);
  // Moving front to back is safe when part 0 sits at or below its source.
  TF_LITE_ENSURE(context, dst <= src || dst >= src + Bytes(input));
  for (uint32_t o = 0; o < outer; ++o) memmove(dst + o * chunk, src + o * stride, chunk);
  return kTfLiteOk;
}

// ---- TinyPlanStreamedGroup: a run of ops computed row by row (tp_rows.h) ---------------
// The group's rings and line buffers are tensors of the rewritten model (planned outputs
// of this op, alive at its step only), so Eval only binds them and runs the program.
// Views (tp_rows.h): the op's inputs, then its outputs, then its rings. A streamed input
// is -1 among the inputs and its view's buffer is a line buffer after the rings; a
// spill_rows output's slot holds its line buffer. Rows spilled by the group go straight
// to the storage the Spill/Fetch ops use, raw, and leave a spill record (keyed by storage
// and address like a Spill's) so later Fetch ops and streams find the tensor. Streamed
// inputs are read through the record of whoever spilled them (compressed ones decode
// sequentially, restarting at the section of a row asked out of order).
constexpr int kGroupHeader = 2;  // version, storage id; then the program

struct GroupData {
  int32_t storage;
  const int32_t* program;  // in place in the model's options
  int32_t words;
  int32_t num_views;
  int32_t num_streamed;  // stream_in views: their line buffers follow the rings
  int32_t next_reader;
  struct Reader {  // decoders of compressed streamed inputs
    int32_t view;       // the stream_in view it reads, -1 unused
    uint32_t position;  // next raw byte it yields
    tp_reader reader;
  } readers[TP_TFLM_GROUP_READERS];
};

const int32_t* GroupView(const GroupData* d, int v) {
  return d->program + TP_GROUP_HEADER_WORDS + TP_GROUP_VIEW_WORDS * v;
}

uint32_t ViewBytes(const int32_t* view) {  // the tensor's bytes: height rows
  return static_cast<uint32_t>(view[1]) * static_cast<uint32_t>(view[2]);
}

void* InitGroup(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<GroupData*>(context->AllocatePersistentBuffer(context, sizeof(GroupData)));
  if (d == nullptr) return nullptr;
  memset(d, 0, sizeof *d);
  d->storage = Option(buffer, length, 1);
  d->words = -1;  // Prepare refuses the op
  for (int r = 0; r < TP_TFLM_GROUP_READERS; ++r) d->readers[r].view = -1;
  // The program is read in place (no copy in the arena): a flatbuffer vector's data is
  // 4-byte aligned.
  if (Option(buffer, length, 0) != 1 || reinterpret_cast<uintptr_t>(buffer) % 4 != 0 ||
      length % 4 != 0 || length / 4 <= kGroupHeader + TP_GROUP_HEADER_WORDS)
    return d;
  d->program = reinterpret_cast<const int32_t*>(buffer) + kGroupHeader;
  d->words = static_cast<int32_t>(length / 4) - kGroupHeader;
  return d;
}

TfLiteStatus PrepareGroup(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<GroupData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr);
  TF_LITE_ENSURE_MSG(context, d->words > 0,
                     "TinyPlanStreamedGroup: options of an unknown version or not aligned");
  TF_LITE_ENSURE_MSG(context, tp_group_check(d->program, d->words) == TP_OK,
                     "TinyPlanStreamedGroup: malformed program");
  d->num_views = d->program[2];
  TF_LITE_ENSURE(context, d->num_views > 0 && d->num_views <= TP_TFLM_MAX_GROUP_VIEWS);
  const int n_in = node->inputs->size, n_out = node->outputs->size;
  d->num_streamed = 0;
  bool storage_needed = false;
  for (int v = 0; v < d->num_views; ++v) {
    const int32_t mode = GroupView(d, v)[0];
    d->num_streamed += mode == TP_VIEW_STREAM_IN;
    storage_needed |= mode == TP_VIEW_STREAM_IN || mode == TP_VIEW_SPILL_ROWS;
  }
  TF_LITE_ENSURE_MSG(context, n_in + n_out - d->num_streamed == d->num_views,
                     "TinyPlanStreamedGroup: program views and op tensors disagree");
  if (storage_needed) {
    TF_LITE_ENSURE(context, d->storage >= 0 && d->storage < TP_MAX_STORAGES);
    TF_LITE_ENSURE_MSG(context, g_rt.storages[d->storage] != nullptr,
                       "tinyplan: storage not set (call tp_tflm_set_storages first)");
  }
  // Each view against its buffer: inputs stream exactly when omitted, rings are the
  // last views, and every buffer holds the view's rows_held rows.
  int line = n_out - d->num_streamed;
  for (int v = 0; v < d->num_views; ++v) {
    const int32_t* view = GroupView(d, v);
    const int32_t mode = view[0];
    const TfLiteEvalTensor* t;
    if (v < n_in) {
      const bool omitted = node->inputs->data[v] < 0;
      TF_LITE_ENSURE_MSG(context, omitted == (mode == TP_VIEW_STREAM_IN),
                         "TinyPlanStreamedGroup: streamed views and omitted inputs differ");
      TF_LITE_ENSURE(context, mode != TP_VIEW_RING && mode != TP_VIEW_SPILL_ROWS);
      t = omitted ? tflite::micro::GetEvalOutput(context, node, line++)
                  : tflite::micro::GetEvalInput(context, node, v);
    } else {
      TF_LITE_ENSURE(context, mode != TP_VIEW_STREAM_IN);
      t = tflite::micro::GetEvalOutput(context, node, v - n_in);
    }
    TF_LITE_ENSURE(context, t != nullptr);
    const size_t need = static_cast<size_t>(view[3]) * static_cast<size_t>(view[2]);
    TF_LITE_ENSURE_MSG(context, Bytes(t) >= need,
                       "TinyPlanStreamedGroup: a buffer is smaller than its view");
    if (mode == TP_VIEW_STREAM_IN || mode == TP_VIEW_SPILL_ROWS) {
      const tp_storage* s = g_rt.storages[d->storage];
      TF_LITE_ENSURE(context, view[4] >= 0 &&
                                  static_cast<uint64_t>(view[4]) + ViewBytes(view) <= s->capacity);
    }
  }
  return kTfLiteOk;
}

// The view of `mode` whose storage bytes hold [address, address + n), or -1.
int GroupTransfer(const GroupData* d, int mode, uint32_t address, uint32_t n) {
  for (int v = 0; v < d->num_views; ++v) {
    const int32_t* view = GroupView(d, v);
    const uint32_t start = static_cast<uint32_t>(view[4]), bytes = ViewBytes(view);
    if (view[0] == mode && start <= address && address - start <= bytes &&
        n <= bytes - (address - start))
      return v;
  }
  return -1;
}

int GroupRead(void* ctx, uint32_t address, uint8_t* dst, int32_t nbytes) {
  auto* d = static_cast<GroupData*>(ctx);
  if (nbytes < 0) return TP_EPLAN;
  const uint32_t n = static_cast<uint32_t>(nbytes);
  const int v = GroupTransfer(d, TP_VIEW_STREAM_IN, address, n);
  if (v < 0) return TP_EPLAN;
  const int32_t* view = GroupView(d, v);
  const tp_spill_record* rec = Record(d->storage, view[4], false);
  if (rec == nullptr || !rec->valid || rec->raw_bytes != ViewBytes(view)) return TP_EPLAN;
  // Through the storage's channel, if it has one: only that thread touches the storage.
  tp_storage* s = tp_io_storage(&g_rt, static_cast<uint32_t>(d->storage));
  if (rec->mode == TP_MODE_RAW) return s->read(s, address, dst, n);
  GroupData::Reader* gr = nullptr;
  for (int i = 0; i < TP_TFLM_GROUP_READERS; ++i)
    if (d->readers[i].view == v) gr = &d->readers[i];
  const uint32_t offset = address - static_cast<uint32_t>(view[4]);
  if (gr == nullptr || gr->position > offset) {  // (re)start at the row's section
    if (gr == nullptr) {
      gr = &d->readers[d->next_reader];
      d->next_reader = (d->next_reader + 1) % TP_TFLM_GROUP_READERS;
    }
    const uint32_t section = rec->section_raw ? offset / rec->section_raw : 0;
    gr->view = v;
    gr->position = section * rec->section_raw;
    const int rc = tp_reader_begin(&gr->reader, s, static_cast<uint32_t>(view[4]), rec, section);
    if (rc != TP_OK) {
      gr->view = -1;
      return rc;
    }
  }
  int rc = tp_reader_get(&gr->reader, nullptr, offset - gr->position);
  if (rc == TP_OK) rc = tp_reader_get(&gr->reader, dst, n);
  gr->position = offset + n;
  if (rc != TP_OK) gr->view = -1;
  return rc;
}

int GroupWrite(void* ctx, uint32_t address, const uint8_t* src, int32_t nbytes) {
  auto* d = static_cast<GroupData*>(ctx);
  if (nbytes < 0 || GroupTransfer(d, TP_VIEW_SPILL_ROWS, address, nbytes) < 0) return TP_EPLAN;
  tp_storage* s = tp_io_storage(&g_rt, static_cast<uint32_t>(d->storage));
  return s->write(s, address, src, static_cast<uint32_t>(nbytes));
}

// The record tp_writer leaves for a raw spill of n bytes: what the rows written here are.
void RawRecord(tp_spill_record* rec, uint32_t n) {
  memset(rec, 0, sizeof *rec);
  rec->raw_bytes = n;
  rec->stored_bytes = n;
  rec->section_raw = tp_section_raw(n);
  rec->mode = TP_MODE_RAW;
  for (uint32_t s = 0; s < TP_SECTIONS; ++s) {
    const uint32_t start = s * rec->section_raw;
    rec->section_at[s] = start < n ? start : n;
  }
}

TfLiteStatus EvalGroup(TfLiteContext* context, TfLiteNode* node) {
  auto* d = static_cast<GroupData*>(node->user_data);
  const int n_in = node->inputs->size, n_out = node->outputs->size;
  uint8_t* bases[TP_TFLM_MAX_GROUP_VIEWS];
  int line = n_out - d->num_streamed;
  for (int v = 0; v < d->num_views; ++v) {
    TfLiteEvalTensor* t;
    if (v < n_in && node->inputs->data[v] < 0) {
      t = tflite::micro::GetEvalOutput(context, node, line++);
    } else if (v < n_in) {
      t = const_cast<TfLiteEvalTensor*>(tflite::micro::GetEvalInput(context, node, v));
    } else {
      t = tflite::micro::GetEvalOutput(context, node, v - n_in);
    }
    TF_LITE_ENSURE(context, t != nullptr);
    bases[v] = tflite::micro::GetTensorData<uint8_t>(t);
  }
  // Rows spilled here: erase their flash blocks once per inference (as EvalSpill does);
  // the record is invalid until every row is written.
  for (int v = 0; v < d->num_views; ++v) {
    const int32_t* view = GroupView(d, v);
    if (view[0] != TP_VIEW_SPILL_ROWS) continue;
    const int index = RecordIndex(d->storage, view[4], true);
    TF_LITE_ENSURE(context, index >= 0);
    if (g_record_generation[index] == g_generation) {  // spilled before: a new inference
      ++g_generation;
      g_num_erased = 0;
    }
    g_record_generation[index] = g_generation;
    g_records[index].valid = 0;
    const int rc = EraseForSpill(static_cast<uint32_t>(d->storage),
                                 static_cast<uint32_t>(view[4]), ViewBytes(view));
    TF_LITE_ENSURE_MSG(context, rc == TP_OK, "TinyPlanStreamedGroup: flash erase failed");
  }
  for (int i = 0; i < TP_TFLM_GROUP_READERS; ++i) d->readers[i].view = -1;
  tp_group_io io;
  io.ctx = d;
  io.read = GroupRead;
  io.write = GroupWrite;
  const int rc = tp_group_run(d->program, d->words, bases, &io, nullptr);
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "TinyPlanStreamedGroup: tp_group_run failed");
  for (int v = 0; v < d->num_views; ++v) {  // every row is in storage now
    const int32_t* view = GroupView(d, v);
    if (view[0] != TP_VIEW_SPILL_ROWS) continue;
    tp_spill_record* rec = Record(d->storage, view[4], false);
    TF_LITE_ENSURE(context, rec != nullptr);  // created before the run
    RawRecord(rec, ViewBytes(view));
    rec->valid = 1;
  }
  return kTfLiteOk;
}

// ---- TinyPlanWait: completes an asynchronous Spill or Fetch ------------------------------
// A Spill with async = 1 starts its transfer on the storage's channel and returns; the
// TinyPlanWait after the op that ends its window waits for it, before the source's bytes
// may be reused. A Fetch with async = 1 is placed before the op that starts its window;
// the TinyPlanWait before the op that reads the data waits for it. Without a channel
// (tp_tflm_set_channel) every transfer finishes at its start and the wait returns at once.
constexpr int kWaitFields = 4;

struct WaitData {
  int32_t opts[kWaitFields];
};

void* InitWait(TfLiteContext* context, const char* buffer, size_t length) {
  auto* d = static_cast<WaitData*>(context->AllocatePersistentBuffer(context, sizeof(WaitData)));
  if (d == nullptr) return nullptr;
  for (int i = 0; i < kWaitFields; ++i) d->opts[i] = Option(buffer, length, i);
  return d;
}

TfLiteStatus PrepareWait(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const WaitData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->opts[0] == 1);
  TF_LITE_ENSURE(context, d->opts[1] == 0 || d->opts[1] == 1);
  TF_LITE_ENSURE(context, d->opts[2] >= 0 && d->opts[2] < TP_MAX_STORAGES);
  TF_LITE_ENSURE_MSG(context, g_rt.storages[d->opts[2]] != nullptr,
                     "tinyplan: storage not set (call tp_tflm_set_storages first)");
  return kTfLiteOk;
}

TfLiteStatus EvalWait(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const WaitData*>(node->user_data);
  const int rc = tp_transfer_wait(&g_rt, d->opts[1] == 0 ? TP_SPILL : TP_FETCH,
                                  static_cast<uint32_t>(d->opts[2]),
                                  static_cast<uint32_t>(d->opts[3]));
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan TinyPlanWait: the transfer failed");
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration* Register_WAIT() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitWait, PrepareWait, EvalWait);
  return &r;
}

TFLMRegistration* Register_SPILL() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitTransfer, PrepareTransfer, EvalSpill);
  return &r;
}

TFLMRegistration* Register_FETCH() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitTransfer, PrepareTransfer, EvalFetch);
  return &r;
}

TFLMRegistration* Register_FUSED_CONCAT() {
  static TFLMRegistration r =
      tflite::micro::RegisterOp(InitFused, PrepareFusedConcat, EvalFusedConcat);
  return &r;
}

TFLMRegistration* Register_FUSED_CONCAT_CONV2D() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitFused, PrepareFusedConv, EvalFusedConv);
  return &r;
}

TFLMRegistration* Register_TRANSPOSE_CONV_ROWS() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitTconv, PrepareTconv, EvalTconv);
  return &r;
}

TFLMRegistration* Register_SPLIT() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitSplit, PrepareSplit, EvalSplit);
  return &r;
}

TFLMRegistration* Register_STREAMED_GROUP() {
  static TFLMRegistration r = tflite::micro::RegisterOp(InitGroup, PrepareGroup, EvalGroup);
  return &r;
}

}  // namespace tinyplan

extern "C" int tp_tflm_set_storages(tp_storage* const* storages, uint32_t count,
                                    uint32_t compress_mask) {
  if (count > TP_MAX_STORAGES) return TP_ECONFIG;
  // Whatever is still in flight finishes on the old storages; channels go with them.
  tp_channel_drain(&tinyplan::g_rt, TP_MAX_STORAGES);
  for (uint32_t i = 0; i < TP_MAX_STORAGES; ++i) {
    tinyplan::g_rt.channels[i] = nullptr;
    tinyplan::g_rt.storages[i] = i < count ? storages[i] : nullptr;
  }
  tinyplan::g_rt.compress_mask = compress_mask;
  tinyplan::g_rt.async_started = 0;
  tinyplan::g_num_records = 0;  // a new session: earlier spills are gone
  tinyplan::g_num_erased = 0;
  ++tinyplan::g_generation;
  return TP_OK;
}

// Route storage `id` (set by tp_tflm_set_storages) through an asynchronous driver; the
// channel is the caller's. driver NULL: blocking again. Call between inferences only.
extern "C" int tp_tflm_set_channel(uint32_t id, tp_channel* channel, tp_async* driver) {
  return tp_runtime_set_channel(&tinyplan::g_rt, id, channel, driver);
}

// Spills and fetches started with a window (async = 1) on a channel, so far.
extern "C" uint32_t tp_tflm_async_started(void) { return tinyplan::g_rt.async_started; }
#endif  // TP_HAVE_TFLM
