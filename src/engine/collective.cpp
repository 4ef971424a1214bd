#include "engine/collective.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace chargpt {

Bounds even_split(size_t n, int R) {
  if (R < 1) throw std::logic_error("even_split: R must be >= 1");
  Bounds b(R + 1);
  for (int r = 0; r <= R; ++r) b[r] = n * r / R;
  return b;
}

Partition make_partition(size_t n_shards, const std::vector<ParamChunk>& chunks, size_t num_params, int R,
                         size_t group) {
  if (R < 1) throw std::logic_error("make_partition: R must be >= 1");
  if (group < 1) throw std::logic_error("make_partition: group must be >= 1");
  size_t at = 0;
  for (const auto& c : chunks) {
    if (c.begin != at || c.end <= c.begin) throw std::logic_error("make_partition: the chunks do not tile the parameters");
    at = c.end;
  }
  if (at != num_params) throw std::logic_error("make_partition: the chunks do not cover the parameters");
  Partition p;
  p.n_shards = n_shards;
  p.group = group;
  p.ranks = (size_t)R;
  p.rounds = (n_shards + (size_t)R * group - 1) / ((size_t)R * group);
  p.chunk_begin.resize(R + 1);
  p.float_begin.resize(R + 1);
  for (int r = 0; r <= R; ++r) {
    const size_t target = num_params * r / R;
    size_t c = 0;
    while (c < chunks.size() && chunks[c].begin < target) ++c;
    p.chunk_begin[r] = c;
    p.float_begin[r] = c < chunks.size() ? chunks[c].begin : num_params;
  }
  return p;
}

Bounds Partition::round(size_t k) const {
  Bounds b(ranks + 1);
  const size_t base = k * ranks * group;
  for (size_t q = 0; q <= ranks; ++q) b[q] = std::min(n_shards, base + q * group);
  return b;
}

LocalCollective& local_collective() {
  static LocalCollective one;
  return one;
}

double ordered_task_sum(Collective& comm, ThreadPool& pool, const Bounds& b, const std::function<double(size_t)>& task,
                        std::vector<double>& values) {
  const size_t k0 = b[comm.rank()], k1 = b[comm.rank() + 1];
  if (values.size() < b.back()) values.resize(b.back());
  pool.for_each(k1 - k0, [&](size_t i) { values[k0 + i] = task(k0 + i); });
  comm.all_gather(values.data(), b);
  double sum = 0;
  for (size_t k = b.front(); k < b.back(); ++k) sum += values[k];  // task order, whoever ran the task
  return sum;
}

void check_agreement(Collective& comm, const std::vector<std::pair<std::string, uint64_t>>& items) {
  const int R = comm.size(), me = comm.rank();
  if (R == 1) return;
  auto fail = [&](const std::string& what) {
    comm.mark_failure_agreed();
    throw std::runtime_error(what + "; every rank must run the same build, flags, data and checkpoint (this is rank " +
                             std::to_string(me) + " of " + std::to_string(R) + ")");
  };
  const size_t n = items.size();
  std::vector<uint64_t> ns(R);
  ns[me] = n;
  comm.all_gather(ns.data(), even_split(R, R));
  for (int q = 1; q < R; ++q)
    if (ns[q] != ns[0]) fail("ranks disagree on the number of run properties to check (different builds?)");
  std::vector<uint64_t> all(n * R);
  for (size_t i = 0; i < n; ++i) all[me * n + i] = items[i].second;
  comm.all_gather(all.data(), even_split(n * R, R));
  for (size_t i = 0; i < n; ++i) {
    std::string differ;
    for (int q = 1; q < R; ++q)
      if (all[q * n + i] != all[i]) differ += (differ.empty() ? "" : ", ") + std::to_string(q);
    if (!differ.empty()) fail("ranks disagree on " + items[i].first + ": rank(s) " + differ + " differ from rank 0");
  }
}

}  // namespace chargpt
