#pragma once
// The pieces train() (train.cpp) is made of, one job each; internal to train/.
#include <memory>
#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "base/clock.h"
#include "base/lock.h"
#include "train/log_file.h"
#include "train/train.h"

namespace chargpt {

// ---- checks.cpp ---------------------------------------------------------------
// The files the run owns (owned_files.h), checked before step 1, and the lock
// beside --out, taken first and held while the returned FileLock lives. Under
// mpirun rank 0 writes, so rank 0 alone takes it (the others get no lock).
FileLock check_outputs(const TrainOptions& o, const Collective& comm);

// ---- saves.cpp ----------------------------------------------------------------
// What a run starts from: the data, and an engine over `comm` holding fresh
// weights or the resumed state of --out, once every rank has checked that
// they all run the same thing (run_fingerprint).
struct RunStart {
  Dataset ds;
  std::unique_ptr<Engine> engine;
  // Resumed with other products than the saved run's (backend, precision or CPU): the line that says
  // so; else "".
  std::string resume_note = {};
};
RunStart start_run(const TrainOptions& o, Collective& comm);

struct Losses {
  double train, val;
};
// The train and val loss estimates at a step, seeded by the step so that
// evaluation never disturbs the training sampler.
Losses estimate_losses(Engine& e, const Dataset& ds, const TrainOptions& o, int step);

// Saves weights and optimizer state as a pair (io/checkpoint.h says how a kill
// at any moment leaves a resumable pair). Every rank calls save(): nothing
// diverged is saved (the weights must give a finite loss on a batch of val,
// checked by every rank alike), then the optimizer state is gathered to rank
// 0, which writes.
struct Saver {
  const TrainOptions& opt;
  const Dataset& ds;
  int last_saved_step = -1;

  void save(Engine& e);
  // For an error message: what the checkpoint on disk is after a failure now.
  std::string on_disk() const;
};

// ---- report.cpp ---------------------------------------------------------------
// What a run tells its user (the terminal, one line rewritten in place when
// it is a terminal) and its log: the header, each step, each evaluation, the end.
class Reporter {
 public:
  Reporter(const TrainOptions& o, std::ostream& out, const Engine& e);
  void header(const Dataset& ds);
  // A line the user should see beside the progress (stderr) and find in the log ({"type":"note"}).
  void note(const std::string& text);
  void evaluation(int step, const Losses& l);
  void step(int step, double loss, float lr, double grad_norm, double step_s);
  void interrupted(int step);
  void end_of_steps();
  // Throws when the log could not be written.
  void close_log();
  void done(const TrainResult& r);
  const std::string& log_error() const { return log_.error; }

 private:
  const TrainOptions& o_;
  std::ostream& out_;
  const Engine& e_;
  bool tty_;
  LogFile log_;
  size_t tokens_per_step_;
  Clock::time_point window_start_ = Clock::now();
  int window_steps_ = 0;
  double tok_per_s_ = 0, ema_step_s_ = 0;
  double val_loss_;  // the last estimate, for the progress line
};

}  // namespace chargpt
