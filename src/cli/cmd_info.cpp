// chargpt info (also --version): what this build is and what this machine offers.
#include <cpuid.h>

#include <cstdio>
#include <string>

#include <oneapi/tbb/version.h>

#include "backend/backend.h"
#include "cli/cli.h"
#include "dist/dist.h"

#ifndef CHARGPT_VERSION
#define CHARGPT_VERSION "dev"
#endif

namespace chargpt {

namespace {

// The instruction sets that matter to chargpt's kernels, as this CPU reports them.
std::string cpu_isa() {
  std::string s;
  auto add = [&](bool has, const char* name) {
    if (has) s += (s.empty() ? "" : " ") + std::string(name);
  };
  add(__builtin_cpu_supports("avx2"), "avx2");
  add(__builtin_cpu_supports("fma"), "fma");
  add(__builtin_cpu_supports("avx512f"), "avx512f");
  add(__builtin_cpu_supports("avx512bw"), "avx512bw");
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) add(a & (1u << 5), "avx512_bf16");  // CPUID.(7,1):EAX bit 5
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    add(d & (1u << 24), "amx_tile");  // CPUID.(7,0):EDX bits 24, 22
    add(d & (1u << 22), "amx_bf16");
  }
  return s.empty() ? "(none of avx2, avx512, amx)" : s;
}

}  // namespace

int cmd_info(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::printf("usage: chargpt info\n\nPrints the build (version, compiler, oneTBB, BLAS, the backends and MPI "
                  "compiled in), the CPU's instruction sets and the GPUs visible now.\n");
      return 0;
    }
    throw UsageError("unexpected argument '" + a + "'");
  }
  std::printf("chargpt %s\n", CHARGPT_VERSION);
#if defined(__clang__)
  std::printf("compiler: clang %s, C++%ld\n", __clang_version__, (long)__cplusplus / 100 % 100);
#else
  std::printf("compiler: GCC %s, C++%ld\n", __VERSION__, (long)__cplusplus / 100 % 100);
#endif
  std::printf("onetbb: %s (runtime %s)\n", TBB_VERSION_STRING, TBB_runtime_version());
  std::printf("cpu: %s\n", cpu_isa().c_str());
  std::printf("%s\n", backend_info().c_str());
  std::printf("%s\n", dist::mpi_info().c_str());
  return 0;
}

}  // namespace chargpt
