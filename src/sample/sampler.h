#pragma once
// The sampler: turns one row of logits into a token id (temperature, top-k,
// top-p). Separate from the model.
#include <cstdint>
#include <vector>

#include "base/rng.h"

namespace chargpt {

struct Sampler {
  float temperature = 0.8f;  // 0 = greedy (argmax; ties go to the lowest id)
  int top_k = 0;             // keep only the k most likely tokens (0 = off)
  float top_p = 1.0f;        // keep the smallest set of most likely tokens whose mass reaches p (1 = off)
  Rng rng{1337};

  Sampler() = default;
  Sampler(float temperature_, int top_k_, float top_p_, uint64_t seed)
      : temperature(temperature_), top_k(top_k_), top_p(top_p_), rng(seed) {}

  // Draws one token from logits[0..V). Consumes exactly one rng.uniform() when
  // temperature > 0 and none when greedy.
  int sample(const float* logits, int V);

  // The distribution sample() draws from (temperature > 0): the kept token ids,
  // most likely first (equal probabilities: lower id first), and their
  // probabilities renormalised over the kept set. Top-k is applied first, then
  // top-p over what top-k kept (renormalised), as in HuggingFace's warpers.
  void distribution(const float* logits, int V, std::vector<int32_t>& ids, std::vector<double>& probs) const;

  // Throws std::invalid_argument naming the offending setting.
  void validate(int V) const;

 private:
  std::vector<int32_t> ids_;
  std::vector<double> probs_;
};

// Index of the largest value; ties go to the lowest index.
int argmax(const float* x, int n);

}  // namespace chargpt
