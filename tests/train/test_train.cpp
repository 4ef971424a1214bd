// The training engine and the CLI around it: determinism across thread
// counts, exact resume, exact evaluation, Ctrl-C, non-finite stops, bad flags.
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <chrono>
#include <cmath>
#include <iostream>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "io/checkpoint.h"
#include "train/train.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::bytes_of;
using chargpt::test::run_cli;
namespace fs = std::filesystem;

extern char** environ;

namespace {

// The made-up corpus, written once per process into a directory removed at exit.
std::string corpus_file() {
  static const test::TempDir dir("train_corpus");
  static const std::string path = test::write_corpus(dir);
  return path;
}

TrainOptions tiny_options(const std::string& out) {
  TrainOptions o;
  o.data_path = corpus_file();
  o.out_path = out;
  o.model.n_layer = 2;
  o.model.n_head = 2;
  o.model.n_embd = 32;
  o.model.block_size = 16;
  o.batch_size = 7;  // not divisible by the shard size below
  o.shard_size = 2;
  o.steps = 12;
  o.warmup = 3;
  o.eval_interval = 0;
  o.eval_iters = 2;
  o.quiet = true;
  return o;
}

}  // namespace

TEST_CASE("engine: weights are bit-identical for 1, 2 and 3 threads") {
  const test::TempDir dir("train");
  std::string first;
  for (int threads : {1, 2, 3}) {
    TrainOptions o = tiny_options(dir / ("det" + std::to_string(threads) + ".safetensors"));
    o.threads = threads;
    const TrainResult r = train(o, std::cout);
    CHECK(r.steps == 12);
    const std::string w = bytes_of(o.out_path);
    const std::string s = bytes_of(optim_state_path(o.out_path));
    CAPTURE(threads);
    if (first.empty()) first = w + s;
    else CHECK((w + s) == first);  // every weight and optimizer byte
  }
  // ...and training did something: the weights moved away from the init.
  TrainOptions o = tiny_options(dir / "det_init.safetensors");
  o.steps = 0;
  train(o, std::cout);
  CHECK(bytes_of(o.out_path) != first.substr(0, bytes_of(o.out_path).size()));
}

TEST_CASE("engine: a split run resumed gives the same bits as one run") {
  const test::TempDir dir("train");
  TrainOptions whole = tiny_options(dir / "whole.safetensors");
  whole.steps = 40;
  whole.lr_decay_steps = 40;
  whole.warmup = 5;
  whole.eval_interval = 10;
  whole.threads = 2;
  train(whole, std::cout);

  TrainOptions part = whole;
  part.out_path = dir / "part.safetensors";
  part.steps = 20;
  train(part, std::cout);
  CHECK(bytes_of(part.out_path) != bytes_of(whole.out_path));
  part.steps = 40;
  part.resume = true;
  part.threads = 1;  // a different thread count on resume changes nothing either
  const TrainResult r = train(part, std::cout);
  CHECK(r.steps == 40);
  CHECK(r.steps_this_run == 20);
  CHECK(bytes_of(part.out_path) == bytes_of(whole.out_path));
  CHECK(bytes_of(optim_state_path(part.out_path)) == bytes_of(optim_state_path(whole.out_path)));
}

TEST_CASE("engine: resume refuses mismatched or missing state") {
  const test::TempDir dir("train");
  TrainOptions o = tiny_options(dir / "mm.safetensors");
  o.steps = 2;
  train(o, std::cout);
  TrainOptions other = o;
  other.resume = true;
  other.model.n_embd = 16;
  CHECK_THROWS_WITH_AS(train(other, std::cout), doctest::Contains("has config"), std::runtime_error);
  fs::remove(optim_state_path(o.out_path));
  other.model.n_embd = 32;
  CHECK_THROWS_WITH_AS(train(other, std::cout), doctest::Contains("optimizer state"), std::runtime_error);
}

TEST_CASE("eval: exact split loss counts every target once, for any thread count") {
  const test::TempDir dir("train");
  TrainOptions o = tiny_options(dir / "ev.safetensors");
  o.steps = 5;
  train(o, std::cout);
  const Model m = load_model(o.out_path);
  const Dataset d = load_dataset(corpus_file(), &m.tok);
  const EvalResult a = evaluate_split(test::openblas_backend(), m.cfg, m.params.data(), d.val, 1, 3);
  const EvalResult b = evaluate_split(test::openblas_backend(), m.cfg, m.params.data(), d.val, 3, 3);
  CHECK(a.tokens == d.val.size() - 1);
  CHECK(a.loss == b.loss);  // bit-identical
  // Brute force: one window at a time.
  const int T = m.cfg.block_size;
  Activations acts(m.cfg, 1);
  const ConstParamViews pv = param_views(m.cfg, m.params.data());
  double sum = 0;
  size_t count = 0;
  for (size_t s = 0; s + 1 < d.val.size(); s += T) {
    const int t = (int)std::min<size_t>(T, d.val.size() - 1 - s);
    sum += gpt_forward(test::openblas_backend(), m.cfg, pv, acts, &d.val[s], &d.val[s + 1], 1, t);
    count += t;
  }
  CHECK(count == a.tokens);
  CHECK(a.loss == doctest::Approx(sum / count).epsilon(1e-9));
  CHECK(a.loss > 0.5);
  CHECK(a.loss < std::log(m.cfg.vocab_size));
}

