// chargpt: the command line. Library code throws; only this file decides exit codes:
// 0 success, 1 runtime error (bad file, bad data, non-finite loss), 2 bad usage,
// 130 interrupted by Ctrl-C (after saving).
#include <cctype>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include <cxxopts.hpp>

#include "chargpt/backend.h"
#include "chargpt/checkpoint.h"
#include "chargpt/cli.h"
#include "chargpt/data.h"
#include "chargpt/dist.h"
#include "chargpt/train.h"

using namespace chargpt;

namespace {

void on_sigint(int) {
  if (g_interrupts.fetch_add(1) >= 1) _exit(130);  // second Ctrl-C: leave at once
  static const char msg[] = "\nCtrl-C: finishing this step and saving (Ctrl-C again to quit now)\n";
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
}

int cmd_train(int argc, char** argv) {
  cxxopts::Options o("chargpt train", "Train a character-level GPT on a UTF-8 text file.");
  TrainOptions d;  // defaults
  // A default as --help shows it; %g reads back as the same float.
  auto num = [](double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", x);
    return std::string(buf);
  };
  add_model_options(o);
  o.add_options("Training")
      ("data", "training text (UTF-8)", cxxopts::value<std::string>()->default_value(d.data_path))
      ("out", "checkpoint to write (safetensors; optimizer state beside it as *.optim.safetensors)",
       cxxopts::value<std::string>()->default_value(d.out_path))
      ("steps", "total optimizer steps", cxxopts::value<int>()->default_value(std::to_string(d.steps)))
      ("lr", "peak learning rate", cxxopts::value<float>()->default_value(num(d.lr)))
      ("min-lr", "learning rate at the end of the cosine decay", cxxopts::value<float>()->default_value(num(d.min_lr)))
      ("warmup", "linear warmup steps", cxxopts::value<int>()->default_value(std::to_string(d.warmup)))
      ("lr-decay-steps", "length of the cosine schedule (0 = --steps)",
       cxxopts::value<int>()->default_value(std::to_string(d.lr_decay_steps)))
      ("weight-decay", "AdamW decoupled weight decay (2-D weights only)",
       cxxopts::value<float>()->default_value(num(d.adamw.weight_decay)))
      ("beta1", "AdamW beta1", cxxopts::value<float>()->default_value(num(d.adamw.beta1)))
      ("beta2", "AdamW beta2", cxxopts::value<float>()->default_value(num(d.adamw.beta2)))
      ("grad-clip", "clip the global gradient norm to this (0 = off)",
       cxxopts::value<float>()->default_value(num(d.grad_clip)))
      ("eval-interval", "estimate train/val loss every N steps (0 = only at the end)",
       cxxopts::value<int>()->default_value(std::to_string(d.eval_interval)))
      ("eval-iters", "batches per loss estimate", cxxopts::value<int>()->default_value(std::to_string(d.eval_iters)))
      ("save-interval", "also save every N steps (0 = only at the end)",
       cxxopts::value<int>()->default_value(std::to_string(d.save_interval)))
      ("resume", "continue from the checkpoint at --out (weights, optimizer, step, data sampler)")
      ("seed", "random seed (init and data order)", cxxopts::value<uint64_t>()->default_value(std::to_string(d.seed)))
      ("threads", "worker threads (0 = all hardware threads)",
       cxxopts::value<int>()->default_value(std::to_string(d.threads)))
      ("log", "write JSON Lines: one object per logged step and per evaluation", cxxopts::value<std::string>())
      ("log-interval", "steps between log lines", cxxopts::value<int>()->default_value(std::to_string(d.log_interval)))
      ("h,help", "show this help");
  auto r = parse_options(o, argc, argv);
  if (wants_help(o, r)) return 0;
  TrainOptions t;
  read_model_options(r, t.model, t.batch_size, t.shard_size);
  t.data_path = r["data"].as<std::string>();
  t.out_path = r["out"].as<std::string>();
  t.steps = r["steps"].as<int>();
  t.lr = r["lr"].as<float>();
  t.min_lr = r["min-lr"].as<float>();
  t.warmup = r["warmup"].as<int>();
  t.lr_decay_steps = r["lr-decay-steps"].as<int>();
  t.adamw.weight_decay = r["weight-decay"].as<float>();
  t.adamw.beta1 = r["beta1"].as<float>();
  t.adamw.beta2 = r["beta2"].as<float>();
  t.grad_clip = r["grad-clip"].as<float>();
  t.eval_interval = r["eval-interval"].as<int>();
  t.eval_iters = r["eval-iters"].as<int>();
  t.save_interval = r["save-interval"].as<int>();
  t.resume = r.count("resume") > 0;
  t.seed = r["seed"].as<uint64_t>();
  t.threads = r["threads"].as<int>();
  if (r.count("log")) t.log_path = r["log"].as<std::string>();
  t.log_interval = r["log-interval"].as<int>();
  std::signal(SIGINT, on_sigint);
  // mpirun turns Ctrl-C into SIGTERM for every rank (dist.h): stop at the end of the step the same way.
  if (dist::launched_by_mpirun()) std::signal(SIGTERM, on_sigint);
  TrainResult res = train(t, std::cout);
  return res.interrupted ? 130 : 0;
}

int cmd_eval(int argc, char** argv) {
  cxxopts::Options o("chargpt eval",
                     "Exact mean loss of a checkpoint over a whole data split: windows of block_size at 0, T, "
                     "2T, ... so each target is counted once.");
  o.add_options()
      ("checkpoint", "model to evaluate", cxxopts::value<std::string>()->default_value(TrainOptions{}.out_path))
      ("data", "text file (split 90/10 as in training)", cxxopts::value<std::string>()->default_value(TrainOptions{}.data_path))
      ("split", "val or train", cxxopts::value<std::string>()->default_value("val"))
      ("threads", "worker threads (0 = all)", cxxopts::value<int>()->default_value("0"))
      ("json", "print one JSON object")
      ("h,help", "show this help");
  auto r = parse_options(o, argc, argv);
  if (wants_help(o, r)) return 0;
  const std::string split = r["split"].as<std::string>();
  if (split != "val" && split != "train") throw UsageError("--split '" + split + "' must be val or train");
  const int threads = r["threads"].as<int>();
  if (threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(threads));
  const std::string ckpt = r["checkpoint"].as<std::string>();
  Model m = load_model(ckpt);
  Dataset ds = load_dataset(r["data"].as<std::string>(), &m.tok);
  // Under mpirun the windows are split across the ranks; rank 0 prints.
  EvalResult e = dist::evaluate_split(m.cfg, m.params.data(), split == "val" ? ds.val : ds.train, threads);
  if (!dist::is_root()) return 0;
  if (r.count("json")) {
    std::cout << nlohmann::json{{"checkpoint", ckpt}, {"split", split}, {"loss", e.loss}, {"tokens", e.tokens}}.dump()
              << "\n";
  } else {
    std::printf("%s loss %.4f over %zu tokens (%s)\n", split.c_str(), e.loss, e.tokens, ckpt.c_str());
  }
  return 0;
}

void usage(std::FILE* f) {
  std::fprintf(f,
               "usage: chargpt <command> [options]   (chargpt <command> --help for its options)\n\n"
               "commands:\n"
               "  train    train a character-level GPT (default: Tiny Shakespeare, baby preset)\n"
               "  sample   generate text from a checkpoint (KV cache)\n"
               "  eval     exact loss of a checkpoint over a data split\n"
               "  bench    time training steps over a sweep of thread counts\n");
}

}  // namespace

int main(int argc, char** argv) {
  // BLAS settings are read when the library loads: re-execute once with them set
  // (returns only on failure: then carry on as we are).
  if (configure_blas_environment()) execv("/proc/self/exe", argv);
  dist::Session mpi(&argc, &argv);  // MPI_Init under mpirun (dist.h); a no-op otherwise
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "train") return cmd_train(argc - 1, argv + 1);
    if (cmd == "eval") return cmd_eval(argc - 1, argv + 1);
    if (cmd == "sample") return cmd_sample(argc - 1, argv + 1);
    if (cmd == "bench") return cmd_bench(argc - 1, argv + 1);
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
