#pragma once
// Our threads: every parallel region runs in a oneTBB task_arena of a chosen size.
#include <memory>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

namespace chargpt {

// Lets arenas of up to `threads` threads run that many even past the hardware
// threads (oversubscription): oneTBB caps them otherwise. Process-wide, only grows.
void allow_parallelism(int threads);

// A task_arena of `threads` threads (0 = all hardware threads). More threads
// than cores are allowed (oversubscription); TBB's global cap is lifted for that.
struct ThreadPool {
  int threads;
  std::unique_ptr<tbb::task_arena> arena;
  explicit ThreadPool(int threads);

  // f(i) for every i in [0, n), one index per oneTBB task, inside the arena.
  // Which thread runs which index varies; callers make each index's work
  // independent of that (results stay the same for any thread count).
  template <class F>
  void for_each(size_t n, const F& f) {
    arena->execute([&] {
      tbb::parallel_for(tbb::blocked_range<size_t>(0, n, 1), [&](const tbb::blocked_range<size_t>& r) {
        for (size_t i = r.begin(); i != r.end(); ++i) f(i);
      }, tbb::simple_partitioner());
    });
  }
};

}  // namespace chargpt
