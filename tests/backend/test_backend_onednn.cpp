// The oneDNN backend: its linear products (fp32, and bf16 on AVX512-BF16 or AMX) against
// the double-precision reference, bf16 training (loss against fp32, bit-identical
// for any thread count and across a resume), the weight-copy schedule, and the
// CLI flags. A case that needs oneDNN where it is not built, or bf16 where the CPU
// has neither AVX512-BF16 nor AMX-BF16, is skipped (CHARGPT_SKIP: CTest counts it as
// skipped, not passed).
// (Every backend's products against the reference, bf16 included wherever oneDNN
// has bf16 kernels: test_conformance.cpp.)
//
// Tolerances: a rigorous per-element bound, not a guess. For one output
// y = Σ_k a_k·b_k (+ bias, + the old value when accumulating) with
// S = Σ_k |a_k||b_k| (+ |bias| + |old|):
//  - fp32 products, any summation order: |y - y_ref| <= γ_{K+2}·S, γ_n = n·2^-24/(1 - n·2^-24)
//    (K-1 adds, one multiply, the bias or accumulate add).
//  - bf16: each input is rounded to bf16 (8 significant bits, round to nearest even:
//    relative error <= u = 2^-8). a'b' = ab(1+δa)(1+δb), so the rounding of the inputs
//    moves y by at most (2u + u²)·S; the products of bf16 values are exact in fp32 and
//    the sums are fp32: another γ_{K+2}·S. Total: (2u + u² + γ_{K+2})·S, about
//    7.8e-3 relative to S (a typical error is about 2e-3; the bound is
//    the worst case, so it can never fail spuriously). A wrong index moves an output
//    by O(1/sqrt(K)) relative to S (0.1..0.5 for these shapes), far above the bound:
//    the "catches a wrong index" case shows it.
//  - bf16 against a reference whose inputs were rounded to bf16 first (by this file's
//    own rounding, via frexp/nearbyint): only the fp32 sums remain, γ_{K+2}·S. This
//    checks that the backend rounds to nearest even and sums in fp32.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "backend/backend.h"
#include "backend/recording_backend.h"
#include "io/checkpoint.h"
#include "io/data.h"
#include "engine/engine.h"
#include "model/model.h"
#include "ops/ops.h"
#include "model/optim.h"
#include "ops/ref_ops.h"
#include "base/rng.h"
#include "train/train.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::bytes_of;
using chargpt::test::randn;
using chargpt::test::run_cli;
using chargpt::test::TempDir;

