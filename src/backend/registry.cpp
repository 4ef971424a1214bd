// The backends this program knows, one row each (name, availability, factory,
// info): choosing one, and the report of `chargpt info`, walk this table.
// A backend not compiled in keeps its row, so that asking for it says how to get it.
#include <stdexcept>
#include <string>

#include "backend/backend_impl.h"

namespace chargpt {

namespace {

// The row of a backend this build lacks: configure with `option` to get it.
template <const char* Name, const char* Option>
BackendEntry missing(BackendKind kind) {
  return {kind, Name, ~0u, true,
          [](const BackendOptions&) {
            return std::string("--backend ") + Name + ": this build has no " + Name + " (configure with " + Option +
                   ")";
          },
          nullptr,
          [] { return std::string(Name) + ": not compiled in (configure with " + Option + ")"; }};
}
constexpr char kOnednnOpt[] = "-DCHARGPT_ONEDNN=ON";
[[maybe_unused]] constexpr char kOnednn[] = "onednn";
[[maybe_unused]] constexpr char kCuda[] = "cuda", kCudaOpt[] = "-DCHARGPT_CUDA=ON";

const BackendEntry& entry(BackendKind kind) {
  for (const BackendEntry& e : backend_registry())
    if (e.kind == kind) return e;
  throw std::logic_error("backend registry: no row for backend " + std::to_string((int)kind));
}

}  // namespace

const std::vector<BackendEntry>& backend_registry() {
  static const std::vector<BackendEntry> rows = {
      openblas_entry(),
#ifdef CHARGPT_HAVE_ONEDNN
      onednn_entry(),
#else
      missing<kOnednn, kOnednnOpt>(BackendKind::onednn),
#endif
#ifdef CHARGPT_HAVE_CUDA
      cuda_entry(),
#else
      missing<kCuda, kCudaOpt>(BackendKind::cuda),
#endif
  };
  return rows;
}

const char* backend_name(BackendKind kind) { return entry(kind).name; }

BackendKind parse_backend(const std::string& s) {
  std::string names;
  for (const BackendEntry& e : backend_registry()) {
    if (s == e.name) return e.kind;
    names += (names.empty() ? "" : ", ") + std::string(e.name);
  }
  throw std::invalid_argument("backend '" + s + "' is not one of: auto, " + names);
}

std::string bf16_cpu_missing(const CpuFeatures& cpu) {
  if (cpu.bf16()) return "";
  return "--precision bf16 needs AVX512-BF16 or AMX-BF16; this CPU has neither (" + cpu_features_text(cpu) + ")";
}

// The rule, from the measurements in docs/performance.md ("Which backend --backend auto picks"):
// oneDNN's fp32 products ran 1.8x OpenBLAS's on AVX-512 (Zen 5) and level with it to 1.14x on
// AVX2 (Zen 3: baby 38.4 vs 38.1 ms, nanogpt 7 326 vs 8 317 ms); without AVX2 nothing was measured,
// so the reference stays. bf16 is offered where the CPU multiplies bf16 itself.
AutoChoice choose_backend(Precision p, const CpuFeatures& cpu) {
  AutoChoice c;
  c.opt.precision = p;
  const bool have_onednn = entry(BackendKind::onednn).make != nullptr;
  if (p == Precision::fp32) {
    const char* why = !have_onednn  ? "no oneDNN in this build"
                      : cpu.avx512() ? "AVX-512"
                      : cpu.avx2 && cpu.fma ? "AVX2"
                                            : "no AVX2";
    c.opt.kind = have_onednn && (cpu.avx512() || (cpu.avx2 && cpu.fma)) ? BackendKind::onednn : BackendKind::openblas;
    c.opt.auto_reason = why;
    return c;
  }
  c.opt.kind = BackendKind::onednn;
  c.opt.auto_reason = cpu.amx() ? "AMX-BF16" : "AVX512-BF16";
  if (!cpu.bf16()) c.error = bf16_cpu_missing(cpu);
  else if (!have_onednn)
    c.error = std::string("--precision bf16 runs on oneDNN, which this build lacks (configure with ") + kOnednnOpt + ")";
  if (!c.error.empty() && entry(BackendKind::cuda).make) c.error += "; --backend cuda runs bf16 on a GPU";
  return c;
}

std::string backend_text(const BackendOptions& opt) {
  return std::string(backend_name(opt.kind)) + " " + precision_name(opt.precision) + (opt.tf32 ? " tf32" : "");
}

std::string backend_choice_text(const BackendOptions& opt) {
  return backend_text(opt) + (opt.auto_reason ? std::string(" (auto: ") + opt.auto_reason + ")" : "");
}

std::string auto_choice_info() {
  std::string s = "auto picks: ";
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    const AutoChoice c = choose_backend(p);
    if (p == Precision::bf16) s += "; with --precision bf16: ";
    s += c.error.empty() ? backend_choice_text(c.opt) : "none (" + c.error + ")";
  }
  return s +
         "\nauto rule: fp32 on onednn where the build has it and the CPU has AVX2 and FMA or AVX-512, else openblas; "
         "bf16 on onednn where the CPU has AVX512-BF16 or AMX-BF16; fixed by the CPU and the build, never by timing";
}

// The backends offering what `has` asks for, e.g. "onednn" or "openblas, onednn".
template <class Has>
std::string offering(const Has& has) {
  std::string s;
  for (const BackendEntry& e : backend_registry())
    if (e.make && has(e)) s += (s.empty() ? "" : ", ") + std::string(e.name);
  return s.empty() ? std::string("none in this build") : s;
}

std::string backend_options_error(const BackendOptions& opt) {
  const BackendEntry& e = entry(opt.kind);
  if (!(e.precisions & precision_bit(opt.precision)))
    return std::string("--precision ") + precision_name(opt.precision) + " is not offered by --backend " + e.name +
           " (with " + precision_name(opt.precision) +
           ": " + offering([&](const BackendEntry& r) { return (r.precisions & precision_bit(opt.precision)) != 0; }) +
           ")";
  if (opt.tf32 && !e.tf32)
    return std::string("--tf32 does not apply to --backend ") + e.name +
           " (it applies to: " + offering([](const BackendEntry& r) { return r.tf32; }) + ")";
  if (opt.tf32 && opt.precision != Precision::fp32)
    return std::string("--tf32 applies to fp32 products; --backend ") + e.name + " --precision " +
           precision_name(opt.precision) + " runs " + precision_name(opt.precision) + " products";
  return "";
}

std::unique_ptr<Backend> make_backend(const BackendOptions& opt) {
  if (const std::string bad = backend_options_error(opt); !bad.empty()) throw std::runtime_error(bad);
  const BackendEntry& e = entry(opt.kind);
  if (const std::string why = e.unavailable(opt); !why.empty()) throw std::runtime_error(why);
  return e.make(opt);
}

std::string backend_info() {
  std::string names, lines;
  for (const BackendEntry& e : backend_registry()) {
    if (e.make) names += (names.empty() ? "" : ", ") + std::string(e.name);
    lines += "\n" + e.info();
  }
  return "backends: " + names + "\n" + auto_choice_info() + lines;
}

}  // namespace chargpt
