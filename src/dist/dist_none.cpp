// The build without MPI: one rank, nothing distributed. No MPI code or
// dependency; DataParallel is never built (train() builds one only when size() > 1).
#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "dist/dist.h"

namespace chargpt::dist {

bool compiled_in() { return false; }
std::string mpi_info() { return "mpi: not compiled in (configure with -DCHARGPT_MPI=ON and Open MPI installed)"; }

Session::Session(int*, char***) {}
Session::~Session() = default;
void Session::failed(int) {}

namespace {
int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : dflt;
}
}  // namespace

// Under mpirun, the job's rank and size from Open MPI's environment, so that a
// job of several ranks fails clearly (DataParallel) instead of training R copies.
int rank() { return env_int("OMPI_COMM_WORLD_RANK", 0); }
int size() { return std::max(1, env_int("OMPI_COMM_WORLD_SIZE", 1)); }

struct DataParallel::Impl {};
DataParallel::DataParallel(Engine&) {
  throw std::runtime_error("this build of chargpt has no MPI (configure with -DCHARGPT_MPI=ON and Open MPI "
                           "installed): it cannot train as " + std::to_string(size()) + " ranks under mpirun");
}
DataParallel::~DataParallel() = default;
void DataParallel::check_agreement(const std::vector<std::pair<std::string, uint64_t>>&) {}
double DataParallel::train_step(const std::vector<int32_t>&, float, float, const AdamW&, double*) { return 0; }
double DataParallel::estimate_loss(const std::vector<int32_t>&, int, uint64_t) { return 0; }
void DataParallel::gather_optimizer_state() {}
bool DataParallel::agree_stop(bool local_stop) { return local_stop; }
const Partition& DataParallel::partition() const { throw std::logic_error("DataParallel: this build has no MPI"); }
const CommStats& DataParallel::stats() const { throw std::logic_error("DataParallel: this build has no MPI"); }
std::string DataParallel::summary() const { return ""; }

EvalResult evaluate_split(Backend& be, const Config& cfg, const float* params, const std::vector<int32_t>& split,
                          int threads) {
  return chargpt::evaluate_split(be, cfg, params, split, threads);
}

}  // namespace chargpt::dist