namespace {

using VF = std::vector<float>;
using VD = std::vector<double>;

constexpr BackendOptions kBf16{BackendKind::onednn, Precision::bf16, false};
constexpr BackendOptions kF32{BackendKind::onednn, Precision::fp32, false};

// The backend, or null with the case marked skipped (why it cannot run here).
std::unique_ptr<Backend> backend_or_skip(const BackendOptions& opt) {
  try {
    return make_backend(opt);
  } catch (const std::exception& e) {
    test::mark_skipped(e.what());
    return nullptr;
  }
}
VD to_d(const VF& v) { return VD(v.begin(), v.end()); }
VD absd(const VF& v) {
  VD d(v.size());
  for (size_t i = 0; i < v.size(); ++i) d[i] = std::fabs((double)v[i]);
  return d;
}

// x rounded to bf16 (8 significant bits, ties to even), computed independently of
// the backend's bit trick: x = m·2^e with 0.5 <= |m| < 1; keep 8 bits of m.
float round_bf16(float x) {
  int e = 0;
  const double m = std::frexp((double)x, &e);
  return (float)std::ldexp(std::nearbyint(std::ldexp(m, 8)), e - 8);  // nearbyint: ties to even
}
VD rounded_bf16(const VF& v) {
  VD d(v.size());
  for (size_t i = 0; i < v.size(); ++i) d[i] = round_bf16(v[i]);
  return d;
}

constexpr double kU = 1.0 / 256;  // bf16 unit roundoff, 2^-8
double gamma(int n) {
  const double u = std::ldexp(1.0, -24);
  return n * u / (1 - n * u);
}
double bf16_tol(int K) { return 2 * kU + kU * kU + gamma(K + 2); }
double fp32_tol(int K) { return gamma(K + 2); }
// Against a reference whose inputs were rounded to bf16: S grows by at most (1+u)² with them.
double rounded_tol(int K) { return gamma(K + 2) * (1 + 3 * kU); }

using chargpt::test::worst;
// max_i |got_i - want_i| / S_i: the observed relative error, for the messages.
double rel_err(const VF& got, const VD& want, const VD& S) { return worst(got, want, S, 1.0); }

// A parameter-block stand-in: the weight is the middle one of three tensors of a
// bound block (as in the model), so the backend's lookup by tensor is exercised.
struct Block {
  VF p;
  size_t off;
  Block(const VF& w, size_t pad, Rng& rng) : p(randn(rng, w.size() + 2 * pad)), off(pad) {
    std::copy(w.begin(), w.end(), p.begin() + (ptrdiff_t)pad);
  }
  WeightTable table() const {
    const size_t n = p.size() - 2 * off;
    return {p.data(), p.size(), {{0, off}, {off, n}, {off + n, off}}};
  }
  Weight w() const { return {p.data() + off, 1}; }
};

// A block that is one tensor.
WeightTable one_tensor(const VF& w) { return {w.data(), w.size(), {{0, w.size()}}}; }

struct Shape {
  int R, IC, OC;
};
// Odd shapes (a wrong stride shows), then the baby model's own (qkv, mlp proj, LM head).
constexpr Shape kShapes[] = {{7, 13, 20}, {33, 5, 17}, {128, 128, 384}, {96, 512, 128}, {64, 128, 65}};

// One forward and backward of a linear layer on backend `be`, checked against
// the double reference (inputs exact or bf16-rounded) within tol(K)·S.
void check_linear(Backend& be, Shape s, bool bf16, uint64_t seed) {
  const int R = s.R, IC = s.IC, OC = s.OC;
  CAPTURE(R);
  CAPTURE(IC);
  CAPTURE(OC);
  Rng rng(seed);
  const VF inp = randn(rng, (size_t)R * IC), w = randn(rng, (size_t)OC * IC, 0.3), bias = randn(rng, OC, 0.5),
           dout = randn(rng, (size_t)R * OC, 0.7);
  Block blk(w, 1000, rng);
  be.bind_weights(blk.table());
  be.weights_changed(0, blk.p.size());
  auto tol = [&](int K) { return bf16 ? bf16_tol(K) : fp32_tol(K); };
  // References: exact inputs (wd...) and, for bf16, inputs rounded to bf16 first.
  const VD inpd = bf16 ? rounded_bf16(inp) : to_d(inp), wd = bf16 ? rounded_bf16(w) : to_d(w),
           doutd = bf16 ? rounded_bf16(dout) : to_d(dout);

  // forward: out = inp·Wᵀ + bias; S = Σ|inp||w| + |bias|
  VF out((size_t)R * OC, std::numeric_limits<float>::quiet_NaN());
  be.linear_forward(out.data(), {inp.data()}, blk.w(), {bias.data()}, R, IC, OC);
  VD ref(out.size()), S(out.size()), exact(out.size());
  ref::matmul_forward(exact.data(), to_d(inp).data(), to_d(w).data(), to_d(bias).data(), R, IC, OC);
  ref::matmul_forward(ref.data(), inpd.data(), wd.data(), to_d(bias).data(), R, IC, OC);
  ref::matmul_forward(S.data(), absd(inp).data(), absd(w).data(), absd(bias).data(), R, IC, OC);
  MESSAGE("forward: relative error " << rel_err(out, exact, S) << " (bound " << tol(IC) << ")");
  CHECK(worst(out, exact, S, tol(IC)) <= 1);
  CHECK(worst(out, ref, S, rounded_tol(IC)) <= 1);  // bf16: exactly the rounded inputs, summed in fp32
  if (bf16) CHECK(rel_err(out, exact, S) > 10 * fp32_tol(IC));  // it really ran in bf16

  for (bool accumulate : {false, true}) {
    CAPTURE(accumulate);
    // accumulate: dweight and dbias start from random values and get +=; otherwise
    // they start as NaN and must be overwritten.
    const VF dw0 = accumulate ? randn(rng, (size_t)OC * IC) : VF((size_t)OC * IC, NAN),
             db0 = accumulate ? randn(rng, OC) : VF(OC, NAN);
    VF dinp((size_t)R * IC, NAN), dw = dw0, db = db0;
    be.linear_backward(dinp.data(), dw.data(), db.data(), dout.data(), {inp.data()}, blk.w(), R, IC, OC, accumulate);
    auto start = [&](const VF& v0) { return accumulate ? to_d(v0) : VD(v0.size(), 0.0); };
    auto start_abs = [&](const VF& v0) { return accumulate ? absd(v0) : VD(v0.size(), 0.0); };
    VD rdi(dinp.size()), edi(dinp.size()), Sdi(dinp.size());
    VD rdw = start(dw0), edw = start(dw0), Sdw = start_abs(dw0), rdb = start(db0), Sdb = start_abs(db0);
    VD unused_dw(dw.size()), unused_db(db.size());
    // dinp = dout·W (K = OC); dW (+)= doutᵀ·inp (K = R); db (+)= Σ_r dout (fp32 in both precisions).
    ref::matmul_backward(edi.data(), edw.data(), rdb.data(), to_d(dout).data(), to_d(inp).data(), to_d(w).data(), R,
                         IC, OC);
    ref::matmul_backward(rdi.data(), rdw.data(), unused_db.data(), doutd.data(), inpd.data(), wd.data(), R, IC, OC);
    ref::matmul_backward(Sdi.data(), Sdw.data(), Sdb.data(), absd(dout).data(), absd(inp).data(), absd(w).data(), R,
                         IC, OC);
    MESSAGE("backward: dinp " << rel_err(dinp, edi, Sdi) << " dweight " << rel_err(dw, edw, Sdw) << " dbias "
                              << rel_err(db, rdb, Sdb));
    CHECK(worst(dinp, edi, Sdi, tol(OC)) <= 1);
    CHECK(worst(dinp, rdi, Sdi, rounded_tol(OC)) <= 1);
    CHECK(worst(dw, edw, Sdw, tol(R)) <= 1);
    CHECK(worst(dw, rdw, Sdw, rounded_tol(R)) <= 1);
    CHECK(worst(db, rdb, Sdb, fp32_tol(R)) <= 1);
    // dinp may be null (the first layer's input needs no gradient): dW and db are the same.
    VF dw2 = dw0, db2 = db0;
    be.linear_backward(nullptr, dw2.data(), db2.data(), dout.data(), {inp.data()}, blk.w(), R, IC, OC, accumulate);
    CHECK(std::memcmp(dw2.data(), dw.data(), dw.size() * 4) == 0);
    CHECK(std::memcmp(db2.data(), db.data(), db.size() * 4) == 0);
    // With the input's bf16 copy handed over (as the model does when the backend wants it),
    // the same bits; the fp32 input is then not read in bf16 (NaNs there change nothing).
    std::vector<uint16_t> inp16(inp.size());
    to_bf16(inp16.data(), inp.data(), inp.size());
    const VF poison(inp.size(), NAN);
    const float* inp_seen = bf16 ? poison.data() : inp.data();
    VF dinp3((size_t)R * IC, NAN), dw3 = dw0, db3 = db0;
    be.linear_backward(dinp3.data(), dw3.data(), db3.data(), dout.data(), {inp_seen, inp16.data()}, blk.w(), R, IC,
                       OC, accumulate);
    CHECK(std::memcmp(dinp3.data(), dinp.data(), dinp.size() * 4) == 0);
    CHECK(std::memcmp(dw3.data(), dw.data(), dw.size() * 4) == 0);
    CHECK(std::memcmp(db3.data(), db.data(), db.size() * 4) == 0);
  }
  std::vector<uint16_t> inp16(inp.size());
  to_bf16(inp16.data(), inp.data(), inp.size());
  const VF poison(inp.size(), NAN);
  VF out16((size_t)R * OC, NAN);
  be.linear_forward(out16.data(), {bf16 ? poison.data() : inp.data(), inp16.data()}, blk.w(), {bias.data()}, R, IC,
                    OC);
  CHECK(std::memcmp(out16.data(), out.data(), out.size() * 4) == 0);
  CHECK(be.wants_bf16_inputs() == bf16);
}

}  // namespace

