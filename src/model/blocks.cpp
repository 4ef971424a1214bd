#include "model/blocks.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include "ops/ops.h"

namespace chargpt::par {

Blocks::Blocks(int n_, int min_size, int max_count, int align) : n(n_) {
  if (n <= 0) return;
  const int want = std::clamp(n / min_size, 1, max_count);
  size = ((n + want - 1) / want + align - 1) / align * align;
  count = (n + size - 1) / size;
}

namespace {

// f(k) for k in [0, n), one block per task. Isolated: a thread waiting here for the
// other blocks runs only blocks of this call, never another shard's task (which
// would take this thread's activations, enumerable_thread_specific, mid-use).
template <class F>
void for_blocks(int n, const F& f) {
  if (n == 1) {
    f(0);
    return;
  }
  tbb::this_task_arena::isolate([&] {
    tbb::parallel_for(tbb::blocked_range<int>(0, n, 1), [&](const tbb::blocked_range<int>& r) {
      for (int k = r.begin(); k != r.end(); ++k) f(k);
    }, tbb::simple_partitioner());
  });
}

// f(r0, r1) for the blocks of R rows.
template <class F>
void for_row_blocks(int R, const F& f) {
  const Blocks b(R);
  for_blocks(b.count, [&](int k) { f(b.begin(k), b.end(k)); });
}

// f(off, n) for the blocks of R rows of C values, as flat spans: the elementwise ops.
template <class F>
void for_row_spans(int R, int C, const F& f) {
  for_row_blocks(R, [&](int r0, int r1) { f((size_t)r0 * C, (size_t)(r1 - r0) * C); });
}

// This thread's scratch for one use (slot), of at least n floats. A block's task
// starts no parallel work, so no two tasks on a thread hold a slot at once.
enum Slot { kAttention, kDoutColumns, kSlots };
float* scratch(Slot slot, size_t n) {
  thread_local std::vector<float> bufs[kSlots];
  std::vector<float>& b = bufs[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

LinearInput rows_from(LinearInput in, int r0, int IC) {
  const size_t off = (size_t)r0 * IC;
  return {in.f32 + off, in.bf16 ? in.bf16 + off : nullptr};
}

}  // namespace

void linear_forward(Backend& be, float* out, LinearInput inp, Weight weight, Weight bias, int R, int IC, int OC) {
  const Blocks rows(R);
  if (!be.splits_products() || rows.count <= 1) return be.linear_forward(out, inp, weight, bias, R, IC, OC);
  for_blocks(rows.count, [&](int k) {
    const int r0 = rows.begin(k), r1 = rows.end(k);
    be.linear_forward(out + (size_t)r0 * OC, rows_from(inp, r0, IC), weight, bias, r1 - r0, IC, OC);
  });
}

void linear_backward(Backend& be, float* dinp, float* dweight, float* dbias, const float* dout, LinearInput inp,
                     Weight weight, int R, int IC, int OC, bool accumulate) {
  const Blocks rows(R), feats(OC);
  if (!be.splits_products() || (rows.count <= 1 && feats.count <= 1))
    return be.linear_backward(dinp, dweight, dbias, dout, inp, weight, R, IC, OC, accumulate);
  // dinp in blocks of rows first (the larger tasks first, so that the smaller ones even out
  // the end), then dweight and dbias in blocks of output features, each element's sum over
  // all R rows in one call.
  const int nr = dinp ? rows.count : 0;
  for_blocks(nr + feats.count, [&](int k) {
    if (k < nr) {
      const int r0 = rows.begin(k), r1 = rows.end(k);
      be.linear_backward(dinp + (size_t)r0 * IC, nullptr, nullptr, dout + (size_t)r0 * OC, rows_from(inp, r0, IC),
                         weight, r1 - r0, IC, OC, accumulate);
    } else {
      const int o0 = feats.begin(k - nr), ob = feats.end(k - nr) - o0;
      const float* d = dout;
      if (feats.count > 1) {  // dout's columns [o0, o0+ob), contiguous: the interface has no row stride
        float* cols = scratch(kDoutColumns, (size_t)R * ob);
        for (int r = 0; r < R; ++r)
          std::memcpy(cols + (size_t)r * ob, dout + (size_t)r * OC + o0, sizeof(float) * ob);
        d = cols;
      }
      be.linear_backward(nullptr, dweight + (size_t)o0 * IC, dbias ? dbias + o0 : nullptr, d, inp, weight, R, IC,
                         ob, accumulate);
    }
  });
}

void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int N, int T, int C) {
  for_row_blocks(N * T, [&](int r0, int r1) {
    for (int r = r0; r < r1; ++r)
      chargpt::encoder_forward(out + (size_t)r * C, tokens + r, wte, wpe + (size_t)(r % T) * C, 1, 1, C);
  });
}

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight, const float* bias,
                       int R, int C, uint16_t* out16) {
  for_row_blocks(R, [&](int r0, int r1) {
    const size_t off = (size_t)r0 * C;
    chargpt::layernorm_forward(out + off, mean + r0, rstd + r0, inp + off, weight, bias, r1 - r0, C,
                               out16 ? out16 + off : nullptr);
  });
}

void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                        const float* weight, const float* mean, const float* rstd, int R, int C) {
  const Blocks rows(R), cols(C);
  for_blocks(cols.count + rows.count, [&](int k) {
    if (k < cols.count) {
      layernorm_backward_params(dweight, dbias, dout, inp, mean, rstd, R, C, cols.begin(k), cols.end(k));
    } else {
      const int r0 = rows.begin(k - cols.count), r1 = rows.end(k - cols.count);
      const size_t off = (size_t)r0 * C;
      chargpt::layernorm_backward(dinp + off, nullptr, nullptr, dout + off, inp + off, weight, mean + r0, rstd + r0,
                                  r1 - r0, C);
    }
  });
}

