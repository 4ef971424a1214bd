// chargpt info (also --version): what this build is and what this machine offers.
#include <cstdio>
#include <string>

#include <oneapi/tbb/version.h>

#include "backend/backend.h"
#include "base/cpu.h"
#include "cli/cli.h"
#include "dist/dist.h"

#ifndef CHARGPT_VERSION
#define CHARGPT_VERSION "dev"
#endif

namespace chargpt {

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
  std::printf("cpu: %s\n", cpu_description().c_str());
  std::printf("%s\n", backend_info().c_str());
  std::printf("%s\n", dist::mpi_info().c_str());
  return 0;
}

}  // namespace chargpt
