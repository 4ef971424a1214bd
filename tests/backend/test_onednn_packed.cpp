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

// The products of a new backend bound to blk's current weights (nothing packed before).
Outputs fresh_products(Precision p, const Block& blk, const VF& inp, const VF& dout, Shape s) {
  auto fresh = make_backend({BackendKind::onednn, p, false});
  fresh->bind_weights(blk.table());
  fresh->weights_changed(0, blk.p.size());
  return products(*fresh, blk.w(), inp, dout, s);
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
    Block blk(rng, (size_t)s.OC * s.IC, 64);
    const VF inp = randn(rng, (size_t)s.R * s.IC), dout = randn(rng, (size_t)s.R * s.OC);
    be->bind_weights(blk.table());
    be->weights_changed(0, blk.p.size());
    const Outputs packed = products(*be, blk.w(), inp, dout, s);
    const Outputs per_call = products(*be, {blk.w().data, -1}, inp, dout, s);  // in no table: not packed
    CHECK(same_bits(packed.out, per_call.out));
    CHECK(same_bits(packed.dinp, per_call.dinp));
    CHECK(same_bits(packed.dw, per_call.dw));
    CHECK(!std::isnan(packed.out[0]));
  }
}

namespace {

void check_partial_write(Precision p) {
  {
    auto be = backend_or_skip(p);
    if (!be) return;
    Rng rng(5);
    const Shape s{128, 128, 384};
    Block blk(rng, (size_t)s.OC * s.IC, 100);
    const VF inp = randn(rng, (size_t)s.R * s.IC), dout = randn(rng, (size_t)s.R * s.OC);
    be->bind_weights(blk.table());
    be->weights_changed(0, blk.p.size());
    const Outputs before = products(*be, blk.w(), inp, dout, s);
    const Outputs again = products(*be, blk.w(), inp, dout, s);
    CHECK(same_bits(before.out, again.out));
    // Change the tensor's second half (as one AdamW chunk would) and report only that range,
    // which also covers the start of the next tensor.
    const size_t b = blk.off + blk.n / 2, e = blk.off + blk.n + 10;
    for (size_t i = b; i < e; ++i) blk.p[i] = -2.f * blk.p[i];
    be->weights_changed(b, e);
    const Outputs after = products(*be, blk.w(), inp, dout, s);
    const Outputs want = fresh_products(p, blk, inp, dout, s);
    CHECK(!same_bits(after.out, before.out));
    CHECK(same_bits(after.out, want.out));
    CHECK(same_bits(after.dinp, want.dinp));
    CHECK(same_bits(after.dw, want.dw));
  }
}

void check_concurrent_repack(Precision p) {
  {
    auto be = backend_or_skip(p);
    if (!be) return;
    Rng rng(9);
    const Shape s{128, 512, 128};
    Block blk(rng, (size_t)s.OC * s.IC, 16);
    const VF inp = randn(rng, (size_t)s.R * s.IC), dout = randn(rng, (size_t)s.R * s.OC);
    be->bind_weights(blk.table());
    tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 4);
    for (int round = 0; round < 3; ++round) {
      for (float& x : blk.p) x *= 0.5f;
      be->weights_changed(0, blk.p.size());
      std::vector<Outputs> got(8);
      tbb::parallel_for(0, 8, [&](int i) { got[i] = products(*be, blk.w(), inp, dout, s); });
      const Outputs want = fresh_products(p, blk, inp, dout, s);
      for (const Outputs& o : got) {
        CHECK(same_bits(o.out, want.out));
        CHECK(same_bits(o.dinp, want.dinp));
      }
    }
  }
}

// The update reported in chunks from several threads at once, as the AdamW chunk loop does:
// the call that completes a tensor repacks it there, and the next products read the new weights.
void check_chunked_update(Precision p) {
  auto be = backend_or_skip(p);
  if (!be) return;
  Rng rng(13);
  const Shape s{128, 384, 1152};
  Block blk(rng, (size_t)s.OC * s.IC, 40);
  const VF inp = randn(rng, (size_t)s.R * s.IC), dout = randn(rng, (size_t)s.R * s.OC);
  be->bind_weights(blk.table());
  be->weights_changed(0, blk.p.size());
  const Outputs first = products(*be, blk.w(), inp, dout, s);  // makes the layouts
  tbb::global_control threads(tbb::global_control::max_allowed_parallelism, 4);
  for (int step = 0; step < 3; ++step) {
    constexpr size_t kChunk = 16384;
    const size_t chunks = (blk.p.size() + kChunk - 1) / kChunk;
    tbb::parallel_for(size_t(0), chunks, [&](size_t c) {
      const size_t b = c * kChunk, e = std::min(blk.p.size(), b + kChunk);
      for (size_t i = b; i < e; ++i) blk.p[i] = 0.9f * blk.p[i] + 0.01f;
      be->weights_changed(b, e);
    });
    const Outputs got = products(*be, blk.w(), inp, dout, s);
    const Outputs want = fresh_products(p, blk, inp, dout, s);
    CHECK(!same_bits(got.out, first.out));
    CHECK(same_bits(got.out, want.out));
    CHECK(same_bits(got.dinp, want.dinp));
    CHECK(same_bits(got.dw, want.dw));
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
