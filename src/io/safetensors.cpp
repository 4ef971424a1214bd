#include "io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "base/fs.h"
#include "base/hash.h"
#include "io/json_depth.h"

namespace chargpt {

using json = nlohmann::json;
static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

// The largest header accepted, as in the reference implementation (its
// HeaderTooLarge): a JSON parse takes several times its text in memory.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Checked size arithmetic: false on overflow.
bool mul_ok(uint64_t a, uint64_t b, uint64_t& out) { return !__builtin_mul_overflow(a, b, &out); }

std::runtime_error invalid(const std::string& path, const std::string& why) {
  return std::runtime_error("'" + path + "' is not a valid safetensors file: " + why);
}

// A JSON value as it reads in a message, cut short if long.
std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
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

struct Header {
  uint64_t length = 0;  // of the JSON text; the data starts at 8 + length
  json entries;         // the whole JSON object
  Metadata meta;
};

// The one header parser, over a file of `size` bytes that read_at(dst, n,
// offset) reads (false when the file ends first): the length, checked before
// anything is allocated; the JSON object; its checksum; its metadata strings.
template <class ReadAt>
Header read_header(uint64_t size, const ReadAt& read_at, const std::string& path) {
  Header h;
  if (size < 8 || !read_at(&h.length, 8, 0)) throw invalid(path, "shorter than its 8-byte header length");
  if (h.length > size - 8)
    throw invalid(path, "header length " + std::to_string(h.length) + " exceeds the file size (" +
                            std::to_string(size) + " bytes)");
  if (h.length > kMaxHeaderBytes)
    throw invalid(path, "header length " + std::to_string(h.length) + " is over the limit of " +
                            std::to_string(kMaxHeaderBytes));
  std::string text(h.length, '\0');
  if (!read_at(text.data(), h.length, 8)) throw invalid(path, "the header is truncated");
  if (json_depth(text, kMaxHeaderDepth) > kMaxHeaderDepth)
    throw invalid(path, "header nests deeper than the " + std::to_string(kMaxHeaderDepth) + " levels of the format");
  try {
    h.entries = json::parse(text);
  } catch (const json::exception& e) {
    throw invalid(path, std::string("header is not JSON (") + e.what() + ")");
  }
  if (!h.entries.is_object()) throw invalid(path, "header is not a JSON object");
  verify_header_checksum(h.entries, path);
  auto it = h.entries.find("__metadata__");
  if (it == h.entries.end()) return h;
  if (!it->is_object()) throw invalid(path, "__metadata__ is not an object");
  for (auto& [mk, mv] : it->items()) {
    if (!mv.is_string()) throw invalid(path, "metadata value for '" + mk + "' is not a string");
    h.meta[mk] = mv.template get<std::string>();
  }
  return h;
}

uint64_t tensor_bytes(const TensorRef& t) {
  uint64_t n = 4;
  for (auto d : t.shape)
    if (d < 0 || !mul_ok(n, (uint64_t)d, n)) throw std::runtime_error("tensor '" + t.name + "' is too large to save");
  return n;
}

// One tensor entry of a header, checked against the data's size.
SafetensorsFile::Entry parse_entry(const std::string& key, const json& val, uint64_t data_size,
                                   const std::string& path) {
  const std::string what = "tensor '" + key + "'";
  if (!val.is_object()) throw invalid(path, what + " entry is not an object");
  const auto dtype = val.find("dtype"), shape = val.find("shape"), offsets = val.find("data_offsets");
  if (dtype == val.end() || shape == val.end() || offsets == val.end())
    throw invalid(path, what + " entry lacks dtype, shape or data_offsets");
  if (!dtype->is_string()) throw invalid(path, what + " has dtype " + shown(*dtype) + ", expected \"F32\"");
  if (*dtype != "F32") throw invalid(path, what + " has dtype " + dtype->get<std::string>() + ", expected F32");
  if (!shape->is_array()) throw invalid(path, what + " has shape " + shown(*shape) + ", not a list");
  if (!offsets->is_array() || offsets->size() != 2)
    throw invalid(path, what + " has data_offsets " + shown(*offsets) + ", not a pair");
  SafetensorsFile::Entry e;
  uint64_t n = 4;  // bytes, checked against overflow at every dimension
  try {
    for (const auto& d : *shape) {
      const int64_t dim = json_int(d, 0, INT64_MAX, what + " dimension");
      e.shape.push_back(dim);
      if (!mul_ok(n, (uint64_t)dim, n)) throw std::runtime_error(what + " shape " + shown(*shape) + " overflows");
    }
    const uint64_t b = (uint64_t)json_int((*offsets)[0], 0, UINT64_MAX, what + " data offset");
    const uint64_t end = (uint64_t)json_int((*offsets)[1], 0, UINT64_MAX, what + " data offset");
    if (b > end || end > data_size)
      throw std::runtime_error(what + " has data offsets [" + std::to_string(b) + ", " + std::to_string(end) +
                               "] outside the data (" + std::to_string(data_size) + " bytes)");
    if (end - b != n)
      throw std::runtime_error(what + " holds " + std::to_string(end - b) + " bytes but its shape " +
                               shape_str(e.shape) + " needs " + std::to_string(n));
    e.begin = b;
    e.end = end;
  } catch (const std::runtime_error& ex) {
    throw invalid(path, ex.what());
  }
  return e;
}

}  // namespace

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

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s;
  for (auto d : shape) s += (s.empty() ? "" : ",") + std::to_string(d);
  return "[" + s + "]";
}

