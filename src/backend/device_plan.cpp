// The pure parts of the CUDA path (cuda_mapping.h) and the device backend's
// switches (device_backend.h): no CUDA, compiled and tested in every build.
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"

namespace chargpt {

// ---------------------------------------------------------------- the mapping

CublasGemmArgs map_row_major(bool trans_a, bool trans_b, int M, int N, int K, int lda, int ldb, int ldc) {
  auto bad = [](const std::string& what) { throw std::invalid_argument("map_row_major: " + what); };
  if (M < 0 || N < 0 || K < 0)
    bad("sizes M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K) + " must be >= 0");
  // Row strides must hold a stored row: A is [M,K] (or [K,M] transposed), B [K,N] (or [N,K]), C [M,N].
  const int a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  if (lda < std::max(1, a_cols)) bad("lda=" + std::to_string(lda) + " < A's row length " + std::to_string(a_cols));
  if (ldb < std::max(1, b_cols)) bad("ldb=" + std::to_string(ldb) + " < B's row length " + std::to_string(b_cols));
  if (ldc < std::max(1, N)) bad("ldc=" + std::to_string(ldc) + " < C's row length " + std::to_string(N));
  CublasGemmArgs g;
  g.swap_operands = true;  // Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS's A is our B
  g.trans_a = trans_b;
  g.trans_b = trans_a;
  g.m = N;
  g.n = M;
  g.k = K;
  g.lda = ldb;
  g.ldb = lda;
  g.ldc = ldc;
  return g;
}

// ---------------------------------------------------------------- staging

size_t align_floats(size_t n) { return (n + StagingPlan::kAlign - 1) / StagingPlan::kAlign * StagingPlan::kAlign; }

StagingPlan StagingPlan::forward(int R, int IC, int OC, bool bias) {
  StagingPlan p;
  p.inp = 0;
  p.in_floats = (size_t)R * IC;
  p.out = 0;
  p.out_floats = (size_t)R * OC;
  p.ones = bias ? (size_t)R : 0;
  return p;
}

StagingPlan StagingPlan::backward(int R, int IC, int OC, bool dinp, bool dbias) {
  StagingPlan p;
  p.dout = 0;
  p.inp = align_floats((size_t)R * OC);
  p.in_floats = p.inp + (size_t)R * IC;
  size_t at = 0;
  if (dinp) {
    p.dinp = 0;
    at = align_floats((size_t)R * IC);
  }
  p.dweight = at;
  at += (size_t)OC * IC;
  if (dbias) {
    p.dbias = align_floats(at);
    at = p.dbias + (size_t)OC;
  }
  p.out_floats = at;
  p.ones = dbias ? (size_t)R : 0;
  return p;
}

// ---------------------------------------------------------------- upload schedule

void WeightUploads::bind(size_t n) {
  std::lock_guard<std::mutex> g(mu_);
  n_ = n;
  marked_.assign(1, {0, n});
  pending_.store(n > 0, std::memory_order_release);
}

void WeightUploads::mark(size_t begin, size_t end) {
  if (begin > end || end > n_)
    throw std::out_of_range("weights_changed(" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") outside the bound block of " + std::to_string(n_) + " floats");
  if (begin == end) return;
  std::lock_guard<std::mutex> g(mu_);
  marked_.emplace_back(begin, end);
  pending_.store(true, std::memory_order_release);
}

std::vector<std::pair<size_t, size_t>> WeightUploads::begin_flush() {
  std::vector<std::pair<size_t, size_t>> r;
  {
    std::lock_guard<std::mutex> g(mu_);
    r.swap(marked_);
  }
  std::sort(r.begin(), r.end());
  size_t w = 0;
  for (size_t i = 0; i < r.size(); ++i) {
    if (w > 0 && r[i].first <= r[w - 1].second) r[w - 1].second = std::max(r[w - 1].second, r[i].second);
    else r[w++] = r[i];
  }
  r.resize(w);
  return r;
}

void WeightUploads::end_flush(const std::vector<std::pair<size_t, size_t>>& uploaded) {
  std::lock_guard<std::mutex> g(mu_);
  if (!uploaded.empty()) {
    ++flushes_;
    if (uploaded.size() == 1 && uploaded[0].first == 0 && uploaded[0].second == n_) ++full_;
    copies_ += uploaded.size();
    for (const auto& r : uploaded) floats_ += r.second - r.first;
  }
  if (marked_.empty()) pending_.store(false, std::memory_order_release);
}

void WeightUploads::abort_flush(const std::vector<std::pair<size_t, size_t>>& ranges) {
  std::lock_guard<std::mutex> g(mu_);
  marked_.insert(marked_.end(), ranges.begin(), ranges.end());
  if (!marked_.empty()) pending_.store(true, std::memory_order_release);
}

size_t WeightUploads::size() const {
  std::lock_guard<std::mutex> g(mu_);
  return n_;
}
size_t WeightUploads::flushes() const {
  std::lock_guard<std::mutex> g(mu_);
  return flushes_;
}
size_t WeightUploads::full_uploads() const {
  std::lock_guard<std::mutex> g(mu_);
  return full_;
}
size_t WeightUploads::copies() const {
  std::lock_guard<std::mutex> g(mu_);
  return copies_;
}
size_t WeightUploads::floats_uploaded() const {
  std::lock_guard<std::mutex> g(mu_);
  return floats_;
}

// ---------------------------------------------------------------- errors, devices

bool ReleaseReport::report(const std::string& line, std::FILE* to) {
  if (failed_.load(std::memory_order_relaxed) || printed_.exchange(true)) {
    suppressed_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  std::fprintf(to, "%s\n", line.c_str());
  return true;
}

namespace {

// A non-negative integer, or throws naming the variable.
long parse_index(const char* name, const char* value) {
  const std::string v = value;
  if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos)
    throw std::invalid_argument(std::string(name) + "='" + v + "': expected a non-negative integer");
  return std::stol(v);
}

}  // namespace

int choose_device(int count, const std::function<const char*(const char*)>& env, std::string* why) {
  if (count <= 0) throw std::invalid_argument("choose_device: no devices");
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    const char* v = env(name);
    if (!v) continue;
    const long rank = parse_index(name, v);
    const int d = (int)(rank % count);
    if (why) *why = std::string("local rank ") + std::to_string(rank) + " (" + name + ") mod " + std::to_string(count);
    return d;
  }
  if (why) *why = "no launcher's local rank";
  return 0;
}

std::string cuda_version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); }

