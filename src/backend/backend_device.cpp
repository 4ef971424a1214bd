// The device-generic backend (device_backend.h). No CUDA here: backend_cuda.cpp
// supplies the device; device_plan.cpp the pure parts (mapping, staging, schedule).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <tbb/enumerable_thread_specific.h>

#include "backend/cuda_mapping.h"
#include "backend/device_backend.h"
#include "backend/device_lane.h"
#include "base/hash.h"
#include "ops/ops.h"

namespace chargpt {

namespace {

using namespace device_detail;
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

class DeviceBackend final : public Backend {
 public:
  DeviceBackend(std::unique_ptr<Device> device, const DeviceTuning& t) : device_(std::move(device)), tune_(t) {}
  ~DeviceBackend() override {
    lanes_.clear();  // the lanes' buffers before the device
    if (weights_) device_->free_device(weights_);
    if (weights16_) device_->free_device(weights16_);
  }

  std::string name() const override { return device_->name(); }
  bool wants_bf16_inputs() const override { return tune_.bf16; }
  bool splits_products() const override { return false; }  // every call is a transfer

  void bind_weights(const WeightTable& table) override {
    std::lock_guard<std::mutex> g(flush_mu_);
    if (weights_) device_->free_device(weights_);
    if (weights16_) device_->free_device(weights16_);
    weights_ = weights16_ = nullptr;
    table_ = table;
    params_ = table.block;
    const size_t n = n_ = table.floats;
    weights_ = n ? device_->alloc_device(n) : nullptr;
    if (tune_.bf16 && n) {
      weights16_ = device_->alloc_device(bf16_floats(n));
      host16_.assign(n, 0);
    }
    uploads_.bind(n);  // everything to be uploaded before the first product
  }

  // Marks only; the upload is lazy (before the first product that reads the
  // weights). Uploading here instead would make one small copy and one wait per
  // AdamW chunk from every optimizer thread at once; marking costs a lock and a
  // push, and the next product uploads the whole block in one copy.
  void weights_changed(size_t begin, size_t end) override { uploads_.mark(begin, end); }

  void linear_forward(float* out, LinearInput in, Weight weight, Weight bias, int R, int IC, int OC) override {
    forward(out, in.f32, in.bf16, weight, bias, R, IC, OC);
  }
  void linear_backward(float* dinp, float* dweight, float* dbias, const float* dout, LinearInput in, Weight weight,
                       int R, int IC, int OC, bool accumulate) override {
    backward(dinp, dweight, dbias, dout, in.f32, in.bf16, weight, R, IC, OC, accumulate);
  }

  // The KV-cache step runs on the CPU, on the host weights (always current: the
  // host block is the truth). It is one memory-bound matrix-vector product per
  // layer and token, split over threads in row ranges; on the GPU every range
  // would be a round trip (upload x, product, download, wait) costing more than
  // the product, and cuBLAS does not promise that a row's result is the same
  // whatever range it is computed in, which this call's contract requires.
  // The sampler's prefill (gpt_forward) does run on the device.
  void matvec_forward(float* out, Weight weight, Weight bias, const float* x, int IC, int row0, int row1) override {
    matvec_rows(out, weight.data, bias.data, x, IC, row0, row1);
  }

  // The product-only rate (device_product_flops): linear_forward's includes the transfers.
  double product_flops(int n, int reps) {
    LaneState& L = begin_call();
    const size_t nn = (size_t)n * n;
    L.reserve(2 * nn, nn);
    std::fill(L.h_in.p, L.h_in.p + 2 * nn, 0.5f);  // bf16 reads the first half: 0x3f00 0x0000 pairs, finite
    L.lane->upload(L.d_in.p, L.h_in.p, sizeof(float) * 2 * nn);
    L.lane->sync();
    double best = 1e300;
    for (int rep = 0; rep <= std::max(reps, 1); ++rep) {  // the first batch warms up
      const auto t0 = Clock::now();
      for (int i = 0; i < 4; ++i)
        L.gemm(false, false, n, n, n, L.d_in.p, n, L.d_in.p + nn, n, 0.f, L.d_out.p, n, main_inputs(), false);
      L.lane->sync();
      if (rep > 0) best = std::min(best, seconds_since(t0));
    }
    return 4 * 2.0 * n * (double)n * n / best;
  }