TEST_CASE("onednn: bf16 linear forward and backward against the reference within the bf16 rounding bound") {
  auto be = backend_or_skip(kBf16);
  if (!be) return;
  CHECK(be->name() == "onednn bf16");
  uint64_t seed = 11;
  for (Shape s : kShapes) check_linear(*be, s, true, seed++);
}

TEST_CASE("onednn: fp32 linear forward and backward against the reference within fp32 rounding") {
  auto be = backend_or_skip(kF32);
  if (!be) return;
  CHECK(be->name() == "onednn fp32");
  uint64_t seed = 31;
  for (Shape s : kShapes) check_linear(*be, s, false, seed++);
}

TEST_CASE("onednn: the bf16 bound catches a wrong index") {
  auto be = backend_or_skip(kBf16);
  if (!be) return;
  Rng rng(77);
  for (Shape s : {Shape{7, 13, 20}, Shape{128, 128, 384}}) {
    const int R = s.R, IC = s.IC, OC = s.OC;
    CAPTURE(R);
  CAPTURE(IC);
  CAPTURE(OC);
    const VF inp = randn(rng, (size_t)R * IC), w = randn(rng, (size_t)OC * IC, 0.3);
    be->bind_weights(one_tensor(w));
    be->weights_changed(0, w.size());
    VF out((size_t)R * OC);
    be->linear_forward(out.data(), {inp.data()}, {w.data(), 0}, {}, R, IC, OC);
    VD S(out.size()), ref(out.size());
    ref::matmul_forward(S.data(), absd(inp).data(), absd(w).data(), (const double*)nullptr, R, IC, OC);
    ref::matmul_forward(ref.data(), to_d(inp).data(), to_d(w).data(), (const double*)nullptr, R, IC, OC);
    REQUIRE(worst(out, ref, S, bf16_tol(IC)) <= 1);  // the right reference passes...
    VD wd = to_d(w);                                  // ...a reference that swaps two weight rows fails
    for (int i = 0; i < IC; ++i) std::swap(wd[3 * IC + i], wd[4 * IC + i]);
    ref::matmul_forward(ref.data(), to_d(inp).data(), wd.data(), (const double*)nullptr, R, IC, OC);
    CHECK(worst(out, ref, S, bf16_tol(IC)) > 10);
    // ...and so does one that reads the input one column off.
    VD id = to_d(inp);
    for (size_t i = 0; i + 1 < id.size(); ++i) id[i] = inp[i + 1];
    ref::matmul_forward(ref.data(), id.data(), to_d(w).data(), (const double*)nullptr, R, IC, OC);
    CHECK(worst(out, ref, S, bf16_tol(IC)) > 10);
  }
}

