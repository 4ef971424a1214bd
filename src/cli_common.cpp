// What several subcommands share: the model/batch options and their presets.
#include <iostream>
#include <string>

#include <cxxopts.hpp>

#include "chargpt/cli.h"

namespace chargpt {

namespace {

struct Preset {
  const char* name;
  int n_layer, n_head, n_embd, block_size, batch_size;
};
constexpr Preset kPresets[] = {
    {"baby", 4, 4, 128, 64, 12},     // nanoGPT's "baby GPT" for Shakespeare on a CPU
    {"nanogpt", 6, 6, 384, 256, 64}, // nanoGPT's train_shakespeare_char
};

const Preset& find_preset(const std::string& name) {
  for (const auto& p : kPresets)
    if (name == p.name) return p;
  throw UsageError("--preset '" + name + "' is not one of: baby, nanogpt");
}

}  // namespace

void add_model_options(cxxopts::Options& o) {
  o.add_options("Model")
      ("preset", "model and batch preset: baby (4 layers, 4 heads, 128 wide, block 64, batch 12) or "
                 "nanogpt (6, 6, 384, 256, 64)", cxxopts::value<std::string>()->default_value("baby"))
      ("n-layer", "transformer blocks (default: from the preset)", cxxopts::value<int>())
      ("n-head", "attention heads (default: from the preset)", cxxopts::value<int>())
      ("n-embd", "embedding width (default: from the preset)", cxxopts::value<int>())
      ("block-size", "context length in characters (default: from the preset)", cxxopts::value<int>())
      ("batch-size", "sequences per step (default: from the preset)", cxxopts::value<int>())
      ("shard-size", "sequences per parallel task (0 = auto: >= 128 tokens a shard, at most 16 shards); changes the float "
                     "summation order, so keep it fixed to reproduce a run",
       cxxopts::value<int>()->default_value("0"));
}

// Model shape and batch from --preset plus overrides.
void read_model_options(const cxxopts::ParseResult& r, Config& cfg, int& batch_size, int& shard_size) {
  const Preset& p = find_preset(r["preset"].as<std::string>());
  cfg.n_layer = r.count("n-layer") ? r["n-layer"].as<int>() : p.n_layer;
  cfg.n_head = r.count("n-head") ? r["n-head"].as<int>() : p.n_head;
  cfg.n_embd = r.count("n-embd") ? r["n-embd"].as<int>() : p.n_embd;
  cfg.block_size = r.count("block-size") ? r["block-size"].as<int>() : p.block_size;
  batch_size = r.count("batch-size") ? r["batch-size"].as<int>() : p.batch_size;
  shard_size = r["shard-size"].as<int>();
  auto positive = [](const char* flag, int v) {
    if (v < 1) throw UsageError(std::string("--") + flag + " must be >= 1, got " + std::to_string(v));
  };
  positive("n-layer", cfg.n_layer);
  positive("n-head", cfg.n_head);
  positive("n-embd", cfg.n_embd);
  positive("block-size", cfg.block_size);
  positive("batch-size", batch_size);
  if (cfg.n_embd % cfg.n_head)
    throw UsageError("--n-embd " + std::to_string(cfg.n_embd) + " must be divisible by --n-head " +
                     std::to_string(cfg.n_head));
  if (cfg.block_size > 4096) throw UsageError("--block-size must be <= 4096, got " + std::to_string(cfg.block_size));
  if (shard_size < 0) throw UsageError("--shard-size must be >= 0, got " + std::to_string(shard_size));
}

void add_backend_options(cxxopts::Options& o) {
  o.add_options("Backend")
      ("backend", "where the matrix products run: openblas, onednn or cuda (default: openblas for fp32, onednn "
                  "for bf16)", cxxopts::value<std::string>())
      ("precision", "matrix products in fp32, or bf16 (onednn on AMX: fp32 weights, bf16 product inputs, fp32 "
                    "sums)", cxxopts::value<std::string>()->default_value("fp32"));
}

BackendOptions read_backend_options(const cxxopts::ParseResult& r) {
  BackendOptions b;
  try {
    b.precision = parse_precision(r["precision"].as<std::string>());
    if (r.count("backend")) b.kind = parse_backend(r["backend"].as<std::string>());
    else if (b.precision == Precision::bf16) b.kind = BackendKind::onednn;
  } catch (const std::invalid_argument& e) {
    throw UsageError(std::string("--") + e.what());
  }
  return b;
}

cxxopts::ParseResult parse_options(cxxopts::Options& o, int argc, char** argv) {
  try {
    auto r = o.parse(argc, argv);
    if (!r.unmatched().empty()) throw UsageError("unexpected argument '" + r.unmatched().front() + "'");
    return r;
  } catch (const cxxopts::exceptions::exception& e) {
    throw UsageError(e.what());
  }
}

bool wants_help(cxxopts::Options& o, const cxxopts::ParseResult& r) {
  if (!r.count("help")) return false;
  std::cout << o.help() << std::flush;
  return true;
}

}  // namespace chargpt
