#pragma once
// Text generation: the loop that drives a sampler (sampler.h) and one of the
// two forward paths (kv_cache.h) over a sliding context window.
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
#include <vector>

#include "backend/backend.h"
#include "model/model.h"
#include "sample/kv_cache.h"
#include "sample/sampler.h"

namespace chargpt {

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

struct GenerateOptions {
  int max_new_tokens = 500;
  bool kv_cache = true;
  int threads = 0;  // 0 = all hardware threads (the uncached path runs gpt_forward on one)
  int keep = 0;     // ContextWindow::keep; 0 = block_size/2
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
// be: bound to params by the caller when it keeps its own copy.
std::vector<int32_t> generate(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& prompt,
                              Sampler& sampler, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token = {}, GenerateStats* stats = nullptr);

}  // namespace chargpt
