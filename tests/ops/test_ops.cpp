// Tests of every op in ops.h, three ways:
//   1. fast forward (float) vs the reference forward (ref_ops.h) in double,
//   2. fast backward (float) vs the reference backward in double, same upstream gradient,
//      including the += / = conventions and the aliasing modes ops.h allows,
//   3. the reference backward (double) vs central differences of the reference forward.
// Shapes are small and odd (so a wrong index or stride shows up), plus the product
// shapes (C=128, T=64, NH=4, V=65) for matvec and attention. (The matrix products
// are the backends': tests/backend/test_conformance.cpp.)
//
// Error measure, unless a check says otherwise: max_i |got_i - want_i| / max_i |want_i|
// ("relative to the scale" of the array). A wrong index or stride gives an error of
// order 1 on that scale; float rounding gives ~1e-7..1e-6.
// CHARGPT_OPS_VERBOSE=1 in the environment prints every measured error (to re-calibrate tolerances).
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "ops/ops.h"
#include "ops/ref_ops.h"
#include "base/rng.h"
#include "ops_widths.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::randn;
using chargpt::test::random_tokens;

namespace {

using VF = std::vector<float>;
using VD = std::vector<double>;
using VI = std::vector<int32_t>;

// Tolerances.
// Observed worst errors (x86-64, OpenBLAS) are given next to each; margins >= 5x except gelu (see there).
constexpr double kTolFloat = 1e-5;  // fast float vs double reference, relative to the array's scale (seen <= 8e-7,
                                    // including K = 512 products)
constexpr double kTolNum = 1e-6;    // reference backward vs central differences (h = 1e-6), relative to the
                                    // scale (seen <= 4e-9)
constexpr double kH = 1e-6;         // central-difference step

VD to_d(const VF& v) { return VD(v.begin(), v.end()); }
VF nans(size_t n) { return VF(n, std::numeric_limits<float>::quiet_NaN()); }
double dot(const VD& a, const VD& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}
bool bit_equal(const float* a, const float* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

struct Worst {
  double err = 0;  // the worst error, as measured (NaN/inf count as +inf)
  size_t idx = 0;  // flat index of the worst element
  double got = 0, want = 0;
  double scale = 0;
};

// floor < 0: error relative to the array's scale max|want| (the default);
// floor >= 0: per element, |got - want| / max(|want_i|, floor).
template <class A, class B>
Worst compare(const A& got, const B& want, double floor = -1) {
  REQUIRE(got.size() == want.size());
  Worst w;
  double scale = 0;
  for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::fabs((double)want[i]));
  if (scale == 0) scale = 1e-300;
  w.scale = scale;
  for (size_t i = 0; i < want.size(); ++i) {
    const double s = floor < 0 ? scale : std::max(std::fabs((double)want[i]), std::max(floor, 1e-300));
    double e = std::fabs((double)got[i] - (double)want[i]) / s;
    if (!std::isfinite(e)) e = std::numeric_limits<double>::infinity();
    if (e > w.err || (i == 0 && e == 0)) {
      w.err = e;
      w.idx = i;
      w.got = (double)got[i];
      w.want = (double)want[i];
    }
  }
  return w;
}

// Reports the worst element (index, got, want) when the check fails.
#define CHECK_CLOSE_F(what, got_, want_, tol_, floor_)                                                      \
  do {                                                                                                      \
    const Worst w_ = compare((got_), (want_), (floor_));                                                    \
    INFO(what << ": worst element [" << w_.idx << "] got " << w_.got << " want " << w_.want << ", err "     \
              << w_.err << " (scale " << w_.scale << ") > tol " << (tol_));                                 \
    if (std::getenv("CHARGPT_OPS_VERBOSE")) MESSAGE(what << ": err " << w_.err << ", tol " << (tol_));      \
    CHECK(w_.err <= (tol_));                                                                            \
  } while (0)
#define CHECK_CLOSE(what, got, want, tol) CHECK_CLOSE_F(what, got, want, tol, -1.0)

// Central differences of f() with respect to every element of x (x restored after each).
template <class Fn>
VD numgrad(VD& x, Fn&& f, double h = kH) {
  VD g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = f();
    x[i] = x0 - h;
    const double lm = f();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

VD add(const VD& a, const VD& b) {
  VD r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] + b[i];
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// encoder

TEST_CASE("op: encoder forward matches reference") {
  const int N = 3, T = 7, C = 12, V = 11;
  Rng rng(101);
  const VF wte = randn(rng, (size_t)V * C), wpe = randn(rng, (size_t)T * C);
  const VI tok = random_tokens(rng, (size_t)N * T, V);
  VF out = nans((size_t)N * T * C);
  encoder_forward(out.data(), tok.data(), wte.data(), wpe.data(), N, T, C);
  VD ref((size_t)N * T * C);
  ref::encoder_forward(ref.data(), tok.data(), to_d(wte).data(), to_d(wpe).data(), N, T, C);
  // float sum of two floats vs the double sum: one rounding, 1e-6 relative per element
  CHECK_CLOSE_F("encoder out", out, ref, 1e-6, 0.0);
}

TEST_CASE("op: encoder backward accumulates like reference") {
  const int N = 3, T = 7, C = 12, V = 11;
  Rng rng(102);
  // tokens from [0, V-3): repeats are certain (21 tokens, 8 values), the last rows of dwte are untouched
  const VI tok = random_tokens(rng, (size_t)N * T, V - 3);
  const VF dout = randn(rng, (size_t)N * T * C);
  VF dwte = randn(rng, (size_t)V * C), dwpe = randn(rng, (size_t)T * C);  // pre-filled: += convention
  VD rdwte = to_d(dwte), rdwpe = to_d(dwpe);
  const VF dwte0 = dwte;
  encoder_backward(dwte.data(), dwpe.data(), dout.data(), tok.data(), N, T, C);
  ref::encoder_backward(rdwte.data(), rdwpe.data(), to_d(dout).data(), tok.data(), N, T, C);
  CHECK_CLOSE("encoder dwte", dwte, rdwte, kTolFloat);  // float sums of up to 21 terms
  CHECK_CLOSE("encoder dwpe", dwpe, rdwpe, kTolFloat);
  CHECK(bit_equal(dwte.data() + (size_t)(V - 3) * C, dwte0.data() + (size_t)(V - 3) * C, 3 * (size_t)C));
}

TEST_CASE("op: encoder reference backward vs central differences") {
  const int N = 2, T = 5, C = 6, V = 4;  // 10 tokens over 4 values: repeats
  Rng rng(103);
  VD wte = to_d(randn(rng, (size_t)V * C)), wpe = to_d(randn(rng, (size_t)T * C));
  const VI tok = random_tokens(rng, (size_t)N * T, V);
  const VD G = to_d(randn(rng, (size_t)N * T * C));
  VD out(G.size());
  auto L = [&] {
    ref::encoder_forward(out.data(), tok.data(), wte.data(), wpe.data(), N, T, C);
    return dot(out, G);
  };
  VD dwte(wte.size(), 0.0), dwpe(wpe.size(), 0.0);
  ref::encoder_backward(dwte.data(), dwpe.data(), G.data(), tok.data(), N, T, C);
  CHECK_CLOSE("d/dwte", dwte, numgrad(wte, L), kTolNum);
  CHECK_CLOSE("d/dwpe", dwpe, numgrad(wpe, L), kTolNum);
}

// ---------------------------------------------------------------------------------------------
// layernorm

TEST_CASE("op: layernorm forward matches reference") {
  struct Shape {
    int R, C;
  };
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (Shape s : {Shape{7, 12}, Shape{128, 128}}) {
    CAPTURE(ops.width);
    CAPTURE(s.R);
    CAPTURE(s.C);
    Rng rng(201);
    const VF inp = randn(rng, (size_t)s.R * s.C, 1.7, 0.6);  // non-zero mean, non-unit variance
    const VF w = randn(rng, s.C, 0.3, 1.0), b = randn(rng, s.C, 0.5);
    VF out = nans((size_t)s.R * s.C), mean = nans(s.R), rstd = nans(s.R);
    ops.layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), s.R, s.C, nullptr);
    VD rout(out.size()), rmean(s.R), rrstd(s.R);
    ref::layernorm_forward(rout.data(), rmean.data(), rrstd.data(), to_d(inp).data(), to_d(w).data(),
                           to_d(b).data(), s.R, s.C);
    CHECK_CLOSE("layernorm out", out, rout, kTolFloat);
    CHECK_CLOSE_F("layernorm mean", mean, rmean, kTolFloat, 1.0);  // per row, vs max(|mean|, 1)
    CHECK_CLOSE_F("layernorm rstd", rstd, rrstd, kTolFloat, 0.0);  // per row, relative
  }
}

