// Backend conformance (after ggml's test-backend-ops): every backend this build
// and machine can run goes through the same product cases against a
// double-precision reference: forward with and without bias; backward with and
// without bias, dinp and accumulate (outputs that are written start as NaN), dinp alone (null dweight);
// odd shapes, R = 1, IC = 1, OC = 1 and the model's own; the KV step's matvec
// (any split of the rows gives the same bits); a bf16 copy of the input changes
// no bit; weights_changed is honoured. A backend that cannot run here is
// skipped, saying why (CHARGPT_SKIP: CTest counts it as skipped).
//
// Tolerance per precision, a worst-case bound (it cannot fail spuriously). For one
// output y = Σ_k a_k·b_k (+ bias, + the old value when accumulating), with
// S = Σ_k |a_k||b_k| (+ |bias| + |old|): fp32, any summation order:
// |y - y_ref| <= γ_{K+2}·S, γ_n = n·2^-24/(1 - n·2^-24); bf16 inputs (relative
// rounding u = 2^-8 each) summed in fp32: (2u + u² + γ_{K+2})·S. A wrong index
// moves an output by O(1/sqrt(K))·S, far above either (the last case shows it).
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "backend/device_backend.h"
#include "base/rng.h"
#include "ops/ops.h"
#include "ops/ref_ops.h"
#include "support.h"
#include "cuda_test_util.h"

using namespace chargpt;
using chargpt::test::randn;

