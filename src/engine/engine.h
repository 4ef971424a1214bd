#pragma once
// The training engine. A step runs in three phases, each over an index range so
// that a process (or a test) can run any share of it:
//   forward_backward(shards): every shard (whole sequences of the batch) runs
//     forward+backward as a oneTBB task into its own gradient buffer;
//   reduce(chunks): per parameter chunk, the shard buffers are summed in shard
//     order into the reduced gradient, and the chunk's squared norm is taken;
//   update(chunks): AdamW on each chunk, then the backend is told which weights
//     changed (so a bf16 or GPU copy is refreshed once per step).
// Chunk and shard boundaries depend only on the model and batch shape, and every
// sum runs in a fixed order, so the weights are bit-identical for every thread
// count.
#include <cstdint>
#include <memory>
#include <vector>

#include <tbb/enumerable_thread_specific.h>

#include "backend/backend.h"
#include "base/buffer.h"
#include "io/data.h"
#include "model/model.h"
#include "model/optim.h"
#include "base/rng.h"
#include "base/threads.h"

namespace chargpt {

// Shard size used when --shard-size is not given: at least 128 token rows per
// shard and at most 16 shards (so up to 16 cores find work). It depends only on
// the batch shape, never on the thread count.
int default_shard_size(int batch_size, int block_size);
// --shard-size as given (> 0), or the default.
int resolve_shard_size(int shard_size, int batch_size, int block_size);

// The factor AdamW multiplies the reduced gradient by: grad_clip / norm when the
// norm is over grad_clip (> 0), else 1. Throws, naming the step, when the loss or
// the norm is not finite. Every training path calls this one function, so the
// float rounding of the factor is the same everywhere.
float clip_scale(double loss, double norm, float grad_clip, int64_t step);

struct StepTiming {
  double fwd_bwd_s = 0, reduce_opt_s = 0;
};

// A fixed slice of the parameter block; never straddles two tensors (so it has
// one weight-decay flag).
struct ParamChunk {
  size_t begin, end;
  bool decay;
};

class Engine {
 public:
  Engine(const Config& cfg, int batch_size, int shard_size, int threads, uint64_t seed,
         const BackendOptions& backend = {});
  // With a backend made by the caller (tests: a recording one, or one over an emulated device).
  Engine(const Config& cfg, int batch_size, int shard_size, int threads, uint64_t seed,
         std::unique_ptr<Backend> backend);

  // One optimizer step on a freshly sampled training batch: the three phases
  // over all shards and chunks. Returns the batch mean loss; grad_norm receives
  // the pre-clip global norm. Throws on a non-finite loss or norm, before the
  // weights change.
  double train_step(const std::vector<int32_t>& train_split, float lr, float grad_clip, const AdamW& opt,
                    double* grad_norm = nullptr, StepTiming* timing = nullptr);

  // --- the phases (train_step is these in order) ---
  // Draws the next batch from the training sampler.
  void sample_next_batch(const std::vector<int32_t>& train_split);
  // Forward+backward of shards [begin, end) of the current batch.
  void forward_backward(size_t shard_begin, size_t shard_end);
  // Sums every shard's gradient into the reduced gradient over chunks [begin, end)
  // and records each chunk's squared norm.
  void reduce(size_t chunk_begin, size_t chunk_end);
  // AdamW (step number step()+1) on chunks [begin, end) with the gradient scaled by
  // grad_scale; tells the backend which weights changed. Call finish_step() after
  // every chunk has been updated.
  void update(size_t chunk_begin, size_t chunk_end, float lr, float grad_scale, const AdamW& opt);
  void finish_step() { ++step_; }
  // Throws, naming step()+1 and a tensor, when an update left a weight NaN or
  // infinite. Call after update() and before finish_step().
  void check_weights_finite();
  // Batch mean loss of the last forward_backward (all shards), summed in shard order.
  double batch_loss() const;
  // Squared global gradient norm of the last reduce (all chunks), summed in chunk order.
  double grad_norm_sq() const;

  // Mean loss over `iters` random batches of the split (seeded by `seed`, so
  // evaluation never disturbs the training sampler).
  double estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed);
  // estimate_loss in pieces, for splitting it across processes (dist.h): its
  // tasks are the iters * n_shards() (batch, shard) pairs, batch-major; this runs
  // tasks [k0, k1) into sums[0, k1 - k0). estimate_loss is the sum of all
  // tasks' sums in task order over iters * batch_size * block_size.
  void estimate_loss_tasks(const std::vector<int32_t>& split, int iters, uint64_t seed, size_t k0, size_t k1,
                           double* sums);

  // The weights were written from outside (init, resume): refresh the backend's copy.
  void weights_loaded();

  const Config& cfg() const { return cfg_; }
  int batch_size() const { return batch_size_; }
  int shard_size() const { return shard_size_; }
  int n_shards() const { return n_shards_; }
  size_t n_chunks() const { return chunks_.size(); }
  const std::vector<ParamChunk>& chunks() const { return chunks_; }
  int threads() const { return pool_.threads; }
  // Threads that have run a shard so far (their workspaces).
  int threads_seen() const { return (int)acts_.size(); }
  size_t num_params() const { return params_.size(); }
  float* params() { return params_.data(); }
  const float* params() const { return params_.data(); }
  float* adam_m() { return m_.data(); }
  const float* adam_m() const { return m_.data(); }
  float* adam_v() { return v_.data(); }
  const float* adam_v() const { return v_.data(); }
  float* grad() { return grad_.data(); }  // the reduced gradient
  float* shard_grad(size_t s) { return shard_grads_[s].data(); }
  double* shard_loss() { return shard_loss_.data(); }
  double* chunk_sumsq() { return chunk_sumsq_.data(); }
  int step() const { return step_; }  // completed optimizer steps
  void set_step(int s) { step_ = s; }
  Rng& data_rng() { return data_rng_; }
  const Rng& data_rng() const { return data_rng_; }
  Backend& backend() { return *backend_; }
  size_t bytes_allocated() const;

 private:
  Config cfg_;
  int batch_size_, shard_size_, n_shards_;
  ThreadPool pool_;
  std::unique_ptr<Backend> backend_;
  FloatBuffer params_, m_, v_;
  ConstParamViews param_view_;
  FloatBuffer grad_;                      // the reduced gradient
  std::vector<FloatBuffer> shard_grads_;  // one per shard
  std::vector<ParamViews> shard_grad_views_;
  std::vector<ParamChunk> chunks_;
  std::vector<double> chunk_sumsq_;  // per-chunk partial of the squared gradient norm
  std::vector<double> shard_loss_;   // per-shard loss sums
  std::vector<int32_t> inputs_, targets_;            // [B,T]
  std::vector<int32_t> eval_inputs_, eval_targets_;  // [iters,B,T] of estimate_loss
  std::vector<double> eval_sums_;                    // estimate_loss's per-task loss sums
  tbb::enumerable_thread_specific<Activations> acts_;
  int step_ = 0;
  Rng data_rng_;
};

}  // namespace chargpt
