#include "base/lock.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace chargpt {

namespace {

flock whole_file(short type) {
  flock l{};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = 0;
  l.l_len = 0;
  return l;
}

// True when another open file description holds a lock on fd's file.
bool locked_elsewhere(int fd) {
  flock l = whole_file(F_WRLCK);
  return ::fcntl(fd, F_OFD_GETLK, &l) == 0 && l.l_type != F_UNLCK;
}

// The pid the holder wrote into the lock file (open file description locks do
// not carry one); 0 when there is none yet.
pid_t pid_in(int fd) {
  char buf[32] = {};
  const ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  long v = 0;
  for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9' && v < 1'000'000'000; ++i) v = v * 10 + (buf[i] - '0');
  return (pid_t)v;
}

}  // namespace

FileLock::FileLock(const std::string& path, const std::string& what) : path_(path) {
  // The holder removes the file when it lets go. A run that opened the old
  // file just before could then lock a file no one else sees: so whoever gets
  // the lock checks that the path still names the file it locked, else tries again.
  for (int attempt = 0;; ++attempt) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
      throw std::runtime_error("cannot open the lock file '" + path + "' of " + what + ": " + std::strerror(errno));
    // Open file description locks: unlike POSIX record locks, they conflict
    // within one process too and are not dropped when another descriptor of the
    // file is closed.
    flock l = whole_file(F_WRLCK);
    if (::fcntl(fd, F_OFD_SETLK, &l) == 0) {
      // Someone may have replaced the file between our open and lock: lock what the path names now.
      struct stat a {}, b {};
      if (::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
        fd_ = fd;
        const std::string pid = std::to_string(::getpid()) + "\n";  // for the message of a run refused
        if (::ftruncate(fd, 0) == 0) (void)!::pwrite(fd, pid.data(), pid.size(), 0);
        return;
      }
      ::close(fd);
      if (attempt < 10) continue;
      throw std::runtime_error("the lock file '" + path + "' of " + what + " keeps being replaced");
    }
    const int err = errno;
    if (err == EACCES || err == EAGAIN) {
      pid_t holder = 0;
      for (int i = 0; i < 50 && !holder && locked_elsewhere(fd); ++i) {  // the holder writes its pid just after locking
        holder = pid_in(fd);
        if (!holder) ::usleep(2000);
      }
      const bool still = locked_elsewhere(fd);
      ::close(fd);
      if (!still && attempt < 10) continue;  // released meanwhile
      throw std::runtime_error(what + " is in use by another chargpt train (pid " +
                               (holder > 0 ? std::to_string(holder) : std::string("unknown")) + ", holding the lock '" +
                               path + "'); wait for it to finish or stop it");
    }
    ::close(fd);
    throw std::runtime_error("cannot lock '" + path + "' of " + what + ": " + std::strerror(err));
  }
}

// Removes the lock file if it is still ours, then lets go of the lock.
static void release(int fd, const std::string& path) {
  struct stat a {}, b {};
  if (::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    ::unlink(path.c_str());
  ::close(fd);
}

FileLock::~FileLock() {
  if (fd_ >= 0) release(fd_, path_);
}

FileLock& FileLock::operator=(FileLock&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) release(fd_, path_);
    fd_ = o.fd_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

pid_t lock_holder(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  // F_OFD_GETLK with a write lock asks about any lock, whatever mode the file is open in.
  pid_t p = 0;
  if (locked_elsewhere(fd)) p = pid_in(fd) > 0 ? pid_in(fd) : -1;
  ::close(fd);
  return p;
}

}  // namespace chargpt
