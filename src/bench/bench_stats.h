#pragma once
// The bench's statistics: pure functions, unit-tested on fixed inputs.
#include <vector>

namespace chargpt {

// Median; the mean of the two middle values for an even count. Throws on empty input.
double median(std::vector<double> xs);

// 1.4826 * median(|x - median(x)|): for normally distributed data this
// estimates the standard deviation, but one outlier cannot move it. 0 for one value.
double scaled_mad(const std::vector<double>& xs);

// Speedup of `threads` over `base_threads` divided by the ideal speedup
// threads/base_threads (with base_threads = 1: speedup / threads).
double parallel_efficiency(double speedup, int threads, int base_threads = 1);

// Amdahl's law, S(n) = 1 / (s + (1-s)/n): the serial fraction s that explains a
// measured step time t_n at n threads given t_base at base_threads (both > 0,
// n != base). With base 1 this is s = (n/S - 1)/(n - 1), S = t_1/t_n. Not
// clamped: a negative s means superlinear speedup, s > 1 a slowdown.
double amdahl_serial_fraction(double t_base, int base_threads, double t_n, int n);

// Time relative to one thread of work with serial fraction s (clamped to [0, 1])
// whose parallel part takes the share g of its one-thread time (1/n on n threads).
double amdahl_time(double s, double g);

// Amdahl's predicted speedup over one thread at n threads; s is clamped to [0, 1].
double amdahl_speedup(double s, int n);

// A finer model for our step: the phases are fitted separately, and
// forward+backward runs in rounds of min(n, n_shards) shards in flight, each
// pass of a shard split into `blocks` equal tasks (model/'s row blocks), so n
// threads get at most n_shards * blocks-way parallelism, not n_shards-way.
// Fractions are each phase's share of the one-thread step time (they are
// normalised to sum to 1); serial fractions are clamped to [0, 1].
struct PhaseModel {
  double fwd_bwd_frac, reduce_opt_frac, rest_frac;
  double fwd_bwd_serial, reduce_opt_serial, rest_serial;
  int n_shards;
  int blocks = 1;  // parallel tasks per pass of a shard
};
// Fraction of one-thread time the parallel part of forward+backward takes at n
// threads: the rounds of min(n, k) shards, each round's shards * blocks tasks
// spread over n threads (ceil(k/n)/k when blocks = 1; 1/n when n divides the work).
double shard_granularity(int n_shards, int n, int blocks = 1);
// Serial fraction of one phase from its times at base_threads and n (as
// amdahl_serial_fraction, but with the shard granularity when n_shards > 0).
double phase_serial_fraction(double t_base, int base_threads, double t_n, int n, int n_shards = 0, int blocks = 1);
double phase_model_speedup(const PhaseModel& m, int n);

}  // namespace chargpt
