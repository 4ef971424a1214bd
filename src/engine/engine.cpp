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

Engine::Engine(const Config& cfg, const EngineOptions& opt, const BackendOptions& backend, Collective& comm)
    : Engine(cfg, opt, checked_backend(cfg, opt.batch_size, backend), comm) {}

Engine::Engine(const Config& cfg, const EngineOptions& opt, std::unique_ptr<Backend> backend, Collective& comm)
    : cfg_(checked(cfg, opt.batch_size)),
      batch_size_(opt.batch_size),
      shard_size_(resolve_shard_size(opt.shard_size, opt.batch_size, cfg.block_size)),
      n_shards_((batch_size_ + shard_size_ - 1) / shard_size_),
      pool_(opt.threads),
      comm_(comm),
      backend_(backend ? std::move(backend) : throw std::invalid_argument("Engine: null backend")),
      acts_(cfg, shard_size_),
      data_rng_(opt.seed) {
  const size_t P = chargpt::num_params(cfg_);
  // Chunk boundaries depend only on the model shape, never on the thread count.
  constexpr size_t kChunk = 16384;
  for (const auto& s : param_specs(cfg_))
    for (size_t b = 0; b < s.numel; b += kChunk)
      chunks_.push_back({s.offset + b, s.offset + std::min(s.numel, b + kChunk), s.decay});
  part_ = make_partition(n_shards_, chunks_, P, comm_.size());  // before allocating: too many ranks fails fast
  params_.resize(P);
  m_.resize(P);
  v_.resize(P);
  grad_.resize(P);
  param_view_ = param_views(cfg_, params_.data());
  backend_->bind_weights(weight_table(cfg_, params_.data()));
  shard_grads_.resize(n_shards_);
  for (auto& g : shard_grads_) {
    g.resize(P);
    shard_grad_ptrs_.push_back(g.data());
    shard_grad_views_.push_back(param_views(cfg_, g.data()));
  }
  inputs_.resize((size_t)batch_size_ * cfg_.block_size);
  targets_.resize((size_t)batch_size_ * cfg_.block_size);
}

void Engine::weights_loaded() { backend_->weights_changed(0, params_.size()); }

double Engine::forward_backward() {
  const int T = cfg_.block_size;
  const float dloss = 1.f / (float)((size_t)batch_size_ * T);  // d batch mean / d token loss
  const double loss_sum = ordered_task_sum(comm_, pool_, part_.shard_begin, [&](size_t s) {
    const int n0 = (int)s * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
    const int32_t* in = inputs_.data() + (size_t)n0 * T;
    const int32_t* tg = targets_.data() + (size_t)n0 * T;
    Activations& a = acts_.local();
    const double loss = gpt_forward(*backend_, cfg_, param_view_, a, in, tg, n, T);
    gpt_backward(*backend_, cfg_, param_view_, shard_grad_views_[s], a, in, tg, n, T, dloss, /*accumulate=*/false);
    return loss;
  }, task_values_);
  return loss_sum / ((double)batch_size_ * T);
}

double Engine::reduce() {
  comm_.exchange_shard_grads(part_, shard_grad_ptrs_);  // every shard's gradient over this rank's chunks
  const double sumsq = ordered_task_sum(comm_, pool_, part_.chunk_begin, [&](size_t c) {
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
    return sum_of_squares(dst, n);
  }, task_values_);
  return std::sqrt(sumsq);
}

void Engine::update(float lr, float grad_scale, const AdamW& opt) {
  const int t = step_ + 1;
  const int me = comm_.rank();
  const size_t c0 = part_.chunk_begin[me];
  pool_.for_each(part_.chunk_begin[me + 1] - c0, [&](size_t i) {
    const ParamChunk& ch = chunks_[c0 + i];
    const size_t b = ch.begin, n = ch.end - b;
    adamw_update(params_.data() + b, grad_.data() + b, m_.data() + b, v_.data() + b, n, opt, lr, t, grad_scale,
                 ch.decay);
    backend_->weights_changed(ch.begin, ch.end);
  });
  comm_.all_gather(params_.data(), part_.float_begin);
  for (int q = 0; q < comm_.size(); ++q)
    if (q != me && part_.float_begin[q + 1] > part_.float_begin[q])
      backend_->weights_changed(part_.float_begin[q], part_.float_begin[q + 1]);
}

void Engine::gather_optimizer_state() {
  comm_.gather_to_root(m_.data(), part_.float_begin);
  comm_.gather_to_root(v_.data(), part_.float_begin);
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
  // Every rank draws the whole batch: the same sampler state everywhere.
  sample_batch(split, batch_size_, cfg_.block_size, data_rng_, inputs_.data(), targets_.data());
  const auto t1 = Clock::now();
  const double loss = forward_backward();
  const auto t2 = Clock::now();
  const double norm = reduce();
  if (grad_norm) *grad_norm = norm;
  float scale;
  try {
    scale = clip_scale(loss, norm, grad_clip, step_ + 1);
  } catch (const std::runtime_error&) {
    comm_.mark_failure_agreed();  // every rank holds the same loss and norm bits, and stops alike
    throw;
  }
  update(lr, scale, opt);
  try {
    check_weights_finite();
  } catch (const std::runtime_error&) {
    comm_.mark_failure_agreed();  // every rank holds all the updated weights: the same verdict everywhere
    throw;
  }
  ++step_;
  if (timing) {
    timing->fwd_bwd_s = std::chrono::duration<double>(t2 - t1).count();
    timing->reduce_opt_s = seconds_since(t2);
  }
  return loss;
}

double Engine::estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed) {
  if (iters <= 0) return NAN;
  const int T = cfg_.block_size;
  // All iters batches at once, so that every (batch, shard) is a task; the
  // buffers are the engine's, grown on the first call and reused after.
  Rng rng(seed);
  const size_t tokens = (size_t)iters * batch_size_ * T;
  if (eval_inputs_.size() < tokens) eval_inputs_.resize(tokens), eval_targets_.resize(tokens);
  for (int i = 0; i < iters; ++i)
    sample_batch(split, batch_size_, T, rng, eval_inputs_.data() + (size_t)i * batch_size_ * T,
                 eval_targets_.data() + (size_t)i * batch_size_ * T);
  const Bounds tasks = even_split((size_t)iters * n_shards_, comm_.size());
  const double total = ordered_task_sum(comm_, pool_, tasks, [&](size_t k) {
    const int it = (int)(k / n_shards_), s = (int)(k % n_shards_);
    const int n0 = s * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
    const size_t off = ((size_t)it * batch_size_ + n0) * T;
    return gpt_forward(*backend_, cfg_, param_view_, acts_.local(), eval_inputs_.data() + off,
                       eval_targets_.data() + off, n, T);
  }, task_values_);
  return total / ((double)iters * batch_size_ * T);
}

size_t Engine::bytes_allocated() const {
  size_t b = (params_.size() + m_.size() + v_.size() + grad_.size()) * sizeof(float);
  for (const auto& g : shard_grads_) b += g.size() * sizeof(float);
  for (const auto& a : acts_) b += a.bytes();
  return b;
}

}  // namespace chargpt
