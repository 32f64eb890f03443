// Drives backends/c/tflm_ops.cc through a minimal fake of the TFLM API (tflm_api_stub/
// declares it, this file implements it) the way a rewritten .tflite would: Spill of a
// still-interleaved tensor, in-place SPLIT_V, Fetch, FusedConcat and FusedConcatConv2D
// with one input part streamed from storage. Checks every output against direct
// computations. Not a substitute for real TFLM; it checks option parsing and data paths.
//   tflm_ops_test STORAGE_FILE
#include <math.h>
#include <initializer_list>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/kernels/internal/quantization_util.h"
#include "tensorflow/lite/kernels/kernel_util.h"
#include "tensorflow/lite/micro/kernels/kernel_util.h"
#include "tensorflow/lite/micro/memory_helpers.h"
#include "tensorflow/lite/micro/micro_context.h"

extern "C" {
#include "tp_kernels.h"
#include "tp_storage.h"
}

namespace tinyplan {
TFLMRegistration* Register_SPILL();
TFLMRegistration* Register_FETCH();
TFLMRegistration* Register_FUSED_CONCAT();
TFLMRegistration* Register_FUSED_CONCAT_CONV2D();
TFLMRegistration* Register_SPLIT_V_IN_PLACE();
}  // namespace tinyplan
extern "C" int tp_tflm_set_storages(tp_storage* const* storages, uint32_t count,
                                    uint32_t compress_mask);

// ---- the fake TFLM ---------------------------------------------------------------------
static const int kMaxTensors = 16;
static TfLiteEvalTensor g_eval[kMaxTensors];
static TfLiteIntArray g_dims[kMaxTensors];
static TfLiteQuantizationParams g_params[kMaxTensors];
static TfLiteAffineQuantization g_affine[kMaxTensors];
static TfLiteFloatArray g_scales[kMaxTensors];
static TfLiteTensor g_temp[kMaxTensors];
static int g_num_tensors = 0;
alignas(16) static uint8_t g_pool[1 << 16];
static size_t g_pool_used = 0;

static void* Persistent(TfLiteContext*, size_t bytes) {
  void* p = g_pool + g_pool_used;
  g_pool_used += (bytes + 15) & ~static_cast<size_t>(15);
  return g_pool_used <= sizeof g_pool ? p : nullptr;
}

static void Report(TfLiteContext*, const char* format, ...) {
  fprintf(stderr, "TFLM error: %s\n", format);
}

namespace tflite {
MicroContext::~MicroContext() {}
static TfLiteTensor* Temp(const TfLiteIntArray* list, int index) {
  const int t = list->data[index];
  if (t < 0) return nullptr;
  TfLiteTensor* x = &g_temp[t];
  x->type = g_eval[t].type;
  x->data = g_eval[t].data;
  x->dims = &g_dims[t];
  x->params = g_params[t];
  x->quantization.params = &g_affine[t];
  return x;
}
TfLiteTensor* MicroContext::AllocateTempInputTensor(const TfLiteNode* node, int index) {
  return Temp(node->inputs, index);
}
TfLiteTensor* MicroContext::AllocateTempOutputTensor(const TfLiteNode* node, int index) {
  return Temp(node->outputs, index);
}
void MicroContext::DeallocateTempTfLiteTensor(TfLiteTensor*) {}
static MicroContext g_micro;
MicroContext* GetMicroContext(const TfLiteContext*) { return &g_micro; }

TfLiteStatus TfLiteTypeSizeOf(TfLiteType type, size_t* size) {
  *size = type == kTfLiteInt32 || type == kTfLiteFloat32 ? 4 : 1;
  return kTfLiteOk;
}
TfLiteStatus TfLiteEvalTensorByteLength(const TfLiteEvalTensor* t, size_t* out) {
  size_t es = 1;
  TfLiteTypeSizeOf(t->type, &es);
  *out = static_cast<size_t>(RuntimeShape(t->dims).FlatSize()) * es;
  return kTfLiteOk;
}
void QuantizeMultiplier(double m, int32_t* q, int* shift) {  // as TFLite
  if (m == 0.) {
    *q = 0;
    *shift = 0;
    return;
  }
  const double f = frexp(m, shift);
  int64_t fixed = static_cast<int64_t>(round(f * (1LL << 31)));
  if (fixed == (1LL << 31)) {
    fixed /= 2;
    ++*shift;
  }
  *q = static_cast<int32_t>(fixed);
}
TfLiteStatus CalculateActivationRangeQuantized(TfLiteContext*, TfLiteFusedActivation act,
                                               TfLiteTensor* out, int32_t* lo, int32_t* hi) {
  *lo = act == kTfLiteActRelu ? (out->params.zero_point > -128 ? out->params.zero_point : -128)
                              : -128;
  *hi = 127;
  return kTfLiteOk;
}
namespace micro {
TFLMRegistration RegisterOp(void* (*init)(TfLiteContext*, const char*, size_t),
                            TfLiteStatus (*prepare)(TfLiteContext*, TfLiteNode*),
                            TfLiteStatus (*invoke)(TfLiteContext*, TfLiteNode*),
                            void (*free)(TfLiteContext*, void*),
                            void (*reset)(TfLiteContext*, void*)) {
  TFLMRegistration r;
  memset(&r, 0, sizeof r);
  r.init = init;
  r.prepare = prepare;
  r.invoke = invoke;
  r.free = free;
  r.reset = reset;
  return r;
}
const TfLiteEvalTensor* GetEvalInput(const TfLiteContext*, const TfLiteNode* node, int i) {
  return i < node->inputs->size && node->inputs->data[i] >= 0 ? &g_eval[node->inputs->data[i]]
                                                              : nullptr;
}
TfLiteEvalTensor* GetEvalOutput(const TfLiteContext*, const TfLiteNode* node, int i) {
  return i < node->outputs->size && node->outputs->data[i] >= 0
             ? &g_eval[node->outputs->data[i]] : nullptr;
}
const RuntimeShape GetTensorShape(const TfLiteEvalTensor* t) { return RuntimeShape(t->dims); }
}  // namespace micro
}  // namespace tflite

