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
[[maybe_unused]] constexpr char kOnednn[] = "onednn", kOnednnOpt[] = "-DCHARGPT_ONEDNN=ON";
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
  throw std::invalid_argument("backend '" + s + "' is not one of: " + names);
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
  return "backends: " + names + lines;
}

}  // namespace chargpt
