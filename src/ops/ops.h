#pragma once
// The model's ops, forward and backward, in float: the fast versions.
// Conventions (llm.c): outputs first; shapes in comments; parameter gradients
// are accumulated (+=), activation gradients are written (=) unless a comment
// says otherwise. The simple double-precision references live in ref_ops.h.
// Where they are: attention.cpp (attention_kernels.h), pointwise.cpp (the
// rest, LayerNorm and GELU in pointwise_kernels.h), matvec.cpp; the vectorised
// kernels are templates on the vector width (vec.h).
#include <cstddef>
#include <cstdint>

namespace chargpt {

// fp32 -> bf16 bits, round to nearest even (what oneDNN's reorders do); NaN stays a quiet NaN.
// The one conversion of every bf16 copy: the backend's own and the ops' bf16 outputs below.
void to_bf16(uint16_t* dst, const float* src, size_t n);

// out[N,T,C] = wte[tokens[n,t]] + wpe[t]
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int N, int T, int C);
// dwte[V,C] +=, dwpe[T,C] += ; dout[N,T,C]
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int N, int T, int C);

// out[R,C] = (inp - mean) * rstd * weight + bias, per row; mean[R], rstd[R] saved for backward.
// out16 (if non-null): out[R,C] in bf16 as well, = to_bf16(out), for a bf16 product that reads it.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int R, int C, uint16_t* out16 = nullptr);
// dinp[R,C] += (it feeds the residual stream, whose gradient it adds to), dweight[C] +=, dbias[C] +=
// (both skipped if dweight is null).
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int R, int C);
// Columns [c0, c1) of layernorm_backward's dweight and dbias alone, each a sum over the R rows in
// row order: the same bits as layernorm_backward's, for any split of the columns.
void layernorm_backward_params(float* dweight, float* dbias, const float* dout, const float* inp, const float* mean,
                               const float* rstd, int R, int C, int c0, int c1);

// Causal multi-head self-attention.
// qkv[N,T,3C] holds q|k|v per position, heads of size C/NH inside each.
// out[N,T,C]; att_probs[N,NH,T,T] = softmax(q·kᵀ/sqrt(hd)) with zeros above the diagonal;
// scratch[attention_scratch_floats(T, C/NH)].
void attention_forward(float* out, float* att_probs, float* scratch, const float* qkv, int N, int T, int C, int NH);
// Floats of scratch one (sequence, head) of attention needs, forward or backward.
size_t attention_scratch_floats(int T, int hd);
// One (sequence, head) of attention_forward: q is the head's query at position 0
// of a qkv block with row stride 3C (key at q + C, value at q + 2C); P[T,T]
// receives the probabilities, y (row stride ldy) the head's output [T,hd].
void attention_head_forward(float* y, int ldy, float* P, float* scratch, const float* q, int T, int C, int hd);
// One head's attention for one new position (the KV-cache step): q[hd] against
// the keys and values of positions 0..n-1 (the head's columns of K and V, row
// stride ld): y[hd] = softmax(q·kᵀ/sqrt(hd))·v. The same kernels and sums as the
// last row of attention_head_forward over those n positions.
// scratch[attention_decode_scratch_floats(T, hd)] for any n <= T.
void attention_head_decode(float* y, float* scratch, const float* q, const float* K, const float* V, int ld, int n,
                           int hd);
size_t attention_decode_scratch_floats(int T, int hd);
// One (sequence, head) of attention_backward, laid out as attention_head_forward: dq is the
// head's query gradient at position 0 of a dqkv block with row stride 3C (dk at dq + C, dv at
// dq + 2C), written (=); dy the head's output gradient [T,hd] (row stride ldy); P[T,T] its
// probabilities. The same bits as attention_backward's for that head.
void attention_head_backward(float* dq, float* scratch, const float* dy, int ldy, const float* q, const float* P,
                             int T, int C, int hd);
// dqkv[N,T,3C] = ; scratch[attention_scratch_floats(T, C/NH)]. O(T²·hd) per head.
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv, const float* att_probs,
                        int N, int T, int C, int NH);

// tanh-approximated GELU, elementwise over n values; out16 (if non-null) = to_bf16(out) as well.
void gelu_forward(float* out, const float* inp, size_t n, uint16_t* out16 = nullptr);
// dinp = gelu'(inp) * dout; dinp may alias dout.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// out = a + b, elementwise.
void residual_forward(float* out, const float* a, const float* b, size_t n);

// Per row r: probs[r,:] = softmax(logits[r,:]); losses[r] = -log probs[r, targets[r]].
// probs may alias logits.
void softmax_crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets,
                                  int R, int V);
// dlogits[r,:] = (probs[r,:] - onehot(targets[r])) * dloss; dloss = d objective / d losses[r].
// dlogits may alias probs.
void softmax_crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int R,
                                   int V);

// Rows [o0, o1) of out[OC] = W[OC,IC] · x[IC] + b[OC] (b may be null). Each row's
// arithmetic is fixed (16 lanes, fixed reduction tree) whatever the range.
void matvec_rows(float* out, const float* W, const float* b, const float* x, int IC, int o0, int o1);

// p[0..n) = 0 (the gradients that backward accumulates into, when it writes them).
void fill_zero(float* p, size_t n);
// Sum of n per-token losses in index order, in double.
double loss_sum(const float* losses, size_t n);

}  // namespace chargpt