static int AddTensor(TfLiteType type, void* data, int n, const int* dims, float scale = 0,
                     int zp = 0) {
  const int t = g_num_tensors++;
  g_dims[t].size = n;
  for (int i = 0; i < n; ++i) g_dims[t].data[i] = dims[i];
  g_eval[t].type = type;
  g_eval[t].data.data = data;
  g_eval[t].dims = &g_dims[t];
  g_params[t].scale = scale;
  g_params[t].zero_point = zp;
  g_affine[t].scale = &g_scales[t];
  g_scales[t].size = 1;
  g_scales[t].data[0] = scale;
  return t;
}

static TfLiteContext g_context = {Persistent, Report};

static int Run(TFLMRegistration* reg, const int32_t* opts, int n_opts,
               std::initializer_list<int> ins, std::initializer_list<int> outs) {
  TfLiteIntArray inputs, outputs;
  inputs.size = 0;
  for (int t : ins) inputs.data[inputs.size++] = t;
  outputs.size = 0;
  for (int t : outs) outputs.data[outputs.size++] = t;
  TfLiteNode node;
  memset(&node, 0, sizeof node);
  node.inputs = &inputs;
  node.outputs = &outputs;
  node.user_data = reg->init ? reg->init(&g_context, reinterpret_cast<const char*>(opts),
                                         sizeof(int32_t) * n_opts) : nullptr;
  if (reg->prepare(&g_context, &node) != kTfLiteOk) return 1;
  return reg->invoke(&g_context, &node) != kTfLiteOk;
}

static int Fail(const char* what) {
  fprintf(stderr, "FAIL %s\n", what);
  return 1;
}

