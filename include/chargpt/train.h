#pragma once
// The training loop around the Engine (engine.h): options, evaluation at
// intervals, checkpoints, progress, the log, and the end-of-run summary.
#include <atomic>
#include <cstdint>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "chargpt/backend.h"
#include "chargpt/engine.h"
#include "chargpt/evaluate.h"
#include "chargpt/model.h"
#include "chargpt/optim.h"

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
  BackendOptions backend;  // where the matrix products run (default: OpenBLAS fp32)
  bool resume = false;
  bool quiet = false;  // no progress output (tests, bench)
};

// The optimizer-state file that sits beside a weights file.
std::string optim_state_path(const std::string& weights_path);

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
