// API-shape stub (see c/common.h).
#pragma once
#include <stdint.h>
namespace tflite {
void QuantizeMultiplier(double double_multiplier, int32_t* quantized_multiplier, int* shift);
}
