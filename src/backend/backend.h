#pragma once
// The one door for the model's matrix products. Every linear layer of the model
// (forward and backward) and the KV-cache step's matrix-vector products go
// through a Backend; no other file calls a BLAS library. OpenBLAS fp32 is the
// reference and the library's default; the command line's default is choose_backend's pick.
//
// A backend author implements three products (linear_forward, linear_backward,
// matvec_forward), and, if the backend keeps its own copy of the weights (bf16,
// on a GPU, or packed into its library's layout), bind_weights and weights_changed:
//   - The engine binds the backend once to the parameter table (the block and
//     where each tensor sits in it), and after every write of the weights (the
//     AdamW chunk loop, init, a resume) says which float range of the block
//     changed, so that a copy is refreshed once per optimizer step, never per call.
//   - A product names its weight and bias by their tensor in that table (Weight);
//     the host pointer travels along for backends that read the block directly.
//   - A product's activation input may carry its bf16 copy (LinearInput): a
//     backend whose products read bf16 says so (wants_bf16_inputs) and the model
//     then writes that copy where it writes the activation, once per forward.
// Calls come from several oneTBB workers at once; a backend keeps any per-call
// state per thread. Backends are listed in registry.cpp (name, availability,
// factory, info); a new one is one file and one row there.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "base/cpu.h"
#include <vector>

namespace chargpt {

enum class BackendKind { openblas, onednn, cuda };
enum class Precision { fp32, bf16 };

struct BackendOptions {
  BackendKind kind = BackendKind::openblas;
  Precision precision = Precision::fp32;
  bool tf32 = false;  // CUDA only: allow TF32 tensor cores for fp32 products
  // Why --backend auto picked `kind` (e.g. "AVX-512"); null for an explicit choice. For messages only:
  // the products depend on kind and precision alone.
  const char* auto_reason = nullptr;
};

// The backend --backend auto runs for a precision: the fastest product path of this build on a CPU
// with these features, by a fixed rule (never by timing, so one machine always gets the same bits).
//   fp32: onednn where it is compiled in and the CPU has AVX2 and FMA or AVX-512, else openblas.
//   bf16: onednn where the CPU has AVX512-BF16 or AMX-BF16 and oneDNN can use them.
// The evidence is in docs/performance.md ("Which backend --backend auto picks").
struct AutoChoice {
  BackendOptions opt;  // kind and precision; auto_reason says why
  std::string error;   // non-empty: nothing here runs that precision; the one-line reason
};
AutoChoice choose_backend(Precision p, const CpuFeatures& cpu = cpu_features());
// The rule as `chargpt info` prints it: what auto picks here for fp32 and bf16, and why.
std::string auto_choice_info();

// "onednn fp32", "cuda fp32 tf32": what runs the products (checkpoints record it), and with
// the auto reason where there is one: "onednn fp32 (auto: AVX-512)" (run headers).
std::string backend_text(const BackendOptions& opt);
std::string backend_choice_text(const BackendOptions& opt);

const char* backend_name(BackendKind kind);
const char* precision_name(Precision p);
// Parses a backend name of the registry ("openblas", "onednn", "cuda") and "fp32" | "bf16";
// throws std::invalid_argument naming the value and the choices. The choices named include "auto",
// which the command line resolves through choose_backend before it parses a name (no BackendKind is auto).
BackendKind parse_backend(const std::string& s);
Precision parse_precision(const std::string& s);

// A weight or bias as a product reads it: its tensor in the bound table, and its
// host fp32 floats. data == nullptr: absent (a product without bias).
// tensor == -1: not in any table (only backends that read the host floats accept it).
struct Weight {
  const float* data = nullptr;
  int tensor = -1;
};

// Where one tensor of the parameter block lies, in floats.
struct TensorSlot {
  size_t offset = 0, numel = 0;
};

// What bind_weights receives: the fp32 parameter block and its tensors.
struct WeightTable {
  const float* block = nullptr;
  size_t floats = 0;
  std::vector<TensorSlot> tensors;
  // The offset in the block of tensor w.tensor, checked: w names a tensor of this table
  // of at least n floats and w.data points at it. Throws std::logic_error otherwise.
  size_t offset_of(const Weight& w, size_t n) const;
};

// A product's activation input [R, IC]: fp32, and where the model wrote it, its bf16
// copy (= to_bf16(f32), ops.h) for a backend that wants bf16 inputs. bf16 may be null.
struct LinearInput {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "openblas fp32"

