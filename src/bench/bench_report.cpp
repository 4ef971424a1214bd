#include "bench/bench_report.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <ostream>
#include <stdexcept>
#include <string>

namespace chargpt {

namespace {

// A phase's share of the three phases' sum, in percent (rest may come out below 0 and counts as 0).
double phase_pct(const BenchRow& row, double x) {
  const double sum = row.fwd_bwd_s + row.reduce_opt_s + std::max(row.rest_s, 0.0);
  return sum > 0 ? 100 * std::max(x, 0.0) / sum : 0.0;
}

constexpr double kMiB = 1048576.0;
constexpr unsigned kBoth = kCsv | kJson;
using K = BenchColumn::Kind;

const BenchColumn kColumns[] = {
    {"threads", K::integer, nullptr, kBoth, [](const BenchRow& r) { return double(r.threads); }},
    {"oversubscribed", K::boolean, nullptr, kBoth, [](const BenchRow& r) { return r.oversubscribed ? 1.0 : 0.0; }},
    {"concurrency_cap", K::integer, nullptr, kBoth, [](const BenchRow& r) { return double(r.concurrency_cap); }},
    {"threads_seen", K::integer, nullptr, kBoth, [](const BenchRow& r) { return double(r.threads_seen); }},
    {"timed_steps", K::integer, nullptr, kBoth, [](const BenchRow& r) { return double(r.step_s.size()); }},
    {"ms_median", K::real, "%.4f", kBoth, [](const BenchRow& r) { return 1e3 * r.median_s; }},
    {"ms_mad", K::real, "%.4f", kBoth, [](const BenchRow& r) { return 1e3 * r.mad_s; }},
    {"tok_per_s", K::real, "%.1f", kBoth, [](const BenchRow& r) { return r.tok_per_s; }},
    {"speedup", K::real, "%.4f", kBoth, [](const BenchRow& r) { return r.speedup; }},
    {"efficiency", K::real, "%.4f", kBoth, [](const BenchRow& r) { return r.efficiency; }},
    {"model_gflops", K::real, "%.3f", kCsv, [](const BenchRow& r) { return r.model_flops_per_s / 1e9; }},
    {"model_flops_per_s", K::real, nullptr, kJson, [](const BenchRow& r) { return r.model_flops_per_s; }},
    {"sgemm_gflops", K::real, "%.3f", kCsv, [](const BenchRow& r) { return r.sgemm_flops_per_s / 1e9; }},
    {"sgemm_flops_per_s", K::real, nullptr, kJson, [](const BenchRow& r) { return r.sgemm_flops_per_s; }},
    {"mfu", K::real, "%.4f", kBoth, [](const BenchRow& r) { return r.mfu; }},
    {"fwd_bwd_ms", K::real, "%.4f", kBoth, [](const BenchRow& r) { return 1e3 * r.fwd_bwd_s; }},
    {"reduce_opt_ms", K::real, "%.4f", kBoth, [](const BenchRow& r) { return 1e3 * r.reduce_opt_s; }},
    {"rest_ms", K::real, "%.4f", kBoth, [](const BenchRow& r) { return 1e3 * r.rest_s; }},
    {"fwd_bwd_pct", K::real, "%.2f", kCsv, [](const BenchRow& r) { return phase_pct(r, r.fwd_bwd_s); }},
    {"reduce_opt_pct", K::real, "%.2f", kCsv, [](const BenchRow& r) { return phase_pct(r, r.reduce_opt_s); }},
    {"rest_pct", K::real, "%.2f", kCsv, [](const BenchRow& r) { return phase_pct(r, r.rest_s); }},
    {"loss_first", K::real, "%.5f", kBoth, [](const BenchRow& r) { return r.loss_first; }},
    {"loss_last", K::real, "%.5f", kBoth, [](const BenchRow& r) { return r.loss_last; }},
    {"engine_mib", K::real, "%.2f", kCsv, [](const BenchRow& r) { return r.engine_bytes / kMiB; }},
    {"engine_bytes", K::integer, nullptr, kJson, [](const BenchRow& r) { return double(r.engine_bytes); }},
    {"peak_rss_mib", K::real, "%.2f", kCsv, [](const BenchRow& r) { return r.peak_rss_bytes / kMiB; }},
    {"peak_rss_bytes", K::integer, nullptr, kJson, [](const BenchRow& r) { return double(r.peak_rss_bytes); }},
    // -1: /proc/stat was unreadable.
    {"other_cpu_pct", K::real, "%.1f", kCsv,
     [](const BenchRow& r) { return r.other_cpu_frac < 0 ? -1.0 : 100 * r.other_cpu_frac; }},
    {"other_cpu_frac", K::real, nullptr, kJson, [](const BenchRow& r) { return r.other_cpu_frac; }},
    // The sgemm rate through Backend::linear_forward: with a device backend's host transfers (= sgemm on a CPU).
    {"sgemm_io_gflops", K::real, "%.3f", kCsv, [](const BenchRow& r) { return r.sgemm_io_flops_per_s / 1e9; }},
    {"sgemm_io_flops_per_s", K::real, nullptr, kJson, [](const BenchRow& r) { return r.sgemm_io_flops_per_s; }},
    {"mfu_io", K::real, "%.4f", kBoth, [](const BenchRow& r) { return r.mfu_io; }},
    // Where a device backend's step went, per step (DeviceSplit); -1: not a device backend.
#define CHARGPT_DEV_COLUMN(name, field) \
  {name, K::real, "%.4f", kBoth, [](const BenchRow& r) { return r.device.valid ? r.device.field : -1.0; }}
    CHARGPT_DEV_COLUMN("dev_call_ms", call_ms),
    CHARGPT_DEV_COLUMN("dev_staging_ms", staging_ms),
    CHARGPT_DEV_COLUMN("dev_cpu_ops_ms", cpu_ops_ms),
    CHARGPT_DEV_COLUMN("dev_weight_upload_ms", weight_upload_ms),
    CHARGPT_DEV_COLUMN("dev_upload_ms", upload_ms),
    CHARGPT_DEV_COLUMN("dev_product_ms", product_ms),
    CHARGPT_DEV_COLUMN("dev_download_ms", download_ms),
    CHARGPT_DEV_COLUMN("dev_mb_up", mb_up),
    CHARGPT_DEV_COLUMN("dev_mb_down", mb_down),
    CHARGPT_DEV_COLUMN("dev_weight_mb_up", weight_mb_up),
    CHARGPT_DEV_COLUMN("dev_cache_hits", cache_hits),
    CHARGPT_DEV_COLUMN("dev_cache_misses", cache_misses),
#undef CHARGPT_DEV_COLUMN
};

// A cell of the terminal table: up to six columns' values through one printf format.
struct TableCell {
  enum Mark { plain, star_if_oversubscribed, unknown_if_negative };
  const char* head1;  // "speedup" becomes "x vs N" when the smallest count N is not 1
  const char* head2;
  int width;
  bool left;  // left-aligned, set two spaces apart (the wide phase column)
  const char* format;
  std::array<const char*, 6> columns;
  double scale;  // applied to every value (100 for fractions shown as percent)
  Mark mark;
};

const TableCell kCells[] = {
    {"threads", "", 8, false, "%.0f", {"threads"}, 1, TableCell::star_if_oversubscribed},
    {"ms/step (MAD)", "median", 17, false, "%.2f (%.2f)", {"ms_median", "ms_mad"}, 1, TableCell::plain},
    {"tok/s", "", 9, false, "%.0f", {"tok_per_s"}, 1, TableCell::plain},
    {"speedup", "", 8, false, "%.2fx", {"speedup"}, 1, TableCell::plain},
    {"eff", "", 6, false, "%.0f%%", {"efficiency"}, 100, TableCell::plain},
    {"GFLOP/s", "model", 7, false, "%.1f", {"model_gflops"}, 1, TableCell::plain},
    {"sgemm", "GFLOP/s", 7, false, "%.1f", {"sgemm_gflops"}, 1, TableCell::plain},
    {"MFU", "", 6, false, "%.1f%%", {"mfu"}, 100, TableCell::plain},
    {"fwd+bwd | reduce+opt | rest ms", "(median, % of their sum)", 30, true,
     "%.2f %.0f%% | %.2f %.0f%% | %.2f %.0f%%",
     {"fwd_bwd_ms", "fwd_bwd_pct", "reduce_opt_ms", "reduce_opt_pct", "rest_ms", "rest_pct"}, 1, TableCell::plain},
    {"loss", "first -> end", 15, false, "%.3f -> %.3f", {"loss_first", "loss_last"}, 1, TableCell::plain},
    {"engine", "MiB", 8, false, "%.1f", {"engine_mib"}, 1, TableCell::plain},
    {"peakRSS", "MiB", 8, false, "%.1f", {"peak_rss_mib"}, 1, TableCell::plain},
    {"others", "CPU", 7, false, "%.0f%%", {"other_cpu_pct"}, 1, TableCell::unknown_if_negative},
};

std::string fmt(const char* f, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, a);
  return buf;
}

std::string cell_text(const TableCell& c, const BenchRow& row) {
  std::array<double, 6> v{};
  for (size_t i = 0; i < c.columns.size() && c.columns[i]; ++i) v[i] = c.scale * bench_column(c.columns[i]).get(row);
  if (c.mark == TableCell::unknown_if_negative && v[0] < 0) return "?";
  char buf[128];
  // printf ignores the arguments its format does not use.
  std::snprintf(buf, sizeof buf, c.format, v[0], v[1], v[2], v[3], v[4], v[5]);
  std::string s = buf;
  if (c.mark == TableCell::star_if_oversubscribed && row.oversubscribed) s += "*";
  return s;
}

// One table line: each cell padded to its width, a space between cells, two before a left-aligned one.
template <class Text>
std::string table_line(Text&& text) {
  std::string line;
  bool first = true;
  for (const TableCell& c : kCells) {
    if (!first) line += c.left ? "  " : " ";
    first = false;
    const std::string s = text(c);
    const std::string pad(s.size() < size_t(c.width) ? c.width - s.size() : 0, ' ');
    line += c.left ? s + pad : pad + s;
  }
  return line + "\n";
}

}  // namespace

