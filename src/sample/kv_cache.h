#pragma once
// The two forward paths of generation over one context window: the KV-cached
// single-position step and the uncached baseline (gpt_forward over the whole
// window). See generate.h for the window itself.
#include <cstdint>
#include <memory>

#include <tbb/partitioner.h>

#include "backend/backend.h"
#include "base/buffer.h"
#include "base/threads.h"
#include "model/model.h"

namespace chargpt {

// The KV-cached forward: per layer, the keys and values of every position of
// the current window. Each step costs one position's forward plus attention
// over the cached positions. Steps run in a tbb::task_arena of `threads`
// threads, parallel over fixed blocks of output features (32 rows of a weight
// matrix) and over heads; the blocks depend only on the model's shape, each
// output value is computed by one task in a fixed order and nothing is reduced
// across tasks, so logits are bit-identical for every thread count. A prefill
// is gpt_forward in the same arena.
class KVCacheModel {
 public:
  // params: num_params(cfg) floats, not copied; must outlive this object. threads 0 = all.
  // be: bound to params (weight_table) by the caller when it keeps its own copy.
  KVCacheModel(Backend& be, const Config& cfg, const float* params, int threads = 1);
  KVCacheModel(const KVCacheModel&) = delete;
  KVCacheModel& operator=(const KVCacheModel&) = delete;

  // Drops the cache and runs the window tokens[0..n) (1 <= n <= block_size) at
  // positions 0..n-1, filling the cache. Returns the logits of the last
  // position [V] (valid until the next call). n == 1 is a step from empty; a
  // longer window runs gpt_forward (N = 1, in this model's arena) and keeps its k/v.
  const float* prefill(const int32_t* tokens, int n);
  // Runs one more position (length() < block_size required), appending its k/v.
  const float* step(int32_t token);
  // Positions in the cache.
  int length() const { return len_; }
  int threads() const { return pool_.threads; }

 private:
  void step_in_arena(int32_t token);
  void prefill_window(const int32_t* tokens, int n);
  void head_logits();
  template <class F>
  void for_blocks(int site, int blocks, long macs, const F& f);
  static constexpr int kSites = 5;  // parallel loops per layer
  Config cfg_;
  ConstParamViews P_;
  Backend& be_;
  ThreadPool pool_;
  int len_ = 0;
  FloatBuffer k_, v_;  // [L, T, C] each
  FloatBuffer x_, xn_, q_, y_, res_, h_, logits_, stats_;  // one position's scratch
  FloatBuffer att_;  // per head: attention_decode_scratch_floats
  std::unique_ptr<Activations> pre_;  // a whole window's activations, allocated on the first prefill of n > 1
  std::unique_ptr<tbb::affinity_partitioner[]> affinity_;  // kSites per layer + the LM head
};

// The baseline: gpt_forward over the whole window for every token.
class UncachedModel {
 public:
  UncachedModel(Backend& be, const Config& cfg, const float* params);
  // Logits [V] of the last position of tokens[0..n), 1 <= n <= block_size.
  const float* forward(const int32_t* tokens, int n);

 private:
  Config cfg_;
  ConstParamViews P_;
  Backend& be_;
  Activations acts_;
  ThreadPool pool_;  // one thread: the baseline's gpt_forward runs its blocks on it alone
};

}  // namespace chargpt
