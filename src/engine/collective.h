#pragma once
// The processes that train one model together, as the engine sees them: a
// group of `size()` ranks, this one being `rank()`. One process alone is the
// group of size one (local_collective(): every exchange is the identity);
// dist/ provides the MPI group for `mpirun -np R`. The engine writes each step
// once, over "my shards, my chunks", and calls these at fixed points, so the
// same code is bit-identical for any rank count.
//
// Every member that communicates must be called by every rank, in the same order.
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "base/threads.h"

namespace chargpt {

// A fixed slice of the parameter block; never straddles two tensors (so it has
// one weight-decay flag).
struct ParamChunk {
  size_t begin, end;
  bool decay;
};

// Rank r owns items [b[r], b[r+1]) of a list split into R contiguous ranges (b has R+1 entries).
using Bounds = std::vector<size_t>;
// n items in R balanced ranges: rank r gets [n r / R, n (r+1) / R).
Bounds even_split(size_t n, int R);

// Who computes which shard and who owns which parameters. The step runs in
// rounds: in round k, rank q computes the shards [round(k)[q], round(k)[q+1]),
// `group` consecutive shards each (ranks past the batch's end get none); the
// rounds cover the shards in order. Chunks: balanced by floats, rank r's range
// starts at the first chunk that begins at or after P r / R (a rank may own
// none when there are more ranks than chunks). Any R >= 1 works: ranks without a
// shard in a round still receive, fold and update their own chunks.
struct Partition {
  size_t n_shards = 0;
  size_t group = 1;    // shards per rank per round
  size_t ranks = 1;
  size_t rounds = 0;   // ceil(n_shards / (ranks * group))
  Bounds chunk_begin;  // R+1 boundaries (chunk indices)
  Bounds float_begin;  // R+1 boundaries (floats: chunk c's begin)
  // Round k's shards as R+1 absolute shard boundaries.
  Bounds round(size_t k) const;
};
// Throws std::logic_error if R or group is < 1 or the chunks do not tile [0, P).
Partition make_partition(size_t n_shards, const std::vector<ParamChunk>& chunks, size_t num_params, int R,
                         size_t group = 1);

// Time spent in a collective's calls and payload this rank sent.
struct CommStats {
  double seconds = 0;       // waiting for slower ranks included
  uint64_t bytes_sent = 0;  // the collectives' own forwarding not counted
};

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // In place: rank q holds data[b[q], b[q+1]); afterwards every rank holds all of it.
  virtual void all_gather(float* data, const Bounds& b) = 0;
  virtual void all_gather(double* data, const Bounds& b) = 0;
  virtual void all_gather(uint64_t* data, const Bounds& b) = 0;
  // In place: rank 0 receives every rank's data[b[q], b[q+1]).
  virtual void gather_to_root(float* data, const Bounds& b) = 0;
  // One round's gradient slices to their owners. `round` (R+1 shard
  // boundaries, Partition::round): rank q computed shards [round[q],
  // round[q+1]); mine[j] is this rank's j-th of them, over the whole parameter
  // block. Afterwards from[i] (resized to the round's shard count) points at the
  // round's i-th shard's gradient over this rank's floats: from[i][k] is float
  // p.float_begin[rank] + k. The pointers stay valid until the next call; own
  // shards are not copied.
  virtual void exchange_round(const Partition& p, const Bounds& round, const std::vector<float*>& mine,
                              std::vector<const float*>& from) = 0;
  // True on every rank when any rank passes true (a stop request).
  virtual bool any(bool local) = 0;
  // The error about to be thrown is raised by every rank at the same point,
  // from data they all hold: each rank ends with its message instead of the
  // job being aborted on behalf of one rank.
  virtual void mark_failure_agreed() = 0;
  virtual CommStats stats() const = 0;
};

// One process: rank 0 of 1, every exchange the identity.
class LocalCollective final : public Collective {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_gather(float*, const Bounds&) override {}
  void all_gather(double*, const Bounds&) override {}
  void all_gather(uint64_t*, const Bounds&) override {}
  void gather_to_root(float*, const Bounds&) override {}
  void exchange_round(const Partition&, const Bounds&, const std::vector<float*>& mine,
                      std::vector<const float*>& from) override {
    from.assign(mine.begin(), mine.end());  // one rank owns every float: no copy
  }
  bool any(bool local) override { return local; }
  void mark_failure_agreed() override {}
  CommStats stats() const override { return {}; }
};
LocalCollective& local_collective();

// The ordered task sum: tasks [b[0], b[R]) with this rank running its own
// range [b[rank], b[rank+1]) on `pool` (task(k) returns task k's value), every
// value gathered to every rank, and their sum taken in task order. The same
// bits for any thread count and any rank count. `values` is scratch, kept by the caller.
double ordered_task_sum(Collective& comm, ThreadPool& pool, const Bounds& b, const std::function<double(size_t)>& task,
                        std::vector<double>& values);

// Every rank must hold the same named values (hashes of the config, flags,
// data, weights...). On a mismatch every rank throws the same error naming the
// first item that differs and the ranks concerned (an agreed failure).
void check_agreement(Collective& comm, const std::vector<std::pair<std::string, uint64_t>>& items);

}  // namespace chargpt
