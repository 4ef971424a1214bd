#include "bench/bench_stats.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace chargpt {

double median(std::vector<double> xs) {
  if (xs.empty()) throw std::invalid_argument("median of an empty set");
  const size_t n = xs.size(), mid = n / 2;
  std::nth_element(xs.begin(), xs.begin() + mid, xs.end());
  const double hi = xs[mid];
  if (n % 2) return hi;
  const double lo = *std::max_element(xs.begin(), xs.begin() + mid);
  return 0.5 * (lo + hi);
}

double scaled_mad(const std::vector<double>& xs) {
  const double m = median(xs);
  std::vector<double> dev(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) dev[i] = std::fabs(xs[i] - m);
  return 1.4826 * median(std::move(dev));
}

double parallel_efficiency(double speedup, int threads, int base_threads) {
  return speedup * (double)base_threads / (double)threads;
}

// Solves t_n/t_b = (s + (1-s) g_n) / (s + (1-s) g_b) for s, where g is the
// share of the parallel work one thread does (1/n for perfectly divisible work).
static double solve_serial(double t_b, double g_b, double t_n, double g_n) {
  const double r = t_n / t_b;
  const double den = r * (1 - g_b) - (1 - g_n);
  if (!(t_b > 0) || !(t_n > 0) || std::fabs(den) < 1e-12) return NAN;
  return (g_n - r * g_b) / den;
}

double amdahl_serial_fraction(double t_base, int base_threads, double t_n, int n) {
  if (base_threads < 1 || n < 1 || n == base_threads)
    throw std::invalid_argument("amdahl_serial_fraction needs two different thread counts >= 1");
  return solve_serial(t_base, 1.0 / base_threads, t_n, 1.0 / n);
}

static double clamp01(double s) { return std::isnan(s) ? 1.0 : std::clamp(s, 0.0, 1.0); }

// Time relative to one thread of work with serial fraction s whose parallel part
// takes the share g of its one-thread time (1/n on n threads, or the shard granularity).
double amdahl_time(double s, double g) {
  s = clamp01(s);
  return s + (1 - s) * g;
}

double amdahl_speedup(double s, int n) { return 1.0 / amdahl_time(s, 1.0 / n); }

double shard_granularity(int n_shards, int n, int blocks) {
  if (n_shards < 1) return 1.0 / n;
  const long long S = n_shards, G = std::min<long long>(n, S), b = std::max(blocks, 1);
  long long t = 0;  // in task times: each round's tasks spread over n threads
  for (long long s0 = 0; s0 < S; s0 += G) t += (std::min(G, S - s0) * b + n - 1) / n;
  return (double)t / (double)(S * b);
}

double phase_serial_fraction(double t_base, int base_threads, double t_n, int n, int n_shards, int blocks) {
  return solve_serial(t_base, shard_granularity(n_shards, base_threads, blocks), t_n,
                      shard_granularity(n_shards, n, blocks));
}

double phase_model_speedup(const PhaseModel& m, int n) {
  const double sum = m.fwd_bwd_frac + m.reduce_opt_frac + m.rest_frac;
  auto part = [&](double frac, double s, double g) { return frac / sum * amdahl_time(s, g); };
  const double t = part(m.fwd_bwd_frac, m.fwd_bwd_serial, shard_granularity(m.n_shards, n, m.blocks)) +
                   part(m.reduce_opt_frac, m.reduce_opt_serial, 1.0 / n) + part(m.rest_frac, m.rest_serial, 1.0 / n);
  return 1.0 / t;
}

}  // namespace chargpt
