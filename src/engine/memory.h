#pragma once
// How much memory a run would need, computed from the shapes before anything is
// allocated, so that a huge flag gets a message instead of std::bad_alloc (or
// the kernel's OOM killer). All in double: the shapes' products can overflow size_t.
#include <string>

#include "model/model.h"

namespace chargpt {

// Bytes of one Activations for n sequences (Activations::floats_needed).
double estimate_activation_bytes(const Config& cfg, double n);

// Bytes a training engine allocates: parameters and both Adam moments, one
// gradient buffer per shard, activations for every thread that may run a shard
// (oneTBB's workers rotate, so up to max(threads, hardware threads), at most one
// per shard), the batch, and estimate_loss's buffers for eval_iters batches.
double estimate_train_bytes(const Config& cfg, int batch_size, int shard_size, int threads, int eval_iters = 0);

// The memory this process can have: physical memory, or the cgroup's limit or
// the address-space limit (ulimit -v) where one is lower.
double machine_memory_bytes();

// Throws std::runtime_error "<what> would need 123.4 GiB of memory; this machine
// has 23.5 GiB: <hint>" when bytes exceed machine_memory_bytes().
void check_memory_need(const std::string& what, double bytes, const std::string& hint = "");

}  // namespace chargpt
