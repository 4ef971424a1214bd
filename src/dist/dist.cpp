// What the MPI and the one-process builds share: the partition of shards and
// chunks over ranks, the hash, the agreed-failure flag. No MPI here.
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "dist/dist.h"

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

}  // namespace chargpt::dist
