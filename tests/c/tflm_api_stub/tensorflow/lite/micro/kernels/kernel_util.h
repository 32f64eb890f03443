// API-shape stub (see c/common.h).
#pragma once
#include "tensorflow/lite/c/common.h"
#include "tensorflow/lite/micro/micro_common.h"
namespace tflite {
class RuntimeShape {
 public:
  explicit RuntimeShape(const TfLiteIntArray* dims) : dims_(dims) {}
  int DimensionsCount() const { return dims_->size; }
  int32_t Dims(int i) const { return dims_->data[i]; }
  int FlatSize() const {
    int n = 1;
    for (int i = 0; i < dims_->size; ++i) n *= dims_->data[i];
    return n;
  }

 private:
  const TfLiteIntArray* dims_;
};
namespace micro {
TFLMRegistration RegisterOp(void* (*init)(TfLiteContext* context, const char* buffer, size_t length),
                            TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node),
                            TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node),
                            void (*free)(TfLiteContext* context, void* buffer) = nullptr,
                            void (*reset)(TfLiteContext* context, void* buffer) = nullptr);
const TfLiteEvalTensor* GetEvalInput(const TfLiteContext* context, const TfLiteNode* node, int index);
TfLiteEvalTensor* GetEvalOutput(const TfLiteContext* context, const TfLiteNode* node, int index);
template <typename T> T* GetTensorData(TfLiteEvalTensor* tensor) { return static_cast<T*>(tensor->data.data); }
template <typename T> const T* GetTensorData(const TfLiteEvalTensor* tensor) { return static_cast<const T*>(tensor->data.data); }
const RuntimeShape GetTensorShape(const TfLiteEvalTensor* tensor);
}  // namespace micro
}  // namespace tflite