TEST_CASE("op: layernorm backward matches reference (dinp, dweight, dbias all +=)") {
  struct Shape {
    int R, C;
  };
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (Shape s : {Shape{7, 12}, Shape{128, 128}}) {
    CAPTURE(ops.width);
    CAPTURE(s.R);
    CAPTURE(s.C);
    const int R = s.R, C = s.C;
    Rng rng(202);
    const VF inp = randn(rng, (size_t)R * C, 1.7, 0.6);
    const VF w = randn(rng, C, 0.3, 1.0), b = randn(rng, C, 0.5);
    const VF dout = randn(rng, (size_t)R * C);
    VF out((size_t)R * C), mean(R), rstd(R);
    ops.layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), R, C, nullptr);
    VD rout(out.size()), rmean(R), rrstd(R);
    ref::layernorm_forward(rout.data(), rmean.data(), rrstd.data(), to_d(inp).data(), to_d(w).data(),
                           to_d(b).data(), R, C);
    // every gradient here is +=: pre-fill with random values, the same in both
    VF dinp = randn(rng, (size_t)R * C), dw = randn(rng, C), db = randn(rng, C);
    VD rdinp = to_d(dinp), rdw = to_d(dw), rdb = to_d(db);
    ops.layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), mean.data(),
                           rstd.data(), R, C);
    ref::layernorm_backward(rdinp.data(), rdw.data(), rdb.data(), to_d(dout).data(), to_d(inp).data(),
                            to_d(w).data(), rmean.data(), rrstd.data(), R, C);
    CHECK_CLOSE("layernorm dinp", dinp, rdinp, kTolFloat);
    CHECK_CLOSE("layernorm dweight", dw, rdw, kTolFloat);
    CHECK_CLOSE("layernorm dbias", db, rdb, kTolFloat);
  }
}

TEST_CASE("op: layernorm reference backward vs central differences") {
  const int R = 7, C = 12;
  Rng rng(203);
  VD inp = to_d(randn(rng, (size_t)R * C, 1.7, 0.6));
  VD w = to_d(randn(rng, C, 0.3, 1.0)), b = to_d(randn(rng, C, 0.5));
  const VD G = to_d(randn(rng, (size_t)R * C));
  VD out((size_t)R * C), mean(R), rstd(R);
  auto L = [&] {
    ref::layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), R, C);
    return dot(out, G);
  };
  L();
  VD dinp((size_t)R * C, 0.0), dw(C, 0.0), db(C, 0.0);
  ref::layernorm_backward(dinp.data(), dw.data(), db.data(), G.data(), inp.data(), w.data(), mean.data(),
                          rstd.data(), R, C);
  CHECK_CLOSE("d/dinp", dinp, numgrad(inp, L), kTolNum);
  CHECK_CLOSE("d/dweight", dw, numgrad(w, L), kTolNum);
  CHECK_CLOSE("d/dbias", db, numgrad(b, L), kTolNum);
}

