#include "io/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "io/data.h"
#include "base/hash.h"

namespace chargpt {

using json = nlohmann::json;
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

// The largest header accepted, as in the reference implementation (its
// HeaderTooLarge): a JSON parse takes several times its text in memory.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Checked size arithmetic: false on overflow.
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }
bool add_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_add_overflow(a, b, &out); }

// A JSON value as it reads in a message, cut short if long.
std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// An integer header value in [lo, hi]. Floats (1.5, and 16.0 too) and values
// out of range are refused with the value as written.
int64_t json_int(const json& v, int64_t lo, uint64_t hi, const std::string& what) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > hi || (lo > 0 && u < (uint64_t)lo))
      throw std::runtime_error(what + " " + std::to_string(u) + " is out of range (" + std::to_string(lo) + ".." +
                               std::to_string(hi) + ")");
    return (int64_t)u;
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < lo || (i >= 0 && (uint64_t)i > hi))
      throw std::runtime_error(what + " " + std::to_string(i) + " is out of range (" + std::to_string(lo) + ".." +
                               std::to_string(hi) + ")");
    return i;
  }
  throw std::runtime_error(what + " " + shown(v) + " is not an integer");
}

std::string checksum_of(const std::string& data) { return kChecksumAlgo + hex64(fnv64_words(data.data(), data.size())); }

// The header checksum of a header (see kHeaderChecksumKey): over its dump without that key.
std::string header_checksum_of(json header) {
  auto meta = header.find("__metadata__");
  if (meta != header.end() && meta->is_object()) meta->erase(kHeaderChecksumKey);
  return checksum_of(header.dump());
}

// Refuses a header whose checksum of ours does not match it; one without is let through.
void verify_header_checksum(const json& header, const std::string& path) {
  auto meta = header.find("__metadata__");
  if (meta == header.end() || !meta->is_object()) return;
  auto ck = meta->find(kHeaderChecksumKey);
  if (ck == meta->end() || !ck->is_string() || !ck->get<std::string>().starts_with(kChecksumAlgo)) return;
  const std::string recorded = ck->get<std::string>(), actual = header_checksum_of(header);
  if (recorded != actual)
    throw std::runtime_error("'" + path + "' is corrupt: its header (metadata and tensor list) does not match the " +
                             "checksum in it (recorded " + recorded.substr(0, 60) + ", computed " + actual + ")");
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s;
  for (auto d : shape) s += (s.empty() ? "" : ",") + std::to_string(d);
  return "[" + s + "]";
}

