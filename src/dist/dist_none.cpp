// The build without MPI: one rank, nothing distributed, no MPI dependency.
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

Collective& world() {
  // Under mpirun, the job's size from Open MPI's environment: a job of several
  // ranks fails clearly instead of running R copies that overwrite each other.
  const char* v = std::getenv("OMPI_COMM_WORLD_SIZE");
  const int ranks = v ? std::max(1, std::atoi(v)) : 1;
  if (ranks > 1)
    throw std::runtime_error("this build of chargpt has no MPI (configure with -DCHARGPT_MPI=ON and Open MPI "
                             "installed): it cannot run as " + std::to_string(ranks) + " ranks under mpirun");
  return local_collective();
}

}  // namespace chargpt::dist
