// Ping-pong between ranks 0 and 1: half the round-trip time per message size,
// for the alpha-beta model of the README's "Several machines" section.
//   mpirun -np 2 [--mca btl self,tcp] build/chargpt_mpi_pingpong
// Prints one line per size: bytes, microseconds (median of 3 batches), GB/s.
#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size != 2) {
    if (rank == 0) std::fprintf(stderr, "mpi_pingpong: run with exactly 2 ranks\n");
    MPI_Finalize();
    return 2;
  }
  std::vector<char> buf(16 << 20, 1);
  if (rank == 0) std::printf("bytes,half_round_trip_us,GB_per_s\n");
  for (size_t n : {(size_t)8, (size_t)1024, (size_t)65536, (size_t)1 << 20, (size_t)16 << 20}) {
    const int reps = n <= 1024 ? 1000 : n <= 65536 ? 100 : n <= (1 << 20) ? 20 : 3;
    std::vector<double> t;
    for (int batch = 0; batch < 4; ++batch) {
      MPI_Barrier(MPI_COMM_WORLD);
      const double t0 = MPI_Wtime();
      for (int i = 0; i < reps; ++i) {
        if (rank == 0) {
          MPI_Send(buf.data(), (int)n, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
          MPI_Recv(buf.data(), (int)n, MPI_BYTE, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
          MPI_Recv(buf.data(), (int)n, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
          MPI_Send(buf.data(), (int)n, MPI_BYTE, 0, 0, MPI_COMM_WORLD);
        }
      }
      if (batch > 0) t.push_back((MPI_Wtime() - t0) / reps / 2);  // the first batch warms up
    }
    std::sort(t.begin(), t.end());
    const double s = t[t.size() / 2];
    if (rank == 0) std::printf("%zu,%.2f,%.3f\n", n, s * 1e6, n / s / 1e9);
  }
  MPI_Finalize();
  return 0;
}