std::span<const BenchColumn> bench_columns() { return kColumns; }

const BenchColumn& bench_column(const std::string& name) {
  for (const BenchColumn& c : kColumns)
    if (name == c.name) return c;
  throw std::logic_error("bench: no column named '" + name + "'");
}

std::string bench_csv_header() {
  std::string h;
  for (const BenchColumn& c : kColumns)
    if (c.outputs & kCsv) h += (h.empty() ? "" : ",") + std::string(c.name);
  return h;
}

void write_bench_csv(const BenchResult& r, std::ostream& out) {
  out << bench_csv_header() << "\n";
  for (const auto& row : r.rows) {
    std::string line;
    for (const BenchColumn& c : kColumns) {
      if (!(c.outputs & kCsv)) continue;
      const double v = c.get(row);
      if (!line.empty()) line += ",";
      line += c.kind == K::real ? fmt(c.format, v) : std::to_string((long long)v);
    }
    out << line << "\n";
  }
}

// The engine's estimated memory for the reference shapes at the bench's thread counts.
static void print_memory_rows(const BenchResult& r, std::ostream& out) {
  std::vector<int> threads;
  for (const auto& row : r.rows) threads.push_back(row.threads);
  out << "engine memory, estimated (estimate_train_bytes: weights, Adam moments, the step's gradient, and per shard "
         "in flight a gradient buffer and a pass's activations; default shard plans), MiB:\n";
  for (const MemoryRow& m : memory_rows(threads, r.opt.model.vocab_size)) {
    char line[160];
    std::snprintf(line, sizeof line, "  %-8s (L%d H%d C%d T%d, %.1f M parameters, batch %d):", m.name.c_str(),
                  m.model.n_layer, m.model.n_head, m.model.n_embd, m.model.block_size, m.n_params / 1e6, m.batch_size);
    out << line;
    for (size_t i = 0; i < threads.size(); ++i)
      out << (i ? "," : "") << " " << threads[i] << " thr " << fmt("%.0f", m.bytes[i] / 1048576);
    out << "\n";
  }
}

