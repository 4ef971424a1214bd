// The kernel templates at 4, 8 and 16 floats per vector (see ops_widths.h).
#include "ops_widths.h"

#include "ops/attention_kernels.h"
#include "ops/pointwise_kernels.h"

namespace chargpt::test {

namespace {

template <int W>
OpsAtWidth ops_at() {
  using A = AttentionKernels<W>;
  using P = PointwiseKernels<W>;
  return {W,           &P::layernorm_forward, &P::layernorm_backward, &A::forward,      &A::backward,
          &A::scratch_floats, &P::gelu_forward, &P::gelu_backward, &A::head_forward, &A::head_decode,
          &A::decode_scratch_floats};
}

}  // namespace

std::vector<OpsAtWidth> ops_at_every_width() { return {native_ops(), ops_at<4>(), ops_at<8>(), ops_at<16>()}; }

}  // namespace chargpt::test
