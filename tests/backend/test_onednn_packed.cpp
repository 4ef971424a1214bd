// The oneDNN backend's packed weights: a weight of the bound table is packed into
// oneDNN's layout once after each write and reused by every product until the next.
// Checked here: the packed products give the bits of the per-call packing (fp32, where
// a weight outside any table is still read per call), a write reported by
// weights_changed (even over part of a tensor, or in chunks from several threads, where the
// call completing a tensor repacks it) reaches the next product, and workers
// that find a weight stale at once all get the same bits. A case that needs bf16
// kernels this CPU lacks is skipped (CHARGPT_SKIP).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include <tbb/global_control.h>
#include <tbb/parallel_for.h>

#include "backend/backend.h"
#include "base/rng.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::randn;

namespace {

using VF = std::vector<float>;

std::unique_ptr<Backend> backend_or_skip(Precision p) {
  try {
    return make_backend({BackendKind::onednn, p, false});
  } catch (const std::exception& e) {
    test::mark_skipped(e.what());
    return nullptr;
  }
}

bool same_bits(const VF& a, const VF& b) { return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0; }

struct Shape {
  int R, IC, OC;
};
// Odd sizes, the baby model's products (qkv, MLP projection, LM head) and a nanogpt shard's qkv.
constexpr Shape kShapes[] = {{7, 13, 20}, {128, 128, 384}, {128, 512, 128}, {128, 128, 65}, {1024, 384, 1152}};

// Block of three tensors, the weight in the middle (as in the model: offsets are not 0).
struct Block {
  VF p;
  size_t off, n;
  Block(Rng& rng, size_t n_, size_t pad) : p(randn(rng, n_ + 2 * pad, 0.3)), off(pad), n(n_) {}
  WeightTable table() const { return {p.data(), p.size(), {{0, off}, {off, n}, {off + n, off}}}; }
  Weight w() const { return {p.data() + off, 1}; }
};

struct Outputs {
  VF out, dinp, dw;
};
Outputs products(Backend& be, Weight w, const VF& inp, const VF& dout, Shape s) {
  Outputs o{VF((size_t)s.R * s.OC, NAN), VF((size_t)s.R * s.IC, NAN), VF((size_t)s.OC * s.IC, NAN)};
  be.linear_forward(o.out.data(), {inp.data()}, w, {}, s.R, s.IC, s.OC);
  be.linear_backward(o.dinp.data(), o.dw.data(), nullptr, dout.data(), {inp.data()}, w, s.R, s.IC, s.OC, false);
  return o;
}

// One product shape with its weight block and random activations.
struct Case {
  Shape s;
  Block blk;
  VF inp, dout;
  Case(Rng& rng, Shape s_, size_t pad)
      : s(s_), blk(rng, (size_t)s_.OC * s_.IC, pad), inp(randn(rng, (size_t)s_.R * s_.IC)),
        dout(randn(rng, (size_t)s_.R * s_.OC)) {}
  // be bound to the block, every float reported written.
  void bind(Backend& be) const {
    be.bind_weights(blk.table());
    be.weights_changed(0, blk.p.size());
  }
  Outputs run(Backend& be) const { return products(be, blk.w(), inp, dout, s); }
  // The products of a new backend bound to the block's current weights (nothing packed before).
  Outputs fresh(Precision p) const {
    auto be = make_backend({BackendKind::onednn, p, false});
    bind(*be);
    return run(*be);
  }
};

void check_same_bits(const Outputs& got, const Outputs& want) {
  CHECK(same_bits(got.out, want.out));
  CHECK(same_bits(got.dinp, want.dinp));
  CHECK(same_bits(got.dw, want.dw));
}

}  // namespace

TEST_CASE("onednn packed weights: fp32 products give the bits of per-call packing") {
  auto be = backend_or_skip(Precision::fp32);
  if (!be) return;
  Rng rng(21);
  for (Shape s : kShapes) {
    CAPTURE(s.R);
    CAPTURE(s.IC);
    CAPTURE(s.OC);
    const Case c(rng, s, 64);
    c.bind(*be);
    const Outputs packed = c.run(*be);
    const Outputs per_call = products(*be, {c.blk.w().data, -1}, c.inp, c.dout, s);  // in no table: not packed
    check_same_bits(packed, per_call);
    CHECK(!std::isnan(packed.out[0]));
  }
}

