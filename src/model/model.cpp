#include "model/model.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "ops/ops.h"
#include "base/rng.h"

namespace chargpt {

void Config::validate() const {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::runtime_error("invalid model config: " + what);
  };
  need(vocab_size >= 1, "vocab_size " + std::to_string(vocab_size) + " must be >= 1");
  need(block_size >= 1 && block_size <= 4096, "block_size " + std::to_string(block_size) + " must be in 1..4096");
  need(n_layer >= 1, "n_layer " + std::to_string(n_layer) + " must be >= 1");
  need(n_head >= 1, "n_head " + std::to_string(n_head) + " must be >= 1");
  need(n_embd >= 1, "n_embd " + std::to_string(n_embd) + " must be >= 1");
  need(n_embd % n_head == 0,
       "n_embd " + std::to_string(n_embd) + " must be divisible by n_head " + std::to_string(n_head));
}

bool operator==(const Config& a, const Config& b) {
  return a.vocab_size == b.vocab_size && a.block_size == b.block_size && a.n_layer == b.n_layer &&
         a.n_head == b.n_head && a.n_embd == b.n_embd;
}

std::vector<ParamSpec> param_specs(const Config& cfg) {
  const int64_t V = cfg.vocab_size, T = cfg.block_size, C = cfg.n_embd;
  std::vector<ParamSpec> specs;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    size_t n = 1;
    for (auto d : shape) n *= (size_t)d;
    const bool decay = shape.size() >= 2;
    specs.push_back({std::move(name), std::move(shape), offset, n, decay});
    offset += n;
  };
  add("transformer.wte.weight", {V, C});
  add("transformer.wpe.weight", {T, C});
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {C});
    add(p + "ln_1.bias", {C});
    add(p + "attn.c_attn.weight", {3 * C, C});
    add(p + "attn.c_attn.bias", {3 * C});
    add(p + "attn.c_proj.weight", {C, C});
    add(p + "attn.c_proj.bias", {C});
    add(p + "ln_2.weight", {C});
    add(p + "ln_2.bias", {C});
    add(p + "mlp.c_fc.weight", {4 * C, C});
    add(p + "mlp.c_fc.bias", {4 * C});
    add(p + "mlp.c_proj.weight", {C, 4 * C});
    add(p + "mlp.c_proj.bias", {C});
  }
  add("transformer.ln_f.weight", {C});
  add("transformer.ln_f.bias", {C});
  return specs;
}

size_t num_params(const Config& cfg) {
  const auto specs = param_specs(cfg);
  return specs.back().offset + specs.back().numel;
}

ParamViews param_views(const Config& cfg, float* block) {
  const auto specs = param_specs(cfg);
  size_t i = 0;
  auto next = [&]() { return block + specs[i++].offset; };
  ParamViews v;
  v.wte = next();
  v.wpe = next();
  v.layers.resize(cfg.n_layer);
  for (auto& L : v.layers) {
    L.ln1_w = next(); L.ln1_b = next();
    L.qkv_w = next(); L.qkv_b = next();
    L.attproj_w = next(); L.attproj_b = next();
    L.ln2_w = next(); L.ln2_b = next();
    L.fc_w = next(); L.fc_b = next();
    L.fcproj_w = next(); L.fcproj_b = next();
  }
  v.lnf_w = next();
  v.lnf_b = next();
  return v;
}

void init_params(const Config& cfg, float* block, uint64_t seed) {
  Rng rng(seed);
  const double std_resid = 0.02 / std::sqrt(2.0 * cfg.n_layer);
  for (const auto& s : param_specs(cfg)) {
    float* p = block + s.offset;
    const bool is_ln = s.name.find(".ln_") != std::string::npos;
    const bool is_weight = s.name.ends_with(".weight");
    if (is_ln) {
      std::fill(p, p + s.numel, is_weight ? 1.f : 0.f);
    } else if (!is_weight) {
      std::fill(p, p + s.numel, 0.f);
    } else {
      const bool resid = s.name.ends_with("c_proj.weight");
      const double sd = resid ? std_resid : 0.02;
      for (size_t i = 0; i < s.numel; ++i) p[i] = (float)(sd * rng.normal());
    }
  }
}