void print_bench_table(const BenchResult& r, std::ostream& out) {
  const Config& c = r.opt.model;
  char line[512];
  std::snprintf(line, sizeof line,
                "chargpt bench: L=%d H=%d C=%d T=%d V=%d (%zu parameters), batch %d = %d shards of %d in passes of "
                "%d, %.1f MFLOP/step\n",
                c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, r.n_params, r.opt.batch_size, r.n_shards,
                r.shard_size, r.pass_size, r.flops_per_step / 1e6);
  out << line;
  std::snprintf(line, sizeof line,
                "%d hardware threads; %d rounds x %d timed steps per setting (+%d warmup), interleaved; "
                "data %s; OpenBLAS kernels: %s; products: %s\n",
                r.hardware_threads, r.opt.rounds, r.opt.steps, r.opt.warmup, r.data_path.c_str(), r.blas_core.c_str(),
                backend_choice_text(r.opt.backend).c_str());
  out << line;
  if (r.load_before >= 0) {
    std::snprintf(line, sizeof line,
                  "load average (1 min): %.2f before the run, %.2f at its end (counting our own threads; see the "
                  "'others' column for what other processes took while we timed)\n\n",
                  r.load_before, r.load_after);
    out << line;
  }
  const int base = r.rows.empty() ? 1 : r.rows.front().threads;
  const std::string speedup_head = base == 1 ? "speedup" : "x vs " + std::to_string(base);
  out << table_line([&](const TableCell& c) { return c.head1 == std::string("speedup") ? speedup_head : c.head1; });
  out << table_line([](const TableCell& c) { return std::string(c.head2); });
  bool any_over = false;
  double max_others = -1;
  for (const auto& row : r.rows) {
    any_over |= row.oversubscribed;
    max_others = std::max(max_others, row.other_cpu_frac);
    out << table_line([&](const TableCell& c) { return cell_text(c, row); });
  }
  out << "\n";
  out << "ms/step: median over all timed steps, (MAD) = 1.4826 x median absolute deviation (spread of one step).\n";
  out << "MFU: model FLOPs per step (" << fmt("%.3g", r.flops_per_step)
      << ") / median step time / sgemm rate at the same thread count (threads independent single-threaded "
      << r.opt.sgemm_n << "^3 products at once on the engines' backend, " << backend_name(r.opt.backend.kind) << " "
      << precision_name(r.opt.backend.precision) << ", best of " << r.opt.sgemm_reps
      << " reps, sampled after every round but the first and at the end; the best sample counts).\n";
  for (const auto& row : r.rows) {
    if (!row.device.valid) continue;
    const DeviceSplit& d = row.device;
    out << "device, " << row.threads << " thr: sgemm " << fmt("%.1f", row.sgemm_flops_per_s / 1e9)
        << " GFLOP/s on device-resident operands (the MFU above), " << fmt("%.1f", row.sgemm_io_flops_per_s / 1e9)
        << " GFLOP/s with the host transfers (MFU " << fmt("%.1f%%", 100 * row.mfu_io) << "); per step: in calls "
        << fmt("%.2f", d.call_ms) << " ms (pinned staging " << fmt("%.2f", d.staging_ms) << "), CPU ops "
        << fmt("%.2f", d.cpu_ops_ms) << " ms, weight upload " << fmt("%.2f", d.weight_upload_ms) << " ms";
    if (d.timers)
      out << "; streams: uploads " << fmt("%.2f", d.upload_ms) << " ms, products " << fmt("%.2f", d.product_ms)
          << " ms, downloads " << fmt("%.2f", d.download_ms) << " ms";
    out << "; " << fmt("%.0f", d.mb_up) << " MB up, " << fmt("%.0f", d.mb_down) << " MB down, weights "
        << fmt("%.0f", d.weight_mb_up) << " MB; inputs kept on the device " << fmt("%.0f", d.cache_hits)
        << ", re-sent " << fmt("%.0f", d.cache_misses) << "\n";
  }
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
  print_memory_rows(r, out);
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
  out << "\n  same, phases fitted apart and fwd+bwd in rounds of min(n, " << m.n_shards << ") shards, each pass in "
      << m.blocks << " row blocks (at most " << m.n_shards * m.blocks << "-way):";
  for (size_t i = 0; i < a.predict_at.size(); ++i)
    out << (i ? "," : "") << " " << a.predict_at[i] << " cores " << fmt("%.1fx", a.predicted_phase_model[i]);
  out << "\n  " << a.note
      << "; neither model knows about memory bandwidth, shared caches, SMT or clock drops with more active cores, "
         "so read these as upper bounds.\n";
}

