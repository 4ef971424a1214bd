#pragma once
// Option tables, gemma.cpp style: each options struct has a function that
// visits its fields as v(field, "flag-name", "help", limits). The same table
// drives the command line's registration, reading, checking and --help, and the
// library's own checks of the struct (see train.h, bench.h), so a default, a
// help text or a range is written once.
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

namespace chargpt {

// The values a numeric option accepts: lo..hi, each end open or closed.
// NaN and infinities are never accepted.
struct Limits {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false, hi_open = false;
};
constexpr Limits at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
constexpr Limits above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false}; }
constexpr Limits between(double lo, double hi, bool lo_open = false, bool hi_open = false) {
  return {lo, hi, lo_open, hi_open};
}

// --threads of train, eval and sample.
inline constexpr Limits kThreadLimits = between(0, 4096);
inline constexpr const char* kThreadsHelp = "worker threads (0 = all hardware threads)";
inline constexpr uint64_t kDefaultSeed = 1337;

// ">= 0", "> 0", "in [0, 1)".
std::string describe(const Limits& l);
bool within(double v, const Limits& l);
// Throws std::invalid_argument "--name must be >= 0, got -1" when v is outside l.
void check_option(const std::string& name, double v, const Limits& l);

// The flag's long name: "q,quiet" -> "quiet".
std::string long_flag_name(const std::string& name);

// A table visitor that checks every numeric field against its limits
// (std::invalid_argument naming the flag).
struct OptionChecker {
  template <class T>
  void operator()(const T& field, const char* name, const std::string& /*help*/ = {}, const Limits& l = {},
                  bool /*show_default*/ = true) const {
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) check_option(long_flag_name(name), (double)field, l);
  }
  void group(const char*) const {}
};

}  // namespace chargpt
