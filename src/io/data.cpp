#include "io/data.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "base/hash.h"

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

struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

}  // namespace

std::string read_file(const std::string& path, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
  // It changes nothing for the regular files we go on to read.
  Fd f{::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)};
  if (f.fd < 0) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) throw std::runtime_error("cannot stat '" + path + "': " + std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw std::runtime_error("'" + path + "' is " + kind_of(st.st_mode) + ", not a regular file");
  const uint64_t size = (uint64_t)st.st_size;
  if (size > max_bytes)
    throw std::runtime_error("'" + path + "' is " + std::to_string(size) + " bytes, larger than the " +
                             human_bytes(max_bytes) + " limit for files chargpt reads");
  std::string bytes(size, '\0');
  size_t got = 0;
  while (got < size) {  // a file that shrinks meanwhile ends early; one that grows is read up to its old size
    const ssize_t r = ::read(f.fd, bytes.data() + got, size - got);
    if (r < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot read '" + path + "': " + std::strerror(errno));
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  bytes.resize(got);
  return bytes;
}

Dataset make_dataset(const std::string& utf8_text, const Tokenizer* tok) {
  if (utf8_text.empty()) throw std::runtime_error("the text is empty");
  const std::u32string cps = utf8_decode(utf8_text);
  Dataset d;
  d.tok = tok ? *tok : Tokenizer::from_text(cps);
  std::vector<int32_t> ids = d.tok.encode(cps);
  const size_t n_train = (size_t)(0.9 * (double)ids.size());
  d.train.assign(ids.begin(), ids.begin() + n_train);
  d.val.assign(ids.begin() + n_train, ids.end());
  d.text_hash = fnv64_words(utf8_text.data(), utf8_text.size());
  d.text_bytes = utf8_text.size();
  return d;
}

Dataset load_dataset(const std::string& path, const Tokenizer* tok) {
  const std::string text = read_file(path);
  try {
    return make_dataset(text, tok);
  } catch (const std::exception& e) {
    throw std::runtime_error("data file '" + path + "': " + e.what());
  }
}

void sample_batch(const std::vector<int32_t>& split, int batch, int block_size, Rng& rng,
                  int32_t* inputs, int32_t* targets) {
  if (split.size() < (size_t)block_size + 1)
    throw std::runtime_error("the data split has " + std::to_string(split.size()) +
                             " tokens, fewer than block_size+1 = " + std::to_string(block_size + 1));
  const uint64_t n_starts = split.size() - (size_t)block_size;  // start in [0, len-T-1]
  for (int b = 0; b < batch; ++b) {
    const size_t start = rng.below(n_starts);
    std::memcpy(inputs + (size_t)b * block_size, &split[start], sizeof(int32_t) * block_size);
    std::memcpy(targets + (size_t)b * block_size, &split[start + 1], sizeof(int32_t) * block_size);
  }
}

}  // namespace chargpt
