// API-shape stub (see c/common.h).
#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite {
class MicroContext {
 public:
  virtual ~MicroContext();
  virtual TfLiteTensor* AllocateTempInputTensor(const TfLiteNode* node, int index);
  virtual TfLiteTensor* AllocateTempOutputTensor(const TfLiteNode* node, int index);
  virtual void DeallocateTempTfLiteTensor(TfLiteTensor* tensor);
};
MicroContext* GetMicroContext(const struct TfLiteContext* context);
}