// ---------------------------------------------------------------------------------------------
// matmul

namespace {
struct MmShape {
  int R, IC, OC;
};
// small odd shape, then the product's: c_attn, c_fc, mlp c_proj, attn c_proj, LM head (tied wte)
const MmShape kMmShapes[] = {{7, 12, 20}, {5, 3, 1}, {128, 128, 384}, {128, 128, 512},
                             {128, 512, 128}, {128, 128, 128}, {128, 128, 65}};
}  // namespace

TEST_CASE("op: matmul reference backward vs central differences") {
  const int R = 7, IC = 12, OC = 20;
  Rng rng(303);
  VD inp = to_d(randn(rng, (size_t)R * IC)), w = to_d(randn(rng, (size_t)OC * IC, 0.3));
  VD bias = to_d(randn(rng, OC));
  const VD G = to_d(randn(rng, (size_t)R * OC));
  VD out((size_t)R * OC);
  auto L = [&] {
    ref::matmul_forward(out.data(), inp.data(), w.data(), bias.data(), R, IC, OC);
    return dot(out, G);
  };
  VD dinp((size_t)R * IC, 0.0), dw(w.size(), 0.0), db(OC, 0.0);
  ref::matmul_backward(dinp.data(), dw.data(), db.data(), G.data(), inp.data(), w.data(), R, IC, OC);
  CHECK_CLOSE("d/dinp", dinp, numgrad(inp, L), kTolNum);
  CHECK_CLOSE("d/dweight", dw, numgrad(w, L), kTolNum);
  CHECK_CLOSE("d/dbias", db, numgrad(bias, L), kTolNum);
}

// ---------------------------------------------------------------------------------------------
// attention

namespace {
struct AttShape {
  int N, T, C, NH;
};
// odd small shapes (hd = 4, hd = 3, a single head, T = 1), then ones that end the kernels' 4-row blocks
// and 4-, 8- and 16-float groups part-way (hd = 30, T = 37; hd = 48, T = 50), then the product's (hd = 32)
const AttShape kAttShapes[] = {{2, 9, 12, 3}, {3, 5, 15, 5}, {1, 6, 8, 1},  {2, 1, 12, 3},
                               {2, 37, 60, 2}, {1, 50, 96, 2}, {2, 64, 128, 4}};
// attention_forward with its scratch full of NaN: nothing may read scratch it has not written
void attention_fwd(float* out, float* probs, const float* qkv, int N, int T, int C, int NH,
                   const test::OpsAtWidth& ops = test::native_ops()) {
  VF scratch = nans(ops.attention_scratch_floats(T, C / NH));
  ops.attention_forward(out, probs, scratch.data(), qkv, N, T, C, NH);
}
}  // namespace

TEST_CASE("op: attention forward matches reference") {
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (const AttShape& s : kAttShapes) {
    CAPTURE(ops.width);
    CAPTURE(s.N);
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    Rng rng(401);
    const VF qkv = randn(rng, (size_t)s.N * s.T * 3 * s.C, 1.5);  // peaky enough softmaxes
    VF out = nans((size_t)s.N * s.T * s.C), probs = nans((size_t)s.N * s.NH * s.T * s.T);
    attention_fwd(out.data(), probs.data(), qkv.data(), s.N, s.T, s.C, s.NH, ops);
    VD rout(out.size()), rprobs(probs.size());
    ref::attention_forward(rout.data(), rprobs.data(), to_d(qkv).data(), s.N, s.T, s.C, s.NH);
    CHECK_CLOSE("attention out", out, rout, kTolFloat);
    CHECK_CLOSE("attention probs", probs, rprobs, kTolFloat);
  }
}

TEST_CASE("op: attention backward matches reference (dqkv =)") {
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (const AttShape& s : kAttShapes) {
    CAPTURE(ops.width);
    CAPTURE(s.N);
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    Rng rng(402);
    const VF qkv = randn(rng, (size_t)s.N * s.T * 3 * s.C, 1.5);
    const VF dout = randn(rng, (size_t)s.N * s.T * s.C);
    VF out((size_t)s.N * s.T * s.C), probs((size_t)s.N * s.NH * s.T * s.T);
    attention_fwd(out.data(), probs.data(), qkv.data(), s.N, s.T, s.C, s.NH, ops);
    VD rout(out.size()), rprobs(probs.size());
    const VD dqkv_in = to_d(qkv);
    ref::attention_forward(rout.data(), rprobs.data(), dqkv_in.data(), s.N, s.T, s.C, s.NH);
    VF dqkv = nans(qkv.size()), scratch = nans(ops.attention_scratch_floats(s.T, s.C / s.NH));  // garbage: dqkv is written (=)
    ops.attention_backward(dqkv.data(), scratch.data(), dout.data(), qkv.data(), probs.data(), s.N, s.T, s.C, s.NH);
    VD rdqkv(qkv.size(), 12345.0);
    ref::attention_backward(rdqkv.data(), to_d(dout).data(), dqkv_in.data(), rprobs.data(), s.N, s.T, s.C, s.NH);
    CHECK_CLOSE("attention dqkv", dqkv, rdqkv, kTolFloat);
  }
}

