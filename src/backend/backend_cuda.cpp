// The CUDA device of the CUDA backend (--backend cuda): the device-generic
// backend of backend_device.cpp runs on it, every linear product through
// cublasSgemm. Built only when CMake finds the toolkit with cuBLAS
// (CHARGPT_CUDA=AUTO|ON), as the module libchargpt_cuda.so that
// backend_cuda_loader.cpp loads on demand (cuda_module.h); host code only, no
// kernels: the bias is broadcast and the bias gradient summed by products with
// a vector of ones.
//
// Every CUDA runtime and cuBLAS call is checked; a failure throws with the call
// site (file:line and the call's text) and the library's error name and string.
// Destructors report failures on stderr instead of throwing, and only the first
// of them, and none after a call failed (ReleaseReport): the error the user
// must see is the one that was thrown.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend/cuda_module.h"

namespace chargpt {

namespace {

std::string site(const char* file, int line, const char* call) {
  std::string f = file;
  const size_t src = f.rfind("src/");
  if (src != std::string::npos) f = f.substr(src);
  return f + ":" + std::to_string(line) + ": " + call;
}

ReleaseReport g_release;

void cuda_check(cudaError_t e, const char* file, int line, const char* call) {
  if (e == cudaSuccess) return;
  g_release.call_failed();
  (void)cudaGetLastError();  // reset the runtime's last error (a non-sticky one) for the next call
  throw std::runtime_error("CUDA error at " + site(file, line, call) + ": " + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ")");
}

void cublas_check(cublasStatus_t s, const char* file, int line, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  g_release.call_failed();
  throw std::runtime_error("cuBLAS error at " + site(file, line, call) + ": " + cublasGetStatusName(s) + " (" +
                           cublasGetStatusString(s) + ")");
}

// In destructors: report, never throw.
void cuda_report(cudaError_t e, const char* file, int line, const char* call) {
  if (e != cudaSuccess)
    g_release.report("CUDA error while releasing at " + site(file, line, call) + ": " + cudaGetErrorString(e));
}

#define CUDA_CHECK(call) cuda_check((call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) cublas_check((call), __FILE__, __LINE__, #call)
#define CUDA_REPORT(call) cuda_report((call), __FILE__, __LINE__, #call)

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// One worker thread's stream and cuBLAS handle (a handle is bound to one stream;
// a stream per worker lets the shards' copies and products overlap, and keeps
// cuBLAS's results reproducible: one active stream per handle).
class CudaLane final : public DeviceLane {
 public:
  CudaLane(int device, bool tf32) : tf32_(tf32) {
    CUDA_CHECK(cudaSetDevice(device));  // the calling thread's current device
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      CUBLAS_CHECK(cublasCreate(&handle_));
      CUBLAS_CHECK(cublasSetStream(handle_, stream_));
      // fp32 products stay fp32 unless TF32 was asked for (CUBLAS_DEFAULT_MATH never uses TF32 for sgemm).
      set_math(tf32_);
    } catch (...) {
      release();
      throw;
    }
  }
  ~CudaLane() override { release(); }
  CudaLane(const CudaLane&) = delete;
  CudaLane& operator=(const CudaLane&) = delete;

