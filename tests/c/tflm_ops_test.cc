// Drives backends/c/tflm_ops.cc through a minimal fake of the TFLM API (tflm_api_stub/
// declares it, this file implements it) the way a rewritten .tflite would, registering
// every op as an application does (docs/c_runtime.md): Spill of a still-interleaved tensor
// and of a whole tensor sharing its flash erase block, TinyPlanSplit, Fetch, FusedConcat,
// FusedConcatConv2D (plain, grouped, depthwise) with one input part streamed from storage,
// TinyPlanTransposeConv with and without bias. Every node is initialised and prepared
// once and invoked for N inferences in a row, as TFLM does; every output is checked
// against a direct computation and against the first inference. Not a substitute for
// real TFLM; it checks option parsing, scratch requests and data paths.
//   tflm_ops_test INFERENCES file:PATH | flash:GRANULE:BLOCK | tcp:PORT
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
#include "tp_rows.h"
#include "tp_storage.h"
#include "tp_stream_tcp.h"
}

namespace tinyplan {
TFLMRegistration* Register_SPILL();
TFLMRegistration* Register_FETCH();
TFLMRegistration* Register_FUSED_CONCAT();
TFLMRegistration* Register_FUSED_CONCAT_CONV2D();
TFLMRegistration* Register_TRANSPOSE_CONV_ROWS();
TFLMRegistration* Register_SPLIT();
TFLMRegistration* Register_STREAMED_GROUP();
}  // namespace tinyplan
extern "C" int tp_tflm_set_storages(tp_storage* const* storages, uint32_t count,
                                    uint32_t compress_mask);

// ---- the fake TFLM ---------------------------------------------------------------------
static const int kMaxTensors = 32;
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

// Scratch buffers: requested in Prepare, handed out in Invoke (as TFLM's arena does).
static const int kMaxScratch = 8;
alignas(16) static uint8_t g_scratch_pool[1 << 14];
static size_t g_scratch_used = 0, g_scratch_bytes[kMaxScratch];
static uint8_t* g_scratch[kMaxScratch];
static int g_num_scratch = 0;

static TfLiteStatus RequestScratch(TfLiteContext*, size_t bytes, int* index) {
  if (g_num_scratch == kMaxScratch || g_scratch_used + bytes > sizeof g_scratch_pool)
    return kTfLiteError;
  g_scratch[g_num_scratch] = g_scratch_pool + g_scratch_used;
  g_scratch_bytes[g_num_scratch] = bytes;
  g_scratch_used += (bytes + 15) & ~static_cast<size_t>(15);
  *index = g_num_scratch++;
  return kTfLiteOk;
}

