#pragma once
// `chargpt bench`: core-count scaling of training steps.
//
// Method. One Engine per thread count, all built from the same seed and the
// same init_params, so every setting trains the same model on the same batches
// (and, by the Engine's design, to bit-identical weights). Rounds are
// interleaved (1,2,4,1,2,4,...) so that slow drift of the machine (frequency,
// other load) lands on every setting alike; warmup steps run only in the first
// round. Per setting we report the median step time and the scaled MAD
// (1.4826 x median absolute deviation, a robust estimate of one step's spread)
// over all timed steps of all rounds. The sgemm FLOP rate that MFU is measured
// against is taken the way we use BLAS: `threads` independent single-threaded
// sgemm calls in parallel oneTBB tasks, best of several repetitions, sampled
// after every round but the first and at the end (best sample wins), because
// the speed of a shared machine drifts. What other processes took of the CPU
// while each setting was timed is measured (/proc/stat minus our rusage) and
// reported beside it; a hypervisor's steal may not show there.
#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "bench/bench_stats.h"
#include "model/model.h"
#include "base/options.h"
#include "train/train.h"

namespace chargpt {

// ---------------------------------------------------------------------------
// Thread lists.

// 1, 2, 4, ... up to hw, plus hw itself if it is not a power of two.
std::vector<int> default_thread_counts(int hw);

// ---------------------------------------------------------------------------
// The bench.

struct BenchOptions {
  Config model = kDefaultPreset.model;  // vocab_size comes from the data
  int batch_size = kDefaultPreset.batch_size;
  int shard_size = 0;  // 0 = default_shard_size(batch_size)
  int pass_size = 0;   // 0 = default_pass_size
  std::vector<int> threads;  // empty = default_thread_counts(hardware threads)
  int steps = 20;   // timed steps per setting per round
  int warmup = 5;   // untimed steps per setting, first round only
  int rounds = 3;
  float lr = 1e-3f;  // constant learning rate (AdamW defaults, grad clip 1)
  uint64_t seed = kDefaultSeed;
  int loss_tail = 5;     // the end loss is the mean of this many last step losses
  int sgemm_n = 1024;    // square sgemm size for the FLOP-rate measurement
  int sgemm_reps = 5;    // best of
  BackendOptions backend;  // the engines' backend; MFU is against its own product rate
};

// The option table of the bench's own settings (see options.h); the model shape
// and batch are for_each_shape_option's and for_each_shard_option's (train.h).
template <class O, class V>
void for_each_bench_option(O& o, V&& v) {
  v(o.steps, "steps", "timed steps per thread count per round", at_least(1));
  v(o.warmup, "warmup", "untimed steps per thread count before its first round", at_least(0));
  v(o.rounds, "rounds", "interleaved rounds over the thread counts", at_least(1));
  v(o.lr, "lr", "constant learning rate", above(0));
  v(o.seed, "seed", "random seed (init and data order, the same for every thread count)");
  v(o.sgemm_n, "sgemm-size", "n of the n x n x n sgemm that measures the FLOP rate for MFU", between(1, 16384));
}

// Where a device backend's step went (device_backend.h's DeviceStats over the
// timed steps, per step). Sums over threads (call, staging) and over lanes
// (stream phases): at 1 thread, call_ms is the products' share of fwd+bwd and
// cpu_ops_ms the rest; with more lanes the streams overlap.
struct DeviceSplit {
  bool valid = false;  // a device backend
  bool timers = false;  // stream phases measured (CHARGPT_CUDA_TIMERS)
  double call_ms = 0, staging_ms = 0, weight_upload_ms = 0;
  double upload_ms = 0, product_ms = 0, download_ms = 0;
  double cpu_ops_ms = 0;  // fwd_bwd x threads - call_ms
  double mb_up = 0, mb_down = 0, weight_mb_up = 0;
  double cache_hits = 0, cache_misses = 0;
};

struct BenchRow {
  int threads = 0;
  bool oversubscribed = false;  // threads > hardware threads
  // Distinct OS threads that ran forward+backward over the whole run. oneTBB
  // workers rotate between calls, so it may exceed `threads`; less than
  // min(threads, shards) means the arena never got that many threads.
  int threads_seen = 0;
  // min(threads, oneTBB's active max_allowed_parallelism) while it ran (lowest
  // over rounds): below `threads` means oneTBB capped the arena (a check on
  // allow_parallelism, which should prevent that).
  int concurrency_cap = 0;
  std::vector<double> step_s;   // every timed step, in order
  std::vector<double> round_median_s;
  double median_s = 0, mad_s = 0;
  double fwd_bwd_s = 0, reduce_opt_s = 0, rest_s = 0;  // medians; rest = step - fwd_bwd - reduce_opt
  double tok_per_s = 0;
  double speedup = 0, efficiency = 0;
  // sgemm: the products alone (a device backend: device-resident operands);
  // sgemm_io: through Backend::linear_forward, with a device's host transfers (= sgemm on the CPU).
  double model_flops_per_s = 0, sgemm_flops_per_s = 0, mfu = 0;
  double sgemm_io_flops_per_s = 0, mfu_io = 0;
  DeviceSplit device;
  double loss_first = 0, loss_last = 0;
  // CPU time other processes used while this setting's timed steps ran, as a
  // fraction of the machine (all hardware threads); -1 where /proc/stat is unreadable.
  double other_cpu_frac = -1;
  std::vector<double> round_other_cpu_frac;  // the same per round
  size_t engine_bytes = 0;    // Engine::bytes_allocated()
  size_t peak_rss_bytes = 0;  // process high-water mark after this setting's first round
};

struct AmdahlFit {
  bool valid = false;
  int base_threads = 0, n = 0;  // fitted from these two settings
  double speedup = 0;           // measured, t_base / t_n
  double serial_fraction = 0;   // whole step
  // Rounds are paired (interleaved), so each round gives its own speedup
  // (ratio of the two settings' round medians); their range, and the range of
  // s it implies, shows how firm the fit is. Empty with a single round.
  std::vector<double> round_speedups;
  double serial_fraction_lo = 0, serial_fraction_hi = 0;
  PhaseModel phases{};
  std::vector<int> predict_at;  // 8, 16, 64 (speedups over one thread)
  std::vector<double> predicted, predicted_phase_model;
  std::string note;  // why there is no fit, or what it rests on
};

struct BenchResult {
  BenchOptions opt;  // with threads and vocab_size filled in
  std::string data_path;
  int hardware_threads = 0;
  int n_shards = 0, shard_size = 0, pass_size = 0;
  int blocks = 1;  // parallel tasks per pass: the row blocks of model/blocks.h (par::Blocks)
  size_t n_params = 0;
  double flops_per_step = 0;
  std::vector<BenchRow> rows;
  AmdahlFit amdahl;
  bool losses_identical = true;  // all settings ended at the same loss
  // 1-minute load average (/proc/loadavg; -1 where unavailable) before the
  // run and at its end: other work on the machine skews every number here.
  double load_before = -1, load_after = -1;
  std::string blas_core;  // blas_core_name(): the kernels the BLAS library picked
};

// Runs the bench on an encoded dataset. Progress lines go to `progress` (may be null).
BenchResult run_bench(const BenchOptions& opt, const std::vector<int32_t>& train_split, int vocab_size,
                      std::ostream* progress);

// Fits Amdahl from the rows (base = smallest count, n = largest count that is
// not oversubscribed) and predicts 8, 16 and 64 threads.
AmdahlFit fit_amdahl(const std::vector<BenchRow>& rows, int n_shards, int blocks = 1);

// The engine's memory (estimate_train_bytes, one process) for a named shape at each thread count.
struct MemoryRow {
  std::string name;
  Config model;
  int batch_size = 0;
  size_t n_params = 0;
  std::vector<double> bytes;  // per thread count of the bench
};
// baby, nanogpt and GPT-2 small's shape ("gpt2-sm": L12 H12 C768 T256, batch 64; 124 M parameters with
// GPT-2's 50257-token vocabulary, 85 M with a character vocabulary), with their default shard plans.
std::vector<MemoryRow> memory_rows(const std::vector<int>& threads, int vocab_size);


}  // namespace chargpt