std::string write_safetensors_synced(const std::string& path, const std::vector<TensorRef>& tensors, Metadata meta) {
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

  SyncedFileWriter out(path);
  out.write(&hlen, 8);
  out.write(h.data(), h.size());
  for (const auto& t : tensors) out.write(t.data, tensor_bytes(t));
  out.commit();
  return checksum;
}

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors, const Metadata& meta) {
  make_parent_dirs(path);
  const std::string tmp = path + ".tmp";
  write_safetensors_synced(tmp, tensors, meta);
  try {
    rename_or_throw(tmp, path);
  } catch (...) {
    remove_quietly(tmp);
    throw;
  }
  sync_dir_of(path);
}

SafetensorsFile parse_safetensors(std::string bytes, const std::string& path) {
  const Header h = read_header(
      bytes.size(),
      [&](void* dst, size_t n, uint64_t offset) {
        if (offset > bytes.size() || n > bytes.size() - offset) return false;
        std::memcpy(dst, bytes.data() + offset, n);
        return true;
      },
      path);
  SafetensorsFile f;
  f.path = path;
  f.meta = h.meta;
  f.data = std::move(bytes);
  f.data.erase(0, 8 + h.length);  // in place: no second copy of the tensors
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto& [key, val] : h.entries.items()) {
    if (key == "__metadata__") continue;
    SafetensorsFile::Entry e = parse_entry(key, val, f.data.size(), path);
    ranges.emplace_back(e.begin, e.end);
    f.tensors[key] = std::move(e);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second) throw invalid(path, "tensor data ranges overlap");

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
  const ReadableFile file(path);
  return read_header(
             file.size(), [&](void* dst, size_t n, uint64_t offset) { return file.read_at(dst, n, offset); }, path)
      .meta;
}

void SafetensorsFile::read_tensor(const std::string& name, const std::vector<int64_t>& shape, float* dst) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) throw std::runtime_error("'" + path + "' has no tensor '" + name + "'");
  if (it->second.shape != shape)
    throw std::runtime_error("'" + path + "': tensor '" + name + "' has shape " + shape_str(it->second.shape) +
                             ", expected " + shape_str(shape));
  std::memcpy(dst, data.data() + it->second.begin, it->second.end - it->second.begin);
}

}  // namespace chargpt
