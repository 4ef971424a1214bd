#include "engine/memory.h"
#include "engine/engine.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

#include <tbb/info.h>


namespace chargpt {

double estimate_activation_bytes(const Config& cfg, double n) { return 4 * Activations::floats_needed(cfg, n); }

double estimate_train_bytes(const Config& cfg, int batch_size, int shard_size, int threads, int eval_iters,
                            int pass_size, int in_flight) {
  const double T = cfg.block_size;
  uint64_t n_params = 0;
  const double P = checked_num_params(cfg, n_params) ? (double)n_params : HUGE_VAL;
  const int shard = resolve_shard_size(shard_size, batch_size, cfg.block_size);
  const double n_shards = std::ceil((double)batch_size / shard);
  const int pass = resolve_pass_size(pass_size, shard, cfg.block_size);
  const double wanted = in_flight > 0 ? in_flight : threads > 0 ? threads : tbb::info::default_concurrency();
  const double slots = std::max(1.0, std::min(n_shards, wanted));
  const double batch_bytes = 8.0 * batch_size * T * (1.0 + eval_iters);  // inputs and targets, int32
  // Weights, two moments, the gradient and a buffer per slot, but shard 0's slot is the gradient
  // itself when every shard fits in one round (the engine's slot0_is_grad; one process).
  const double buffers = slots >= n_shards ? 3 + slots : 4 + slots;
  return 4 * P * buffers + slots * estimate_activation_bytes(cfg, pass) + batch_bytes;
}

// The lowest of physical memory, the cgroup's limit and the address-space limit
// (ulimit -v), with what it is.
static double memory_limit(const char** what) {
  *what = "this machine has";
  double bytes = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
  for (const char* limit : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream f(limit);
    double v = 0;
    if (f >> v && v > 0 && v < bytes) {  // "max" (no limit) does not parse
      bytes = v;
      *what = "this process's cgroup may use";
    }
  }
  rlimit rl{};
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && (double)rl.rlim_cur < bytes) {
    bytes = (double)rl.rlim_cur;
    *what = "this process may use (ulimit -v)";
  }
  return bytes;
}

double machine_memory_bytes() {
  const char* what;
  return memory_limit(&what);
}

double address_space_left() {
  rlimit rl{};
  if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return INFINITY;
  std::ifstream statm("/proc/self/statm");
  double pages = 0;
  if (!(statm >> pages)) return INFINITY;
  return (double)rl.rlim_cur - pages * (double)sysconf(_SC_PAGESIZE);
}

void check_address_space(const std::string& what, double bytes, int threads, const std::string& hint) {
  const double left = address_space_left();
  if (!std::isfinite(left)) return;
  const int n = threads > 0 ? threads : tbb::info::default_concurrency();
  const double per_thread = kBlasBufferBytes + kThreadStackBytes;
  const double need = bytes + n * per_thread + kAddressSpaceSlackBytes;
  if (need <= left) return;
  rlimit rl{};
  getrlimit(RLIMIT_AS, &rl);
  char data[64] = "";
  if (bytes > 0) std::snprintf(data, sizeof data, "%.0f MiB of data, ", bytes / 1048576);
  char buf[400];
  std::snprintf(buf, sizeof buf,
                " would need %.0f MiB more address space (%s%.0f MiB for OpenBLAS's buffer and the stack of each of %d "
                "threads, %.0f MiB of slack); %.0f MiB of this process's %.0f MiB (ulimit -v) are left",
                need / 1048576, data, n * per_thread / 1048576, n, kAddressSpaceSlackBytes / 1048576, left / 1048576,
                (double)rl.rlim_cur / 1048576);
  throw std::runtime_error(what + buf + ": " + (hint.empty() ? "" : hint + ", or ") +
                           "lower --threads or raise ulimit -v");
}

void check_memory_need(const std::string& what, double bytes, const std::string& hint) {
  const char* limit_what;
  const double have = memory_limit(&limit_what);
  if (have > 0 && bytes > have) {
    char buf[160];
    std::snprintf(buf, sizeof buf, " would need %.1f GiB of memory; %s %.1f GiB", bytes / 1073741824.0, limit_what,
                  have / 1073741824.0);
    throw std::runtime_error(what + buf + (hint.empty() ? "" : ": " + hint));
  }
}

}  // namespace chargpt
