// The forward and backward passes of the GPT over one shard of sequences, their
// ops split over threads in fixed blocks (model/blocks.h).
#include <stdexcept>

#include "model/blocks.h"
#include "model/model.h"
#include "ops/ops.h"

namespace chargpt {

namespace {
// The handle of layer l's tensor t (its host floats p) for the backend.
Weight weight(const float* p, int l, LayerTensor t) { return {p, tensor_index(l, t)}; }
}  // namespace

double gpt_forward(Backend& be, const Config& cfg, const ConstParamViews& P, Activations& a, const int32_t* inputs,
                   const int32_t* targets, int N, int t) {
  if (N > a.max_batch || t > cfg.block_size || t < 1)
    throw std::logic_error("gpt_forward: batch or length beyond the activation buffers");
  const int C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head;
  const int R = N * t;
  // A backend with bf16 products gets bf16 copies of their activation inputs, written by the
  // ops that produce them (null otherwise: the fp32 path writes none).
  a.use_bf16(be.wants_bf16_inputs());
  par::encoder_forward(a.encoded, inputs, P.wte, P.wpe, N, t, C);
  const float* x = a.encoded;
  using T = LayerTensor;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const ConstLayerParams& W = P.layers[l];
    Activations::Layer& A = a.layers[l];
    par::layernorm_forward(A.ln1, A.ln1_mean, A.ln1_rstd, x, W.ln1_w, W.ln1_b, R, C, A.ln1_16);
    par::linear_forward(be, A.qkv, {A.ln1, A.ln1_16}, weight(W.qkv_w, l, T::qkv_w), weight(W.qkv_b, l, T::qkv_b), R,
                        C, 3 * C);
    par::attention_forward(A.att_y, A.att_probs, A.qkv, N, t, C, NH);
    if (A.att_y16) par::to_bf16(A.att_y16, A.att_y, R, C);
    par::linear_forward(be, A.res_att, {A.att_y, A.att_y16}, weight(W.attproj_w, l, T::attproj_w),
                        weight(W.attproj_b, l, T::attproj_b), R, C, C);
    par::residual_forward(A.res_att, A.res_att, x, R, C);
    par::layernorm_forward(A.ln2, A.ln2_mean, A.ln2_rstd, A.res_att, W.ln2_w, W.ln2_b, R, C, A.ln2_16);
    par::linear_forward(be, A.fc, {A.ln2, A.ln2_16}, weight(W.fc_w, l, T::fc_w), weight(W.fc_b, l, T::fc_b), R, C,
                        4 * C);
    par::gelu_forward(A.fc_gelu, A.fc, R, 4 * C, A.fc_gelu16);
    par::linear_forward(be, A.res_mlp, {A.fc_gelu, A.fc_gelu16}, weight(W.fcproj_w, l, T::fcproj_w),
                        weight(W.fcproj_b, l, T::fcproj_b), R, 4 * C, C);
    par::residual_forward(A.res_mlp, A.res_mlp, A.res_att, R, C);
    x = A.res_mlp;
  }
  par::layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, P.lnf_w, P.lnf_b, R, C, a.lnf16);
  par::linear_forward(be, a.probs, {a.lnf, a.lnf16}, {P.wte, kWteTensor}, {}, R, C, V);  // tied LM head
  if (!targets) return 0.0;
  par::softmax_crossentropy_forward(a.losses, a.probs, a.probs, targets, R, V);
  return loss_sum(a.losses, (size_t)R);
}

void gpt_backward(Backend& be, const Config& cfg, const ConstParamViews& P, const ParamViews& G, Activations& a,
                  const int32_t* inputs, const int32_t* targets, int N, int t, float dloss, bool accumulate) {
  const int C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head;
  const int R = N * t;
  const size_t RC = (size_t)R * C;
  if (!accumulate) {
    // The matrices and biases are written by their first (only) linear_backward;
    // LayerNorm and wpe gradients are sums of += and start from zero here.
    fill_zero(G.wpe, (size_t)cfg.block_size * C);
    for (const LayerParams& L : G.layers)
      for (float* p : {L.ln1_w, L.ln1_b, L.ln2_w, L.ln2_b}) fill_zero(p, C);
    fill_zero(G.lnf_w, C);
    fill_zero(G.lnf_b, C);
  }
  float* d_logits = a.probs;  // in place
  par::softmax_crossentropy_backward(d_logits, a.probs, targets, dloss, R, V);
  // wte: the LM head's product first, so that it may overwrite; the encoder adds to it.
  // The activation inputs carry the forward's bf16 copies (null where it wrote none).
  par::linear_backward(be, a.d_c, G.wte, nullptr, d_logits, {a.lnf, a.lnf16}, {P.wte, kWteTensor}, R, C, V,
                       accumulate);
  const float* x_last = cfg.n_layer ? a.layers.back().res_mlp : a.encoded;
  fill_zero(a.d_res, RC);
  par::layernorm_backward(a.d_res, G.lnf_w, G.lnf_b, a.d_c, x_last, P.lnf_w, a.lnf_mean, a.lnf_rstd, R, C);
  using T = LayerTensor;
  for (int l = cfg.n_layer - 1; l >= 0; --l) {
    const ConstLayerParams& W = P.layers[l];
    const LayerParams& dW = G.layers[l];
    Activations::Layer& A = a.layers[l];
    const float* x_in = l ? a.layers[l - 1].res_mlp : a.encoded;
    // MLP: res_mlp = res_att + fcproj(gelu(fc(ln2(res_att))))
    par::linear_backward(be, a.d_fc, dW.fcproj_w, dW.fcproj_b, a.d_res, {A.fc_gelu, A.fc_gelu16},
                         weight(W.fcproj_w, l, T::fcproj_w), R, 4 * C, C, accumulate);
    par::gelu_backward(a.d_fc, A.fc, a.d_fc, R, 4 * C);
    par::linear_backward(be, a.d_c, dW.fc_w, dW.fc_b, a.d_fc, {A.ln2, A.ln2_16}, weight(W.fc_w, l, T::fc_w), R, C,
                         4 * C, accumulate);
    par::layernorm_backward(a.d_res, dW.ln2_w, dW.ln2_b, a.d_c, A.res_att, W.ln2_w, A.ln2_mean, A.ln2_rstd, R, C);
    // Attention: res_att = x_in + attproj(attention(qkv(ln1(x_in))))
    par::linear_backward(be, a.d_c, dW.attproj_w, dW.attproj_b, a.d_res, {A.att_y, A.att_y16},
                         weight(W.attproj_w, l, T::attproj_w), R, C, C, accumulate);
    par::attention_backward(a.d_qkv, a.d_c, A.qkv, A.att_probs, N, t, C, NH);
    par::linear_backward(be, a.d_c, dW.qkv_w, dW.qkv_b, a.d_qkv, {A.ln1, A.ln1_16}, weight(W.qkv_w, l, T::qkv_w), R,
                         C, 3 * C, accumulate);
    par::layernorm_backward(a.d_res, dW.ln1_w, dW.ln1_b, a.d_c, x_in, W.ln1_w, A.ln1_mean, A.ln1_rstd, R, C);
  }
  encoder_backward(G.wte, G.wpe, a.d_res, inputs, N, t, C);
}

}  // namespace chargpt
