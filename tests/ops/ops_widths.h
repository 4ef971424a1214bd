#pragma once
// The vectorised ops at every vector width chargpt builds for: 16 lanes
// (AVX-512), 8 (AVX/AVX2) and 4 (the portable build), each a second compile of
// src/ops/ops.cpp in a namespace of its own (tests/ops/ops_width.inc), beside the
// library's native build. A width wider than the CPU's registers still runs
// (GCC splits the vectors, slowly), so every test machine checks all three,
// whichever one its own build uses.
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
};

// The table of namespace NS's ops (the library's chargpt, or a test build's).
#define CHARGPT_OPS_AT(NS, WIDTH)                                                                      \
  ::chargpt::test::OpsAtWidth {                                                                        \
    WIDTH, &NS::layernorm_forward, &NS::layernorm_backward, &NS::attention_forward,                    \
        &NS::attention_backward, &NS::attention_scratch_floats, &NS::gelu_forward, &NS::gelu_backward \
  }

OpsAtWidth ops_width4();
OpsAtWidth ops_width8();
OpsAtWidth ops_width16();

inline OpsAtWidth native_ops() { return CHARGPT_OPS_AT(chargpt, 0); }

inline std::vector<OpsAtWidth> ops_at_every_width() { return {native_ops(), ops_width4(), ops_width8(), ops_width16()}; }

}  // namespace chargpt::test
