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
  const std::string heads = head_split_problem(*this);
  need(heads.empty(), heads);
}

std::string head_split_problem(const Config& cfg, const std::string& embd, const std::string& head) {
  if (cfg.n_head >= 1 && cfg.n_embd % cfg.n_head == 0) return "";
  return embd + " " + std::to_string(cfg.n_embd) + " must be divisible by " + head + " " + std::to_string(cfg.n_head);
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
    if (specs.size() != (size_t)tensor_index(l, LayerTensor::ln1_w))
      throw std::logic_error("param_specs: layer tensors out of tensor_index order");
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

bool checked_num_params(const Config& cfg, uint64_t& out) {
  const uint64_t V = (uint64_t)cfg.vocab_size, T = (uint64_t)cfg.block_size, C = (uint64_t)cfg.n_embd,
                 L = (uint64_t)cfg.n_layer;
  auto mul = [](uint64_t a, uint64_t b, uint64_t& r) { return !__builtin_mul_overflow(a, b, &r); };
  auto add = [](uint64_t a, uint64_t b, uint64_t& r) { return !__builtin_add_overflow(a, b, &r); };
  uint64_t vc, tc, cc, per_layer, c13, layers, c2;
  return mul(V, C, vc) && mul(T, C, tc) && mul(C, C, cc) && mul(cc, 12, per_layer) && mul(C, 13, c13) &&
         add(per_layer, c13, per_layer) && mul(per_layer, L, layers) && mul(C, 2, c2) && add(vc, tc, out) &&
         add(out, layers, out) && add(out, c2, out);
}

size_t num_params(const Config& cfg) {
  uint64_t n = 0;
  if (!checked_num_params(cfg, n))
    throw std::overflow_error("the parameter count of n_layer " + std::to_string(cfg.n_layer) + ", n_embd " +
                              std::to_string(cfg.n_embd) + " overflows 64 bits");
  return (size_t)n;
}

WeightTable weight_table(const Config& cfg, const float* block) {
  WeightTable t;
  t.block = block;
  for (const ParamSpec& s : param_specs(cfg)) t.tensors.push_back({s.offset, s.numel});
  t.floats = t.tensors.back().offset + t.tensors.back().numel;
  return t;
}

namespace {

template <class F>
BlockViews<F> views_of(const Config& cfg, F* block) {
  const auto specs = param_specs(cfg);
  size_t i = 0;
  auto next = [&]() { return block + specs[i++].offset; };
  BlockViews<F> v;
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

}  // namespace

ParamViews param_views(const Config& cfg, float* block) { return views_of(cfg, block); }
ConstParamViews param_views(const Config& cfg, const float* block) { return views_of(cfg, block); }

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

namespace {

// Arrays start on 64-byte boundaries: each takes a multiple of 16 floats.
size_t rounded(size_t n) { return (n + 15) / 16 * 16; }
double rounded(double n) { return std::ceil(n / 16) * 16; }

// The activation layout, written once: take(n) hands out the next array of n
// floats, n counted in S (size_t to allocate, double to estimate). In memory:
// encoded, each layer's arrays, the rest.
template <class S, class Take>
void lay_out_layer(Activations::Layer& L, const Config& cfg, S N, const Take& take) {
  const S T = cfg.block_size, C = cfg.n_embd, NH = cfg.n_head, BT = N * T;
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
template <class S, class Take>
void lay_out_rest(Activations& a, const Config& cfg, S N, const Take& take) {
  const S T = cfg.block_size, C = cfg.n_embd, V = cfg.vocab_size, BT = N * T;
  a.lnf = take(BT * C); a.lnf_mean = take(BT); a.lnf_rstd = take(BT);
  a.probs = take(BT * V);
  a.losses = take(BT);
  a.d_res = take(BT * C);
  a.d_c = take(BT * C);
  a.d_qkv = take(BT * 3 * C);
  a.d_fc = take(BT * 4 * C);
  a.att_scratch = take((S)attention_scratch_floats(cfg.block_size, cfg.n_embd / cfg.n_head));
}

}  // namespace

Activations::Activations(const Config& cfg, int max_batch_) : max_batch(max_batch_) {
  const size_t N = max_batch, T = cfg.block_size, C = cfg.n_embd;
  layers.resize(cfg.n_layer);
  mem.resize((size_t)floats_needed(cfg, (double)N));
  size_t used = 0;
  auto take = [&](size_t n) {
    float* r = mem.data() + used;
    used += rounded(n);
    return r;
  };
  encoded = take(N * T * C);
  for (auto& L : layers) lay_out_layer(L, cfg, N, take);
  lay_out_rest(*this, cfg, N, take);
  if (used != mem.size()) throw std::logic_error("Activations: the layout and its size disagree");
  rows_ = N * T;
  C_ = C;
}

double Activations::floats_needed(const Config& cfg, double N) {
  const double T = cfg.block_size, C = cfg.n_embd;
  double used = 0;
  auto take = [&](double n) {
    used += rounded(n);
    return (float*)nullptr;
  };
  Activations none;
  Layer layer;
  take(N * T * C);
  const double before = used;
  lay_out_layer(layer, cfg, N, take);
  used += (used - before) * (cfg.n_layer - 1);  // every layer the same
  lay_out_rest(none, cfg, N, take);
  return used;
}

void Activations::use_bf16(bool on) {
  const size_t RC = rows_ * C_, per_layer = 8 * RC;  // ln1, att_y, ln2: RC each; fc_gelu: 4 RC
  if (on && mem16.empty()) mem16.assign(layers.size() * per_layer + RC, 0);
  uint16_t* p = on ? mem16.data() : nullptr;
  for (auto& L : layers) {
    L.ln1_16 = p, L.att_y16 = p ? p + RC : p, L.ln2_16 = p ? p + 2 * RC : p, L.fc_gelu16 = p ? p + 3 * RC : p;
    if (p) p += per_layer;
  }
  lnf16 = p;
}

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
  encoder_forward(a.encoded, inputs, P.wte, P.wpe, N, t, C);
  const float* x = a.encoded;
  using T = LayerTensor;
  for (int l = 0; l < cfg.n_layer; ++l) {
    const ConstLayerParams& W = P.layers[l];
    Activations::Layer& A = a.layers[l];
    layernorm_forward(A.ln1, A.ln1_mean, A.ln1_rstd, x, W.ln1_w, W.ln1_b, R, C, A.ln1_16);
    be.linear_forward(A.qkv, {A.ln1, A.ln1_16}, weight(W.qkv_w, l, T::qkv_w), weight(W.qkv_b, l, T::qkv_b), R, C,
                      3 * C);
    attention_forward(A.att_y, A.att_probs, a.att_scratch, A.qkv, N, t, C, NH);
    if (A.att_y16) to_bf16(A.att_y16, A.att_y, (size_t)R * C);
    be.linear_forward(A.res_att, {A.att_y, A.att_y16}, weight(W.attproj_w, l, T::attproj_w),
                      weight(W.attproj_b, l, T::attproj_b), R, C, C);
    residual_forward(A.res_att, A.res_att, x, (size_t)R * C);
    layernorm_forward(A.ln2, A.ln2_mean, A.ln2_rstd, A.res_att, W.ln2_w, W.ln2_b, R, C, A.ln2_16);
    be.linear_forward(A.fc, {A.ln2, A.ln2_16}, weight(W.fc_w, l, T::fc_w), weight(W.fc_b, l, T::fc_b), R, C, 4 * C);
    gelu_forward(A.fc_gelu, A.fc, (size_t)R * 4 * C, A.fc_gelu16);
    be.linear_forward(A.res_mlp, {A.fc_gelu, A.fc_gelu16}, weight(W.fcproj_w, l, T::fcproj_w),
                      weight(W.fcproj_b, l, T::fcproj_b), R, 4 * C, C);
    residual_forward(A.res_mlp, A.res_mlp, A.res_att, (size_t)R * C);
    x = A.res_mlp;
  }
  layernorm_forward(a.lnf, a.lnf_mean, a.lnf_rstd, x, P.lnf_w, P.lnf_b, R, C, a.lnf16);
  be.linear_forward(a.probs, {a.lnf, a.lnf16}, {P.wte, kWteTensor}, {}, R, C, V);  // tied LM head
  if (!targets) return 0.0;
  softmax_crossentropy_forward(a.losses, a.probs, a.probs, targets, R, V);
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
  softmax_crossentropy_backward(d_logits, a.probs, targets, dloss, R, V);
  // wte: the LM head's product first, so that it may overwrite; the encoder adds to it.
  // The activation inputs carry the forward's bf16 copies (null where it wrote none).
  be.linear_backward(a.d_c, G.wte, nullptr, d_logits, {a.lnf, a.lnf16}, {P.wte, kWteTensor}, R, C, V, accumulate);
  const float* x_last = cfg.n_layer ? a.layers.back().res_mlp : a.encoded;
  fill_zero(a.d_res, RC);
  layernorm_backward(a.d_res, G.lnf_w, G.lnf_b, a.d_c, x_last, P.lnf_w, a.lnf_mean, a.lnf_rstd, R, C);
  using T = LayerTensor;
  for (int l = cfg.n_layer - 1; l >= 0; --l) {
    const ConstLayerParams& W = P.layers[l];
    const LayerParams& dW = G.layers[l];
    Activations::Layer& A = a.layers[l];
    const float* x_in = l ? a.layers[l - 1].res_mlp : a.encoded;
    // MLP: res_mlp = res_att + fcproj(gelu(fc(ln2(res_att))))
    be.linear_backward(a.d_fc, dW.fcproj_w, dW.fcproj_b, a.d_res, {A.fc_gelu, A.fc_gelu16},
                       weight(W.fcproj_w, l, T::fcproj_w), R, 4 * C, C, accumulate);
    gelu_backward(a.d_fc, A.fc, a.d_fc, (size_t)R * 4 * C);
    be.linear_backward(a.d_c, dW.fc_w, dW.fc_b, a.d_fc, {A.ln2, A.ln2_16}, weight(W.fc_w, l, T::fc_w), R, C, 4 * C,
                       accumulate);
    layernorm_backward(a.d_res, dW.ln2_w, dW.ln2_b, a.d_c, A.res_att, W.ln2_w, A.ln2_mean, A.ln2_rstd, R, C);
    // Attention: res_att = x_in + attproj(attention(qkv(ln1(x_in))))
    be.linear_backward(a.d_c, dW.attproj_w, dW.attproj_b, a.d_res, {A.att_y, A.att_y16},
                       weight(W.attproj_w, l, T::attproj_w), R, C, C, accumulate);
    attention_backward(a.d_qkv, a.att_scratch, a.d_c, A.qkv, A.att_probs, N, t, C, NH);
    be.linear_backward(a.d_c, dW.qkv_w, dW.qkv_b, a.d_qkv, {A.ln1, A.ln1_16}, weight(W.qkv_w, l, T::qkv_w), R, C,
                       3 * C, accumulate);
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
