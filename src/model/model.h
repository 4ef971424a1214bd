#pragma once
// The GPT: configuration, one contiguous parameter block with named views,
// per-shard activations, and the paired forward/backward passes.
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "backend/backend.h"
#include "base/buffer.h"

namespace chargpt {

struct Config {
  int vocab_size = 65;
  int block_size = 64;  // max context T
  int n_layer = 4;
  int n_head = 4;
  int n_embd = 128;  // C
  // Throws with a message naming the offending value if the shape is unusable.
  void validate() const;
};

// "" when n_embd splits into n_head heads of equal size; otherwise the reason,
// naming the two values as `embd` and `head` (a config's keys, or the CLI's flags).
std::string head_split_problem(const Config& cfg, const std::string& embd = "n_embd",
                               const std::string& head = "n_head");

bool operator==(const Config& a, const Config& b);

// One named tensor inside the parameter block, in nanoGPT state-dict order.
struct ParamSpec {
  std::string name;            // e.g. "transformer.h.0.attn.c_attn.weight"
  std::vector<int64_t> shape;  // e.g. {3C, C}; Linear weights are [out, in]
  size_t offset = 0;           // in floats, from the start of the block
  size_t numel = 0;
  bool decay = false;          // AdamW weight decay: 2-D tensors only
};

std::vector<ParamSpec> param_specs(const Config& cfg);
// The floats param_specs lays out: V·C + T·C + L·(12·C² + 13·C) + 2·C, in checked
// 64-bit arithmetic; false when that overflows (a hostile file's config).
bool checked_num_params(const Config& cfg, uint64_t& out);
// The same for a config that fits (throws std::overflow_error otherwise).
size_t num_params(const Config& cfg);

// A tensor's index in param_specs order, which is how a backend names a weight
// (Weight::tensor): wte, wpe, then each layer's tensors in LayerParams order, then ln_f.
enum class LayerTensor { ln1_w, ln1_b, qkv_w, qkv_b, attproj_w, attproj_b, ln2_w, ln2_b, fc_w, fc_b, fcproj_w, fcproj_b,
                         count };
constexpr int kWteTensor = 0;
constexpr int tensor_index(int layer, LayerTensor t) { return 2 + layer * (int)LayerTensor::count + (int)t; }
// The table a backend is bound to (Backend::bind_weights) for a parameter block of this config.
WeightTable weight_table(const Config& cfg, const float* block);

// Named views into a parameter block, or a gradient block of the same layout.
// F = float: a block to write (parameters being updated, gradients); F = const
// float: weights only read (a forward pass, sampling, evaluation).
template <class F>
struct LayerViews {
  F *ln1_w, *ln1_b;          // [C], [C]
  F *qkv_w, *qkv_b;          // c_attn [3C,C], [3C]
  F *attproj_w, *attproj_b;  // attn.c_proj [C,C], [C]
  F *ln2_w, *ln2_b;          // [C], [C]
  F *fc_w, *fc_b;            // mlp.c_fc [4C,C], [4C]
  F *fcproj_w, *fcproj_b;    // mlp.c_proj [C,4C], [C]
};

template <class F>
struct BlockViews {
  F* wte;  // [V,C], also the LM head (tied)
  F* wpe;  // [T,C]
  std::vector<LayerViews<F>> layers;
  F *lnf_w, *lnf_b;  // [C], [C]

