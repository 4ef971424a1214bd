// chargpt eval: exact mean loss of a checkpoint over a whole data split.
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <iostream>
#include <string>

#include <cxxopts.hpp>
#include <nlohmann/json.hpp>

#include "dist/dist.h"
#include "engine/evaluate.h"
#include "io/checkpoint.h"
#include "io/data.h"
#include "train/train.h"
#include "cli/cli.h"

namespace chargpt {

namespace {

struct EvalArgs {
  std::string checkpoint = kDefaultCheckpointPath;
  std::string data = kDefaultDataPath;
  std::string split = "val";
  int threads = 0;
  BackendArgs backend;
  bool json = false, help = false;

  template <class V>
  void for_each(V&& v) {
    v(checkpoint, "checkpoint", "model to evaluate");
    v(data, "data", "text file (split 90/10 as in training)");
    v(split, "split", "val or train");
    v(threads, "threads", kThreadsHelp, kThreadLimits);
    v(json, "json", "print one JSON object");
    backend.for_each(v);
    v(help, "h,help", "show this help");
  }
  void check() const {
    if (split != "val" && split != "train") throw UsageError("--split '" + split + "' must be val or train");
  }
};

}  // namespace

int cmd_eval(int argc, char** argv) {
  cxxopts::Options o("chargpt eval",
                     "Exact mean loss of a checkpoint over a whole data split: windows of block_size at 0, T, "
                     "2T, ... so each target is counted once.");
  EvalArgs a;
  if (!parse_args(a, o, argc, argv)) return 0;
  const BackendOptions bo = a.backend.resolve();
  check_threads_can_start(a.threads);
  Model m = load_model(a.checkpoint);
  if (const std::string note = unverified_note(a.checkpoint, m); !note.empty()) std::fprintf(stderr, "%s\n", note.c_str());
  Dataset ds = load_dataset(a.data, &m.tok);
  const std::unique_ptr<Backend> be = make_bound_backend(bo, m.cfg, m.params.data());
  // Under mpirun the windows are split across the ranks; rank 0 prints.
  Collective& ranks = dist::world();
  const EvalResult e = evaluate_split(*be, m.cfg, m.params.data(), a.split == "val" ? ds.val : ds.train, a.threads,
                                      /*windows_per_task=*/8, ranks);
  if (ranks.rank() != 0) return 0;
  if (!std::isfinite(e.loss))
    throw std::runtime_error("the " + a.split + " loss of '" + a.checkpoint + "' is not finite (" +
                             std::to_string(e.loss) +
                             "): its weights are finite but so large that the model's arithmetic overflows");
  if (a.json) {
    std::cout << nlohmann::json{{"checkpoint", a.checkpoint}, {"split", a.split}, {"loss", e.loss},
                                {"tokens", e.tokens}}.dump()
              << "\n";
  } else {
    std::printf("%s loss %.4f over %zu tokens (%s; products: %s)\n", a.split.c_str(), e.loss, e.tokens,
                a.checkpoint.c_str(), backend_choice_text(bo).c_str());
  }
  return 0;
}

}  // namespace chargpt