  DeviceStats stats() const {
    DeviceStats s;
    for (const LaneState& L : lanes_) {
      s.calls += L.n.calls, s.call_s += L.n.call_s, s.staging_s += L.n.staging_s;
      for (int i = 0; i < kDevicePhases; ++i) s.phase_s[i] += L.n.phase_s[i];
      s.bytes_up += L.n.bytes_up, s.bytes_down += L.n.bytes_down;
      s.cache_hits += L.n.cache_hits, s.cache_misses += L.n.cache_misses;
    }
    std::lock_guard<std::mutex> g(flush_mu_);
    s.weight_upload_s = weight_upload_s_;
    s.weight_bytes_up = weight_bytes_up_;
    s.timers = tune_.timers;
    return s;
  }

 private:
  GemmInputs main_inputs() const { return tune_.bf16 ? GemmInputs::bf16 : GemmInputs::fp32; }
  size_t elem_bytes() const { return tune_.bf16 ? 2 : 4; }

  void forward(float* out, const float* inp, const uint16_t* inp16, Weight weight, Weight bias, int R, int IC,
               int OC) {
    if (R <= 0) return;
    const auto t0 = Clock::now();
    LaneState& L = begin_call();
    sync_weights(L);
    const void* w = device_weight(weight, (size_t)OC * IC);
    const float* b = bias.data ? device_bias(bias, OC) : nullptr;
    const StagingPlan p = StagingPlan::forward(R, IC, OC, b != nullptr);
    const float* ones = b ? L.ones(p.ones) : nullptr;
    L.reserve(p.in_floats, p.out_floats);
    const size_t n_in = (size_t)R * IC;
    float* d_x = L.d_in.p + p.inp;
    if (tune_.input_cache != DeviceTuning::InputCache::off) d_x = cache_put(L, inp, R, IC);
    stage_in(L, d_x, L.h_in.p + p.inp, inp, inp16, n_in);
    float* d_out = L.d_out.p + p.out;
    // out = ones[R,1]·bias[1,OC] (exact: one term), then += inp·weightᵀ, as the
    // CPU path does with a copy of the bias and beta = 1.
    if (b) L.gemm(false, false, R, OC, 1, ones, 1, b, OC, 0.f, d_out, OC, GemmInputs::fp32_exact, tune_.timers);
    L.gemm(false, true, R, OC, IC, d_x, IC, w, IC, b ? 1.f : 0.f, d_out, OC, main_inputs(), tune_.timers);
    issue_down(L, out, L.h_out.p + p.out, d_out, (size_t)R * OC, false);
    finish(L);
    end_call(L, t0);
  }