TEST_CASE("onednn: a weight that is not the named tensor of the bound table is refused in bf16") {
  auto be = backend_or_skip(kBf16);
  if (!be) return;
  // Tensor 0 holds 90 floats, tensor 1 holds 10; a 9x10 weight fits tensor 0 but is given another array.
  VF block(100, 1.f), other(100, 1.f), inp(10, 1.f), out(10);
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {inp.data()}, {block.data(), 0}, {}, 1, 10, 1),
                       doctest::Contains("used before bind_weights"), std::logic_error);
  be->bind_weights({block.data(), block.size(), {{0, 90}, {90, 10}}});
  be->weights_changed(0, block.size());
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {inp.data()}, {other.data(), 0}, {}, 1, 9, 10),
                       doctest::Contains("does not point at that tensor"), std::logic_error);
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {inp.data()}, {block.data() + 90, 1}, {}, 1, 10, 10),
                       doctest::Contains("larger than the tensor"), std::logic_error);
  CHECK_THROWS_WITH_AS(be->linear_forward(out.data(), {inp.data()}, {block.data() + 90, 2}, {}, 1, 10, 1),
                       doctest::Contains("not a tensor of the bound table"), std::logic_error);
  be->linear_forward(out.data(), {inp.data()}, {block.data() + 90, 1}, {}, 1, 10, 1);
  CHECK(out[0] == 10.f);
}

