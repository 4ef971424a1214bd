#pragma once
// The training engine: a batch is split into shards (whole sequences) that run
// forward+backward as oneTBB tasks, each into its own gradient buffer; the
// buffers are reduced in parallel over parameter chunks, in a fixed order, fused
// with the global-norm sum; then AdamW runs in parallel over the same chunks.
// Nothing in a step depends on the thread count, so weights are bit-identical
// for every --threads value.
#include <atomic>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include <tbb/enumerable_thread_specific.h>
#include <tbb/task_arena.h>

#include "chargpt/buffer.h"
#include "chargpt/data.h"
#include "chargpt/model.h"
#include "chargpt/optim.h"
#include "chargpt/rng.h"
#include "chargpt/threads.h"

namespace chargpt {

struct TrainOptions {
  std::string data_path = "data/tinyshakespeare.txt";
  std::string out_path = "checkpoints/shakespeare.safetensors";
  std::string log_path;  // JSON Lines, empty = none
  Config model;          // vocab_size is taken from the data (or the resumed checkpoint)
  int batch_size = 12;
  int shard_size = 0;  // sequences per shard; 0 = auto (see default_shard_size)
  int steps = 2000;
  int lr_decay_steps = 0;  // 0 = steps
  int warmup = 100;
  float lr = 1e-3f;
  float min_lr = 1e-4f;
  float grad_clip = 1.0f;  // 0 = off
  AdamW adamw;
  int eval_interval = 250;  // 0 = only at the end
  int eval_iters = 20;
  int save_interval = 0;  // 0 = only at the end
  int log_interval = 10;
  uint64_t seed = 1337;
  int threads = 0;  // 0 = all hardware threads
  bool resume = false;
  bool quiet = false;  // no progress output (tests, bench)
};

// Shard size used when --shard-size is not given: at least 128 token rows per
// shard and at most 16 shards (so up to 16 cores find work). It depends only on
// the batch shape, never on the thread count.
int default_shard_size(int batch_size, int block_size);

// The optimizer-state file that sits beside a weights file.
std::string optim_state_path(const std::string& weights_path);

struct StepTiming {
  double fwd_bwd_s = 0, reduce_opt_s = 0;
};

struct Engine {
  Config cfg;
  int batch_size, shard_size, n_shards;
  ThreadPool pool;
  FloatBuffer params, m, v;
  ParamViews param_view;
  std::vector<FloatBuffer> shard_grads;  // one per shard; [0] holds the reduced gradient after a step
  std::vector<ParamViews> shard_grad_views;
  struct Chunk {
    size_t begin, end;
    bool decay;
  };
  std::vector<Chunk> chunks;          // fixed partition of the parameter block
  std::vector<double> chunk_sumsq;    // per-chunk partial of the squared gradient norm
  std::vector<double> shard_loss;     // per-shard loss sums
  std::vector<int32_t> inputs, targets;  // [B,T]
  std::vector<int32_t> eval_inputs, eval_targets;  // [iters,B,T] of estimate_loss
  std::vector<double> eval_sums;                   // estimate_loss's per-task loss sums
  tbb::enumerable_thread_specific<Activations> acts;
  int step = 0;  // completed optimizer steps
  Rng data_rng;

  Engine(const Config& cfg, int batch_size, int shard_size, int threads, uint64_t seed);

  // One optimizer step on a freshly sampled training batch. Returns the batch
  // mean loss; grad_norm receives the pre-clip global norm.
  double train_step(const std::vector<int32_t>& train_split, float lr, float grad_clip, const AdamW& opt,
                    double* grad_norm = nullptr, StepTiming* timing = nullptr);

  // Mean loss over `iters` random batches of the split (seeded by `seed`, so
  // evaluation never disturbs the training sampler).
  double estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed);

  size_t bytes_allocated() const;
};

// Exact mean loss over a whole split: windows of block_size starting at 0, T,
// 2T, … (the last one shorter), each target counted once. Deterministic.
struct EvalResult {
  double loss;
  size_t tokens;
};
EvalResult evaluate_split(const Config& cfg, const float* params, const std::vector<int32_t>& split, int threads,
                          int windows_per_task = 8);

struct TrainResult {
  int steps = 0;          // total optimizer steps completed
  int steps_this_run = 0;
  double wall_s = 0;
  double tok_per_s = 0;
  double train_loss = 0;  // estimate at the end
  double val_loss = 0;
  bool interrupted = false;  // stopped by SIGINT after saving
  size_t peak_rss_bytes = 0;
};

// Set by the SIGINT handler: the loop saves at the end of the current step and returns.
extern std::atomic<int> g_interrupts;

TrainResult train(const TrainOptions& opt, std::ostream& out);

// Current peak resident set size of this process.
size_t peak_rss_bytes();

}  // namespace chargpt
