#include "chargpt/bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <ostream>
#include <stdexcept>

#include <sys/resource.h>
#include <unistd.h>

#include <tbb/global_control.h>
#include <tbb/info.h>

#include "chargpt/buffer.h"
#include "chargpt/cli.h"
#include "chargpt/backend.h"
#include "chargpt/rng.h"
#include "chargpt/train.h"

namespace chargpt {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------
// Statistics

double median(std::vector<double> xs) {
  if (xs.empty()) throw std::invalid_argument("median of an empty set");
  const size_t n = xs.size(), mid = n / 2;
  std::nth_element(xs.begin(), xs.begin() + mid, xs.end());
  const double hi = xs[mid];
  if (n % 2) return hi;
  const double lo = *std::max_element(xs.begin(), xs.begin() + mid);
  return 0.5 * (lo + hi);
}

double scaled_mad(const std::vector<double>& xs) {
  const double m = median(xs);
  std::vector<double> dev(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) dev[i] = std::fabs(xs[i] - m);
  return 1.4826 * median(std::move(dev));
}

double parallel_efficiency(double speedup, int threads, int base_threads) {
  return speedup * (double)base_threads / (double)threads;
}

// Solves t_n/t_b = (s + (1-s) g_n) / (s + (1-s) g_b) for s, where g is the
// share of the parallel work one thread does (1/n for perfectly divisible work).
static double solve_serial(double t_b, double g_b, double t_n, double g_n) {
  const double r = t_n / t_b;
  const double den = r * (1 - g_b) - (1 - g_n);
  if (!(t_b > 0) || !(t_n > 0) || std::fabs(den) < 1e-12) return NAN;
  return (g_n - r * g_b) / den;
}

double amdahl_serial_fraction(double t_base, int base_threads, double t_n, int n) {
  if (base_threads < 1 || n < 1 || n == base_threads)
    throw std::invalid_argument("amdahl_serial_fraction needs two different thread counts >= 1");
  return solve_serial(t_base, 1.0 / base_threads, t_n, 1.0 / n);
}

static double clamp01(double s) { return std::isnan(s) ? 1.0 : std::clamp(s, 0.0, 1.0); }

// Time relative to one thread of work with serial fraction s whose parallel part
// takes the share g of its one-thread time (1/n on n threads, or the shard granularity).
static double amdahl_time(double s, double g) {
  s = clamp01(s);
  return s + (1 - s) * g;
}

double amdahl_speedup(double s, int n) { return 1.0 / amdahl_time(s, 1.0 / n); }

double shard_granularity(int n_shards, int n) {
  if (n_shards < 1) return 1.0 / n;
  return (double)((n_shards + n - 1) / n) / n_shards;
}

double phase_serial_fraction(double t_base, int base_threads, double t_n, int n, int n_shards) {
  return solve_serial(t_base, shard_granularity(n_shards, base_threads), t_n, shard_granularity(n_shards, n));
}

double phase_model_speedup(const PhaseModel& m, int n) {
  const double sum = m.fwd_bwd_frac + m.reduce_opt_frac + m.rest_frac;
  auto part = [&](double frac, double s, double g) { return frac / sum * amdahl_time(s, g); };
  const double t = part(m.fwd_bwd_frac, m.fwd_bwd_serial, shard_granularity(m.n_shards, n)) +
                   part(m.reduce_opt_frac, m.reduce_opt_serial, 1.0 / n) + part(m.rest_frac, m.rest_serial, 1.0 / n);
  return 1.0 / t;
}

// ---------------------------------------------------------------------------
// Thread lists

std::vector<int> default_thread_counts(int hw) {
  std::vector<int> t;
  for (int p = 1; p <= hw; p *= 2) t.push_back(p);
  if (t.empty() || t.back() != hw) t.push_back(std::max(hw, 1));
  return t;
}

std::vector<int> parse_thread_list(const std::string& spec, int hw) {
  if (spec == "all") return default_thread_counts(hw);
  std::vector<int> t;
  size_t pos = 0;
  while (true) {
    const size_t comma = spec.find(',', pos);
    const std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || item[0] == '+' || item[0] == ' ')
      throw UsageError("--threads '" + spec + "': expected 'all' or a comma list of counts like 1,2,4");
    if (v < 1 || v > 4096)
      throw UsageError("--threads '" + spec + "': thread counts must be between 1 and 4096, got " + item);
    t.push_back((int)v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  std::sort(t.begin(), t.end());
  t.erase(std::unique(t.begin(), t.end()), t.end());
  return t;
}

// ---------------------------------------------------------------------------
// sgemm rate

// sgemm FLOP rate (FLOP/s) of `threads` concurrent single-threaded n x n x n
// sgemm calls in a task_arena(threads), each on its own matrices; best of reps.
static double measure_sgemm_rate(const BackendOptions& bo, int threads, int n, int reps) {
  const std::unique_ptr<Backend> backend = make_backend(bo);
  Backend& be = *backend;
  const size_t nn = (size_t)n * n;
  struct Mats {
    FloatBuffer a, b, c;
  };
  std::vector<Mats> mats(threads);
  Rng rng(42);
  for (auto& m : mats) {
    m.a.resize(nn);
    m.b.resize(nn);
    m.c.resize(nn);
    for (size_t i = 0; i < nn; ++i) {
      m.a[i] = (float)(rng.below(2001)) * 1e-3f - 1.f;
      m.b[i] = (float)(rng.below(2001)) * 1e-3f - 1.f;
    }
  }
  ThreadPool pool(threads);
  double best = 1e300;
  for (int rep = 0; rep < std::max(reps, 1) + 1; ++rep) {  // the first rep warms up and is not counted
    const auto t0 = Clock::now();
    pool.for_each(threads, [&](size_t i) {
      be.gemm(false, false, n, n, n, mats[i].a.data(), n, mats[i].b.data(), n, 0.f, mats[i].c.data(), n);
    });
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (rep > 0) best = std::min(best, s);
  }
  return 2.0 * n * (double)n * n * threads / best;
}

// ---------------------------------------------------------------------------
// Amdahl fit

AmdahlFit fit_amdahl(const std::vector<BenchRow>& rows, int n_shards) {
  AmdahlFit f;
  f.predict_at = {8, 16, 64};
  if (rows.empty()) {
    f.note = "no measurements";
    return f;
  }
  const BenchRow& b = rows.front();
  const BenchRow* top = nullptr;
  for (const auto& r : rows)
    if (r.threads > b.threads && !r.oversubscribed) top = &r;
  if (!top) {
    f.note = "no fit: it needs at least two thread counts within the hardware threads";
    return f;
  }
  const BenchRow& t = *top;
  f.valid = true;
  f.base_threads = b.threads;
  f.n = t.threads;
  f.speedup = b.median_s / t.median_s;
  f.serial_fraction = amdahl_serial_fraction(b.median_s, b.threads, t.median_s, t.threads);
  if (b.round_median_s.size() > 1 && b.round_median_s.size() == t.round_median_s.size()) {
    double lo = 1e300, hi = -1e300;
    for (size_t i = 0; i < b.round_median_s.size(); ++i) {
      f.round_speedups.push_back(b.round_median_s[i] / t.round_median_s[i]);
      const double s = amdahl_serial_fraction(b.round_median_s[i], b.threads, t.round_median_s[i], t.threads);
      lo = std::min(lo, s);
      hi = std::max(hi, s);
    }
    f.serial_fraction_lo = lo;
    f.serial_fraction_hi = hi;
  }
  // Phases: serial fraction of each, then each phase's time extrapolated back to
  // one thread (a no-op when the base is 1 thread) to weigh them.
  PhaseModel& m = f.phases;
  m.n_shards = n_shards;
  m.fwd_bwd_serial = phase_serial_fraction(b.fwd_bwd_s, b.threads, t.fwd_bwd_s, t.threads, n_shards);
  m.reduce_opt_serial = phase_serial_fraction(b.reduce_opt_s, b.threads, t.reduce_opt_s, t.threads);
  m.rest_serial = phase_serial_fraction(b.rest_s, b.threads, t.rest_s, t.threads);
  auto at_one = [&](double tb, double s, double g) { return tb / amdahl_time(s, g); };
  m.fwd_bwd_frac = at_one(b.fwd_bwd_s, m.fwd_bwd_serial, shard_granularity(n_shards, b.threads));
  m.reduce_opt_frac = at_one(b.reduce_opt_s, m.reduce_opt_serial, 1.0 / b.threads);
  m.rest_frac = at_one(std::max(b.rest_s, 0.0), m.rest_serial, 1.0 / b.threads);
  const double sum = m.fwd_bwd_frac + m.reduce_opt_frac + m.rest_frac;
  if (sum > 0) {
    m.fwd_bwd_frac /= sum;
    m.reduce_opt_frac /= sum;
    m.rest_frac /= sum;
  }
  for (int n : f.predict_at) {
    f.predicted.push_back(amdahl_speedup(f.serial_fraction, n));
    f.predicted_phase_model.push_back(phase_model_speedup(m, n));
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "fitted from %d -> %d threads only; extrapolating far beyond %d threads is a guess",
                b.threads, t.threads, t.threads);
  f.note = buf;
  return f;
}

// ---------------------------------------------------------------------------
// The bench

// The 1-minute load average, or -1 where /proc/loadavg cannot be read.
static double load_average() {
  std::FILE* f = std::fopen("/proc/loadavg", "r");
  if (!f) return -1;
  double l = -1;
  if (std::fscanf(f, "%lf", &l) != 1) l = -1;
  std::fclose(f);
  return l;
}

// CPU accounting to see how much of the machine others took: busy seconds of
// the whole machine (/proc/stat, all CPUs; negative where unreadable) and CPU
// seconds of this process (all threads).
static double machine_busy_seconds() {
  std::FILE* f = std::fopen("/proc/stat", "r");
  if (!f) return -1;
  unsigned long long v[10] = {};
  const int n = std::fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                            &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
  std::fclose(f);
  if (n < 8) return -1;
  // user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
  const unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
  return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

static double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
}

BenchResult run_bench(const BenchOptions& opt_in, const std::vector<int32_t>& train_split, int vocab_size,
                      std::ostream* progress) {
  BenchResult res;
  res.opt = opt_in;
  BenchOptions& opt = res.opt;
  opt.model.vocab_size = vocab_size;
  opt.model.validate();
  res.load_before = load_average();
  res.blas_core = blas_core_name();
  res.hardware_threads = tbb::info::default_concurrency();
  if (opt.threads.empty()) opt.threads = default_thread_counts(res.hardware_threads);
  std::sort(opt.threads.begin(), opt.threads.end());
  opt.threads.erase(std::unique(opt.threads.begin(), opt.threads.end()), opt.threads.end());
  if (opt.threads.front() < 1) throw std::runtime_error("thread counts must be >= 1");
  if (opt.steps < 1) throw std::runtime_error("--steps must be >= 1");
  if (opt.warmup < 0) throw std::runtime_error("--warmup must be >= 0");
  if (opt.rounds < 1) throw std::runtime_error("--rounds must be >= 1");
  if (opt.batch_size < 1) throw std::runtime_error("--batch-size must be >= 1");
  if (train_split.size() < (size_t)opt.model.block_size + 1)
    throw std::runtime_error("the training split has " + std::to_string(train_split.size()) +
                             " tokens, fewer than block_size+1");

  const Config& cfg = opt.model;
  const AdamW adamw;
  const float grad_clip = 1.0f;
  res.n_params = num_params(cfg);
  res.flops_per_step = flops_per_token(cfg) * opt.batch_size * cfg.block_size;

  const size_t S = opt.threads.size();
  std::vector<std::unique_ptr<Engine>> engines(S);
  std::vector<std::vector<StepTiming>> timings(S);
  std::vector<std::vector<double>> losses(S);
  std::vector<double> other_busy(S, 0), block_wall(S, 0);
  bool have_stat = machine_busy_seconds() >= 0;
  res.rows.resize(S);
  for (int round = 0; round < opt.rounds; ++round) {
    for (size_t k = 0; k < S; ++k) {
      BenchRow& row = res.rows[k];
      row.threads = opt.threads[k];
      if (!engines[k]) {
        engines[k] = std::make_unique<Engine>(cfg, opt.batch_size, opt.shard_size, row.threads, opt.seed,
                                              opt.backend);
        init_params(cfg, engines[k]->params(), opt.seed);
        engines[k]->weights_loaded();
        res.n_shards = engines[k]->n_shards();
        res.shard_size = engines[k]->shard_size();
      }
      Engine& e = *engines[k];
      if (round == 0)
        for (int i = 0; i < opt.warmup; ++i) losses[k].push_back(e.train_step(train_split, opt.lr, grad_clip, adamw));
      const int cap = std::min<int>(
          row.threads, (int)tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
      row.concurrency_cap = round == 0 ? cap : std::min(row.concurrency_cap, cap);
      const double busy0 = have_stat ? machine_busy_seconds() : 0, self0 = process_cpu_seconds();
      const auto block0 = Clock::now();
      for (int i = 0; i < opt.steps; ++i) {
        StepTiming tm;
        const auto t0 = Clock::now();
        const double loss = e.train_step(train_split, opt.lr, grad_clip, adamw, nullptr, &tm);
        row.step_s.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        losses[k].push_back(loss);
        timings[k].push_back(tm);
      }
      const double wall = std::chrono::duration<double>(Clock::now() - block0).count();
      block_wall[k] += wall;
      if (have_stat) {
        const double busy1 = machine_busy_seconds(), self1 = process_cpu_seconds();
        if (busy1 < 0) have_stat = false;
        else {
          const double other = std::max(0.0, (busy1 - busy0) - (self1 - self0));
          other_busy[k] += other;
          row.round_other_cpu_frac.push_back(std::min(1.0, other / (wall * res.hardware_threads)));
        }
      }
      row.round_median_s.push_back(median(std::vector<double>(row.step_s.end() - opt.steps, row.step_s.end())));
      if (round == 0) row.peak_rss_bytes = peak_rss_bytes();
      // The machine's speed drifts (a VM's host is shared), so the sgemm peak is
      // sampled in every round but the first (which stays clean for peak RSS) and
      // once more at the end; the best sample counts.
      if (round > 0)
        row.sgemm_flops_per_s =
            std::max(row.sgemm_flops_per_s, measure_sgemm_rate(opt.backend, row.threads, opt.sgemm_n, opt.sgemm_reps));
      if (progress) {
        char line[160];
        std::snprintf(line, sizeof line, "round %d/%d: %3d threads  %8.2f ms/step  loss %.4f\n", round + 1,
                      opt.rounds, row.threads, 1e3 * row.round_median_s.back(), losses[k].back());
        *progress << line << std::flush;
      }
    }
  }

  for (size_t k = 0; k < S; ++k) {
    BenchRow& row = res.rows[k];
    row.oversubscribed = row.threads > res.hardware_threads;
    row.threads_seen = engines[k]->threads_seen();
    if (have_stat && block_wall[k] > 0)
      row.other_cpu_frac = std::min(1.0, other_busy[k] / (block_wall[k] * res.hardware_threads));
    row.engine_bytes = engines[k]->bytes_allocated();
    row.median_s = median(row.step_s);
    row.mad_s = scaled_mad(row.step_s);
    std::vector<double> fb, ro, rest;
    for (size_t i = 0; i < timings[k].size(); ++i) {
      fb.push_back(timings[k][i].fwd_bwd_s);
      ro.push_back(timings[k][i].reduce_opt_s);
      rest.push_back(row.step_s[i] - timings[k][i].fwd_bwd_s - timings[k][i].reduce_opt_s);
    }
    row.fwd_bwd_s = median(fb);
    row.reduce_opt_s = median(ro);
    row.rest_s = median(rest);
    row.tok_per_s = (double)opt.batch_size * cfg.block_size / row.median_s;
    row.model_flops_per_s = res.flops_per_step / row.median_s;
    const auto& L = losses[k];
    row.loss_first = L.front();
    const size_t tail = std::min<size_t>(std::max(opt.loss_tail, 1), L.size());
    double sum = 0;
    for (size_t i = L.size() - tail; i < L.size(); ++i) sum += L[i];
    row.loss_last = sum / tail;
    if (!std::isfinite(row.loss_last)) throw std::runtime_error("non-finite loss in the bench");
  }
  res.load_after = load_average();
  engines.clear();
  for (auto& row : res.rows) {
    row.speedup = res.rows.front().median_s / row.median_s;
    row.efficiency = parallel_efficiency(row.speedup, row.threads, res.rows.front().threads);
    row.sgemm_flops_per_s =
        std::max(row.sgemm_flops_per_s, measure_sgemm_rate(opt.backend, row.threads, opt.sgemm_n, opt.sgemm_reps));
    row.mfu = row.model_flops_per_s / row.sgemm_flops_per_s;
    if (row.loss_last != res.rows.front().loss_last || row.loss_first != res.rows.front().loss_first)
      res.losses_identical = false;
  }
  res.amdahl = fit_amdahl(res.rows, res.n_shards);
  return res;
}

// ---------------------------------------------------------------------------
// Output

static std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

// A phase's share of the three phases' sum, in percent (rest may come out below 0 and counts as 0).
static double phase_pct(const BenchRow& row, double x) {
  const double sum = row.fwd_bwd_s + row.reduce_opt_s + std::max(row.rest_s, 0.0);
  return sum > 0 ? 100 * std::max(x, 0.0) / sum : 0.0;
}

void print_table(const BenchResult& r, std::ostream& out) {
  const Config& c = r.opt.model;
  char line[512];
  std::snprintf(line, sizeof line,
                "chargpt bench: L=%d H=%d C=%d T=%d V=%d (%zu parameters), batch %d = %d shards of %d, "
                "%.1f MFLOP/step\n",
                c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, r.n_params, r.opt.batch_size, r.n_shards,
                r.shard_size, r.flops_per_step / 1e6);
  out << line;
  std::snprintf(line, sizeof line,
                "%d hardware threads; %d rounds x %d timed steps per setting (+%d warmup), interleaved; "
                "data %s; OpenBLAS kernels: %s; products: %s %s\n",
                r.hardware_threads, r.opt.rounds, r.opt.steps, r.opt.warmup, r.data_path.c_str(), r.blas_core.c_str(),
                backend_name(r.opt.backend.kind), precision_name(r.opt.backend.precision));
  out << line;
  if (r.load_before >= 0) {
    std::snprintf(line, sizeof line,
                  "load average (1 min): %.2f before the run, %.2f at its end (counting our own threads; see the "
                  "'others' column for what other processes took while we timed)\n\n",
                  r.load_before, r.load_after);
    out << line;
  }
  const int base = r.rows.empty() ? 1 : r.rows.front().threads;
  std::snprintf(line, sizeof line,
                "%8s %17s %9s %8s %6s %7s %7s %6s  %-30s %15s %8s %8s %7s\n", "threads", "ms/step (MAD)", "tok/s",
                base == 1 ? "speedup" : ("x vs " + std::to_string(base)).c_str(), "eff", "GFLOP/s", "sgemm", "MFU",
                "fwd+bwd | reduce+opt | rest ms", "loss", "engine", "peakRSS", "others");
  out << line;
  std::snprintf(line, sizeof line, "%8s %17s %9s %8s %6s %7s %7s %6s  %-30s %15s %8s %8s %7s\n", "", "median", "",
                "", "", "model", "GFLOP/s", "", "(median, % of their sum)", "first -> end", "MiB", "MiB", "CPU");
  out << line;
  bool any_over = false;
  double max_others = -1;
  for (const auto& row : r.rows) {
    any_over |= row.oversubscribed;
    auto pct = [&](double x) { return phase_pct(row, x); };
    std::string split = fmt("%.2f", 1e3 * row.fwd_bwd_s) + " " + fmt("%.0f%%", pct(row.fwd_bwd_s)) + " | " +
                        fmt("%.2f", 1e3 * row.reduce_opt_s) + " " + fmt("%.0f%%", pct(row.reduce_opt_s)) + " | " +
                        fmt("%.2f", 1e3 * row.rest_s) + " " + fmt("%.0f%%", pct(row.rest_s));
    std::string ms = fmt("%.2f", 1e3 * row.median_s) + " (" + fmt("%.2f", 1e3 * row.mad_s) + ")";
    std::string threads = std::to_string(row.threads) + (row.oversubscribed ? "*" : "");
    std::string loss = fmt("%.3f", row.loss_first) + " -> " + fmt("%.3f", row.loss_last);
    std::string others = row.other_cpu_frac < 0 ? "?" : fmt("%.0f%%", 100 * row.other_cpu_frac);
    max_others = std::max(max_others, row.other_cpu_frac);
    std::snprintf(line, sizeof line,
                  "%8s %17s %9.0f %7.2fx %5.0f%% %7.1f %7.1f %5.1f%%  %-30s %15s %8.1f %8.1f %7s\n",
                  threads.c_str(), ms.c_str(), row.tok_per_s, row.speedup, 100 * row.efficiency,
                  row.model_flops_per_s / 1e9, row.sgemm_flops_per_s / 1e9, 100 * row.mfu, split.c_str(),
                  loss.c_str(), row.engine_bytes / 1048576.0, row.peak_rss_bytes / 1048576.0, others.c_str());
    out << line;
  }
  out << "\n";
  out << "ms/step: median over all timed steps, (MAD) = 1.4826 x median absolute deviation (spread of one step).\n";
  out << "MFU: model FLOPs per step (" << fmt("%.3g", r.flops_per_step)
      << ") / median step time / sgemm rate at the same thread count (threads independent single-threaded "
      << r.opt.sgemm_n << "^3 products at once on the engines' backend, " << backend_name(r.opt.backend.kind) << " "
      << precision_name(r.opt.backend.precision) << ", best of " << r.opt.sgemm_reps
      << " reps, sampled after every round but the first and at the end; the best sample counts).\n";
  out << "round medians (ms), to show drift:";
  for (const auto& row : r.rows) {
    out << "  " << row.threads << " thr:";
    for (size_t i = 0; i < row.round_median_s.size(); ++i) {
      out << " " << fmt("%.1f", 1e3 * row.round_median_s[i]);
      if (i < row.round_other_cpu_frac.size() && row.round_other_cpu_frac[i] > 0.05)
        out << "(others " << fmt("%.0f%%", 100 * row.round_other_cpu_frac[i]) << ")";
    }
    out << ";";
  }
  out << "\n";
  out << "Phase times are medians of each phase, so they need not add up to the median step; rest = step - "
         "fwd+bwd - reduce+opt (batch sampling and call overhead; the loss sum and norm check are in reduce+opt).\n";
  out << "loss: first step -> mean of the last " << r.opt.loss_tail << " steps, constant lr "
      << fmt("%g", r.opt.lr) << (r.losses_identical ? "; identical for every thread count, as designed.\n"
                                                    : "; WARNING: it differs between thread counts.\n");
  out << "engine: Engine::bytes_allocated() of that setting. peakRSS: the process high-water mark after the "
         "setting's first round, so it includes the engines of the settings above it (all stay alive for "
         "interleaving) and the dataset.\n";
  out << "others: CPU time other processes used while that setting's timed steps ran, as a share of all "
      << r.hardware_threads << " hardware threads (/proc/stat minus our own rusage).";
  if (max_others > 0.05)
    out << " WARNING: up to " << fmt("%.0f%%", 100 * max_others)
        << " of the machine was busy with other work: these timings are not of an idle machine.";
  out << "\n";
  for (const auto& row : r.rows)
    if (row.concurrency_cap < row.threads) {
      std::snprintf(line, sizeof line,
                    "WARNING: oneTBB capped the %d-thread setting at %d concurrent threads (max_allowed_parallelism "
                    "of a global_control alive at the time).\n",
                    row.threads, row.concurrency_cap);
      out << line;
    } else if (row.threads_seen < std::min(row.threads, r.n_shards)) {
      std::snprintf(line, sizeof line, "note: the %d-thread setting ran forward+backward on %d distinct threads.\n",
                    row.threads, row.threads_seen);
      out << line;
    }
  if (any_over)
    out << "* oversubscribed: more threads than the " << r.hardware_threads
        << " hardware threads (tbb::info::default_concurrency()); those threads share cores, so these rows "
           "measure contention, not scaling.\n";
  const AmdahlFit& a = r.amdahl;
  out << "\nAmdahl: ";
  if (!a.valid) {
    out << a.note << "\n";
    return;
  }
  std::snprintf(line, sizeof line,
                "from the measured %.2fx at %d threads over %d: serial fraction s = %.3f  (S(n) = 1/(s + (1-s)/n))\n",
                a.speedup, a.n, a.base_threads, a.serial_fraction);
  out << line;
  if (!a.round_speedups.empty()) {
    const auto [mn, mx] = std::minmax_element(a.round_speedups.begin(), a.round_speedups.end());
    std::snprintf(line, sizeof line,
                  "  round by round (paired): speedup %.2fx to %.2fx, so s between %.3f and %.3f; predictions "
                  "from s alone at 64 cores: %.1fx to %.1fx\n",
                  *mn, *mx, a.serial_fraction_lo, a.serial_fraction_hi, amdahl_speedup(a.serial_fraction_hi, 64),
                  amdahl_speedup(a.serial_fraction_lo, 64));
    out << line;
  }
  if (a.serial_fraction > 1)
    out << "  s > 1: the step got slower with more threads; Amdahl's law does not describe that (contention, "
           "a busy machine, or too little work per thread), so the predictions below are clamped to s = 1.\n";
  else if (a.serial_fraction < 0)
    out << "  s < 0: superlinear speedup (caches, or noise); the predictions below are clamped to s = 0.\n";
  const PhaseModel& m = a.phases;
  std::snprintf(line, sizeof line,
                "  per phase (share of the 1-thread step, serial fraction): fwd+bwd %.0f%%, s=%.3f; reduce+opt "
                "%.0f%%, s=%.3f; rest %.0f%%, s=%.3f\n",
                100 * m.fwd_bwd_frac, m.fwd_bwd_serial, 100 * m.reduce_opt_frac, m.reduce_opt_serial,
                100 * m.rest_frac, m.rest_serial);
  out << line;
  out << "  predicted speedup over 1 thread:";
  for (size_t i = 0; i < a.predict_at.size(); ++i)
    out << (i ? "," : "") << " " << a.predict_at[i] << " cores " << fmt("%.1fx", a.predicted[i]);
  out << "\n  same, phases fitted apart and fwd+bwd in " << m.n_shards << " shard tasks (ceil(" << m.n_shards
      << "/n) rounds):";
  for (size_t i = 0; i < a.predict_at.size(); ++i)
    out << (i ? "," : "") << " " << a.predict_at[i] << " cores " << fmt("%.1fx", a.predicted_phase_model[i]);
  out << "\n  " << a.note
      << "; neither model knows about memory bandwidth, shared caches, SMT or clock drops with more active cores, "
         "so read these as upper bounds.\n";
}

const char* const kBenchCsvHeader =
    "threads,oversubscribed,concurrency_cap,threads_seen,timed_steps,ms_median,ms_mad,tok_per_s,speedup,efficiency,"
    "model_gflops,sgemm_gflops,mfu,fwd_bwd_ms,reduce_opt_ms,rest_ms,fwd_bwd_pct,reduce_opt_pct,rest_pct,"
    "loss_first,loss_last,engine_mib,peak_rss_mib,other_cpu_pct";

void write_csv(const BenchResult& r, std::ostream& out) {
  out << kBenchCsvHeader << "\n";
  for (const auto& row : r.rows) {
    auto pct = [&](double x) { return phase_pct(row, x); };
    char line[640];
    std::snprintf(line, sizeof line,
                  "%d,%d,%d,%d,%zu,%.4f,%.4f,%.1f,%.4f,%.4f,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.2f,%.2f,%.2f,%.5f,%.5f,"
                  "%.2f,%.2f,%.1f\n",
                  row.threads, row.oversubscribed ? 1 : 0, row.concurrency_cap, row.threads_seen, row.step_s.size(), 1e3 * row.median_s,
                  1e3 * row.mad_s, row.tok_per_s, row.speedup, row.efficiency, row.model_flops_per_s / 1e9,
                  row.sgemm_flops_per_s / 1e9, row.mfu, 1e3 * row.fwd_bwd_s, 1e3 * row.reduce_opt_s,
                  1e3 * row.rest_s, pct(row.fwd_bwd_s), pct(row.reduce_opt_s), pct(row.rest_s), row.loss_first,
                  row.loss_last, row.engine_bytes / 1048576.0, row.peak_rss_bytes / 1048576.0,
                  row.other_cpu_frac < 0 ? -1.0 : 100 * row.other_cpu_frac);
    out << line;
  }
}

nlohmann::json bench_json(const BenchResult& r) {
  using json = nlohmann::json;
  const Config& c = r.opt.model;
  json j;
  j["config"] = {{"n_layer", c.n_layer},       {"n_head", c.n_head},         {"n_embd", c.n_embd},
                 {"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"batch_size", r.opt.batch_size},
                 {"shard_size", r.shard_size}, {"n_shards", r.n_shards},     {"n_params", r.n_params},
                 {"flops_per_step", r.flops_per_step}};
  j["method"] = {{"data", r.data_path},           {"hardware_threads", r.hardware_threads},
                 {"rounds", r.opt.rounds},        {"steps_per_round", r.opt.steps},
                 {"warmup", r.opt.warmup},        {"lr", r.opt.lr},
                 {"seed", r.opt.seed},            {"loss_tail", r.opt.loss_tail},
                 {"sgemm_n", r.opt.sgemm_n},      {"sgemm_reps", r.opt.sgemm_reps},
                 {"losses_identical", r.losses_identical},
                 {"load_before", r.load_before},  {"load_after", r.load_after},
                 {"blas_core", r.blas_core},
                 {"backend", backend_name(r.opt.backend.kind)},
                 {"precision", precision_name(r.opt.backend.precision)},
                 {"peak_rss_note", "process high-water mark after the setting's first round; includes the engines "
                                   "of earlier settings"}};
  json sg = json::object();
  for (const auto& row : r.rows) sg[std::to_string(row.threads)] = row.sgemm_flops_per_s;
  j["sgemm_flops_per_s"] = sg;
  json rows = json::array();
  for (const auto& row : r.rows) {
    json rm = json::array();
    for (double s : row.round_median_s) rm.push_back(1e3 * s);
    rows.push_back({{"threads", row.threads},
                    {"oversubscribed", row.oversubscribed},
                    {"concurrency_cap", row.concurrency_cap},
                    {"threads_seen", row.threads_seen},
                    {"timed_steps", row.step_s.size()},
                    {"ms_median", 1e3 * row.median_s},
                    {"ms_mad", 1e3 * row.mad_s},
                    {"round_medians_ms", rm},
                    {"round_other_cpu_frac", row.round_other_cpu_frac},
                    {"tok_per_s", row.tok_per_s},
                    {"speedup", row.speedup},
                    {"efficiency", row.efficiency},
                    {"model_flops_per_s", row.model_flops_per_s},
                    {"sgemm_flops_per_s", row.sgemm_flops_per_s},
                    {"mfu", row.mfu},
                    {"fwd_bwd_ms", 1e3 * row.fwd_bwd_s},
                    {"reduce_opt_ms", 1e3 * row.reduce_opt_s},
                    {"rest_ms", 1e3 * row.rest_s},
                    {"loss_first", row.loss_first},
                    {"loss_last", row.loss_last},
                    {"engine_bytes", row.engine_bytes},
                    {"peak_rss_bytes", row.peak_rss_bytes},
                    {"other_cpu_frac", row.other_cpu_frac}});
  }
  j["rows"] = rows;
  const AmdahlFit& a = r.amdahl;
  json am = {{"valid", a.valid}, {"note", a.note}};
  if (a.valid) {
    am["base_threads"] = a.base_threads;
    am["n"] = a.n;
    am["speedup"] = a.speedup;
    am["serial_fraction"] = a.serial_fraction;
    am["round_speedups"] = a.round_speedups;
    if (!a.round_speedups.empty()) am["serial_fraction_range"] = {a.serial_fraction_lo, a.serial_fraction_hi};
    am["phases"] = {{"fwd_bwd_frac", a.phases.fwd_bwd_frac},       {"fwd_bwd_serial", a.phases.fwd_bwd_serial},
                    {"reduce_opt_frac", a.phases.reduce_opt_frac}, {"reduce_opt_serial", a.phases.reduce_opt_serial},
                    {"rest_frac", a.phases.rest_frac},             {"rest_serial", a.phases.rest_serial},
                    {"n_shards", a.phases.n_shards}};
    json pred = json::object(), pred2 = json::object();
    for (size_t i = 0; i < a.predict_at.size(); ++i) {
      pred[std::to_string(a.predict_at[i])] = a.predicted[i];
      pred2[std::to_string(a.predict_at[i])] = a.predicted_phase_model[i];
    }
    am["predicted_speedup"] = pred;
    am["predicted_speedup_phase_model"] = pred2;
  }
  j["amdahl"] = am;
  return j;
}

}  // namespace chargpt