namespace {

// The baby preset's width and context with 2 layers: the real product shapes, fast enough for a test.
Config small_config(int vocab) {
  return {.vocab_size = vocab, .block_size = 64, .n_layer = 2, .n_head = 4, .n_embd = 128};
}

struct Run {
  std::vector<double> losses;
  VF params;
};

Run train_steps(const BackendOptions& bo, int threads, int steps) {
  static const Dataset ds = load_dataset(CHARGPT_DATA_FILE);
  const Config cfg = small_config(ds.tok.size());
  Engine e(cfg, {.batch_size = 12, .shard_size = 0, .threads = threads, .seed = 1337}, bo);
  init_params(cfg, e.params(), 1337);
  e.weights_loaded();
  Run r;
  const AdamW opt;
  for (int s = 0; s < steps; ++s) r.losses.push_back(e.train_step(ds.train, 1e-3f, 1.0f, opt));
  r.params.assign(e.params(), e.params() + e.num_params());
  return r;
}

}  // namespace

TEST_CASE("onednn: 20 bf16 training steps track fp32 and are bit-identical for 1, 2 and 3 threads") {
  if (!backend_or_skip(kBf16)) return;
  const int steps = 20;
  const Run f32 = train_steps({}, 2, steps);
  std::vector<VF> weights;
  for (int threads : {1, 2, 3}) {
    CAPTURE(threads);
    const Run b = train_steps(kBf16, threads, steps);
    weights.push_back(b.params);
    if (threads > 1) CHECK(std::memcmp(b.params.data(), weights[0].data(), b.params.size() * 4) == 0);
    if (threads != 2) continue;
    // Bound: |loss_bf16 - loss_fp32| <= 0.02 at every step (about 0.5% of the loss, which falls from
    // 4.2 to about 2.9 here; observed at most ~0.005). The two runs see the same batches, so the
    // difference is the bf16 rounding of the products and what it did to the weights so far.
    double worst_diff = 0;
    for (int s = 0; s < steps; ++s) worst_diff = std::max(worst_diff, std::fabs(b.losses[s] - f32.losses[s]));
    MESSAGE("loss fp32 " << f32.losses[0] << " -> " << f32.losses[steps - 1] << ", bf16 " << b.losses[0] << " -> "
                         << b.losses[steps - 1] << ", largest step difference " << worst_diff);
    CHECK(worst_diff <= 0.02);
    CHECK(b.losses[steps - 1] < b.losses[0] - 0.5);  // it learned
    // ...and it is not secretly fp32: the weights differ.
    CHECK(std::memcmp(b.params.data(), f32.params.data(), b.params.size() * 4) != 0);
  }
}

