// What the MPI and the one-process builds share. No MPI here.
#include <cstdlib>

#include "dist/dist.h"

namespace chargpt::dist {

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

}  // namespace chargpt::dist