Activations::Activations(const Config& cfg, int max_batch_) : max_batch(max_batch_) {
  const size_t N = max_batch, T = cfg.block_size, C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head;
  const size_t BT = N * T;
  // Each array starts on a 64-byte boundary. The layout is walked twice: once to
  // measure it, once more to point into the allocation.
  size_t used = 0;
  auto take = [&](size_t n) {
    float* r = mem.size() ? mem.data() + used : nullptr;
    used += (n + 15) / 16 * 16;
    return r;
  };
  auto lay_out = [&] {
    used = 0;
    encoded = take(BT * C);
    for (auto& L : layers) {
      L.ln1 = take(BT * C); L.ln1_mean = take(BT); L.ln1_rstd = take(BT);
      L.qkv = take(BT * 3 * C);
      L.att_probs = take(N * NH * T * T);
      L.att_y = take(BT * C);
      L.res_att = take(BT * C);
      L.ln2 = take(BT * C); L.ln2_mean = take(BT); L.ln2_rstd = take(BT);
      L.fc = take(BT * 4 * C);
      L.fc_gelu = take(BT * 4 * C);
      L.res_mlp = take(BT * C);
    }
    lnf = take(BT * C); lnf_mean = take(BT); lnf_rstd = take(BT);
    probs = take(BT * V);
    losses = take(BT);
    d_res = take(BT * C);
    d_c = take(BT * C);
    d_qkv = take(BT * 3 * C);
    d_fc = take(BT * 4 * C);
    att_scratch = take(attention_scratch_floats(T, C / NH));
  };
  layers.resize(cfg.n_layer);
  lay_out();
  mem.resize(used);
  lay_out();
  rows_ = BT;
  C_ = C;
}

void Activations::enable_bf16() {
  if (has_bf16()) return;
  const size_t RC = rows_ * C_, per_layer = 8 * RC;  // ln1, att_y, ln2: RC each; fc_gelu: 4 RC
  mem16.assign(layers.size() * per_layer + RC, 0);
  uint16_t* p = mem16.data();
  for (auto& L : layers) {
    L.ln1_16 = p, L.att_y16 = p + RC, L.ln2_16 = p + 2 * RC, L.fc_gelu16 = p + 3 * RC;
    p += per_layer;
  }
  lnf16 = p;
}

double gpt_forward(Backend& be, const Config& cfg, const ParamViews& P, Activations& a, const int32_t* inputs,
                   const int32_t* targets, int N, int t) {
  if (N > a.max_batch || t > cfg.block_size || t < 1)
    throw std::logic_error("gpt_forward: batch or length beyond the activation buffers");
  const int C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head;
  const int R = N * t;
  // A backend with bf16 products gets bf16 copies of their activation inputs, written by the
  // ops that produce them (all null otherwise: the fp32 path is the same code as ever).
  if (be.wants_bf16_inputs()) a.enable_bf16();
  const bool b16 = be.wants_bf16_inputs() && a.has_bf16();
  a.bf16_written = b16;
  encoder_forward(a.encoded, inputs, P.wte, P.wpe, N, t, C);
  const float* x = a.encoded;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const LayerParams& W = P.layers[l];
    Activations::Layer& A = a.layers[l];
    uint16_t* ln1_16 = b16 ? A.ln1_16 : nullptr;
    uint16_t* att_y16 = b16 ? A.att_y16 : nullptr;
    uint16_t* ln2_16 = b16 ? A.ln2_16 : nullptr;
    uint16_t* fc_gelu16 = b16 ? A.fc_gelu16 : nullptr;
    layernorm_forward(A.ln1, A.ln1_mean, A.ln1_rstd, x, W.ln1_w, W.ln1_b, R, C, ln1_16);
    be.linear_forward16(A.qkv, A.ln1, ln1_16, W.qkv_w, W.qkv_b, R, C, 3 * C);
    attention_forward(A.att_y, A.att_probs, a.att_scratch, A.qkv, N, t, C, NH);
    if (att_y16) to_bf16(att_y16, A.att_y, (size_t)R * C);
    be.linear_forward16(A.res_att, A.att_y, att_y16, W.attproj_w, W.attproj_b, R, C, C);
    residual_forward(A.res_att, A.res_att, x, (size_t)R * C);
    layernorm_forward(A.ln2, A.ln2_mean, A.ln2_rstd, A.res_att, W.ln2_w, W.ln2_b, R, C, ln2_16);
    be.linear_forward16(A.fc, A.ln2, ln2_16, W.fc_w, W.fc_b, R, C, 4 * C);
    gelu_forward(A.fc_gelu, A.fc, (size_t)R * 4 * C, fc_gelu16);
    be.linear_forward16(A.res_mlp, A.fc_gelu, fc_gelu16, W.fcproj_w, W.fcproj_b, R, 4 * C, C);
    residual_forward(A.res_mlp, A.res_mlp, A.res_att, (size_t)R * C);
    x = A.res_mlp;
  }
  uint16_t* lnf16 = b16 ? a.lnf16 : nullptr;
  layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, P.lnf_w, P.lnf_b, R, C, lnf16);
  be.linear_forward16(a.probs, a.lnf, lnf16, P.wte, nullptr, R, C, V);  // tied LM head
  if (!targets) return 0.0;
  softmax_crossentropy_forward(a.losses, a.probs, a.probs, targets, R, V);
  return loss_sum(a.losses, (size_t)R);
}

