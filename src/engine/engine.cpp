#include "engine/engine.h"

#include <bit>
#include <chrono>
#include <cstdint>
#include <cmath>
#include <stdexcept>
#include <string>

#include "base/clock.h"

namespace chargpt {

int default_shard_size(int batch_size, int block_size) {
  // At least 128 rows per shard (smaller products lose much of the BLAS rate and
  // every shard re-reads and re-writes a whole gradient buffer) and at most 16 shards.
  // In 64 bits: a batch size near INT_MAX (refused later, by the memory check) must not overflow here.
  const int64_t min_rows = (128 + (int64_t)block_size - 1) / block_size;
  return (int)std::min<int64_t>(batch_size, std::max<int64_t>(min_rows, ((int64_t)batch_size + 15) / 16));
}

int resolve_shard_size(int shard_size, int batch_size, int block_size) {
  return shard_size > 0 ? shard_size : default_shard_size(batch_size, block_size);
}

// The shape checks run before the members that divide by it are built.
static const Config& checked(const Config& cfg, int batch_size) {
  cfg.validate();
  if (batch_size < 1) throw std::runtime_error("batch size " + std::to_string(batch_size) + " must be >= 1");
  return cfg;
}

// The shapes are checked before the backend is made (so a bad shape is reported first).
static std::unique_ptr<Backend> checked_backend(const Config& cfg, int batch_size, const BackendOptions& opt) {
  checked(cfg, batch_size);
  return make_backend(opt);
}

Engine::Engine(const Config& cfg, int batch_size, int shard_size, int threads, uint64_t seed,
               const BackendOptions& backend)
    : Engine(cfg, batch_size, shard_size, threads, seed, checked_backend(cfg, batch_size, backend)) {}

Engine::Engine(const Config& cfg, int batch_size, int shard_size, int threads, uint64_t seed,
               std::unique_ptr<Backend> backend)
    : cfg_(checked(cfg, batch_size)),
      batch_size_(batch_size),
      shard_size_(resolve_shard_size(shard_size, batch_size, cfg.block_size)),
      n_shards_((batch_size + shard_size_ - 1) / shard_size_),
      pool_(threads),
      backend_(backend ? std::move(backend) : throw std::invalid_argument("Engine: null backend")),
      acts_(cfg, shard_size_),
      data_rng_(seed) {
  const size_t P = chargpt::num_params(cfg_);
  params_.resize(P);
  m_.resize(P);
  v_.resize(P);
  grad_.resize(P);
  param_view_ = param_views(cfg_, params_.data());
  backend_->bind_weights(weight_table(cfg_, params_.data()));
  shard_grads_.resize(n_shards_);
  for (auto& g : shard_grads_) {
    g.resize(P);
    shard_grad_views_.push_back(param_views(cfg_, g.data()));
  }
  // Chunk boundaries depend only on the model shape, never on the thread count.
  constexpr size_t kChunk = 16384;
  for (const auto& s : param_specs(cfg_))
    for (size_t b = 0; b < s.numel; b += kChunk)
      chunks_.push_back({s.offset + b, s.offset + std::min(s.numel, b + kChunk), s.decay});
  chunk_sumsq_.resize(chunks_.size());
  shard_loss_.resize(n_shards_);
  inputs_.resize((size_t)batch_size_ * cfg_.block_size);
  targets_.resize((size_t)batch_size_ * cfg_.block_size);
}

void Engine::weights_loaded() { backend_->weights_changed(0, params_.size()); }

void Engine::sample_next_batch(const std::vector<int32_t>& split) {
  sample_batch(split, batch_size_, cfg_.block_size, data_rng_, inputs_.data(), targets_.data());
}

void Engine::forward_backward(size_t shard_begin, size_t shard_end) {
  const int T = cfg_.block_size;
  const float dloss = 1.f / (float)((size_t)batch_size_ * T);  // d batch mean / d token loss
  pool_.for_each(shard_end - shard_begin, [&](size_t i) {
    const size_t s = shard_begin + i;
    const int n0 = (int)s * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
    const int32_t* in = inputs_.data() + (size_t)n0 * T;
    const int32_t* tg = targets_.data() + (size_t)n0 * T;
    Activations& a = acts_.local();
    shard_loss_[s] = gpt_forward(*backend_, cfg_, param_view_, a, in, tg, n, T);
    gpt_backward(*backend_, cfg_, param_view_, shard_grad_views_[s], a, in, tg, n, T, dloss, /*accumulate=*/false);
  });
}

void Engine::reduce(size_t chunk_begin, size_t chunk_end) {
  pool_.for_each(chunk_end - chunk_begin, [&](size_t i) {
    const size_t c = chunk_begin + i;
    const size_t b = chunks_[c].begin, n = chunks_[c].end - b;
    float* dst = grad_.data() + b;
    // ((s0 + s1) + s2) + ...: shard order fixed.
    const float* s0 = shard_grads_[0].data() + b;
    if (n_shards_ == 1) {
      for (size_t k = 0; k < n; ++k) dst[k] = s0[k];
    } else {
      const float* s1 = shard_grads_[1].data() + b;
      for (size_t k = 0; k < n; ++k) dst[k] = s0[k] + s1[k];
    }
    for (int s = 2; s < n_shards_; ++s) {
      const float* src = shard_grads_[s].data() + b;
      for (size_t k = 0; k < n; ++k) dst[k] += src[k];
    }
    chunk_sumsq_[c] = sum_of_squares(dst, n);
  });
}

void Engine::update(size_t chunk_begin, size_t chunk_end, float lr, float grad_scale, const AdamW& opt) {
  const int t = step_ + 1;
  pool_.for_each(chunk_end - chunk_begin, [&](size_t i) {
    const ParamChunk& ch = chunks_[chunk_begin + i];
    const size_t b = ch.begin, n = ch.end - b;
    adamw_update(params_.data() + b, grad_.data() + b, m_.data() + b, v_.data() + b, n, opt, lr, t, grad_scale,
                 ch.decay);
    backend_->weights_changed(ch.begin, ch.end);
  });
}

double Engine::batch_loss() const {
  double sum = 0;
  for (double l : shard_loss_) sum += l;  // fixed order
  return sum / ((double)batch_size_ * cfg_.block_size);
}

double Engine::grad_norm_sq() const {
  double sum = 0;
  for (double s : chunk_sumsq_) sum += s;  // fixed order
  return sum;
}

float clip_scale(double loss, double norm, float grad_clip, int64_t step) {
  if (!std::isfinite(loss) || !std::isfinite(norm)) {
    throw std::runtime_error(std::string("non-finite ") + (!std::isfinite(loss) ? "loss" : "gradient norm") +
                             " at step " + std::to_string(step) + " (loss " + std::to_string(loss) +
                             ", gradient norm " + std::to_string(norm) + ")");
  }
  return (grad_clip > 0 && norm > grad_clip) ? (float)(grad_clip / norm) : 1.f;
}

// True when no float of x is NaN or infinite (all exponent bits set), as an
// integer OR over the bits, which vectorizes.
static bool all_finite(const float* x, size_t n) {
  uint32_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad |= (std::bit_cast<uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u;
  return !bad;
}

void Engine::check_weights_finite() {
  // The step's result, not only its inputs: a finite loss and gradient can
  // still give weights that overflow (a huge --lr or weight decay, bad moments).
  std::vector<char> ok(chunks_.size());
  pool_.for_each(chunks_.size(), [&](size_t c) {
    ok[c] = all_finite(params_.data() + chunks_[c].begin, chunks_[c].end - chunks_[c].begin);
  });
  for (size_t c = 0; c < chunks_.size(); ++c) {
    if (ok[c]) continue;
    std::string name = "?";
    for (const auto& s : param_specs(cfg_))
      if (chunks_[c].begin >= s.offset && chunks_[c].begin < s.offset + s.numel) name = s.name;
    throw std::runtime_error("non-finite weights after the update of step " + std::to_string(step_ + 1) + " (in '" +
                             name + "'): the run diverged");
  }
}

double Engine::train_step(const std::vector<int32_t>& split, float lr, float grad_clip, const AdamW& opt,
                          double* grad_norm, StepTiming* timing) {
  sample_next_batch(split);
  const auto t1 = Clock::now();
  forward_backward(0, n_shards_);
  const auto t2 = Clock::now();
  const double loss = batch_loss();
  reduce(0, chunks_.size());
  const double norm = std::sqrt(grad_norm_sq());
  if (grad_norm) *grad_norm = norm;
  const float scale = clip_scale(loss, norm, grad_clip, step_ + 1);
  update(0, chunks_.size(), lr, scale, opt);
  check_weights_finite();
  finish_step();
  const auto t3 = Clock::now();
  if (timing) {
    timing->fwd_bwd_s = std::chrono::duration<double>(t2 - t1).count();
    timing->reduce_opt_s = std::chrono::duration<double>(t3 - t2).count();
  }
  return loss;
}

double Engine::estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed) {
  if (iters <= 0) return NAN;
  const size_t tasks = (size_t)iters * n_shards_;
  if (eval_sums_.size() < tasks) eval_sums_.resize(tasks);
  estimate_loss_tasks(split, iters, seed, 0, tasks, eval_sums_.data());
  double total = 0;
  for (size_t k = 0; k < tasks; ++k) total += eval_sums_[k];
  return total / ((double)iters * batch_size_ * cfg_.block_size);
}

void Engine::estimate_loss_tasks(const std::vector<int32_t>& split, int iters, uint64_t seed, size_t k0, size_t k1,
                                 double* sums) {
  const int T = cfg_.block_size;
  Rng rng(seed);
  // All iters batches at once, so that every (batch, shard) is a task; the
  // buffers are the engine's, grown on the first call and reused after.
  const size_t tokens = (size_t)iters * batch_size_ * T;
  if (eval_inputs_.size() < tokens) eval_inputs_.resize(tokens), eval_targets_.resize(tokens);
  for (int i = 0; i < iters; ++i)
    sample_batch(split, batch_size_, T, rng, eval_inputs_.data() + (size_t)i * batch_size_ * T,
                 eval_targets_.data() + (size_t)i * batch_size_ * T);
  pool_.for_each(k1 - k0, [&](size_t i) {
    const size_t k = k0 + i;
    const int it = (int)k / n_shards_, s = (int)k % n_shards_;
    const int n0 = s * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
    const size_t off = ((size_t)it * batch_size_ + n0) * T;
    sums[i] = gpt_forward(*backend_, cfg_, param_view_, acts_.local(), eval_inputs_.data() + off,
                          eval_targets_.data() + off, n, T);
  });
}

size_t Engine::bytes_allocated() const {
  size_t b = (params_.size() + m_.size() + v_.size() + grad_.size()) * sizeof(float);
  for (const auto& g : shard_grads_) b += g.size() * sizeof(float);
  for (const auto& a : acts_) b += a.bytes();
  return b;
}

}  // namespace chargpt
