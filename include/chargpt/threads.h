#pragma once
// Our threads: every parallel region runs in a oneTBB task_arena of a chosen size.
#include <memory>

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
};

}  // namespace chargpt
