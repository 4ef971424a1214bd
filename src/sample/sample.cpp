#include "sample/sample.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "backend/backend.h"
#include "ops/ops.h"

namespace chargpt {

// ---------------------------------------------------------------------------
// Sampler

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

void Sampler::validate(int V) const {
  if (!(std::isfinite(temperature) && temperature >= 0.f))
    throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(temperature));
  if (top_k < 0 || top_k > V)
    throw std::invalid_argument("top-k must be in 0..vocab_size (" + std::to_string(V) + "), got " +
                                std::to_string(top_k));
  if (!(top_p > 0.f && top_p <= 1.f))
    throw std::invalid_argument("top-p must be in (0, 1], got " + std::to_string(top_p));
}

void Sampler::distribution(const float* logits, int V, std::vector<int32_t>& ids, std::vector<double>& probs) const {
  if (V < 1) throw std::invalid_argument("sampler: empty vocabulary");
  if (!(temperature > 0.f)) throw std::invalid_argument("sampler: distribution needs temperature > 0");
  float mx = logits[0];
  for (int i = 1; i < V; ++i) mx = std::max(mx, logits[i]);
  const double inv_t = 1.0 / (double)temperature;
  ids.resize(V);
  probs.resize(V);
  double total = 0;
  for (int i = 0; i < V; ++i) {
    ids[i] = i;
    probs[i] = std::exp(((double)logits[i] - (double)mx) * inv_t);  // softmax numerator, max -> 1
    total += probs[i];
  }
  const bool use_k = top_k > 0 && top_k < V;
  const bool use_p = top_p < 1.f;
  if (use_k || use_p) {
    // Most likely first; equal probabilities: lower id first. A total order, so
    // the kept set is a deterministic function of the logits.
    std::vector<double> p_by_id(probs);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return p_by_id[a] != p_by_id[b] ? p_by_id[a] > p_by_id[b] : a < b;
    });
    size_t keep = use_k ? (size_t)top_k : (size_t)V;
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += p_by_id[ids[i]];
    if (use_p) {
      // The smallest prefix whose mass reaches top_p (of the top-k mass).
      const double target = (double)top_p * total;
      double cum = 0;
      size_t m = 0;
      while (m < keep) {
        cum += p_by_id[ids[m++]];
        if (cum >= target) break;
      }
      keep = m;
      total = cum;
    }
    ids.resize(keep);
    probs.resize(keep);
    for (size_t i = 0; i < keep; ++i) probs[i] = p_by_id[ids[i]];
  }
  if (!(total > 0 && std::isfinite(total)))
    throw std::runtime_error("sampler: the logits are not finite (a corrupt checkpoint?)");
  const double inv = 1.0 / total;
  for (double& p : probs) p *= inv;
}

int Sampler::sample(const float* logits, int V) {
  if (temperature == 0.f) return argmax(logits, V);
  distribution(logits, V, ids_, probs_);
  const double u = rng.uniform();
  double cum = 0;
  for (size_t i = 0; i < ids_.size(); ++i) {
    cum += probs_[i];
    if (u < cum) return ids_[i];
  }
  return ids_.back();  // u landed in the rounding gap at the top
}

// ---------------------------------------------------------------------------
// ContextWindow

ContextWindow::ContextWindow(int block_size_, int keep_) : block_size(block_size_) {
  if (block_size < 1) throw std::invalid_argument("context window: block_size must be >= 1");
  keep = keep_ > 0 ? keep_ : std::max(1, block_size / 2);
  if (keep > block_size)
    throw std::invalid_argument("context window: keep " + std::to_string(keep) + " is larger than block_size " +
                                std::to_string(block_size));
}

// ---------------------------------------------------------------------------
// Kernels for one position. Each result value depends only on its inputs, never
// on which task computes it: fixed lanes, fixed reduction tree.

namespace {

constexpr int kLanes = 16;

// Lane-wise partial sums of a[i]*b[i], reduced by a fixed tree.
inline float dot(const float* __restrict a, const float* __restrict b, int n) {
  float acc[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  for (int j = 0; i + j < n; ++j) acc[j] += a[i + j] * b[i + j];
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) acc[j] += acc[j + w];
  return acc[0];
}

// Output rows (step) or columns (prefill) per task: fixed by the shape alone,
// never by the thread count.
constexpr int kRowsPerBlock = 32;

enum class Epilogue { None, Gelu, Residual };
// Below this many multiply-adds a loop runs on the calling thread (a choice
// that changes no result: every block is computed by the same code either way).
constexpr long kParallelMacs = 24 * 1024;

}  // namespace

// ---------------------------------------------------------------------------
// KVCacheModel