nlohmann::json bench_json(const BenchResult& r) {
  using json = nlohmann::json;
  const Config& c = r.opt.model;
  json j;
  j["config"] = {{"n_layer", c.n_layer},       {"n_head", c.n_head},         {"n_embd", c.n_embd},
                 {"block_size", c.block_size}, {"vocab_size", c.vocab_size}, {"batch_size", r.opt.batch_size},
                 {"shard_size", r.shard_size}, {"n_shards", r.n_shards},     {"n_params", r.n_params},
                 {"pass_size", r.pass_size},
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
                 {"backend_auto", r.opt.backend.auto_reason ? nlohmann::json(r.opt.backend.auto_reason) : nlohmann::json()},
                 {"peak_rss_note", "process high-water mark after the setting's first round; includes the engines "
                                   "of earlier settings"}};
  json sg = json::object();
  for (const auto& row : r.rows) sg[std::to_string(row.threads)] = row.sgemm_flops_per_s;
  j["sgemm_flops_per_s"] = sg;
  json rows = json::array();
  for (const auto& row : r.rows) {
    json o = json::object();
    for (const BenchColumn& c : kColumns) {
      if (!(c.outputs & kJson)) continue;
      const double v = c.get(row);
      if (c.kind == K::real) o[c.name] = v;
      else if (c.kind == K::boolean) o[c.name] = v != 0;
      else o[c.name] = (long long)v;
    }
    // Per-round series, not one value a row: JSON only.
    json rm = json::array();
    for (double s : row.round_median_s) rm.push_back(1e3 * s);
    o["round_medians_ms"] = rm;
    o["round_other_cpu_frac"] = row.round_other_cpu_frac;
    rows.push_back(o);
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
                    {"n_shards", a.phases.n_shards},               {"blocks", a.phases.blocks}};
    json pred = json::object(), pred2 = json::object();
    for (size_t i = 0; i < a.predict_at.size(); ++i) {
      pred[std::to_string(a.predict_at[i])] = a.predicted[i];
      pred2[std::to_string(a.predict_at[i])] = a.predicted_phase_model[i];
    }
    am["predicted_speedup"] = pred;
    am["predicted_speedup_phase_model"] = pred2;
  }
  j["amdahl"] = am;
  json mem = json::array();
  std::vector<int> threads;
  for (const auto& row : r.rows) threads.push_back(row.threads);
  for (const MemoryRow& m : memory_rows(threads, r.opt.model.vocab_size)) {
    json b = json::object();
    for (size_t i = 0; i < threads.size(); ++i) b[std::to_string(threads[i])] = m.bytes[i];
    mem.push_back({{"name", m.name},
                   {"n_layer", m.model.n_layer},
                   {"n_head", m.model.n_head},
                   {"n_embd", m.model.n_embd},
                   {"block_size", m.model.block_size},
                   {"batch_size", m.batch_size},
                   {"n_params", m.n_params},
                   {"estimated_engine_bytes", b}});
  }
  j["memory_estimate"] = mem;
  return j;
}

}  // namespace chargpt
