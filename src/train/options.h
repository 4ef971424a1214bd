#pragma once
// Training's options: the presets, TrainOptions and the option tables that the
// command line and the library's own check both read (base/options.h).
#include <cstdint>
#include <functional>
#include <string>

#include "backend/backend.h"
#include "base/options.h"
#include "base/threads.h"
#include "model/model.h"
#include "model/optim.h"

namespace chargpt {

// A named model shape and batch size (--preset).
struct Preset {
  const char* name;
  Config model;  // vocab_size is taken from the data
  int batch_size;
  const char* about;
};
inline const Preset kPresets[] = {
    {"baby", {.block_size = 64, .n_layer = 4, .n_head = 4, .n_embd = 128}, 12,
     "nanoGPT's baby GPT for Shakespeare on a CPU"},
    {"nanogpt", {.block_size = 256, .n_layer = 6, .n_head = 6, .n_embd = 384}, 64,
     "nanoGPT's train_shakespeare_char"},
};
inline const Preset& kDefaultPreset = kPresets[0];

inline constexpr const char* kDefaultDataPath = "data/tinyshakespeare.txt";
inline constexpr const char* kDefaultCheckpointPath = "checkpoints/shakespeare.safetensors";

struct TrainOptions {
  std::string data_path = kDefaultDataPath;
  std::string out_path = kDefaultCheckpointPath;
  std::string log_path;  // JSON Lines, empty = none
  Config model = kDefaultPreset.model;  // vocab_size is taken from the data (or the resumed checkpoint)
  int batch_size = kDefaultPreset.batch_size;
  int shard_size = 0;  // sequences per shard; 0 = auto (see default_shard_size)
  int pass_size = 0;   // sequences per forward/backward call; 0 = auto (see default_pass_size)
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
  uint64_t seed = kDefaultSeed;
  int threads = 0;  // 0 = all hardware threads
  BackendOptions backend;  // where the matrix products run (default: OpenBLAS fp32)
  bool resume = false;
  bool force = false;  // replace an existing checkpoint (and log) without --resume
  bool quiet = false;  // no progress output (tests, bench)
  // Polled at the end of every step: true saves a checkpoint and returns with
  // TrainResult::interrupted (the CLI's SIGINT/SIGTERM handler sets what it reads).
  std::function<bool()> should_stop;
};

// The option tables (see options.h). The model shape and batch, whose
// defaults come from the preset on the command line:
template <class O, class V>
void for_each_shape_option(O& o, V&& v) {
  v(o.model.n_layer, "n-layer", "transformer blocks", at_least(1));
  v(o.model.n_head, "n-head", "attention heads", at_least(1));
  v(o.model.n_embd, "n-embd", "embedding width", at_least(1));
  v(o.model.block_size, "block-size", "context length in characters", between(1, 4096));
  v(o.batch_size, "batch-size", "sequences per step", at_least(1));
}
template <class O, class V>
void for_each_shard_option(O& o, V&& v) {
  v(o.shard_size, "shard-size",
    "sequences per shard, the unit of the gradient sum (0 = auto: >= 128 tokens a shard, at most 16 shards); "
    "changes the float summation order, so keep it fixed to reproduce a run",
    at_least(0));
  v(o.pass_size, "pass-size",
    "sequences per forward/backward call inside a shard, at most --shard-size (0 = auto: the fewest that make "
    ">= 128 tokens); bounds the activation memory; changes the float summation order, so keep it fixed to "
    "reproduce a run",
    at_least(0));
}
// The rest of training's options.
template <class O, class V>
void for_each_train_option(O& o, V&& v) {
  v(o.data_path, "data", "training text (UTF-8)");
  v(o.out_path, "out",
    "checkpoint to write (safetensors; optimizer state beside it as *.optim.safetensors). It must be a regular "
    "file or not exist, and not be an input; an existing one is replaced only with --resume or --force");
  v(o.steps, "steps", "total optimizer steps", at_least(0));
  v(o.lr, "lr", "peak learning rate", above(0));
  v(o.min_lr, "min-lr", "learning rate at the end of the cosine decay", at_least(0));
  v(o.warmup, "warmup", "linear warmup steps", at_least(0));
  v(o.lr_decay_steps, "lr-decay-steps", "length of the cosine schedule (0 = --steps)", at_least(0));
  v(o.adamw.weight_decay, "weight-decay", "AdamW decoupled weight decay (2-D weights only)", at_least(0));
  v(o.adamw.beta1, "beta1", "AdamW beta1", between(0, 1, false, true));
  v(o.adamw.beta2, "beta2", "AdamW beta2", between(0, 1, false, true));
  v(o.grad_clip, "grad-clip", "clip the global gradient norm to this (0 = off)", at_least(0));
  v(o.eval_interval, "eval-interval", "estimate train/val loss every N steps (0 = only at the end)", at_least(0));
  v(o.eval_iters, "eval-iters", "batches per loss estimate", at_least(1));
  v(o.save_interval, "save-interval", "also save every N steps (0 = only at the end)", at_least(0));
  v(o.resume, "resume", "continue from the checkpoint at --out (weights, optimizer, step, data sampler)");
  v(o.force, "force", "start a new run even if --out (or --log) exists, replacing it");
  v(o.seed, "seed", "random seed (init and data order)");
  v(o.threads, "threads", kThreadsHelp, kThreadLimits);
  v(o.log_path, "log",
    "write JSON Lines: one object per logged step and per evaluation (appended with --resume). A failed write "
    "stops the run with an error after saving the checkpoint");
  v(o.log_interval, "log-interval", "steps between log lines", at_least(1));
}

// The library's own guard: the same tables the command line checks (as usage errors) first.
void check_options(const TrainOptions& o);

}  // namespace chargpt