  // The parameter table the weights are named in. Until bound, a backend that keeps its
  // own copy of the weights cannot run.
  virtual void bind_weights(const WeightTable& table) { (void)table; }
  // Floats [begin, end) of the bound block changed. Called for disjoint ranges
  // from several threads at once (the AdamW chunk loop).
  virtual void weights_changed(size_t begin, size_t end) { (void)begin, (void)end; }
  // True if the products read their activation input in bf16: the model then hands
  // them a bf16 copy in LinearInput::bf16 (else the backend converts per call).
  virtual bool wants_bf16_inputs() const { return false; }
  // True if the model may split a product into several calls on blocks of it (rows of the
  // output; output features of the weight gradient) to run them on several threads. False
  // where every call costs a transfer (a GPU): the model then makes one call per product.
  virtual bool splits_products() const { return true; }

  // out[R,OC] = inp[R,IC] · weight[OC,IC]ᵀ + bias[OC] (bias.data may be null).
  virtual void linear_forward(float* out, LinearInput inp, Weight weight, Weight bias, int R, int IC, int OC) = 0;
  // dinp[R,IC] = dout · weight (skipped if null); dweight[OC,IC] += doutᵀ · inp; dbias[OC] += Σ_r dout
  // (if non-null). accumulate = false: dweight and dbias are written (=) instead. dweight null:
  // dinp only (dbias is then ignored); weight is read only for dinp, inp only for dweight.
  virtual void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, LinearInput inp,
                               Weight weight, int R, int IC, int OC, bool accumulate) = 0;
  // Rows [row0, row1) of out[OC] = weight[OC,IC] · x[IC] + bias[OC] (bias.data may be null): the
  // KV-cache step. Each row is computed by the same arithmetic whatever the range, so splitting
  // rows over threads changes no result.
  virtual void matvec_forward(float* out, Weight weight, Weight bias, const float* x, int IC, int row0,
                              int row1) = 0;
};

// "" if the backend named in opt offers its precision and flags (whatever the build
// and the machine), else the one-line reason naming the flag: a usage error.
std::string backend_options_error(const BackendOptions& opt);

// A backend of the given kind; throws std::runtime_error saying why when the options
// do not fit it (backend_options_error), it is not compiled in or it cannot run here
// (no AMX, no CUDA device).
std::unique_ptr<Backend> make_backend(const BackendOptions& opt = {});

// What the build and the machine offer, one "key: value" per line: backends
// compiled in, BLAS configuration, the CPU's ISA.
std::string backend_info();

// The kernel family the BLAS library picked for this CPU (OpenBLAS's core name).
std::string blas_core_name();

// OpenBLAS reads its settings when it loads. Sets OPENBLAS_NUM_THREADS=1 (our
// threads are oneTBB's) and, on AVX-512 CPUs Debian's OpenBLAS misdetects, a
// better OPENBLAS_CORETYPE, unless the user set them; returns true if the
// environment changed, so that main re-executes itself once.
bool configure_blas_environment();
// The OPENBLAS_CORETYPE that configure_blas_environment sets for a CPU with these features
// whose OpenBLAS picked `core_name` (any case), or "" to leave OpenBLAS's choice.
std::string openblas_coretype_override(const CpuFeatures& cpu, const std::string& core_name);

}  // namespace chargpt
