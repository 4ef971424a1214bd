// Data-parallel training over MPI ranks (see dist/dist.h for the
// scheme). Compiled only when CMake finds MPI (CHARGPT_MPI). Only the main
// thread calls MPI (MPI_THREAD_FUNNELED); oneTBB workers never do.
//
// Failures: MPI_COMM_WORLD keeps Open MPI's default handler, errors are fatal,
// so a broken link or a dead peer aborts the whole job (mpirun then kills every
// rank and exits non-zero) instead of leaving a rank blocked in a collective.
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "dist/dist.h"
#include "base/clock.h"
#include "base/hash.h"

namespace chargpt::dist {

namespace {

bool g_initialized = false;
int g_rank = 0, g_size = 1;

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

Session::Session(int* argc, char*** argv) {
  if (!launched_by_mpirun()) return;
  int provided = 0;
  MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
  g_initialized = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
}

Session::~Session() {
  if (g_initialized) MPI_Finalize();
}

void Session::failed(int exit_code) {
  if (!g_initialized || g_size == 1 || agreed_failure()) return;
  // This rank alone failed: the others would wait for it in their next
  // collective. End the whole job.
  std::fflush(stdout);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

int rank() { return g_rank; }
int size() { return g_size; }

// ---------------------------------------------------------------------------

struct DataParallel::Impl {
  Engine& e;
  int R, me;
  Partition part;
  // The all-to-all of shard gradients, in place (MPI_BOTTOM + absolute addresses):
  // to peer q, for each own shard, floats [float_begin[q], float_begin[q+1]);
  // from peer q, for each of q's shards, this rank's float range.
  std::vector<MPI_Datatype> send_types, recv_types;
  std::vector<int> send_counts, recv_counts, zero_displs;
  uint64_t a2a_bytes_sent = 0;
  // Allgatherv of [own chunks' sumsq..., own shards' loss sums...] (doubles).
  std::vector<int> small_counts, small_displs;
  std::vector<double> small_send, small_recv;
  // Allgatherv / Gatherv of floats by chunk range.
  std::vector<int> float_counts, float_displs;
  std::vector<double> eval_sums;
  CommStats st;

  explicit Impl(Engine& eng) : e(eng), R(g_size), me(g_rank) {
    part = make_partition(e.n_shards(), e.chunks(), e.num_params(), R);
    const size_t s0 = part.shard_begin[me], s1 = part.shard_begin[me + 1];
    const size_t fb = part.float_begin[me], fe = part.float_begin[me + 1];
    send_types.assign(R, MPI_FLOAT);
    recv_types.assign(R, MPI_FLOAT);
    send_counts.assign(R, 0);
    recv_counts.assign(R, 0);
    zero_displs.assign(R, 0);
    auto hindexed = [&](size_t sb, size_t se, size_t f0, size_t f1) {
      std::vector<int> lens;
      std::vector<MPI_Aint> addrs;
      for (size_t s = sb; s < se; ++s) {
        MPI_Aint a;
        MPI_Get_address(e.shard_grad(s) + f0, &a);
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
      const size_t qb = part.float_begin[q], qe = part.float_begin[q + 1];
      if (s1 > s0 && qe > qb) {
        send_types[q] = hindexed(s0, s1, qb, qe);
        send_counts[q] = 1;
        a2a_bytes_sent += (s1 - s0) * (qe - qb) * sizeof(float);
      }
      const size_t qs0 = part.shard_begin[q], qs1 = part.shard_begin[q + 1];
      if (qs1 > qs0 && fe > fb) {
        recv_types[q] = hindexed(qs0, qs1, fb, fe);
        recv_counts[q] = 1;
      }
    }
    small_counts.resize(R);
    small_displs.resize(R);
    float_counts.resize(R);
    float_displs.resize(R);
    int at = 0;
    for (int q = 0; q < R; ++q) {
      small_counts[q] = (int)((part.chunk_begin[q + 1] - part.chunk_begin[q]) +
                              (part.shard_begin[q + 1] - part.shard_begin[q]));
      small_displs[q] = at;
      at += small_counts[q];
      float_counts[q] = to_int(part.float_begin[q + 1] - part.float_begin[q], "a parameter range");
      float_displs[q] = to_int(part.float_begin[q], "a parameter offset");
    }
    small_send.resize(small_counts[me]);
    small_recv.resize(at);
  }

  ~Impl() {
    for (auto& t : send_types)
      if (t != MPI_FLOAT) MPI_Type_free(&t);
    for (auto& t : recv_types)
      if (t != MPI_FLOAT) MPI_Type_free(&t);
  }

  double timed(double& acc, Clock::time_point t0) {
    const double s = seconds_since(t0);
    acc += s;
    return s;
  }
};

DataParallel::DataParallel(Engine& e) {
  if (!g_initialized || g_size < 2) throw std::logic_error("DataParallel: needs an MPI run of 2 or more ranks");
  impl_ = std::make_unique<Impl>(e);
}

DataParallel::~DataParallel() = default;

const Partition& DataParallel::partition() const { return impl_->part; }
const CommStats& DataParallel::stats() const { return impl_->st; }

void DataParallel::check_agreement(const std::vector<std::pair<std::string, uint64_t>>& items) {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  auto fail = [&](const std::string& what) {
    note_agreed_failure();
    throw std::runtime_error(what + "; every rank must run the same build, flags, data and checkpoint (this is rank " +
                             std::to_string(d.me) + " of " + std::to_string(d.R) + ")");
  };
  const int n = (int)items.size();
  std::vector<int> ns(d.R);
  MPI_Allgather(&n, 1, MPI_INT, ns.data(), 1, MPI_INT, MPI_COMM_WORLD);
  for (int q = 1; q < d.R; ++q)
    if (ns[q] != ns[0]) fail("ranks disagree on the number of run properties to check (different builds?)");
  std::vector<uint64_t> mine(n), all((size_t)n * d.R);
  for (int i = 0; i < n; ++i) mine[i] = items[i].second;
  MPI_Allgather(mine.data(), n, MPI_UINT64_T, all.data(), n, MPI_UINT64_T, MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);
  for (int i = 0; i < n; ++i) {
    std::string differ;
    for (int q = 1; q < d.R; ++q)
      if (all[(size_t)q * n + i] != all[i]) differ += (differ.empty() ? "" : ", ") + std::to_string(q);
    if (!differ.empty()) fail("ranks disagree on " + items[i].first + ": rank(s) " + differ + " differ from rank 0");
  }
}

double DataParallel::train_step(const std::vector<int32_t>& split, float lr, float grad_clip, const AdamW& opt,
                                double* grad_norm) {
  Impl& d = *impl_;
  Engine& e = d.e;
  const Partition& p = d.part;
  const size_t s0 = p.shard_begin[d.me], s1 = p.shard_begin[d.me + 1];
  const size_t c0 = p.chunk_begin[d.me], c1 = p.chunk_begin[d.me + 1];
  e.sample_next_batch(split);  // every rank draws the whole batch: same sampler state
  e.forward_backward(s0, s1);

  auto t0 = Clock::now();
  MPI_Alltoallw(MPI_BOTTOM, d.send_counts.data(), d.zero_displs.data(), d.send_types.data(), MPI_BOTTOM,
                d.recv_counts.data(), d.zero_displs.data(), d.recv_types.data(), MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);

  e.reduce(c0, c1);  // every shard, in shard order, over this rank's chunks

  size_t k = 0;
  for (size_t c = c0; c < c1; ++c) d.small_send[k++] = e.chunk_sumsq()[c];
  for (size_t s = s0; s < s1; ++s) d.small_send[k++] = e.shard_loss()[s];
  t0 = Clock::now();
  MPI_Allgatherv(d.small_send.data(), (int)d.small_send.size(), MPI_DOUBLE, d.small_recv.data(), d.small_counts.data(),
                 d.small_displs.data(), MPI_DOUBLE, MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);
  k = 0;
  for (int q = 0; q < d.R; ++q) {
    for (size_t c = p.chunk_begin[q]; c < p.chunk_begin[q + 1]; ++c) e.chunk_sumsq()[c] = d.small_recv[k++];
    for (size_t s = p.shard_begin[q]; s < p.shard_begin[q + 1]; ++s) e.shard_loss()[s] = d.small_recv[k++];
  }
  // The same sums, in the same order, as one process: equal bits on every rank.
  const double loss = e.batch_loss();
  const double norm = std::sqrt(e.grad_norm_sq());
  if (grad_norm) *grad_norm = norm;
  float scale;
  try {
    scale = clip_scale(loss, norm, grad_clip, e.step() + 1);
  } catch (const std::runtime_error&) {
    note_agreed_failure();  // a non-finite loss or norm: every rank sees the same ones and stops alike
    throw;
  }
  e.update(c0, c1, lr, scale, opt);

  t0 = Clock::now();
  MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, e.params(), d.float_counts.data(), d.float_displs.data(),
                 MPI_FLOAT, MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);
  for (int q = 0; q < d.R; ++q)
    if (q != d.me && d.float_counts[q] > 0)
      e.backend().weights_changed(p.float_begin[q], p.float_begin[q + 1]);
  try {
    e.check_weights_finite();  // every rank holds all the weights now: the same verdict everywhere
  } catch (const std::runtime_error&) {
    note_agreed_failure();
    throw;
  }
  e.finish_step();

  d.st.steps++;
  d.st.bytes_sent += d.a2a_bytes_sent + d.small_send.size() * sizeof(double) * (d.R - 1) +
                     (uint64_t)d.float_counts[d.me] * sizeof(float) * (d.R - 1);
  return loss;
}

double DataParallel::estimate_loss(const std::vector<int32_t>& split, int iters, uint64_t seed) {
  Impl& d = *impl_;
  Engine& e = d.e;
  if (iters <= 0) return NAN;
  const size_t tasks = (size_t)iters * e.n_shards();
  std::vector<int> counts(d.R), displs(d.R);
  for (int q = 0; q < d.R; ++q) {
    displs[q] = to_int(tasks * q / d.R, "evaluation tasks");
    counts[q] = to_int(tasks * (q + 1) / d.R, "evaluation tasks") - displs[q];
  }
  d.eval_sums.resize(tasks);
  e.estimate_loss_tasks(split, iters, seed, displs[d.me], displs[d.me] + counts[d.me], d.eval_sums.data() + displs[d.me]);
  const auto t0 = Clock::now();
  MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, d.eval_sums.data(), counts.data(), displs.data(), MPI_DOUBLE,
                 MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);
  double total = 0;
  for (size_t k = 0; k < tasks; ++k) total += d.eval_sums[k];  // task order, as Engine::estimate_loss
  return total / ((double)iters * e.batch_size() * e.cfg().block_size);
}

void DataParallel::gather_optimizer_state() {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  for (float* buf : {d.e.adam_m(), d.e.adam_v()}) {
    float* own = buf + d.part.float_begin[d.me];
    if (d.me == 0)
      MPI_Gatherv(MPI_IN_PLACE, 0, MPI_FLOAT, buf, d.float_counts.data(), d.float_displs.data(), MPI_FLOAT, 0,
                  MPI_COMM_WORLD);
    else
      MPI_Gatherv(own, d.float_counts[d.me], MPI_FLOAT, nullptr, nullptr, nullptr, MPI_FLOAT, 0, MPI_COMM_WORLD);
  }
  d.timed(d.st.seconds, t0);
}

bool DataParallel::agree_stop(bool local_stop) {
  Impl& d = *impl_;
  const auto t0 = Clock::now();
  int mine = local_stop ? 1 : 0, any = 0;
  MPI_Allreduce(&mine, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  d.timed(d.st.seconds, t0);
  return any != 0;
}

std::string DataParallel::summary() const {
  const Impl& d = *impl_;
  char buf[256];
  const int n = d.st.steps > 0 ? d.st.steps : 1;
  std::snprintf(buf, sizeof buf,
                "mpi: %d ranks x %d threads; rank %d: shards [%zu, %zu), %zu of %zu parameters; %.2f ms/step in MPI "
                "calls (waits included); %.3f MB sent/step",
                d.R, d.e.threads(), d.me, d.part.shard_begin[d.me], d.part.shard_begin[d.me + 1],
                d.part.float_begin[d.me + 1] - d.part.float_begin[d.me], d.e.num_params(), 1000 * d.st.seconds / n,
                d.st.bytes_sent / 1e6 / n);
  return buf;
}

EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads) {
  if (!g_initialized || g_size == 1) return chargpt::evaluate_split(be, cfg, params, split, threads);
  const size_t tasks = eval_task_count(cfg, split.size());
  // Every rank must evaluate the same weights on the same split.
  uint64_t h[2] = {hash_bytes(params, num_params(cfg) * sizeof(float)),
                   hash_bytes(split.data(), split.size() * sizeof(int32_t))};
  std::vector<uint64_t> all(2 * (size_t)g_size);
  MPI_Allgather(h, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, MPI_COMM_WORLD);
  for (int q = 1; q < g_size; ++q)
    for (int i = 0; i < 2; ++i)
      if (all[2 * q + i] != all[i]) {
        note_agreed_failure();
        throw std::runtime_error(std::string("ranks disagree on ") + (i == 0 ? "the checkpoint's weights" : "the split's text") +
                                 ": rank " + std::to_string(q) + " differs from rank 0 (this is rank " +
                                 std::to_string(g_rank) + " of " + std::to_string(g_size) + ")");
      }
  std::vector<int> counts(g_size), displs(g_size);
  for (int q = 0; q < g_size; ++q) {
    displs[q] = to_int(tasks * q / g_size, "evaluation tasks");
    counts[q] = to_int(tasks * (q + 1) / g_size, "evaluation tasks") - displs[q];
  }
  std::vector<double> sums(tasks);
  evaluate_tasks(be, cfg, params, split, threads, displs[g_rank], displs[g_rank] + counts[g_rank],
                 sums.data() + displs[g_rank]);
  MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, sums.data(), counts.data(), displs.data(), MPI_DOUBLE,
                 MPI_COMM_WORLD);
  double total = 0;
  for (double s : sums) total += s;  // task order, as evaluate_split
  const size_t n_targets = split.size() - 1;
  return {total / (double)n_targets, n_targets};
}

}  // namespace chargpt::dist
