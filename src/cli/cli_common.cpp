// What the subcommands share: reading option tables, presets, the thread check.
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>

#include <cxxopts.hpp>
#include <tbb/info.h>

#include "engine/memory.h"
#include "train/train.h"
#include "cli/cli.h"

namespace chargpt {

std::string preset_help() {
  std::string h = "model and batch preset:";
  for (const Preset& p : kPresets) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " %s (%d layers, %d heads, %d wide, block %d, batch %d: %s)%s", p.name,
                  p.model.n_layer, p.model.n_head, p.model.n_embd, p.model.block_size, p.batch_size, p.about,
                  &p == &kPresets[std::size(kPresets) - 1] ? "" : ";");
    h += buf;
  }
  return h;
}

template <class T>
static void parse_number(const std::string& flag, const std::string& text, T& out, const char* what) {
  T v{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range)
    throw UsageError("--" + flag + " '" + text + "' is out of range");
  if (ec != std::errc() || ptr != end || text.empty())
    throw UsageError("--" + flag + " '" + text + "' is not " + what);
  out = v;
}

void parse_value(const std::string& flag, const std::string& text, int& out) {
  parse_number(flag, text, out, "an integer");
}
void parse_value(const std::string& flag, const std::string& text, uint64_t& out) {
  parse_number(flag, text, out, "a non-negative integer");
}
void parse_value(const std::string& flag, const std::string& text, float& out) {
  parse_number(flag, text, out, "a number");
}
void parse_value(const std::string&, const std::string& text, std::string& out) { out = text; }
void parse_value(const std::string&, const std::string& text, std::optional<std::string>& out) { out = text; }

void parse_value(const std::string& flag, const std::string& text, PresetFlag& out) {
  std::string names;
  for (const Preset& p : kPresets) {
    if (text == p.name) {
      out.name = text;
      *out.model = p.model;
      *out.batch_size = p.batch_size;
      return;
    }
    names += (names.empty() ? "" : ", ") + std::string(p.name);
  }
  throw UsageError("--" + flag + " '" + text + "' is not one of: " + names);
}

std::string default_text(int v) { return std::to_string(v); }
std::string default_text(uint64_t v) { return std::to_string(v); }
std::string default_text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", (double)v);  // reads back as the same float
  return buf;
}
std::string default_text(const std::string& v) { return v; }
std::string default_text(const PresetFlag& v) { return v.name; }

bool looks_like_flag(const std::string& value, const std::vector<std::string>& names) {
  if (value.size() < 2 || value[0] != '-') return false;
  std::string n = value.substr(value[1] == '-' ? 2 : 1);
  n = n.substr(0, n.find('='));
  for (const auto& name : names)
    if (n == name) return true;
  return false;
}

void print_help(cxxopts::Options& o) { std::cout << o.help() << std::flush; }

void check_threads_can_start(int threads) {
  const int n = threads > 0 ? threads : tbb::info::default_concurrency();
  check_address_space("running " + std::to_string(n) + " threads", 0, n);
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::vector<std::thread> started;
  std::string failure;
  for (int i = 0; i < n - 1; ++i) {  // oneTBB's workers, beside this thread
    try {
      started.emplace_back([&] {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return release; });
      });
    } catch (const std::system_error& e) {
      failure = e.what();
      break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
  }
  cv.notify_all();
  for (auto& t : started) t.join();
  if (!failure.empty())
    throw std::runtime_error("cannot start " + std::to_string(n) + " threads (" + std::to_string(started.size() + 1) +
                             " started, then: " + failure +
                             "); a limit on processes/threads (ulimit -u, a cgroup's pids.max) or on memory is in "
                             "the way: lower --threads or raise the limit");
}

BackendOptions BackendArgs::resolve() const {
  BackendOptions b;
  try {
    b.precision = parse_precision(precision);
    if (backend != "auto") b.kind = parse_backend(backend);
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--") + e.what());
  }
  if (backend == "auto") {
    const AutoChoice c = choose_backend(b.precision);
    if (!c.error.empty()) throw std::runtime_error(c.error);
    b = c.opt;
  }
  b.tf32 = tf32;
  if (const std::string bad = backend_options_error(b); !bad.empty()) throw UsageError(bad);
  return b;
}

std::unique_ptr<Backend> make_bound_backend(const BackendOptions& opt, const Config& cfg, const float* params) {
  std::unique_ptr<Backend> be = make_backend(opt);
  const WeightTable table = weight_table(cfg, params);
  be->bind_weights(table);
  be->weights_changed(0, table.floats);
  return be;
}

}  // namespace chargpt
