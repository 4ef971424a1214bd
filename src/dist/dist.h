#pragma once
// Several processes training one model: `mpirun -np R chargpt train ...`,
// bit-identical to one process. The step itself is the engine's (engine.h
// describes it); this folder is only its transport: the MPI group of the
// job's ranks as a Collective (engine/collective.h), and the MPI session.
//
// This header is the same with and without MPI. Built with CHARGPT_MPI
// (dist_mpi.cpp) the functions below talk to Open MPI; built without it
// (dist_none.cpp) there is one rank and nothing is ever distributed.
// Only dist_mpi.cpp includes <mpi.h>.
#include <string>

#include "engine/collective.h"

namespace chargpt::dist {

// True when this build has MPI (CMake option CHARGPT_MPI).
bool compiled_in();
// One line for `chargpt info`: "mpi: Open MPI v4.1.4 (compiled in)" or "mpi: not compiled in".
std::string mpi_info();

// MPI_Init_thread (funneled: only the main thread calls MPI) when this process
// was launched by mpirun (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE set) and
// MPI is compiled in; MPI_Finalize when it goes out of scope. Create it in main,
// after any re-exec and before anything else.
class Session {
 public:
  Session(int* argc, char*** argv);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  // main calls this after printing an error, before returning. An error that
  // every rank raised together (Collective::mark_failure_agreed) ends normally,
  // each rank with its message; any other error on one rank ends the whole job
  // (MPI_Abort), so no rank is left waiting for it.
  void failed(int exit_code);
};

// Launched by mpirun (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE set). Then stdout is
// Open MPI's pipe or pseudo-terminal, not the user's terminal, and mpirun turns
// Ctrl-C into SIGTERM for every rank (SIGKILL odls_base_sigkill_timeout = 1 s later).
bool launched_by_mpirun();

// Every process of this job: the MPI group of all ranks under mpirun (with
// MPI compiled in), else this process alone (local_collective()). A build
// without MPI launched by mpirun as several ranks throws: it would run R
// copies of one job.
Collective& world();

}  // namespace chargpt::dist
