// The seam's small shared parts: names and the weight table's checked lookup.
#include "backend/backend.h"

#include <stdexcept>
#include <string>

namespace chargpt {

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

Precision parse_precision(const std::string& s) {
  if (s == "fp32") return Precision::fp32;
  if (s == "bf16") return Precision::bf16;
  throw std::invalid_argument("precision '" + s + "' is not one of: fp32, bf16");
}

size_t WeightTable::offset_of(const Weight& w, size_t n) const {
  auto bad = [&](const std::string& what) {
    throw std::logic_error("backend: weight (tensor " + std::to_string(w.tensor) + ", " + std::to_string(n) +
                           " floats) " + what);
  };
  if (!block) bad("used before bind_weights");
  if (w.tensor < 0 || (size_t)w.tensor >= tensors.size())
    bad("is not a tensor of the bound table of " + std::to_string(tensors.size()));
  const TensorSlot& t = tensors[(size_t)w.tensor];
  if (n > t.numel) bad("is larger than the tensor (" + std::to_string(t.numel) + " floats)");
  if (w.data != block + t.offset) bad("does not point at that tensor of the bound block");
  return t.offset;
}

}  // namespace chargpt
