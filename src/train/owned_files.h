#pragma once
// The files one training run owns: the checkpoint, the optimizer state beside
// it, the temporary and backup files a save makes of both (checkpoint.h), the
// log and the lock. Every check on a run's paths goes through this one list,
// with each path resolved to where it really is (absolute, links followed as
// far as they exist), so that "./x", "x" and a link to x are one file, and a
// save never renames over an input or another output.
#include <filesystem>
#include <string>
#include <vector>

namespace chargpt {

struct OwnedFile {
  std::string what;  // how messages name it: "--out", "the optimizer state beside --out", ...
  std::string path;  // as the run uses it
  std::filesystem::path real;
  bool replaced_only_with_force = false;  // an output a new run must not silently replace
};

struct OwnedFiles {
  std::vector<OwnedFile> files;
  std::string lock_path;  // beside the checkpoint, through links: one lock per real checkpoint file
  // The owned file that `path` names (same real path, or the same inode), or nullptr.
  const OwnedFile* find(const std::string& path) const;
};

// Absolute, with every link on the way resolved where the path exists; the
// missing rest is appended as written (normalized).
std::filesystem::path real_path(const std::string& path);
// The same file: the same real path, or both exist and are one inode (hard links).
bool same_file(const std::string& a, const std::string& b);

// Throws unless `path` can name the file `what` (not empty, not ending in '/',
// not "." or "..").
void check_names_a_file(const std::string& what, const std::string& path);

// The files of a run writing `out_path` (and `log_path`, "" for none).
OwnedFiles owned_files(const std::string& out_path, const std::string& log_path);

// Throws when one of `inputs` (flag, path) is an owned file. Before the lock
// is taken, since taking it writes the lock file.
void check_inputs_not_owned(const OwnedFiles& owned, const std::vector<std::pair<std::string, std::string>>& inputs);

// Before step 1: each owned file is a regular file or absent; none is one of
// `inputs` (flag, path) nor another owned file; an existing checkpoint,
// optimizer file or log is replaced only if `replace` (--resume or --force);
// the directories are writable. Throws one line naming the flag and both paths.
void check_owned_files(const OwnedFiles& owned, const std::vector<std::pair<std::string, std::string>>& inputs,
                       bool replace);

}  // namespace chargpt
