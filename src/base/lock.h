#pragma once
// An exclusive advisory lock on a file (an open file description lock, fcntl
// F_OFD_SETLK), held until the FileLock is destroyed (which removes the file)
// or the process dies: the kernel releases the lock of a dead process, so a
// killed holder, whose file stays behind, is never an obstacle.
#include <string>
#include <sys/types.h>

namespace chargpt {

class FileLock {
 public:
  FileLock() = default;
  // Creates `path` if needed and locks it without waiting. On failure throws
  // std::runtime_error naming the path and, when the holder is alive, its pid;
  // `what` says what the lock protects ("the checkpoint 'x'").
  FileLock(const std::string& path, const std::string& what);
  ~FileLock();
  FileLock(FileLock&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  FileLock& operator=(FileLock&& o) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  bool held() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// The pid of the process holding a lock on `path`, 0 when none does (or the
// file does not exist).
pid_t lock_holder(const std::string& path);  // -1 when held but the pid is not written yet

}  // namespace chargpt