// The model runs attention one (sequence, head) per task: those calls, with their scratch full
// of NaN, give attention_backward's bits.
TEST_CASE("op: attention_head_backward on every head gives attention_backward's bits") {
  for (const AttShape& s : kAttShapes) {
    CAPTURE(s.N);
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    const int hd = s.C / s.NH;
    Rng rng(403);
    const VF qkv = randn(rng, (size_t)s.N * s.T * 3 * s.C, 1.5);
    const VF dout = randn(rng, (size_t)s.N * s.T * s.C);
    VF out((size_t)s.N * s.T * s.C), probs((size_t)s.N * s.NH * s.T * s.T);
    VF scratch = nans(attention_scratch_floats(s.T, hd));
    attention_forward(out.data(), probs.data(), scratch.data(), qkv.data(), s.N, s.T, s.C, s.NH);
    VF whole = nans(qkv.size()), heads = nans(qkv.size());
    attention_backward(whole.data(), scratch.data(), dout.data(), qkv.data(), probs.data(), s.N, s.T, s.C, s.NH);
    for (int n = 0; n < s.N; ++n)
      for (int h = 0; h < s.NH; ++h) {
        VF head_scratch = nans(attention_scratch_floats(s.T, hd));
        const size_t at = (size_t)n * s.T * 3 * s.C + h * hd;
        attention_head_backward(heads.data() + at, head_scratch.data(), dout.data() + (size_t)n * s.T * s.C + h * hd,
                                s.C, qkv.data() + at, probs.data() + ((size_t)n * s.NH + h) * s.T * s.T, s.T, s.C, hd);
      }
    CHECK(bit_equal(heads.data(), whole.data(), whole.size()));
  }
}

// The model's LayerNorm backward in parts: dinp alone (null dweight) over blocks of rows, and
// dweight, dbias over blocks of columns: the fused call's bits, for any cuts.
TEST_CASE("op: layernorm backward in parts (dinp by rows, dweight and dbias by columns) gives the fused bits") {
  struct Shape {
    int R, C;
  };
  for (Shape s : {Shape{7, 12}, Shape{130, 100}, Shape{64, 384}}) {
    CAPTURE(s.R);
    CAPTURE(s.C);
    const int R = s.R, C = s.C;
    Rng rng(204);
    const VF inp = randn(rng, (size_t)R * C, 1.7, 0.6);
    const VF w = randn(rng, C, 0.3, 1.0), b = randn(rng, C, 0.5);
    const VF dout = randn(rng, (size_t)R * C);
    VF out((size_t)R * C), mean(R), rstd(R);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), R, C);
    const VF dinp0 = randn(rng, (size_t)R * C), dw0 = randn(rng, C), db0 = randn(rng, C);  // all +=
    VF dinp = dinp0, dw = dw0, db = db0;
    layernorm_backward(dinp.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), mean.data(),
                       rstd.data(), R, C);
    VF pdinp = dinp0, pdw = dw0, pdb = db0;
    const int row_cuts[] = {0, 1, R / 3, R / 2 + 1, R};
    for (int k = 0; k + 1 < 5; ++k) {
      const int r0 = row_cuts[k], r1 = row_cuts[k + 1];
      const size_t off = (size_t)r0 * C;
      layernorm_backward(pdinp.data() + off, nullptr, nullptr, dout.data() + off, inp.data() + off, w.data(),
                         mean.data() + r0, rstd.data() + r0, r1 - r0, C);
    }
    const int col_cuts[] = {0, 3, C / 2, C - 1, C};
    for (int k = 0; k + 1 < 5; ++k)
      layernorm_backward_params(pdw.data(), pdb.data(), dout.data(), inp.data(), mean.data(), rstd.data(), R, C,
                                col_cuts[k], col_cuts[k + 1]);
    CHECK(bit_equal(pdinp.data(), dinp.data(), dinp.size()));
    CHECK(bit_equal(pdw.data(), dw.data(), C));
    CHECK(bit_equal(pdb.data(), db.data(), C));
    CHECK(!bit_equal(pdw.data(), dw0.data(), C));  // the sums did run
  }
}

// The decode runs the forward's kernels on one row. Where the forward computes its last row with the
// 1-row kernels too (n not a multiple of their 4-row blocks) the bits are the same; in a 4-row block
// GCC fuses other multiply-adds (FMA contraction), so there they agree to rounding.
TEST_CASE("op: attention decode (one new position) is the last row of the head forward") {
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (const AttShape& s : kAttShapes) {
    CAPTURE(ops.width);
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    const int hd = s.C / s.NH, C3 = 3 * s.C;
    Rng rng(403);
    const VF qkv = randn(rng, (size_t)s.T * C3, 1.5);
    VF scratch = nans(ops.attention_decode_scratch_floats(s.T, hd));  // sized once, for every n <= T
    for (int h = 0; h < s.NH; ++h)
      for (int n = 1; n <= s.T; ++n) {
        CAPTURE(h);
        CAPTURE(n);
        VF y = nans((size_t)n * hd), P = nans((size_t)n * n), fwd_scratch = nans(ops.attention_scratch_floats(n, hd));
        ops.attention_head_forward(y.data(), hd, P.data(), fwd_scratch.data(), qkv.data() + h * hd, n, s.C, hd);
        VF y1 = nans(hd);
        const float* head = qkv.data() + h * hd;
        ops.attention_head_decode(y1.data(), scratch.data(), head + (size_t)(n - 1) * C3, head + s.C, head + 2 * s.C,
                                  C3, n, hd);
        const float* last = y.data() + (size_t)(n - 1) * hd;
        if (n % 4 != 0) REQUIRE(std::memcmp(y1.data(), last, hd * sizeof(float)) == 0);
        double err = 0, scale = 1e-30;
        for (int d = 0; d < hd; ++d) {
          err = std::max(err, (double)std::fabs(y1[d] - last[d]));
          scale = std::max(scale, (double)std::fabs(last[d]));
        }
        if (std::getenv("CHARGPT_OPS_VERBOSE")) MESSAGE("decode: err " << err / scale);
        REQUIRE(err <= 5e-6 * scale);  // seen <= 6.5e-7
      }
  }
}

