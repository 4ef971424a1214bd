#include "sample/sampler.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace chargpt {

int argmax(const float* x, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

void Sampler::validate(int V) const {
  if (!(std::isfinite(temperature) && temperature >= 0.f))
    throw std::invalid_argument("temperature must be a finite number >= 0, got " + std::to_string(temperature));
  if (top_k < 0 || top_k > V)
    throw std::invalid_argument("top-k must be in 0..vocab_size (" + std::to_string(V) + "), got " +
                                std::to_string(top_k));
  if (!(top_p > 0.f && top_p <= 1.f))
    throw std::invalid_argument("top-p must be in (0, 1], got " + std::to_string(top_p));
}

void Sampler::distribution(const float* logits, int V, std::vector<int32_t>& ids, std::vector<double>& probs) const {
  if (V < 1) throw std::invalid_argument("sampler: empty vocabulary");
  if (!(temperature > 0.f)) throw std::invalid_argument("sampler: distribution needs temperature > 0");
  float mx = logits[0];
  for (int i = 1; i < V; ++i) mx = std::max(mx, logits[i]);
  const double inv_t = 1.0 / (double)temperature;
  ids.resize(V);
  probs.resize(V);
  double total = 0;
  for (int i = 0; i < V; ++i) {
    ids[i] = i;
    probs[i] = std::exp(((double)logits[i] - (double)mx) * inv_t);  // softmax numerator, max -> 1
    total += probs[i];
  }
  const bool use_k = top_k > 0 && top_k < V;
  const bool use_p = top_p < 1.f;
  if (use_k || use_p) {
    // Most likely first; equal probabilities: lower id first. A total order, so
    // the kept set is a deterministic function of the logits.
    std::vector<double> p_by_id(probs);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return p_by_id[a] != p_by_id[b] ? p_by_id[a] > p_by_id[b] : a < b;
    });
    size_t keep = use_k ? (size_t)top_k : (size_t)V;
    total = 0;
    for (size_t i = 0; i < keep; ++i) total += p_by_id[ids[i]];
    if (use_p) {
      // The smallest prefix whose mass reaches top_p (of the top-k mass).
      const double target = (double)top_p * total;
      double cum = 0;
      size_t m = 0;
      while (m < keep) {
        cum += p_by_id[ids[m++]];
        if (cum >= target) break;
      }
      keep = m;
      total = cum;
    }
    ids.resize(keep);
    probs.resize(keep);
    for (size_t i = 0; i < keep; ++i) probs[i] = p_by_id[ids[i]];
  }
  if (!(total > 0 && std::isfinite(total)))
    throw std::runtime_error("sampler: the logits are not finite (a corrupt checkpoint?)");
  const double inv = 1.0 / total;
  for (double& p : probs) p *= inv;
}

int Sampler::sample(const float* logits, int V) {
  if (temperature == 0.f) return argmax(logits, V);
  distribution(logits, V, ids_, probs_);
  const double u = rng.uniform();
  double cum = 0;
  for (size_t i = 0; i < ids_.size(); ++i) {
    cum += probs_[i];
    if (u < cum) return ids_[i];
  }
  return ids_.back();  // u landed in the rounding gap at the top
}

}  // namespace chargpt