void write_all(int fd, const void* p, size_t n, const std::string& path) {
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

uint64_t tensor_bytes(const TensorRef& t) {
  uint64_t n = 4;
  for (auto d : t.shape)
    if (d < 0 || !mul_ok(n, (uint64_t)d, n)) throw std::runtime_error("tensor '" + t.name + "' is too large to save");
  return n;
}

// Writes a complete safetensors file at `path` (created or truncated) and
// flushes it to disk. Returns the data checksum it recorded in the metadata.
std::string write_file_synced(const std::string& path, const std::vector<TensorRef>& tensors, Metadata meta) {
  Fnv64Words hash;  // every tensor is a multiple of 4 bytes, so the pieces stream
  for (const auto& t : tensors) hash.update(t.data, tensor_bytes(t));
  const std::string checksum = kChecksumAlgo + hex64(hash.h);
  meta[kChecksumKey] = checksum;
  json header = json::object();
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    const uint64_t n = tensor_bytes(t);
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  header["__metadata__"][kHeaderChecksumKey] = header_checksum_of(header);
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // align the data to 8 bytes, as the reference writer does
  const uint64_t hlen = h.size();

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create '" + path + "': " + std::strerror(errno));
  try {
    write_all(fd, &hlen, 8, path);
    write_all(fd, h.data(), h.size(), path);
    for (const auto& t : tensors) write_all(fd, t.data, tensor_bytes(t), path);
    if (::fsync(fd) != 0) throw std::runtime_error("cannot flush '" + path + "': " + std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(path.c_str());
    throw;
  }
  if (::close(fd) != 0) {  // NFS and full disks may report here
    const std::string err = std::strerror(errno);
    ::unlink(path.c_str());
    throw std::runtime_error("cannot write '" + path + "': " + err);
  }
  return checksum;
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw std::runtime_error("cannot rename '" + from + "' to '" + to + "': " + std::strerror(errno));
}

// Makes the renames inside the directory durable (power loss; a killed process
// needs no more than the rename itself). Some filesystems refuse: no matter.
void sync_dir_of(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

void make_parent_dirs(const std::string& path) {
  const std::filesystem::path target(path);
  if (!target.has_parent_path()) return;
  std::error_code ec;
  std::filesystem::create_directories(target.parent_path(), ec);
  if (ec)
    throw std::runtime_error("cannot create directory '" + target.parent_path().string() + "': " + ec.message());
}

// Reads `n` bytes at `offset`; false if the file is shorter.
bool pread_all(int fd, void* dst, size_t n, uint64_t offset) {
  char* c = static_cast<char*>(dst);
  while (n) {
    const ssize_t r = ::pread(fd, c, n, (off_t)offset);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= (size_t)r;
    offset += (uint64_t)r;
  }
  return true;
}

Metadata metadata_of(const json& header, const std::function<std::runtime_error(const std::string&)>& bad) {
  Metadata meta;
  auto it = header.find("__metadata__");
  if (it == header.end()) return meta;
  if (!it->is_object()) throw bad("__metadata__ is not an object");
  for (auto& [mk, mv] : it->items()) {
    if (!mv.is_string()) throw bad("metadata value for '" + mk + "' is not a string");
    meta[mk] = mv.get<std::string>();
  }
  return meta;
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& meta) {
  make_parent_dirs(path);
  const std::string tmp = path + ".tmp";
  write_file_synced(tmp, tensors, meta);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error("cannot rename '" + tmp + "' to '" + path + "': " + err);
  }
  sync_dir_of(path);
}

SafetensorsFile parse_safetensors(std::string bytes, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' is not a valid safetensors file: " + why);
  };
  if (bytes.size() < 8) throw bad("shorter than its 8-byte header length");
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  if (hlen > bytes.size() - 8)
    throw bad("header length " + std::to_string(hlen) + " exceeds the file size (" + std::to_string(bytes.size()) +
              " bytes)");
  if (hlen > kMaxHeaderBytes)
    throw bad("header length " + std::to_string(hlen) + " is over the limit of " + std::to_string(kMaxHeaderBytes));
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + (ptrdiff_t)hlen);
  } catch (const json::exception& e) {
    throw bad(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  verify_header_checksum(header, path);
  SafetensorsFile f;
  f.path = path;
  f.meta = metadata_of(header, bad);
  f.data = std::move(bytes);
  f.data.erase(0, 8 + hlen);  // in place: no second copy of the tensors
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [key, val] : header.items()) {
    if (key == "__metadata__") continue;
    const std::string what = "tensor '" + key + "'";
    if (!val.is_object()) throw bad(what + " entry is not an object");
    const auto dtype = val.find("dtype"), shape = val.find("shape"), offsets = val.find("data_offsets");
    if (dtype == val.end() || shape == val.end() || offsets == val.end())
      throw bad(what + " entry lacks dtype, shape or data_offsets");
    if (!dtype->is_string()) throw bad(what + " has dtype " + shown(*dtype) + ", expected \"F32\"");
    if (*dtype != "F32") throw bad(what + " has dtype " + dtype->get<std::string>() + ", expected F32");
    if (!shape->is_array()) throw bad(what + " has shape " + shown(*shape) + ", not a list");
    if (!offsets->is_array() || offsets->size() != 2)
      throw bad(what + " has data_offsets " + shown(*offsets) + ", not a pair");
    SafetensorsFile::Entry e;
    uint64_t n = 4;  // bytes, checked against overflow at every dimension
    try {
      for (const auto& d : *shape) {
        const int64_t dim = json_int(d, 0, INT64_MAX, what + " dimension");
        e.shape.push_back(dim);
        if (!mul_ok(n, (uint64_t)dim, n)) throw bad(what + " shape " + shown(*shape) + " overflows");
      }
      const uint64_t b = (uint64_t)json_int((*offsets)[0], 0, UINT64_MAX, what + " data offset");
      const uint64_t end = (uint64_t)json_int((*offsets)[1], 0, UINT64_MAX, what + " data offset");
      if (b > end || end > f.data.size())
        throw bad(what + " has data offsets [" + std::to_string(b) + ", " + std::to_string(end) +
                  "] outside the data (" + std::to_string(f.data.size()) + " bytes)");
      if (end - b != n)
        throw bad(what + " holds " + std::to_string(end - b) + " bytes but its shape " + shape_str(e.shape) +
                  " needs " + std::to_string(n));
      e.begin = b;
      e.end = end;
    } catch (const std::runtime_error& ex) {
      if (std::string(ex.what()).starts_with("'" + path + "'")) throw;
      throw bad(ex.what());
    }
    ranges.emplace_back(e.begin, e.end);
    f.tensors[key] = std::move(e);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw bad("tensor data ranges overlap");

  // The checksum, when it is ours: other tools' files have none (or their own).
  auto ck = f.meta.find(kChecksumKey);
  if (ck != f.meta.end() && ck->second.starts_with(kChecksumAlgo)) {
    const std::string actual = checksum_of(f.data);
    if (ck->second != actual)
      throw std::runtime_error("'" + path + "' is corrupt: its tensor data does not match the checksum in its " +
                               "header (recorded " + ck->second.substr(0, 60) + ", computed " + actual + ")");
    f.checksum_verified = true;
  }
  return f;
}

SafetensorsFile read_safetensors(const std::string& path) { return parse_safetensors(read_file(path), path); }

Metadata read_safetensors_metadata(const std::string& path) {
  auto bad = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' is not a valid safetensors file: " + why);
  };
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) throw std::runtime_error("'" + path + "' is not a regular file");
  const uint64_t size = (uint64_t)st.st_size;
  uint64_t hlen = 0;
  if (size < 8 || !pread_all(fd, &hlen, 8, 0)) throw bad("shorter than its 8-byte header length");
  if (hlen > size - 8 || hlen > kMaxHeaderBytes) throw bad("header length " + std::to_string(hlen) + " is not plausible");
  std::string h(hlen, '\0');
  if (!pread_all(fd, h.data(), hlen, 8)) throw bad("the header is truncated");
  json header;
  try {
    header = json::parse(h);
  } catch (const json::exception& e) {
    throw bad(std::string("header is not JSON (") + e.what() + ")");
  }
  if (!header.is_object()) throw bad("header is not a JSON object");
  verify_header_checksum(header, path);
  return metadata_of(header, bad);
}

