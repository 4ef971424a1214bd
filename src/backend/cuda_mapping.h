#pragma once
// The pure parts of the CUDA backend, compiled and tested in every build (they
// need no CUDA): how a row-major product becomes a column-major cuBLAS call,
// where one product's data sits in a worker's staging buffers, and which
// ranges of the weights are uploaded when.
#include <atomic>
#include <cstddef>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace chargpt {

// The arguments of cublasSgemm(handle, transa, transb, m, n, k, alpha, A, lda,
// B, ldb, beta, C, ldc) for a row-major product.
//
// A row-major matrix X[r,c] with row stride ld is, read column-major with the
// same ld, its transpose. So the row-major C[M,N] = op(A)·op(B) is the
// column-major Cᵀ[N,M] = op(B)ᵀ·op(A)ᵀ: cuBLAS's first operand is our B and its
// second our A (the operands always swap), each keeps its own transpose flag
// and leading dimension, m = N, n = M, and ldc is C's row stride.
struct CublasGemmArgs {
  bool swap_operands = true;  // cuBLAS's A is the row-major B, its B the row-major A
  bool trans_a = false, trans_b = false;  // cuBLAS's transa / transb (of its own A and B)
  int m = 0, n = 0, k = 0;
  int lda = 0, ldb = 0, ldc = 0;  // of cuBLAS's A, B and C

  // cuBLAS's (A, B) from the row-major (A, B).
  template <class Ptr>
  std::pair<Ptr, Ptr> operands(Ptr row_major_a, Ptr row_major_b) const {
    return swap_operands ? std::pair<Ptr, Ptr>{row_major_b, row_major_a} : std::pair<Ptr, Ptr>{row_major_a, row_major_b};
  }
};

// Row-major C[M,N] = op(A)·op(B) + beta·C, op(A) [M,K], op(B) [K,N], with row
// strides lda, ldb, ldc (trans_a: A is stored [K,M]; trans_b: B is stored
// [N,K]). Throws std::invalid_argument naming the bad size or stride.
CublasGemmArgs map_row_major(bool trans_a, bool trans_b, int M, int N, int K, int lda, int ldb, int ldc);

// Where the data of one product sits in a worker's staging buffers, in floats.
// The "in" region is copied host → device in one transfer, the "out" region
// device → host in one; the pinned host buffer and the device buffer of each
// region have the same layout. Pieces start at multiples of kAlign floats
// (256 bytes, the alignment cudaMalloc gives) and never overlap. Pieces a call
// does not have are 0 floats long at offset 0.
struct StagingPlan {
  static constexpr size_t kAlign = 64;
  // in: pinned host → device
  size_t inp = 0, dout = 0;  // offsets of the input activations and of the output gradient
  size_t in_floats = 0;      // the in region's size
  // out: device → pinned host
  size_t out = 0, dinp = 0, dweight = 0, dbias = 0;
  size_t out_floats = 0;
  // A device vector of ones (bias broadcast, bias gradient), filled once.
  size_t ones = 0;

  // out[R,OC] = inp[R,IC]·weight[OC,IC]ᵀ (+ bias): in = inp; out = out; ones = R if bias.
  static StagingPlan forward(int R, int IC, int OC, bool bias);
  // in = dout[R,OC], inp[R,IC]; out = dinp[R,IC] (if wanted), dweight[OC,IC], dbias[OC] (if wanted); ones = R if dbias.
  static StagingPlan backward(int R, int IC, int OC, bool dinp, bool dbias);
};

size_t align_floats(size_t n);  // n rounded up to a multiple of StagingPlan::kAlign

// The weight-upload schedule. The host parameter block is the truth; the device
// keeps a copy. Writers mark what they changed (mark: thread-safe, called from
// the AdamW chunk loop's threads at once on disjoint ranges); the first product
// after that uploads the marked ranges, merged into as few contiguous copies as
// they allow, under the backend's flush lock. So the weights cross the bus once
// per optimizer step however many products read them, and never while a step's
// products run.
class WeightUploads {
 public:
  // A new block of n floats: all of it is to be uploaded.
  void bind(size_t n);
  // Floats [begin, end) changed. Throws std::out_of_range past the bound block.
  void mark(size_t begin, size_t end);
  // Something is marked, or being uploaded. Cheap (an atomic load): every product asks.
  bool pending() const { return pending_.load(std::memory_order_acquire); }
  // The marked ranges, sorted and merged (adjacent or overlapping ranges become
  // one); they are no longer marked. pending() stays true until end_flush.
  std::vector<std::pair<size_t, size_t>> begin_flush();
  // The ranges of begin_flush are on the device: records them; clears pending()
  // unless more was marked meanwhile.
  void end_flush(const std::vector<std::pair<size_t, size_t>>& uploaded);
  // The upload of begin_flush's ranges failed (threw): they are marked again, so
  // that the next product retries them.
  void abort_flush(const std::vector<std::pair<size_t, size_t>>& ranges);

  size_t size() const;
  size_t flushes() const;          // flushes that uploaded something
  size_t full_uploads() const;     // of them, those that uploaded the whole block
  size_t copies() const;           // contiguous copies made
  size_t floats_uploaded() const;  // their total length

 private:
  mutable std::mutex mu_;
  std::atomic<bool> pending_{false};
  size_t n_ = 0;
  std::vector<std::pair<size_t, size_t>> marked_;
  size_t flushes_ = 0, full_ = 0, copies_ = 0, floats_ = 0;
};

// Errors while releasing device resources (destructors cannot throw). After a
// call has failed (a sticky CUDA error: every later call fails too) releasing
// fails in every lane, and each failure would print a line before the error that
// matters reaches the user: so nothing is printed once a call has failed, and
// otherwise only the first release failure is (the rest are counted).
class ReleaseReport {
 public:
  void call_failed() { failed_.store(true, std::memory_order_relaxed); }
  // Prints `line` (one line, no newline) to `to` unless a call failed or a line was printed; returns whether it did.
  bool report(const std::string& line, std::FILE* to = stderr);
  long suppressed() const { return suppressed_.load(std::memory_order_relaxed); }

 private:
  std::atomic<bool> failed_{false}, printed_{false};
  std::atomic<long> suppressed_{0};
};

// The device this process uses among `count` (> 0) devices: its local rank under
// a launcher (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID, the
// first one set) modulo count, so that the ranks on one machine spread over its
// GPUs; 0 without a launcher. CUDA_VISIBLE_DEVICES (the runtime's) narrows the
// list first. `env` is getenv (a parameter for the tests). *why says which
// variable chose it. Throws std::invalid_argument for a value that is not a
// non-negative integer, naming the variable.
int choose_device(int count, const std::function<const char*(const char*)>& env, std::string* why);

// Why there is no usable device, for "no CUDA device: <reason>": driver_version
// and runtime_version as cudaDriverGetVersion / cudaRuntimeGetVersion give them
// (driver 0: no driver installed), error_name/error_string those of the failed
// cudaGetDeviceCount ("" if it succeeded with 0 devices).
std::string no_device_reason(int driver_version, int runtime_version, const std::string& error_name,
                             const std::string& error_string);
// "13.0" from 13000 (the runtime's and the driver's version numbers).
std::string cuda_version_string(int v);

}  // namespace chargpt
