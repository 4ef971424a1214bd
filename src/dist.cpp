// What the MPI and the one-process builds share: the partition of shards and
// chunks over ranks, the hash, the agreed-failure flag. No MPI here.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "chargpt/dist.h"

namespace chargpt::dist {

namespace {
std::atomic<bool> g_agreed_failure{false};
}

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

void note_agreed_failure() { g_agreed_failure = true; }
bool agreed_failure() { return g_agreed_failure.load(); }

Partition make_partition(size_t n_shards, const std::vector<ParamChunk>& chunks, size_t num_params, int R) {
  if (R < 1) throw std::logic_error("make_partition: R must be >= 1");
  if ((size_t)R > n_shards)
    throw std::runtime_error(std::to_string(R) + " ranks but the batch has only " + std::to_string(n_shards) +
                             " shards: use at most " + std::to_string(n_shards) +
                             " ranks, or a larger --batch-size or smaller --shard-size");
  size_t at = 0;
  for (const auto& c : chunks) {
    if (c.begin != at || c.end <= c.begin) throw std::logic_error("make_partition: the chunks do not tile the parameters");
    at = c.end;
  }
  if (at != num_params) throw std::logic_error("make_partition: the chunks do not cover the parameters");
  Partition p;
  p.shard_begin.resize(R + 1);
  p.chunk_begin.resize(R + 1);
  p.float_begin.resize(R + 1);
  for (int r = 0; r <= R; ++r) {
    p.shard_begin[r] = n_shards * r / R;
    const size_t target = num_params * r / R;
    size_t c = 0;
    while (c < chunks.size() && chunks[c].begin < target) ++c;
    p.chunk_begin[r] = c;
    p.float_begin[r] = c < chunks.size() ? chunks[c].begin : num_params;
  }
  return p;
}

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ULL ^ seed;
  auto mix = [&](uint64_t w) {
    h ^= w;
    h *= 0x100000001b3ULL;
    h ^= h >> 29;
  };
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    mix(w);
  }
  uint64_t last = 0;
  std::memcpy(&last, p + i, n - i);
  mix(last ^ ((uint64_t)(n - i) << 56));
  mix((uint64_t)n);
  // final avalanche (splitmix64's)
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
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
  items.emplace_back("the batch (--batch-size, --shard-size)",
                     (Hasher() << e.batch_size() << e.shard_size() << e.n_shards()).get());
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

}  // namespace chargpt::dist
