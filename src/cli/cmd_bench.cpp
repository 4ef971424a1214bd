// `chargpt bench`: time training steps over a sweep of thread counts (the method: bench/bench.h; the
// report, from one column table: bench/bench_report.h).
#include <algorithm>
#include <fstream>
#include <iostream>
#include <string>

#include <cxxopts.hpp>
#include <tbb/info.h>

#include "bench/bench.h"
#include "bench/bench_report.h"
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
    if (const std::string why = head_split_problem(b.model, "--n-embd", "--n-head"); !why.empty())
      throw UsageError(why);
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
    write_bench_csv(res, csv);
    csv.close();
    if (!csv) throw std::runtime_error("cannot write '" + *a.csv + "'");
  }
  if (a.json) {
    print_bench_table(res, std::cerr);
    std::cout << bench_json(res).dump() << "\n" << std::flush;
  } else {
    print_bench_table(res, std::cout);
    std::cout << std::flush;
  }
  return 0;
}

}  // namespace chargpt
