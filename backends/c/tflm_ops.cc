// TFLM custom-op registrations for a rewritten .tflite (backends/tflite_rewrite.py):
// Spill, Fetch, FusedConcat, FusedConcatConv2D. Compiled only where the TFLM headers
// are on the include path; elsewhere this file is empty.
//
// Custom options are little-endian int32 blobs (docs/tflm_backend.md):
//   Spill / Fetch: [version, storage_id, address, nbytes, axis, channel_start,
//                   channel_stop, part]
//   FusedConcat / FusedConcatConv2D: [version, axis, n_inputs, activation, padding,
//                   stride_h, stride_w, dilation_h, dilation_w] then per concat input
//                   [source (0 arena, 1 stream), storage_id, address, nbytes,
//                    channel_start, channel_stop, line_buffer_output, line_rows]
// Streamed inputs are -1 in the op's inputs; line buffer k is output 1 + k.
//
// The rewritten model's SPLIT_V compacts in place: register Register_SPLIT_V_IN_PLACE()
// for BuiltinOperator_SPLIT_V instead of TFLM's (which copies and would clobber).
// Before the first Invoke the application hands over its storages:
//   tp_tflm_set_storages(storages, count, compress_mask);
// and registers the ops:
//   resolver.AddCustom("Spill", tinyplan::Register_SPILL()); ... (see docs/c_runtime.md)
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
#include "tp_runtime.h"
}

#ifndef TP_TFLM_MAX_SPILLS
#define TP_TFLM_MAX_SPILLS 32
#endif
#ifndef TP_TFLM_MAX_INPUTS
#define TP_TFLM_MAX_INPUTS 8
#endif

