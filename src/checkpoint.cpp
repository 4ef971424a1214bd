#include "chargpt/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "chargpt/data.h"

namespace chargpt {

using json = nlohmann::json;
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

static void write_all(int fd, const void* p, size_t n, const std::string& path) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot write '" + path + "': " + std::strerror(errno));
    }
    c += w;
    n -= (size_t)w;
  }
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& meta) {
  json header = json::object();
  if (!meta.empty()) header["__metadata__"] = meta;
  size_t offset = 0;
  for (const auto& t : tensors) {
    size_t n = 1;
    for (auto d : t.shape) n *= (size_t)d;
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + n * 4}}};
    offset += n * 4;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes, as the reference writer does
  const uint64_t hlen = h.size();

  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path());
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create '" + tmp + "': " + std::strerror(errno));
  try {
    write_all(fd, &hlen, 8, tmp);
    write_all(fd, h.data(), h.size(), tmp);
    for (const auto& t : tensors) {
      size_t n = 1;
      for (auto d : t.shape) n *= (size_t)d;
      write_all(fd, t.data, n * 4, tmp);
    }
    if (::fsync(fd) != 0) throw std::runtime_error("cannot flush '" + tmp + "': " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + err);
  }
}

SafetensorsFile read_safetensors(const std::string& path) {
  std::string bytes = read_file(path);
  auto bad = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' is not a valid safetensors file: " + why);
  };
  if (bytes.size() < 8) throw bad("shorter than its 8-byte header length");
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8) throw bad("header length " + std::to_string(hlen) + " exceeds the file size");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + (ptrdiff_t)hlen);
  } catch (const json::exception& e) {
    throw bad(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  SafetensorsFile f;
  f.path = path;
  f.data = std::move(bytes);
  f.data.erase(0, 8 + hlen);  // in place: no second copy of the tensors
  std::vector<std::pair<size_t, size_t>> ranges;
  for (auto& [key, val] : header.items()) {
    if (key == "__metadata__") {
      if (!val.is_object()) throw bad("__metadata__ is not an object");
      for (auto& [mk, mv] : val.items()) {
        if (!mv.is_string()) throw bad("metadata value for '" + mk + "' is not a string");
        f.meta[mk] = mv.get<std::string>();
      }
      continue;
    }
    try {
      if (val.at("dtype").get<std::string>() != "F32")
        throw bad("tensor '" + key + "' has dtype " + val.at("dtype").get<std::string>() + ", expected F32");
      SafetensorsFile::Entry e;
      e.shape = val.at("shape").get<std::vector<int64_t>>();
      const auto off = val.at("data_offsets").get<std::vector<size_t>>();
      if (off.size() != 2 || off[0] > off[1] || off[1] > f.data.size())
        throw bad("tensor '" + key + "' has data offsets outside the file");
      size_t n = 1;
      for (auto d : e.shape) {
        if (d < 0) throw bad("tensor '" + key + "' has a negative dimension");
        n *= (size_t)d;
      }
      if (off[1] - off[0] != n * 4) throw bad("tensor '" + key + "' size does not match its shape");
      e.begin = off[0];
      e.end = off[1];
      ranges.emplace_back(e.begin, e.end);
      f.tensors[key] = e;
    } catch (const json::exception& ex) {
      throw bad("tensor '" + key + "' entry is malformed (" + ex.what() + ")");
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw bad("tensor data ranges overlap");
  return f;
}

void SafetensorsFile::read_tensor(const std::string& name, const std::vector<int64_t>& shape, float* dst) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("'" + path + "' has no tensor '" + name + "'");
  if (it->second.shape != shape) {
    std::string want, got;
    for (auto d : shape) want += (want.empty() ? "" : ",") + std::to_string(d);
    for (auto d : it->second.shape) got += (got.empty() ? "" : ",") + std::to_string(d);
    throw std::runtime_error("'" + path + "': tensor '" + name + "' has shape [" + got + "], expected [" + want +
                             "]");
  }
  std::memcpy(dst, data.data() + it->second.begin, it->second.end - it->second.begin);
}

std::string config_to_json(const Config& cfg) {
  return json{{"n_layer", cfg.n_layer}, {"n_head", cfg.n_head}, {"n_embd", cfg.n_embd},
              {"block_size", cfg.block_size}, {"vocab_size", cfg.vocab_size}}
      .dump();
}

void save_model(const std::string& path, const Config& cfg, const Tokenizer& tok, const float* params,
                const Metadata& extra) {
  Metadata meta = extra;
  meta["format"] = kFormatName;
  meta["version"] = kFormatVersion;
  meta["config"] = config_to_json(cfg);
  meta["vocab"] = utf8_encode(tok.vocab);
  std::vector<TensorRef> tensors;
  for (const auto& s : param_specs(cfg)) tensors.push_back({s.name, s.shape, params + s.offset});
  write_safetensors(path, tensors, meta);
}

Model load_model(const std::string& path, Metadata* meta_out) {
  if (!std::filesystem::exists(path)) throw std::runtime_error("checkpoint '" + path + "' does not exist");
  SafetensorsFile f = read_safetensors(path);
  auto not_ours = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' is not a chargpt checkpoint: " + why);
  };
  auto it = f.meta.find("format");
  if (it == f.meta.end() || it->second != kFormatName) throw not_ours("metadata 'format' is not 'chargpt'");
  if (f.meta["version"] != kFormatVersion)
    throw not_ours("format version '" + f.meta["version"] + "' is not supported (expected " + kFormatVersion + ")");
  Model m;
  try {
    const json c = json::parse(f.meta.at("config"));
    m.cfg.n_layer = c.at("n_layer").get<int>();
    m.cfg.n_head = c.at("n_head").get<int>();
    m.cfg.n_embd = c.at("n_embd").get<int>();
    m.cfg.block_size = c.at("block_size").get<int>();
    m.cfg.vocab_size = c.at("vocab_size").get<int>();
  } catch (const std::exception& e) {
    throw not_ours(std::string("metadata 'config' is missing or malformed (") + e.what() + ")");
  }
  try {
    m.cfg.validate();
    m.tok = Tokenizer::from_vocab(utf8_decode(f.meta.at("vocab")));
  } catch (const std::exception& e) {
    throw not_ours(e.what());
  }
  if (m.tok.size() != m.cfg.vocab_size)
    throw not_ours("vocabulary has " + std::to_string(m.tok.size()) + " characters but config says vocab_size " +
                   std::to_string(m.cfg.vocab_size));
  m.params.resize(num_params(m.cfg));
  for (const auto& s : param_specs(m.cfg)) f.read_tensor(s.name, s.shape, m.params.data() + s.offset);
  if (meta_out) *meta_out = f.meta;
  return m;
}

}  // namespace chargpt
