#pragma once
// The command line: what the subcommands share. Each cmd_* returns the process
// exit code or throws (std::runtime_error for runtime failures, UsageError for
// bad usage); main.cpp maps exceptions to exit codes.
//
// Options come from tables (see chargpt/options.h): a command's Args struct
// holds its fields with their defaults and visits them; parse_args() runs the
// visitors below over it to register them with cxxopts (and so --help), read
// the given ones back, and check them.
#include <charconv>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <cxxopts.hpp>

#include "backend/backend.h"
#include "model/model.h"
#include "base/options.h"

namespace chargpt {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --preset: a model shape and batch size, applied to the fields the Args
// struct points at before the flags that override them are read.
struct PresetFlag {
  std::string name;
  Config* model;
  int* batch_size;
};
std::string preset_help();  // lists the presets with their shapes

// Parsed flag text -> field, with errors that name the flag.
void parse_value(const std::string& flag, const std::string& text, int& out);
void parse_value(const std::string& flag, const std::string& text, uint64_t& out);
void parse_value(const std::string& flag, const std::string& text, float& out);
void parse_value(const std::string& flag, const std::string& text, std::string& out);
void parse_value(const std::string& flag, const std::string& text, std::optional<std::string>& out);
void parse_value(const std::string& flag, const std::string& text, PresetFlag& out);

std::string default_text(int v);
std::string default_text(uint64_t v);
std::string default_text(float v);
std::string default_text(const std::string& v);
std::string default_text(const PresetFlag& v);

// Registers each visited field with cxxopts: bools as switches, everything else
// as text with the field's value as the default shown by --help (none for an
// empty string or an optional, or with show_default = false).
struct RegisterOptions {
  cxxopts::Options& o;
  std::vector<std::string>& names;  // every long and short name, for looks_like_flag
  std::string group_;
  void group(const char* g) { group_ = g; }
  template <class T>
  void operator()(const T& field, const char* name, const std::string& help, const Limits& = {},
                  bool show_default = true) {
    const std::string n = name;
    const size_t comma = n.find(',');
    if (comma != std::string::npos) names.push_back(n.substr(0, comma));
    names.push_back(long_flag_name(n));
    auto add = o.add_options(group_);
    if constexpr (std::is_same_v<T, bool>) {
      add(n, help);
    } else if constexpr (std::is_same_v<T, std::optional<std::string>>) {
      add(n, help, cxxopts::value<std::string>());
    } else {
      const std::string d = default_text(field);
      if (show_default && !d.empty()) add(n, help, cxxopts::value<std::string>()->default_value(d));
      else add(n, help, cxxopts::value<std::string>());
    }
  }
};

// True when a flag's value is one of the command's own flags ("--json",
// "-h", "--out=x"): the flag before it was given no value.
bool looks_like_flag(const std::string& value, const std::vector<std::string>& names);

// Reads back the flags that were given (the others keep their defaults) and
// checks each against its limits; every error is a UsageError naming the flag.
struct ReadOptions {
  const cxxopts::ParseResult& r;
  const std::vector<std::string>& names;
  void group(const char*) {}
  template <class T>
  void operator()(T& field, const char* name, const std::string& = {}, const Limits& l = {}, bool = true) {
    const std::string flag = long_flag_name(name);
    if (!r.count(flag)) return;
    if constexpr (std::is_same_v<T, bool>) {
      field = true;
    } else {
      const std::string text = r[flag].as<std::string>();
      if (looks_like_flag(text, names))
        throw UsageError("--" + flag + " is missing its value (it would take '" + text +
                         "', one of this command's flags)");
      parse_value(flag, text, field);
      if constexpr (std::is_arithmetic_v<T>) {
        try {
          check_option(flag, (double)field, l);
        } catch (const std::invalid_argument& e) {
          throw UsageError(e.what());
        }
      }
    }
  }
};

// Wraps a visitor for table entries whose default comes from --preset:
// --help says so instead of showing baby's value.
template <class V>
struct FromPreset {
  V& v;
  void group(const char* g) { v.group(g); }
  template <class T>
  void operator()(T& field, const char* name, const std::string& help, const Limits& l = {}, bool = true) {
    v(field, name, help + " (default: from the preset)", l, false);
  }
};

void print_help(cxxopts::Options& o);

// Parses argv into args (a struct with for_each(visitor) and check()).
// Returns false after printing --help.
template <class Args>
bool parse_args(Args& args, cxxopts::Options& o, int argc, char** argv) {
  std::vector<std::string> names;
  args.for_each(RegisterOptions{o, names, ""});
  cxxopts::ParseResult r;
  try {
    r = o.parse(argc, argv);
  } catch (const cxxopts::exceptions::exception& e) {
    throw UsageError(e.what());
  }
  if (!r.unmatched().empty()) {
    args.for_each(ReadOptions{r, names});  // a flag missing its value ("--prompt --tokens 5") explains the stray one
    throw UsageError("unexpected argument '" + r.unmatched().front() + "'");
  }
  if (r.count("help")) {
    print_help(o);
    return false;
  }
  args.for_each(ReadOptions{r, names});
  args.check();
  return true;
}
// --backend, --precision and --tf32 of train, eval, sample and bench.
struct BackendArgs {
  std::string backend = "auto";
  std::string precision = "fp32";
  bool tf32 = false;

  template <class V>
  void for_each(V&& v) {
    v.group("Backend");
    v(backend, "backend",
      "where the matrix products run: auto, openblas, onednn or cuda (auto: the fastest CPU path this build has "
      "for this CPU and --precision, by a fixed rule that `chargpt info` prints)");
    v(precision, "precision",
      "fp32, or bf16 (onednn on a CPU with AVX512-BF16 or AMX-BF16, or cuda: fp32 master weights, bf16 product "
      "inputs, fp32 sums and outputs)");
    v(tf32, "tf32", "cuda only: allow TF32 tensor cores for fp32 products (off by default, so results stay "
                    "comparable with the CPU's)");
  }
  // The choice, checked (UsageError naming the flag), with auto resolved to a backend (choose_backend;
  // std::runtime_error when nothing here runs that precision).
  BackendOptions resolve() const;
};

// A backend of that choice, bound to a loaded model's parameters (eval, sample).
std::unique_ptr<Backend> make_bound_backend(const BackendOptions& opt, const Config& cfg, const float* params);

// Checks that the threads can be started (a pids or process limit), so that
// failing to start one is an error message, not oneTBB's abort in a worker.
void check_threads_can_start(int threads);

// Set by main's SIGINT/SIGTERM/SIGHUP handler: the signal that asked to stop (0 = none).
int stop_signal();
// Installs the handlers: the first signal asks train to save at the end of the
// step and stop; a second one exits at once with 128 + signal, and so does the
// first when no step has ended within the grace period after it (a step stuck
// in a library must not make the process unkillable short of kill -9).
void install_stop_handlers();
// Called at the end of every step: the grace period after a signal is a
// minute plus four times the longest step so far (a save included).
void note_step_ended();

int cmd_train(int argc, char** argv);   // src/cmd_train.cpp
int cmd_eval(int argc, char** argv);    // src/cmd_eval.cpp
int cmd_sample(int argc, char** argv);  // src/cmd_sample.cpp
int cmd_bench(int argc, char** argv);   // src/cmd_bench.cpp
int cmd_info(int argc, char** argv);    // src/cmd_info.cpp

}  // namespace chargpt
