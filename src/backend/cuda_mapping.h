#pragma once
// The pure parts of the CUDA backend, compiled and tested in every build (they
// need no CUDA): how a row-major product becomes a column-major cuBLAS call,
// where one product's data sits in a worker's staging buffers, and which
// ranges of the weights are uploaded when.
#include <atomic>
#include <cstddef>
#include <mutex>
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

}  // namespace chargpt
