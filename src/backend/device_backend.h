#pragma once
// A Backend whose linear products run on an accelerator that has its own
// memory: the CUDA backend's logic with the device as a parameter. It is
// compiled in every build, so that everything but the CUDA calls themselves
// (the row-major mapping, the staging layout, the grow-only buffers, the bias
// and bias-gradient products, the weight-upload schedule, accumulate, the input
// cache, chunked staging, bf16) runs in the tests against an emulated device
// that does the column-major products on the CPU. backend_cuda.cpp supplies the
// real device (cudart + cuBLAS), in a module loaded on first use
// (backend_cuda_loader.cpp).
//
// Threads: each worker thread that calls the backend gets its own DeviceLane (on
// CUDA a stream and a cuBLAS handle) with its own pinned and device staging
// buffers, made the first time that thread calls and kept until the backend is
// destroyed. The Engine runs one shard per oneTBB task, so the shards' products
// are queued on independent streams and the GPU overlaps them (copies of one
// shard with the products of another); no lock is taken on the product path.
// A call is synchronous for its caller: upload the inputs, run the products,
// download the results, wait for its own stream, copy out of the staging buffer.
// The weights have one device copy shared by all lanes; see WeightUploads for
// when it is refreshed.
//
// Determinism: a product's arithmetic depends only on its shape and inputs (one
// cuBLAS handle per stream, which is what cuBLAS's reproducibility promise
// needs: same bits on the same GPU model, toolkit and shape), and the chunking
// of copies depends only on the sizes, never on the thread count. So a run gives
// the same bits for any --threads on one GPU model and toolkit; not across GPU
// models or cuBLAS versions, and not equal to the CPU backends' bits.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cuda_mapping.h"

namespace chargpt {

// What a product reads: fp32 (TF32 allowed where the device allows it), fp32
// exactly (the bias broadcast and the bias-gradient sum must not round their
// inputs), or bf16 operands with fp32 accumulation and an fp32 C.
enum class GemmInputs { fp32, fp32_exact, bf16 };

// The phases of a lane's stream that the timers split its time into (end: the
// last phase ends here; not a phase itself).
enum class DevicePhase { upload, product, download, end };
constexpr int kDevicePhases = 3;

// One worker thread's queue on the device. Calls run in the order they are
// made; upload/download/gemm/record may return before they finish, sync and
// wait block until what they wait for is done.
class DeviceLane {
 public:
  virtual ~DeviceLane() = default;
  virtual float* alloc_device(size_t n) = 0;  // n floats
  virtual void free_device(float* p) noexcept = 0;
  virtual float* alloc_pinned(size_t n) = 0;  // n floats of page-locked host memory
  virtual void free_pinned(float* p) noexcept = 0;
  virtual void upload(void* dev, const void* host, size_t bytes) = 0;
  virtual void download(void* host, const void* dev, size_t bytes) = 0;
  // cublasSgemm (fp32, fp32_exact) or cublasGemmEx with bf16 A and B and CUBLAS_COMPUTE_32F
  // (bf16), with the mapped arguments; A, B, C are device pointers of cuBLAS's own operands.
  virtual void gemm(const CublasGemmArgs& g, float alpha, const void* A, const void* B, float beta, float* C,
                    GemmInputs in) = 0;
  virtual void sync() = 0;
  // Event `slot` (0, 1, ...: the lane keeps as many as are asked for) recorded
  // at this point of the stream; wait(slot) blocks until the stream got there.
  virtual void record(int slot) = 0;
  virtual void wait(int slot) = 0;
  // Timers (only called when they are on): phase(p) marks that the stream
  // starts phase p here (the previous one ends; end ends the last); after sync, take_times adds
  // the seconds the stream spent in each phase since the last take to
  // seconds[kDevicePhases] and forgets the marks.
  virtual void phase(DevicePhase p) = 0;
  virtual void take_times(double* seconds) = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;  // Backend::name()
  // A lane for the calling thread (on CUDA: made current on the device, a new stream and handle).
  virtual std::unique_ptr<DeviceLane> make_lane() = 0;
  // The weights' device copy, shared by all lanes.
  virtual float* alloc_device(size_t n) = 0;
  virtual void free_device(float* p) noexcept = 0;
};

// The switches of the backend's step, read from the environment in one place
// (device_tuning_from_env), so that one GPU run can measure each on and off.
struct DeviceTuning {
  // CHARGPT_CUDA_INPUT_CACHE=1 (default) | 0 | verify: keep each forward's
  // activation input on the device for the backward's weight gradient (the model
  // passes the same pointer to both). verify also hashes the host input at the
  // forward and throws if it changed by the backward (tests).
  enum class InputCache { off, on, verify };
  InputCache input_cache = InputCache::on;
  // CHARGPT_CUDA_CHUNK_KB=1024 (default) | 0: stage copies in chunks of this
  // many KiB, so that the host's copy into pinned memory of one chunk overlaps
  // the transfer of the previous one (and a download's copy out overlaps the
  // next chunk's transfer and the call's next product); 0: one copy per region.
  size_t chunk_bytes = size_t(1) << 20;
  // CHARGPT_CUDA_TIMERS=1 (default) | 0: time each lane's stream phases with events.
  bool timers = true;
  bool bf16 = false;  // bf16 products (--precision bf16): not from the environment
};
// Throws std::invalid_argument naming the variable and its value.
DeviceTuning device_tuning_from_env();

// Where the device backend's time went since it was made; the bench takes the
// difference over its timed steps. Sums over all lanes (threads): with several
// lanes their streams overlap, so the phase sums can exceed the wall time.
struct DeviceStats {
  long calls = 0;               // linear_forward/backward calls
  double call_s = 0;            // host time inside those calls (sum over threads)
  double staging_s = 0;         // host time copying into and out of pinned staging (and bf16 conversion)
  double weight_upload_s = 0;   // host time of weight flushes (convert, upload, wait)
  double phase_s[kDevicePhases] = {0, 0, 0};  // stream time in uploads, products, downloads (timers on)
  double bytes_up = 0, bytes_down = 0;        // activations and gradients (weights: weight_bytes_up)
  double weight_bytes_up = 0;
  long cache_hits = 0, cache_misses = 0;      // backward inputs found on the device / uploaded again
  bool timers = false;
};

// The backend over a device. matvec_forward (the KV-cache step) runs on the
// CPU; see the comment at its definition.
std::unique_ptr<Backend> make_device_backend(std::unique_ptr<Device> device, const DeviceTuning& tuning = {});

// The device backend's counters (false, *out untouched, for another backend).
bool device_stats(const Backend& be, DeviceStats* out);
// The device's product-only FLOP rate: `reps` batches of 4 n×n×n products in the
// backend's precision on device-resident operands, best batch (0 for another
// backend). linear_forward's rate includes the host transfers.
double device_product_flops(Backend& be, int n, int reps);

}  // namespace chargpt
