#include "engine/evaluate.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include <tbb/enumerable_thread_specific.h>

#include "base/hash.h"
#include "base/threads.h"

namespace chargpt {

EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads, int windows_per_task, Collective& comm) {
  if (split.size() < 2) throw std::runtime_error("the split has fewer than 2 tokens: nothing to evaluate");
  if (comm.size() > 1)
    check_agreement(comm, {{"the checkpoint's weights", hash_bytes(params, num_params(cfg) * sizeof(float))},
                           {"the split's text", hash_bytes(split.data(), split.size() * sizeof(int32_t))}});
  const int T = cfg.block_size;
  const size_t n_targets = split.size() - 1;
  const size_t n_full = n_targets / T;             // windows of exactly T targets
  const int tail = (int)(n_targets - n_full * T);  // the last, shorter window (may be 0)
  const size_t full_tasks = (n_full + windows_per_task - 1) / windows_per_task;
  const size_t tasks = full_tasks + (tail > 0 ? 1 : 0);
  const ConstParamViews P = param_views(cfg, params);
  tbb::enumerable_thread_specific<Activations> acts(cfg, windows_per_task);
  ThreadPool pool(threads);
  std::vector<double> sums;
  // Full windows follow one another in the split, so a task's windows are one
  // contiguous [n, T] block of it, and their targets the same block one token on.
  const double total = ordered_task_sum(comm, pool, even_split(tasks, comm.size()), [&](size_t k) {
    const bool is_tail = k == full_tasks;
    const size_t w0 = is_tail ? n_full : k * windows_per_task;
    const int n = is_tail ? 1 : (int)std::min<size_t>(windows_per_task, n_full - w0);
    const int t = is_tail ? tail : T;
    const int32_t* in = split.data() + w0 * T;
    return gpt_forward(be, cfg, P, acts.local(), in, in + 1, n, t);
  }, sums);
  return {total / (double)n_targets, n_targets};
}

}  // namespace chargpt
