#include "io/checkpoint.h"

#include "io/json_depth.h"

#include <climits>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace chargpt {

using json = nlohmann::json;

std::string config_to_json(const Config& cfg) {
  return json{{"n_layer", cfg.n_layer}, {"n_head", cfg.n_head}, {"n_embd", cfg.n_embd},
              {"block_size", cfg.block_size}, {"vocab_size", cfg.vocab_size}}
      .dump();
}

Metadata model_metadata(const Config& cfg, const Tokenizer& tok, const Metadata& extra) {
  Metadata meta = extra;
  meta["format"] = kFormatName;
  meta["version"] = kFormatVersion;
  meta["config"] = config_to_json(cfg);
  meta["vocab"] = utf8_encode(tok.vocab);
  return meta;
}

std::vector<TensorRef> model_tensors(const Config& cfg, const float* params) {
  std::vector<TensorRef> tensors;
  for (const auto& s : param_specs(cfg)) tensors.push_back({s.name, s.shape, params + s.offset});
  return tensors;
}

// The index and value of the first non-finite float, or -1.
int64_t first_non_finite(const float* p, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i])) return (int64_t)i;
  return -1;
}

void save_model(const std::string& path, const Config& cfg, const Tokenizer& tok, const float* params,
                const Metadata& extra) {
  write_safetensors(path, model_tensors(cfg, params), model_metadata(cfg, tok, extra));
}

Model model_from_safetensors(const SafetensorsFile& f, Metadata* meta_out) {
  const std::string& path = f.path;
  auto not_ours = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' is not a chargpt checkpoint: " + why);
  };
  auto meta = [&](const char* key) -> const std::string* {
    auto it = f.meta.find(key);
    return it == f.meta.end() ? nullptr : &it->second;
  };
  const std::string* format = meta("format");
  if (!format || *format != kFormatName) throw not_ours("metadata 'format' is not 'chargpt'");
  const std::string* version = meta("version");
  if (!version) throw not_ours("metadata 'version' is missing");
  if (*version != kFormatVersion)
    throw not_ours("format version '" + version->substr(0, 20) + "' is not supported (expected " + kFormatVersion +
                   ")");
  const std::string* config = meta("config");
  if (!config) throw not_ours("metadata 'config' is missing");
  const std::string* vocab = meta("vocab");
  if (!vocab) throw not_ours("metadata 'vocab' is missing");

  Model m;
  try {
    if (json_depth(*config, 1) > 1) throw std::runtime_error("it nests deeper than one object");
    const json c = json::parse(*config);
    if (!c.is_object()) throw std::runtime_error("it is not a JSON object");
    auto field = [&](const char* key) {
      auto it = c.find(key);
      if (it == c.end()) throw std::runtime_error(std::string("it has no '") + key + "'");
      return (int)json_int(*it, INT_MIN, INT_MAX, key);
    };
    m.cfg.n_layer = field("n_layer");
    m.cfg.n_head = field("n_head");
    m.cfg.n_embd = field("n_embd");
    m.cfg.block_size = field("block_size");
    m.cfg.vocab_size = field("vocab_size");
  } catch (const std::exception& e) {
    throw not_ours(std::string("metadata 'config' is malformed: ") + e.what());
  }
  try {
    m.cfg.validate();
  } catch (const std::exception& e) {
    throw not_ours(e.what());
  }

  // The header against the config, before anything the config sizes is built:
  // the tensor count first (cheap), then the total size in checked arithmetic.
  const Config& cfg = m.cfg;
  const uint64_t want_tensors = 4 + 12 * (uint64_t)cfg.n_layer;  // no overflow: n_layer < 2^31
  auto mismatch = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' does not match its own config " + config->substr(0, 200) + ": " +
                              why);
  };
  if (f.tensors.size() < want_tensors)
    throw mismatch("it needs " + std::to_string(want_tensors) + " tensors, the file holds " +
                   std::to_string(f.tensors.size()));
  uint64_t P = 0, bytes = 0;
  const bool ok = checked_num_params(cfg, P) && !__builtin_mul_overflow(P, 4, &bytes);
  if (!ok || bytes > f.data.size())
    throw mismatch(ok ? "its weights need " + std::to_string(bytes) + " bytes, the file holds " +
                            std::to_string(f.data.size())
                      : "its parameter count overflows");
  const auto specs = param_specs(cfg);  // now bounded by the header's own size
  for (const auto& s : specs) {
    auto it = f.tensors.find(s.name);
    if (it == f.tensors.end()) throw std::runtime_error("'" + path + "' has no tensor '" + s.name + "'");
    if (it->second.shape != s.shape)
      throw std::runtime_error("'" + path + "': tensor '" + s.name + "' has shape " + shape_str(it->second.shape) +
                               ", expected " + shape_str(s.shape));
  }

  try {
    m.tok = Tokenizer::from_vocab(utf8_decode(*vocab));
  } catch (const std::exception& e) {
    throw not_ours(std::string("metadata 'vocab': ") + e.what());
  }
  if (m.tok.size() != cfg.vocab_size)
    throw not_ours("vocabulary has " + std::to_string(m.tok.size()) + " characters but config says vocab_size " +
                   std::to_string(cfg.vocab_size));

  m.params.resize(P);
  for (const auto& s : specs) {
    float* dst = m.params.data() + s.offset;
    f.read_tensor(s.name, s.shape, dst);
    const int64_t bad = first_non_finite(dst, s.numel);
    if (bad >= 0)
      throw std::runtime_error("'" + path + "' holds a non-finite weight (" + std::to_string(dst[bad]) +
                               ") in tensor '" + s.name + "' at index " + std::to_string(bad) +
                               ": the model is unusable (saved from a diverged run, or damaged)");
  }
  m.checksum_verified = f.checksum_verified;
  if (meta_out) *meta_out = f.meta;
  return m;
}

Model load_model(const std::string& path, Metadata* meta_out) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec) && !ec) throw std::runtime_error("checkpoint '" + path + "' does not exist");
  return model_from_safetensors(read_safetensors(path), meta_out);
}

std::string unverified_note(const std::string& path, const Model& m) {
  if (m.checksum_verified) return "";
  return "note: '" + path + "' carries no data checksum (not written by this chargpt), so its weights could not be "
         "checked for corruption";
}

}  // namespace chargpt
