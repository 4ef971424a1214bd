#include <algorithm>
#include <stdexcept>

#include <tbb/blocked_range.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "chargpt/matmul.h"
#include "chargpt/train.h"

namespace chargpt {

EvalResult evaluate_split(const Config& cfg, const float* params, const std::vector<int32_t>& split, int threads,
                          int windows_per_task) {
  if (split.size() < 2) throw std::runtime_error("the split has fewer than 2 tokens: nothing to evaluate");
  blas_single_threaded();
  const int T = cfg.block_size;
  const size_t n_targets = split.size() - 1;
  const size_t n_full = n_targets / T;          // windows of exactly T targets
  const int tail = (int)(n_targets - n_full * T);  // the last, shorter window (may be 0)
  const size_t full_tasks = (n_full + windows_per_task - 1) / windows_per_task;
  const size_t tasks = full_tasks + (tail > 0 ? 1 : 0);
  const ParamViews P = param_views(cfg, const_cast<float*>(params));  // read only
  std::vector<double> sums(tasks);
  tbb::enumerable_thread_specific<Activations> acts(cfg, windows_per_task);
  ThreadPool pool(threads);
  pool.arena->execute([&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, tasks, 1), [&](const tbb::blocked_range<size_t>& r) {
      Activations& a = acts.local();
      std::vector<int32_t> in((size_t)windows_per_task * T), tg(in.size());
      for (size_t k = r.begin(); k != r.end(); ++k) {
        const bool is_tail = k == full_tasks;
        const size_t w0 = is_tail ? n_full : k * windows_per_task;
        const int n = is_tail ? 1 : (int)std::min<size_t>(windows_per_task, n_full - w0);
        const int t = is_tail ? tail : T;
        for (int w = 0; w < n; ++w) {
          const size_t start = (w0 + w) * (size_t)T;
          std::copy_n(split.begin() + start, t, in.begin() + (size_t)w * t);
          std::copy_n(split.begin() + start + 1, t, tg.begin() + (size_t)w * t);
        }
        sums[k] = gpt_forward(cfg, P, a, in.data(), tg.data(), n, t);
      }
    }, tbb::simple_partitioner());
  });
  double total = 0;
  for (double s : sums) total += s;  // fixed order: deterministic for any thread count
  return {total / (double)n_targets, n_targets};
}

}  // namespace chargpt
