#pragma once
// Text generation: a sampler (temperature, top-k, top-p over one row of
// logits), a KV-cached single-position forward, the uncached baseline, and the
// generation loop that drives either.
//
// The context window. The model has absolute position embeddings for
// block_size (T) positions, so once a sequence is longer than T the model can
// only see a window of it, and moving that window changes the position of
// every token in it: its keys and values have to be recomputed. Recomputing
// the window every token (nanoGPT's crop to the last T tokens) would cost a
// whole-window forward per token and make the cache useless past T. Instead
// the window [start, n) grows one token at a time until it holds T tokens;
// the token after that starts a new window holding the last `keep` tokens
// (default T/2), whose cache is rebuilt by one batched prefill. So every
// prediction sees between `keep` and T tokens of context and the cache costs
// one prefill of `keep` positions per T-keep+1 tokens. keep = T is nanoGPT's
// crop exactly (a prefill every token past T). The uncached path
// (--no-kv-cache) runs gpt_forward over the very same windows, so both paths
// compute the same function; they differ only by float rounding (the cached
// step uses the backend's matrix-vector products; the prefill is gpt_forward
// itself, with N = 1). The
// tests hold cached logits to within 1e-4 of gpt_forward's (observed: ~6e-6 on
// the baby model, logits up to ~14).
// A prompt longer than T starts with the window of its last T tokens.
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <tbb/partitioner.h>

#include "backend/backend.h"
#include "base/buffer.h"
#include "model/model.h"
#include "base/rng.h"
#include "base/threads.h"

namespace chargpt {

// ---------------------------------------------------------------------------
// Sampler: turns one row of logits into a token id. Separate from the model.
struct Sampler {
  float temperature = 0.8f;  // 0 = greedy (argmax; ties go to the lowest id)
  int top_k = 0;             // keep only the k most likely tokens (0 = off)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches p (1 = off)
  Rng rng{1337};

  Sampler() = default;
  Sampler(float temperature_, int top_k_, float top_p_, uint64_t seed)
      : temperature(temperature_), top_k(top_k_), top_p(top_p_), rng(seed) {}

  // Draws one token from logits[0..V). Consumes exactly one rng.uniform() when
  // temperature > 0 and none when greedy.
  int sample(const float* logits, int V);

  // The distribution sample() draws from (temperature > 0): the kept token ids,
  // most likely first (equal probabilities: lower id first), and their
  // probabilities renormalised over the kept set. Top-k is applied first, then
  // top-p over what top-k kept (renormalised), as in HuggingFace's warpers.
  void distribution(const float* logits, int V, std::vector<int32_t>& ids, std::vector<double>& probs) const;

  // Throws std::invalid_argument naming the offending setting.
  void validate(int V) const;

 private:
  std::vector<int32_t> ids_;
  std::vector<double> probs_;
};

// Index of the largest value; ties go to the lowest index.
int argmax(const float* x, int n);

// ---------------------------------------------------------------------------
// The sliding context window (see the top of this file).
struct ContextWindow {
  int block_size;
  int keep;       // tokens a new window starts with, 1..block_size
  int start = 0;  // first token of the current window
  ContextWindow(int block_size_, int keep_ = 0);  // keep 0 = block_size/2 (at least 1)
  // Window for a sequence of n tokens that starts fresh (the prompt).
  void reset(int n) { start = n > block_size ? n - block_size : 0; }
  // The sequence grew to n tokens. Returns true if the window moved (the cache
  // must be rebuilt from the window [start, n)), false if it grew by one.
  bool advance(int n) {
    if (n - start <= block_size) return false;
    start = n - keep;
    return true;
  }
};

// ---------------------------------------------------------------------------
// The KV-cached forward: per layer, the keys and values of every position of
// the current window. Each step costs one position's forward plus attention
// over the cached positions. Steps run in a tbb::task_arena of `threads`
// threads, parallel over fixed blocks of output features (32 rows of a weight
// matrix) and over heads; the blocks depend only on the model's shape, each
// output value is computed by one task in a fixed order and nothing is reduced
// across tasks, so logits are bit-identical for every thread count. A prefill
// is gpt_forward on the calling thread.
class KVCacheModel {
 public:
  // params: num_params(cfg) floats, not copied; must outlive this object. threads 0 = all.
  // backend: null = the OpenBLAS fp32 one; otherwise bound to params by the caller.
  KVCacheModel(const Config& cfg, const float* params, int threads = 1, Backend* backend = nullptr);
  KVCacheModel(const KVCacheModel&) = delete;
  KVCacheModel& operator=(const KVCacheModel&) = delete;

  // Drops the cache and runs the window tokens[0..n) (1 <= n <= block_size) at
  // positions 0..n-1, filling the cache. Returns the logits of the last
  // position [V] (valid until the next call). n == 1 is a step from empty; a
  // longer window runs gpt_forward (N = 1, on the calling thread) and keeps its k/v.
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
  ParamViews P_;
  Backend& be_;
  ThreadPool pool_;
  int len_ = 0;
  FloatBuffer k_, v_;  // [L, T, C] each
  FloatBuffer x_, xn_, q_, y_, res_, h_, att_, logits_, stats_;  // one position's scratch
  std::unique_ptr<Activations> pre_;  // a whole window's activations, allocated on the first prefill of n > 1
  std::unique_ptr<tbb::affinity_partitioner[]> affinity_;  // kSites per layer + the LM head
};

// The baseline: gpt_forward over the whole window for every token.
class UncachedModel {
 public:
  UncachedModel(const Config& cfg, const float* params, Backend* backend = nullptr);
  // Logits [V] of the last position of tokens[0..n), 1 <= n <= block_size.
  const float* forward(const int32_t* tokens, int n);

 private:
  Config cfg_;
  ParamViews P_;
  Backend& be_;
  Activations acts_;
};

// ---------------------------------------------------------------------------
struct GenerateOptions {
  int max_new_tokens = 500;
  bool kv_cache = true;
  int threads = 0;  // 0 = all hardware threads (the uncached path runs gpt_forward on one)
  int keep = 0;     // ContextWindow::keep; 0 = block_size/2
  Backend* backend = nullptr;  // null = OpenBLAS fp32; otherwise already bound to params
};

struct GenerateStats {
  int prompt_tokens = 0;
  int new_tokens = 0;
  int rebuilds = 0;      // window moves past block_size (cache rebuilt by a prefill)
  int threads = 1;       // threads the cached step ran on (1 for the uncached path)
  double seconds = 0;    // the whole generation: prompt prefill + new tokens
  double prefill_s = 0;  // the prompt's prefill (first logits)
};

// Generates opt.max_new_tokens tokens after `prompt` (non-empty), calling
// on_token(id) after each (may be empty). Returns the new tokens.
std::vector<int32_t> generate(const Config& cfg, const float* params, const std::vector<int32_t>& prompt,
                              Sampler& sampler, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = {}, GenerateStats* stats = nullptr);

}  // namespace chargpt
