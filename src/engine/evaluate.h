#pragma once
// Exact evaluation of a checkpoint over a whole data split.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"

namespace chargpt {

// Exact mean loss over a whole split: windows of block_size starting at 0, T,
// 2T, … (the last one shorter), each target counted once. Deterministic for
// any thread count. be: bound to params (weight_table) when it keeps its own copy.
struct EvalResult {
  double loss;
  size_t tokens;
};
EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads, int windows_per_task = 8);

// evaluate_split in pieces, for splitting it across processes (dist.h): its
// number of tasks, and the loss sums of tasks [k0, k1) into sums[0, k1 - k0).
// evaluate_split is the sum of all tasks' sums in task order over (split.size() - 1).
size_t eval_task_count(const Config& cfg, size_t split_size, int windows_per_task = 8);
void evaluate_tasks(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                    int threads, size_t k0, size_t k1, double* sums, int windows_per_task = 8);

}  // namespace chargpt
