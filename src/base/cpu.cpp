#include "base/cpu.h"

#include <cpuid.h>

#include <cstring>

namespace chargpt {

namespace {

CpuFeatures probe() {
  CpuFeatures f;
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = a >> 5 & 1u;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_tile = d >> 24 & 1u;
    f.amx_bf16 = d >> 22 & 1u;
  }
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = probe();
  return f;
}

std::string cpu_features_text(const CpuFeatures& f) {
  std::string s;
  auto add = [&](bool has, const char* name) {
    if (has) s += (s.empty() ? "" : " ") + std::string(name);
  };
  add(f.avx2, "avx2");
  add(f.fma, "fma");
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512_bf16, "avx512_bf16");
  add(f.amx_tile, "amx_tile");
  add(f.amx_bf16, "amx_bf16");
  return s.empty() ? "(none of avx2, avx512, amx)" : s;
}

const std::string& cpu_model_name() {
  static const std::string name = [] {
    unsigned r[12] = {};
    if (__get_cpuid_max(0x80000000u, nullptr) < 0x80000004u) return std::string("unknown CPU");
    for (unsigned i = 0; i < 3; ++i) __get_cpuid(0x80000002u + i, &r[4 * i], &r[4 * i + 1], &r[4 * i + 2], &r[4 * i + 3]);
    char text[49] = {};
    std::memcpy(text, r, 48);
    std::string s = text;
    // Vendors pad the string with spaces (and some hypervisors leave runs of them inside).
    std::string out;
    for (char c : s)
      if (c != ' ' || (!out.empty() && out.back() != ' ')) out += c;
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out.empty() ? std::string("unknown CPU") : out;
  }();
  return name;
}

std::string cpu_description() { return cpu_model_name() + " (" + cpu_features_text() + ")"; }

}  // namespace chargpt
