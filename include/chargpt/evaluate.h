#pragma once
// Exact evaluation of a checkpoint over a whole data split.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "chargpt/backend.h"
#include "chargpt/model.h"

namespace chargpt {

// Exact mean loss over a whole split: windows of block_size starting at 0, T,
// 2T, … (the last one shorter), each target counted once. Deterministic for
// any thread count. backend: null = OpenBLAS fp32; otherwise bound to params.
struct EvalResult {
  double loss;
  size_t tokens;
};
EvalResult evaluate_split(const Config& cfg, const float* params, const std::vector<int32_t>& split, int threads,
                          int windows_per_task = 8, Backend* backend = nullptr);

}  // namespace chargpt
