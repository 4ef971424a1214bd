// Causal self-attention: attention_kernels.h at this build's vector width.
#include "ops/attention_kernels.h"
#include "ops/ops.h"
#include "ops/vec.h"

namespace chargpt {

using Native = AttentionKernels<kNativeWidth>;

size_t attention_scratch_floats(int T, int hd) { return Native::scratch_floats(T, hd); }

void attention_head_forward(float* y, int ldy, float* P, float* scratch, const float* q, int T, int C, int hd) {
  Native::head_forward(y, ldy, P, scratch, q, T, C, hd);
}

void attention_forward(float* out, float* att_probs, float* scratch, const float* qkv, int N, int T, int C, int NH) {
  Native::forward(out, att_probs, scratch, qkv, N, T, C, NH);
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att_probs,
                        int N, int T, int C, int NH) {
  Native::backward(dqkv, scratch, dout, qkv, att_probs, N, T, C, NH);
}

size_t attention_decode_scratch_floats(int T, int hd) { return Native::decode_scratch_floats(T, hd); }

void attention_head_decode(float* y, float* scratch, const float* q, const float* K, const float* V, int ld, int n,
                           int hd) {
  Native::head_decode(y, scratch, q, K, V, ld, n, hd);
}

}  // namespace chargpt
