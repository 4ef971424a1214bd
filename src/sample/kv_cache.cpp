#include "sample/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include "ops/ops.h"

namespace chargpt {

namespace {

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

KVCacheModel::KVCacheModel(Backend& be, const Config& cfg, const float* params, int threads)
    : cfg_(cfg), P_(param_views(cfg, params)), be_(be), pool_(threads) {
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
  att_.resize((size_t)cfg.n_head * attention_decode_scratch_floats(cfg.block_size, cfg.n_embd / cfg.n_head));
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
  pool_.arena->execute([&] { prefill_window(tokens, n); });  // gpt_forward's blocks on this arena's threads
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
    be_.matvec_forward(logits_.data(), {P_.wte, kWteTensor}, {}, xn_.data(), C, blk * kRowsPerBlock,
                       std::min(V, (blk + 1) * kRowsPerBlock));
  });
}

void KVCacheModel::step_in_arena(int32_t token) {
  const int C = cfg_.n_embd, NH = cfg_.n_head, hd = C / NH;
  const size_t T = cfg_.block_size;
  const int pos = len_;

  // Rows [0, OC) of one product, in fixed blocks, then GELU or + resid on the block.
  auto matvec = [&](int site, float* out, Weight W, Weight b, const float* x, int IC, int OC, Epilogue ep,
                    const float* resid) {
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
  const int n_ctx = pos + 1;
  using LT = LayerTensor;
  for (int l = 0; l < cfg_.n_layer; ++l) {
    const ConstLayerParams& W = P_.layers[l];
    const int site = kSites * l;
    float* K = k_.data() + l * T * C;
    float* Vc = v_.data() + l * T * C;
    // Attention: qkv of this position; its k and v join the cache.
    layernorm_forward(xn_.data(), stats_.data(), stats_.data() + 1, x, W.ln1_w, W.ln1_b, 1, C);
    matvec(site, q_.data(), {W.qkv_w, tensor_index(l, LT::qkv_w)}, {W.qkv_b, tensor_index(l, LT::qkv_b)}, xn_.data(),
           C, 3 * C, Epilogue::None, nullptr);
    std::memcpy(K + (size_t)pos * C, q_.data() + C, C * sizeof(float));
    std::memcpy(Vc + (size_t)pos * C, q_.data() + 2 * C, C * sizeof(float));
    const size_t att_floats = attention_decode_scratch_floats(cfg_.block_size, hd);
    for_blocks(site + 1, NH, (long)n_ctx * C * 2, [&](int h) {
      attention_head_decode(y_.data() + h * hd, att_.data() + h * att_floats, q_.data() + h * hd, K + h * hd,
                            Vc + h * hd, C, n_ctx, hd);
    });
    matvec(site + 2, res_.data(), {W.attproj_w, tensor_index(l, LT::attproj_w)},
           {W.attproj_b, tensor_index(l, LT::attproj_b)}, y_.data(), C, C, Epilogue::Residual, x);
    // MLP
    layernorm_forward(xn_.data(), stats_.data(), stats_.data() + 1, res_.data(), W.ln2_w, W.ln2_b, 1, C);
    matvec(site + 3, h_.data(), {W.fc_w, tensor_index(l, LT::fc_w)}, {W.fc_b, tensor_index(l, LT::fc_b)}, xn_.data(),
           C, 4 * C, Epilogue::Gelu, nullptr);
    matvec(site + 4, x, {W.fcproj_w, tensor_index(l, LT::fcproj_w)}, {W.fcproj_b, tensor_index(l, LT::fcproj_b)},
           h_.data(), 4 * C, C, Epilogue::Residual, res_.data());
  }
  head_logits();
}

// ---------------------------------------------------------------------------
// UncachedModel

UncachedModel::UncachedModel(Backend& be, const Config& cfg, const float* params)
    : cfg_(cfg), P_(param_views(cfg, params)), be_(be), acts_(cfg, 1), pool_(1) {
  cfg_.validate();
}

const float* UncachedModel::forward(const int32_t* tokens, int n) {
  pool_.arena->execute([&] { gpt_forward(be_, cfg_, P_, acts_, tokens, nullptr, 1, n); });
  return acts_.probs + (size_t)(n - 1) * cfg_.vocab_size;
}

}  // namespace chargpt
