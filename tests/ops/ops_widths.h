#pragma once
// The vectorised ops at every vector width chargpt builds for: 16 lanes
// (AVX-512), 8 (AVX/AVX2) and 4 (the portable build), each an instantiation of
// the kernel templates (src/ops/*_kernels.h) in tests/ops/ops_widths.cpp,
// beside the library's own build at its native width. A width wider than the
// CPU's registers still runs (GCC splits the vectors, slowly), so every test
// machine checks all three, whichever one its own build uses.
#include <vector>

#include "ops/ops.h"

namespace chargpt::test {

struct OpsAtWidth {
  int width;  // floats per vector; 0 = the library's own build
  decltype(&chargpt::layernorm_forward) layernorm_forward;
  decltype(&chargpt::layernorm_backward) layernorm_backward;
  decltype(&chargpt::attention_forward) attention_forward;
  decltype(&chargpt::attention_backward) attention_backward;
  decltype(&chargpt::attention_scratch_floats) attention_scratch_floats;
  decltype(&chargpt::gelu_forward) gelu_forward;
  decltype(&chargpt::gelu_backward) gelu_backward;
  decltype(&chargpt::attention_head_forward) attention_head_forward;
  decltype(&chargpt::attention_head_decode) attention_head_decode;
  decltype(&chargpt::attention_decode_scratch_floats) attention_decode_scratch_floats;
};

// The library's own functions.
inline OpsAtWidth native_ops() {
  return {0,
          &chargpt::layernorm_forward,
          &chargpt::layernorm_backward,
          &chargpt::attention_forward,
          &chargpt::attention_backward,
          &chargpt::attention_scratch_floats,
          &chargpt::gelu_forward,
          &chargpt::gelu_backward,
          &chargpt::attention_head_forward,
          &chargpt::attention_head_decode,
          &chargpt::attention_decode_scratch_floats};
}

// native_ops(), then the templates at 4, 8 and 16 floats.
std::vector<OpsAtWidth> ops_at_every_width();

}  // namespace chargpt::test