  void backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                const uint16_t* inp16, Weight weight, int R, int IC, int OC, bool accumulate) {
    if (!dweight) dbias = nullptr;  // dinp only
    if (R <= 0) {
      if (!accumulate && dweight) {
        std::memset(dweight, 0, sizeof(float) * OC * IC);
        if (dbias) std::memset(dbias, 0, sizeof(float) * OC);
      }
      return;
    }
    const auto t0 = Clock::now();
    LaneState& L = begin_call();
    const bool bias_on_device = dbias && !tune_.bf16;
    const StagingPlan p = StagingPlan::backward(R, IC, OC, dinp != nullptr, bias_on_device);
    const void* w = nullptr;
    if (dinp) {
      sync_weights(L);
      w = device_weight(weight, (size_t)OC * IC);
    }
    const float* ones = bias_on_device ? L.ones(p.ones) : nullptr;
    L.reserve(p.in_floats, p.out_floats);
    const float* d_dout = L.d_in.p + p.dout;
    stage_in(L, L.d_in.p + p.dout, L.h_in.p + p.dout, dout, nullptr, (size_t)R * OC);
    // dinp[R,IC] = dout[R,OC]·weight[OC,IC]: queued before inp is staged, so that
    // the host's staging of inp overlaps the product.
    if (dinp) {
      L.gemm(false, false, R, IC, OC, d_dout, OC, w, IC, 0.f, L.d_out.p + p.dinp, IC, main_inputs(), tune_.timers);
      issue_down(L, dinp, L.h_out.p + p.dinp, L.d_out.p + p.dinp, (size_t)R * IC, false);
    }
    if (!dweight) {
      finish(L);
      end_call(L, t0);
      return;
    }
    const float* d_x = tune_.input_cache != DeviceTuning::InputCache::off ? cache_find(L, inp, R, IC) : nullptr;
    if (d_x) {
      ++L.n.cache_hits;
    } else {
      if (tune_.input_cache != DeviceTuning::InputCache::off) ++L.n.cache_misses;
      stage_in(L, L.d_in.p + p.inp, L.h_in.p + p.inp, inp, inp16, (size_t)R * IC);
      d_x = L.d_in.p + p.inp;
    }
    // dweight[OC,IC] = doutᵀ·inp
    L.gemm(true, false, OC, IC, R, d_dout, OC, d_x, IC, 0.f, L.d_out.p + p.dweight, IC, main_inputs(), tune_.timers);
    // dbias[1,OC] = ones[1,R]·dout[R,OC]
    if (bias_on_device)
      L.gemm(false, false, 1, OC, R, ones, R, d_dout, OC, 0.f, L.d_out.p + p.dbias, OC, GemmInputs::fp32_exact,
             tune_.timers);
    issue_down(L, dweight, L.h_out.p + p.dweight, L.d_out.p + p.dweight, (size_t)OC * IC, accumulate);
    if (bias_on_device) issue_down(L, dbias, L.h_out.p + p.dbias, L.d_out.p + p.dbias, OC, accumulate);
    if (dbias && !bias_on_device) host_dbias(dbias, dout, R, OC, accumulate);  // while the downloads run
    finish(L);
    end_call(L, t0);
  }

  LaneState& begin_call() {
    LaneState& L = lanes_.local();
    if (!L.lane) L.lane = device_->make_lane();
    L.down.clear();
    L.slots = 0;
    L.phase_open = false;
    return L;
  }
  void end_call(LaneState& L, Clock::time_point t0) {
    ++L.n.calls;
    L.n.call_s += seconds_since(t0);
  }

  size_t chunk_floats(size_t n) const { return tune_.chunk_bytes ? std::max<size_t>(tune_.chunk_bytes / 4, 1) : n; }

  // n values from the host (src fp32, or src16 already bf16) to the device at
  // dev, through pinned staging at pinned, in the backend's precision (bf16:
  // converted while staging; the values take the first half of the floats).
  // Chunked: the host's copy of chunk k+1 overlaps the transfer of chunk k.
  void stage_in(LaneState& L, float* dev, float* pinned, const float* src, const uint16_t* src16, size_t n) {
    if (n == 0) return;
    L.phase(DevicePhase::upload, tune_.timers);
    const size_t chunk = chunk_floats(n), eb = tune_.bf16 ? 2 : 4;
    auto* pin = reinterpret_cast<unsigned char*>(pinned);
    auto* d = reinterpret_cast<unsigned char*>(dev);
    for (size_t o = 0; o < n; o += chunk) {
      const size_t m = std::min(chunk, n - o);
      const auto t0 = Clock::now();
      if (!tune_.bf16) std::memcpy(pinned + o, src + o, sizeof(float) * m);
      else if (src16) std::memcpy(pin + 2 * o, src16 + o, 2 * m);
      else to_bf16(reinterpret_cast<uint16_t*>(pin) + o, src + o, m);
      L.n.staging_s += seconds_since(t0);
      L.lane->upload(d + eb * o, pin + eb * o, eb * m);
    }
    L.n.bytes_up += (double)eb * n;
  }

