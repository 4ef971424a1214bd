// --backend auto: the rule that picks a backend from the CPU's features and the build
// (on made-up CPUs, so that every branch runs on any machine), this machine's pick as
// the commands show and checkpoints record it, and the line a resume that changes
// backend prints.
#include <doctest/doctest.h>

#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "backend/backend_impl.h"
#include "base/cpu.h"
#include "io/checkpoint.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::bytes_of;
using chargpt::test::contains;
using chargpt::test::run_cli;
using chargpt::test::TempDir;

namespace {

#ifdef CHARGPT_HAVE_ONEDNN
constexpr bool kHaveOnednn = true;
#else
constexpr bool kHaveOnednn = false;
#endif

CpuFeatures avx2_cpu() {
  CpuFeatures f;
  f.avx2 = f.fma = true;
  return f;
}
CpuFeatures avx512_cpu() {
  CpuFeatures f = avx2_cpu();
  f.avx512f = f.avx512bw = true;
  return f;
}

// Whether oneDNN may run its bf16 kernels here (DNNL_MAX_CPU_ISA can forbid them), and its ISA.
bool onednn_bf16_usable() {
#ifdef CHARGPT_HAVE_ONEDNN
  return onednn_has_bf16_kernels();
#else
  return false;
#endif
}
std::string onednn_isa() {
  const std::string info = backend_info(), key = "(isa ";
  const size_t at = info.find(key);
  return at == std::string::npos ? "" : info.substr(at + key.size(), info.find(',', at) - at - key.size());
}

std::string text_of(const AutoChoice& c) { return c.error.empty() ? backend_choice_text(c.opt) : "error: " + c.error; }

}  // namespace

TEST_CASE("auto: fp32 runs on onednn with AVX2+FMA or AVX-512 where the build has it and else on openblas") {
  CpuFeatures none, avx2_no_fma;
  avx2_no_fma.avx2 = true;
  CpuFeatures f_only = avx2_cpu();  // AVX-512F without BW (Xeon Phi) is not AVX-512 here, but AVX2 still is
  f_only.avx512f = true;
  const std::string dnn = kHaveOnednn ? "onednn fp32 (auto: " : "openblas fp32 (auto: ";
  const std::string no_dnn = "openblas fp32 (auto: no oneDNN in this build)";
  CHECK(text_of(choose_backend(Precision::fp32, avx512_cpu())) == (kHaveOnednn ? dnn + "AVX-512)" : no_dnn));
  CHECK(text_of(choose_backend(Precision::fp32, avx2_cpu())) == (kHaveOnednn ? dnn + "AVX2)" : no_dnn));
  CHECK(text_of(choose_backend(Precision::fp32, f_only)) == (kHaveOnednn ? dnn + "AVX2)" : no_dnn));
  CHECK(text_of(choose_backend(Precision::fp32, avx2_no_fma)) ==
        (kHaveOnednn ? "openblas fp32 (auto: no AVX2)" : no_dnn));
  CHECK(text_of(choose_backend(Precision::fp32, none)) == (kHaveOnednn ? "openblas fp32 (auto: no AVX2)" : no_dnn));
  // What it picks is a backend, not "auto", and one that passes the options check.
  const AutoChoice c = choose_backend(Precision::fp32, avx512_cpu());
  CHECK(c.opt.precision == Precision::fp32);
  CHECK(backend_options_error(c.opt) == "");
}