std::string no_device_reason(int driver_version, int runtime_version, const std::string& error_name,
                             const std::string& error_string) {
  if (driver_version == 0) return "no NVIDIA driver is installed (libcuda.so.1 not found)";
  if (error_name == "cudaErrorInsufficientDriver" || (runtime_version > 0 && driver_version < runtime_version))
    return "the NVIDIA driver supports CUDA " + cuda_version_string(driver_version) + ", older than this build's runtime " +
           cuda_version_string(runtime_version) + " (update the driver)";
  if (error_name.empty() || error_name == "cudaErrorNoDevice")
    return "the driver (CUDA " + cuda_version_string(driver_version) + ") reports no device" +
           (std::getenv("CUDA_VISIBLE_DEVICES") ? std::string(" (CUDA_VISIBLE_DEVICES is set)") : std::string());
  return error_string + " (" + error_name + ", driver CUDA " + cuda_version_string(driver_version) + ")";
}

// ---------------------------------------------------------------- switches

DeviceTuning device_tuning_from_env() {
  DeviceTuning t;
  auto bad = [](const char* name, const std::string& v, const char* expected) {
    throw std::invalid_argument(std::string(name) + "='" + v + "': expected " + expected);
  };
  if (const char* v = std::getenv("CHARGPT_CUDA_INPUT_CACHE")) {
    const std::string s = v;
    if (s == "1") t.input_cache = DeviceTuning::InputCache::on;
    else if (s == "0") t.input_cache = DeviceTuning::InputCache::off;
    else if (s == "verify") t.input_cache = DeviceTuning::InputCache::verify;
    else bad("CHARGPT_CUDA_INPUT_CACHE", s, "0, 1 or verify");
  }
  if (const char* v = std::getenv("CHARGPT_CUDA_CHUNK_KB")) {
    const std::string s = v;
    if (s.empty() || s.size() > 7 || s.find_first_not_of("0123456789") != std::string::npos)
      bad("CHARGPT_CUDA_CHUNK_KB", s, "a size in KiB (0: no chunks)");
    t.chunk_bytes = (size_t)std::stoul(s) << 10;
  }
  if (const char* v = std::getenv("CHARGPT_CUDA_TIMERS")) {
    const std::string s = v;
    if (s != "0" && s != "1") bad("CHARGPT_CUDA_TIMERS", s, "0 or 1");
    t.timers = s == "1";
  }
  return t;
}

}  // namespace chargpt