TEST_CASE("op: attention reference backward vs central differences through the full forward") {
  for (int k = 0; k < 3; ++k) {  // the three small multi-position shapes
    const AttShape s = kAttShapes[k];
    CAPTURE(s.N);
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    Rng rng(403);
    VD qkv = to_d(randn(rng, (size_t)s.N * s.T * 3 * s.C, 1.5));
    const VD G = to_d(randn(rng, (size_t)s.N * s.T * s.C));
    VD out(G.size()), probs((size_t)s.N * s.NH * s.T * s.T);
    auto L = [&] {
      ref::attention_forward(out.data(), probs.data(), qkv.data(), s.N, s.T, s.C, s.NH);
      return dot(out, G);
    };
    L();
    VD dqkv(qkv.size());
    ref::attention_backward(dqkv.data(), G.data(), qkv.data(), probs.data(), s.N, s.T, s.C, s.NH);
    CHECK_CLOSE("d/dqkv", dqkv, numgrad(qkv, L), kTolNum);
  }
}

TEST_CASE("op: attention probs are causal and rows sum to 1") {
  for (const AttShape& s : kAttShapes) {
    CAPTURE(s.T);
    CAPTURE(s.C);
    CAPTURE(s.NH);
    Rng rng(404);
    const VF qkv = randn(rng, (size_t)s.N * s.T * 3 * s.C, 1.5);
    VF out(s.N * s.T * s.C), probs = nans((size_t)s.N * s.NH * s.T * s.T);
    attention_fwd(out.data(), probs.data(), qkv.data(), s.N, s.T, s.C, s.NH);
    size_t nonzero_above = 0, negative = 0;
    double worst_sum = 0;
    for (int r = 0; r < s.N * s.NH; ++r)
      for (int i = 0; i < s.T; ++i) {
        const float* p = probs.data() + ((size_t)r * s.T + i) * s.T;
        double sum = 0;
        for (int j = 0; j < s.T; ++j) {
          if (j > i && p[j] != 0.0f) ++nonzero_above;  // exactly zero, not just small
          if (!(p[j] >= 0.0f)) ++negative;              // also catches NaN
          sum += p[j];
        }
        worst_sum = std::max(worst_sum, std::fabs(sum - 1.0));
      }
    CHECK(nonzero_above == 0);
    CHECK(negative == 0);
    CHECK(worst_sum <= 1e-6);  // T <= 64 float probabilities, each rounded once after 1/sum
  }
}

TEST_CASE("op: attention output at position i does not depend on positions j > i") {
  const int N = 2, T = 9, C = 12, NH = 3;
  Rng rng(405);
  const VF qkv = randn(rng, (size_t)N * T * 3 * C, 1.5);
  VF out0((size_t)N * T * C), probs0((size_t)N * NH * T * T);
  attention_fwd(out0.data(), probs0.data(), qkv.data(), N, T, C, NH);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < T; ++j) {
      CAPTURE(n);
      CAPTURE(j);
      VF q2 = qkv;  // perturb q, k and v at (n, j)
      for (int c = 0; c < 3 * C; ++c) q2[((size_t)n * T + j) * 3 * C + c] += (float)(0.5 + rng.uniform());
      VF out((size_t)N * T * C), probs((size_t)N * NH * T * T);
      attention_fwd(out.data(), probs.data(), q2.data(), N, T, C, NH);
      for (int m = 0; m < N; ++m) {
        const float* a = out.data() + (size_t)m * T * C;
        const float* b = out0.data() + (size_t)m * T * C;
        // rows before j unchanged bit for bit (all rows in the other sequence)
        const int same_rows = m == n ? j : T;
        CHECK(bit_equal(a, b, (size_t)same_rows * C));
        for (int h = 0; h < NH; ++h) {
          const size_t off = ((size_t)m * NH + h) * T * T;
          CHECK(bit_equal(probs.data() + off, probs0.data() + off, (size_t)same_rows * T));
        }
        // and the perturbation does reach position j itself (the check above could otherwise pass vacuously)
        if (m == n) CHECK_FALSE(bit_equal(a + (size_t)j * C, b + (size_t)j * C, C));
      }
    }
}

// ---------------------------------------------------------------------------------------------
// gelu

namespace {
VF gelu_inputs(uint64_t seed, size_t n) {
  Rng rng(seed);
  VF x = randn(rng, n, 2.5);
  const float special[] = {0.f, 1e-3f, -1e-3f, 0.5f, -0.5f, 3.f, -3.f, 5.f, -5.f, 10.f, -10.f, 20.f, -20.f};
  for (size_t i = 0; i < std::size(special) && i < n; ++i) x[i * 7 % n] = special[i];
  return x;
}
}  // namespace

// gelu's error is measured per element against max(|ref|, 1) for the forward and max(|ref|, max|dout|) for
// the backward. A dense sweep of [-10, 10] (step 1e-3) covers the saturation regions, which random inputs may
// miss. Observed with pointwise_kernels.h's sigmoid form (no cancellation on either side): forward 1.3e-7, gelu' 1.9e-7
// (a naive 1 - 2/(e+1) tanh gave 2e-6 near x ~ -5; libm's tanhf 5.6e-7).
constexpr double kTolGelu = 1e-6, kTolGeluGrad = 1e-6;

static VF gelu_sweep() {
  VF x(20001);
  for (size_t i = 0; i < x.size(); ++i) x[i] = -10.f + 1e-3f * (float)i;
  return x;
}

TEST_CASE("op: gelu forward matches reference") {
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (const VF& x : {gelu_inputs(501, 1001), gelu_sweep()}) {
    CAPTURE(ops.width);
    CAPTURE(x.size());
    VF out = nans(x.size());
    ops.gelu_forward(out.data(), x.data(), x.size(), nullptr);
    VD ref(x.size());
    ref::gelu_forward(ref.data(), to_d(x).data(), x.size());
    CHECK_CLOSE_F("gelu out", out, ref, kTolGelu, 1.0);
  }
}

