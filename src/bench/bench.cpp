#include "bench/bench.h"

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

#include "bench/bench_stats.h"
#include "base/clock.h"
#include "base/buffer.h"
#include "backend/backend.h"
#include "backend/device_backend.h"
#include "engine/memory.h"
#include "model/blocks.h"
#include "ops/ops.h"
#include "base/rng.h"
#include "train/train.h"

namespace chargpt {

// ---------------------------------------------------------------------------
// Thread lists

std::vector<int> default_thread_counts(int hw) {
  std::vector<int> t;
  for (int p = 1; p <= hw; p *= 2) t.push_back(p);
  if (t.empty() || t.back() != hw) t.push_back(std::max(hw, 1));
  return t;
}

// ---------------------------------------------------------------------------
// sgemm rate

// Product FLOP rate (FLOP/s) of `threads` concurrent single-threaded n x n x n
// products in a task_arena(threads), each on its own matrices; best of reps. They
// run through the backend's linear_forward as the model's do: the weights bound
// (one tensor per thread), the input's bf16 copy made beforehand where the backend
// reads bf16, so the rate is the backend's own in its own precision.
// That rate includes a device backend's host transfers: it goes to *io_rate, and
// the device's product-only rate (device_product_flops) is returned instead.
static double measure_sgemm_rate(const BackendOptions& bo, int threads, int n, int reps, double* io_rate) {
  const std::unique_ptr<Backend> backend = make_backend(bo);
  Backend& be = *backend;
  const size_t nn = (size_t)n * n;
  FloatBuffer weights(nn * threads);
  struct Mats {
    FloatBuffer a, c;
    std::vector<uint16_t> a16;
  };
  std::vector<Mats> mats(threads);
  WeightTable table{weights.data(), weights.size(), {}};
  Rng rng(42);
  for (int t = 0; t < threads; ++t) {
    Mats& m = mats[t];
    m.a.resize(nn);
    m.c.resize(nn);
    for (size_t i = 0; i < nn; ++i) {
      m.a[i] = (float)(rng.below(2001)) * 1e-3f - 1.f;
      weights[t * nn + i] = (float)(rng.below(2001)) * 1e-3f - 1.f;
    }
    if (be.wants_bf16_inputs()) {
      m.a16.resize(nn);
      to_bf16(m.a16.data(), m.a.data(), nn);
    }
    table.tensors.push_back({t * nn, nn});
  }
  be.bind_weights(table);
  be.weights_changed(0, weights.size());
  ThreadPool pool(threads);
  double best = 1e300;
  for (int rep = 0; rep < std::max(reps, 1) + 1; ++rep) {  // the first rep warms up and is not counted
    const auto t0 = Clock::now();
    pool.for_each(threads, [&](size_t i) {
      Mats& m = mats[i];
      be.linear_forward(m.c.data(), {m.a.data(), m.a16.empty() ? nullptr : m.a16.data()},
                        {weights.data() + i * nn, (int)i}, {}, n, n, n);
    });
    const double s = seconds_since(t0);
    if (rep > 0) best = std::min(best, s);
  }
  *io_rate = 2.0 * n * (double)n * n * threads / best;
  const double product_only = device_product_flops(be, n, reps);
  return product_only > 0 ? product_only : *io_rate;
}

// The rates of one sample, the best so far kept.
static void sample_sgemm_rates(BenchRow& row, const BenchOptions& opt) {
  double io = 0;
  row.sgemm_flops_per_s =
      std::max(row.sgemm_flops_per_s, measure_sgemm_rate(opt.backend, row.threads, opt.sgemm_n, opt.sgemm_reps, &io));
  row.sgemm_io_flops_per_s = std::max(row.sgemm_io_flops_per_s, io);
}

// Adds b - a (per step: / steps) of a device backend's counters to d.
static void add_device_delta(DeviceSplit& d, const DeviceStats& a, const DeviceStats& b, int steps) {
  const double k = 1e3 / steps, mb = 1e-6 / steps;
  d.valid = true;
  d.timers = b.timers;
  d.call_ms += k * (b.call_s - a.call_s);
  d.staging_ms += k * (b.staging_s - a.staging_s);
  d.weight_upload_ms += k * (b.weight_upload_s - a.weight_upload_s);
  d.upload_ms += k * (b.phase_s[0] - a.phase_s[0]);
  d.product_ms += k * (b.phase_s[1] - a.phase_s[1]);
  d.download_ms += k * (b.phase_s[2] - a.phase_s[2]);
  d.mb_up += mb * (b.bytes_up - a.bytes_up);
  d.mb_down += mb * (b.bytes_down - a.bytes_down);
  d.weight_mb_up += mb * (b.weight_bytes_up - a.weight_bytes_up);
  d.cache_hits += (double)(b.cache_hits - a.cache_hits) / steps;
  d.cache_misses += (double)(b.cache_misses - a.cache_misses) / steps;
}

// ---------------------------------------------------------------------------
// Amdahl fit

std::vector<MemoryRow> memory_rows(const std::vector<int>& threads, int vocab_size) {
  std::vector<MemoryRow> out;
  for (const Preset& p : kPresets) out.push_back({p.name, p.model, p.batch_size, 0, {}});
  out.push_back({"gpt2-sm", {.block_size = 256, .n_layer = 12, .n_head = 12, .n_embd = 768}, 64, 0, {}});
  for (MemoryRow& m : out) {
    m.model.vocab_size = vocab_size;
    m.n_params = num_params(m.model);
    for (int t : threads) m.bytes.push_back(estimate_train_bytes(m.model, m.batch_size, 0, t));
  }
  return out;
}

AmdahlFit fit_amdahl(const std::vector<BenchRow>& rows, int n_shards, int blocks) {
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
  m.blocks = blocks;
  m.fwd_bwd_serial = phase_serial_fraction(b.fwd_bwd_s, b.threads, t.fwd_bwd_s, t.threads, n_shards, blocks);
  m.reduce_opt_serial = phase_serial_fraction(b.reduce_opt_s, b.threads, t.reduce_opt_s, t.threads);
  m.rest_serial = phase_serial_fraction(b.rest_s, b.threads, t.rest_s, t.threads);
  auto at_one = [&](double tb, double s, double g) { return tb / amdahl_time(s, g); };
  m.fwd_bwd_frac = at_one(b.fwd_bwd_s, m.fwd_bwd_serial, shard_granularity(n_shards, b.threads, blocks));
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
  for_each_shape_option(opt, OptionChecker{});
  for_each_shard_option(opt, OptionChecker{});
  for_each_bench_option(opt, OptionChecker{});
  if (train_split.size() < (size_t)opt.model.block_size + 1)
    throw std::runtime_error("the training split has " + std::to_string(train_split.size()) +
                             " tokens, fewer than block_size+1");

  const Config& cfg = opt.model;
  {
    // Every setting's engine stays alive (for interleaving), and the sgemm rate needs 3 n x n matrices a thread.
    double need = 3.0 * opt.sgemm_n * opt.sgemm_n * 4 * opt.threads.back();
    for (int t : opt.threads) need += estimate_train_bytes(cfg, opt.batch_size, opt.shard_size, t, 0, opt.pass_size);
    char what[200];
    std::snprintf(what, sizeof what,
                  "the bench of n_layer %d, n_embd %d, block_size %d, batch %d at %zu thread counts (sgemm size %d)",
                  cfg.n_layer, cfg.n_embd, cfg.block_size, opt.batch_size, opt.threads.size(), opt.sgemm_n);
    check_memory_need(what, need, "lower the model's size, --batch-size, --pass-size, --threads or --sgemm-size");
  }
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
        engines[k] = std::make_unique<Engine>(
            cfg,
            EngineOptions{
                .batch_size = opt.batch_size, .shard_size = opt.shard_size, .pass_size = opt.pass_size,
                .threads = row.threads, .seed = opt.seed},
            opt.backend);
        init_params(cfg, engines[k]->params(), opt.seed);
        engines[k]->weights_loaded();
        res.n_shards = engines[k]->n_shards();
        res.shard_size = engines[k]->shard_size();
        res.pass_size = engines[k]->pass_size();
        res.blocks = par::Blocks(res.pass_size * cfg.block_size).count;
      }
      Engine& e = *engines[k];
      if (round == 0)
        for (int i = 0; i < opt.warmup; ++i) losses[k].push_back(e.train_step(train_split, opt.lr, grad_clip, adamw));
      const int cap = std::min<int>(
          row.threads, (int)tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
      row.concurrency_cap = round == 0 ? cap : std::min(row.concurrency_cap, cap);
      DeviceStats dev0, dev1;
      const bool on_device = device_stats(e.backend(), &dev0);
      const double busy0 = have_stat ? machine_busy_seconds() : 0, self0 = process_cpu_seconds();
      const auto block0 = Clock::now();
      for (int i = 0; i < opt.steps; ++i) {
        StepTiming tm;
        const auto t0 = Clock::now();
        const double loss = e.train_step(train_split, opt.lr, grad_clip, adamw, nullptr, &tm);
        row.step_s.push_back(seconds_since(t0));
        losses[k].push_back(loss);
        timings[k].push_back(tm);
      }
      const double wall = seconds_since(block0);
      block_wall[k] += wall;
      if (on_device && device_stats(e.backend(), &dev1))  // summed over rounds, divided by rounds below
        add_device_delta(row.device, dev0, dev1, opt.steps);
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
      if (round > 0) sample_sgemm_rates(row, opt);
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
    if (row.device.valid) {  // per-round sums to the mean over rounds
      DeviceSplit& d = row.device;
      for (double* x : {&d.call_ms, &d.staging_ms, &d.weight_upload_ms, &d.upload_ms, &d.product_ms, &d.download_ms,
                        &d.mb_up, &d.mb_down, &d.weight_mb_up, &d.cache_hits, &d.cache_misses})
        *x /= opt.rounds;
      d.cpu_ops_ms = 1e3 * row.fwd_bwd_s * row.threads - d.call_ms;
    }
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
    sample_sgemm_rates(row, opt);
    row.mfu = row.model_flops_per_s / row.sgemm_flops_per_s;
    row.mfu_io = row.model_flops_per_s / row.sgemm_io_flops_per_s;
    if (row.loss_last != res.rows.front().loss_last || row.loss_first != res.rows.front().loss_first)
      res.losses_identical = false;
  }
  res.amdahl = fit_amdahl(res.rows, res.n_shards, res.blocks);
  return res;
}

}  // namespace chargpt
