#include "chargpt/train.h"

#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>


#include "chargpt/checkpoint.h"
#include "chargpt/dist.h"

namespace chargpt {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<int> g_interrupts{0};

std::string optim_state_path(const std::string& weights_path) {
  std::string base = weights_path;
  const std::string ext = ".safetensors";
  if (base.size() > ext.size() && base.ends_with(ext)) base.resize(base.size() - ext.size());
  return base + ".optim.safetensors";
}

size_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

// ---------------------------------------------------------------------------
// The training loop.

namespace {

struct Saver {
  const TrainOptions& opt;
  const Config& cfg;
  const Tokenizer& tok;
  int last_saved_step = -1;

  void save(const Engine& e) {
    if (e.step() == last_saved_step) return;  // e.g. a save-interval step that is also the last one
    Metadata meta{{"step", std::to_string(e.step())}};
    // Optimizer state first, weights last: the weights file names the step the
    // state belongs to, and resume checks that the two agree.
    Metadata ometa = meta;
    ometa["format"] = "chargpt-optim";
    ometa["version"] = kFormatVersion;
    ometa["config"] = config_to_json(cfg);
    char rng_state[4 * 17];  // read back by load_resume_state's sscanf
    std::snprintf(rng_state, sizeof rng_state, "%016llx %016llx %016llx %016llx", (unsigned long long)e.data_rng().s[0],
                  (unsigned long long)e.data_rng().s[1], (unsigned long long)e.data_rng().s[2],
                  (unsigned long long)e.data_rng().s[3]);
    ometa["data_rng"] = rng_state;
    const int64_t P = (int64_t)e.num_params();
    write_safetensors(optim_state_path(opt.out_path),
                      {{"adamw.m", {P}, e.adam_m()}, {"adamw.v", {P}, e.adam_v()}}, ometa);
    save_model(opt.out_path, cfg, tok, e.params(), meta);
    last_saved_step = e.step();
  }
};

void load_resume_state(const TrainOptions& opt, const Model& model, const Metadata& wmeta, Engine& e) {
  const std::string opath = optim_state_path(opt.out_path);
  if (!std::filesystem::exists(opath))
    throw std::runtime_error("cannot resume: optimizer state '" + opath + "' does not exist");
  SafetensorsFile f = read_safetensors(opath);
  if (f.meta["format"] != "chargpt-optim")
    throw std::runtime_error("'" + opath + "' is not a chargpt optimizer state file");
  auto wstep = wmeta.find("step");
  if (wstep == wmeta.end() || wstep->second != f.meta["step"])
    throw std::runtime_error("cannot resume: '" + opt.out_path + "' and '" + opath +
                             "' are from different steps (a save was interrupted?)");
  if (f.meta["config"] != config_to_json(model.cfg))
    throw std::runtime_error("cannot resume: '" + opath + "' belongs to a different model config");
  const int64_t P = (int64_t)e.num_params();
  std::memcpy(e.params(), model.params.data(), P * sizeof(float));
  f.read_tensor("adamw.m", {P}, e.adam_m());
  f.read_tensor("adamw.v", {P}, e.adam_v());
  e.set_step(std::stoi(f.meta["step"]));
  unsigned long long w[4];
  if (std::sscanf(f.meta["data_rng"].c_str(), "%llx %llx %llx %llx", &w[0], &w[1], &w[2], &w[3]) != 4)
    throw std::runtime_error("'" + opath + "': data_rng metadata is malformed");
  for (int i = 0; i < 4; ++i) e.data_rng().s[i] = w[i];
}

std::string human_duration(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", (int)s / 60, (int)s % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
  return buf;
}

void check_options(const TrainOptions& o) {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::runtime_error(msg);
  };
  need(o.batch_size >= 1, "--batch-size must be >= 1, got " + std::to_string(o.batch_size));
  need(o.shard_size >= 0, "--shard-size must be >= 0, got " + std::to_string(o.shard_size));
  need(o.steps >= 0, "--steps must be >= 0, got " + std::to_string(o.steps));
  need(o.lr_decay_steps >= 0, "--lr-decay-steps must be >= 0, got " + std::to_string(o.lr_decay_steps));
  need(o.warmup >= 0, "--warmup must be >= 0, got " + std::to_string(o.warmup));
  need(o.lr > 0 && std::isfinite(o.lr), "--lr must be a positive number, got " + std::to_string(o.lr));
  need(o.min_lr >= 0 && std::isfinite(o.min_lr), "--min-lr must be >= 0, got " + std::to_string(o.min_lr));
  need(o.grad_clip >= 0, "--grad-clip must be >= 0 (0 = off), got " + std::to_string(o.grad_clip));
  need(o.adamw.weight_decay >= 0, "--weight-decay must be >= 0, got " + std::to_string(o.adamw.weight_decay));
  need(o.adamw.beta1 >= 0 && o.adamw.beta1 < 1, "--beta1 must be in [0, 1)");
  need(o.adamw.beta2 >= 0 && o.adamw.beta2 < 1, "--beta2 must be in [0, 1)");
  need(o.eval_interval >= 0, "--eval-interval must be >= 0, got " + std::to_string(o.eval_interval));
  need(o.eval_iters >= 1, "--eval-iters must be >= 1, got " + std::to_string(o.eval_iters));
  need(o.save_interval >= 0, "--save-interval must be >= 0, got " + std::to_string(o.save_interval));
  need(o.log_interval >= 1, "--log-interval must be >= 1, got " + std::to_string(o.log_interval));
  need(o.threads >= 0, "--threads must be >= 0 (0 = all), got " + std::to_string(o.threads));
}

}  // namespace