TEST_CASE("op: gelu backward matches reference, also in place (dinp == dout)") {
  const VF xr = gelu_inputs(502, 1001), xs = gelu_sweep();
  Rng rng(503);
  const VF doutr = randn(rng, xr.size()), douts(xs.size(), 1.0f);
  for (const test::OpsAtWidth& ops : test::ops_at_every_width())
  for (int k = 0; k < 2; ++k) {
    const VF& x = k == 0 ? xr : xs;
    const VF& dout = k == 0 ? doutr : douts;
    CAPTURE(ops.width);
    CAPTURE(x.size());
    VF dinp = nans(x.size());
    ops.gelu_backward(dinp.data(), x.data(), dout.data(), x.size());
    VD ref(x.size());
    ref::gelu_backward(ref.data(), to_d(x).data(), to_d(dout).data(), x.size());
    double dmax = 0;
    for (float d : dout) dmax = std::max(dmax, (double)std::fabs(d));
    CHECK_CLOSE_F("gelu dinp", dinp, ref, kTolGeluGrad, dmax);
    VF inplace = dout;
    ops.gelu_backward(inplace.data(), x.data(), inplace.data(), x.size());
    CHECK(bit_equal(inplace.data(), dinp.data(), x.size()));
  }
}

TEST_CASE("op: gelu reference backward vs central differences") {
  VD x = to_d(gelu_inputs(504, 257));
  Rng rng(505);
  const VD G = to_d(randn(rng, x.size()));
  VD out(x.size());
  auto L = [&] {
    ref::gelu_forward(out.data(), x.data(), x.size());
    return dot(out, G);
  };
  VD dx(x.size(), 777.0);  // = convention
  ref::gelu_backward(dx.data(), x.data(), G.data(), x.size());
  CHECK_CLOSE("d/dinp", dx, numgrad(x, L), kTolNum);
}

// ---------------------------------------------------------------------------------------------
// residual (no backward of its own: its gradient is the identity for both inputs)

TEST_CASE("op: residual forward matches reference, also in place (out == a, as model.cpp uses it)") {
  Rng rng(601);
  const size_t n = 7 * 12 + 5;
  const VF a = randn(rng, n), b = randn(rng, n, 3.0);
  VF out = nans(n);
  residual_forward(out.data(), a.data(), b.data(), n);
  VD ref(n);
  ref::residual_forward(ref.data(), to_d(a).data(), to_d(b).data(), n);
  // per element, relative: one float rounding of the exact sum, <= 2^-24
  CHECK_CLOSE_F("residual out", out, ref, 1e-7, 0.0);
  VF inplace = a;
  residual_forward(inplace.data(), inplace.data(), b.data(), n);
  CHECK(bit_equal(inplace.data(), out.data(), n));
}

// ---------------------------------------------------------------------------------------------
// softmax + cross-entropy

TEST_CASE("op: softmax_crossentropy forward matches reference, also in place (probs == logits)") {
  struct Shape {
    int R, V;
  };
  for (Shape s : {Shape{7, 13}, Shape{9, 65}, Shape{128, 65}}) {
    CAPTURE(s.R);
    CAPTURE(s.V);
    const int R = s.R, V = s.V;
    Rng rng(701);
    VF logits = randn(rng, (size_t)R * V, 3.0);
    const VI tgt = random_tokens(rng, R, V);
    // stability rows: a huge common offset; a target far below the max (float prob underflows to 0)
    for (int i = 0; i < V; ++i) logits[(size_t)1 * V + i] += 1000.f;
    logits[(size_t)2 * V + tgt[2]] = -150.f;
    logits[(size_t)2 * V + (tgt[2] + 1) % V] = 40.f;
    VF losses = nans(R), probs = nans(logits.size());
    softmax_crossentropy_forward(losses.data(), probs.data(), logits.data(), tgt.data(), R, V);
    VD rlosses(R), rprobs(logits.size());
    ref::softmax_crossentropy_forward(rlosses.data(), rprobs.data(), to_d(logits).data(), tgt.data(), R, V);
    // losses: per row, |fast - ref| / max(|ref|, 1) <= 1e-5 (log-sum-exp in float), except row 1 below
    {
      VF l_other = losses;
      VD r_other = rlosses;
      l_other[1] = 0.f;
      r_other[1] = 0.0;
      CHECK_CLOSE_F("losses", l_other, r_other, 1e-5, 1.0);
      // row 1: log(sum) + mx is rounded to float at |mx| ~ 1000, whose half-ulp is 3.05e-5
      const double e1 = std::fabs((double)losses[1] - rlosses[1]);
      INFO("row 1 (logits ~ 1000): got " << losses[1] << " want " << rlosses[1]);
      CHECK(e1 <= 4e-5);
    }
    // probs: relative to the array's scale (max ~ 1): 2e-6 (seen 3.5e-7)
    CHECK_CLOSE("probs", probs, rprobs, 2e-6);
    CHECK(std::isfinite(losses[2]));
    CHECK(losses[2] > 180.f);  // about 190: -(-150) + 40, not -log(0)

    VF inplace = logits, ilosses = nans(R);  // probs written over logits
    softmax_crossentropy_forward(ilosses.data(), inplace.data(), inplace.data(), tgt.data(), R, V);
    CHECK(bit_equal(inplace.data(), probs.data(), probs.size()));
    CHECK(bit_equal(ilosses.data(), losses.data(), R));
  }
}