  float* alloc_device(size_t n) override {
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(float) * n));
    return static_cast<float*>(p);
  }
  void free_device(float* p) noexcept override {
    if (p) CUDA_REPORT(cudaFree(p));
  }
  float* alloc_pinned(size_t n) override {
    void* p = nullptr;
    CUDA_CHECK(cudaMallocHost(&p, sizeof(float) * n));
    return static_cast<float*>(p);
  }
  void free_pinned(float* p) noexcept override {
    if (p) CUDA_REPORT(cudaFreeHost(p));
  }
  void upload(void* dev, const void* host, size_t bytes) override {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void download(void* host, const void* dev, size_t bytes) override {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  void gemm(const CublasGemmArgs& g, float alpha, const void* A, const void* B, float beta, float* C,
            GemmInputs in) override {
    if (in == GemmInputs::bf16) {
      CUBLAS_CHECK(cublasGemmEx(handle_, op(g.trans_a), op(g.trans_b), g.m, g.n, g.k, &alpha, A, CUDA_R_16BF, g.lda, B,
                                CUDA_R_16BF, g.ldb, &beta, C, CUDA_R_32F, g.ldc, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
      return;
    }
    const bool exact = tf32_ && in == GemmInputs::fp32_exact;
    if (exact) set_math(false);
    CUBLAS_CHECK(cublasSgemm(handle_, op(g.trans_a), op(g.trans_b), g.m, g.n, g.k, &alpha, static_cast<const float*>(A),
                             g.lda, static_cast<const float*>(B), g.ldb, &beta, C, g.ldc));
    if (exact) set_math(true);
  }
  void sync() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  void record(int slot) override {
    while ((int)sync_events_.size() <= slot) sync_events_.push_back(new_event(cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(sync_events_[slot], stream_));
  }
  void wait(int slot) override { CUDA_CHECK(cudaEventSynchronize(sync_events_.at(slot))); }
  void phase(DevicePhase p) override {
    if (marks_ == (int)phase_events_.size()) phase_events_.push_back(new_event(cudaEventDefault)), phases_.push_back(p);
    phases_[marks_] = p;
    CUDA_CHECK(cudaEventRecord(phase_events_[marks_++], stream_));
  }
  void take_times(double* seconds) override {
    for (int i = 0; i + 1 < marks_; ++i) {
      if (phases_[i] == DevicePhase::end) continue;
      float ms = 0;
      CUDA_CHECK(cudaEventElapsedTime(&ms, phase_events_[i], phase_events_[i + 1]));
      seconds[(int)phases_[i]] += 1e-3 * ms;
    }
    marks_ = 0;
  }

 private:
  void set_math(bool tf32) {
    const cublasMath_t want = tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
    CUBLAS_CHECK(cublasSetMathMode(handle_, want));
    cublasMath_t got{};
    CUBLAS_CHECK(cublasGetMathMode(handle_, &got));
    if (got != want)
      throw std::runtime_error("cuBLAS: the math mode did not take (asked " + std::to_string((int)want) + ", got " +
                               std::to_string((int)got) + ")");
  }
  cudaEvent_t new_event(unsigned flags) {
    cudaEvent_t e = nullptr;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, flags));
    return e;
  }
  void release() noexcept {
    for (cudaEvent_t e : sync_events_) CUDA_REPORT(cudaEventDestroy(e));
    for (cudaEvent_t e : phase_events_) CUDA_REPORT(cudaEventDestroy(e));
    if (handle_ && cublasDestroy(handle_) != CUBLAS_STATUS_SUCCESS)
      g_release.report("cuBLAS error while releasing: cublasDestroy failed");
    if (stream_) CUDA_REPORT(cudaStreamDestroy(stream_));
  }

  bool tf32_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  std::vector<cudaEvent_t> sync_events_, phase_events_;
  std::vector<DevicePhase> phases_;
  int marks_ = 0;
};

class CudaDevice final : public Device {
 public:
  CudaDevice(int device, int count, bool tf32, bool bf16) : device_(device), tf32_(tf32) {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    name_ = std::string("cuda ") + (bf16 ? "bf16 (fp32 accumulation)" : tf32_ ? "fp32 (tf32 allowed)" : "fp32") +
            " on " + prop.name + " (device " + std::to_string(device) + " of " + std::to_string(count) + ")";
  }
  std::string name() const override { return name_; }
  std::unique_ptr<DeviceLane> make_lane() override { return std::make_unique<CudaLane>(device_, tf32_); }
  float* alloc_device(size_t n) override {
    CUDA_CHECK(cudaSetDevice(device_));
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, sizeof(float) * n));
    return static_cast<float*>(p);
  }
  void free_device(float* p) noexcept override {
    if (p) CUDA_REPORT(cudaFree(p));
  }

 private:
  int device_;
  bool tf32_;
  std::string name_;
};

int runtime_version() {
  int v = 0;
  return cudaRuntimeGetVersion(&v) == cudaSuccess ? v : 0;
}
int driver_version() {  // 0: no driver installed
  int v = 0;
  return cudaDriverGetVersion(&v) == cudaSuccess ? v : 0;
}

// The number of devices, or why there are none.
int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    *why = no_device_reason(driver_version(), runtime_version(), cudaGetErrorName(e), cudaGetErrorString(e));
    return 0;
  }
  if (n == 0) *why = no_device_reason(driver_version(), runtime_version(), "", "");
  return n;
}

}  // namespace

}  // namespace chargpt

using namespace chargpt;

extern "C" __attribute__((visibility("default"))) Device* chargpt_cuda_open(bool tf32, bool bf16, std::string* why) {
  const int n = device_count(why);
  if (n == 0) return nullptr;
  const int d = choose_device(n, [](const char* name) { return std::getenv(name); }, nullptr);
  return new CudaDevice(d, n, tf32, bf16);
}

extern "C" __attribute__((visibility("default"))) void chargpt_cuda_info(std::string* out) {
  const int rt = runtime_version(), drv = driver_version();
  const std::string runtime = rt ? cuda_version_string(rt) : std::string("unknown");
  int major = 0, minor = 0, patch = 0;
  std::string cublas = "unknown";
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    cublas = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  std::string s = "cuda: compiled in (runtime " + runtime + ", cuBLAS " + cublas + "); driver: " +
                  (drv ? "CUDA " + cuda_version_string(drv) : std::string("none")) + "; devices: ";
  std::string why;
  const int n = device_count(&why);
  if (n == 0) {
    *out = s + "none (" + why + ")";
    return;
  }
  std::string chose;
  const int use = choose_device(n, [](const char* name) { return std::getenv(name); }, &chose);
  for (int d = 0; d < n; ++d) {
    cudaDeviceProp prop{};
    if (d) s += ", ";
    if (cudaGetDeviceProperties(&prop, d) != cudaSuccess) {
      (void)cudaGetLastError();
      s += std::to_string(d) + ": (properties unavailable)";
      continue;
    }
    char mem[32];
    std::snprintf(mem, sizeof mem, "%.1f GiB", (double)prop.totalGlobalMem / (1024.0 * 1024 * 1024));
    s += std::to_string(d) + ": " + prop.name + " (" + mem + ", sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ")";
  }
  *out = s + "; this process uses device " + std::to_string(use) + " (" + chose + ")";
}
