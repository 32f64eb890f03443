// API-shape stub (see c/common.h).
#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite {
TfLiteStatus TfLiteTypeSizeOf(TfLiteType type, size_t* size);
TfLiteStatus TfLiteEvalTensorByteLength(const TfLiteEvalTensor* eval_tensor, size_t* out_bytes);
}
