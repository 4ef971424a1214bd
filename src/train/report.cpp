// What a run tells its user and its log: progress lines and JSON Lines.
#include <sys/resource.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <iostream>
#include <stdexcept>

#include "dist/dist.h"
#include "train/parts.h"

namespace chargpt {

using json = nlohmann::json;

size_t peak_rss_bytes() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (size_t)ru.ru_maxrss * 1024;
}

namespace {

std::string human_duration(double s) {
  char buf[32];
  if (s < 60) std::snprintf(buf, sizeof buf, "%.0fs", s);
  else if (s < 3600) std::snprintf(buf, sizeof buf, "%dm%02ds", (int)s / 60, (int)s % 60);
  else std::snprintf(buf, sizeof buf, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
  return buf;
}

}  // namespace

Reporter::Reporter(const TrainOptions& o, std::ostream& out, const Engine& e)
    : o_(o),
      out_(out),
      e_(e),
      // Under mpirun stdout is Open MPI's pipe or pseudo-terminal, not the user's terminal.
      tty_(!o.quiet && &out == &std::cout && isatty(STDOUT_FILENO) && !dist::launched_by_mpirun()),
      log_(o.log_path, o.resume),
      tokens_per_step_((size_t)o.batch_size * e.cfg().block_size),
      val_loss_(NAN) {}

void Reporter::header(const Dataset& ds) {
  if (o_.quiet) return;
  const Config& cfg = e_.cfg();
  const std::string products =
      e_.backend().name() + (o_.backend.auto_reason ? std::string(" (auto: ") + o_.backend.auto_reason + ")" : "");
  char line[320];
  std::snprintf(line, sizeof line,
                "chargpt train: %zu parameters (L=%d H=%d C=%d T=%d V=%d), batch %d = %d shards of %d, %d threads, "
                "products: %s%s\n",
                e_.num_params(), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, o_.batch_size,
                e_.n_shards(), e_.shard_size(), e_.threads(), products.c_str(), o_.resume ? ", resumed" : "");
  out_ << line;
  std::snprintf(line, sizeof line, "data: %s (%zu train / %zu val tokens); steps %d -> %d\n", o_.data_path.c_str(),
                ds.train.size(), ds.val.size(), e_.step(), o_.steps);
  out_ << line << std::flush;
}

void Reporter::note(const std::string& text) {
  if (text.empty()) return;
  log_.write(json{{"type", "note"}, {"step", e_.step()}, {"text", text}});
  if (!o_.quiet) std::cerr << "chargpt train: " << text << "\n" << std::flush;
}

void Reporter::evaluation(int step, const Losses& l) {
  val_loss_ = l.val;
  log_.write(json{{"type", "eval"}, {"step", step}, {"train_loss", l.train}, {"val_loss", l.val}});
  if (o_.quiet) return;
  char line[160];
  std::snprintf(line, sizeof line, "%sstep %d: train loss %.4f, val loss %.4f\n", tty_ ? "\r\033[K" : "", step,
                l.train, l.val);
  out_ << line << std::flush;
}

void Reporter::step(int step, double loss, float lr, double grad_norm, double step_s) {
  ema_step_s_ = ema_step_s_ == 0 ? step_s : 0.9 * ema_step_s_ + 0.1 * step_s;
  ++window_steps_;
  const bool log_now = step % o_.log_interval == 0 || step == o_.steps;
  if (log_now) {
    tok_per_s_ = window_steps_ * (double)tokens_per_step_ / seconds_since(window_start_);
    window_start_ = Clock::now();
    window_steps_ = 0;
    log_.write(json{{"type", "step"}, {"step", step}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm},
                    {"tok_per_s", tok_per_s_}, {"ms_per_step", 1000 * step_s}});
  }
  if (o_.quiet || !(tty_ || log_now)) return;
  const double eta = ema_step_s_ * (o_.steps - step);
  char line[256];
  char val[32] = "";  // rounded like the evaluation lines, so both show the same digits
  if (!std::isnan(val_loss_)) std::snprintf(val, sizeof val, ", val %.4f", val_loss_);
  std::snprintf(line, sizeof line, "%sstep %d/%d  loss %.4f%s  lr %.2e  %.0f tok/s  ETA %s%s", tty_ ? "\r\033[K" : "",
                step, o_.steps, loss, val, lr, tok_per_s_ > 0 ? tok_per_s_ : tokens_per_step_ / step_s,
                human_duration(eta).c_str(), tty_ ? "" : "\n");
  out_ << line << std::flush;
}

void Reporter::interrupted(int step) {
  if (!o_.quiet) out_ << (tty_ ? "\n" : "") << "interrupted: saved step " << step << " to " << o_.out_path << "\n";
}

void Reporter::end_of_steps() {
  if (tty_) out_ << "\n";  // keep the last line rewritten in place
}

void Reporter::close_log() {
  log_.close();
  if (!log_.error.empty())
    throw std::runtime_error(log_.error + "; the run finished and its checkpoint '" + o_.out_path + "' is saved");
}

void Reporter::done(const TrainResult& r) {
  if (o_.quiet) return;
  char line[320];
  if (!r.interrupted) {
    std::snprintf(line, sizeof line,
                  "done: %d steps (%d this run) in %.1fs, %.0f tok/s; train loss %.4f, val loss %.4f "
                  "(estimates over %d batches; exact: chargpt eval); peak memory %.1f MiB\nsaved %s\n",
                  r.steps, r.steps_this_run, r.wall_s, r.tok_per_s, r.train_loss, r.val_loss, o_.eval_iters,
                  r.peak_rss_bytes / 1048576.0, o_.out_path.c_str());
    out_ << line;
  }
  const Collective& comm = e_.collective();
  if (comm.size() > 1) {
    const Partition& p = e_.partition();
    const int me = comm.rank(), n = std::max(r.steps_this_run, 1);
    size_t own_shards = 0;
    for (size_t k = 0; k < p.rounds; ++k) own_shards += p.round(k)[me + 1] - p.round(k)[me];
    const CommStats st = comm.stats();
    std::snprintf(line, sizeof line,
                  "mpi: %d ranks x %d threads; rank %d: %zu of %zu shards (%zu a round), %zu of %zu parameters; "
                  "%.2f ms/step in MPI calls (waits included); %.3f MB sent/step\n",
                  comm.size(), e_.threads(), me, own_shards, p.n_shards, p.group,
                  p.float_begin[me + 1] - p.float_begin[me], e_.num_params(), 1000 * st.seconds / n,
                  st.bytes_sent / 1e6 / n);
    out_ << line;
  }
  out_ << std::flush;
}

}  // namespace chargpt
