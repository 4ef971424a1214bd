#include "base/threads.h"

#include <mutex>

#include <tbb/global_control.h>
#include <tbb/info.h>

namespace chargpt {

// oneTBB caps every arena at the hardware threads unless a global_control
// raises the cap, and when several are alive the smallest wins. So one
// process-wide control that only ever grows.
void allow_parallelism(int threads) {
  static std::mutex mu;
  static std::unique_ptr<tbb::global_control> control;
  static int allowed = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (threads <= tbb::info::default_concurrency() || threads <= allowed) return;
  control.reset();
  control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, threads);
  allowed = threads;
}

ThreadPool::ThreadPool(int n) : threads(n > 0 ? n : tbb::info::default_concurrency()) {
  allow_parallelism(threads);
  arena = std::make_unique<tbb::task_arena>(threads);
}

}  // namespace chargpt