void attention_forward(float* out, float* att_probs, const float* qkv, int N, int T, int C, int NH) {
  const int hd = C / NH;
  for_blocks(N * NH, [&](int k) {
    const int n = k / NH, h = k % NH;
    attention_head_forward(out + (size_t)n * T * C + h * hd, C, att_probs + (size_t)k * T * T,
                           scratch(kAttention, attention_scratch_floats(T, hd)), qkv + (size_t)n * T * 3 * C + h * hd,
                           T, C, hd);
  });
}

void attention_backward(float* dqkv, const float* dout, const float* qkv, const float* att_probs, int N, int T, int C,
                        int NH) {
  const int hd = C / NH;
  for_blocks(N * NH, [&](int k) {
    const int n = k / NH, h = k % NH;
    const size_t head = (size_t)n * T * 3 * C + h * hd;
    attention_head_backward(dqkv + head, scratch(kAttention, attention_scratch_floats(T, hd)),
                            dout + (size_t)n * T * C + h * hd, C, qkv + head, att_probs + (size_t)k * T * T, T, C, hd);
  });
}

void gelu_forward(float* out, const float* inp, int R, int C, uint16_t* out16) {
  for_row_spans(R, C, [&](size_t off, size_t n) {
    chargpt::gelu_forward(out + off, inp + off, n, out16 ? out16 + off : nullptr);
  });
}

void gelu_backward(float* dinp, const float* inp, const float* dout, int R, int C) {
  for_row_spans(R, C, [&](size_t off, size_t n) { chargpt::gelu_backward(dinp + off, inp + off, dout + off, n); });
}

void residual_forward(float* out, const float* a, const float* b, int R, int C) {
  for_row_spans(R, C, [&](size_t off, size_t n) { chargpt::residual_forward(out + off, a + off, b + off, n); });
}

void to_bf16(uint16_t* dst, const float* src, int R, int C) {
  for_row_spans(R, C, [&](size_t off, size_t n) { chargpt::to_bf16(dst + off, src + off, n); });
}

void softmax_crossentropy_forward(float* losses, float* probs, const float* logits, const int32_t* targets, int R,
                                  int V) {
  for_row_blocks(R, [&](int r0, int r1) {
    const size_t off = (size_t)r0 * V;
    chargpt::softmax_crossentropy_forward(losses + r0, probs + off, logits + off, targets + r0, r1 - r0, V);
  });
}

void softmax_crossentropy_backward(float* dlogits, const float* probs, const int32_t* targets, float dloss, int R,
                                   int V) {
  for_row_blocks(R, [&](int r0, int r1) {
    const size_t off = (size_t)r0 * V;
    chargpt::softmax_crossentropy_backward(dlogits + off, probs + off, targets + r0, dloss, r1 - r0, V);
  });
}

}  // namespace chargpt::par
