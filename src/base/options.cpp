#include "base/options.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace chargpt {

static std::string num(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", x);
  return buf;
}

std::string describe(const Limits& l) {
  const bool has_lo = std::isfinite(l.lo), has_hi = std::isfinite(l.hi);
  if (has_lo && has_hi)
    return "in " + std::string(l.lo_open ? "(" : "[") + num(l.lo) + ", " + num(l.hi) + (l.hi_open ? ")" : "]");
  if (has_lo) return (l.lo_open ? "> " : ">= ") + num(l.lo);
  if (has_hi) return (l.hi_open ? "< " : "<= ") + num(l.hi);
  return "a finite number";
}

bool within(double v, const Limits& l) {
  if (!std::isfinite(v)) return false;
  if (l.lo_open ? !(v > l.lo) : !(v >= l.lo)) return false;
  if (l.hi_open ? !(v < l.hi) : !(v <= l.hi)) return false;
  return true;
}

void check_option(const std::string& name, double v, const Limits& l) {
  if (!within(v, l)) throw std::invalid_argument("--" + name + " must be " + describe(l) + ", got " + num(v));
}

std::string long_flag_name(const std::string& name) {
  const size_t comma = name.find(',');
  return comma == std::string::npos ? name : name.substr(comma + 1);
}

}  // namespace chargpt