TEST_CASE("onednn: the bf16 weight copy is refreshed once per step, over the whole block") {
  if (!backend_or_skip(kBf16)) return;
  const Dataset ds = load_dataset(CHARGPT_DATA_FILE);
  const Config cfg = small_config(ds.tok.size());
  auto recording = std::make_unique<test::RecordingBackend>(make_backend(kBf16));
  test::RecordingBackend& rec = *recording;
  Engine e(cfg, {.batch_size = 12, .shard_size = 0, .threads = 2, .seed = 1337}, std::move(recording));
  CHECK(rec.weight_syncs() == 0);
  init_params(cfg, e.params(), 1337);
  e.weights_loaded();
  CHECK(rec.weight_syncs() == 1);
  for (int s = 1; s <= 3; ++s) {
    e.train_step(ds.train, 1e-3f, 1.0f, AdamW{});
    CHECK(rec.weight_syncs() == (size_t)(1 + s));
  }
  // The engine's copy is exactly that of a fresh backend given the same weights: every weight
  // (the LM head = wte at offset 0, and the last layer's MLP projection) was refreshed.
  auto fresh = make_backend(kBf16);
  fresh->bind_weights(weight_table(cfg, e.params()));
  fresh->weights_changed(0, e.num_params());
  const ParamViews P = param_views(cfg, e.params());
  const int R = 64, C = cfg.n_embd;
  Rng rng(3);
  const VF x = randn(rng, (size_t)R * 4 * C);
  const Weight lm_head{P.wte, kWteTensor},
      fcproj{P.layers.back().fcproj_w, tensor_index(cfg.n_layer - 1, LayerTensor::fcproj_w)};
  for (auto [w, IC, OC] : {std::tuple{lm_head, C, cfg.vocab_size}, std::tuple{fcproj, 4 * C, C}}) {
    VF a((size_t)R * OC), b((size_t)R * OC);
    e.backend().linear_forward(a.data(), {x.data()}, w, {}, R, IC, OC);
    fresh->linear_forward(b.data(), {x.data()}, w, {}, R, IC, OC);
    CHECK(std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
  }
}

TEST_CASE("onednn: a bf16 run split and resumed gives the same bits as one run") {
  if (!backend_or_skip(kBf16)) return;
  TempDir dir("onednn_resume");
  TrainOptions whole;
  whole.data_path = CHARGPT_DATA_FILE;
  whole.out_path = dir / "whole.safetensors";
  whole.model = small_config(0);
  whole.batch_size = 12;
  whole.steps = 20;
  whole.warmup = 5;
  whole.eval_interval = 0;
  whole.eval_iters = 2;
  whole.threads = 2;
  whole.quiet = true;
  whole.lr_decay_steps = 20;
  whole.backend = kBf16;
  std::ostringstream sink;
  train(whole, sink);
  TrainOptions part = whole;
  part.out_path = dir / "part.safetensors";
  part.steps = 10;
  train(part, sink);
  CHECK(bytes_of(part.out_path) != bytes_of(whole.out_path));
  part.steps = 20;
  part.resume = true;
  part.threads = 1;
  const TrainResult r = train(part, sink);
  CHECK(r.steps_this_run == 10);
  CHECK(bytes_of(part.out_path) == bytes_of(whole.out_path));
  CHECK(bytes_of(optim_state_path(part.out_path)) == bytes_of(optim_state_path(whole.out_path)));
}

namespace {
const std::string kCliModel =
    " --n-layer 1 --n-embd 32 --n-head 2 --block-size 16 --batch-size 4 --data " CHARGPT_DATA_FILE;
}  // namespace

TEST_CASE("cli: --backend and --precision usage errors name the flag and the value, whatever the build") {
  TempDir dir("onednn_cli");
  const std::string ck = dir / "m.safetensors", model = kCliModel;
  auto r = run_cli("train --precision fp16 --out " + ck + model);
  CHECK(r.status == 2);
  CHECK(r.output.find("precision 'fp16' is not one of: fp32, bf16") != std::string::npos);
  r = run_cli("eval --backend mkl --checkpoint " + ck);
  CHECK(r.status == 2);
  CHECK(r.output.find("backend 'mkl' is not one of") != std::string::npos);
  r = run_cli("train --backend openblas --precision bf16 --steps 1 --out " + ck + model);
  CHECK(r.status == 2);
  CHECK(r.output.find("--precision bf16 is not offered by --backend openblas (with bf16: ") != std::string::npos);
}

TEST_CASE("cli: --backend onednn evaluates a checkpoint to the loss openblas gives") {
  if (!backend_or_skip(kF32)) return;
  TempDir dir("onednn_cli_fp32");
  const std::string ck = dir / "m.safetensors";
  REQUIRE(run_cli("train --steps 5 --eval-interval 0 --threads 2 --out " + ck + kCliModel).status == 0);
  auto loss = [&](const std::string& flags) {
    auto e = run_cli("eval --json --checkpoint " + ck + " --data " CHARGPT_DATA_FILE " " + flags);
    REQUIRE(e.status == 0);
    const auto at = e.output.find("\"loss\":");
    REQUIRE(at != std::string::npos);
    return std::stod(e.output.substr(at + 7));
  };
  const double lf = loss("--backend openblas"), lo = loss("--backend onednn");
  MESSAGE("eval loss: openblas fp32 " << lf << ", onednn fp32 " << lo);
  CHECK(std::fabs(lo - lf) < 1e-4);
}

namespace {
// The oneDNN kernel bf16 products run on here: AMX where the CPU has it, else AVX512-BF16.
std::string bf16_kernel() { return cpu_features().amx() ? "brg:avx512_core_amx_bf16" : "brg:avx512_core_bf16"; }
}  // namespace

TEST_CASE("cli: --precision bf16 on train, eval, sample and bench runs every product on the CPU's bf16 kernel") {
  if (!backend_or_skip(kBf16)) return;
  TempDir dir("onednn_cli_bf16");
  const std::string ck = dir / "m.safetensors", data = CHARGPT_DATA_FILE, model = kCliModel;
  // bf16 end to end (--precision bf16 alone picks onednn).
  auto r = run_cli("train --precision bf16 --steps 30 --eval-interval 0 --threads 2 --out " + ck + model);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("onednn bf16") != std::string::npos);
  auto loss = [&](const std::string& flags) {
    auto e = run_cli("eval --json --checkpoint " + ck + " --data " + data + " " + flags);
    REQUIRE(e.status == 0);
    const auto at = e.output.find("\"loss\":");
    REQUIRE(at != std::string::npos);
    return std::stod(e.output.substr(at + 7));
  };
  const double lf = loss("--backend openblas"), lb = loss("--precision bf16"), lo = loss("--backend onednn");
  MESSAGE("eval loss: openblas fp32 " << lf << ", onednn fp32 " << lo << ", onednn bf16 " << lb);
  CHECK(std::fabs(lo - lf) < 1e-4);
  CHECK(std::fabs(lb - lf) < 0.01);
  CHECK(lb != lf);
  for (const char* kv : {"", " --no-kv-cache"}) {
    r = run_cli("sample --precision bf16 --tokens 40 --temperature 0 --json --checkpoint " + ck + kv);
    CHECK(r.status == 0);
    CHECK(r.output.find("\"new_tokens\":40") != std::string::npos);
  }
  r = run_cli("bench --precision bf16 --threads 1 --steps 2 --warmup 1 --rounds 1 --sgemm-size 64 --json -q" + model);
  CHECK(r.status == 0);
  CHECK(r.output.find("\"precision\":\"bf16\"") != std::string::npos);
  // Every product ran on the bf16 kernel, with one OpenMP thread per worker (2 workers do not run 4 threads).
  setenv("DNNL_VERBOSE", "1", 1);
  r = run_cli("train --precision bf16 --steps 2 --eval-interval 0 --threads 2 --out " + dir / "v.safetensors" + model);
  unsetenv("DNNL_VERBOSE");
  CHECK(r.status == 0);
  CHECK(r.output.find("runtime:OpenMP,nthr:1") != std::string::npos);
  // (Products are the matmul executions; the once-a-step weight packing runs as reorders.)
  size_t execs = 0, on_kernel = 0;
  for (size_t at = r.output.find("onednn_verbose,exec,cpu,matmul,"); at != std::string::npos;
       at = r.output.find("onednn_verbose,exec,cpu,matmul,", at + 1)) {
    ++execs;
    const size_t eol = r.output.find('\n', at);
    on_kernel += r.output.substr(at, eol - at).find("," + bf16_kernel() + ",") != std::string::npos;
  }
  CAPTURE(bf16_kernel());
  CHECK(execs > 0);
  CHECK(on_kernel == execs);
  // A oneDNN limited below its bf16 kernels refuses bf16 (it would emulate it) and says why.
  setenv("DNNL_MAX_CPU_ISA", "AVX512_CORE", 1);
  r = run_cli("train --precision bf16 --steps 1 --out " + dir / "n.safetensors" + model);
  unsetenv("DNNL_MAX_CPU_ISA");
  CHECK(r.status == 1);
  CHECK(r.output.find("oneDNN cannot use it") != std::string::npos);
}

