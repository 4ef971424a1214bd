// `chargpt bench`: time training steps over a sweep of thread counts (see chargpt/bench.h for the method),
// and the report: table, CSV and JSON.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <ostream>
#include <string>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>
#include <tbb/info.h>

#include "bench/bench.h"
#include "io/data.h"
#include "train/train.h"
#include "cli/cli.h"

namespace chargpt {

// "all" (= default_thread_counts(hw)) or a comma list like "1,2,3": sorted,
// duplicates removed. Throws UsageError on anything else or a count < 1.
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

namespace {

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

}  // namespace

namespace {

struct BenchArgs {
  BenchOptions b;
  PresetFlag preset{kDefaultPreset.name, &b.model, &b.batch_size};
  std::string data = kDefaultDataPath;
  std::string threads = "all";
  std::optional<std::string> csv;
  BackendArgs backend;
  bool json = false, quiet = false, help = false;

  template <class V>
  void for_each(V&& v) {
    v.group("Model");
    v(preset, "preset", preset_help());
    for_each_shape_option(b, FromPreset<V>{v});
    for_each_shard_option(b, v);
    v.group("Bench");
    v(data, "data", "training text (UTF-8)");
    v(threads, "threads",
      "thread counts: a comma list like 1,2,3, or 'all' = 1, 2, 4, ... up to the hardware threads (plus that count "
      "if it is not a power of two)");
    for_each_bench_option(b, v);
    v(csv, "csv",
      "also write the table as CSV to this file (a regular file or none; checked before the run, replaced after it)");
    v(json, "json", "print one JSON object on stdout (the table goes to stderr)");
    v(quiet, "q,quiet", "no per-round progress on stderr");
    backend.for_each(v);
    v(help, "h,help", "show this help");
  }
  void check() const {
    if (b.model.n_embd % b.model.n_head)
      throw UsageError("--n-embd " + std::to_string(b.model.n_embd) + " must be divisible by --n-head " +
                       std::to_string(b.model.n_head));
  }
};

}  // namespace

int cmd_bench(int argc, char** argv) {
  cxxopts::Options o("chargpt bench",
                     "Time training steps over a sweep of thread counts: one engine per count (same seed, same "
                     "init), rounds interleaved, median and scaled MAD per count, speedup, efficiency, MFU against "
                     "the measured sgemm rate, the phase split and an Amdahl fit.");
  BenchArgs a;
  if (!parse_args(a, o, argc, argv)) return 0;
  BenchOptions& b = a.b;
  b.backend = a.backend.resolve();
  b.threads = parse_thread_list(a.threads, tbb::info::default_concurrency());
  check_threads_can_start(b.threads.back());

  // Check the CSV's path before the (long) run, so a bad one fails at once.
  if (a.csv) {
    check_output_path("--csv", *a.csv, {a.data});
    check_directory_writable("--csv", *a.csv);
  }

  Dataset ds = load_dataset(a.data);
  BenchResult res = run_bench(b, ds.train, ds.tok.size(), a.quiet ? nullptr : &std::cerr);
  res.data_path = a.data;

  if (a.csv) {
    std::ofstream csv(*a.csv, std::ios::trunc);
    if (!csv) throw std::runtime_error("cannot open '" + *a.csv + "' for writing");
    write_csv(res, csv);
    csv.close();
    if (!csv) throw std::runtime_error("cannot write '" + *a.csv + "'");
  }
  if (a.json) {
    print_table(res, std::cerr);
    std::cout << bench_json(res).dump() << "\n" << std::flush;
  } else {
    print_table(res, std::cout);
    std::cout << std::flush;
  }
  return 0;
}

}  // namespace chargpt
