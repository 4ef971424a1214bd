// Checks before step 1: the options, the outputs, and what the ranks of a run
// must agree on.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "base/hash.h"
#include "train/owned_files.h"
#include "train/parts.h"

namespace chargpt {

void check_options(const TrainOptions& o) {
  for_each_shape_option(o, OptionChecker{});
  for_each_shard_option(o, OptionChecker{});
  for_each_train_option(o, OptionChecker{});
}

void check_output_path(const std::string& what, const std::string& path, const std::vector<std::string>& inputs) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);  // follows symlinks: a link to a regular file is fine
  if (!fs::exists(st)) return;
  if (!fs::is_regular_file(st))
    throw std::runtime_error(what + " '" + path + "' exists and is not a regular file; give the path of a file");
  for (const auto& in : inputs)
    if (fs::equivalent(path, in, ec))
      throw std::runtime_error(what + " '" + path + "' is the same file as the input '" + in +
                               "'; writing it would destroy it");
}

void check_directory_writable(const std::string& what, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);  // as a save would
  const std::string probe = (dir / (".chargpt-write-test-" + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (fd < 0)
    throw std::runtime_error("cannot write " + what + " '" + path + "': cannot create a file in '" + dir.string() +
                             "': " + std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

FileLock check_outputs(const TrainOptions& o, const Collective& comm) {
  // One owner per checkpoint: the lock is taken before the checks and held to the end.
  const OwnedFiles owned = owned_files(o.out_path, o.log_path);
  FileLock lock;
  if (comm.rank() == 0) {
    check_names_a_file("--out", o.out_path);
    check_inputs_not_owned(owned, {{"--data", o.data_path}});
    check_directory_writable("--out", o.out_path);  // creates the directory the lock goes in
    lock = FileLock(owned.lock_path, "the checkpoint '" + o.out_path + "'");
  }
  check_owned_files(owned, {{"--data", o.data_path}}, o.resume || o.force);
  return lock;
}

namespace {
// Accumulates values into one hash.
struct Hasher {
  std::string bytes;
  template <class T>
  Hasher& operator<<(const T& v) {
    bytes.append(reinterpret_cast<const char*>(&v), sizeof v);
    return *this;
  }
  uint64_t get() const { return hash_bytes(bytes.data(), bytes.size()); }
};
}  // namespace

std::vector<std::pair<std::string, uint64_t>> run_fingerprint(const TrainOptions& o, const Engine& e, const Dataset& ds) {
  const Config& c = e.cfg();
  std::vector<std::pair<std::string, uint64_t>> items;
  items.emplace_back("the model config (--n-layer, --n-head, --n-embd, --block-size, vocabulary size)",
                     (Hasher() << c.n_layer << c.n_head << c.n_embd << c.block_size << c.vocab_size).get());
  items.emplace_back("the batch (--batch-size, --shard-size, --pass-size)",
                     (Hasher() << e.batch_size() << e.shard_size() << e.n_shards() << e.pass_size()).get());
  items.emplace_back("the schedule and optimizer (--steps, --lr, --min-lr, --warmup, --lr-decay-steps, "
                     "--weight-decay, --beta1, --beta2, --grad-clip)",
                     (Hasher() << o.steps << o.lr << o.min_lr << o.warmup << o.lr_decay_steps << o.adamw.weight_decay
                               << o.adamw.beta1 << o.adamw.beta2 << o.adamw.eps << o.grad_clip)
                         .get());
  items.emplace_back("the evaluation and save intervals (--eval-interval, --eval-iters, --save-interval)",
                     (Hasher() << o.eval_interval << o.eval_iters << o.save_interval).get());
  items.emplace_back("--seed", (Hasher() << o.seed).get());
  items.emplace_back("the backend", (Hasher() << (int)o.backend.kind << (int)o.backend.precision << o.backend.tf32).get());
  {
    uint64_t h = hash_bytes(ds.tok.vocab.data(), ds.tok.vocab.size() * sizeof(char32_t));
    h = hash_bytes(ds.train.data(), ds.train.size() * sizeof(int32_t), h);
    h = hash_bytes(ds.val.data(), ds.val.size() * sizeof(int32_t), h);
    items.emplace_back("the training data (hash of the text)", h);
  }
  {
    const size_t bytes = e.num_params() * sizeof(float);
    uint64_t h = hash_bytes(e.params(), bytes);
    h = hash_bytes(e.adam_m(), bytes, h);
    h = hash_bytes(e.adam_v(), bytes, h);
    const Rng& r = e.data_rng();
    h = hash_bytes(r.s.data(), sizeof r.s, h);
    const int step = e.step();
    h = hash_bytes(&step, sizeof step, h);
    items.emplace_back("the starting state (--resume: weights, optimizer moments, step and sampler of the checkpoint)",
                       h);
  }
  return items;
}

}  // namespace chargpt