TEST_CASE("cli: bad flags and files give one clear line and a non-zero exit") {
  auto r = run_cli("train --preset huge");
  CHECK(r.status == 2);
  CHECK(r.output.find("--preset 'huge' is not one of: baby, nanogpt") != std::string::npos);
  r = run_cli("train --n-embd 100 --n-head 3");
  CHECK(r.status == 2);
  CHECK(r.output.find("--n-embd 100 must be divisible by --n-head 3") != std::string::npos);
  r = run_cli("train --steps banana");
  CHECK(r.status == 2);
  CHECK(r.output.find("banana") != std::string::npos);
  r = run_cli("train --data /nonexistent/x.txt --steps 1");
  CHECK(r.status == 1);
  CHECK(r.output.find("cannot open '/nonexistent/x.txt'") != std::string::npos);
  r = run_cli("eval --checkpoint /nonexistent/c.safetensors");
  CHECK(r.status == 1);
  CHECK(r.output == "chargpt eval: error: checkpoint '/nonexistent/c.safetensors' does not exist\n");
  r = run_cli("frobnicate");
  CHECK(r.status == 2);
  r = run_cli("train --help");
  CHECK(r.status == 0);
  for (const char* flag : {"--steps", "--lr", "--min-lr", "--warmup", "--lr-decay-steps", "--weight-decay",
                           "--grad-clip", "--eval-interval", "--eval-iters", "--seed", "--threads", "--log",
                           "--save-interval", "--resume", "--preset", "--n-layer", "--batch-size", "(default: 2000)"})
    CHECK_MESSAGE(r.output.find(flag) != std::string::npos, flag);
}

TEST_CASE("cli: a non-finite loss stops training, naming the step, and the last checkpoint stays") {
  const test::TempDir dir("train");
  const std::string out = dir / "nan.safetensors";
  const std::string base = "train --data " + corpus_file() +
                           " --n-layer 1 --n-head 2 --n-embd 16 --block-size 16 --batch-size 4 --warmup 0"
                           " --eval-interval 0 --out " + out;
  REQUIRE(run_cli(base + " --steps 2").status == 0);
  const std::string saved = bytes_of(out);
  // --lr 1e30: the update of step 3 leaves finite but huge weights, whose loss at step 4 is not finite.
  auto r = run_cli(base + " --resume --steps 50 --lr 1e30 --grad-clip 0");
  CAPTURE(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("non-finite loss at step 4") != std::string::npos);
  CHECK(r.output.find("'" + out + "' is left as it was") != std::string::npos);
  CHECK(bytes_of(out) == saved);
  // Saving every step: step 3's weights are checked before they are saved, and are not.
  r = run_cli(base + " --resume --steps 50 --lr 1e30 --grad-clip 0 --save-interval 1");
  CAPTURE(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("the weights after step 3 give a non-finite loss") != std::string::npos);
  CHECK(bytes_of(out) == saved);
  Metadata meta;
  load_model(out, &meta);
  CHECK(meta["step"] == "2");
}

TEST_CASE("cli: Ctrl-C saves at the end of the step and exits with 130") {
  const test::TempDir dir("train");
  const std::string out = dir / "sigint.safetensors";
  const std::string data = corpus_file();
  std::vector<std::string> args = {CHARGPT_BINARY, "train", "--data", data, "--out", out, "--n-layer", "1",
                                   "--n-embd", "32", "--block-size", "16", "--steps", "1000000", "--threads", "1",
                                   "--eval-interval", "0", "--log-interval", "1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child's stdout and stderr go into a pipe: not a terminal, so it prints one
  // plain line per logged step ("step 1/1000000  loss ..."), the sign that training runs.
  int fds[2];
  REQUIRE(pipe(fds) == 0);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
  posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
  posix_spawn_file_actions_addclose(&fa, fds[0]);
  posix_spawn_file_actions_addclose(&fa, fds[1]);
  pid_t pid;
  const int spawned = posix_spawn(&pid, CHARGPT_BINARY, &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(fds[1]);
  REQUIRE(spawned == 0);
  // Read until the first complete step line (or end of output, or a generous
  // deadline for slow sanitizer builds), then interrupt.
  std::string output;
  // 1: read something; 0: nothing within timeout_ms; -1: the child closed its end.
  auto read_some = [&](int timeout_ms) {
    pollfd p{fds[0], POLLIN, 0};
    const int ready = poll(&p, 1, timeout_ms);
    if (ready == 0) return 0;
    if (ready < 0) return -1;
    char buf[4096];
    const ssize_t n = read(fds[0], buf, sizeof buf);
    if (n <= 0) return -1;
    output.append(buf, (size_t)n);
    return 1;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  auto started = [&] {
    const size_t at = output.find("step 1/");
    return at != std::string::npos && output.find('\n', at) != std::string::npos;
  };
  // A quiet second (a slow start under a sanitizer) is no reason to stop waiting.
  while (!started() && std::chrono::steady_clock::now() < deadline && read_some(1000) >= 0) {
  }
  const bool was_training = started();
  kill(pid, SIGINT);
  while (read_some(120000) > 0) {
  }  // drain until the child closes its end, so it never blocks on a full pipe
  close(fds[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  CAPTURE(output);
  REQUIRE(was_training);
  REQUIRE(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 130);
  Metadata meta;
  const Model m = load_model(out, &meta);
  const int step = std::stoi(meta["step"]);
  CHECK(step > 0);
  CHECK(step < 1000000);
  CHECK(fs::exists(optim_state_path(out)));
}
