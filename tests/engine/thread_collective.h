#pragma once
// R ranks as R threads of one process, sharing memory: what MPI does between
// processes (dist/dist_mpi.cpp), done with copies and a barrier, so that the
// engine's step over several ranks is tested in every build. The engine cannot
// tell the difference. Each rank's thread makes its own ThreadCollective.
#include <doctest/doctest.h>

#include <barrier>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

#include "engine/collective.h"

namespace chargpt::test {

struct ThreadGroup {
  explicit ThreadGroup(int n) : R(n), sync(n), ptrs(n), shards(n), flags(n), agreed(n) {}
  int R;
  std::barrier<> sync;
  std::vector<const void*> ptrs;
  std::vector<const std::vector<float*>*> shards;  // each rank's shards of the round
  std::vector<char> flags, agreed;
};

class ThreadCollective final : public Collective {
 public:
  ThreadCollective(ThreadGroup& g, int rank) : g_(g), me_(rank) {}
  int rank() const override { return me_; }
  int size() const override { return g_.R; }
  void all_gather(float* d, const Bounds& b) override { gather(d, b, true); }
  void all_gather(double* d, const Bounds& b) override { gather(d, b, true); }
  void all_gather(uint64_t* d, const Bounds& b) override { gather(d, b, true); }
  void gather_to_root(float* d, const Bounds& b) override { gather(d, b, me_ == 0); }
  // Copies every other rank's slices into this rank's buffer, as MPI would;
  // own shards are pointed at, not copied.
  void exchange_round(const Partition& p, const Bounds& round, const std::vector<float*>& mine,
                      std::vector<const float*>& from) override {
    REQUIRE(round.size() == (size_t)g_.R + 1);
    REQUIRE(mine.size() == round[me_ + 1] - round[me_]);
    g_.shards[me_] = &mine;
    g_.sync.arrive_and_wait();
    const size_t f0 = p.float_begin[me_], own = p.float_begin[me_ + 1] - f0, n = round.back() - round.front();
    recv_.resize(n * own);
    from.assign(n, nullptr);
    for (int q = 0; q < g_.R; ++q)
      for (size_t s = round[q]; s < round[q + 1]; ++s) {
        const size_t i = s - round.front();
        const float* src = (*g_.shards[q])[s - round[q]] + f0;
        if (q == me_) {
          from[i] = src;
        } else {
          std::memcpy(recv_.data() + i * own, src, own * sizeof(float));
          from[i] = recv_.data() + i * own;
        }
      }
    g_.sync.arrive_and_wait();  // the senders may reuse their buffers only after every copy
  }
  bool any(bool local) override {
    g_.flags[me_] = local;
    g_.sync.arrive_and_wait();
    bool any = false;
    for (char f : g_.flags) any = any || f;
    g_.sync.arrive_and_wait();
    return any;
  }
  void mark_failure_agreed() override { g_.agreed[me_] = 1; }
  CommStats stats() const override { return {}; }

 private:
  template <class T>
  void gather(T* d, const Bounds& b, bool receive) {
    REQUIRE(b.size() == (size_t)g_.R + 1);
    g_.ptrs[me_] = d;
    g_.sync.arrive_and_wait();
    for (int q = 0; q < g_.R; ++q)
      if (receive && q != me_) std::memcpy(d + b[q], (const T*)g_.ptrs[q] + b[q], (b[q + 1] - b[q]) * sizeof(T));
    g_.sync.arrive_and_wait();
  }
  ThreadGroup& g_;
  int me_;
  std::vector<float> recv_;
};

// Runs f(comm) for every rank of g, each on its own thread; returns each rank's
// error message ("" where f returned).
template <class F>
std::vector<std::string> run_as_ranks(ThreadGroup& g, const F& f) {
  std::vector<std::string> errors(g.R);
  std::vector<std::thread> ranks;
  for (int r = 0; r < g.R; ++r)
    ranks.emplace_back([&, r] {
      ThreadCollective comm(g, r);
      try {
        f(comm);
      } catch (const std::exception& e) {
        errors[r] = e.what();
      }
    });
  for (auto& t : ranks) t.join();
  return errors;
}

}  // namespace chargpt::test
