#pragma once
// Training a model: train() runs the Engine (engine/engine.h) over the steps
// with evaluation at intervals, checkpoints, progress, the log and the
// end-of-run summary. Its pieces, by job: options.h (options and presets),
// checks.cpp (options, outputs, what ranks must agree on), saves.cpp (start,
// resume, loss estimates, saves), report.cpp (progress lines and the log),
// train.cpp (the loop).
#include <cstdint>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/evaluate.h"
#include "io/checkpoint.h"
#include "io/data.h"
#include "io/train_state.h"
#include "train/options.h"

namespace chargpt {

struct TrainResult {
  int steps = 0;          // total optimizer steps completed
  int steps_this_run = 0;
  double wall_s = 0;
  double tok_per_s = 0;
  double train_loss = 0;  // estimate at the end
  double val_loss = 0;
  bool interrupted = false;  // stopped by should_stop after saving
  size_t peak_rss_bytes = 0;
};

// Checks opt (the option tables' ranges) and the outputs before step 1: --out, the
// optimizer state beside it and --log must each be a regular file or absent,
// not an input nor each other; an existing one is replaced only with
// opt.resume or opt.force; their directories must be writable.
TrainResult train(const TrainOptions& opt, std::ostream& out);

// Throws (naming `what` and the path) when `path` exists and is not a regular
// file, or is the same file as one of `inputs`.
void check_output_path(const std::string& what, const std::string& path, const std::vector<std::string>& inputs);
// Throws unless a file can be created (and is removed again) in the directory
// of `path`, creating the directory as a save would.
void check_directory_writable(const std::string& what, const std::string& path);

// Current peak resident set size of this process.
size_t peak_rss_bytes();

// What the ranks of one training run must agree on, as (description, hash)
// pairs for check_agreement (engine/collective.h): the model config, the batch and its
// shards, the schedule and optimizer flags, the evaluation and save intervals,
// the seed, the backend, the data (every token of both splits and the
// vocabulary), and the starting state (weights, AdamW moments, step, sampler).
// Paths, --threads and the log settings may differ between ranks.
std::vector<std::pair<std::string, uint64_t>> run_fingerprint(const TrainOptions& o, const Engine& e, const Dataset& ds);

}  // namespace chargpt
