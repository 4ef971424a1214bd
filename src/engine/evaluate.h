#pragma once
// Exact evaluation of a checkpoint over a whole data split.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "engine/collective.h"
#include "model/model.h"

namespace chargpt {

// Exact mean loss over a whole split: windows of block_size starting at 0, T,
// 2T, … (the last one shorter), each target counted once. Its tasks (runs of
// windows_per_task windows) are split across the ranks of `comm` (which must
// all hold the same weights and split: checked) and summed in task order, so
// the result has the same bits for any thread or rank count.
// be: bound to params (weight_table) when it keeps its own copy.
struct EvalResult {
  double loss;
  size_t tokens;
};
EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads, int windows_per_task = 8, Collective& comm = local_collective());

}  // namespace chargpt
