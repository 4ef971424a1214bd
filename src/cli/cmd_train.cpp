// chargpt train: train a character-level GPT on a UTF-8 text file.
#include <iostream>
#include <string>

#include <cxxopts.hpp>

#include "train/train.h"
#include "cli/cli.h"

namespace chargpt {

namespace {

struct TrainArgs {
  TrainOptions t;
  PresetFlag preset{kDefaultPreset.name, &t.model, &t.batch_size};
  BackendArgs backend;
  bool help = false;

  template <class V>
  void for_each(V&& v) {
    v.group("Model");
    v(preset, "preset", preset_help());
    for_each_shape_option(t, FromPreset<V>{v});
    for_each_shard_option(t, v);
    v.group("Training");
    for_each_train_option(t, v);
    backend.for_each(v);
    v(help, "h,help", "show this help");
  }
  void check() const {
    if (const std::string why = head_split_problem(t.model, "--n-embd", "--n-head"); !why.empty())
      throw UsageError(why);
    if (t.resume && t.force) throw UsageError("--resume and --force cannot be used together");
  }
};

}  // namespace

int cmd_train(int argc, char** argv) {
  cxxopts::Options o("chargpt train",
                     "Train a character-level GPT on a UTF-8 text file. Ctrl-C or SIGTERM saves a checkpoint at the "
                     "end of the current step and exits with 130 or 143 (a second signal quits at once). Outputs are "
                     "checked before step 1: --out, its optimizer state and --log must be regular files or not "
                     "exist, must not be --data, and their directory must be writable; an existing checkpoint or log "
                     "is replaced only with --resume (which continues it) or --force.");
  TrainArgs a;
  if (!parse_args(a, o, argc, argv)) return 0;
  TrainOptions& t = a.t;
  t.backend = a.backend.resolve();
  t.should_stop = [] {
    note_step_ended();
    return stop_signal() != 0;
  };
  check_threads_can_start(t.threads);
  const TrainResult res = train(t, std::cout);
  return res.interrupted ? 128 + stop_signal() : 0;
}

}  // namespace chargpt
