#include <algorithm>
#include <stdexcept>

#include <tbb/enumerable_thread_specific.h>

#include "engine/evaluate.h"
#include "base/threads.h"

namespace chargpt {

size_t eval_task_count(const Config& cfg, size_t split_size, int windows_per_task) {
  if (split_size < 2) throw std::runtime_error("the split has fewer than 2 tokens: nothing to evaluate");
  const int T = cfg.block_size;
  const size_t n_targets = split_size - 1;
  const size_t n_full = n_targets / T;
  const size_t full_tasks = (n_full + windows_per_task - 1) / windows_per_task;
  return full_tasks + (n_targets % T > 0 ? 1 : 0);
}

void evaluate_tasks(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                    int threads, size_t k0, size_t k1, double* sums, int windows_per_task) {
  const size_t tasks = eval_task_count(cfg, split.size(), windows_per_task);
  if (k0 > k1 || k1 > tasks) throw std::logic_error("evaluate_tasks: task range out of bounds");
  if (k0 == k1) return;
  const int T = cfg.block_size;
  const size_t n_targets = split.size() - 1;
  const size_t n_full = n_targets / T;             // windows of exactly T targets
  const int tail = (int)(n_targets - n_full * T);  // the last, shorter window (may be 0)
  const size_t full_tasks = (n_full + windows_per_task - 1) / windows_per_task;
  const ConstParamViews P = param_views(cfg, params);
  tbb::enumerable_thread_specific<Activations> acts(cfg, windows_per_task);
  ThreadPool pool(threads);
  // Full windows follow one another in the split, so a task's windows are one
  // contiguous [n, T] block of it, and their targets the same block one token on.
  pool.for_each(k1 - k0, [&](size_t i) {
    const size_t k = k0 + i;
    const bool is_tail = k == full_tasks;
    const size_t w0 = is_tail ? n_full : k * windows_per_task;
    const int n = is_tail ? 1 : (int)std::min<size_t>(windows_per_task, n_full - w0);
    const int t = is_tail ? tail : T;
    const int32_t* in = split.data() + w0 * T;
    sums[i] = gpt_forward(be, cfg, P, acts.local(), in, in + 1, n, t);
  });
}

EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads, int windows_per_task) {
  const size_t tasks = eval_task_count(cfg, split.size(), windows_per_task);
  std::vector<double> sums(tasks);
  evaluate_tasks(be, cfg, params, split, threads, 0, tasks, sums.data(), windows_per_task);
  double total = 0;
  for (double s : sums) total += s;  // fixed order: deterministic for any thread count
  const size_t n_targets = split.size() - 1;
  return {total / (double)n_targets, n_targets};
}

}  // namespace chargpt
