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

int default_pass_size(int shard_size, int block_size) {
  // 128 rows keep the products near the BLAS rate (measured: nanogpt's shard of
  // 4 x 256 rows in 1-sequence passes runs as fast as in one pass) while the
  // activations shrink with the pass.
  const int64_t min_rows = (128 + (int64_t)block_size - 1) / block_size;
  return (int)std::min<int64_t>(shard_size, min_rows);
}

int resolve_pass_size(int pass_size, int shard_size, int block_size) {
  if (pass_size > shard_size)
    throw std::runtime_error("--pass-size " + std::to_string(pass_size) + " exceeds the shard size " +
                             std::to_string(shard_size) + " (--shard-size): a pass is part of one shard");
  return pass_size > 0 ? pass_size : default_pass_size(shard_size, block_size);
}

// Shards each rank computes per round: min(threads, shards per rank), or the
// requested count; the smallest over the ranks, so that every rank runs the same rounds.
static size_t agreed_group(Collective& comm, int threads, int in_flight, int n_shards) {
  const int R = comm.size();
  const size_t per_rank = std::max<size_t>(1, ((size_t)n_shards + R - 1) / R);
  size_t g = std::min<size_t>(per_rank, (size_t)(in_flight > 0 ? in_flight : threads));
  if (R > 1) {
    std::vector<uint64_t> all(R);
    all[comm.rank()] = g;
    comm.all_gather(all.data(), even_split(R, R));
    for (uint64_t x : all) g = std::min<size_t>(g, x);
  }
  return std::max<size_t>(g, 1);
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
      pass_size_(resolve_pass_size(opt.pass_size, shard_size_, cfg.block_size)),
      n_shards_((batch_size_ + shard_size_ - 1) / shard_size_),
      pool_(opt.threads),
      comm_(comm),
      backend_(backend ? std::move(backend) : throw std::invalid_argument("Engine: null backend")),
      data_rng_(opt.seed) {
  const size_t P = chargpt::num_params(cfg_);
  // Chunk boundaries depend only on the model shape, never on the thread count.
  constexpr size_t kChunk = 16384;
  for (const auto& s : param_specs(cfg_))
    for (size_t b = 0; b < s.numel; b += kChunk)
      chunks_.push_back({s.offset + b, s.offset + std::min(s.numel, b + kChunk), s.decay});
  part_ = make_partition(n_shards_, chunks_, P, comm_.size(),
                         agreed_group(comm_, pool_.threads, opt.in_flight, n_shards_));
  params_.resize(P);
  m_.resize(P);
  v_.resize(P);
  grad_.resize(P);
  param_view_ = param_views(cfg_, params_.data());
  backend_->bind_weights(weight_table(cfg_, params_.data()));
  // One process whose shards all fit in one round: slot 0 (shard 0) is the gradient itself,
  // since the fold's first term is a copy; it saves a buffer and a pass over it.
  const bool slot0_is_grad = comm_.size() == 1 && part_.rounds == 1;
  slot_grads_.resize(part_.group - (slot0_is_grad ? 1 : 0));
  if (slot0_is_grad) slot_grad_ptrs_.push_back(grad_.data());
  for (auto& g : slot_grads_) {
    g.resize(P);
    slot_grad_ptrs_.push_back(g.data());
  }
  for (float* g : slot_grad_ptrs_) slot_grad_views_.push_back(param_views(cfg_, g));
  for (size_t j = 0; j < part_.group; ++j) acts_.emplace_back(cfg_, pass_size_);
  shard_loss_.resize(n_shards_);
  inputs_.resize((size_t)batch_size_ * cfg_.block_size);
  targets_.resize((size_t)batch_size_ * cfg_.block_size);
}

void Engine::weights_loaded() { backend_->weights_changed(0, params_.size()); }

double Engine::run_shard(int slot, const int32_t* in, const int32_t* tg, int n, const ParamViews* grads) {
  seen_.local() = 1;
  const int T = cfg_.block_size;
  const float dloss = 1.f / (float)((size_t)batch_size_ * T);  // d batch mean / d token loss
  Activations& a = acts_[slot];
  double loss = 0;  // the passes' sums in pass order
  for (int p0 = 0; p0 < n; p0 += pass_size_) {
    const int m = std::min(pass_size_, n - p0);
    const size_t off = (size_t)p0 * T;
    loss += gpt_forward(*backend_, cfg_, param_view_, a, in + off, tg + off, m, T);
    if (grads)
      gpt_backward(*backend_, cfg_, param_view_, *grads, a, in + off, tg + off, m, T, dloss, /*accumulate=*/p0 > 0);
  }
  return loss;
}

double Engine::gradient(StepTiming* timing) {
  const int T = cfg_.block_size, me = comm_.rank();
  const size_t fb = part_.float_begin[me], c0 = part_.chunk_begin[me], c1 = part_.chunk_begin[me + 1];
  double fwd_bwd_s = 0;
  for (size_t k = 0; k < part_.rounds; ++k) {
    const Bounds round = part_.round(k);
    const size_t s0 = round[me], mine = round[me + 1] - s0;
    const auto t0 = Clock::now();
    pool_.for_each(mine, [&](size_t j) {
      const int n0 = (int)(s0 + j) * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
      shard_loss_[s0 + j] = run_shard((int)j, inputs_.data() + (size_t)n0 * T, targets_.data() + (size_t)n0 * T, n,
                                      &slot_grad_views_[j]);
    });
    fwd_bwd_s += seconds_since(t0);
    comm_.all_gather(shard_loss_.data(), round);
    comm_.exchange_round(part_, round, {slot_grad_ptrs_.begin(), slot_grad_ptrs_.begin() + mine}, from_);
    // The fold, per own chunk: (((g0 + g1) + g2) + ...) in shard order, whichever
    // round and rank computed each shard.
    pool_.for_each(c1 - c0, [&](size_t i) {
      const size_t b = chunks_[c0 + i].begin, n = chunks_[c0 + i].end - b;
      float* dst = grad_.data() + b;
      for (size_t r = 0; r < from_.size(); ++r) {
        const float* src = from_[r] + (b - fb);
        if (src == dst) continue;  // shard 0 written in place (slot0_is_grad)
        if (round[0] + r == 0)
          for (size_t x = 0; x < n; ++x) dst[x] = src[x];
        else
          for (size_t x = 0; x < n; ++x) dst[x] += src[x];
      }
    });
  }
  if (timing) timing->fwd_bwd_s = fwd_bwd_s;
  double loss_sum = 0;
  for (double l : shard_loss_) loss_sum += l;  // shard order
  return loss_sum / ((double)batch_size_ * T);
}

double Engine::norm() {
  const double sumsq = ordered_task_sum(comm_, pool_, part_.chunk_begin, [&](size_t c) {
    return sum_of_squares(grad_.data() + chunks_[c].begin, chunks_[c].end - chunks_[c].begin);
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
  StepTiming t;
  const double loss = gradient(&t);
  const double norm = this->norm();
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
    // The rounds' exchanges and folds count with the reduce.
    timing->fwd_bwd_s = t.fwd_bwd_s;
    timing->reduce_opt_s = seconds_since(t1) - t.fwd_bwd_s;
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
  const size_t k0 = tasks[comm_.rank()], k1 = tasks[comm_.rank() + 1], G = part_.group;
  if (task_values_.size() < tasks.back()) task_values_.resize(tasks.back());
  for (size_t base = k0; base < k1; base += G)  // `group` at a time: one slot's activations each
    pool_.for_each(std::min(G, k1 - base), [&](size_t j) {
      const size_t k = base + j;
      const int it = (int)(k / n_shards_), s = (int)(k % n_shards_);
      const int n0 = s * shard_size_, n = std::min(shard_size_, batch_size_ - n0);
      const size_t off = ((size_t)it * batch_size_ + n0) * T;
      task_values_[k] = run_shard((int)j, eval_inputs_.data() + off, eval_targets_.data() + off, n, nullptr);
    });
  comm_.all_gather(task_values_.data(), tasks);
  double total = 0;
  for (size_t k = 0; k < tasks.back(); ++k) total += task_values_[k];  // task order, whoever ran the task
  return total / ((double)iters * batch_size_ * T);
}

size_t Engine::bytes_allocated() const {
  size_t b = (params_.size() + m_.size() + v_.size() + grad_.size()) * sizeof(float);
  for (const auto& g : slot_grads_) b += g.size() * sizeof(float);
  for (const auto& a : acts_) b += a.bytes();
  return b;
}

}  // namespace chargpt