static void* GetScratch(TfLiteContext*, int index) {
  if (index < 0 || index >= g_num_scratch) return nullptr;
  memset(g_scratch[index], 0xA5, g_scratch_bytes[index]);  // never zero-initialised
  return g_scratch[index];
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
  *size = type == kTfLiteInt64 ? 8 : type == kTfLiteInt32 || type == kTfLiteFloat32 ? 4
         : type == kTfLiteInt16 ? 2 : 1;
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
  const int32_t qmin = out->type == kTfLiteInt16 ? -32768 : -128;
  const int32_t qmax = out->type == kTfLiteInt16 ? 32767 : 127;
  *lo = act == kTfLiteActRelu || act == kTfLiteActRelu6
            ? (out->params.zero_point > qmin ? out->params.zero_point : qmin) : qmin;
  *hi = qmax;
  if (act == kTfLiteActRelu6) {
    const int32_t six = out->params.zero_point +
                        static_cast<int32_t>(roundf(6.0f / out->params.scale));
    *hi = six < 127 ? six : 127;
  }
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

static void PerChannelScales(int t, const float* scales, int n) {
  g_scales[t].size = n;
  for (int i = 0; i < n; ++i) g_scales[t].data[i] = scales[i];
}

static TfLiteContext g_context = {Persistent, Report, RequestScratch, GetScratch};

// One node of the fake graph: initialised and prepared once, invoked every inference.
struct Node {
  TFLMRegistration* reg;
  TfLiteIntArray inputs, outputs;
  TfLiteNode node;
};

static bool Prepare(Node* n, TFLMRegistration* reg, const int32_t* opts, int n_opts,
                    std::initializer_list<int> ins, std::initializer_list<int> outs) {
  n->reg = reg;
  n->inputs.size = 0;
  for (int t : ins) n->inputs.data[n->inputs.size++] = t;
  n->outputs.size = 0;
  for (int t : outs) n->outputs.data[n->outputs.size++] = t;
  memset(&n->node, 0, sizeof n->node);
  n->node.inputs = &n->inputs;
  n->node.outputs = &n->outputs;
  n->node.user_data = reg->init ? reg->init(&g_context, reinterpret_cast<const char*>(opts),
                                            sizeof(int32_t) * n_opts) : nullptr;
  return reg->prepare(&g_context, &n->node) == kTfLiteOk;
}

static bool Invoke(Node* n) { return n->reg->invoke(&g_context, &n->node) == kTfLiteOk; }

static int Fail(const char* what) {
  fprintf(stderr, "FAIL %s\n", what);
  return 1;
}

// ---- direct computations ---------------------------------------------------------------
static void Multipliers(float in_scale, const float* f_scales, int n_scales, float out_scale,
                        int channels, int32_t* mult, int32_t* shift) {
  for (int c = 0; c < channels; ++c) {
    int s = 0;
    tflite::QuantizeMultiplier(static_cast<double>(in_scale) *
                                   static_cast<double>(f_scales[n_scales == 1 ? 0 : c]) /
                                   static_cast<double>(out_scale), &mult[c], &s);
    shift[c] = s;
  }
}

static int8_t Requantize(int32_t acc, int32_t mult, int32_t shift, int zp, int lo, int hi) {
  acc = tp_multiply_by_quantized_multiplier(acc, mult, shift) + zp;
  return static_cast<int8_t>(acc < lo ? lo : acc > hi ? hi : acc);
}

// Grouped (groups = c / fc) or depthwise 'SAME' stride-1 conv, straight from the definition.
static void DirectConv(const int8_t* x, int h, int w, int c, const int8_t* f, int k, int fc,
                       bool depthwise, const int32_t* bias, int oc_n, int in_zp, int out_zp,
                       const int32_t* mult, const int32_t* shift, int lo, int hi, int8_t* y) {
  const int pad = (k - 1) / 2, per_group = depthwise ? oc_n / c : oc_n / (c / fc);
  for (int oy = 0; oy < h; ++oy)
    for (int ox = 0; ox < w; ++ox)
      for (int oc = 0; oc < oc_n; ++oc) {
        int32_t acc = bias ? bias[oc] : 0;
        const int gin = depthwise ? 1 : fc, c0 = (oc / per_group) * gin;
        for (int ky = 0; ky < k; ++ky)
          for (int kx = 0; kx < k; ++kx) {
            const int iy = oy - pad + ky, ix = ox - pad + kx;
            if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
            for (int j = 0; j < gin; ++j) {
              const int fv = depthwise ? f[(ky * k + kx) * oc_n + oc]
                                       : f[((oc * k + ky) * k + kx) * fc + j];
              acc += fv * (x[(iy * w + ix) * c + c0 + j] - in_zp);
            }
          }
        y[(oy * w + ox) * oc_n + oc] = Requantize(acc, mult[oc], shift[oc], out_zp, lo, hi);
      }
}

// TFLite's reference TRANSPOSE_CONV: scatter into an int32 buffer of the whole output.
static void ScatterTconv(const int8_t* x, int h, int w, int c, const int8_t* f, int kh, int kw,
                         int sh, int sw, int pt, int pl, const int32_t* bias, int oh, int ow,
                         int oc_n, int in_zp, int out_zp, const int32_t* mult,
                         const int32_t* shift, int lo, int hi, int8_t* y) {
  static int32_t acc[1 << 14];
  memset(acc, 0, sizeof(int32_t) * oh * ow * oc_n);
  for (int iy = 0; iy < h; ++iy)
    for (int ix = 0; ix < w; ++ix)
      for (int ic = 0; ic < c; ++ic)
        for (int ky = 0; ky < kh; ++ky)
          for (int kx = 0; kx < kw; ++kx)
            for (int oc = 0; oc < oc_n; ++oc) {
              const int oy = iy * sh - pt + ky, ox = ix * sw - pl + kx;
              if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
              acc[(oy * ow + ox) * oc_n + oc] +=
                  (x[(iy * w + ix) * c + ic] - in_zp) * f[((oc * kh + ky) * kw + kx) * c + ic];
            }
  for (int i = 0; i < oh * ow * oc_n; ++i)
    y[i] = Requantize(acc[i] + (bias ? bias[i % oc_n] : 0), mult[i % oc_n], shift[i % oc_n],
                      out_zp, lo, hi);
}

// The 16x8 reference: int16 input, zero points 0, int64 scatter buffer and bias.
static void ScatterTconv16(const int16_t* x, int h, int w, int c, const int8_t* f, int k, int s,
                           int pad, const int64_t* bias, int oh, int ow, int oc_n,
                           const int32_t* mult, const int32_t* shift, int16_t* y) {
  static int64_t acc[1 << 14];
  memset(acc, 0, sizeof(int64_t) * oh * ow * oc_n);
  for (int iy = 0; iy < h; ++iy)
    for (int ix = 0; ix < w; ++ix)
      for (int ic = 0; ic < c; ++ic)
        for (int ky = 0; ky < k; ++ky)
          for (int kx = 0; kx < k; ++kx)
            for (int oc = 0; oc < oc_n; ++oc) {
              const int oy = iy * s - pad + ky, ox = ix * s - pad + kx;
              if (oy < 0 || oy >= oh || ox < 0 || ox >= ow) continue;
              acc[(oy * ow + ox) * oc_n + oc] +=
                  x[(iy * w + ix) * c + ic] * f[((oc * k + ky) * k + kx) * c + ic];
            }
  for (int i = 0; i < oh * ow * oc_n; ++i) {
    int32_t v = tp_multiply_by_quantized_multiplier64(acc[i] + bias[i % oc_n], mult[i % oc_n],
                                                      shift[i % oc_n]);
    y[i] = static_cast<int16_t>(v < -32768 ? -32768 : v > 32767 ? 32767 : v);
  }
}

// ---- storages ---------------------------------------------------------------------------
static tp_file_storage g_file;
static tp_flash_storage g_flash;
static tp_flash_ram g_ram;
static tp_tcp_stream g_tcp;
static tp_remote_storage g_remote;
static uint8_t g_image[4096];

static int OpenStorage(const char* spec, tp_storage* s) {
  if (strncmp(spec, "file:", 5) == 0) return tp_file_storage_open(s, &g_file, spec + 5, 4096);
  if (strncmp(spec, "flash:", 6) == 0) {
    const char* colon = strchr(spec + 6, ':');
    if (colon == nullptr) return TP_ECONFIG;
    tp_flash_hal hal;
    tp_flash_ram_hal(&hal, &g_ram, g_image, sizeof g_image, static_cast<uint32_t>(atoi(colon + 1)),
                     static_cast<uint32_t>(atoi(spec + 6)));
    return tp_flash_storage_init(s, &g_flash, &hal);
  }
  if (strncmp(spec, "tcp:", 4) == 0) {
    tp_byte_stream io;
    const int rc = tp_tcp_stream_open(&io, &g_tcp, "127.0.0.1",
                                      static_cast<uint16_t>(atoi(spec + 4)));
    return rc != TP_OK ? rc : tp_remote_storage_init(s, &g_remote, &io, 4096, 3, 1000);
  }
  return TP_ECONFIG;
}

// ---- the scenario ----------------------------------------------------------------------
int main(int argc, char** argv) {
  enum { H = 5, W = 4, CA = 3, CB = 4, KEEP = 1, C = CA + CB, CO = 5, K = 3, GO = 14, CT = 3 };
  enum { UH = 2 * H, UW = 2 * W, VH = H + 1, VW = 2 * W + 1 };
  // Two input sets, alternating over the inferences: NOR programming ANDs, so rewriting
  // the same bytes over unerased flash would pass unnoticed; different bytes do not.
  static int8_t a[H * W * CA], a_src[2][H * W * CA], a2[H * W * CA];
  static int8_t b[H * W * CB], b_src[2][H * W * CB], b1[H * W * (CB - KEEP)];
  static int8_t cat[H * W * C], want_cat[2][H * W * C];
  static int8_t out[H * W * CO], want_out[2][H * W * CO], first_out[H * W * CO];
  static int8_t gout[H * W * GO], want_g[2][H * W * GO], dout[H * W * GO], want_d[2][H * W * GO];
  static int8_t up[UH * UW * CT], want_up[2][UH * UW * CT], up2[VH * VW * CT];
  static int8_t want_up2[2][VH * VW * CT];
  static int8_t filt[CO * K * K * C], gfilt[GO * K * K * 1], dfilt[K * K * GO];
  static int8_t tfilt[CT * 3 * 3 * CO], tfilt2[CT * 2 * 3 * CO];
  static uint8_t line[K * W * (CB - KEEP)];
  static int32_t bias[CO], gbias[GO], t_bias[CT];
  static int32_t up_shape[4] = {1, UH, UW, CT}, up2_shape[4] = {1, VH, VW, CT};
  static int16_t x16[H * W * CO], up16[UH * UW * CT], want_up16[UH * UW * CT];
  static int64_t bias64[CT];
  if (argc != 3) return Fail("usage: tflm_ops_test INFERENCES STORAGE_SPEC");
  const int inferences = atoi(argv[1]);
  srand(7);
  for (int set = 0; set < 2; ++set) {
    for (int8_t& v : a_src[set]) v = static_cast<int8_t>(rand() % 3 ? -3 : rand() % 256 - 128);
    for (int8_t& v : b_src[set]) v = static_cast<int8_t>(rand() % 3 ? -3 : rand() % 256 - 128);
  }
  for (int8_t& v : filt) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int8_t& v : gfilt) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int8_t& v : dfilt) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int8_t& v : tfilt) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int8_t& v : tfilt2) v = static_cast<int8_t>(rand() % 255 - 127);
  for (int32_t& v : bias) v = rand() % 2000 - 1000;
  for (int32_t& v : gbias) v = rand() % 2000 - 1000;
  for (int32_t& v : t_bias) v = rand() % 2000 - 1000;
  for (int16_t& v : x16) v = static_cast<int16_t>(rand() % 65536 - 32768);
  for (int64_t& v : bias64) v = rand() % 400000 - 200000;
  tp_storage storage;
  if (OpenStorage(argv[2], &storage) != TP_OK) return Fail("storage");
  tp_storage* storages[1] = {&storage};
  tp_tflm_set_storages(storages, 1, 1u);  // compression on

  const int d_a[4] = {1, H, W, CA}, d_b[4] = {1, H, W, CB}, d_b0[4] = {1, H, W, KEEP};
  const int d_b1[4] = {1, H, W, CB - KEEP}, d_cat[4] = {1, H, W, C};
  const int d_out[4] = {1, H, W, CO}, d_f[4] = {CO, K, K, C}, d_n[1] = {CO};
  const int d_g[4] = {1, H, W, GO}, d_gf[4] = {GO, K, K, 1}, d_df[4] = {1, K, K, GO};
  const int d_gn[1] = {GO}, d_tf[4] = {CT, 3, 3, CO}, d_tf2[4] = {CT, 2, 3, CO}, d_tn[1] = {CT};
  const int d_up[4] = {1, UH, UW, CT}, d_up2[4] = {1, VH, VW, CT}, d_four[1] = {4};
  const int d_line[1] = {static_cast<int>(sizeof line)};
  const float in_scale = 0.05f, out_scale = 0.3f, f_scale = 0.01f, g_scale = 0.2f;
  const float up_scale = 0.4f;
  float g_scales[GO], t_scales[CT];
  for (int i = 0; i < GO; ++i) g_scales[i] = 0.004f + 0.001f * i;
  for (int i = 0; i < CT; ++i) t_scales[i] = 0.003f + 0.002f * i;
  const int in_zp = -3, out_zp = 4, g_zp = -10, up_zp = 2;
  const int ta = AddTensor(kTfLiteInt8, a, 4, d_a, in_scale, in_zp);
  const int tb = AddTensor(kTfLiteInt8, b, 4, d_b, in_scale, in_zp);
  const int tb0 = AddTensor(kTfLiteInt8, b, 4, d_b0, in_scale, in_zp);  // aliases b: in place
  const int tb1 = AddTensor(kTfLiteInt8, b1, 4, d_b1, in_scale, in_zp);
  const int ta2 = AddTensor(kTfLiteInt8, a2, 4, d_a, in_scale, in_zp);
  const int tcat = AddTensor(kTfLiteInt8, cat, 4, d_cat, in_scale, in_zp);
  const int tline = AddTensor(kTfLiteInt8, line, 1, d_line);
  const int tf = AddTensor(kTfLiteInt8, filt, 4, d_f, f_scale);
  const int tbias = AddTensor(kTfLiteInt32, bias, 1, d_n);
  const int tout = AddTensor(kTfLiteInt8, out, 4, d_out, out_scale, out_zp);
  const int tgf = AddTensor(kTfLiteInt8, gfilt, 4, d_gf, g_scales[0]);
  PerChannelScales(tgf, g_scales, GO);
  const int tdf = AddTensor(kTfLiteInt8, dfilt, 4, d_df, g_scales[0]);
  PerChannelScales(tdf, g_scales, GO);
  const int tgb = AddTensor(kTfLiteInt32, gbias, 1, d_gn);
  const int tgout = AddTensor(kTfLiteInt8, gout, 4, d_g, g_scale, g_zp);
  const int tdout = AddTensor(kTfLiteInt8, dout, 4, d_g, g_scale, g_zp);
  const int ttf = AddTensor(kTfLiteInt8, tfilt, 4, d_tf, t_scales[0]);
  PerChannelScales(ttf, t_scales, CT);
  const int ttf2 = AddTensor(kTfLiteInt8, tfilt2, 4, d_tf2, t_scales[0]);
  PerChannelScales(ttf2, t_scales, CT);
  const int ttb = AddTensor(kTfLiteInt32, t_bias, 1, d_tn);
  const int tshape = AddTensor(kTfLiteInt32, up_shape, 1, d_four);
  const int tshape2 = AddTensor(kTfLiteInt32, up2_shape, 1, d_four);
  const int tup = AddTensor(kTfLiteInt8, up, 4, d_up, up_scale, up_zp);
  const int tup2 = AddTensor(kTfLiteInt8, up2, 4, d_up2, up_scale, up_zp);
  const int tx16 = AddTensor(kTfLiteInt16, x16, 4, d_out, 0.0005f, 0);
  const int tb64 = AddTensor(kTfLiteInt64, bias64, 1, d_tn);
  const int tup16 = AddTensor(kTfLiteInt16, up16, 4, d_up, 0.004f, 0);
  const int32_t part_bytes = H * W * (CB - KEEP), a_bytes = H * W * CA;

  // Part 1 of b at 128 and the whole of a at 200: with 128-byte erase blocks both live
  // in block 128, so a's Spill must not erase it again within one inference.
  const int32_t spill_b[8] = {1, 0, 128, part_bytes, 3, KEEP, CB, 1};
  const int32_t spill_a[8] = {1, 0, 200, a_bytes, 3, 0, CA, -1};
  const int32_t split[3] = {1, 3, KEEP};
  int32_t fused[9 + 3 * 8] = {1, 3, 3, 0, 0, 1, 1, 1, 1,
                              0, -1, -1, H * W * CA, 0, CA, -1, 0,
                              0, -1, -1, H * W * KEEP, 0, KEEP, -1, 0,
                              1, 0, 128, part_bytes, KEEP, CB, 0, 1};
  static Node n_spill_b, n_spill_a, n_split, n_fetch_b, n_fetch_a, n_concat, n_conv, n_gconv,
      n_dconv, n_tconv, n_tconv2, n_tconv16;
  using tinyplan::Register_FUSED_CONCAT_CONV2D;
  bool ok = Prepare(&n_spill_b, tinyplan::Register_SPILL(), spill_b, 8, {tb}, {}) &&
            Prepare(&n_spill_a, tinyplan::Register_SPILL(), spill_a, 8, {ta}, {}) &&
            Prepare(&n_split, tinyplan::Register_SPLIT(), split, 3, {tb}, {tb0, tb1}) &&
            Prepare(&n_fetch_b, tinyplan::Register_FETCH(), spill_b, 8, {}, {tb1}) &&
            Prepare(&n_fetch_a, tinyplan::Register_FETCH(), spill_a, 8, {}, {ta2}) &&
            Prepare(&n_concat, tinyplan::Register_FUSED_CONCAT(), fused, 33, {ta, tb0, -1},
                    {tcat, tline});
  if (!ok) return Fail("prepare transfers / split / concat");
  fused[3] = kTfLiteActRelu;  // the conv's activation
  fused[9 + 2 * 8 + 7] = K;   // kernel-height line buffer
  ok = Prepare(&n_conv, Register_FUSED_CONCAT_CONV2D(), fused, 33, {ta, tb0, -1, tf, tbias},
               {tout, tline}) &&
       Prepare(&n_gconv, Register_FUSED_CONCAT_CONV2D(), fused, 33, {ta, tb0, -1, tgf, tgb},
               {tgout, tline});
  fused[3] = kTfLiteActRelu6;
  ok = ok && Prepare(&n_dconv, Register_FUSED_CONCAT_CONV2D(), fused, 33,
                     {ta, tb0, -1, tdf, tgb}, {tdout, tline});
  const int32_t tconv[5] = {1, 0, 2, 2, kTfLiteActRelu};    // SAME, stride 2, ReLU, bias
  const int32_t tconv2[5] = {1, 1, 1, 2, kTfLiteActNone};   // VALID, stride (1, 2), no bias
  const int scratch_before = g_num_scratch;
  ok = ok && Prepare(&n_tconv, tinyplan::Register_TRANSPOSE_CONV_ROWS(), tconv, 5,
                     {tshape, ttf, tout, ttb}, {tup}) &&
       Prepare(&n_tconv2, tinyplan::Register_TRANSPOSE_CONV_ROWS(), tconv2, 5,
               {tshape2, ttf2, tout}, {tup2});
  const int32_t tconv16[5] = {1, 0, 2, 2, kTfLiteActNone};  // 16x8, SAME, stride 2, bias
  ok = ok && Prepare(&n_tconv16, tinyplan::Register_TRANSPOSE_CONV_ROWS(), tconv16, 5,
                     {tshape, ttf, tx16, tb64}, {tup16});
  if (!ok) return Fail("prepare convolutions");
  // A streamed group of two row copies (CONCATENATION of one input): a streamed from its
  // (compressed) spill at 200 row by row, through a one-row ring, spilled row by row raw
  // at 1024 (its own erase block), then fetched back by a plain Fetch.
  static int8_t rows_line[W * CA], ring[W * CA], in_line[W * CA], a3[H * W * CA];
  const int d_row[1] = {W * CA};
  const int t_rows_line = AddTensor(kTfLiteInt8, rows_line, 1, d_row);
  const int t_ring = AddTensor(kTfLiteInt8, ring, 1, d_row);
  const int t_in_line = AddTensor(kTfLiteInt8, in_line, 1, d_row);
  const int ta3 = AddTensor(kTfLiteInt8, a3, 4, d_a, in_scale, in_zp);
  enum { kGroupWords = 6 + 3 * 5 + 2 * 7 + 2 * 3 * H };
  int32_t group[2 + kGroupWords] = {
      1, 0,                                       // version, storage
      TP_GROUP_MAGIC, TP_GROUP_VERSION, 3, 2, 3 * H, kGroupWords,
      TP_VIEW_STREAM_IN, H, W * CA, 1, 200,       // view 0: the group's input, streamed
      TP_VIEW_SPILL_ROWS, H, W * CA, 1, 1024,     // view 1: its output, spilled row by row
      TP_VIEW_RING, H, W * CA, 1, 0,              // view 2: the tensor between the members
      TP_OPK_CONCAT, 7, 1, 0, 2, W, CA,
      TP_OPK_CONCAT, 7, 1, 2, 1, W, CA};
  for (int r = 0; r < H; ++r) {  // load input row r (view 0), copy it twice
    int32_t* at = group + 2 + 6 + 3 * 5 + 2 * 7 + 6 * r;
    at[0] = -1, at[1] = r, at[2] = 0, at[3] = r, at[4] = 1, at[5] = r;
  }
  const int32_t fetch_rows[8] = {1, 0, 1024, a_bytes, 3, 0, CA, -1};
  static Node n_group, n_fetch_rows;
  ok = Prepare(&n_group, tinyplan::Register_STREAMED_GROUP(), group,
               static_cast<int>(sizeof group / 4), {-1}, {t_rows_line, t_ring, t_in_line}) &&
       Prepare(&n_fetch_rows, tinyplan::Register_FETCH(), fetch_rows, 8, {}, {ta3});
  if (!ok) return Fail("prepare TinyPlanStreamedGroup");
  static Node n_bad;
  group[2 + 6 + 5 + 3] = 2;  // the spilled view would need two rows of a one-row buffer
  if (Prepare(&n_bad, tinyplan::Register_STREAMED_GROUP(), group,
              static_cast<int>(sizeof group / 4), {-1}, {t_rows_line, t_ring, t_in_line}))
    return Fail("TinyPlanStreamedGroup accepted a buffer smaller than its view");
  group[2 + 6 + 5 + 3] = 1;
  // One output row of accumulators each (int32; int64 for 16x8), not the whole output.
  if (g_num_scratch != scratch_before + 3 || g_scratch_bytes[scratch_before] != UW * CT * 4u ||
      g_scratch_bytes[scratch_before + 1] != VW * CT * 4u ||
      g_scratch_bytes[scratch_before + 2] != UW * CT * 8u)
    return Fail("TinyPlanTransposeConv scratch request");

  // Expected values, from the definitions.
  int32_t mult[CO], shift[CO], gmult[GO], gshift[GO], tmult[CT], tshift[CT];
  int32_t mult16[CT], shift16[CT];
  Multipliers(0.0005f, t_scales, CT, 0.004f, CT, mult16, shift16);
  ScatterTconv16(x16, H, W, CO, tfilt, 3, 2, (((UH + 1) / 2 - 1) * 2 + 3 - UH) / 2, bias64, UH,
                 UW, CT, mult16, shift16, want_up16);
  Multipliers(in_scale, &f_scale, 1, out_scale, CO, mult, shift);
  Multipliers(in_scale, g_scales, GO, g_scale, GO, gmult, gshift);
  Multipliers(out_scale, t_scales, CT, up_scale, CT, tmult, tshift);
  const int six = g_zp + static_cast<int>(roundf(6.0f / g_scale));
  for (int set = 0; set < 2; ++set) {
    for (int p = 0; p < H * W; ++p) {
      memcpy(want_cat[set] + p * C, a_src[set] + p * CA, CA);
      memcpy(want_cat[set] + p * C + CA, b_src[set] + p * CB, CB);
    }
    DirectConv(want_cat[set], H, W, C, filt, K, C, false, bias, CO, in_zp, out_zp, mult, shift,
               out_zp, 127, want_out[set]);
    DirectConv(want_cat[set], H, W, C, gfilt, K, 1, false, gbias, GO, in_zp, g_zp, gmult, gshift,
               g_zp, 127, want_g[set]);
    DirectConv(want_cat[set], H, W, C, dfilt, K, 1, true, gbias, GO, in_zp, g_zp, gmult, gshift,
               g_zp, six < 127 ? six : 127, want_d[set]);
    // SAME: padding from the output size ((ceil(UH/2) - 1) * 2 + 3 - UH) / 2; VALID: 0.
    ScatterTconv(want_out[set], H, W, CO, tfilt, 3, 3, 2, 2,
                 (((UH + 1) / 2 - 1) * 2 + 3 - UH) / 2, (((UW + 1) / 2 - 1) * 2 + 3 - UW) / 2,
                 t_bias, UH, UW, CT, out_zp, up_zp, tmult, tshift, up_zp, 127, want_up[set]);
    ScatterTconv(want_out[set], H, W, CO, tfilt2, 2, 3, 1, 2, 0, 0, nullptr, VH, VW, CT, out_zp,
                 up_zp, tmult, tshift, -128, 127, want_up2[set]);
  }

  for (int run = 0; run < inferences; ++run) {
    const int set = run % 2;
    memcpy(a, a_src[set], sizeof a);  // the producers write a and b (interleaved)
    memcpy(b, b_src[set], sizeof b);
    memset(b1, 0x5A, sizeof b1);
    memset(a2, 0x5A, sizeof a2);
    memset(cat, 0x5A, sizeof cat);
    memset(out, 0x5A, sizeof out);
    memset(gout, 0x5A, sizeof gout);
    memset(dout, 0x5A, sizeof dout);
    memset(up, 0x5A, sizeof up);
    memset(up2, 0x5A, sizeof up2);
    if (!Invoke(&n_spill_b) || !Invoke(&n_spill_a)) return Fail("Spill");
    if (!Invoke(&n_split)) return Fail("TinyPlanSplit");
    for (int p = 0; p < H * W; ++p)
      if (b[p] != b_src[set][p * CB]) return Fail("TinyPlanSplit did not compact part 0");
    if (!Invoke(&n_fetch_b) || !Invoke(&n_fetch_a)) return Fail("Fetch");
    for (int p = 0; p < H * W; ++p)
      if (memcmp(b1 + p * (CB - KEEP), b_src[set] + p * CB + KEEP, CB - KEEP) != 0)
        return Fail("Fetch data (part 1)");
    if (memcmp(a2, a_src[set], sizeof a2) != 0) return Fail("Fetch data (whole tensor)");
    memset(a3, 0x5A, sizeof a3);
    if (!Invoke(&n_group)) return Fail("TinyPlanStreamedGroup");
    if (!Invoke(&n_fetch_rows)) return Fail("Fetch of rows a group spilled");
    if (memcmp(a3, a_src[set], sizeof a3) != 0) return Fail("TinyPlanStreamedGroup data");
    if (!Invoke(&n_concat)) return Fail("FusedConcat");
    if (memcmp(cat, want_cat[set], sizeof cat) != 0) return Fail("FusedConcat data");
    memset(line, 0, sizeof line);
    if (!Invoke(&n_conv)) return Fail("FusedConcatConv2D");
    if (memcmp(out, want_out[set], sizeof out) != 0) return Fail("FusedConcatConv2D data");
    if (!Invoke(&n_gconv)) return Fail("FusedConcatConv2D grouped");
    if (memcmp(gout, want_g[set], sizeof gout) != 0) return Fail("grouped FusedConcatConv2D data");
    if (!Invoke(&n_dconv)) return Fail("FusedConcatConv2D depthwise");
    if (memcmp(dout, want_d[set], sizeof dout) != 0) return Fail("depthwise FusedConcatConv2D data");
    if (!Invoke(&n_tconv) || !Invoke(&n_tconv2)) return Fail("TinyPlanTransposeConv");
    if (memcmp(up, want_up[set], sizeof up) != 0) return Fail("TinyPlanTransposeConv data (SAME)");
    if (memcmp(up2, want_up2[set], sizeof up2) != 0) return Fail("TinyPlanTransposeConv data (VALID)");
    memset(up16, 0x5A, sizeof up16);
    if (!Invoke(&n_tconv16)) return Fail("TinyPlanTransposeConv 16x8");
    if (memcmp(up16, want_up16, sizeof up16) != 0) return Fail("TinyPlanTransposeConv data (16x8)");
    if (run == 0) memcpy(first_out, out, sizeof out);
    if (set == 0 && memcmp(first_out, out, sizeof out) != 0) return Fail("inferences differ");
  }
  int distinct = 0;
  for (int i = 0; i < H * W * CO; ++i) distinct += out[i] != out[0];
  for (int i = 1; i < UH * UW * CT; ++i) distinct += up[i] != up[0];
  if (distinct < 20) return Fail("constant output");
  int distinct16 = 0;
  for (int i = 1; i < UH * UW * CT; ++i) distinct16 += up16[i] != up16[0];
  if (distinct16 < 20) return Fail("constant 16x8 output");
  if (strncmp(argv[2], "file:", 5) == 0) tp_file_storage_close(&storage);
  if (strncmp(argv[2], "tcp:", 4) == 0) tp_tcp_stream_close(&g_tcp);
  printf("ok inferences=%d erases=%u\n", inferences, static_cast<unsigned>(g_flash.erases));
  return 0;
}
