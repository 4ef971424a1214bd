#include "train/log_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace chargpt {

LogFile::LogFile(const std::string& path_, bool append) : path(path_) {
  if (path.empty()) return;
  fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? 0 : O_TRUNC), 0644);
  if (fd < 0) throw std::runtime_error("cannot open log file '" + path + "': " + std::strerror(errno));
  good = append ? whole_lines_size() : 0;
  if (append && ::ftruncate(fd, good) != 0) {
    const int err = errno;
    ::close(fd);
    fd = -1;
    throw std::runtime_error("cannot repair the log file '" + path + "': " + std::strerror(err));
  }
}

LogFile::~LogFile() {
  if (fd >= 0) ::close(fd);
}

off_t LogFile::whole_lines_size() const {
  // O_WRONLY cannot be read: look through a second descriptor.
  const int rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  off_t end = ::lseek(fd, 0, SEEK_END);
  if (rfd < 0) return end;  // unreadable: leave it as it is
  char buf[4096];
  off_t result = 0;
  while (end > 0) {
    const off_t from = std::max<off_t>(0, end - (off_t)sizeof buf);
    const ssize_t n = ::pread(rfd, buf, (size_t)(end - from), from);
    if (n <= 0) {
      result = end;
      break;
    }
    const char* nl = nullptr;
    for (ssize_t i = n - 1; i >= 0 && !nl; --i)
      if (buf[i] == '\n') nl = buf + i;
    if (nl) {
      result = from + (nl - buf) + 1;
      break;
    }
    end = from;
  }
  ::close(rfd);
  return result;
}

void LogFile::write(const nlohmann::json& j) {
  if (fd < 0 || !error.empty()) return;
  const std::string line = j.dump() + "\n";
  size_t done = 0;
  while (done < line.size()) {
    const ssize_t w = ::pwrite(fd, line.data() + done, line.size() - done, good + (off_t)done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      error = "cannot write log file '" + path + "': " + std::strerror(w < 0 ? errno : ENOSPC);
      if (::ftruncate(fd, good) != 0) {  // drop the part of the line that was written
      }
      return;
    }
    done += (size_t)w;
  }
  good += (off_t)line.size();
}

void LogFile::close() {
  if (fd >= 0 && ::close(fd) != 0 && error.empty())
    error = "cannot write log file '" + path + "': " + std::strerror(errno);
  fd = -1;
}

}  // namespace chargpt
