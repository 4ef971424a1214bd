#include "sample/generate.h"

#include <algorithm>
#include <memory>
#include <stdexcept>
#include <string>

#include "base/clock.h"

namespace chargpt {

ContextWindow::ContextWindow(int block_size_, int keep_) : block_size(block_size_) {
  if (block_size < 1) throw std::invalid_argument("context window: block_size must be >= 1");
  keep = keep_ > 0 ? keep_ : std::max(1, block_size / 2);
  if (keep > block_size)
    throw std::invalid_argument("context window: keep " + std::to_string(keep) + " is larger than block_size " +
                                std::to_string(block_size));
}

std::vector<int32_t> generate(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& prompt,
                              Sampler& sampler, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token, GenerateStats* stats) {
  if (prompt.empty()) throw std::invalid_argument("prompt is empty");
  if (opt.max_new_tokens < 0) throw std::invalid_argument("number of tokens must be >= 0");
  const int V = cfg.vocab_size;
  for (int32_t t : prompt)
    if (t < 0 || t >= V) throw std::invalid_argument("prompt token id " + std::to_string(t) + " out of range");
  sampler.validate(V);
  ContextWindow win(cfg.block_size, opt.keep);

  if (opt.max_new_tokens == 0) {
    if (stats) {
      *stats = GenerateStats{};
      stats->prompt_tokens = (int)prompt.size();
    }
    return {};  // nothing to compute
  }
  std::unique_ptr<KVCacheModel> kv;
  std::unique_ptr<UncachedModel> full;
  if (opt.kv_cache) kv = std::make_unique<KVCacheModel>(be, cfg, params, opt.threads);
  else full = std::make_unique<UncachedModel>(be, cfg, params);

  std::vector<int32_t> seq = prompt;
  seq.reserve(prompt.size() + opt.max_new_tokens);
  GenerateStats st;
  st.prompt_tokens = (int)prompt.size();
  st.threads = kv ? kv->threads() : 1;
  const auto t0 = Clock::now();
  win.reset((int)seq.size());
  auto window_logits = [&]() {
    const int n = (int)seq.size() - win.start;
    return kv ? kv->prefill(seq.data() + win.start, n) : full->forward(seq.data() + win.start, n);
  };
  const float* logits = window_logits();
  st.prefill_s = seconds_since(t0);
  for (int i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t tok = sampler.sample(logits, V);
    seq.push_back(tok);
    ++st.new_tokens;
    if (on_token) on_token(tok);
    if (i + 1 == opt.max_new_tokens) break;  // no logits needed after the last token
    if (win.advance((int)seq.size())) {
      ++st.rebuilds;
      logits = window_logits();
    } else {
      logits = kv ? kv->step(tok) : window_logits();
    }
  }
  st.seconds = seconds_since(t0);
  if (stats) *stats = st;
  return std::vector<int32_t>(seq.begin() + prompt.size(), seq.end());
}

}  // namespace chargpt
