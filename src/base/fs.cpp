#include "base/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace chargpt {

namespace {

const char* kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

std::string human_bytes(uint64_t n) {
  char buf[32];
  if (n >= (uint64_t(1) << 30) && n % (uint64_t(1) << 30) == 0)
    std::snprintf(buf, sizeof buf, "%llu GiB", (unsigned long long)(n >> 30));
  else if (n >= (uint64_t(1) << 20) && n % (uint64_t(1) << 20) == 0)
    std::snprintf(buf, sizeof buf, "%llu MiB", (unsigned long long)(n >> 20));
  else
    std::snprintf(buf, sizeof buf, "%llu bytes", (unsigned long long)n);
  return buf;
}

std::string error_text() { return std::strerror(errno); }

// Opens a regular file for reading and returns its size; throws naming the path otherwise.
// O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever. It
// changes nothing for the regular files we go on to read.
int open_regular(const std::string& path, uint64_t& size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error("cannot open '" + path + "': " + error_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string err = error_text();
    ::close(fd);
    throw std::runtime_error("cannot stat '" + path + "': " + err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error("'" + path + "' is " + kind_of(st.st_mode) + ", not a regular file");
  }
  size = (uint64_t)st.st_size;
  return fd;
}

}  // namespace

ReadableFile::ReadableFile(const std::string& path) { fd_ = open_regular(path, size_); }

ReadableFile::~ReadableFile() {
  if (fd_ >= 0) ::close(fd_);
}

bool ReadableFile::read_at(void* dst, size_t n, uint64_t offset) const {
  char* c = static_cast<char*>(dst);
  while (n) {
    const ssize_t r = ::pread(fd_, c, n, (off_t)offset);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    c += r;
    n -= (size_t)r;
    offset += (uint64_t)r;
  }
  return true;
}

std::string read_file(const std::string& path, uint64_t max_bytes) {
  uint64_t size = 0;
  struct Fd {
    int fd;
    ~Fd() { ::close(fd); }
  } f{open_regular(path, size)};
  if (size > max_bytes)
    throw std::runtime_error("'" + path + "' is " + std::to_string(size) + " bytes, larger than the " +
                             human_bytes(max_bytes) + " limit for files chargpt reads");
  std::string bytes(size, '\0');
  size_t got = 0;
  while (got < size) {  // a file that shrinks meanwhile ends early; one that grows is read up to its old size
    const ssize_t r = ::read(f.fd, bytes.data() + got, size - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot read '" + path + "': " + error_text());
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  bytes.resize(got);
  return bytes;
}

SyncedFileWriter::SyncedFileWriter(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error("cannot create '" + path + "': " + error_text());
}

SyncedFileWriter::~SyncedFileWriter() {
  if (fd_ < 0) return;  // committed
  ::close(fd_);
  ::unlink(path_.c_str());
}

void SyncedFileWriter::write(const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    const ssize_t w = ::write(fd_, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot write '" + path_ + "': " + error_text());
    }
    c += w;
    n -= (size_t)w;
  }
}

void SyncedFileWriter::commit() {
  if (::fsync(fd_) != 0) throw std::runtime_error("cannot flush '" + path_ + "': " + error_text());
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const std::string err = error_text();
    ::unlink(path_.c_str());
    throw std::runtime_error("cannot write '" + path_ + "': " + err);
  }
}

void rename_or_throw(const std::string& from, const std::string& to) {
  if (std::rename(from.c_str(), to.c_str()) != 0)
    throw std::runtime_error("cannot rename '" + from + "' to '" + to + "': " + error_text());
}

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

void remove_quietly(const std::string& path) { ::unlink(path.c_str()); }

}  // namespace chargpt
