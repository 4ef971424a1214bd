#include "train/train.h"
#include "base/clock.h"

#include "base/hash.h"

#include <sys/resource.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>


#include "io/checkpoint.h"
#include "base/hash.h"
#include "base/lock.h"
#include "engine/memory.h"
#include "dist/dist.h"
#include "train/log_file.h"
#include "train/owned_files.h"

namespace chargpt {

using json = nlohmann::json;

size_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

// ---------------------------------------------------------------------------
// The training loop.

namespace {

// Saves weights and optimizer state as a pair (checkpoint.h says how a kill
// at any moment leaves a resumable pair).
struct Saver {
  const TrainOptions& opt;
  const Config& cfg;
  const Dataset& ds;
  int last_saved_step = -1;

  void save(const Engine& e) {
    if (e.step() == last_saved_step) return;  // e.g. a save-interval step that is also the last one
    const std::pair<const char*, const float*> arrays[] = {{"weight", e.params()}, {"AdamW first moment", e.adam_m()},
                                                           {"AdamW second moment", e.adam_v()}};
    for (const auto& [what, p] : arrays)
      for (size_t i = 0; i < e.num_params(); ++i)
        if (!std::isfinite(p[i]))
          throw std::runtime_error("step " + std::to_string(e.step()) + " left a non-finite " + what + " (index " +
                                   std::to_string(i) + "): the run diverged and it is not saved; '" + opt.out_path +
                                   "' is left as it was");
    TrainState st;
    st.step = e.step();
    st.data_rng = e.data_rng().s;
    st.has_run_identity = true;
    st.seed = opt.seed;
    st.batch_size = opt.batch_size;
    st.data_hash = ds.text_hash;
    st.data_bytes = ds.text_bytes;
    st.data_path = opt.data_path;
    try {
      save_training_checkpoint(opt.out_path, cfg, ds.tok, e.params(), e.adam_m(), e.adam_v(), st);
    } catch (const std::exception& ex) {
      throw std::runtime_error("saving step " + std::to_string(e.step()) + " failed: " + ex.what() +
                               "; the checkpoint on disk, if any, is left as it was");
    }
    last_saved_step = e.step();
  }
};

// The optimizer state that pairs with the resumed weights, and the checks that
// the run continues with what it started with.
void load_resume_state(const TrainOptions& opt, const Model& model, const Metadata& wmeta, const Dataset& ds,
                       Engine& e) {
  const TrainState st = load_optimizer_state(opt.out_path, model, wmeta, e.adam_m(), e.adam_v());
  if (st.has_run_identity) {
    const std::string from = "the run saved in '" + opt.out_path + "'";
    if (st.seed != opt.seed)
      throw std::runtime_error("cannot resume with --seed " + std::to_string(opt.seed) + ": " + from +
                               " was started with --seed " + std::to_string(st.seed));
    if (st.batch_size != opt.batch_size)
      throw std::runtime_error("cannot resume with --batch-size " + std::to_string(opt.batch_size) + ": " + from +
                               " was trained with --batch-size " + std::to_string(st.batch_size));
    if (st.data_hash != ds.text_hash || st.data_bytes != ds.text_bytes)
      throw std::runtime_error("cannot resume with --data '" + opt.data_path + "' (" +
                               std::to_string(ds.text_bytes) + " bytes, fingerprint " + hex64(ds.text_hash) +
                               "): " + from + " was trained on '" + st.data_path + "' (" +
                               std::to_string(st.data_bytes) + " bytes, fingerprint " + hex64(st.data_hash) + ")");
  }
  std::memcpy(e.params(), model.params.data(), e.num_params() * sizeof(float));
  e.set_step(st.step);
  e.data_rng().s = st.data_rng;
}

std::string human_duration(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", (int)s / 60, (int)s % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
  return buf;
}

// The library's own guard: the same table the command line checks (as usage errors) first.
void check_options(const TrainOptions& o) {
  for_each_shape_option(o, OptionChecker{});
  for_each_shard_option(o, OptionChecker{});
  for_each_train_option(o, OptionChecker{});
}

}  // namespace

void check_output_path(const std::string& what, const std::string& path, const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // follows symlinks: a link to a regular file is fine
  if (!fs::exists(st)) return;
  if (!fs::is_regular_file(st))
    throw std::runtime_error(what + " '" + path + "' exists and is not a regular file; give the path of a file");
  for (const auto& in : inputs)
    if (fs::equivalent(path, in, ec))
      throw std::runtime_error(what + " '" + path + "' is the same file as the input '" + in +
                               "'; writing it would destroy it");
}

void check_directory_writable(const std::string& what, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);  // as a save would
  const std::string probe = (dir / (".chargpt-write-test-" + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0)
    throw std::runtime_error("cannot write " + what + " '" + path + "': cannot create a file in '" + dir.string() +
                             "': " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

TrainResult train(const TrainOptions& opts, std::ostream& out) {
  // MPI (dist.h): only rank 0 prints, logs and writes checkpoints.
  TrainOptions o_rank = opts;
  if (!dist::is_root()) o_rank.quiet = true, o_rank.log_path.clear();
  const TrainOptions& o = o_rank;
  check_options(o);
  // One owner per checkpoint: the lock is taken before the checks and held to
  // the end. MPI: rank 0 writes, so rank 0 holds it.
  const OwnedFiles owned = owned_files(o.out_path, o.log_path);
  FileLock lock;
  if (dist::is_root()) {
    check_names_a_file("--out", o.out_path);
    check_inputs_not_owned(owned, {{"--data", o.data_path}});
    check_directory_writable("--out", o.out_path);  // creates the directory the lock goes in
    lock = FileLock(owned.lock_path, "the checkpoint '" + o.out_path + "'");
  }
  check_owned_files(owned, {{"--data", o.data_path}}, o.resume || o.force);
  const auto t_start = Clock::now();
  Config cfg = o.model;
  Model resumed;
  Metadata wmeta;
  if (o.resume) {
    if (!std::filesystem::exists(o.out_path))
      throw std::runtime_error("cannot resume: checkpoint '" + o.out_path + "' does not exist");
    resumed = load_model(o.out_path, &wmeta);
    cfg.vocab_size = resumed.cfg.vocab_size;
    if (!(resumed.cfg == cfg))
      throw std::runtime_error("cannot resume: '" + o.out_path + "' has config " + config_to_json(resumed.cfg) +
                               " but the flags ask for " + config_to_json(cfg));
  }
  {
    std::error_code ec;
    const double size = (double)std::filesystem::file_size(o.data_path, ec);
    if (!ec)
      check_memory_need("loading --data '" + o.data_path + "' (" + std::to_string((long long)size) + " bytes)",
                        size * kDatasetBytesPerFileByte, "use a smaller text");
  }
  Dataset ds = load_dataset(o.data_path, o.resume ? &resumed.tok : nullptr);
  cfg.vocab_size = ds.tok.size();
  cfg.validate();
  if (ds.val.size() < (size_t)cfg.block_size + 1)
    throw std::runtime_error("data file '" + o.data_path + "' is too small: its validation split has " +
                             std::to_string(ds.val.size()) + " tokens, block_size+1 = " +
                             std::to_string(cfg.block_size + 1) + " needed");

  {
    const int shard = resolve_shard_size(o.shard_size, o.batch_size, cfg.block_size);
    char what[200];
    std::snprintf(what, sizeof what,
                  "training this model (n_layer %d, n_embd %d, block_size %d, vocabulary %d) with batch %d in shards "
                  "of %d", cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size, o.batch_size, shard);
    const double bytes = estimate_train_bytes(cfg, o.batch_size, o.shard_size, o.threads, o.eval_iters);
    const char* hint = "lower --n-layer, --n-embd, --block-size, --batch-size or --shard-size";
    check_memory_need(what, bytes, hint);
    check_address_space(what, bytes, o.threads, hint);
  }
  Engine e(cfg, o.batch_size, o.shard_size, o.threads, o.seed, o.backend);
  if (o.resume) load_resume_state(o, resumed, wmeta, ds, e);
  else init_params(cfg, e.params(), o.seed);
  e.weights_loaded();
  resumed.params = FloatBuffer();
  // MPI (dist.h): the ranks share each step's shards and parameter chunks, once
  // they have checked that they run the same thing.
  std::unique_ptr<dist::DataParallel> dp;
  if (dist::size() > 1) {
    dp = std::make_unique<dist::DataParallel>(e);
    dp->check_agreement(run_fingerprint(o, e, ds));
  }

  const int decay_steps = o.lr_decay_steps > 0 ? o.lr_decay_steps : o.steps;
  const bool tty = !o.quiet && &out == &std::cout && isatty(STDOUT_FILENO) && !dist::launched_by_mpirun();
  LogFile log(o.log_path, o.resume);
  Saver saver{o, cfg, ds};
  // MPI: rank 0 gathers the optimizer state and writes; the others only keep count.
  auto save = [&] {
    if (e.step() != saver.last_saved_step) {
      // Nothing diverged is saved as the latest: the weights give a finite loss.
      const double probe = dp ? dp->estimate_loss(ds.val, 1, o.seed ^ 0x5bd1e995ULL ^ (uint64_t)e.step())
                              : e.estimate_loss(ds.val, 1, o.seed ^ 0x5bd1e995ULL ^ (uint64_t)e.step());
      if (!std::isfinite(probe))
        throw std::runtime_error("the weights after step " + std::to_string(e.step()) + " give a non-finite loss (" +
                                 std::to_string(probe) + "): the run diverged and they are not saved; " +
                                 (saver.last_saved_step >= 0 || o.resume ? "'" + o.out_path + "' is left as it was"
                                                                          : "no checkpoint was saved"));
    }
    if (dp && e.step() != saver.last_saved_step) dp->gather_optimizer_state();
    if (dist::is_root()) saver.save(e);
    else saver.last_saved_step = e.step();
  };
  const size_t tokens_per_step = (size_t)o.batch_size * cfg.block_size;
  if (!o.quiet) {
    char line[256];
    std::snprintf(line, sizeof line,
                  "chargpt train: %zu parameters (L=%d H=%d C=%d T=%d V=%d), batch %d = %d shards of %d, %d threads, %s%s\n",
                  e.num_params(), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size,
                  o.batch_size, e.n_shards(), e.shard_size(), e.threads(), e.backend().name().c_str(),
                  o.resume ? ", resumed" : "");
    out << line;
    std::snprintf(line, sizeof line, "data: %s (%zu train / %zu val tokens); steps %d -> %d\n", o.data_path.c_str(),
                  ds.train.size(), ds.val.size(), e.step(), o.steps);
    out << line << std::flush;
  }

  TrainResult res;
  double val_loss = NAN, train_loss = NAN;
  auto evaluate = [&](int at_step) {
    // Seeded by the step, so evaluation never disturbs the training sampler.
    auto estimate = [&](const std::vector<int32_t>& split, uint64_t seed) {  // MPI: split across the ranks
      return dp ? dp->estimate_loss(split, o.eval_iters, seed) : e.estimate_loss(split, o.eval_iters, seed);
    };
    train_loss = estimate(ds.train, o.seed ^ (0x9e3779b97f4a7c15ULL * (at_step + 1)));
    val_loss = estimate(ds.val, o.seed ^ (0xbf58476d1ce4e5b9ULL * (at_step + 1)));
    log.write(json{{"type", "eval"}, {"step", at_step}, {"train_loss", train_loss}, {"val_loss", val_loss}});
    if (!o.quiet) {
      char line[160];
      std::snprintf(line, sizeof line, "%sstep %d: train loss %.4f, val loss %.4f\n", tty ? "\r\033[K" : "", at_step,
                    train_loss, val_loss);
      out << line << std::flush;
    }
  };

  const int start_step = e.step();
  auto t_window = Clock::now();
  int window_steps = 0;
  double tok_per_s = 0, ema_step_s = 0;
  const auto t_loop = Clock::now();
  while (e.step() < o.steps) {
    const int it = e.step();
    // (a resumed run was evaluated at its start step before it was saved)
    if (o.eval_interval > 0 && it % o.eval_interval == 0 && (it != start_step || start_step == 0))
      evaluate(it);
    const float lr = lr_at(it, o.lr, o.min_lr, o.warmup, decay_steps);
    double norm = 0, loss = 0;
    const auto t_step = Clock::now();
    try {
      loss = dp ? dp->train_step(ds.train, lr, o.grad_clip, o.adamw, &norm)
                : e.train_step(ds.train, lr, o.grad_clip, o.adamw, &norm);
    } catch (const std::exception& ex) {
      std::string where = saver.last_saved_step >= 0
                              ? "the last checkpoint, '" + o.out_path + "' (step " +
                                    std::to_string(saver.last_saved_step) + "), is intact"
                              : (o.resume ? "'" + o.out_path + "' is left as it was" : "no checkpoint was saved");
      throw std::runtime_error(std::string(ex.what()) + "; training stopped; " + where);
    }
    const double step_s = seconds_since(t_step);
    ema_step_s = ema_step_s == 0 ? step_s : 0.9 * ema_step_s + 0.1 * step_s;
    ++window_steps;
    const bool log_now = e.step() % o.log_interval == 0 || e.step() == o.steps;
    if (log_now) {
      tok_per_s = window_steps * (double)tokens_per_step / seconds_since(t_window);
      t_window = Clock::now();
      window_steps = 0;
      log.write(json{{"type", "step"}, {"step", e.step()}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                     {"tok_per_s", tok_per_s}, {"ms_per_step", 1000 * step_s}});
    }
    if (!o.quiet && (tty || log_now)) {
      const double eta = ema_step_s * (o.steps - e.step());
      char line[256];
      char val[32] = "";  // rounded like the evaluation lines, so both show the same digits
      if (!std::isnan(val_loss)) std::snprintf(val, sizeof val, ", val %.4f", val_loss);
      std::snprintf(line, sizeof line, "%sstep %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %s%s",
                    tty ? "\r\033[K" : "", e.step(), o.steps, loss, val, lr,
                    tok_per_s > 0 ? tok_per_s : tokens_per_step / step_s, human_duration(eta).c_str(),
                    tty ? "" : "\n");
      out << line << std::flush;
    }
    if (o.save_interval > 0 && e.step() % o.save_interval == 0) save();
    if (!log.error.empty()) {
      save();
      throw std::runtime_error(log.error + "; training stopped after step " + std::to_string(e.step()) +
                               ", saved to '" + o.out_path + "'");
    }
    bool stop = o.should_stop && o.should_stop();
    if (dp) stop = dp->agree_stop(stop);  // MPI: every rank stops at the same step
    if (stop) {
      save();
      res.interrupted = true;
      if (!o.quiet)
        out << (tty ? "\n" : "") << "interrupted: saved step " << e.step() << " to " << o.out_path << "\n";
      break;
    }
  }
  if (tty) out << "\n";
  const double loop_s = seconds_since(t_loop);
  res.steps = e.step();
  res.steps_this_run = e.step() - start_step;
  res.tok_per_s = res.steps_this_run > 0 ? res.steps_this_run * (double)tokens_per_step / loop_s : 0;
  if (!res.interrupted) {  // an interrupted run has saved already and skips the final evaluation
    save();
    evaluate(e.step());
    res.train_loss = train_loss;
    res.val_loss = val_loss;
  }
  log.close();
  if (!log.error.empty())
    throw std::runtime_error(log.error + "; the run finished and its checkpoint '" + o.out_path + "' is saved");
  res.wall_s = seconds_since(t_start);
  res.peak_rss_bytes = peak_rss_bytes();
  if (!o.quiet && !res.interrupted) {
    char line[320];
    std::snprintf(line, sizeof line,
                  "done: %d steps (%d this run) in %.1fs, %.0f tok/s; train loss %.4f, val loss %.4f "
                  "(estimates over %d batches; exact: chargpt eval); peak memory %.1f MiB\nsaved %s\n",
                  res.steps, res.steps_this_run, res.wall_s, res.tok_per_s, train_loss, val_loss, o.eval_iters,
                  res.peak_rss_bytes / 1048576.0, o.out_path.c_str());
    out << line << std::flush;
  }
  if (dp && !o.quiet) out << dp->summary() << "\n" << std::flush;
  return res;
}

namespace {
// Accumulates values into one hash.
struct Hasher {
  std::string bytes;
  template <class T>
  Hasher& operator<<(const T& v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  uint64_t get() const { return hash_bytes(bytes.data(), bytes.size()); }
};
}  // namespace

std::vector<std::pair<std::string, uint64_t>> run_fingerprint(const TrainOptions& o, const Engine& e, const Dataset& ds) {
  const Config& c = e.cfg();
  std::vector<std::pair<std::string, uint64_t>> items;
  items.emplace_back("the model config (--n-layer, --n-head, --n-embd, --block-size, vocabulary size)",
                     (Hasher() << c.n_layer << c.n_head << c.n_embd << c.block_size << c.vocab_size).get());
  items.emplace_back("the batch (--batch-size, --shard-size)",
                     (Hasher() << e.batch_size() << e.shard_size() << e.n_shards()).get());
  items.emplace_back("the schedule and optimizer (--steps, --lr, --min-lr, --warmup, --lr-decay-steps, "
                     "--weight-decay, --beta1, --beta2, --grad-clip)",
                     (Hasher() << o.steps << o.lr << o.min_lr << o.warmup << o.lr_decay_steps << o.adamw.weight_decay
                               << o.adamw.beta1 << o.adamw.beta2 << o.adamw.eps << o.grad_clip)
                         .get());
  items.emplace_back("the evaluation and save intervals (--eval-interval, --eval-iters, --save-interval)",
                     (Hasher() << o.eval_interval << o.eval_iters << o.save_interval).get());
  items.emplace_back("--seed", (Hasher() << o.seed).get());
  items.emplace_back("the backend", (Hasher() << (int)o.backend.kind << (int)o.backend.precision << o.backend.tf32).get());
  {
    uint64_t h = hash_bytes(ds.tok.vocab.data(), ds.tok.vocab.size() * sizeof(char32_t));
    h = hash_bytes(ds.train.data(), ds.train.size() * sizeof(int32_t), h);
    h = hash_bytes(ds.val.data(), ds.val.size() * sizeof(int32_t), h);
    items.emplace_back("the training data (hash of the text)", h);
  }
  {
    const size_t bytes = e.num_params() * sizeof(float);
    uint64_t h = hash_bytes(e.params(), bytes);
    h = hash_bytes(e.adam_m(), bytes, h);
    h = hash_bytes(e.adam_v(), bytes, h);
    const Rng& r = e.data_rng();
    h = hash_bytes(r.s.data(), sizeof r.s, h);
    const int step = e.step();
    h = hash_bytes(&step, sizeof step, h);
    items.emplace_back("the starting state (--resume: weights, optimizer moments, step and sampler of the checkpoint)",
                       h);
  }
  return items;
}

}  // namespace chargpt