namespace tinyplan {
namespace {

constexpr int kTransferFields = 8;
constexpr int kFusedHeader = 9;
constexpr int kFusedInputFields = 8;

// One runtime for every op: the storages, staging buffers and the spill records,
// which are keyed by (storage, address) since the options carry no record index.
tp_runtime g_rt;
tp_spill_record g_records[TP_TFLM_MAX_SPILLS];
int32_t g_record_keys[TP_TFLM_MAX_SPILLS][2];
int g_num_records = 0;

tp_spill_record* Record(int32_t storage, int32_t address, bool create) {
  for (int i = 0; i < g_num_records; ++i)
    if (g_record_keys[i][0] == storage && g_record_keys[i][1] == address) return &g_records[i];
  if (!create || g_num_records == TP_TFLM_MAX_SPILLS) return nullptr;
  g_record_keys[g_num_records][0] = storage;
  g_record_keys[g_num_records][1] = address;
  return &g_records[g_num_records++];
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
  return d;
}

TfLiteStatus PrepareTransfer(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TransferData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->opts[0] == 1);
  TF_LITE_ENSURE(context, d->opts[1] >= 0 && d->opts[1] < TP_MAX_STORAGES);
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
// interleaved tensor, gathered on its channel axis.
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
  tp_spill_record* rec = Record(d->opts[1], d->opts[2], true);
  TF_LITE_ENSURE(context, src != nullptr && rec != nullptr);
  tp_action a = TransferAction(d, src);
  TF_LITE_ENSURE(context, a.gather.outer * a.gather.chunk_len == a.nbytes);
  int rc = tp_spill_data(&g_rt, &a, tflite::micro::GetTensorData<uint8_t>(src), rec);
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan Spill failed");
  return kTfLiteOk;
}

TfLiteStatus EvalFetch(TfLiteContext* context, TfLiteNode* node) {
  const auto* d = static_cast<const TransferData*>(node->user_data);
  TfLiteEvalTensor* out = tflite::micro::GetEvalOutput(context, node, 0);
  const tp_spill_record* rec = Record(d->opts[1], d->opts[2], false);
  TF_LITE_ENSURE(context, out != nullptr && rec != nullptr);
  TF_LITE_ENSURE(context, Bytes(out) >= static_cast<size_t>(d->opts[3]));
  tp_action a = TransferAction(d, nullptr);
  int rc = tp_fetch_data(&g_rt, &a, tflite::micro::GetTensorData<uint8_t>(out), rec);
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

TfLiteStatus PrepareFused(TfLiteContext* context, TfLiteNode* node, bool conv) {
  auto* d = static_cast<FusedData*>(node->user_data);
  TF_LITE_ENSURE(context, d != nullptr && d->streams != nullptr && d->header[0] == 1);
  const int n = d->header[2];
  TF_LITE_ENSURE(context, n > 0 && n <= TP_TFLM_MAX_INPUTS);
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
  const auto* fq = static_cast<const TfLiteAffineQuantization*>(filter->quantization.params);
  const int out_c = output->dims->data[3];
  TF_LITE_ENSURE(context, fq != nullptr && fq->scale != nullptr);
  d->multiplier = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * out_c));
  d->shift = static_cast<int32_t*>(
      context->AllocatePersistentBuffer(context, sizeof(int32_t) * out_c));
  TF_LITE_ENSURE(context, d->multiplier != nullptr && d->shift != nullptr);
  for (int c = 0; c < out_c; ++c) {
    const float fs = fq->scale->data[fq->scale->size == 1 ? 0 : c];
    const double m = static_cast<double>(input->params.scale) * static_cast<double>(fs) /
                     static_cast<double>(output->params.scale);
    int shift = 0;
    tflite::QuantizeMultiplier(m, &d->multiplier[c], &shift);
    d->shift[c] = shift;
  }
  tp_conv_params& p = d->conv;
  p.in_h = input->dims->data[1];
  p.in_w = input->dims->data[2];
  p.out_h = output->dims->data[1];
  p.out_w = output->dims->data[2];
  p.out_c = out_c;
  p.k_h = filter->dims->data[1];
  p.k_w = filter->dims->data[2];
  p.in_c = filter->dims->data[3];
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

// Slices of the virtual concatenation: resident inputs in place, streamed ones opened
// on their line buffers. Returns the slice count or -1.
int Slices(TfLiteContext* context, TfLiteNode* node, FusedData* d, tp_slice* slices,
           int32_t height) {
  const int n = d->header[2];
  for (int k = 0; k < n; ++k) {
    const int32_t* r = d->inputs[k];
    const uint32_t channels = static_cast<uint32_t>(r[5] - r[4]);
    tp_slice& s = slices[k];
    s.channels = channels;
    s.stream = nullptr;
    if (r[0] == 0) {
      const TfLiteEvalTensor* t = tflite::micro::GetEvalInput(context, node, k);
      if (t == nullptr) return -1;
      const uint32_t c = static_cast<uint32_t>(t->dims->data[t->dims->size - 1]);
      // A compact part copy holds only its channels; a whole tensor holds them all.
      const uint32_t skip = c == channels ? 0 : static_cast<uint32_t>(r[4]);
      s.data = tflite::micro::GetTensorData<int8_t>(t) + skip;
      s.pixel_stride = c;
      continue;
    }
    TfLiteEvalTensor* line = tflite::micro::GetEvalOutput(context, node, 1 + r[6]);
    const tp_spill_record* rec = Record(r[1], r[2], false);
    if (line == nullptr || rec == nullptr || height <= 0) return -1;
    tp_action& a = d->actions[k];
    memset(&a, 0, sizeof a);
    a.kind = TP_STREAM;
    a.storage = static_cast<uint32_t>(r[1]);
    a.address = static_cast<uint32_t>(r[2]);
    a.nbytes = static_cast<uint32_t>(r[3]);
    a.rows = static_cast<uint32_t>(height);
    a.row_bytes = (a.nbytes + a.rows - 1) / a.rows;
    a.line_rows = static_cast<uint32_t>(r[7] < height ? r[7] : height);
    a.line_bytes = static_cast<uint32_t>(Bytes(line));
    if (a.storage >= TP_MAX_STORAGES || g_rt.storages[a.storage] == nullptr) return -1;
    if (tp_stream_open(&d->streams[k], &a, tflite::micro::GetTensorData<uint8_t>(line),
                       g_rt.storages[a.storage], rec) != TP_OK)
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
  tp_slice slices[TP_TFLM_MAX_INPUTS];
  const int32_t h = out->dims->data[1], w = out->dims->data[2];
  const int n = Slices(context, node, d, slices, h);
  TF_LITE_ENSURE_MSG(context, n > 0, "tinyplan FusedConcat: cannot open its inputs");
  int rc = tp_fused_concat(&g_rt, slices, n, h, w, tflite::micro::GetTensorData<int8_t>(out));
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
  TF_LITE_ENSURE(context, Slices(context, node, d, slices, d->conv.in_h) == n);
  d->conv.filter = tflite::micro::GetTensorData<int8_t>(filter);
  d->conv.bias = bias != nullptr ? tflite::micro::GetTensorData<int32_t>(bias) : nullptr;
  int rc = tp_fused_concat_conv2d(&g_rt, &d->conv, slices, n,
                                  tflite::micro::GetTensorData<int8_t>(out));
  TF_LITE_ENSURE_MSG(context, rc == TP_OK, "tinyplan FusedConcatConv2D failed");
  return kTfLiteOk;
}

// SPLIT_V of a split tensor in the rewritten model, in place: part 0 (output 0) is
// compacted forward over the interleaved tensor; part 1 (output 1) is already spilled
// and dead, so it is not written (writing it would clobber input bytes not yet moved).
TfLiteStatus PrepareSplitInPlace(TfLiteContext* context, TfLiteNode* node) {
  TF_LITE_ENSURE(context, node->inputs->size == 3 && node->outputs->size == 2);
  return kTfLiteOk;
}

TfLiteStatus EvalSplitInPlace(TfLiteContext* context, TfLiteNode* node) {
  const TfLiteEvalTensor* input = tflite::micro::GetEvalInput(context, node, 0);
  const TfLiteEvalTensor* sizes = tflite::micro::GetEvalInput(context, node, 1);
  const TfLiteEvalTensor* axis_t = tflite::micro::GetEvalInput(context, node, 2);
  TfLiteEvalTensor* part0 = tflite::micro::GetEvalOutput(context, node, 0);
  TF_LITE_ENSURE(context, input && sizes && axis_t && part0);
  const tflite::RuntimeShape shape = tflite::micro::GetTensorShape(input);
  int axis = tflite::micro::GetTensorData<int32_t>(axis_t)[0];
  if (axis < 0) axis += shape.DimensionsCount();
  const int32_t keep = tflite::micro::GetTensorData<int32_t>(sizes)[0];
  uint32_t outer = 1, inner = static_cast<uint32_t>(ElementBytes(input->type));
  for (int i = 0; i < axis; ++i) outer *= shape.Dims(i);
  for (int i = axis + 1; i < shape.DimensionsCount(); ++i) inner *= shape.Dims(i);
  const uint8_t* src = tflite::micro::GetTensorData<uint8_t>(input);
  uint8_t* dst = tflite::micro::GetTensorData<uint8_t>(part0);
  TF_LITE_ENSURE(context, dst <= src || dst >= src + Bytes(input));
  const uint32_t chunk = keep * inner, stride = shape.Dims(axis) * inner;
  for (uint32_t o = 0; o < outer; ++o) memmove(dst + o * chunk, src + o * stride, chunk);
  return kTfLiteOk;
}

}  // namespace

TFLMRegistration* Register_SPLIT_V_IN_PLACE() {
  static TFLMRegistration r =
      tflite::micro::RegisterOp(nullptr, PrepareSplitInPlace, EvalSplitInPlace);
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

}  // namespace tinyplan

extern "C" int tp_tflm_set_storages(tp_storage* const* storages, uint32_t count,
                                    uint32_t compress_mask) {
  if (count > TP_MAX_STORAGES) return TP_ECONFIG;
  for (uint32_t i = 0; i < count; ++i) tinyplan::g_rt.storages[i] = storages[i];
  tinyplan::g_rt.compress_mask = compress_mask;
  tinyplan::g_num_records = 0;  // a new session: earlier spills are gone
  return TP_OK;
}
#endif  // TP_HAVE_TFLM