  // n floats from the device at dev to dst (= or +=) through pinned, queued;
  // finish() waits for them and copies them out, chunk by chunk when chunked.
  void issue_down(LaneState& L, float* dst, float* pinned, const float* dev, size_t n, bool accumulate) {
    if (n == 0) return;
    L.phase(DevicePhase::download, tune_.timers);
    const size_t chunk = chunk_floats(n);
    const bool chunked = tune_.chunk_bytes != 0;
    L.down.push_back({dst, pinned, n, accumulate, L.slots});
    for (size_t o = 0; o < n; o += chunk) {
      L.lane->download(pinned + o, dev + o, sizeof(float) * std::min(chunk, n - o));
      if (chunked) L.lane->record(L.slots++);
    }
    L.n.bytes_down += sizeof(float) * (double)n;
  }

  // Waits for the call's downloads and copies them out of the pinned buffer.
  void finish(LaneState& L) {
    L.phase(DevicePhase::end, tune_.timers);
    const bool chunked = tune_.chunk_bytes != 0;
    if (!chunked) L.lane->sync();
    for (const OutPiece& d : L.down) {
      const size_t chunk = chunk_floats(d.n);
      int slot = d.slot0;
      for (size_t o = 0; o < d.n; o += chunk) {
        const size_t m = std::min(chunk, d.n - o);
        if (chunked) L.lane->wait(slot++);
        const auto t0 = Clock::now();
        if (d.accumulate) {
          for (size_t i = o; i < o + m; ++i) d.dst[i] += d.pinned[i];
        } else {
          std::memcpy(d.dst + o, d.pinned + o, sizeof(float) * m);
        }
        L.n.staging_s += seconds_since(t0);
      }
    }
    if (chunked) L.lane->sync();
    if (tune_.timers) L.lane->take_times(L.n.phase_s);
    L.down.clear();
  }

  // The device buffer for a forward's input, registered as the latest copy of inp.
  float* cache_put(LaneState& L, const float* inp, int R, int IC) {
    const size_t need = tune_.bf16 ? bf16_floats((size_t)R * IC) : (size_t)R * IC;
    auto it = L.cache.find(inp);
    const size_t have = it == L.cache.end() ? 0 : it->second.buf.cap;
    if (need > have && L.cache_floats - have + need > kCacheCapFloats) {
      L.clear_cache();  // bounded: the model's inputs fit many times; a sampler's many shapes may not
      it = L.cache.end();
    }
    if (it == L.cache.end()) it = L.cache.emplace(inp, CachedInput{}).first;
    CachedInput& c = it->second;
    if (need > c.buf.cap) {
      L.cache_floats -= c.buf.cap;
      L.reserve_device(c.buf, need);
      L.cache_floats += c.buf.cap;
    }
    c.R = R, c.IC = IC;
    c.seq = ++seq_;
    if (tune_.input_cache == DeviceTuning::InputCache::verify) c.hash = hash_floats(inp, (size_t)R * IC);
    std::lock_guard<std::mutex> g(owners_mu_);
    owners_[inp] = {&L, c.seq};
    return c.buf.p;
  }

  // The device copy of a backward's input if this lane's forward of the same
  // shape wrote the latest one (another lane's later forward of the same
  // pointer makes ours stale); null otherwise.
  const float* cache_find(LaneState& L, const float* inp, int R, int IC) {
    const auto it = L.cache.find(inp);
    if (it == L.cache.end() || it->second.R != R || it->second.IC != IC) return nullptr;
    {
      std::lock_guard<std::mutex> g(owners_mu_);
      const auto o = owners_.find(inp);
      if (o == owners_.end() || o->second.first != &L || o->second.second != it->second.seq) return nullptr;
    }
    if (tune_.input_cache == DeviceTuning::InputCache::verify && hash_floats(inp, (size_t)R * IC) != it->second.hash)
      throw std::logic_error(name() + ": input cache: the activation input changed between forward and backward");
    return it->second.buf.p;
  }

