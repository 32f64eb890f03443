// API-shape stub (see c/common.h).
#pragma once
#include "tensorflow/lite/c/common.h"
namespace tflite {
TfLiteStatus CalculateActivationRangeQuantized(TfLiteContext* context, TfLiteFusedActivation activation,
                                               TfLiteTensor* output, int32_t* act_min, int32_t* act_max);
}