namespace {

using VF = std::vector<float>;
using VD = std::vector<double>;

VD to_d(const VF& v) { return VD(v.begin(), v.end()); }
VD absd(const VF& v) {
  VD d(v.size());
  for (size_t i = 0; i < v.size(); ++i) d[i] = std::fabs((double)v[i]);
  return d;
}
bool same_bits(const VF& a, const VF& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

double gamma(int n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1 - n * u);
}
// The bound on |got - ref| / S for a sum of K products in precision p.
double tolerance(Precision p, int K) {
  constexpr double u = 1.0 / 256;  // bf16 unit roundoff
  return (p == Precision::bf16 ? 2 * u + u * u : 0.0) + gamma(K + 2);
}
using chargpt::test::worst;

struct Shape {
  int R, IC, OC;
};
// Odd shapes, the degenerate ones (one row, one input, one output), the model's own
// (baby: qkv, MLP projection, LM head).
constexpr Shape kShapes[] = {{7, 13, 20}, {33, 5, 17}, {1, 31, 65}, {5, 1, 7},
                             {33, 96, 1}, {128, 128, 384}, {96, 512, 128}, {64, 128, 65}};

// A bound block of four tensors: padding, the weight [OC,IC], the bias [OC], padding,
// so that a backend's lookup by tensor is exercised away from offset 0.
struct Block {
  VF p;
  WeightTable table;
  Block(const VF& w, const VF& b, Rng& rng) : p(randn(rng, w.size() + b.size() + 2 * kPad)) {
    std::copy(w.begin(), w.end(), p.begin() + kPad);
    std::copy(b.begin(), b.end(), p.begin() + (ptrdiff_t)(kPad + w.size()));
    table = {p.data(), p.size(), {{0, kPad}, {kPad, w.size()}, {kPad + w.size(), b.size()},
                                  {kPad + w.size() + b.size(), kPad}}};
  }
  Weight w() const { return {p.data() + table.tensors[1].offset, 1}; }
  Weight b() const { return {p.data() + table.tensors[2].offset, 2}; }
  static constexpr size_t kPad = 77;
};

void check_shape(Backend& be, Precision prec, Shape s, uint64_t seed) {
  const int R = s.R, IC = s.IC, OC = s.OC;
  CAPTURE(R);
  CAPTURE(IC);
  CAPTURE(OC);
  Rng rng(seed);
  const VF inp = randn(rng, (size_t)R * IC), w = randn(rng, (size_t)OC * IC, 0.3), bias = randn(rng, OC, 0.5),
           dout = randn(rng, (size_t)R * OC, 0.7);
  std::vector<uint16_t> inp16(inp.size());
  to_bf16(inp16.data(), inp.data(), inp.size());
  Block blk(w, bias, rng);
  be.bind_weights(blk.table);
  be.weights_changed(0, blk.p.size());
  const VD inpd = to_d(inp), wd = to_d(w), biasd = to_d(bias), doutd = to_d(dout);
  const VD inpa = absd(inp), wa = absd(w), biasa = absd(bias), douta = absd(dout);

  VF with_bias;
  for (bool has_bias : {false, true}) {
    CAPTURE(has_bias);
    VF out((size_t)R * OC, NAN);
    be.linear_forward(out.data(), {inp.data()}, blk.w(), has_bias ? blk.b() : Weight{}, R, IC, OC);
    VD ref(out.size()), S(out.size());
    ref::matmul_forward(ref.data(), inpd.data(), wd.data(), has_bias ? biasd.data() : nullptr, R, IC, OC);
    ref::matmul_forward(S.data(), inpa.data(), wa.data(), has_bias ? biasa.data() : nullptr, R, IC, OC);
    CHECK(worst(out, ref, S, tolerance(prec, IC)) <= 1);
    // The input's bf16 copy (as the model hands it over) changes no bit.
    VF out16((size_t)R * OC, NAN);
    be.linear_forward(out16.data(), {inp.data(), inp16.data()}, blk.w(), has_bias ? blk.b() : Weight{}, R, IC, OC);
    CHECK(same_bits(out16, out));
    if (has_bias) with_bias = out;
  }

  for (bool accumulate : {false, true})
    for (bool want_dinp : {false, true})
      for (bool want_dbias : {false, true}) {
        CAPTURE(accumulate);
        CAPTURE(want_dinp);
        CAPTURE(want_dbias);
        // Accumulating: dweight and dbias start from random values and get +=; otherwise
        // they start as NaN and must be overwritten. dinp is always written.
        const VF dw0 = accumulate ? randn(rng, w.size()) : VF(w.size(), NAN),
                 db0 = accumulate ? randn(rng, OC) : VF(OC, NAN);
        VF dinp((size_t)R * IC, NAN), dw = dw0, db = db0;
        be.linear_backward(want_dinp ? dinp.data() : nullptr, dw.data(), want_dbias ? db.data() : nullptr,
                           dout.data(), {inp.data()}, blk.w(), R, IC, OC, accumulate);
        VD rdi(dinp.size()), Sdi(dinp.size());
        VD rdw = accumulate ? to_d(dw0) : VD(w.size(), 0.0), Sdw = accumulate ? absd(dw0) : VD(w.size(), 0.0);
        VD rdb = accumulate ? to_d(db0) : VD(OC, 0.0), Sdb = accumulate ? absd(db0) : VD(OC, 0.0);
        ref::matmul_backward(rdi.data(), rdw.data(), rdb.data(), doutd.data(), inpd.data(), wd.data(), R, IC, OC);
        ref::matmul_backward(Sdi.data(), Sdw.data(), Sdb.data(), douta.data(), inpa.data(), wa.data(), R, IC, OC);
        CHECK(worst(dw, rdw, Sdw, tolerance(prec, R)) <= 1);
        if (want_dinp) CHECK(worst(dinp, rdi, Sdi, tolerance(prec, OC)) <= 1);
        else CHECK(std::isnan(dinp[0]));  // null dinp: nothing written
        if (want_dbias) CHECK(worst(db, rdb, Sdb, tolerance(prec, R)) <= 1);
        else CHECK(same_bits(db, db0));
        // The input's bf16 copy changes no bit here either.
        VF dinp2((size_t)R * IC, NAN), dw2 = dw0, db2 = db0;
        be.linear_backward(want_dinp ? dinp2.data() : nullptr, dw2.data(), want_dbias ? db2.data() : nullptr,
                           dout.data(), {inp.data(), inp16.data()}, blk.w(), R, IC, OC, accumulate);
        CHECK(same_bits(dw2, dw));
        CHECK(same_bits(db2, db));
        if (want_dinp) CHECK(same_bits(dinp2, dinp));
      }

  // dweight null: dinp alone (the model's blocks of rows), the bits of the call that also
  // computes dweight; the dbias given is not touched.
  {
    VF dinp_all((size_t)R * IC, NAN), dw(w.size(), NAN), db(OC, NAN);
    be.linear_backward(dinp_all.data(), dw.data(), db.data(), dout.data(), {inp.data()}, blk.w(), R, IC, OC, false);
    VF dinp_only((size_t)R * IC, NAN), db_only = randn(rng, OC);
    const VF db_keep = db_only;
    be.linear_backward(dinp_only.data(), nullptr, db_only.data(), dout.data(), {inp.data()}, blk.w(), R, IC, OC,
                       false);
    CHECK(same_bits(dinp_only, dinp_all));
    CHECK(same_bits(db_only, db_keep));
    // Nothing asked (null dinp and dweight): nothing written.
    be.linear_backward(nullptr, nullptr, db_only.data(), dout.data(), {inp.data()}, blk.w(), R, IC, OC, true);
    CHECK(same_bits(db_only, db_keep));
  }

  // weights_changed is honoured: weight and bias doubled (exact in every precision)
  // double the output exactly.
  for (size_t i = blk.table.tensors[1].offset; i < blk.table.tensors[3].offset; ++i) blk.p[i] *= 2;
  be.weights_changed(blk.table.tensors[1].offset, blk.table.tensors[3].offset);
  VF twice((size_t)R * OC, NAN);
  be.linear_forward(twice.data(), {inp.data()}, blk.w(), blk.b(), R, IC, OC);
  for (float& x : with_bias) x *= 2;
  CHECK(same_bits(twice, with_bias));
}

// The KV step's rows: within the bound, and the same bits for any split of the rows.
void check_matvec(Backend& be, Precision prec, uint64_t seed) {
  Rng rng(seed);
  const int IC = 133, OC = 70;  // not multiples of 16
  const VF w = randn(rng, (size_t)OC * IC, 0.3), x = randn(rng, IC), bias = randn(rng, OC, 0.5);
  Block blk(w, bias, rng);
  be.bind_weights(blk.table);
  be.weights_changed(0, blk.p.size());
  for (bool has_bias : {false, true}) {
    CAPTURE(has_bias);
    const Weight b = has_bias ? blk.b() : Weight{};
    VF whole(OC, NAN), split(OC, NAN);
    be.matvec_forward(whole.data(), blk.w(), b, x.data(), IC, 0, OC);
    const int cuts[] = {0, 1, 3, 17, 40, 69, OC};
    for (size_t i = 0; i + 1 < std::size(cuts); ++i)
      be.matvec_forward(split.data(), blk.w(), b, x.data(), IC, cuts[i], cuts[i + 1]);
    CHECK(same_bits(whole, split));
    VD ref(OC), S(OC);
    ref::matmul_forward(ref.data(), to_d(x).data(), to_d(w).data(), has_bias ? to_d(bias).data() : nullptr, 1, IC, OC);
    ref::matmul_forward(S.data(), absd(x).data(), absd(w).data(), has_bias ? absd(bias).data() : nullptr, 1, IC, OC);
    CHECK(worst(whole, ref, S, tolerance(prec, IC)) <= 1);
  }
}

// Runs every case on the backend `make` gives, or says why there is none.
void conform(Precision prec, const std::function<std::unique_ptr<Backend>()>& make) {
  std::unique_ptr<Backend> be;
  try {
    be = make();
  } catch (const std::runtime_error& e) {
    CHARGPT_SKIP(e.what());
  }
  REQUIRE(be);
  MESSAGE("backend: " << be->name());
  uint64_t seed = 100;
  for (Shape s : kShapes) check_shape(*be, prec, s, seed++);
  check_matvec(*be, prec, seed);
}

std::unique_ptr<Backend> from_registry(BackendOptions opt) { return make_backend(opt); }

}  // namespace