TEST_CASE("op: softmax_crossentropy backward matches reference, also in place (dlogits == probs)") {
  const int R = 9, V = 65;
  Rng rng(702);
  const VF logits = randn(rng, (size_t)R * V, 3.0);
  const VI tgt = random_tokens(rng, R, V);
  const float dloss = 1.0f / 7.0f;  // not 1, so a forgotten factor shows up
  VF losses(R), probs(logits.size());
  softmax_crossentropy_forward(losses.data(), probs.data(), logits.data(), tgt.data(), R, V);
  VD rlosses(R), rprobs(logits.size());
  ref::softmax_crossentropy_forward(rlosses.data(), rprobs.data(), to_d(logits).data(), tgt.data(), R, V);
  VF dlogits = nans(logits.size());  // = convention
  softmax_crossentropy_backward(dlogits.data(), probs.data(), tgt.data(), dloss, R, V);
  VD rdlogits(logits.size(), 5.0);
  ref::softmax_crossentropy_backward(rdlogits.data(), rprobs.data(), tgt.data(), (double)dloss, R, V);
  CHECK_CLOSE("dlogits", dlogits, rdlogits, 1e-6);  // relative to the scale (~dloss); seen 1.6e-7
  VF inplace = probs;
  softmax_crossentropy_backward(inplace.data(), inplace.data(), tgt.data(), dloss, R, V);
  CHECK(bit_equal(inplace.data(), dlogits.data(), dlogits.size()));
}

TEST_CASE("op: softmax_crossentropy reference backward vs central differences") {
  const int R = 7, V = 13;
  Rng rng(703);
  VD logits = to_d(randn(rng, (size_t)R * V, 3.0));
  const VI tgt = random_tokens(rng, R, V);
  const double dloss = 0.37;
  VD losses(R), probs(logits.size());
  auto L = [&] {
    ref::softmax_crossentropy_forward(losses.data(), probs.data(), logits.data(), tgt.data(), R, V);
    double s = 0;
    for (double l : losses) s += l * dloss;
    return s;
  };
  L();
  VD d(logits.size());
  ref::softmax_crossentropy_backward(d.data(), probs.data(), tgt.data(), dloss, R, V);
  CHECK_CLOSE("d/dlogits", d, numgrad(logits, L), kTolNum);
}

// ---------------------------------------------------------------------------------------------
// The tolerances above are tight enough to fail on a wrong index.

TEST_CASE("op: tolerances catch a wrong index") {
  Rng rng(801);
  {  // attention: heads of v read one column off
    const int N = 2, T = 9, C = 12, NH = 3;
    const VF qkv = randn(rng, (size_t)N * T * 3 * C, 1.5);
    VF out((size_t)N * T * C), probs((size_t)N * NH * T * T);
    attention_fwd(out.data(), probs.data(), qkv.data(), N, T, C, NH);
    VD shifted = to_d(qkv);
    for (int p = 0; p < N * T; ++p)
      for (int c = 2 * C; c + 1 < 3 * C; ++c) shifted[(size_t)p * 3 * C + c] = qkv[(size_t)p * 3 * C + c + 1];
    VD rout(out.size()), rprobs(probs.size());
    ref::attention_forward(rout.data(), rprobs.data(), shifted.data(), N, T, C, NH);
    CHECK(compare(out, rout).err > 100 * kTolFloat);
  }
  {  // layernorm backward: dinp overwritten instead of accumulated
    const int R = 7, C = 12;
    const VF inp = randn(rng, (size_t)R * C), w = randn(rng, C, 0.3, 1.0), b = randn(rng, C);
    const VF dout = randn(rng, (size_t)R * C);
    VD rout((size_t)R * C), rmean(R), rrstd(R);
    ref::layernorm_forward(rout.data(), rmean.data(), rrstd.data(), to_d(inp).data(), to_d(w).data(),
                           to_d(b).data(), R, C);
    VD pre = to_d(randn(rng, (size_t)R * C)), zero((size_t)R * C, 0.0), dw(C, 0.0), db(C, 0.0);
    VD acc = pre;
    ref::layernorm_backward(acc.data(), dw.data(), db.data(), to_d(dout).data(), to_d(inp).data(), to_d(w).data(),
                            rmean.data(), rrstd.data(), R, C);
    ref::layernorm_backward(zero.data(), dw.data(), db.data(), to_d(dout).data(), to_d(inp).data(),
                            to_d(w).data(), rmean.data(), rrstd.data(), R, C);
    CHECK(compare(zero, acc).err > 100 * kTolFloat);
    CHECK(compare(add(zero, pre), acc).err <= 1e-12);
  }
  {  // a NaN anywhere fails the comparison
    VF a(5, 1.f);
    VD b(5, 1.0);
    a[3] = std::numeric_limits<float>::quiet_NaN();
    const Worst w = compare(a, b);
    CHECK(w.err > 1.0);
    CHECK(w.idx == 3);
  }
}

// ---------------------------------------------------------------------------------------------
// The KV-cache step's matrix-vector rows, and the two bookkeeping ops of a step.

