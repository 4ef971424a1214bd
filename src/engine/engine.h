#pragma once
// The training engine: one optimizer step, written once, over "my shards, my
// chunks" of a group of ranks (collective.h; one process is the group of size one):
//   1. every rank draws the same batch (same seed, same sampler state);
//   2. forward+backward of this rank's shards, each a oneTBB task writing its
//      own gradient buffer; the per-shard losses are gathered and summed in
//      shard order (the batch loss);
//   3. the shard gradients are exchanged so that this rank holds every
//      shard's gradient over its own parameter chunks;
//   4. per own chunk, the shards are added in shard order into the reduced
//      gradient and the chunk's squared norm is taken; the norms are gathered
//      and summed in chunk order (the same bits on every rank, so clipping and
//      the non-finite stop agree everywhere);
//   5. AdamW on the own chunks (its own range of m and v), the backend told
//      which weights changed; the updated parameters are all-gathered.
// Chunk and shard boundaries depend only on the model and batch shape, and every
// sum runs in a fixed order, so the weights are bit-identical for every thread
// count and every rank count. Bytes each rank sends per step: S_r (P - P_r) +
// P_r floats, with S_r its shards and P_r its parameters; about
// 4P (R-1)/R (S/R + 1) bytes, against 2 * 4P (R-1)/R for a ring allreduce of the
// gradients (which would add the shards in a different order).
#include <cstdint>
#include <memory>
#include <vector>

#include <tbb/enumerable_thread_specific.h>

#include "backend/backend.h"
#include "base/buffer.h"
#include "base/options.h"
#include "base/rng.h"
#include "base/threads.h"
#include "engine/collective.h"
#include "io/data.h"
#include "model/model.h"
#include "model/optim.h"

namespace chargpt {

// Shard size used when --shard-size is not given: at least 128 token rows per
// shard and at most 16 shards (so up to 16 cores find work). It depends only on
// the batch shape, never on the thread count.
int default_shard_size(int batch_size, int block_size);
// --shard-size as given (> 0), or the default.
int resolve_shard_size(int shard_size, int batch_size, int block_size);

// The factor AdamW multiplies the reduced gradient by: grad_clip / norm when the
// norm is over grad_clip (> 0), else 1. Throws, naming the step, when the loss or
// the norm is not finite. Every rank computes it from the same loss and norm
// bits, so every rank clips, or stops, alike.
float clip_scale(double loss, double norm, float grad_clip, int64_t step);

struct StepTiming {
  double fwd_bwd_s = 0, reduce_opt_s = 0;
};

// The shape of an engine's work (the model is the Config).
struct EngineOptions {
  int batch_size = 1;  // sequences per step
  int shard_size = 0;  // sequences per shard (one task); 0 = default_shard_size
  int threads = 0;     // 0 = all hardware threads
  uint64_t seed = kDefaultSeed;  // the training sampler's
};

class Engine {
 public:
  // `comm`: the ranks this engine trains with (it must outlive the engine).
  Engine(const Config& cfg, const EngineOptions& opt, const BackendOptions& backend = {},
         Collective& comm = local_collective());
  // With a backend made by the caller (tests: a recording one, or one over an emulated device).
  Engine(const Config& cfg, const EngineOptions& opt, std::unique_ptr<Backend> backend,
         Collective& comm = local_collective());

  // One optimizer step on a freshly sampled training batch (the sequence at the
  // top of this file). Returns the batch mean loss; grad_norm receives the
  // pre-clip global norm; the same values on every rank. Throws on a non-finite
  // loss or norm, before the weights change, and on non-finite weights after
  // the update (the step is then not counted), on every rank alike.
  double train_step(const std::vector<int32_t>& train_split, float lr, float grad_clip, const AdamW& opt,
                    double* grad_norm = nullptr, StepTiming* timing = nullptr);

  // Mean loss over `iters` random batches of the split (seeded by `seed`, so
  // evaluation never disturbs the training sampler). Its tasks, the iters *
  // n_shards() (batch, shard) pairs, are split across the ranks; the same bits
  // for any thread or rank count.
  double estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed);

  // The weights were written from outside (init, resume): refresh the backend's copy.
  void weights_loaded();
  // Each rank updates only its own range of the AdamW moments: before a save,
  // rank 0 receives every rank's range.
  void gather_optimizer_state();

  const Config& cfg() const { return cfg_; }
  int batch_size() const { return batch_size_; }
  int shard_size() const { return shard_size_; }
  int n_shards() const { return n_shards_; }
  size_t n_chunks() const { return chunks_.size(); }
  const std::vector<ParamChunk>& chunks() const { return chunks_; }
  const Partition& partition() const { return part_; }
  Collective& collective() const { return comm_; }
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
  int step() const { return step_; }  // completed optimizer steps
  void set_step(int s) { step_ = s; }
  Rng& data_rng() { return data_rng_; }
  const Rng& data_rng() const { return data_rng_; }
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }
  size_t bytes_allocated() const;

 private:
  // The step's phases (train_step), each over this rank's share.
  double forward_backward();  // returns the batch mean loss
  double reduce();            // returns the global gradient norm
  void update(float lr, float grad_scale, const AdamW& opt);
  // Throws, naming step()+1 and a tensor, when the update left a weight NaN or
  // infinite (after the all-gather, so every rank holds every weight).
  void check_weights_finite();

  Config cfg_;
  int batch_size_, shard_size_, n_shards_;
  ThreadPool pool_;
  Collective& comm_;
  std::unique_ptr<Backend> backend_;
  FloatBuffer params_, m_, v_;
  ConstParamViews param_view_;
  FloatBuffer grad_;                      // the reduced gradient
  std::vector<FloatBuffer> shard_grads_;  // one per shard
  std::vector<float*> shard_grad_ptrs_;
  std::vector<ParamViews> shard_grad_views_;
  std::vector<ParamChunk> chunks_;
  Partition part_;
  std::vector<double> task_values_;  // per shard, chunk or evaluation task (ordered_task_sum)
  std::vector<int32_t> inputs_, targets_;            // [B,T]
  std::vector<int32_t> eval_inputs_, eval_targets_;  // [iters,B,T] of estimate_loss
  tbb::enumerable_thread_specific<Activations> acts_;
  int step_ = 0;
  Rng data_rng_;
};

}  // namespace chargpt