  static uint64_t hash_floats(const float* p, size_t n) {
    Fnv64Words h;
    h.update(p, sizeof(float) * n);
    return h.h;
  }

  // The device copy of n floats of a tensor of the bound table, in the products'
  // precision (bf16: the bf16 copy); a bias is read in fp32 (device_bias).
  const void* device_weight(const Weight& w, size_t n) const {
    const size_t at = table_.offset_of(w, n);
    if (tune_.bf16) return reinterpret_cast<const uint16_t*>(weights16_) + at;
    return weights_ + at;
  }
  const float* device_bias(const Weight& w, size_t n) const { return weights_ + table_.offset_of(w, n); }

  // Uploads what was marked since the last upload, before a product reads the
  // weights. The first thread to get here uploads on its own lane and waits for
  // the copy; the others wait on the lock, then find nothing pending. One wait
  // per optimizer step. An upload that throws marks its ranges again (a retry
  // uploads them).
  void sync_weights(LaneState& L) {
    if (!uploads_.pending()) return;
    std::lock_guard<std::mutex> g(flush_mu_);
    const auto t0 = Clock::now();
    const auto ranges = uploads_.begin_flush();
    try {
      for (const auto& [b, e] : ranges) {
        L.lane->upload(weights_ + b, params_ + b, sizeof(float) * (e - b));
        weight_bytes_up_ += sizeof(float) * (double)(e - b);
        if (tune_.bf16) {
          to_bf16(host16_.data() + b, params_ + b, e - b);
          L.lane->upload(reinterpret_cast<uint16_t*>(weights16_) + b, host16_.data() + b, 2 * (e - b));
          weight_bytes_up_ += 2.0 * (e - b);
        }
      }
      if (!ranges.empty()) L.lane->sync();
    } catch (...) {
      uploads_.abort_flush(ranges);
      throw;
    }
    uploads_.end_flush(ranges);
    weight_upload_s_ += seconds_since(t0);
  }

  std::unique_ptr<Device> device_;
  const DeviceTuning tune_;
  WeightTable table_;
  const float* params_ = nullptr;
  size_t n_ = 0;
  float* weights_ = nullptr;    // device copy of params_[0, n_)
  float* weights16_ = nullptr;  // bf16: its bf16 copy (n_ values)
  std::vector<uint16_t> host16_;  // bf16: the host's bf16 of the block, staged for upload
  WeightUploads uploads_;
  mutable std::mutex flush_mu_;
  double weight_upload_s_ = 0, weight_bytes_up_ = 0;  // under flush_mu_
  std::mutex owners_mu_;
  std::unordered_map<const float*, std::pair<const LaneState*, uint64_t>> owners_;  // the latest forward of each input
  std::atomic<uint64_t> seq_{0};
  tbb::enumerable_thread_specific<LaneState> lanes_;
};

}  // namespace

std::unique_ptr<Backend> make_device_backend(std::unique_ptr<Device> device, const DeviceTuning& tuning) {
  if (!device) throw std::invalid_argument("make_device_backend: null device");
  return std::make_unique<DeviceBackend>(std::move(device), tuning);
}

bool device_stats(const Backend& be, DeviceStats* out) {
  const auto* d = dynamic_cast<const DeviceBackend*>(&be);
  if (!d) return false;
  *out = d->stats();
  return true;
}

double device_product_flops(Backend& be, int n, int reps) {
  auto* d = dynamic_cast<DeviceBackend*>(&be);
  return d ? d->product_flops(n, reps) : 0.0;
}

}  // namespace chargpt
