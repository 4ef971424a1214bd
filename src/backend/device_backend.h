#pragma once
// A Backend whose linear products run on an accelerator that has its own
// memory: the CUDA backend's logic with the device as a parameter. It is
// compiled in every build, so that everything but the CUDA calls themselves
// (the row-major mapping, the staging layout, the grow-only buffers, the bias
// and bias-gradient products, the weight-upload schedule, accumulate) runs in
// the tests against an emulated device that does the column-major products on
// the CPU. backend_cuda.cpp supplies the real device (cudart + cuBLAS), in a
// module loaded on first use (backend_cuda_loader.cpp).
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
#include <cstddef>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "backend/cuda_mapping.h"

namespace chargpt {

// One worker thread's queue on the device. Calls run in the order they are
// made; upload/download/sgemm may return before they finish, sync waits.
class DeviceLane {
 public:
  virtual ~DeviceLane() = default;
  virtual float* alloc_device(size_t n) = 0;
  virtual void free_device(float* p) noexcept = 0;
  virtual float* alloc_pinned(size_t n) = 0;  // page-locked host memory
  virtual void free_pinned(float* p) noexcept = 0;
  virtual void upload(float* dev, const float* host, size_t n) = 0;
  virtual void download(float* host, const float* dev, size_t n) = 0;
  // cublasSgemm with the mapped arguments; A, B, C are device pointers of cuBLAS's
  // own operands. allow_tf32 = false: exact fp32 even where the backend allows TF32
  // (the bias broadcast and the bias-gradient sum must not round their inputs).
  virtual void sgemm(const CublasGemmArgs& g, float alpha, const float* A, const float* B, float beta, float* C,
                     bool allow_tf32) = 0;
  virtual void sync() = 0;
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

// The backend over a device. matvec_forward (the KV-cache step) runs on the
// CPU; see the comment at its definition.
std::unique_ptr<Backend> make_device_backend(std::unique_ptr<Device> device);

}  // namespace chargpt