TEST_CASE("op: matvec_rows matches reference, and any split of the rows gives the same bits") {
  for (const MmShape& s : kMmShapes) {
    CAPTURE(s.IC);
    CAPTURE(s.OC);
    Rng rng(901);
    const VF x = randn(rng, s.IC), w = randn(rng, (size_t)s.OC * s.IC, 0.3), b = randn(rng, s.OC, 2.0);
    for (bool with_bias : {true, false}) {
      CAPTURE(with_bias);
      VF whole = nans(s.OC);
      matvec_rows(whole.data(), w.data(), with_bias ? b.data() : nullptr, x.data(), s.IC, 0, s.OC);
      VD ref(s.OC);
      const VD db = to_d(b);
      ref::matmul_forward(ref.data(), to_d(x).data(), to_d(w).data(), with_bias ? db.data() : nullptr, 1, s.IC, s.OC);
      CHECK_CLOSE("matvec out", whole, ref, kTolFloat);
      // Rows in blocks of 3 and 32 (tails of 1..3 rows included): bit-identical.
      for (int blk : {3, 32}) {
        VF split = nans(s.OC);
        for (int o0 = 0; o0 < s.OC; o0 += blk)
          matvec_rows(split.data(), w.data(), with_bias ? b.data() : nullptr, x.data(), s.IC, o0,
                      std::min(s.OC, o0 + blk));
        CHECK(std::memcmp(split.data(), whole.data(), whole.size() * sizeof(float)) == 0);
      }
    }
  }
  // A wrong index is caught: row 5 computed from row 6's weights.
  const int IC = 20, OC = 9;
  Rng rng(902);
  const VF x = randn(rng, IC), w = randn(rng, (size_t)OC * IC, 0.3);
  VF out(OC);
  matvec_rows(out.data(), w.data(), nullptr, x.data(), IC, 0, OC);
  VD wd = to_d(w);
  for (int i = 0; i < IC; ++i) wd[5 * IC + i] = w[6 * IC + i];
  VD ref(OC);
  ref::matmul_forward(ref.data(), to_d(x).data(), wd.data(), (const double*)nullptr, 1, IC, OC);
  CHECK(compare(out, ref).err > 100 * kTolFloat);
}

TEST_CASE("op: fill_zero and loss_sum") {
  VF a = nans(37);
  fill_zero(a.data() + 1, 35);
  CHECK(std::isnan(a[0]));
  CHECK(std::isnan(a[36]));
  for (int i = 1; i < 36; ++i) CHECK(a[i] == 0.f);
  const VF l = {1.5f, 2.25f, 1e-8f, 3.f};
  CHECK(loss_sum(l.data(), l.size()) == ((1.5 + 2.25) + (double)1e-8f) + 3.0);
  CHECK(loss_sum(l.data(), 0) == 0.0);
}

// ---------------------------------------------------------------------------
// bf16 copies (for a backend whose products read bf16: Backend::wants_bf16_inputs).

namespace {
// x rounded to bf16 bits (8 significant bits, ties to even), independently of to_bf16's
// bit trick or instruction: x = m·2^e with 0.5 <= |m| < 1; keep 8 bits of m. Normal numbers only.
uint16_t ref_bf16_bits(float x) {
  int e = 0;
  const double m = std::frexp((double)x, &e);
  const float r = (float)std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);  // nearbyint: ties to even
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return (uint16_t)(u >> 16);
}
std::vector<uint16_t> to_bf16_vec(const VF& v) {
  std::vector<uint16_t> r(v.size());
  to_bf16(r.data(), v.data(), v.size());
  return r;
}
}  // namespace

TEST_CASE("op: to_bf16 rounds to nearest even like an independent rounding, any length, NaN stays NaN") {
  Rng rng(901);
  VF x = randn(rng, 1000, 3.0);
  // ties (the lower 16 bits exactly 0x8000, both parities) and values that round up into the next binade
  for (uint32_t u : {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f7fffffu, 0x3f7f8000u, 0x4b7f8000u}) {
    float f;
    std::memcpy(&f, &u, 4);
    x.push_back(f);
  }
  for (size_t n : {size_t(0), size_t(1), size_t(15), size_t(16), size_t(17), size_t(31), size_t(33), x.size()}) {
    CAPTURE(n);
    std::vector<uint16_t> got(n + 1, 0xabcd);
    to_bf16(got.data(), x.data(), n);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += got[i] != ref_bf16_bits(x[i]);
    CHECK(bad == 0);
    CHECK(got[n] == 0xabcd);  // nothing written past n
  }
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  uint16_t h = 0;
  to_bf16(&h, &qnan, 1);
  CHECK((h & 0x7f80) == 0x7f80);
  CHECK((h & 0x007f) != 0);  // still a NaN, not an infinity
}

TEST_CASE("op: layernorm and gelu bf16 copies are to_bf16 of their fp32 outputs, which do not change") {
  Rng rng(902);
  for (int C : {12, 128, 130}) {
    CAPTURE(C);
    const int R = 9;
    const VF inp = randn(rng, (size_t)R * C, 1.7, 0.6), w = randn(rng, C, 0.3, 1.0), b = randn(rng, C, 0.5);
    VF out = nans((size_t)R * C), mean = nans(R), rstd = nans(R);
    layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), R, C);
    VF out2 = nans(out.size()), mean2 = nans(R), rstd2 = nans(R);
    std::vector<uint16_t> o16(out.size() + 1, 0xabcd);
    layernorm_forward(out2.data(), mean2.data(), rstd2.data(), inp.data(), w.data(), b.data(), R, C, o16.data());
    CHECK(bit_equal(out.data(), out2.data(), out.size()));
    CHECK(bit_equal(mean.data(), mean2.data(), R));
    CHECK(bit_equal(rstd.data(), rstd2.data(), R));
    o16.pop_back();
    CHECK(o16 == to_bf16_vec(out));
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(o16[i] == ref_bf16_bits(out[i]));
  }
  // gelu: lengths around its 1024-float blocks and the 16-float vectors
  for (size_t n : {size_t(5), size_t(1024), size_t(1040), size_t(3000), size_t(3011)}) {
    CAPTURE(n);
    const VF x = randn(rng, n, 2.0);
    VF out = nans(n), out2 = nans(n);
    gelu_forward(out.data(), x.data(), n);
    std::vector<uint16_t> o16(n + 1, 0xabcd);
    gelu_forward(out2.data(), x.data(), n, o16.data());
    CHECK(bit_equal(out.data(), out2.data(), n));
    CHECK(o16[n] == 0xabcd);
    o16.pop_back();
    CHECK(o16 == to_bf16_vec(out));
    for (size_t i = 0; i < n; ++i) REQUIRE(o16[i] == ref_bf16_bits(out[i]));
  }
}
