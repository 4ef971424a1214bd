// The MPI transport of the training step (engine/engine.h has the scheme).
// Compiled only when CMake finds MPI (CHARGPT_MPI). Only the main thread calls
// MPI (MPI_THREAD_FUNNELED); oneTBB workers never do.
//
// Failures: MPI_COMM_WORLD keeps Open MPI's default handler, errors are fatal,
// so a broken link or a dead peer aborts the whole job (mpirun then kills every
// rank and exits non-zero) instead of leaving a rank blocked in a collective.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/clock.h"
#include "dist/dist.h"

namespace chargpt::dist {

namespace {

bool g_initialized = false;
int g_rank = 0, g_size = 1;
// Set when the error being thrown is raised by every rank alike (Collective::mark_failure_agreed).
bool g_agreed_failure = false;

int to_int(size_t n, const char* what) {
  if (n > (size_t)INT32_MAX) throw std::runtime_error(std::string(what) + ": too large for one MPI message");
  return (int)n;
}

}  // namespace

bool compiled_in() { return true; }

std::string mpi_info() {
  char v[MPI_MAX_LIBRARY_VERSION_STRING];
  int len = 0;
  MPI_Get_library_version(v, &len);  // allowed before MPI_Init
  std::string s(v, len);
  if (auto comma = s.find(','); comma != std::string::npos) s.resize(comma);  // "Open MPI v4.1.4"
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::string line = "mpi: " + s + " (compiled in)";
  if (g_initialized) line += "; this run: " + std::to_string(g_size) + " ranks";
  return line;
}

void Session::failed(int exit_code) {
  if (!g_initialized || g_size == 1 || g_agreed_failure) return;
  // This rank alone failed: the others would wait for it in their next
  // collective. End the whole job.
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

// ---------------------------------------------------------------------------

namespace {

// The ranks of MPI_COMM_WORLD as the engine's Collective. Every call is timed
// (waits for slower ranks included) and its payload counted.
class MpiCollective final : public Collective {
 public:
  int rank() const override { return g_rank; }
  int size() const override { return g_size; }

  void all_gather(float* data, const Bounds& b) override { all_gather_as(data, b, MPI_FLOAT); }
  void all_gather(double* data, const Bounds& b) override { all_gather_as(data, b, MPI_DOUBLE); }
  void all_gather(uint64_t* data, const Bounds& b) override { all_gather_as(data, b, MPI_UINT64_T); }

  void gather_to_root(float* data, const Bounds& b) override {
    const Timer t(st_);
    const Counts c = counts(b);
    if (g_rank == 0) {
      MPI_Gatherv(MPI_IN_PLACE, 0, MPI_FLOAT, data, c.counts.data(), c.displs.data(), MPI_FLOAT, 0, MPI_COMM_WORLD);
    } else {
      MPI_Gatherv(data + b[g_rank], c.counts[g_rank], MPI_FLOAT, nullptr, nullptr, nullptr, MPI_FLOAT, 0,
                  MPI_COMM_WORLD);
      st_.bytes_sent += (uint64_t)c.counts[g_rank] * sizeof(float);
    }
  }

  void exchange_shard_grads(const Partition& p, const std::vector<float*>& shards) override {
    if (shards != a2a_shards_ || p.shard_begin != a2a_shard_begin_ || p.float_begin != a2a_float_begin_)
      build_exchange(p, shards);
    const Timer t(st_);
    // In place (MPI_BOTTOM + the datatypes' absolute addresses).
    MPI_Alltoallw(MPI_BOTTOM, a2a_.send_counts.data(), a2a_.zero_displs.data(), a2a_.send_types.data(), MPI_BOTTOM,
                  a2a_.recv_counts.data(), a2a_.zero_displs.data(), a2a_.recv_types.data(), MPI_COMM_WORLD);
    st_.bytes_sent += a2a_.bytes_sent;
  }

  bool any(bool local) override {
    const Timer t(st_);
    int mine = local ? 1 : 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any != 0;
  }

  void mark_failure_agreed() override { g_agreed_failure = true; }
  CommStats stats() const override { return st_; }

  ~MpiCollective() override { free_exchange(); }

 private:
  struct Timer {
    CommStats& st;
    Clock::time_point t0 = Clock::now();
    explicit Timer(CommStats& s) : st(s) {}
    ~Timer() { st.seconds += seconds_since(t0); }
  };
  struct Counts {
    std::vector<int> counts, displs;
  };
  static Counts counts(const Bounds& b) {
    if (b.size() != (size_t)g_size + 1) throw std::logic_error("MpiCollective: bounds for another rank count");
    Counts c{std::vector<int>(g_size), std::vector<int>(g_size)};
    for (int q = 0; q < g_size; ++q) {
      c.displs[q] = to_int(b[q], "an offset");
      c.counts[q] = to_int(b[q + 1] - b[q], "a range");
    }
    return c;
  }
  template <class T>
  void all_gather_as(T* data, const Bounds& b, MPI_Datatype type) {
    const Timer t(st_);
    const Counts c = counts(b);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, data, c.counts.data(), c.displs.data(), type, MPI_COMM_WORLD);
    st_.bytes_sent += (uint64_t)c.counts[g_rank] * sizeof(T) * (g_size - 1);
  }

  // The all-to-all's datatypes, built once for the engine's shard buffers: to
  // peer q, for each own shard, floats [float_begin[q], float_begin[q+1]); from
  // peer q, for each of q's shards, this rank's float range.
  struct Exchange {
    std::vector<MPI_Datatype> send_types, recv_types;
    std::vector<int> send_counts, recv_counts, zero_displs;
    uint64_t bytes_sent = 0;
  };
  void build_exchange(const Partition& p, const std::vector<float*>& shards) {
    free_exchange();
    const int R = g_size, me = g_rank;
    const size_t s0 = p.shard_begin[me], s1 = p.shard_begin[me + 1];
    const size_t fb = p.float_begin[me], fe = p.float_begin[me + 1];
    Exchange& x = a2a_;
    x.send_types.assign(R, MPI_FLOAT);
    x.recv_types.assign(R, MPI_FLOAT);
    x.send_counts.assign(R, 0);
    x.recv_counts.assign(R, 0);
    x.zero_displs.assign(R, 0);
    auto hindexed = [&](size_t sb, size_t se, size_t f0, size_t f1) {
      std::vector<int> lens;
      std::vector<MPI_Aint> addrs;
      for (size_t s = sb; s < se; ++s) {
        MPI_Aint a;
        MPI_Get_address(shards[s] + f0, &a);
        addrs.push_back(a);
        lens.push_back(to_int(f1 - f0, "a gradient range"));
      }
      MPI_Datatype t;
      MPI_Type_create_hindexed((int)lens.size(), lens.data(), addrs.data(), MPI_FLOAT, &t);
      MPI_Type_commit(&t);
      return t;
    };
    for (int q = 0; q < R; ++q) {
      if (q == me) continue;  // own shards' own range: already in place
      const size_t qb = p.float_begin[q], qe = p.float_begin[q + 1];
      if (s1 > s0 && qe > qb) {
        x.send_types[q] = hindexed(s0, s1, qb, qe);
        x.send_counts[q] = 1;
        x.bytes_sent += (s1 - s0) * (qe - qb) * sizeof(float);
      }
      const size_t qs0 = p.shard_begin[q], qs1 = p.shard_begin[q + 1];
      if (qs1 > qs0 && fe > fb) {
        x.recv_types[q] = hindexed(qs0, qs1, fb, fe);
        x.recv_counts[q] = 1;
      }
    }
    a2a_shards_ = shards;
    a2a_shard_begin_ = p.shard_begin;
    a2a_float_begin_ = p.float_begin;
  }
  void free_exchange() {
    for (auto* types : {&a2a_.send_types, &a2a_.recv_types})
      for (auto& t : *types)
        if (t != MPI_FLOAT) MPI_Type_free(&t);
    a2a_ = Exchange{};
  }

  CommStats st_;
  Exchange a2a_;
  std::vector<float*> a2a_shards_;
  Bounds a2a_shard_begin_, a2a_float_begin_;
};

// Made on first use, and freed by the Session before MPI_Finalize (it holds MPI datatypes).
std::unique_ptr<MpiCollective> g_world;

}  // namespace

Collective& world() {
  if (!g_initialized || g_size == 1) return local_collective();
  if (!g_world) g_world = std::make_unique<MpiCollective>();
  return *g_world;
}

Session::Session(int* argc, char*** argv) {
  if (!launched_by_mpirun()) return;
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  g_initialized = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
}

Session::~Session() {
  g_world.reset();
  if (g_initialized) MPI_Finalize();
}

}  // namespace chargpt::dist