  BlockViews() = default;
  // Views to write read as views to read.
  template <class G>
    requires std::is_same_v<F, const G>
  BlockViews(const BlockViews<G>& o) : wte(o.wte), wpe(o.wpe), lnf_w(o.lnf_w), lnf_b(o.lnf_b) {
    layers.reserve(o.layers.size());
    for (const LayerViews<G>& l : o.layers)
      layers.push_back({l.ln1_w, l.ln1_b, l.qkv_w, l.qkv_b, l.attproj_w, l.attproj_b, l.ln2_w, l.ln2_b, l.fc_w,
                        l.fc_b, l.fcproj_w, l.fcproj_b});
  }
};

using LayerParams = LayerViews<float>;
using ParamViews = BlockViews<float>;
using ConstLayerParams = LayerViews<const float>;
using ConstParamViews = BlockViews<const float>;
ParamViews param_views(const Config& cfg, float* block);
ConstParamViews param_views(const Config& cfg, const float* block);

// nanoGPT's init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_layer)),
// biases 0, LayerNorm weight 1 / bias 0. Deterministic in seed.
void init_params(const Config& cfg, float* block, uint64_t seed);

// Forward activations and backward scratch for up to `max_batch` sequences of
// up to block_size tokens: one aligned allocation, reused every step.
struct Activations {
  struct Layer {
    float *ln1, *ln1_mean, *ln1_rstd;  // [N,T,C], [N,T], [N,T]
    float* qkv;                        // [N,T,3C]
    float* att_probs;                  // [N,NH,T,T]
    float* att_y;                      // [N,T,C] attention output before c_proj
    float* res_att;                    // [N,T,C] residual after attention
    float *ln2, *ln2_mean, *ln2_rstd;  // [N,T,C], [N,T], [N,T]
    float* fc;                         // [N,T,4C] before GELU
    float* fc_gelu;                    // [N,T,4C]
    float* res_mlp;                    // [N,T,C] residual after the MLP = the layer's output
    // bf16 copies of the products' activation inputs (null unless use_bf16(true); see
    // Backend::wants_bf16_inputs): = to_bf16 of ln1, att_y, ln2, fc_gelu.
    uint16_t *ln1_16 = nullptr, *att_y16 = nullptr, *ln2_16 = nullptr, *fc_gelu16 = nullptr;
  };
  int max_batch = 0;
  FloatBuffer mem;
  float* encoded;  // [N,T,C]
  std::vector<Layer> layers;
  float *lnf, *lnf_mean, *lnf_rstd;  // [N,T,C], [N,T], [N,T]
  float* probs;                      // [N,T,V]: logits, then probs, then d_logits in backward
  float* losses;                     // [N,T]
  // backward scratch
  float* d_res;   // [N,T,C] gradient of the residual stream
  float* d_c;     // [N,T,C] gradient of a LayerNorm output or of att_y
  float* d_qkv;   // [N,T,3C]
  float* d_fc;    // [N,T,4C]
  uint16_t* lnf16 = nullptr;  // bf16 copy of lnf (use_bf16)
  std::vector<uint16_t> mem16;  // the bf16 copies' allocation

  Activations() = default;
  Activations(const Config& cfg, int max_batch);
  // The floats the constructor allocates for max_batch sequences, in double (the
  // shapes' products may overflow size_t): the same layout, walked without allocating.
  static double floats_needed(const Config& cfg, double max_batch);
  // Points the bf16 copies at their allocation (made on first use) or, off, at null, so
  // that the ops write no copy and the products get none. gpt_forward sets it from
  // the backend; the backward reads the copies of the forward that ran before it.
  void use_bf16(bool on);
  size_t bytes() const { return mem.size() * sizeof(float) + mem16.size() * sizeof(uint16_t); }

 private:
  size_t rows_ = 0, C_ = 0;  // max_batch * block_size, n_embd
};

// The ops run on the calling thread and, in fixed blocks, on the other threads of its
// oneTBB arena (model/blocks.h): the bits do not depend on the thread count.
// The linear layers' products go through `be` (bound to the block `params`
// points into, when the backend keeps its own copy of the weights).
// Forward over N sequences of t <= block_size tokens. With targets, returns the
// SUM of the N*t token losses (per-token losses in acts.losses); without, 0 and
// acts.probs holds the logits. Inputs/targets are [N,t].
double gpt_forward(Backend& be, const Config& cfg, const ConstParamViews& params, Activations& acts,
                   const int32_t* inputs, const int32_t* targets, int N, int t);

// Backward of the last gpt_forward (with targets). dloss = d objective / d token loss
// (1/(B*T) for the batch mean). Parameter gradients are accumulated into grads (+=);
// with accumulate = false they are written (=), so grads need no zeroing first.
void gpt_backward(Backend& be, const Config& cfg, const ConstParamViews& params, const ParamViews& grads,
                  Activations& acts, const int32_t* inputs, const int32_t* targets, int N, int t, float dloss,
                  bool accumulate = true);

// Model FLOPs per trained token (forward + backward, matmuls and attention,
// as in the PaLM appendix: 6·P_matmul + 12·L·C·T for full-T context).
double flops_per_token(const Config& cfg);

}  // namespace chargpt
