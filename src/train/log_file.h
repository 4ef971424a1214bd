#pragma once
// The JSON Lines log of a training run.
#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>

namespace chargpt {

// The JSON Lines log. Every write is checked; the first failure is kept in
// `error` and later writes are skipped: train() then saves the checkpoint at
// the end of the step and stops with that error (a run whose log silently
// stopped would look complete, and the weights are worth more than the log).
// The file only ever holds whole lines: a write cut short (a full disk) is
// truncated away, and a resumed run first drops a last line without its
// newline (a kill in mid-write), so that appending keeps it valid JSON Lines.
struct LogFile {
  int fd = -1;
  off_t good = 0;  // the file's size after the last whole line
  std::string path, error;
  // Opens path ("" = no log), truncated, or with `append` after its last whole line.
  LogFile(const std::string& path, bool append);
  ~LogFile();
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;
  void write(const nlohmann::json& j);
  void close();

 private:
  off_t whole_lines_size() const;  // the size up to and including the last newline
};

}  // namespace chargpt
