#pragma once
// Several processes training one model: data parallelism over MPI ranks
// (`mpirun -np R chargpt train ...`), bit-identical to one process.
//
// This header is the same with and without MPI. Built with CHARGPT_MPI
// (src/dist_mpi.cpp) the functions below talk to Open MPI; built without it
// (src/dist_none.cpp) there is one rank and nothing here is ever distributed.
// Only dist_mpi.cpp includes <mpi.h>.
//
// The scheme (ZeRO-1 style, exact): the global batch's shards and the
// parameter chunks (Engine::chunks) are each split into R contiguous, balanced
// ranges, one per rank. A step:
//   1. every rank draws the same batch (same seed, same sampler state);
//   2. forward_backward of the rank's own shards;
//   3. an all-to-all: each rank receives, for its own chunk range, every other
//      rank's shard gradients (into the engine's shard buffers, in place);
//   4. reduce over its own chunks: the shards are added in shard order, the
//      same float additions as one process makes;
//   5. the per-chunk squared norms and per-shard losses are all-gathered and
//      summed in fixed order, so every rank has the same norm and loss bits
//      (clipping and the non-finite stop agree everywhere);
//   6. AdamW on its own chunks (its own range of m and v);
//   7. an all-gather of the updated parameters.
// Bytes each rank sends per step: S_r (P - P_r) + P_r floats, with S_r
// its shards and P_r its parameters; about 4P (R-1)/R (S/R + 1) bytes, against
// 2 * 4P (R-1)/R for a ring allreduce of the gradients (which would add the
// shards in a different order).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/data.h"
#include "engine/engine.h"
#include "engine/evaluate.h"

namespace chargpt::dist {

// True when this build has MPI (CMake option CHARGPT_MPI).
bool compiled_in();
// One line for `chargpt info`: "mpi: Open MPI v4.1.4 (compiled in)" or "mpi: not compiled in".
std::string mpi_info();

// MPI_Init_thread (funneled: only the main thread calls MPI) when this process
// was launched by mpirun (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE set) and
// MPI is compiled in; MPI_Finalize when it goes out of scope. Create it in main,
// after any re-exec and before anything else.
class Session {
 public:
  Session(int* argc, char*** argv);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  // main calls this after printing an error, before returning. An error that
  // every rank raised together (agreed_failure) ends normally, each rank with
  // its message; any other error on one rank ends the whole job (MPI_Abort), so
  // no rank is left waiting for it.
  void failed(int exit_code);
};

int rank();  // 0 without MPI
int size();  // 1 without MPI (a build without MPI launched by mpirun reports the job's size, and
             // refuses to train: DataParallel throws)
// Launched by mpirun (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE set). Then stdout is
// Open MPI's pipe or pseudo-terminal, not the user's terminal, and mpirun turns
// Ctrl-C into SIGTERM for every rank (SIGKILL odls_base_sigkill_timeout = 1 s later).
bool launched_by_mpirun();
inline bool is_root() { return rank() == 0; }
// The error about to be thrown is raised by every rank at the same point, from
// data every rank has (a mismatch found by check_agreement, a non-finite norm).
void note_agreed_failure();
bool agreed_failure();

// Contiguous, balanced ranges of shards and of chunks for each of R ranks.
// Shards: rank r gets [S r / R, S (r+1) / R). Chunks: balanced by floats, rank r's
// range starts at the first chunk that begins at or after P r / R.
struct Partition {
  std::vector<size_t> shard_begin;  // R+1 boundaries
  std::vector<size_t> chunk_begin;  // R+1 boundaries (chunk indices)
  std::vector<size_t> float_begin;  // R+1 boundaries (floats: chunk c's begin)
};
// Throws if R exceeds the number of shards or the chunks do not tile [0, P).
Partition make_partition(size_t n_shards, const std::vector<ParamChunk>& chunks, size_t num_params, int R);



// Communication counters of a DataParallel.
struct CommStats {
  int steps = 0;
  double seconds = 0;      // in MPI calls (waiting for slower ranks included)
  uint64_t bytes_sent = 0;  // payload this rank sent (collectives' own forwarding not counted)
};

// One model's data-parallel training over all ranks (see the top of this file).
// Built only when size() > 1; every member that communicates must be called by
// every rank in the same order.
class DataParallel {
 public:
  explicit DataParallel(Engine& e);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // Every rank must hold the same named values (hashes of the config, flags,
  // data, initial weights...). On a mismatch every rank throws the same error
  // naming the first item that differs and the ranks concerned.
  void check_agreement(const std::vector<std::pair<std::string, uint64_t>>& items);
  // Engine::train_step across the ranks: same arguments, same result bits.
  double train_step(const std::vector<int32_t>& train_split, float lr, float grad_clip, const AdamW& opt,
                    double* grad_norm = nullptr);
  // Engine::estimate_loss with its (batch, shard) tasks split across the ranks;
  // the same value on every rank, and the same bits as one process.
  double estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed);
  // Before a checkpoint: rank 0 receives every rank's range of m and v.
  void gather_optimizer_state();
  // True on every rank when any rank asks to stop (a max over the ranks).
  bool agree_stop(bool local_stop);

  const Partition& partition() const;
  const CommStats& stats() const;
  // e.g. "mpi: 2 ranks; 3.1 ms/step communicating; 1.20 MB sent/step by this rank"
  std::string summary() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// evaluate_split (evaluate.h) with its tasks split across the ranks and the
// per-task sums gathered and added in task order: the same result on every rank
// and the same bits as one process.
EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads);

}  // namespace chargpt::dist