TEST_CASE("auto: bf16 runs on onednn where the CPU has AVX512-BF16 or AMX-BF16 and elsewhere one line says what is missing") {
  const AutoChoice no = choose_backend(Precision::bf16, avx512_cpu());
  CHECK(no.error.starts_with(
      "--precision bf16 needs AVX512-BF16 or AMX-BF16; this CPU has neither (avx2 fma avx512f avx512bw)"));
  CHECK(choose_backend(Precision::bf16, CpuFeatures{}).error.starts_with(
      "--precision bf16 needs AVX512-BF16 or AMX-BF16; this CPU has neither ((none of avx2, avx512, amx))"));
  CpuFeatures zen4 = avx512_cpu(), spr = avx512_cpu(), tile_only = avx512_cpu();
  zen4.avx512_bf16 = true;
  spr.avx512_bf16 = spr.amx_tile = spr.amx_bf16 = true;
  tile_only.amx_tile = true;  // AMX-TILE without AMX-BF16 multiplies no bf16
  CHECK(choose_backend(Precision::bf16, tile_only).error.starts_with("--precision bf16 needs AVX512-BF16 or AMX-BF16"));
  if (kHaveOnednn) {
    CHECK(text_of(choose_backend(Precision::bf16, zen4)) == "onednn bf16 (auto: AVX512-BF16)");
    CHECK(text_of(choose_backend(Precision::bf16, spr)) == "onednn bf16 (auto: AMX-BF16)");
  } else {
    CHECK(contains(choose_backend(Precision::bf16, zen4).error, "configure with -DCHARGPT_ONEDNN=ON"));
  }
}

TEST_CASE("auto: the names a header and a checkpoint show") {
  CHECK(backend_text({BackendKind::openblas, Precision::fp32, false}) == "openblas fp32");
  CHECK(backend_text({BackendKind::cuda, Precision::fp32, true}) == "cuda fp32 tf32");
  CHECK(backend_choice_text({BackendKind::onednn, Precision::bf16, false}) == "onednn bf16");
  CHECK(backend_choice_text({BackendKind::onednn, Precision::fp32, false, "AVX-512"}) == "onednn fp32 (auto: AVX-512)");
  CHECK(contains(cpu_description(), " (" + cpu_features_text() + ")"));
}

TEST_CASE("auto: on this machine bf16 is offered exactly where the CPU has bf16 instructions") {
  const BackendOptions bf16{BackendKind::onednn, Precision::bf16, false};
  const std::string err = test::error_of([&] { make_backend(bf16); });
  MESSAGE("cpu: " << cpu_description() << "; onednn bf16: " << (err.empty() ? "runs" : err));
  if (!cpu_features().bf16()) {
    CHECK(contains(err, "--precision bf16 needs AVX512-BF16 or AMX-BF16; this CPU has neither (" +
                            cpu_features_text() + ")"));
  } else if (kHaveOnednn) {
    // (DNNL_MAX_CPU_ISA can hold oneDNN below its bf16 kernels: then it says so.)
    CHECK(err == (onednn_bf16_usable() ? "" : "--precision bf16: the CPU has " +
                                                  std::string(cpu_features().amx() ? "AMX-BF16" : "AVX512-BF16") +
                                                  " but oneDNN cannot use it (its ISA is " + onednn_isa() +
                                                  ": DNNL_MAX_CPU_ISA set lower, or the kernel refused AMX); use "
                                                  "--precision fp32"));
  } else {
    CHECK(contains(err, "this build has no onednn"));
  }
}