TEST_CASE("conformance: openblas fp32") {
  conform(Precision::fp32, [] { return from_registry({BackendKind::openblas, Precision::fp32, false}); });
}

TEST_CASE("conformance: onednn fp32") {
  conform(Precision::fp32, [] { return from_registry({BackendKind::onednn, Precision::fp32, false}); });
}

TEST_CASE("conformance: onednn bf16") {
  // Offered (and checked) wherever the CPU has AVX512-BF16 or AMX-BF16 and oneDNN may use them.
  conform(Precision::bf16, [] { return from_registry({BackendKind::onednn, Precision::bf16, false}); });
}

TEST_CASE("conformance: device backend fp32 on the emulated device") {
  cuda_test::DeviceLog log;
  conform(Precision::fp32, [&] { return cuda_test::emulated_backend(log); });
  CHECK(log.gemms > 0);  // the products ran on the (emulated) device
  CHECK(log.bf16_gemms == 0);
  CHECK(log.live == 0);  // and every buffer was freed with the backend
}

TEST_CASE("conformance: device backend bf16 on the emulated device") {
  cuda_test::DeviceLog log;
  DeviceTuning t;
  t.bf16 = true;
  conform(Precision::bf16, [&] { return cuda_test::emulated_backend(log, t); });
  CHECK(log.bf16_gemms > 0);  // the products read bf16 operands
  CHECK(log.live == 0);
}

