#pragma once
// File-system helpers shared by every reader and writer: bounded whole-file
// reads, complete writes and positioned reads (EINTR and short counts handled),
// files written under a temporary name and renamed into place. Every failure
// throws a message naming the path and the system's reason.
#include <cstddef>
#include <cstdint>
#include <string>

namespace chargpt {

// The most read_file accepts unless told otherwise: far above any checkpoint or
// corpus this CPU trainer can use, far below what would exhaust memory.
inline constexpr uint64_t kMaxReadBytes = uint64_t(2) << 30;  // 2 GiB

// Reads a whole regular file; throws naming the path when it cannot. Anything
// else (a directory, a device such as /dev/zero, a FIFO, a socket) is refused
// without reading from it, and so is a file larger than max_bytes.
std::string read_file(const std::string& path, uint64_t max_bytes = kMaxReadBytes);

// A regular file opened for positioned reads (pread), closed on destruction.
// Refuses what read_file refuses, except that it reads no data up front.
class ReadableFile {
 public:
  explicit ReadableFile(const std::string& path);
  ~ReadableFile();
  ReadableFile(const ReadableFile&) = delete;
  ReadableFile& operator=(const ReadableFile&) = delete;
  uint64_t size() const { return size_; }
  // Reads n bytes at offset; false if the file ends first.
  bool read_at(void* dst, size_t n, uint64_t offset) const;

 private:
  int fd_ = -1;
  uint64_t size_ = 0;
};

// A new file written in full and flushed (fsync) before it counts: created or
// truncated at `path`; removed again if commit() is never reached (an exception
// on the way) or fails.
class SyncedFileWriter {
 public:
  explicit SyncedFileWriter(const std::string& path);
  ~SyncedFileWriter();
  SyncedFileWriter(const SyncedFileWriter&) = delete;
  SyncedFileWriter& operator=(const SyncedFileWriter&) = delete;
  void write(const void* p, size_t n);
  // fsync and close; the file stays. Throws (and removes it) if either fails:
  // NFS and full disks may report only here.
  void commit();

 private:
  std::string path_;
  int fd_ = -1;
};

// rename(2), throwing with both names.
void rename_or_throw(const std::string& from, const std::string& to);
// Makes the renames inside path's directory durable (power loss; a killed
// process needs no more than the rename itself). Some filesystems refuse: no matter.
void sync_dir_of(const std::string& path);
// Creates path's parent directories if missing.
void make_parent_dirs(const std::string& path);
// Removes path if it exists, ignoring failure (cleanup on an error path).
void remove_quietly(const std::string& path);

}  // namespace chargpt