TEST_CASE("cli: the default is auto and train/eval/sample/bench/info name its pick and the checkpoint records it") {
  TempDir dir("auto_cli");
  const std::string data = test::write_corpus(dir), ck = dir / "a.safetensors";
  const AutoChoice pick = choose_backend(Precision::fp32);
  const std::string shown = backend_choice_text(pick.opt);
  auto r = run_cli("train --steps 2 --threads 1 --data " + data + test::kTinyShapeFlags + " --out " + ck);
  CAPTURE(r.output);
  REQUIRE(r.status == 0);
  CHECK(contains(r.output, ", products: " + shown + "\n"));
  CHECK(contains(shown, " (auto: "));
  Metadata meta;
  load_model(ck, &meta);
  CHECK(meta["trained_with"] == backend_text(pick.opt));
  CHECK(meta["trained_on"] == cpu_description());
  r = run_cli("eval --checkpoint " + ck + " --data " + data);
  CHECK(r.status == 0);
  CHECK(contains(r.output, "; products: " + shown + ")"));
  r = run_cli("sample --tokens 5 --checkpoint " + ck);
  CHECK(r.status == 0);
  CHECK(contains(r.output, ", products: " + shown + ", "));
  const auto bench = test::run_cli_apart("bench --threads 1 --steps 1 --warmup 0 --rounds 1 --sgemm-size 64 --json -q "
                                         "--n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --data " +
                                         data);
  REQUIRE(bench.status == 0);
  CHECK(contains(bench.err, "; products: " + shown + "\n"));
  const auto j = nlohmann::json::parse(bench.out)["method"];
  CHECK(j["backend"] == backend_name(pick.opt.kind));
  CHECK(j["backend_auto"] == pick.opt.auto_reason);
  r = run_cli("info");
  CHECK(contains(r.output, "\nauto picks: " + shown + "; with --precision bf16: "));
  CHECK(contains(r.output, "\nauto rule: fp32 on onednn where the build has it and the CPU has AVX2 and FMA or AVX-512"));
  // An explicit choice is shown as given, and recorded.
  r = run_cli("train --steps 2 --threads 1 --backend openblas --force --data " + data + test::kTinyShapeFlags +
              " --out " + ck);
  CHECK(r.status == 0);
  CHECK(contains(r.output, ", products: openblas fp32\n"));
  load_model(ck, &meta);
  CHECK(meta["trained_with"] == "openblas fp32");
  // --precision bf16 with auto: onednn where the CPU has bf16 instructions, else one line saying what is missing.
  r = run_cli("train --steps 1 --threads 1 --precision bf16 --force --data " + data + test::kTinyShapeFlags +
              " --out " + ck);
  const AutoChoice b = choose_backend(Precision::bf16);
  if (b.error.empty() && onednn_bf16_usable()) {
    CHECK(r.status == 0);
    CHECK(contains(r.output, ", products: " + backend_choice_text(b.opt) + "\n"));
  } else {
    CHECK(r.status == 1);
    CHECK(contains(r.output, "error: " + (b.error.empty() ? "--precision bf16: the CPU has " : b.error + "\n")));
  }
}

TEST_CASE("cli: a resume with other products than the saved run's says so on stderr and in the log") {
  if (!kHaveOnednn) CHARGPT_SKIP("needs a second CPU backend: this build has no oneDNN");
  TempDir dir("auto_resume");
  const std::string data = test::write_corpus(dir), ck = dir / "r.safetensors", log = dir / "r.jsonl";
  const std::string base = "train --threads 1 --data " + data + test::kTinyShapeFlags + " --out " + ck + " --log " + log;
  REQUIRE(run_cli(base + " --steps 2 --backend openblas").status == 0);
  const std::string line = "resuming a run trained with openblas fp32 on " + cpu_description() +
                           "; this run uses onednn fp32: the weights will differ from an uninterrupted run";
  auto r = test::run_cli_apart(base + " --steps 4 --resume --backend onednn");
  CAPTURE(r.err);
  CHECK(r.status == 0);
  CHECK(r.err == "chargpt train: " + line + "\n");
  CHECK(!contains(r.out, "resuming"));
  const std::string expect_log = nlohmann::json{{"type", "note"}, {"step", 2}, {"text", line}}.dump();
  CHECK(contains(bytes_of(log), expect_log + "\n"));
  // The same products again: nothing to say.
  r = test::run_cli_apart(base + " --steps 6 --resume --backend onednn");
  CHECK(r.status == 0);
  CHECK(r.err == "");
  // A checkpoint that does not record its products still resumes, silently.
  test::edit_header(ck, [](nlohmann::json& h) {
    h["__metadata__"].erase("trained_with");
    h["__metadata__"].erase("trained_on");
  });
  r = test::run_cli_apart(base + " --steps 7 --resume --backend openblas");
  CAPTURE(r.err);
  CHECK(r.status == 0);
  CHECK(!contains(r.err, "resuming"));
  Metadata meta;
  load_model(ck, &meta);
  CHECK(meta["trained_with"] == "openblas fp32");  // and the next save records them
}