void gpt_backward(Backend& be, const Config& cfg, const ParamViews& P, const ParamViews& G, Activations& a,
                  const int32_t* inputs, const int32_t* targets, int N, int t, float dloss, bool accumulate) {
  const int C = cfg.n_embd, V = cfg.vocab_size, NH = cfg.n_head;
  const int R = N * t;
  const size_t RC = (size_t)R * C;
  // The forward's bf16 copies (if it wrote them) serve the weight gradients' products.
  const bool b16 = be.wants_bf16_inputs() && a.bf16_written;
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
  softmax_crossentropy_backward(d_logits, a.probs, targets, dloss, R, V);
  // wte: the LM head's product first, so that it may overwrite; the encoder adds to it.
  be.linear_backward16(a.d_c, G.wte, nullptr, d_logits, a.lnf, b16 ? a.lnf16 : nullptr, P.wte, R, C, V, accumulate);
  const float* x_last = cfg.n_layer ? a.layers.back().res_mlp : a.encoded;
  fill_zero(a.d_res, RC);
  layernorm_backward(a.d_res, G.lnf_w, G.lnf_b, a.d_c, x_last, P.lnf_w, a.lnf_mean, a.lnf_rstd, R, C);
  for (int l = cfg.n_layer - 1; l >= 0; --l) {
    const LayerParams& W = P.layers[l];
    const LayerParams& dW = G.layers[l];
    Activations::Layer& A = a.layers[l];
    const float* x_in = l ? a.layers[l - 1].res_mlp : a.encoded;
    // MLP: res_mlp = res_att + fcproj(gelu(fc(ln2(res_att))))
    be.linear_backward16(a.d_fc, dW.fcproj_w, dW.fcproj_b, a.d_res, A.fc_gelu, b16 ? A.fc_gelu16 : nullptr,
                         W.fcproj_w, R, 4 * C, C, accumulate);
    gelu_backward(a.d_fc, A.fc, a.d_fc, (size_t)R * 4 * C);
    be.linear_backward16(a.d_c, dW.fc_w, dW.fc_b, a.d_fc, A.ln2, b16 ? A.ln2_16 : nullptr, W.fc_w, R, C, 4 * C,
                         accumulate);
    layernorm_backward(a.d_res, dW.ln2_w, dW.ln2_b, a.d_c, A.res_att, W.ln2_w, A.ln2_mean, A.ln2_rstd, R, C);
    // Attention: res_att = x_in + attproj(attention(qkv(ln1(x_in))))
    be.linear_backward16(a.d_c, dW.attproj_w, dW.attproj_b, a.d_res, A.att_y, b16 ? A.att_y16 : nullptr, W.attproj_w,
                         R, C, C, accumulate);
    attention_backward(a.d_qkv, a.att_scratch, a.d_c, A.qkv, A.att_probs, N, t, C, NH);
    be.linear_backward16(a.d_c, dW.qkv_w, dW.qkv_b, a.d_qkv, A.ln1, b16 ? A.ln1_16 : nullptr, W.qkv_w, R, C, 3 * C,
                         accumulate);
    layernorm_backward(a.d_res, dW.ln1_w, dW.ln1_b, a.d_c, x_in, W.ln1_w, A.ln1_mean, A.ln1_rstd, R, C);
  }
  encoder_backward(G.wte, G.wpe, a.d_res, inputs, N, t, C);
}

double flops_per_token(const Config& cfg) {
  const double L = cfg.n_layer, C = cfg.n_embd, V = cfg.vocab_size, T = cfg.block_size;
  const double matmul_params = L * 12.0 * C * C + V * C;
  return 6.0 * matmul_params + 12.0 * L * C * T;
}

}  // namespace chargpt
