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
#include "chargpt/hash.h"
#include "chargpt/matmul.h"

namespace chargpt {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
static double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::atomic<int> g_interrupts{0};

int default_shard_size(int batch_size, int block_size) {
  // At least 128 rows per shard (smaller matmuls lose much of sgemm's rate and
  // every shard re-reads and re-writes a whole gradient buffer) and at most 16 shards.
  const int min_rows = (128 + block_size - 1) / block_size;
  return std::min(batch_size, std::max(min_rows, (batch_size + 15) / 16));
}

size_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

// The shape checks run before the members that divide by it are built.
static const Config& checked(const Config& cfg, int batch_size) {
  cfg.validate();
  if (batch_size < 1) throw std::runtime_error("batch size " + std::to_string(batch_size) + " must be >= 1");
  return cfg;
}

Engine::Engine(const Config& cfg_, int batch_size_, int shard_size_, int threads_, uint64_t seed)
    : cfg(checked(cfg_, batch_size_)),
      batch_size(batch_size_),
      shard_size(shard_size_ > 0 ? shard_size_ : default_shard_size(batch_size_, cfg_.block_size)),
      n_shards((batch_size_ + shard_size - 1) / shard_size),
      pool(threads_),
      acts(cfg_, shard_size),
      data_rng(seed) {
  blas_single_threaded();
  const size_t P = num_params(cfg);
  params.resize(P);
  m.resize(P);
  v.resize(P);
  param_view = param_views(cfg, params.data());
  shard_grads.resize(n_shards);
  for (auto& g : shard_grads) {
    g.resize(P);
    shard_grad_views.push_back(param_views(cfg, g.data()));
  }
  // Chunks never straddle two tensors (each has one decay flag) and their
  // boundaries depend only on the model shape, never on the thread count.
  constexpr size_t kChunk = 16384;
  for (const auto& s : param_specs(cfg))
    for (size_t b = 0; b < s.numel; b += kChunk)
      chunks.push_back({s.offset + b, s.offset + std::min(s.numel, b + kChunk), s.decay});
  chunk_sumsq.resize(chunks.size());
  shard_loss.resize(n_shards);
  inputs.resize((size_t)batch_size * cfg.block_size);
  targets.resize((size_t)batch_size * cfg.block_size);
}

double Engine::train_step(const std::vector<int32_t>& split, float lr, float grad_clip, const AdamW& opt,
                          double* grad_norm, StepTiming* timing) {
  const int T = cfg.block_size;
  sample_batch(split, batch_size, T, data_rng, inputs.data(), targets.data());
  const float dloss = 1.f / (float)((size_t)batch_size * T);
  const auto t1 = Clock::now();

  pool.for_each(n_shards, [&](size_t s) {
    const int n0 = (int)s * shard_size, n = std::min(shard_size, batch_size - n0);
    const int32_t* in = inputs.data() + (size_t)n0 * T;
    const int32_t* tg = targets.data() + (size_t)n0 * T;
    Activations& a = acts.local();
    shard_loss[s] = gpt_forward(cfg, param_view, a, in, tg, n, T);
    gpt_backward(cfg, param_view, shard_grad_views[s], a, in, tg, n, T, dloss, /*accumulate=*/false);
  });
  const auto t2 = Clock::now();

  double loss_sum = 0;
  for (double l : shard_loss) loss_sum += l;  // fixed order
  const double loss = loss_sum / ((double)batch_size * T);

  // Reduce shard gradients into shard_grads[0], shard order fixed, fused with the norm.
  float* g0 = shard_grads[0].data();
  pool.for_each(chunks.size(), [&](size_t c) {
    const size_t b = chunks[c].begin, n = chunks[c].end - b;
    float* dst = g0 + b;
    for (int s = 1; s < n_shards; ++s) {
      const float* src = shard_grads[s].data() + b;
      for (size_t i = 0; i < n; ++i) dst[i] += src[i];
    }
    chunk_sumsq[c] = sum_of_squares(dst, n);
  });
  double sumsq = 0;
  for (double s : chunk_sumsq) sumsq += s;  // fixed order
  const double norm = std::sqrt(sumsq);
  if (grad_norm) *grad_norm = norm;
  if (!std::isfinite(loss) || !std::isfinite(norm)) {
    throw std::runtime_error(std::string("non-finite ") + (!std::isfinite(loss) ? "loss" : "gradient norm") +
                             " at step " + std::to_string(step + 1) + " (loss " + std::to_string(loss) +
                             ", gradient norm " + std::to_string(norm) + ")");
  }
  const float scale = (grad_clip > 0 && norm > grad_clip) ? (float)(grad_clip / norm) : 1.f;
  ++step;
  pool.for_each(chunks.size(), [&](size_t c) {
    const size_t b = chunks[c].begin, n = chunks[c].end - b;
    adamw_update(params.data() + b, g0 + b, m.data() + b, v.data() + b, n, opt, lr, step, scale, chunks[c].decay);
  });
  const auto t3 = Clock::now();
  if (timing) {
    timing->fwd_bwd_s = std::chrono::duration<double>(t2 - t1).count();
    timing->reduce_opt_s = std::chrono::duration<double>(t3 - t2).count();
  }
  return loss;
}

double Engine::estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed) {
  if (iters <= 0) return NAN;
  const int T = cfg.block_size;
  Rng rng(seed);
  // All iters batches at once, so that every (batch, shard) is a task; the
  // buffers are the engine's, grown on the first call and reused after.
  const size_t tokens = (size_t)iters * batch_size * T, tasks = (size_t)iters * n_shards;
  if (eval_inputs.size() < tokens) eval_inputs.resize(tokens), eval_targets.resize(tokens);
  if (eval_sums.size() < tasks) eval_sums.resize(tasks);
  for (int i = 0; i < iters; ++i)
    sample_batch(split, batch_size, T, rng, eval_inputs.data() + (size_t)i * batch_size * T,
                 eval_targets.data() + (size_t)i * batch_size * T);
  pool.for_each(tasks, [&](size_t k) {
    const int it = (int)k / n_shards, s = (int)k % n_shards;
    const int n0 = s * shard_size, n = std::min(shard_size, batch_size - n0);
    const size_t off = ((size_t)it * batch_size + n0) * T;
    eval_sums[k] =
        gpt_forward(cfg, param_view, acts.local(), eval_inputs.data() + off, eval_targets.data() + off, n, T);
  });
  double total = 0;
  for (size_t k = 0; k < tasks; ++k) total += eval_sums[k];
  return total / ((double)iters * batch_size * T);
}

