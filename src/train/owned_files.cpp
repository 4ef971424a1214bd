#include "train/owned_files.h"

#include <stdexcept>
#include <system_error>

#include "io/checkpoint.h"
#include "train/train.h"

namespace chargpt {

namespace fs = std::filesystem;

fs::path real_path(const std::string& path) {
  std::error_code ec;
  const fs::path abs = fs::absolute(path, ec);
  if (ec) return fs::path(path).lexically_normal();
  const fs::path real = fs::weakly_canonical(abs, ec);
  return ec ? abs.lexically_normal() : real;
}

bool same_file(const std::string& a, const std::string& b) {
  if (real_path(a) == real_path(b)) return true;
  std::error_code ec;
  return fs::equivalent(a, b, ec);  // false (with ec set) when either is missing
}

void check_names_a_file(const std::string& what, const std::string& path) {
  if (path.empty()) throw std::runtime_error(what + " is empty: give the path of a file");
  const fs::path p(path);
  const std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..")
    throw std::runtime_error(what + " '" + path + "' names a directory; give the path of a file");
}

const OwnedFile* OwnedFiles::find(const std::string& path) const {
  const fs::path r = real_path(path);
  for (const auto& f : files) {
    std::error_code ec;
    if (f.real == r || fs::equivalent(f.path, path, ec)) return &f;
  }
  return nullptr;
}

OwnedFiles owned_files(const std::string& out_path, const std::string& log_path) {
  OwnedFiles o;
  auto add = [&](std::string what, std::string path, bool force) {
    fs::path real = real_path(path);
    o.files.push_back({std::move(what), std::move(path), std::move(real), force});
  };
  const std::string optim = optim_state_path(out_path);
  add("--out", out_path, true);
  add("the optimizer state beside --out", optim, true);
  add("the temporary file of --out", out_path + ".tmp", false);
  add("the temporary file of the optimizer state", optim + ".tmp", false);
  add("the backup of the optimizer state", optim + ".prev", false);
  o.lock_path = real_path(out_path).string() + ".lock";
  add("the lock of --out", o.lock_path, false);
  if (!log_path.empty()) add("--log", log_path, true);
  return o;
}

void check_inputs_not_owned(const OwnedFiles& owned, const std::vector<std::pair<std::string, std::string>>& inputs) {
  for (const auto& [flag, in] : inputs)
    if (const OwnedFile* f = owned.find(in))
      throw std::runtime_error(
          f->what + " '" + f->path + "' is the same file as the input '" + in + "' (" + flag +
          (f->replaced_only_with_force ? "); writing it would destroy it"
                                       : "); a save writes, renames or removes that file, which would destroy it"));
}

void check_owned_files(const OwnedFiles& owned, const std::vector<std::pair<std::string, std::string>>& inputs,
                       bool replace) {
  const auto& files = owned.files;
  for (const auto& f : files) {
    if (f.replaced_only_with_force) check_names_a_file(f.what, f.path);
    std::error_code ec;
    const fs::file_status st = fs::status(f.path, ec);  // follows links: a link to a regular file is fine
    if (fs::exists(st) && !fs::is_regular_file(st))
      throw std::runtime_error(f.what + " '" + f.path + "' exists and is not a regular file; give the path of a file");
  }
  check_inputs_not_owned(owned, inputs);
  for (size_t i = 0; i < files.size(); ++i)
    for (size_t j = 0; j < i; ++j) {
      std::error_code ec;
      if (files[i].real == files[j].real || fs::equivalent(files[i].path, files[j].path, ec))
        throw std::runtime_error(files[i].what + " '" + files[i].path + "' is the same file as " + files[j].what +
                                 " '" + files[j].path + "'");
    }
  if (!replace)
    for (const auto& f : files)
      if (f.replaced_only_with_force && fs::exists(f.path))
        throw std::runtime_error(f.what + " '" + f.path +
                                 "' exists; refusing to replace it: --resume continues that run, --force starts a "
                                 "new one over it");
  for (const auto& f : files)
    if (f.replaced_only_with_force) check_directory_writable(f.what, f.path);
}

}  // namespace chargpt
