// Where a run's state comes from and goes: the start (fresh or resumed), the
// loss estimates, and the saves.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "base/cpu.h"
#include "base/hash.h"
#include "engine/memory.h"
#include "train/parts.h"

namespace chargpt {

namespace {

// The products of this run on this CPU, and the line saying so when the resumed run's were others
// (a run may change backend: it is allowed, but its bits are no longer an uninterrupted run's).
std::string resume_note(const TrainState& st, const BackendOptions& now) {
  if (st.trained_with.empty()) return "";  // a checkpoint that does not record it
  const std::string with = backend_text(now), on = cpu_description();
  if (st.trained_with != with)
    return "resuming a run trained with " + st.trained_with + " on " + st.trained_on + "; this run uses " + with +
           ": the weights will differ from an uninterrupted run";
  if (st.trained_on != on)
    return "resuming a run trained with " + st.trained_with + " on " + st.trained_on + "; this run uses " + with +
           " on " + on + ": the weights may differ from an uninterrupted run";
  return "";
}

// The optimizer state that pairs with the resumed weights, and the checks that
// the run continues with what it started with. Returns resume_note's line.
std::string load_resume_state(const TrainOptions& opt, const Model& model, const Metadata& wmeta, const Dataset& ds,
                              Engine& e) {
  const TrainState st = load_optimizer_state(opt.out_path, model, wmeta, e.adam_m(), e.adam_v());
  if (st.has_run_identity) {
    const std::string from = "the run saved in '" + opt.out_path + "'";
    if (st.seed != opt.seed)
      throw std::runtime_error("cannot resume with --seed " + std::to_string(opt.seed) + ": " + from +
                               " was started with --seed " + std::to_string(st.seed));
    if (st.batch_size != opt.batch_size)
      throw std::runtime_error("cannot resume with --batch-size " + std::to_string(opt.batch_size) + ": " + from +
                               " was trained with --batch-size " + std::to_string(st.batch_size));
    if (st.data_hash != ds.text_hash || st.data_bytes != ds.text_bytes)
      throw std::runtime_error("cannot resume with --data '" + opt.data_path + "' (" +
                               std::to_string(ds.text_bytes) + " bytes, fingerprint " + hex64(ds.text_hash) +
                               "): " + from + " was trained on '" + st.data_path + "' (" +
                               std::to_string(st.data_bytes) + " bytes, fingerprint " + hex64(st.data_hash) + ")");
  }
  std::memcpy(e.params(), model.params.data(), e.num_params() * sizeof(float));
  e.set_step(st.step);
  e.data_rng().s = st.data_rng;
  return resume_note(st, opt.backend);
}

}  // namespace

RunStart start_run(const TrainOptions& o, Collective& comm) {
  Config cfg = o.model;
  Model resumed;
  Metadata wmeta;
  if (o.resume) {
    if (!std::filesystem::exists(o.out_path))
      throw std::runtime_error("cannot resume: checkpoint '" + o.out_path + "' does not exist");
    resumed = load_model(o.out_path, &wmeta);
    cfg.vocab_size = resumed.cfg.vocab_size;
    if (!(resumed.cfg == cfg))
      throw std::runtime_error("cannot resume: '" + o.out_path + "' has config " + config_to_json(resumed.cfg) +
                               " but the flags ask for " + config_to_json(cfg));
  }
  {
    std::error_code ec;
    const double size = (double)std::filesystem::file_size(o.data_path, ec);
    if (!ec)
      check_memory_need("loading --data '" + o.data_path + "' (" + std::to_string((long long)size) + " bytes)",
                        size * kDatasetBytesPerFileByte, "use a smaller text");
  }
  RunStart run{load_dataset(o.data_path, o.resume ? &resumed.tok : nullptr), nullptr, ""};
  const Dataset& ds = run.ds;
  cfg.vocab_size = ds.tok.size();
  cfg.validate();
  if (ds.val.size() < (size_t)cfg.block_size + 1)
    throw std::runtime_error("data file '" + o.data_path + "' is too small: its validation split has " +
                             std::to_string(ds.val.size()) + " tokens, block_size+1 = " +
                             std::to_string(cfg.block_size + 1) + " needed");
  {
    const int shard = resolve_shard_size(o.shard_size, o.batch_size, cfg.block_size);
    const int pass = resolve_pass_size(o.pass_size, shard, cfg.block_size);
    char what[240];
    std::snprintf(what, sizeof what,
                  "training this model (n_layer %d, n_embd %d, block_size %d, vocabulary %d) with batch %d in shards "
                  "of %d, passes of %d", cfg.n_layer, cfg.n_embd, cfg.block_size, cfg.vocab_size, o.batch_size, shard,
                  pass);
    const double bytes = estimate_train_bytes(cfg, o.batch_size, o.shard_size, o.threads, o.eval_iters, o.pass_size);
    const char* hint = "lower --n-layer, --n-embd, --block-size, --batch-size, --pass-size or --threads";
    check_memory_need(what, bytes, hint);
    check_address_space(what, bytes, o.threads, hint);
  }
  run.engine = std::make_unique<Engine>(
      cfg, EngineOptions{.batch_size = o.batch_size, .shard_size = o.shard_size, .pass_size = o.pass_size,
                    .threads = o.threads, .seed = o.seed},
      o.backend, comm);
  Engine& e = *run.engine;
  if (o.resume) run.resume_note = load_resume_state(o, resumed, wmeta, ds, e);
  else init_params(cfg, e.params(), o.seed);
  e.weights_loaded();
  check_agreement(comm, run_fingerprint(o, e, ds));
  return run;
}

Losses estimate_losses(Engine& e, const Dataset& ds, const TrainOptions& o, int step) {
  return {e.estimate_loss(ds.train, o.eval_iters, o.seed ^ (0x9e3779b97f4a7c15ULL * (step + 1))),
          e.estimate_loss(ds.val, o.eval_iters, o.seed ^ (0xbf58476d1ce4e5b9ULL * (step + 1)))};
}

void Saver::save(Engine& e) {
  if (e.step() == last_saved_step) return;  // e.g. a save-interval step that is also the last one
  // Nothing diverged is saved as the latest: the weights give a finite loss.
  // Every rank holds the same weights and gets the same estimate, so every
  // rank stops alike.
  const double probe = e.estimate_loss(ds.val, 1, opt.seed ^ 0x5bd1e995ULL ^ (uint64_t)e.step());
  if (!std::isfinite(probe)) {
    e.collective().mark_failure_agreed();
    throw std::runtime_error("the weights after step " + std::to_string(e.step()) + " give a non-finite loss (" +
                             std::to_string(probe) + "): the run diverged and they are not saved; " +
                             (last_saved_step >= 0 || opt.resume ? "'" + opt.out_path + "' is left as it was"
                                                                 : "no checkpoint was saved"));
  }
  e.gather_optimizer_state();
  if (e.collective().rank() == 0) {
    const std::pair<const char*, const float*> arrays[] = {{"weight", e.params()}, {"AdamW first moment", e.adam_m()},
                                                           {"AdamW second moment", e.adam_v()}};
    for (const auto& [what, p] : arrays)
      for (size_t i = 0; i < e.num_params(); ++i)
        if (!std::isfinite(p[i]))
          throw std::runtime_error("step " + std::to_string(e.step()) + " left a non-finite " + what + " (index " +
                                   std::to_string(i) + "): the run diverged and it is not saved; '" + opt.out_path +
                                   "' is left as it was");
    TrainState st;
    st.step = e.step();
    st.data_rng = e.data_rng().s;
    st.has_run_identity = true;
    st.seed = opt.seed;
    st.batch_size = opt.batch_size;
    st.data_hash = ds.text_hash;
    st.data_bytes = ds.text_bytes;
    st.data_path = opt.data_path;
    st.trained_with = backend_text(opt.backend);
    st.trained_on = cpu_description();
    try {
      save_training_checkpoint(opt.out_path, e.cfg(), ds.tok, e.params(), e.adam_m(), e.adam_v(), st);
    } catch (const std::exception& ex) {
      throw std::runtime_error("saving step " + std::to_string(e.step()) + " failed: " + ex.what() +
                               "; the checkpoint on disk, if any, is left as it was");
    }
  }
  last_saved_step = e.step();
}

std::string Saver::on_disk() const {
  if (last_saved_step >= 0)
    return "the last checkpoint, '" + opt.out_path + "' (step " + std::to_string(last_saved_step) + "), is intact";
  return opt.resume ? "'" + opt.out_path + "' is left as it was" : "no checkpoint was saved";
}

}  // namespace chargpt
