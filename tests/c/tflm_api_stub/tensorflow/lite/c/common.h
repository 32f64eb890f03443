// API-shape stub of TFLM's C types, only for a compile check of backends/c/tflm_ops.cc
// where the real TFLM headers are absent. Declarations follow TFLM's; nothing runs.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef enum { kTfLiteNoType = 0, kTfLiteFloat32 = 1, kTfLiteInt32 = 2, kTfLiteInt64 = 4, kTfLiteInt16 = 7, kTfLiteInt8 = 9 } TfLiteType;
typedef enum { kTfLiteActNone = 0, kTfLiteActRelu = 1, kTfLiteActReluN1To1 = 2, kTfLiteActRelu6 = 3 } TfLiteFusedActivation;
typedef struct { int size; int data[8]; } TfLiteIntArray;
typedef struct { int size; float data[16]; } TfLiteFloatArray;
typedef struct { TfLiteFloatArray* scale; TfLiteIntArray* zero_point; int32_t quantized_dimension; } TfLiteAffineQuantization;
typedef struct { float scale; int32_t zero_point; } TfLiteQuantizationParams;
typedef struct { int type; void* params; } TfLiteQuantization;
typedef union { void* data; int8_t* int8; } TfLitePtrUnion;
typedef struct { TfLiteType type; TfLitePtrUnion data; TfLiteIntArray* dims; TfLiteQuantizationParams params; TfLiteQuantization quantization; } TfLiteTensor;
typedef struct { TfLitePtrUnion data; TfLiteIntArray* dims; TfLiteType type; } TfLiteEvalTensor;
typedef struct { TfLiteIntArray* inputs; TfLiteIntArray* outputs; void* user_data; const void* custom_initial_data; int custom_initial_data_size; } TfLiteNode;
typedef struct TfLiteContext {
  void* (*AllocatePersistentBuffer)(struct TfLiteContext* ctx, size_t bytes);
  void (*ReportError)(struct TfLiteContext*, const char* format, ...);
  TfLiteStatus (*RequestScratchBufferInArena)(struct TfLiteContext* ctx, size_t bytes, int* buffer_idx);
  void* (*GetScratchBuffer)(struct TfLiteContext* ctx, int buffer_idx);
} TfLiteContext;

#define TF_LITE_ENSURE(context, a) do { (void)(context); if (!(a)) return kTfLiteError; } while (0)
#define TF_LITE_ENSURE_MSG(context, a, msg) do { if (!(a)) { (context)->ReportError((context), "%s", msg); return kTfLiteError; } } while (0)
#define TF_LITE_ENSURE_STATUS(a) do { if ((a) != kTfLiteOk) return kTfLiteError; } while (0)
#define TF_LITE_ENSURE_TYPES_EQ(context, a, b) TF_LITE_ENSURE(context, (a) == (b))