// ---- the scenario ----------------------------------------------------------------------
int main(int argc, char** argv) {
  enum { H = 5, W = 4, CA = 3, CB = 4, KEEP = 1, CO = 5, K = 3 };
  static int8_t a[H * W * CA], b[H * W * CB], b1[H * W * (CB - KEEP)], cat[H * W * (CA + CB)];
  static int8_t want_cat[H * W * (CA + CB)], out[H * W * CO], want_out[H * W * CO];
  static int8_t filt[CO * K * K * (CA + CB)], b_whole[H * W * CB];
  static uint8_t line[K * W * (CB - KEEP)];
  static int32_t bias[CO], sizes[2] = {KEEP, CB - KEEP}, axis[1] = {3};
  if (argc != 2) return Fail("usage: tflm_ops_test STORAGE_FILE");
  srand(7);
  for (int8_t& v : a) v = static_cast<int8_t>(rand() % 3 ? -3 : rand() % 256 - 128);
  for (int8_t& v : b) v = static_cast<int8_t>(rand() % 3 ? -3 : rand() % 256 - 128);
  for (int8_t& v : filt) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int32_t& v : bias) v = rand() % 2000 - 1000;
  memcpy(b_whole, b, sizeof b);
  for (int p = 0; p < H * W; ++p) {
    memcpy(want_cat + p * (CA + CB), a + p * CA, CA);
    memcpy(want_cat + p * (CA + CB) + CA, b + p * CB, CB);
  }
  tp_storage storage;
  tp_file_storage file;
  if (tp_file_storage_open(&storage, &file, argv[1], 4096) != TP_OK) return Fail("storage");
  tp_storage* storages[1] = {&storage};
  tp_tflm_set_storages(storages, 1, 1u);  // compression on

  const int d_a[4] = {1, H, W, CA}, d_b[4] = {1, H, W, CB}, d_b0[4] = {1, H, W, KEEP};
  const int d_b1[4] = {1, H, W, CB - KEEP}, d_cat[4] = {1, H, W, CA + CB};
  const int d_out[4] = {1, H, W, CO}, d_f[4] = {CO, K, K, CA + CB}, d_n[1] = {CO};
  const int d_line[1] = {static_cast<int>(sizeof line)}, d_two[1] = {2}, d_one[1] = {1};
  const float in_scale = 0.05f, out_scale = 0.3f, f_scale = 0.01f;
  const int in_zp = -3, out_zp = 4;
  const int ta = AddTensor(kTfLiteInt8, a, 4, d_a, in_scale, in_zp);
  const int tb = AddTensor(kTfLiteInt8, b, 4, d_b, in_scale, in_zp);
  const int tb0 = AddTensor(kTfLiteInt8, b, 4, d_b0, in_scale, in_zp);  // aliases b: in place
  const int tb1 = AddTensor(kTfLiteInt8, b1, 4, d_b1, in_scale, in_zp);
  const int tsz = AddTensor(kTfLiteInt32, sizes, 1, d_two);
  const int tax = AddTensor(kTfLiteInt32, axis, 1, d_one);
  const int tcat = AddTensor(kTfLiteInt8, cat, 4, d_cat, in_scale, in_zp);
  const int tline = AddTensor(kTfLiteInt8, line, 1, d_line);
  const int tf = AddTensor(kTfLiteInt8, filt, 4, d_f, f_scale);
  const int tbias = AddTensor(kTfLiteInt32, bias, 1, d_n);
  const int tout = AddTensor(kTfLiteInt8, out, 4, d_out, out_scale, out_zp);
  const int32_t part_bytes = H * W * (CB - KEEP);

  // Spill part 1 (channels 1..4) of b while b is still whole (interleaved).
  const int32_t spill[8] = {1, 0, 128, part_bytes, 3, KEEP, CB, 1};
  if (Run(tinyplan::Register_SPILL(), spill, 8, {tb}, {})) return Fail("Spill");
  // SPLIT_V in place: part 0 compacted at b's own address; part 1 is dead.
  if (Run(tinyplan::Register_SPLIT_V_IN_PLACE(), nullptr, 0, {tb, tsz, tax}, {tb0, tb1}))
    return Fail("SPLIT_V");
  for (int p = 0; p < H * W; ++p)
    if (b[p] != b_whole[p * CB]) return Fail("SPLIT_V did not compact part 0");
  // Fetch part 1 back into its own tensor.
  if (Run(tinyplan::Register_FETCH(), spill, 8, {}, {tb1})) return Fail("Fetch");
  for (int p = 0; p < H * W; ++p)
    if (memcmp(b1 + p * (CB - KEEP), b_whole + p * CB + KEEP, CB - KEEP) != 0)
      return Fail("Fetch data");
  // FusedConcat: a resident, part 0 resident (compact), part 1 streamed through `line`.
  int32_t fused[9 + 3 * 8] = {1, 3, 3, 0, 0, 1, 1, 1, 1,
                              0, -1, -1, H * W * CA, 0, CA, -1, 0,
                              0, -1, -1, H * W * KEEP, 0, KEEP, -1, 0,
                              1, 0, 128, part_bytes, KEEP, CB, 0, 1};
  if (Run(tinyplan::Register_FUSED_CONCAT(), fused, 33, {ta, tb0, -1}, {tcat, tline}))
    return Fail("FusedConcat");
  if (memcmp(cat, want_cat, sizeof cat) != 0) return Fail("FusedConcat data");
  // FusedConcatConv2D, 3x3 SAME, ReLU, kernel-height line buffer.
  fused[3] = kTfLiteActRelu;
  fused[9 + 2 * 8 + 7] = K;
  memset(line, 0, sizeof line);
  if (Run(tinyplan::Register_FUSED_CONCAT_CONV2D(), fused, 33, {ta, tb0, -1, tf, tbias},
          {tout, tline}))
    return Fail("FusedConcatConv2D");
  // The same conv over the materialised concat, straight through the kernel.
  tp_conv_params p;
  memset(&p, 0, sizeof p);
  int32_t mult[CO], shift[CO];
  for (int c = 0; c < CO; ++c) {
    int s = 0;
    tflite::QuantizeMultiplier(static_cast<double>(in_scale) * static_cast<double>(f_scale) /
                                   static_cast<double>(out_scale), &mult[c], &s);
    shift[c] = s;
  }
  p.in_h = p.out_h = H;
  p.in_w = p.out_w = W;
  p.in_c = CA + CB;
  p.out_c = CO;
  p.k_h = p.k_w = K;
  p.stride_h = p.stride_w = p.dilation_h = p.dilation_w = 1;
  p.pad_top = p.pad_left = 1;
  p.input_offset = -in_zp;
  p.output_offset = out_zp;
  p.act_min = out_zp;
  p.act_max = 127;
  p.filter = filt;
  p.bias = bias;
  p.out_multiplier = mult;
  p.out_shift = shift;
  tp_slice whole;
  whole.channels = CA + CB;
  whole.data = want_cat;
  whole.pixel_stride = CA + CB;
  whole.stream = nullptr;
  if (tp_fused_concat_conv2d(nullptr, &p, &whole, 1, want_out) != TP_OK)
    return Fail("reference conv");
  if (memcmp(out, want_out, sizeof out) != 0) return Fail("FusedConcatConv2D data");
  int distinct = 0;
  for (int i = 0; i < H * W * CO; ++i) distinct += out[i] != out[0];
  if (distinct == 0) return Fail("constant output");
  tp_file_storage_close(&storage);
  printf("ok\n");
  return 0;
}
