// chargpt: the command line. Library code throws; only this file decides exit codes:
// 0 success, 1 runtime error (bad file, bad data, non-finite loss), 2 bad usage,
// 128 + signal when train was stopped by SIGINT (130), SIGTERM (143) or SIGHUP (129).
#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "backend/backend.h"
#include "dist/dist.h"
#include "cli/cli.h"

using namespace chargpt;

namespace {

// OpenBLAS starts a thread per core in its constructor, before main (and
// before main re-executes with OPENBLAS_NUM_THREADS=1). Under a process limit
// (prlimit --nproc) it cannot, and raises SIGINT, which would end the process
// with no word of ours. The executable's preinit functions run before any
// shared library's constructor (too early to change the environment, which
// libc sets up after them): catch that SIGINT there, and let main decide.
// A SIGINT from outside in the same window (a Ctrl-C or kill -INT in the first
// milliseconds) is the user's: main then exits as an interrupted run would.
volatile sig_atomic_t g_sigint_before_main = 0;  // raised by this process (OpenBLAS)
volatile sig_atomic_t g_user_sigint_before_main = 0;
void on_sigint_before_main(int, siginfo_t* info, void*) {
  const bool raised_here = info->si_pid == getpid() && (info->si_code == SI_TKILL || info->si_code == SI_USER);
  if (raised_here) g_sigint_before_main = 1;
  else g_user_sigint_before_main = 1;
}
void catch_sigint_before_libraries(int, char**, char**) {
  struct sigaction sa{};
  sa.sa_sigaction = on_sigint_before_main;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
}
[[gnu::section(".preinit_array"), gnu::used]] void (*const preinit_catch_sigint)(int, char**, char**) =
    catch_sigint_before_libraries;

std::atomic<int> g_signals{0};      // SIGINT/SIGTERM/SIGHUP received so far
std::atomic<int> g_stop_signal{0};  // the first of them
std::atomic<int> g_grace_s{60};     // see note_step_ended
const char* g_command = "";

void say(const char* msg) { (void)!write(STDERR_FILENO, msg, std::strlen(msg)); }

void on_grace_expired(int) {
  say("\nno step ended within the grace period after the signal: quitting without saving (the last checkpoint on "
      "disk stands)\n");
  _exit(128 + g_stop_signal.load());
}

void on_stop_signal(int sig) {
  if (g_signals.fetch_add(1) >= 1) _exit(128 + sig);  // the second signal: leave at once
  g_stop_signal.store(sig);
  alarm((unsigned)g_grace_s.load());
  say(sig == SIGINT    ? "\nCtrl-C: finishing this step and saving (Ctrl-C again to quit now)\n"
      : sig == SIGTERM ? "\nSIGTERM: finishing this step and saving (a second signal quits now)\n"
                       : "\nSIGHUP: finishing this step and saving (a second signal quits now)\n");
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
  sigaction(SIGHUP, &sa, nullptr);  // a closed terminal or ssh session: save like the others
  sa.sa_handler = on_grace_expired;
  sigaction(SIGALRM, &sa, nullptr);
}

void note_step_ended() {
  using Clock = std::chrono::steady_clock;
  static Clock::time_point last = Clock::now();
  static double longest = 0;
  const Clock::time_point now = Clock::now();
  longest = std::max(longest, std::chrono::duration<double>(now - last).count());
  last = now;
  g_grace_s.store((int)std::min(3600.0, 60 + 4 * longest));
}

}  // namespace chargpt

int main(int argc, char** argv) {
  signal(SIGINT, SIG_DFL);
  if (g_user_sigint_before_main) return 128 + SIGINT;  // stopped before anything started
  // BLAS settings are read when the library loads: re-execute once with them set
  // (returns only on failure: then carry on as we are). The new process starts
  // OpenBLAS single-threaded, so a limit on threads is met by our own check.
  if (configure_blas_environment()) execv("/proc/self/exe", argv);
  if (g_sigint_before_main) {
    std::fprintf(stderr,
                 "chargpt: error: OpenBLAS could not start its threads (OPENBLAS_NUM_THREADS=%s): a limit on "
                 "processes/threads (ulimit -u, a cgroup's pids.max) is in the way: set OPENBLAS_NUM_THREADS=1 or "
                 "raise the limit\n",
                 std::getenv("OPENBLAS_NUM_THREADS") ? std::getenv("OPENBLAS_NUM_THREADS") : "unset");
    return 1;
  }
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
