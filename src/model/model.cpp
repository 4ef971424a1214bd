#include "model/model.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

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

double flops_per_token(const Config& cfg) {
  const double L = cfg.n_layer, C = cfg.n_embd, V = cfg.vocab_size, T = cfg.block_size;
  const double matmul_params = L * 12.0 * C * C + V * C;
  return 6.0 * matmul_params + 12.0 * L * C * T;
}

}  // namespace chargpt
