// chargpt: the command line. Library code throws; only this file decides exit codes:
// 0 success, 1 runtime error (bad file, bad data, non-finite loss), 2 bad usage,
// 128 + signal when train was stopped by SIGINT (130) or SIGTERM (143) after saving.
#include <atomic>
#include <cctype>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "backend/backend.h"
#include "dist/dist.h"
#include "cli/cli.h"

using namespace chargpt;

namespace {

std::atomic<int> g_signals{0};      // SIGINT/SIGTERM received so far
std::atomic<int> g_stop_signal{0};  // the first of them
const char* g_command = "";

void on_stop_signal(int sig) {
  if (g_signals.fetch_add(1) >= 1) _exit(128 + sig);  // the second signal: leave at once
  g_stop_signal.store(sig);
  static const char int_msg[] = "\nCtrl-C: finishing this step and saving (Ctrl-C again to quit now)\n";
  static const char term_msg[] = "\nSIGTERM: finishing this step and saving (a second signal quits now)\n";
  if (sig == SIGINT) (void)!write(STDERR_FILENO, int_msg, sizeof int_msg - 1);
  else (void)!write(STDERR_FILENO, term_msg, sizeof term_msg - 1);
}

// An exception that escapes a thread of oneTBB's (pthread_create failing in a
// worker that starts more workers, under a pids or memory limit) ends in
// std::terminate: one line and exit 1 instead of an abort.
[[noreturn]] void on_terminate() {
  std::string what = "an unexpected fatal error";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
    }
  }
  std::fprintf(stderr, "chargpt %s: error: %s%s\n", g_command, what.c_str(),
               what.find("pthread_create") != std::string::npos
                   ? " (a limit on processes/threads or memory is in the way: lower --threads or raise the limit)"
                   : "");
  _exit(1);
}

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: chargpt <command> [options]   (chargpt <command> --help for its options)\n\n"
               "commands:\n"
               "  train    train a character-level GPT (default: Tiny Shakespeare, baby preset)\n"
               "  sample   generate text from a checkpoint (KV cache)\n"
               "  eval     exact loss of a checkpoint over a data split\n"
               "  bench    time training steps over a sweep of thread counts\n"
               "  info     the build (version, compiler, oneTBB, BLAS, backends, MPI), the CPU's ISA and the GPUs\n"
               "           (also: chargpt --version)\n");
}

}  // namespace

namespace chargpt {

int stop_signal() { return g_stop_signal.load(); }

void install_stop_handlers() {
  struct sigaction sa{};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

}  // namespace chargpt

int main(int argc, char** argv) {
  // BLAS settings are read when the library loads: re-execute once with them set
  // (returns only on failure: then carry on as we are).
  if (configure_blas_environment()) execv("/proc/self/exe", argv);
  std::set_terminate(on_terminate);
  dist::Session mpi(&argc, &argv);  // MPI_Init under mpirun (dist.h); a no-op otherwise
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  g_command = argv[1];
  try {
    if (cmd == "train") {
      install_stop_handlers();
      return cmd_train(argc - 1, argv + 1);
    }
    if (cmd == "eval") return cmd_eval(argc - 1, argv + 1);
    if (cmd == "sample") return cmd_sample(argc - 1, argv + 1);
    if (cmd == "bench") return cmd_bench(argc - 1, argv + 1);
    if (cmd == "info" || cmd == "--version") return cmd_info(argc - 1, argv + 1);
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      usage(stdout);
      return 0;
    }
    std::fprintf(stderr, "chargpt: unknown command '%s'\n", cmd.c_str());
    usage(stderr);
    return 2;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "chargpt %s: %s (see chargpt %s --help)\n", cmd.c_str(), e.what(), cmd.c_str());
    mpi.failed(2);  // under mpirun: a failure of this rank alone ends the whole job
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chargpt %s: error: %s\n", cmd.c_str(), e.what());
    mpi.failed(1);
    return 1;
  }
}
