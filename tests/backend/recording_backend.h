#pragma once
// A Backend that forwards every call to another one and records what it was
// asked: the table it was bound to, how many times weights_changed covered each
// float, how many products ran; and checks that every weight a product names is
// a tensor of the bound table (WeightTable::offset_of). The tests' window on the
// seam, instead of test-only members of the interface.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace chargpt::test {

struct RecordingBackend final : Backend {
  std::unique_ptr<Backend> inner;
  WeightTable table;
  std::vector<int> covered;  // per float: how many times weights_changed covered it
  std::atomic<size_t> forwards{0}, backwards{0}, matvecs{0};

  explicit RecordingBackend(std::unique_ptr<Backend> be = make_backend()) : inner(std::move(be)) {}
  std::string name() const override { return "recording " + inner->name(); }
  bool wants_bf16_inputs() const override { return inner->wants_bf16_inputs(); }
  bool splits_products() const override { return inner->splits_products(); }
  void bind_weights(const WeightTable& t) override {
    table = t;
    covered.assign(t.floats, 0);
    inner->bind_weights(t);
  }
  void weights_changed(size_t begin, size_t end) override {
    for (size_t i = begin; i < end; ++i) __atomic_fetch_add(&covered[i], 1, __ATOMIC_RELAXED);
    inner->weights_changed(begin, end);
  }
  // Times weights_changed covered the whole block (the least-covered float's count).
  size_t weight_syncs() const {
    return covered.empty() ? 0 : (size_t)*std::min_element(covered.begin(), covered.end());
  }
  void linear_forward(float* out, LinearInput inp, Weight w, Weight b, int R, int IC, int OC) override {
    check(w, (size_t)OC * IC);
    if (b.data) check(b, OC);
    ++forwards;
    inner->linear_forward(out, inp, w, b, R, IC, OC);
  }
  void linear_backward(float* dinp, float* dw, float* db, const float* dout, LinearInput inp, Weight w, int R, int IC,
                       int OC, bool acc) override {
    check(w, (size_t)OC * IC);
    ++backwards;
    inner->linear_backward(dinp, dw, db, dout, inp, w, R, IC, OC, acc);
  }
  void matvec_forward(float* out, Weight w, Weight b, const float* x, int IC, int r0, int r1) override {
    check(w, (size_t)r1 * IC);
    ++matvecs;
    inner->matvec_forward(out, w, b, x, IC, r0, r1);
  }

 private:
  void check(const Weight& w, size_t n) const {
    if (table.block) CHECK_NOTHROW(table.offset_of(w, n));  // a tensor of the bound table, of that size
  }
};

}  // namespace chargpt::test