TrainResult train(const TrainOptions& opts, std::ostream& out) {
  // MPI (dist.h): only rank 0 prints, logs and writes checkpoints.
  TrainOptions o_rank = opts;
  if (!dist::is_root()) o_rank.quiet = true, o_rank.log_path.clear();
  const TrainOptions& o = o_rank;
  check_options(o);
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
  Dataset ds = load_dataset(o.data_path, o.resume ? &resumed.tok : nullptr);
  cfg.vocab_size = ds.tok.size();
  cfg.validate();
  if (ds.val.size() < (size_t)cfg.block_size + 1)
    throw std::runtime_error("data file '" + o.data_path + "' is too small: its validation split has " +
                             std::to_string(ds.val.size()) + " tokens, block_size+1 = " +
                             std::to_string(cfg.block_size + 1) + " needed");

  Engine e(cfg, o.batch_size, o.shard_size, o.threads, o.seed, o.backend);
  if (o.resume) load_resume_state(o, resumed, wmeta, e);
  else init_params(cfg, e.params(), o.seed);
  e.weights_loaded();
  resumed.params = FloatBuffer();
  // MPI (dist.h): the ranks share each step's shards and parameter chunks, once
  // they have checked that they run the same thing.
  std::unique_ptr<dist::DataParallel> dp;
  if (dist::size() > 1) {
    dp = std::make_unique<dist::DataParallel>(e);
    dp->check_agreement(dist::run_fingerprint(o, e, ds));
  }

  const int decay_steps = o.lr_decay_steps > 0 ? o.lr_decay_steps : o.steps;
  const bool tty = !o.quiet && &out == &std::cout && isatty(STDOUT_FILENO) && !dist::launched_by_mpirun();
  std::ofstream log;
  if (!o.log_path.empty()) {
    log.open(o.log_path, o.resume ? std::ios::app : std::ios::trunc);
    if (!log) throw std::runtime_error("cannot open log file '" + o.log_path + "'");
  }
  Saver saver{o, cfg, ds.tok};
  // MPI: rank 0 gathers the optimizer state and writes; the others only keep count.
  auto save = [&] {
    if (dp && e.step() != saver.last_saved_step) dp->gather_optimizer_state();
    if (dist::is_root()) saver.save(e);
    else saver.last_saved_step = e.step();
  };
  const size_t tokens_per_step = (size_t)o.batch_size * cfg.block_size;
  if (!o.quiet) {
    char line[256];
    std::snprintf(line, sizeof line,
                  "chargpt train: %zu parameters (L=%d H=%d C=%d T=%d V=%d), batch %d = %d shards of %d, %d threads%s\n",
                  e.num_params(), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size,
                  o.batch_size, e.n_shards(), e.shard_size(), e.threads(), o.resume ? ", resumed" : "");
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
    if (log.is_open())
      log << json{{"type", "eval"}, {"step", at_step}, {"train_loss", train_loss}, {"val_loss", val_loss}}.dump()
          << "\n" << std::flush;
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
      if (log.is_open())
        log << json{{"type", "step"}, {"step", e.step()}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                    {"tok_per_s", tok_per_s}, {"ms_per_step", 1000 * step_s}}.dump()
            << "\n";
    }
    if (!o.quiet && (tty || log_now)) {
      const double eta = ema_step_s * (o.steps - e.step());
      char line[256];
      char val[32] = "";  // rounded like the evaluation lines (it used to truncate: 3.7554 beside 3.7555)
      if (!std::isnan(val_loss)) std::snprintf(val, sizeof val, ", val %.4f", val_loss);
      std::snprintf(line, sizeof line, "%sstep %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %s%s",
                    tty ? "\r\033[K" : "", e.step(), o.steps, loss, val, lr,
                    tok_per_s > 0 ? tok_per_s : tokens_per_step / step_s, human_duration(eta).c_str(),
                    tty ? "" : "\n");
      out << line << std::flush;
    }
    if (o.save_interval > 0 && e.step() % o.save_interval == 0) save();
    bool stop = g_interrupts.load() > 0;
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

}  // namespace chargpt