TEST_CASE("conformance: cuda fp32") {
  conform(Precision::fp32, [] { return from_registry({BackendKind::cuda, Precision::fp32, false}); });
}

TEST_CASE("conformance: cuda bf16") {
  conform(Precision::bf16, [] { return from_registry({BackendKind::cuda, Precision::bf16, false}); });
}

TEST_CASE("conformance: the bf16 bound catches a wrong index") {
  // The loosest tolerance above still fails a reference that swaps two weight rows or
  // reads the input one column off, on the reference backend's output.
  const auto be = make_backend();
  Rng rng(77);
  for (Shape s : {Shape{7, 13, 20}, Shape{128, 128, 384}}) {
    const int R = s.R, IC = s.IC, OC = s.OC;
    CAPTURE(R);
    const VF inp = randn(rng, (size_t)R * IC), w = randn(rng, (size_t)OC * IC, 0.3);
    VF out((size_t)R * OC);
    be->linear_forward(out.data(), {inp.data()}, {w.data()}, {}, R, IC, OC);
    VD S(out.size()), ref(out.size());
    ref::matmul_forward(S.data(), absd(inp).data(), absd(w).data(), (const double*)nullptr, R, IC, OC);
    ref::matmul_forward(ref.data(), to_d(inp).data(), to_d(w).data(), (const double*)nullptr, R, IC, OC);
    REQUIRE(worst(out, ref, S, tolerance(Precision::bf16, IC)) <= 1);
    VD wd = to_d(w);
    for (int i = 0; i < IC; ++i) std::swap(wd[3 * IC + i], wd[4 * IC + i]);
    ref::matmul_forward(ref.data(), to_d(inp).data(), wd.data(), (const double*)nullptr, R, IC, OC);
    CHECK(worst(out, ref, S, tolerance(Precision::bf16, IC)) > 10);
    VD id = to_d(inp);
    for (size_t i = 0; i + 1 < id.size(); ++i) id[i] = inp[i + 1];
    ref::matmul_forward(ref.data(), id.data(), to_d(w).data(), (const double*)nullptr, R, IC, OC);
    CHECK(worst(out, ref, S, tolerance(Precision::bf16, IC)) > 10);
  }
}
