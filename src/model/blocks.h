#pragma once
// The model's ops and products on one shard, split over threads in fixed blocks:
// rows of the products' outputs and of the per-row ops, output features of the
// weight gradients, (sequence, head) pairs of attention. The blocks depend only
// on the shapes, never on the thread count, and every value is computed by one
// block with the same arithmetic whatever the split, so the bits are the same
// for any number of threads. Each call is a nested oneTBB parallel_for inside
// whatever arena runs it (the engine's): one shard can use every thread, and
// threads left idle by one shard take blocks of another's.
#include <cstddef>
#include <cstdint>

#include "backend/backend.h"

namespace chargpt::par {

// How a dimension of n rows or output features splits: into n / kMinBlock blocks (so none
// is smaller than kMinBlock), at most kMaxBlocks, in multiples of 16. Each block of a product
// repacks the operand the blocks share (the weight, or the input for the weight gradient):
// with OpenBLAS on one thread, blocks of 64 rows cost ~10% more than the whole product,
// blocks of 128 ~4%, blocks of 256 of a 1024-row shard ~3%. Shapes alone decide.
inline constexpr int kMinBlock = 128;
inline constexpr int kMaxBlocks = 4;

// [begin(k), end(k)) for k < count: n items in count blocks of `size` (the last may be
// shorter), size a multiple of `align`.
struct Blocks {
  int n = 0, size = 1, count = 0;
  Blocks(int n, int min_size, int max_count, int align);
  explicit Blocks(int n) : Blocks(n, kMinBlock, kMaxBlocks, 16) {}
  int begin(int k) const { return k * size; }
  int end(int k) const { return k + 1 < count ? (k + 1) * size : n; }
};

// Backend::linear_forward / linear_backward split in blocks (one call where the backend
// does not split products, or where the product is one block).
void linear_forward(Backend& be, float* out, LinearInput inp, Weight weight, Weight bias, int R, int IC, int OC);
void linear_backward(Backend& be, float* dinp, float* dweight, float* dbias, const float* dout, LinearInput inp,
                     Weight weight, int R, int IC, int OC, bool accumulate);

// ops.h's ops in blocks of rows (attention: of (sequence, head) pairs), the same contracts.
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int N, int T, int C);
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       int R, int C, uint16_t* out16);
// dinp by blocks of rows; dweight and dbias by blocks of columns, each column's sum over all rows in row order.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int R, int C);
void attention_forward(float* out, float* att_probs, const float* qkv, int N, int T, int C, int NH);
void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att_probs, int N, int T, int C,
                        int NH);
// Elementwise over R rows of C: gelu, the residual add, the bf16 copy.
void gelu_forward(float* out, const float* inp, int R, int C, uint16_t* out16);
void gelu_backward(float* dinp, const float* inp, const float* dout, int R, int C);
void residual_forward(float* out, const float* a, const float* b, int R, int C);
void to_bf16(uint16_t* dst, const float* src, int R, int C);
void softmax_crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets, int R,
                                  int V);
void softmax_crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int R,
                                   int V);

}  // namespace chargpt::par
