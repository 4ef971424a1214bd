#pragma once
// The training engine: one optimizer step, written once, over "my shards, my
// chunks" of a group of ranks (collective.h; one process is the group of size one).
//
// Two units fix the arithmetic, both set by the batch shape and flags, never by
// the thread or rank count:
//   - the SHARD (--shard-size sequences): the unit of the gradient sum. Shard
//     s's gradient is one buffer; the step's gradient is the left fold
//     ((g0 + g1) + g2) + ... over the shards in shard order.
//   - the PASS (--pass-size sequences): one forward/backward call. A shard's
//     passes run in order into its buffer (the first writes, the rest
//     accumulate), so activation memory is bounded by the pass, not the shard.
// The step:
//   1. every rank draws the same batch (same seed, same sampler state);
//   2. in rounds (Partition::round): rank q computes its `group` shards of the
//      round, each a oneTBB task with its own gradient buffer and activations
//      (a slot); the slices of each shard's gradient go to their chunk owners
//      (Collective::exchange_round), and each owner folds the round's shards, in
//      shard order, into its chunks of the step's gradient. The per-shard losses
//      are gathered and summed in shard order (the batch loss);
//   3. per own chunk the gradient's squared norm is taken; the norms are
//      gathered and summed in chunk order (the same bits on every rank, so
//      clipping and the non-finite stop agree everywhere);
//   4. AdamW on the own chunks (its own range of m and v), the backend told
//      which weights changed; the updated parameters are all-gathered.
// Every float of the gradient sees the same additions in the same order for any
// group size, thread count or rank count (the fold order is the shard order, and
// which rank or thread computed a shard changes no bits), so resume and MPI are
// exact. Memory is bounded by the work in flight: `group` gradient buffers and
// activation sets plus the step's gradient, whatever the shard count. The group
// is min(threads, shards per rank), agreed across ranks (the smallest).
//
// Bytes each rank sends per step, S shards, R ranks, P parameters, P_r own:
// sum over its shards of (P - P_r) + P_r for the all-gather; about
// 4P (S/R + 1)(R-1)/R, against 2 * 4P (R-1)/R for a ring allreduce of the
// gradients (which would add the shards in a different order, so another sum).
// scripts/bench/mpi_model.py tabulates both.
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
// Pass size used when --pass-size is not given: the fewest sequences that make at
// least 128 token rows (the products' efficiency), at most the shard.
int default_pass_size(int shard_size, int block_size);
// --pass-size as given (> 0), or the default. Throws, naming both flags, when it
// exceeds the shard size.
int resolve_pass_size(int pass_size, int shard_size, int block_size);

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
  int pass_size = 0;   // sequences per forward/backward call; 0 = default_pass_size
  int threads = 0;     // 0 = all hardware threads
  // Shards in flight per rank (gradient buffers and activation sets); 0 =
  // min(threads, shards per rank). Changes memory and speed, never the bits.
  int in_flight = 0;
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
  // n_shards() (batch, shard) pairs, each forward in passes, are split across
  // the ranks and run `group` at a time; the same bits for any thread or rank count.
  double estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed);

  // The weights were written from outside (init, resume): refresh the backend's copy.
  void weights_loaded();
  // Each rank updates only its own range of the AdamW moments: before a save,
  // rank 0 receives every rank's range.
  void gather_optimizer_state();

  const Config& cfg() const { return cfg_; }
  int batch_size() const { return batch_size_; }
  int shard_size() const { return shard_size_; }
  int pass_size() const { return pass_size_; }
  int n_shards() const { return n_shards_; }
  // Shards this rank computes at once (part_.group): its gradient buffers and activation sets.
  int in_flight() const { return (int)part_.group; }
  size_t n_chunks() const { return chunks_.size(); }
  const std::vector<ParamChunk>& chunks() const { return chunks_; }
  const Partition& partition() const { return part_; }
  Collective& collective() const { return comm_; }
  int threads() const { return pool_.threads; }
  // Distinct threads that have run a shard so far.
  int threads_seen() const { return (int)seen_.size(); }
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
  // Every round's shards, exchanged and folded into grad_; returns the batch mean loss.
  double gradient(StepTiming* timing);
  double norm();  // the global gradient norm, from the own chunks
  // Shard s's passes (forward + backward into `grads` when given) on slot's activations;
  // `in`/`tg` point at the shard's batch. Returns the sum of its token losses.
  double run_shard(int slot, const int32_t* in, const int32_t* tg, int n, const ParamViews* grads);
  void update(float lr, float grad_scale, const AdamW& opt);
  // Throws, naming step()+1 and a tensor, when the update left a weight NaN or
  // infinite (after the all-gather, so every rank holds every weight).
  void check_weights_finite();

  Config cfg_;
  int batch_size_, shard_size_, pass_size_, n_shards_;
  ThreadPool pool_;
  Collective& comm_;
  std::unique_ptr<Backend> backend_;
  FloatBuffer params_, m_, v_;
  ConstParamViews param_view_;
  FloatBuffer grad_;  // the step's gradient (this rank's chunks are the ones it owns)
  std::vector<ParamChunk> chunks_;
  Partition part_;
  // One slot per shard in flight: a gradient buffer and an activation set (pass-sized).
  std::vector<FloatBuffer> slot_grads_;
  std::vector<float*> slot_grad_ptrs_;
  std::vector<ParamViews> slot_grad_views_;
  std::vector<Activations> acts_;
  std::vector<const float*> from_;   // a round's shards over the own floats (exchange_round)
  std::vector<double> shard_loss_;   // per shard of the step
  std::vector<double> task_values_;  // per chunk or evaluation task (ordered_task_sum)
  std::vector<int32_t> inputs_, targets_;            // [B,T]
  std::vector<int32_t> eval_inputs_, eval_targets_;  // [iters,B,T] of estimate_loss
  tbb::enumerable_thread_specific<char> seen_;  // threads that ran a shard
  int step_ = 0;
  Rng data_rng_;
};

}  // namespace chargpt