KVCacheModel::KVCacheModel(const Config& cfg, const float* params, int threads, Backend* backend)
    : cfg_(cfg), P_(param_views(cfg, const_cast<float*>(params))), be_(backend ? *backend : cpu_backend()),
      pool_(threads) {
  cfg_.validate();
  const size_t L = cfg.n_layer, T = cfg.block_size, C = cfg.n_embd;
  k_.resize(L * T * C);
  v_.resize(L * T * C);
  x_.resize(C);
  xn_.resize(C);
  q_.resize(3 * C);
  y_.resize(C);
  res_.resize(C);
  h_.resize(4 * C);
  att_.resize((size_t)cfg.n_head * T);
  logits_.resize(cfg.vocab_size);
  stats_.resize(2);
  affinity_ = std::make_unique<tbb::affinity_partitioner[]>(kSites * cfg.n_layer + 1);
}

template <class F>
void KVCacheModel::for_blocks(int site, int blocks, long macs, const F& f) {
  if (pool_.threads > 1 && blocks > 1 && macs >= kParallelMacs) {
    // Each loop has its own affinity_partitioner (shared by a step and a
    // prefill, which split the same weight matrix into the same blocks of
    // rows), so the same blocks tend to land on the same thread every token and
    // a thread's share of the weights stays in its core's cache. It decides
    // only where a block runs, never how.
    tbb::parallel_for(tbb::blocked_range<int>(0, blocks, 1), [&](const tbb::blocked_range<int>& r) {
      for (int b = r.begin(); b != r.end(); ++b) f(b);
    }, affinity_[site]);
  } else {
    for (int b = 0; b < blocks; ++b) f(b);
  }
}

const float* KVCacheModel::prefill(const int32_t* tokens, int n) {
  if (n < 1 || n > cfg_.block_size)
    throw std::invalid_argument("KVCacheModel::prefill: window of " + std::to_string(n) +
                                " tokens, must be 1..block_size (" + std::to_string(cfg_.block_size) + ")");
  for (int i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab_size)
      throw std::invalid_argument("KVCacheModel::prefill: token id " + std::to_string(tokens[i]) + " out of range");
  len_ = 0;
  if (n == 1) return step(tokens[0]);
  prefill_window(tokens, n);
  len_ = n;
  return logits_.data();
}

const float* KVCacheModel::step(int32_t token) {
  if (len_ >= cfg_.block_size)
    throw std::logic_error("KVCacheModel::step: the cache is full (block_size " + std::to_string(cfg_.block_size) +
                           "); the window must be rebuilt with prefill");
  if (token < 0 || token >= cfg_.vocab_size)
    throw std::invalid_argument("KVCacheModel::step: token id " + std::to_string(token) + " out of range");
  if (pool_.threads == 1) step_in_arena(token);
  else pool_.arena->execute([&] { step_in_arena(token); });
  ++len_;
  return logits_.data();
}

// The window through the model's own batched forward (gpt_forward with N = 1);
// its k and v go to the cache, the last row's logits to logits_.
void KVCacheModel::prefill_window(const int32_t* tokens, int n) {
  const int C = cfg_.n_embd, V = cfg_.vocab_size;
  const size_t T = cfg_.block_size;
  if (!pre_) pre_ = std::make_unique<Activations>(cfg_, 1);
  gpt_forward(be_, cfg_, P_, *pre_, tokens, nullptr, 1, n);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const float* QKV = pre_->layers[l].qkv;
    float* K = k_.data() + l * T * C;
    float* Vc = v_.data() + l * T * C;
    for (int t = 0; t < n; ++t) {
      std::memcpy(K + (size_t)t * C, QKV + (size_t)t * 3 * C + C, C * sizeof(float));
      std::memcpy(Vc + (size_t)t * C, QKV + (size_t)t * 3 * C + 2 * C, C * sizeof(float));
    }
  }
  std::memcpy(logits_.data(), pre_->probs + (size_t)(n - 1) * V, V * sizeof(float));
}

// LM head for the last position's residual stream in x_.
void KVCacheModel::head_logits() {
  const int C = cfg_.n_embd, V = cfg_.vocab_size;
  layernorm_forward(xn_.data(), stats_.data(), stats_.data() + 1, x_.data(), P_.lnf_w, P_.lnf_b, 1, C);
  const int blocks = (V + kRowsPerBlock - 1) / kRowsPerBlock;
  for_blocks(kSites * cfg_.n_layer, blocks, (long)V * C, [&](int blk) {  // tied LM head
    be_.matvec_forward(logits_.data(), P_.wte, nullptr, xn_.data(), C, blk * kRowsPerBlock,
                       std::min(V, (blk + 1) * kRowsPerBlock));
  });
}