TEST_CASE("onednn: backend_info names oneDNN's version, its ISA and whether the CPU has AMX") {
  if (!backend_or_skip(kF32)) return;
  const std::string info = backend_info();
  MESSAGE(info);
  CHECK(info.find("\nonednn: ") != std::string::npos);
  CHECK(info.find(" (isa ") != std::string::npos);
  CHECK(info.find(", cpu amx_bf16 ") != std::string::npos);
}

TEST_CASE("onednn: backend_info names the kernel bf16 products run on") {
  if (!backend_or_skip(kBf16)) return;
  const std::string info = backend_info();
  MESSAGE(info);
  CHECK(info.find(cpu_features().amx() ? "isa avx512_core_amx" : "isa avx512_core_bf16") != std::string::npos);
  CHECK(info.find("onednn bf16 matmul: " + bf16_kernel()) != std::string::npos);
}

TEST_CASE("onednn: the KV step's matvec in bf16 is within the bf16 bound and independent of the row split") {
  auto be = backend_or_skip(kBf16);
  if (!be) return;
  Rng rng(5);
  const int IC = 133, OC = 70;  // not multiples of 16
  const VF w = randn(rng, (size_t)OC * IC, 0.3), x = randn(rng, IC), b = randn(rng, OC, 0.5);
  Block blk(w, 37, rng);
  be->bind_weights(blk.table());
  be->weights_changed(0, blk.p.size());
  VF whole(OC, NAN), split(OC, NAN);
  be->matvec_forward(whole.data(), blk.w(), {b.data()}, x.data(), IC, 0, OC);
  const int cuts[] = {0, 3, 17, 40, OC};
  for (int i = 0; i + 1 < 5; ++i)
    be->matvec_forward(split.data(), blk.w(), {b.data()}, x.data(), IC, cuts[i], cuts[i + 1]);
  CHECK(std::memcmp(whole.data(), split.data(), OC * 4) == 0);
  VD ref(OC), rref(OC), S(OC);
  ref::matmul_forward(ref.data(), to_d(x).data(), to_d(w).data(), to_d(b).data(), 1, IC, OC);
  ref::matmul_forward(rref.data(), rounded_bf16(x).data(), rounded_bf16(w).data(), to_d(b).data(), 1, IC, OC);
  ref::matmul_forward(S.data(), absd(x).data(), absd(w).data(), absd(b).data(), 1, IC, OC);
  MESSAGE("matvec: relative error " << rel_err(whole, ref, S));
  CHECK(worst(whole, ref, S, bf16_tol(IC)) <= 1);
  CHECK(worst(whole, rref, S, rounded_tol(IC)) <= 1);
  CHECK(rel_err(whole, ref, S) > 10 * fp32_tol(IC));
}
