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
// Destructors report failures on stderr instead of throwing.
#include <cstdio>
#include <stdexcept>
#include <string>

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

void cuda_check(cudaError_t e, const char* file, int line, const char* call) {
  if (e == cudaSuccess) return;
  (void)cudaGetLastError();  // reset the runtime's last error (a non-sticky one) for the next call
  throw std::runtime_error("CUDA error at " + site(file, line, call) + ": " + cudaGetErrorName(e) + " (" +
                           cudaGetErrorString(e) + ")");
}

void cublas_check(cublasStatus_t s, const char* file, int line, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  throw std::runtime_error("cuBLAS error at " + site(file, line, call) + ": " + cublasGetStatusName(s) + " (" +
                           cublasGetStatusString(s) + ")");
}

// In destructors: report, never throw.
void cuda_report(cudaError_t e, const char* file, int line, const char* call) {
  if (e != cudaSuccess) std::fprintf(stderr, "CUDA error at %s: %s\n", site(file, line, call).c_str(), cudaGetErrorString(e));
}

#define CUDA_CHECK(call) cuda_check((call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) cublas_check((call), __FILE__, __LINE__, #call)
#define CUDA_REPORT(call) cuda_report((call), __FILE__, __LINE__, #call)

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

// One worker thread's stream and cuBLAS handle (a handle is bound to one stream;
// a stream per worker lets the shards' copies and products overlap).
class CudaLane final : public DeviceLane {
 public:
  CudaLane(int device, bool tf32) : tf32_(tf32) {
    CUDA_CHECK(cudaSetDevice(device));  // the calling thread's current device
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    try {
      CUBLAS_CHECK(cublasCreate(&handle_));
      CUBLAS_CHECK(cublasSetStream(handle_, stream_));
      // fp32 products stay fp32 unless TF32 was asked for (CUBLAS_DEFAULT_MATH never uses TF32 for sgemm).
      CUBLAS_CHECK(cublasSetMathMode(handle_, tf32_ ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    } catch (...) {
      if (handle_) cublasDestroy(handle_);
      CUDA_REPORT(cudaStreamDestroy(stream_));
      throw;
    }
  }
  ~CudaLane() override {
    if (cublasDestroy(handle_) != CUBLAS_STATUS_SUCCESS) std::fprintf(stderr, "cuBLAS error: cublasDestroy failed\n");
    CUDA_REPORT(cudaStreamDestroy(stream_));
  }
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
  void upload(float* dev, const float* host, size_t n) override {
    if (n) CUDA_CHECK(cudaMemcpyAsync(dev, host, sizeof(float) * n, cudaMemcpyHostToDevice, stream_));
  }
  void download(float* host, const float* dev, size_t n) override {
    if (n) CUDA_CHECK(cudaMemcpyAsync(host, dev, sizeof(float) * n, cudaMemcpyDeviceToHost, stream_));
  }
  void sgemm(const CublasGemmArgs& g, float alpha, const float* A, const float* B, float beta, float* C,
             bool allow_tf32) override {
    const bool exact = tf32_ && !allow_tf32;
    if (exact) CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
    CUBLAS_CHECK(cublasSgemm(handle_, op(g.trans_a), op(g.trans_b), g.m, g.n, g.k, &alpha, A, g.lda, B, g.ldb, &beta,
                             C, g.ldc));
    if (exact) CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_TF32_TENSOR_OP_MATH));
  }
  void sync() override { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  bool tf32_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
};

class CudaDevice final : public Device {
 public:
  CudaDevice(int device, bool tf32) : device_(device), tf32_(tf32) {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
    name_ = std::string("cuda fp32") + (tf32_ ? " (tf32 allowed)" : "") + " on " + prop.name;
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

// The number of devices, or why there are none.
int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    *why = cudaGetErrorString(e);
    return 0;
  }
  if (n == 0) *why = "the driver reports 0 devices";
  return n;
}

}  // namespace

}  // namespace chargpt

using namespace chargpt;

extern "C" __attribute__((visibility("default"))) Device* chargpt_cuda_open(bool tf32, std::string* why) {
  if (device_count(why) == 0) return nullptr;
  return new CudaDevice(0, tf32);
}

extern "C" __attribute__((visibility("default"))) void chargpt_cuda_info(std::string* out) {
  int rt = 0;
  std::string runtime = cudaRuntimeGetVersion(&rt) == cudaSuccess
                            ? std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10)
                            : std::string("unknown");
  int major = 0, minor = 0, patch = 0;
  std::string cublas = "unknown";
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    cublas = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  std::string s = "cuda: compiled in (runtime " + runtime + ", cuBLAS " + cublas + "); devices: ";
  std::string why;
  const int n = device_count(&why);
  if (n == 0) {
    *out = s + "none (" + why + ")";
    return;
  }
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
  *out = s;
}