void SafetensorsFile::read_tensor(const std::string& name, const std::vector<int64_t>& shape, float* dst) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("'" + path + "' has no tensor '" + name + "'");
  if (it->second.shape != shape)
    throw std::runtime_error("'" + path + "': tensor '" + name + "' has shape " + shape_str(it->second.shape) +
                             ", expected " + shape_str(shape));
  std::memcpy(dst, data.data() + it->second.begin, it->second.end - it->second.begin);
}

std::string config_to_json(const Config& cfg) {
  return json{{"n_layer", cfg.n_layer}, {"n_head", cfg.n_head}, {"n_embd", cfg.n_embd},
              {"block_size", cfg.block_size}, {"vocab_size", cfg.vocab_size}}
      .dump();
}

namespace {

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

}  // namespace

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
  const uint64_t L = (uint64_t)cfg.n_layer, C = (uint64_t)cfg.n_embd, V = (uint64_t)cfg.vocab_size,
                 T = (uint64_t)cfg.block_size;
  const uint64_t want_tensors = 4 + 12 * L;  // no overflow: L < 2^31
  auto mismatch = [&](const std::string& why) {
    return std::runtime_error("'" + path + "' does not match its own config " + config->substr(0, 200) + ": " +
                              why);
  };
  if (f.tensors.size() < want_tensors)
    throw mismatch("it needs " + std::to_string(want_tensors) + " tensors, the file holds " +
                   std::to_string(f.tensors.size()));
  uint64_t P = 0;  // num_params(cfg): V*C + T*C + L*(12*C*C + 13*C) + 2*C
  {
    uint64_t vc, tc, cc, per_layer, layers, c13, bytes = 0;
    const bool ok = mul_ok(V, C, vc) && mul_ok(T, C, tc) && mul_ok(C, C, cc) && mul_ok(cc, 12, per_layer) &&
                    mul_ok(C, 13, c13) && add_ok(per_layer, c13, per_layer) && mul_ok(per_layer, L, layers) &&
                    add_ok(vc, tc, P) && add_ok(P, layers, P) && add_ok(P, 2 * C, P) && mul_ok(P, 4, bytes);
    if (!ok || bytes > f.data.size())
      throw mismatch(ok ? "its weights need " + std::to_string(bytes) + " bytes, the file holds " +
                              std::to_string(f.data.size())
                        : "its parameter count overflows");
  }
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

// ---------------------------------------------------------------------------
// Training checkpoints.

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

// Exactly 16 lowercase hex digits at p (hex64's form).
static bool parse_hex64(const char* p, uint64_t& out) {
  out = 0;
  for (int k = 0; k < 16; ++k) {
    const char c = p[k];
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;
    out = (out << 4) | (uint64_t)d;
  }
  return true;
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
    const std::string ochecksum = write_file_synced(otmp, {{"adamw.m", {P}, m}, {"adamw.v", {P}, v}}, ometa);
    write_file_synced(wtmp, model_tensors(cfg, params),
                      model_metadata(cfg, tok, {{"step", std::to_string(st.step)}, {"optim_checksum", ochecksum}}));
  } catch (...) {
    ::unlink(otmp.c_str());
    ::unlink(wtmp.c_str());
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
    ::unlink(otmp.c_str());  // whatever was not renamed; the pair on disk is consistent
    ::unlink(wtmp.c_str());
    throw;
  }
  // 5. The previous pair's state is no longer needed.
  ::unlink(prev.c_str());
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
    TrainState st;
    st.step = wstep;
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
