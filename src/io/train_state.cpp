#include "io/train_state.h"

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "base/fs.h"
#include "base/hash.h"

namespace chargpt {

std::string optim_state_path(const std::string& weights_path) {
  std::string base = weights_path;
  const std::string ext = ".safetensors";
  if (base.size() > ext.size() && base.ends_with(ext)) base.resize(base.size() - ext.size());
  return base + ".optim.safetensors";
}

int parse_step(const std::string& text, const std::string& what) {
  const bool digits = !text.empty() && text.size() <= 10 &&
                      std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
  const long long v = digits ? std::stoll(text) : -1;
  if (!digits || v > INT_MAX)
    throw std::runtime_error(what + " '" + text.substr(0, 40) + "' is not a step count (an integer in 0.." +
                             std::to_string(INT_MAX) + ")");
  return (int)v;
}

std::string encode_rng_state(const std::array<uint64_t, 4>& s) {
  return hex64(s[0]) + " " + hex64(s[1]) + " " + hex64(s[2]) + " " + hex64(s[3]);
}

std::array<uint64_t, 4> decode_rng_state(const std::string& text) {
  std::array<uint64_t, 4> s{};
  bool ok = text.size() == 4 * 17 - 1;
  for (size_t w = 0; ok && w < 4; ++w) {
    ok = parse_hex64(text.data() + w * 17, s[w]);
    if (ok && w < 3) ok = text[w * 17 + 16] == ' ';
  }
  if (!ok)
    throw std::runtime_error("data_rng '" + text.substr(0, 80) + "' is not four 16-digit hexadecimal words");
  return s;
}

namespace {

// Whether optimizer-file metadata `om` is the state that weights metadata `wm`
// record: the same step, and the checksum the weights name (files written
// before the checksum existed: the step alone).
bool pairs_with(const Metadata& wm, const Metadata& om) {
  auto get = [](const Metadata& m, const char* k) {
    auto it = m.find(k);
    return it == m.end() ? std::string() : it->second;
  };
  if (get(om, "format") != kOptimFormatName) return false;
  const std::string step = get(wm, "step");
  if (step.empty() || get(om, "step") != step) return false;
  const std::string want = get(wm, "optim_checksum");
  return want.empty() || get(om, kChecksumKey) == want;
}

bool pairs_on_disk(const std::string& weights_path, const std::string& optim_path) {
  try {
    return pairs_with(read_safetensors_metadata(weights_path), read_safetensors_metadata(optim_path));
  } catch (const std::exception&) {
    return false;  // missing or unreadable: nothing there to keep
  }
}

}  // namespace

void save_training_checkpoint(const std::string& weights_path, const Config& cfg, const Tokenizer& tok,
                              const float* params, const float* m, const float* v, const TrainState& st) {
  const std::string opath = optim_state_path(weights_path), prev = opath + ".prev";
  const std::string wtmp = weights_path + ".tmp", otmp = opath + ".tmp";
  make_parent_dirs(weights_path);

  Metadata ometa{{"format", kOptimFormatName},
                 {"version", kOptimFormatVersion},
                 {"config", config_to_json(cfg)},
                 {"step", std::to_string(st.step)},
                 {"data_rng", encode_rng_state(st.data_rng)},
                 {"seed", std::to_string(st.seed)},
                 {"batch_size", std::to_string(st.batch_size)},
                 {"data_bytes", std::to_string(st.data_bytes)},
                 {"data_hash", hex64(st.data_hash)},
                 {"data_path", st.data_path}};
  const int64_t P = (int64_t)num_params(cfg);
  // 1. Both new files, complete and on disk, under temporary names.
  try {
    const std::string ochecksum = write_safetensors_synced(otmp, {{"adamw.m", {P}, m}, {"adamw.v", {P}, v}}, ometa);
    Metadata wextra{{"step", std::to_string(st.step)}, {"optim_checksum", ochecksum}};
    if (!st.trained_with.empty()) wextra["trained_with"] = st.trained_with;
    if (!st.trained_on.empty()) wextra["trained_on"] = st.trained_on;
    write_safetensors_synced(wtmp, model_tensors(cfg, params), model_metadata(cfg, tok, wextra));
  } catch (...) {
    remove_quietly(otmp);
    remove_quietly(wtmp);
    throw;
  }
  try {
    // 2. Keep the state of the weights on disk, if it is the optimizer file.
    if (pairs_on_disk(weights_path, opath)) rename_or_throw(opath, prev);
    // 3, 4. The new optimizer state, then the weights that name it.
    rename_or_throw(otmp, opath);
    sync_dir_of(weights_path);
    rename_or_throw(wtmp, weights_path);
    sync_dir_of(weights_path);
  } catch (...) {
    remove_quietly(otmp);  // whatever was not renamed; the pair on disk is consistent
    remove_quietly(wtmp);
    throw;
  }
  // 5. The previous pair's state is no longer needed.
  remove_quietly(prev);
}

TrainState load_optimizer_state(const std::string& weights_path, const Model& model, const Metadata& wmeta, float* m,
                                float* v) {
  const std::string opath = optim_state_path(weights_path), prev = opath + ".prev";
  auto wstep_it = wmeta.find("step");
  if (wstep_it == wmeta.end())
    throw std::runtime_error("cannot resume: '" + weights_path +
                             "' records no training step (it was not saved by chargpt train)");
  const int wstep = parse_step(wstep_it->second, "cannot resume: '" + weights_path + "' has step");

  // The optimizer file, else the one an interrupted save kept as .prev.
  std::string why[2];
  const std::string candidates[2] = {opath, prev};
  for (int c = 0; c < 2; ++c) {
    const std::string& path = candidates[c];
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      why[c] = "does not exist";
      continue;
    }
    Metadata om;
    try {
      om = read_safetensors_metadata(path);
    } catch (const std::exception& e) {
      why[c] = std::string("is unreadable (") + e.what() + ")";
      continue;
    }
    if (!pairs_with(wmeta, om)) {
      auto s = om.find("step");
      why[c] = om["format"] != kOptimFormatName ? "is not a chargpt optimizer state file"
               : s == om.end()                  ? "records no step"
               : s->second != wstep_it->second  ? "is from step " + s->second.substr(0, 20)
                                                : "is not the state that the weights file records (checksum differs)";
      continue;
    }
    // The pair: read it whole (this verifies its checksum) and check it.
    const SafetensorsFile f = read_safetensors(path);
    auto get = [&](const char* key) -> std::string {
      auto it = f.meta.find(key);
      if (it == f.meta.end()) throw std::runtime_error("'" + path + "': metadata '" + key + "' is missing");
      return it->second;
    };
    const std::string version = get("version");
    if (version != "1" && version != "2")
      throw std::runtime_error("'" + path + "' has optimizer-state format version '" + version.substr(0, 20) +
                               "'; this chargpt reads versions 1 and 2");
    if (get("config") != config_to_json(model.cfg))
      throw std::runtime_error("cannot resume: '" + path + "' belongs to a different model config (" +
                               get("config").substr(0, 200) + ")");
    const int64_t P = (int64_t)num_params(model.cfg);
    f.read_tensor("adamw.m", {P}, m);
    f.read_tensor("adamw.v", {P}, v);
    if (first_non_finite(m, (size_t)P) >= 0 || first_non_finite(v, (size_t)P) >= 0)
      throw std::runtime_error("'" + path + "' holds non-finite optimizer moments: it cannot be resumed from");
    if (const float* neg = std::find_if(v, v + P, [](float x) { return x < 0; }); neg != v + P)
      throw std::runtime_error("'" + path + "' holds a negative second moment (adamw.v[" + std::to_string(neg - v) +
                               "] = " + std::to_string(*neg) + "), which AdamW never writes: it cannot be resumed from");
    TrainState st;
    st.step = wstep;
    if (auto it = wmeta.find("trained_with"); it != wmeta.end()) st.trained_with = it->second.substr(0, 200);
    if (auto it = wmeta.find("trained_on"); it != wmeta.end()) st.trained_on = it->second.substr(0, 200);
    try {
      st.data_rng = decode_rng_state(get("data_rng"));
    } catch (const std::exception& e) {
      throw std::runtime_error("'" + path + "': " + e.what());
    }
    if (version == "2") {
      st.has_run_identity = true;
      auto number = [&](const char* key, uint64_t max) {
        const std::string s = get(key);
        char* end = nullptr;
        errno = 0;
        const unsigned long long x = std::strtoull(s.c_str(), &end, 10);
        if (s.empty() || s[0] == '-' || *end || errno || x > max)
          throw std::runtime_error("'" + path + "': metadata '" + key + "' is '" + s.substr(0, 40) +
                                   "', not a number in 0.." + std::to_string(max));
        return (uint64_t)x;
      };
      st.seed = number("seed", UINT64_MAX);
      st.batch_size = (int)number("batch_size", INT_MAX);
      st.data_bytes = number("data_bytes", UINT64_MAX);
      const std::string h = get("data_hash");
      if (h.size() != 16 || !parse_hex64(h.data(), st.data_hash))
        throw std::runtime_error("'" + path + "': metadata 'data_hash' is '" + h.substr(0, 40) +
                                 "', not 16 hexadecimal digits");
      st.data_path = get("data_path");
    }
    return st;
  }
  throw std::runtime_error("cannot resume: no optimizer state for step " + std::to_string(wstep) + " of '" +
                           weights_path + "': '" + opath + "' " + why[0] + ", and its backup '" + prev + "' " +
                           why[1] + " (a save was interrupted, or the files were moved apart)");
}

}  // namespace chargpt