size_t Engine::bytes_allocated() const {
  size_t b = (params.size() + m.size() + v.size()) * sizeof(float);
  for (const auto& g : shard_grads) b += g.size() * sizeof(float);
  for (const auto& a : acts) b += a.bytes();
  return b;
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
    if (e.step == last_saved_step) return;  // e.g. a save-interval step that is also the last one
    TrainState st;
    st.step = e.step;
    st.data_rng = e.data_rng.s;
    st.has_run_identity = true;
    st.seed = opt.seed;
    st.batch_size = opt.batch_size;
    st.data_hash = ds.text_hash;
    st.data_bytes = ds.text_bytes;
    st.data_path = opt.data_path;
    try {
      save_training_checkpoint(opt.out_path, cfg, ds.tok, e.params.data(), e.m.data(), e.v.data(), st);
    } catch (const std::exception& ex) {
      throw std::runtime_error("saving step " + std::to_string(e.step) + " failed: " + ex.what() +
                               "; the checkpoint on disk, if any, is left as it was");
    }
    last_saved_step = e.step;
  }
};

// The optimizer state that pairs with the resumed weights, and the checks that
// the run continues with what it started with.
void load_resume_state(const TrainOptions& opt, const Model& model, const Metadata& wmeta, const Dataset& ds,
                       Engine& e) {
  const TrainState st = load_optimizer_state(opt.out_path, model, wmeta, e.m.data(), e.v.data());
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
  std::memcpy(e.params.data(), model.params.data(), e.params.size() * sizeof(float));
  e.step = st.step;
  e.data_rng.s = st.data_rng;
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

TrainResult train(const TrainOptions& o, std::ostream& out) {
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

  Engine e(cfg, o.batch_size, o.shard_size, o.threads, o.seed);
  if (o.resume) load_resume_state(o, resumed, wmeta, ds, e);
  else init_params(cfg, e.params.data(), o.seed);
  resumed.params = FloatBuffer();

  const int decay_steps = o.lr_decay_steps > 0 ? o.lr_decay_steps : o.steps;
  const bool tty = !o.quiet && &out == &std::cout && isatty(STDOUT_FILENO);
  std::ofstream log;
  if (!o.log_path.empty()) {
    log.open(o.log_path, o.resume ? std::ios::app : std::ios::trunc);
    if (!log) throw std::runtime_error("cannot open log file '" + o.log_path + "'");
  }
  Saver saver{o, cfg, ds};
  const size_t tokens_per_step = (size_t)o.batch_size * cfg.block_size;
  if (!o.quiet) {
    char line[256];
    std::snprintf(line, sizeof line,
                  "chargpt train: %zu parameters (L=%d H=%d C=%d T=%d V=%d), batch %d = %d shards of %d, %d threads%s\n",
                  e.params.size(), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size,
                  o.batch_size, e.n_shards, e.shard_size, e.pool.threads, o.resume ? ", resumed" : "");
    out << line;
    std::snprintf(line, sizeof line, "data: %s (%zu train / %zu val tokens); steps %d -> %d\n", o.data_path.c_str(),
                  ds.train.size(), ds.val.size(), e.step, o.steps);
    out << line << std::flush;
  }

  TrainResult res;
  double val_loss = NAN, train_loss = NAN;
  auto evaluate = [&](int at_step) {
    // Seeded by the step, so evaluation never disturbs the training sampler.
    train_loss = e.estimate_loss(ds.train, o.eval_iters, o.seed ^ (0x9e3779b97f4a7c15ULL * (at_step + 1)));
    val_loss = e.estimate_loss(ds.val, o.eval_iters, o.seed ^ (0xbf58476d1ce4e5b9ULL * (at_step + 1)));
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

  const int start_step = e.step;
  auto t_window = Clock::now();
  int window_steps = 0;
  double tok_per_s = 0, ema_step_s = 0;
  const auto t_loop = Clock::now();
  while (e.step < o.steps) {
    const int it = e.step;
    // (a resumed run was evaluated at its start step before it was saved)
    if (o.eval_interval > 0 && it % o.eval_interval == 0 && (it != start_step || start_step == 0))
      evaluate(it);
    const float lr = lr_at(it, o.lr, o.min_lr, o.warmup, decay_steps);
    double norm = 0, loss = 0;
    const auto t_step = Clock::now();
    try {
      loss = e.train_step(ds.train, lr, o.grad_clip, o.adamw, &norm);
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
    const bool log_now = e.step % o.log_interval == 0 || e.step == o.steps;
    if (log_now) {
      tok_per_s = window_steps * (double)tokens_per_step / seconds_since(t_window);
      t_window = Clock::now();
      window_steps = 0;
      if (log.is_open())
        log << json{{"type", "step"}, {"step", e.step}, {"loss", loss}, {"lr", lr}, {"grad_norm", norm},
                    {"tok_per_s", tok_per_s}, {"ms_per_step", 1000 * step_s}}.dump()
            << "\n";
    }
    if (!o.quiet && (tty || log_now)) {
      const double eta = ema_step_s * (o.steps - e.step);
      char line[256];
      char val[32] = "";  // rounded like the evaluation lines (it used to truncate: 3.7554 beside 3.7555)
      if (!std::isnan(val_loss)) std::snprintf(val, sizeof val, ", val %.4f", val_loss);
      std::snprintf(line, sizeof line, "%sstep %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %s%s",
                    tty ? "\r\033[K" : "", e.step, o.steps, loss, val, lr,
                    tok_per_s > 0 ? tok_per_s : tokens_per_step / step_s, human_duration(eta).c_str(),
                    tty ? "" : "\n");
      out << line << std::flush;
    }
    if (o.save_interval > 0 && e.step % o.save_interval == 0) saver.save(e);
    if (g_interrupts.load() > 0) {
      saver.save(e);
      res.interrupted = true;
      if (!o.quiet)
        out << (tty ? "\n" : "") << "interrupted: saved step " << e.step << " to " << o.out_path << "\n";
      break;
    }
  }
  if (tty) out << "\n";
  const double loop_s = seconds_since(t_loop);
  res.steps = e.step;
  res.steps_this_run = e.step - start_step;
  res.tok_per_s = res.steps_this_run > 0 ? res.steps_this_run * (double)tokens_per_step / loop_s : 0;
  if (!res.interrupted) {  // an interrupted run has saved already and skips the final evaluation
    saver.save(e);
    evaluate(e.step);
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
  return res;
}

}  // namespace chargpt
