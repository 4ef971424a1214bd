#pragma once
// How much memory a run would need, computed from the shapes before anything is
// allocated, so that a huge flag gets a message instead of std::bad_alloc (or
// the kernel's OOM killer). All in double: the shapes' products can overflow size_t.
#include <string>

#include "model/model.h"

namespace chargpt {

// Bytes of one Activations for n sequences (Activations::floats_needed).
double estimate_activation_bytes(const Config& cfg, double n);

// Bytes a one-process training engine allocates: parameters, both Adam moments
// and the step's gradient, then per shard in flight (min(threads, shards), or
// in_flight when > 0) a gradient buffer and a pass's activations, the batch, and
// estimate_loss's buffers for eval_iters batches. It does not grow with the shard count.
double estimate_train_bytes(const Config& cfg, int batch_size, int shard_size, int threads, int eval_iters = 0,
                            int pass_size = 0, int in_flight = 0);

// The memory this process can have: physical memory, or the cgroup's limit or
// the address-space limit (ulimit -v) where one is lower.
double machine_memory_bytes();

// Throws std::runtime_error "<what> would need 123.4 GiB of memory; this machine
// has 23.5 GiB: <hint>" when bytes exceed machine_memory_bytes().
void check_memory_need(const std::string& what, double bytes, const std::string& hint = "");

// The address space (ulimit -v) matters apart from memory: OpenBLAS maps a
// buffer for each thread that calls it (Debian 12's x86-64 build: 128 MiB, its
// BUFFER_SIZE, measured with /proc/self/statm), and when that mapping fails it
// retries forever inside blas_memory_alloc. So the limit is checked before the
// first product, against what this process has mapped so far (/proc/self/statm).
inline constexpr double kBlasBufferBytes = 128.0 * 1048576 + 4096;
inline constexpr double kThreadStackBytes = 8.0 * 1048576 + 4096;  // glibc's default, as oneTBB's workers get
inline constexpr double kAddressSpaceSlackBytes = 64.0 * 1048576;  // libraries' own mappings, small allocations
// RLIMIT_AS minus what is mapped now; +infinity without a limit.
double address_space_left();
// Throws "<what> would need ... MiB more address space (...); this process may
// map ... (ulimit -v ...)" unless `bytes` (what the command will still
// allocate) plus a BLAS buffer and a stack per thread fit in address_space_left().
void check_address_space(const std::string& what, double bytes, int threads, const std::string& hint = "");

}  // namespace chargpt
