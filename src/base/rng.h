#pragma once
// A small, portable, seedable generator. We do not use <random>'s distributions
// because their output is implementation-defined; ours is identical everywhere,
// and its whole state is four words, which checkpoints store for exact resume.
#include <array>
#include <cstdint>

namespace chargpt {

struct Rng {  // xoshiro256** seeded through splitmix64
  std::array<uint64_t, 4> s{};

  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next_u64();
  // Uniform integer in [0, n), unbiased (Lemire's multiply-shift with rejection).
  uint64_t below(uint64_t n);
  // Uniform double in [0, 1) with 53 random bits.
  double uniform();
  // Standard normal (Box-Muller, no cached second value so the state is just `s`).
  double normal();
};

}  // namespace chargpt