namespace {

void check_partial_write(Precision p) {
  auto be = backend_or_skip(p);
  if (!be) return;
  Rng rng(5);
  Case c(rng, {128, 128, 384}, 100);
  c.bind(*be);
  const Outputs before = c.run(*be);
  const Outputs again = c.run(*be);
  CHECK(same_bits(before.out, again.out));
  // Change the tensor's second half (as one AdamW chunk would) and report only that range,
  // which also covers the start of the next tensor.
  const size_t b = c.blk.off + c.blk.n / 2, e = c.blk.off + c.blk.n + 10;
  for (size_t i = b; i < e; ++i) c.blk.p[i] = -2.f * c.blk.p[i];
  be->weights_changed(b, e);
  const Outputs after = c.run(*be);
  CHECK(!same_bits(after.out, before.out));
  check_same_bits(after, c.fresh(p));
}

void check_concurrent_repack(Precision p) {
  auto be = backend_or_skip(p);
  if (!be) return;
  Rng rng(9);
  Case c(rng, {128, 512, 128}, 16);
  be->bind_weights(c.blk.table());
  tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 4);
  for (int round = 0; round < 3; ++round) {
    for (float& x : c.blk.p) x *= 0.5f;
    be->weights_changed(0, c.blk.p.size());
    std::vector<Outputs> got(8);
    tbb::parallel_for(0, 8, [&](int i) { got[i] = c.run(*be); });
    const Outputs want = c.fresh(p);
    for (const Outputs& o : got) {
      CHECK(same_bits(o.out, want.out));
      CHECK(same_bits(o.dinp, want.dinp));
    }
  }
}

// The update reported in chunks from several threads at once, as the AdamW chunk loop does:
// the call that completes a tensor repacks it there, and the next products read the new weights.
void check_chunked_update(Precision p) {
  auto be = backend_or_skip(p);
  if (!be) return;
  Rng rng(13);
  Case c(rng, {128, 384, 1152}, 40);
  c.bind(*be);
  const Outputs first = c.run(*be);  // makes the layouts
  tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 4);
  std::vector<float>& w = c.blk.p;
  for (int step = 0; step < 3; ++step) {
    constexpr size_t kChunk = 16384;
    const size_t chunks = (w.size() + kChunk - 1) / kChunk;
    tbb::parallel_for(size_t(0), chunks, [&](size_t k) {
      const size_t b = k * kChunk, e = std::min(w.size(), b + kChunk);
      for (size_t i = b; i < e; ++i) w[i] = 0.9f * w[i] + 0.01f;
      be->weights_changed(b, e);
    });
    const Outputs got = c.run(*be);
    CHECK(!same_bits(got.out, first.out));
    check_same_bits(got, c.fresh(p));
  }
}

}  // namespace

TEST_CASE("onednn packed weights: an update reported in chunks by several threads reaches the next product (fp32)") {
  check_chunked_update(Precision::fp32);
}
TEST_CASE("onednn packed weights: an update reported in chunks by several threads reaches the next product (bf16)") {
  check_chunked_update(Precision::bf16);
}

TEST_CASE("onednn packed weights: a write reported over part of a tensor reaches the next product (fp32)") {
  check_partial_write(Precision::fp32);
}
TEST_CASE("onednn packed weights: a write reported over part of a tensor reaches the next product (bf16)") {
  check_partial_write(Precision::bf16);
}
TEST_CASE("onednn packed weights: workers that find a weight stale at once get the same bits (fp32)") {
  check_concurrent_repack(Precision::fp32);
}
TEST_CASE("onednn packed weights: workers that find a weight stale at once get the same bits (bf16)") {
  check_concurrent_repack(Precision::bf16);
}