void KVCacheModel::step_in_arena(int32_t token) {
  const int C = cfg_.n_embd, NH = cfg_.n_head, hd = C / NH;
  const size_t T = cfg_.block_size;
  const int pos = len_;

  // Rows [0, OC) of one product, in fixed blocks, then GELU or + resid on the block.
  auto matvec = [&](int site, float* out, const float* W, const float* b, const float* x, int IC, int OC,
                    Epilogue ep, const float* resid) {
    const int blocks = (OC + kRowsPerBlock - 1) / kRowsPerBlock;
    for_blocks(site, blocks, (long)IC * OC, [&](int blk) {
      const int o0 = blk * kRowsPerBlock, o1 = std::min(OC, o0 + kRowsPerBlock);
      be_.matvec_forward(out, W, b, x, IC, o0, o1);
      if (ep == Epilogue::Gelu) gelu_forward(out + o0, out + o0, (size_t)(o1 - o0));
      if (ep == Epilogue::Residual) residual_forward(out + o0, out + o0, resid + o0, (size_t)(o1 - o0));
    });
  };

  float* x = x_.data();
  encoder_forward(x, &token, P_.wte, P_.wpe + (size_t)pos * C, 1, 1, C);
  const float scale = 1.f / std::sqrt((float)hd);
  const int n_ctx = pos + 1;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const LayerParams& W = P_.layers[l];
    const int site = kSites * l;
    float* K = k_.data() + l * T * C;
    float* Vc = v_.data() + l * T * C;
    // Attention: qkv of this position; its k and v join the cache.
    layernorm_forward(xn_.data(), stats_.data(), stats_.data() + 1, x, W.ln1_w, W.ln1_b, 1, C);
    matvec(site, q_.data(), W.qkv_w, W.qkv_b, xn_.data(), C, 3 * C, Epilogue::None, nullptr);
    std::memcpy(K + (size_t)pos * C, q_.data() + C, C * sizeof(float));
    std::memcpy(Vc + (size_t)pos * C, q_.data() + 2 * C, C * sizeof(float));
    for_blocks(site + 1, NH, (long)n_ctx * C * 2, [&](int h) {
      const float* q = q_.data() + h * hd;
      float* s = att_.data() + (size_t)h * T;
      float mx = -INFINITY;
      for (int j = 0; j < n_ctx; ++j) {
        s[j] = scale * dot(q, K + (size_t)j * C + h * hd, hd);
        mx = std::fmax(mx, s[j]);
      }
      float sum = 0.f;
      for (int j = 0; j < n_ctx; ++j) {
        s[j] = std::exp(s[j] - mx);
        sum += s[j];
      }
      const float inv = 1.f / sum;
      float* y = y_.data() + h * hd;
      for (int d = 0; d < hd; ++d) y[d] = 0.f;
      for (int j = 0; j < n_ctx; ++j) {
        const float pj = s[j] * inv;
        const float* v = Vc + (size_t)j * C + h * hd;
        for (int d = 0; d < hd; ++d) y[d] += pj * v[d];
      }
    });
    matvec(site + 2, res_.data(), W.attproj_w, W.attproj_b, y_.data(), C, C, Epilogue::Residual, x);
    // MLP
    layernorm_forward(xn_.data(), stats_.data(), stats_.data() + 1, res_.data(), W.ln2_w, W.ln2_b, 1, C);
    matvec(site + 3, h_.data(), W.fc_w, W.fc_b, xn_.data(), C, 4 * C, Epilogue::Gelu, nullptr);
    matvec(site + 4, x, W.fcproj_w, W.fcproj_b, h_.data(), 4 * C, C, Epilogue::Residual, res_.data());
  }
  head_logits();
}

// ---------------------------------------------------------------------------
// UncachedModel

UncachedModel::UncachedModel(const Config& cfg, const float* params, Backend* backend)
    : cfg_(cfg), P_(param_views(cfg, const_cast<float*>(params))), be_(backend ? *backend : cpu_backend()),
      acts_(cfg, 1) {
  cfg_.validate();
}

const float* UncachedModel::forward(const int32_t* tokens, int n) {
  gpt_forward(be_, cfg_, P_, acts_, tokens, nullptr, 1, n);
  return acts_.probs + (size_t)(n - 1) * cfg_.vocab_size;
}

// ---------------------------------------------------------------------------
// The generation loop

std::vector<int32_t> generate(const Config& cfg, const float* params, const std::vector<int32_t>& prompt,
                              Sampler& sampler, const GenerateOptions& opt,
                              const std::function<void(int32_t)>& on_token, GenerateStats* stats) {
  using Clock = std::chrono::steady_clock;
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
  if (opt.kv_cache) kv = std::make_unique<KVCacheModel>(cfg, params, opt.threads, opt.backend);
  else full = std::make_unique<UncachedModel>(cfg, params, opt.backend);

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
  st.prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
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
  st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (stats) *stats = st;
  return std::vector<int32_t>(seq.begin() + prompt.size(), seq.end());
}

}  // namespace chargpt
