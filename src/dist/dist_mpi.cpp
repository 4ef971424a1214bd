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

  void exchange_round(const Partition& p, const Bounds& round, const std::vector<float*>& mine,
                      std::vector<const float*>& from) override {
    const Exchange& x = exchange_for(p, round, mine);
    const Timer t(st_);
    // In place (MPI_BOTTOM + the datatypes' absolute addresses).
    MPI_Alltoallw(MPI_BOTTOM, x.send_counts.data(), x.zero_displs.data(), x.send_types.data(), MPI_BOTTOM,
                  x.recv_counts.data(), x.zero_displs.data(), x.recv_types.data(), MPI_COMM_WORLD);
    st_.bytes_sent += x.bytes_sent;
    from = x.from;
  }

  bool any(bool local) override {
    const Timer t(st_);
    int mine = local ? 1 : 0, any = 0;
    MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return any != 0;
  }

  void mark_failure_agreed() override { g_agreed_failure = true; }
  CommStats stats() const override { return st_; }

  ~MpiCollective() override {
    for (auto& x : exchanges_) free_types(x);
  }

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

  // A round's all-to-all, built once per distinct round (a step has at most
  // two: full rounds and a shorter last one) over the engine's slot buffers: to
  // peer q, for each own shard, floats [float_begin[q], float_begin[q+1]); from
  // peer q, each of q's shards over this rank's floats, into recv_.
  struct Exchange {
    Bounds round, float_begin;
    std::vector<float*> mine;
    std::vector<MPI_Datatype> send_types, recv_types;
    std::vector<int> send_counts, recv_counts, zero_displs;
    std::vector<const float*> from;
    uint64_t bytes_sent = 0;
  };
  const Exchange& exchange_for(const Partition& p, const Bounds& round, const std::vector<float*>& mine) {
    if (round.size() != (size_t)g_size + 1) throw std::logic_error("MpiCollective: a round for another rank count");
    for (const Exchange& x : exchanges_)
      if (x.round == round && x.mine == mine && x.float_begin == p.float_begin) return x;
    const int R = g_size, me = g_rank;
    const size_t fb = p.float_begin[me], own = p.float_begin[me + 1] - fb, n = round.back() - round.front();
    if (recv_.size() < n * own) {  // the buffer moves: every cached exchange points into it
      for (auto& x : exchanges_) free_types(x);
      exchanges_.clear();
      recv_.resize(n * own);
    }
    Exchange x;
    x.round = round;
    x.mine = mine;
    x.float_begin = p.float_begin;
    x.send_types.assign(R, MPI_FLOAT);
    x.recv_types.assign(R, MPI_FLOAT);
    x.send_counts.assign(R, 0);
    x.recv_counts.assign(R, 0);
    x.zero_displs.assign(R, 0);
    x.from.assign(n, nullptr);
    auto hindexed = [&](const std::vector<const float*>& starts, size_t len) {
      std::vector<int> lens(starts.size(), to_int(len, "a gradient range"));
      std::vector<MPI_Aint> addrs;
      for (const float* a : starts) {
        MPI_Aint addr;
        MPI_Get_address(a, &addr);
        addrs.push_back(addr);
      }
      MPI_Datatype t;
      MPI_Type_create_hindexed((int)lens.size(), lens.data(), addrs.data(), MPI_FLOAT, &t);
      MPI_Type_commit(&t);
      return t;
    };
    for (size_t s = round[me]; s < round[me + 1]; ++s) x.from[s - round.front()] = mine[s - round[me]] + fb;
    for (int q = 0; q < R; ++q) {
      if (q == me) continue;  // own shards' own range: pointed at in place
      const size_t qb = p.float_begin[q], qe = p.float_begin[q + 1];
      if (!mine.empty() && qe > qb) {
        std::vector<const float*> starts;
        for (float* m : mine) starts.push_back(m + qb);
        x.send_types[q] = hindexed(starts, qe - qb);
        x.send_counts[q] = 1;
        x.bytes_sent += mine.size() * (qe - qb) * sizeof(float);
      }
      if (round[q + 1] > round[q] && own > 0) {
        std::vector<const float*> starts;
        for (size_t s = round[q]; s < round[q + 1]; ++s) {
          const float* at = recv_.data() + (s - round.front()) * own;
          starts.push_back(at);
          x.from[s - round.front()] = at;
        }
        x.recv_types[q] = hindexed(starts, own);
        x.recv_counts[q] = 1;
      }
    }
    exchanges_.push_back(std::move(x));
    return exchanges_.back();
  }
  static void free_types(Exchange& x) {
    for (auto* types : {&x.send_types, &x.recv_types})
      for (auto& t : *types)
        if (t != MPI_FLOAT) MPI_Type_free(&t);
  }

  CommStats st_;
  std::vector<Exchange> exchanges_;
  std::vector<float> recv_;  // the round's slices from the other ranks
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
