// Causal self-attention: attention_kernels.h at this build's vector width.
#include <algorithm>
#include <cmath>

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

// The body of AttentionKernels::backward's loop over (sequence, head), on one head.
void attention_head_backward(float* dq, float* scratch, const float* dy, int ldy, const float* q, const float* P,
                             int T, int C, int hd) {
  const int C3 = 3 * C, Tp = Native::padded(T);
  const float scale = 1.f / std::sqrt((float)hd);
  const float* k = q + C;
  const float* v = q + 2 * C;
  float* dk = dq + C;
  float* dv = dq + 2 * C;
  float* dS = scratch;                   // [T, Tp]
  float* VT = scratch + (size_t)T * Tp;  // [hd, Tp]
  Native::transpose_pad(VT, v, C3, T, hd);
  Native::causal_scores(dS, dy, ldy, VT, T, hd, 1.f);     // dP = dy · vᵀ (causal part)
  Native::lower_t_times(dv, C3, P, T, dy, ldy, T, hd, 1.f);  // dv = Pᵀ · dy
  for (int i = 0; i < T; ++i) {                            // softmax backward, in place
    const int block_end = std::min(Tp, (i / Native::kRows + 1) * Native::kRows);  // what the kernels below read
    Native::causal_softmax_backward_row(dS + (size_t)i * Tp, P + (size_t)i * T, i, T, block_end);
  }
  Native::lower_times(dq, C3, dS, Tp, k, C3, T, hd, scale);    // dq = dS · k / sqrt(hd)
  Native::lower_t_times(dk, C3, dS, Tp, q, C3, T, hd, scale);  // dk = dSᵀ · q / sqrt(hd)
}

size_t attention_decode_scratch_floats(int T, int hd) { return Native::decode_scratch_floats(T, hd); }

void attention_head_decode(float* y, float* scratch, const float* q, const float* K, const float* V, int ld, int n,
                           int hd) {
  Native::head_decode(y, scratch, q, K, V, ld, n, hd);
}

}  // namespace chargpt
