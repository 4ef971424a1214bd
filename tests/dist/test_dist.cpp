// Several processes (dist.h): the partition of shards and chunks over ranks,
// the agreement check,
// the run fingerprint, and, when MPI is compiled in, `mpirun -np 2` and `-np 3`
// runs against one process: the same weight bytes, exact resume across rank
// counts, the same eval, a config mismatch as an error on every rank, and a
// killed rank ending the job.
#include <doctest/doctest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "io/checkpoint.h"
#include "io/train_state.h"
#include "dist/dist.h"
#include "base/hash.h"
#include "base/rng.h"
#include "engine/thread_collective.h"
#include "train/train.h"
#include "support.h"

using namespace chargpt;
using chargpt::test::RunResult;
using chargpt::test::TempDir;
using chargpt::test::run_cli;
namespace fs = std::filesystem;

namespace {

using chargpt::test::bytes_of;
using chargpt::test::run_shell;
using chargpt::test::write_corpus;

// 7 sequences in shards of 2: 4 shards (2, 2, 2, 1), so 3 ranks get 1, 1 and 2.
const std::string kTiny =
    " --n-layer 2 --n-head 2 --n-embd 32 --block-size 16 --batch-size 7 --shard-size 2 --warmup 3 --threads 1"
    " --eval-iters 2 --log-interval 1";

// The command line that starts `mpirun -np N chargpt`. In sanitizer builds the
// ranks run without LeakSanitizer: Open MPI's components are dlopen'd and
// unloaded at MPI_Finalize, so their process-lifetime allocations show up as
// leaks from "<unknown module>" that no suppression can name.
std::string mpirun_chargpt(int np) {
  return "env ASAN_OPTIONS=\"${ASAN_OPTIONS:-}:detect_leaks=0\" " + std::string(CHARGPT_MPIEXEC) +
         " --allow-run-as-root --oversubscribe -np " + std::to_string(np) + " " + CHARGPT_BINARY;
}

// Runs `mpirun -np N chargpt ARGS` (under a timeout: nothing here may hang).
RunResult mpirun_cli(int np, const std::string& args, int timeout_s = 60) {
  return run_shell("timeout -s KILL " + std::to_string(timeout_s) + " " + mpirun_chargpt(np) + " " + args);
}

size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// The log's evaluation lines (exact estimates; the step lines carry timings).
std::string eval_lines(const std::string& path) {
  std::ifstream f(path);
  std::string line, out;
  while (std::getline(f, line))
    if (line.find("\"type\":\"eval\"") != std::string::npos) out += line + "\n";
  return out;
}

// Steps lines without the timing fields.
std::string loss_lines(const std::string& path) {
  std::ifstream f(path);
  std::string line, out;
  while (std::getline(f, line)) {
    if (line.find("\"type\":\"step\"") == std::string::npos) continue;
    const size_t a = line.find("\"grad_norm\""), b = line.find(",\"ms_per_step\"");
    const size_t c = line.find("\"loss\""), d = line.find(",\"lr\"");
    out += line.substr(c, d - c) + " " + line.substr(a, line.find(',', a) - a) + "\n";
    (void)b;
  }
  return out;
}

// False, with the case marked skipped, in a build without MPI ("dist: mpi_info ..." checks that build).
bool mpi_tests_run() {
  if (dist::compiled_in()) return true;
  test::mark_skipped("MPI is not compiled in (configure with -DCHARGPT_MPI=ON and Open MPI installed)");
  return false;
}

}  // namespace

TEST_CASE("dist: the partition's rounds cover the shards in order, and its chunks tile the parameters, for any rank count") {
  Config cfg;
  cfg.n_layer = 2, cfg.n_head = 2, cfg.n_embd = 32, cfg.block_size = 16, cfg.vocab_size = 13;
  Engine e(cfg, {.batch_size = 7, .shard_size = 2, .threads = 1, .seed = 1});
  REQUIRE(e.n_shards() == 4);
  for (int R = 1; R <= 6; ++R)
    for (size_t G : {1, 2, 3}) {
      CAPTURE(R);
      CAPTURE(G);
      const Partition p = make_partition(e.n_shards(), e.chunks(), e.num_params(), R, G);
      CHECK(p.rounds == (4 + R * G - 1) / (R * G));
      size_t next = 0;  // the rounds, rank by rank, list every shard once, in order
      for (size_t k = 0; k < p.rounds; ++k) {
        const Bounds b = p.round(k);
        REQUIRE(b.size() == (size_t)R + 1);
        CHECK(b.front() == next);
        for (int r = 0; r < R; ++r) {
          CHECK(b[r] <= b[r + 1]);
          CHECK(b[r + 1] - b[r] <= G);
        }
        CHECK(b.back() > b.front());  // no empty round
        next = b.back();
      }
      CHECK(next == 4);
      CHECK(p.chunk_begin.front() == 0);
      CHECK(p.chunk_begin.back() == e.n_chunks());
      CHECK(p.float_begin.front() == 0);
      CHECK(p.float_begin.back() == e.num_params());
      for (int r = 0; r < R; ++r) {
        CHECK(p.chunk_begin[r] <= p.chunk_begin[r + 1]);
        if (p.chunk_begin[r] < e.n_chunks()) CHECK(p.float_begin[r] == e.chunks()[p.chunk_begin[r]].begin);
        // balanced by floats: no rank's range exceeds its share by more than the largest chunk (16384)
        CHECK(p.float_begin[r + 1] - p.float_begin[r] <= e.num_params() / R + 16384);
      }
    }
  // 3 ranks over 4 shards, one each per round: {0, 1, 2}, then {3} on rank 0 while ranks 1 and 2 wait.
  const Partition p3 = make_partition(4, e.chunks(), e.num_params(), 3);
  CHECK(p3.round(0) == Bounds{0, 1, 2, 3});
  CHECK(p3.round(1) == Bounds{3, 4, 4, 4});
  // 6 ranks over 4 shards: ranks 4 and 5 compute nothing but own chunks.
  const Partition p6 = make_partition(4, e.chunks(), e.num_params(), 6);
  CHECK(p6.rounds == 1);
  CHECK(p6.round(0) == Bounds{0, 1, 2, 3, 4, 4, 4});
  CHECK(p6.float_begin[5] < p6.float_begin[6]);
}

TEST_CASE("dist: ranks that disagree on a value all stop with the same error naming it, as an agreed failure") {
  using test::ThreadGroup;
  using Items = std::vector<std::pair<std::string, uint64_t>>;
  {
    ThreadGroup g(3);
    const auto errors = test::run_as_ranks(g, [](Collective& comm) {
      check_agreement(comm, {{"--seed", comm.rank() == 2 ? 2u : 1u}, {"the data", 7}});
    });
    for (int r = 0; r < 3; ++r) {
      CAPTURE(r);
      CHECK(errors[r] == "ranks disagree on --seed: rank(s) 2 differ from rank 0; every rank must run the same "
                         "build, flags, data and checkpoint (this is rank " + std::to_string(r) + " of 3)");
      CHECK(g.agreed[r]);
    }
  }
  {
    ThreadGroup g(2);
    const auto errors = test::run_as_ranks(g, [](Collective& comm) {
      check_agreement(comm, comm.rank() == 0 ? Items{{"a", 1}} : Items{{"a", 1}, {"b", 2}});
    });
    for (const auto& e : errors) CHECK(e.starts_with("ranks disagree on the number of run properties to check"));
  }
  {
    ThreadGroup g(3);
    const auto errors = test::run_as_ranks(g, [](Collective& comm) { check_agreement(comm, {{"a", 1}, {"b", 2}}); });
    for (int r = 0; r < 3; ++r) CHECK(errors[r] == "");
    for (int r = 0; r < 3; ++r) CHECK_FALSE(g.agreed[r]);
  }
  // eval: ranks holding different weights are refused before any work is split.
  Config cfg;
  cfg.n_layer = 1, cfg.n_head = 2, cfg.n_embd = 16, cfg.block_size = 8, cfg.vocab_size = 5;
  std::vector<int32_t> split(100);
  for (size_t i = 0; i < split.size(); ++i) split[i] = (int32_t)(i * 7 % 5);
  ThreadGroup g(2);
  const auto errors = test::run_as_ranks(g, [&](Collective& comm) {
    std::vector<float> w(num_params(cfg));
    init_params(cfg, w.data(), comm.rank() == 0 ? 1 : 2);
    evaluate_split(test::openblas_backend(), cfg, w.data(), split, 1, 8, comm);
  });
  for (const auto& e : errors) CHECK(e.starts_with("ranks disagree on the checkpoint's weights: rank(s) 1 differ"));
}

TEST_CASE("dist: the run fingerprint changes with the seed, the data and the weights, not with the threads or paths") {
  TempDir dir("dist_fp");
  const std::string corpus = write_corpus(dir);
  Dataset ds = load_dataset(corpus);
  Config cfg;
  cfg.n_layer = 1, cfg.n_head = 2, cfg.n_embd = 16, cfg.block_size = 16, cfg.vocab_size = ds.tok.size();
  TrainOptions o;
  o.model = cfg;
  o.batch_size = 4;
  Engine e(cfg, {.batch_size = 4, .shard_size = 2, .threads = 1, .seed = o.seed});
  init_params(cfg, e.params(), o.seed);
  const auto base = run_fingerprint(o, e, ds);
  REQUIRE(base.size() >= 8);
  auto differing = [&](const std::vector<std::pair<std::string, uint64_t>>& other) {
    std::string names;
    for (size_t i = 0; i < base.size(); ++i)
      if (base[i].second != other[i].second) names += base[i].first + ";";
    return names;
  };
  TrainOptions o2 = o;
  o2.threads = 7, o2.out_path = "elsewhere.safetensors", o2.log_path = "x.jsonl", o2.quiet = true;
  CHECK(differing(run_fingerprint(o2, e, ds)) == "");
  o2 = o;
  o2.seed = 1338;
  CHECK(differing(run_fingerprint(o2, e, ds)) == "--seed;");
  o2 = o;
  o2.lr = 2e-3f;
  CHECK(differing(run_fingerprint(o2, e, ds)).starts_with("the schedule and optimizer"));
  Dataset ds2 = ds;
  ds2.val.back() = (ds2.val.back() + 1) % ds.tok.size();  // one token of the text
  CHECK(differing(run_fingerprint(o, e, ds2)) == "the training data (hash of the text);");
  e.adam_v()[5] = 1e-3f;  // one optimizer moment
  CHECK(differing(run_fingerprint(o, e, ds)).starts_with("the starting state"));
  // the hash itself: stable, and sensitive to every byte and to the length
  const char text[] = "hello, ranks";
  CHECK(hash_bytes(text, 12) == hash_bytes(text, 12));
  CHECK(hash_bytes(text, 12) != hash_bytes(text, 11));
  CHECK(hash_bytes(text, 12) != hash_bytes("hello, ranKs", 12));
}

TEST_CASE("dist: mpi_info says whether MPI is compiled in") {
  const std::string info = dist::mpi_info();
  CAPTURE(info);
  if (dist::compiled_in()) CHECK(info.find("(compiled in)") != std::string::npos);
  else CHECK(info.find("not compiled in") != std::string::npos);
  CHECK(run_cli("info").output.find(info) != std::string::npos);
  Collective& world = dist::world();  // the test binary is not launched by mpirun: this process alone
  CHECK(world.size() == 1);
  CHECK(world.rank() == 0);
  CHECK(&world == &local_collective());
}

TEST_CASE("mpi: 2, 3 and 5 ranks (more than the 4 shards) write the same weight and optimizer bytes as one process") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_bits");
  const std::string corpus = write_corpus(dir);
  const std::string common = " train --data " + corpus + kTiny + " --steps 20 --eval-interval 10";
  auto one = test::run_cli(common + " --out " + (dir / "r1.safetensors") + " --log " + (dir / "r1.jsonl"));
  REQUIRE_MESSAGE(one.status == 0, one.output);
  for (int np : {2, 3, 5}) {  // 5 ranks over 4 shards: rank 4 only owns chunks
    CAPTURE(np);
    const std::string base = dir / ("r" + std::to_string(np));
    auto r = mpirun_cli(np, common + " --out " + base + ".safetensors --log " + base + ".jsonl");
    CAPTURE(r.output);
    REQUIRE(r.status == 0);
    CHECK(r.output.find("mpi: " + std::to_string(np) + " ranks x 1 threads") != std::string::npos);
    CHECK(count_of(r.output, "done: 20 steps") == 1);  // rank 0 alone reports
    const std::string w1 = bytes_of(dir / "r1.safetensors"), wn = bytes_of(base + ".safetensors");
    CHECK(w1.size() > 20000);
    CHECK(w1 == wn);
    CHECK(bytes_of(dir / "r1.optim.safetensors") == bytes_of(base + ".optim.safetensors"));
    // the losses, gradient norms and the (split) loss estimates, digit for digit
    CHECK(loss_lines(dir / "r1.jsonl") == loss_lines(base + ".jsonl"));
    CHECK(count_of(loss_lines(base + ".jsonl"), "\n") == 20);
    CHECK(eval_lines(dir / "r1.jsonl") == eval_lines(base + ".jsonl"));
    CHECK(count_of(eval_lines(base + ".jsonl"), "\n") == 3);  // steps 0, 10, 20
  }
}

TEST_CASE("mpi: a checkpoint of 2 ranks resumed by 1 and by 3 gives the bits of one uninterrupted run") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_resume");
  const std::string corpus = write_corpus(dir);
  const std::string common = " train --data " + corpus + kTiny + " --eval-interval 0 --lr-decay-steps 20";
  auto one = test::run_cli(common + " --steps 20 --out " + (dir / "ref.safetensors"));
  REQUIRE_MESSAGE(one.status == 0, one.output);
  for (int np_after : {1, 3}) {
    CAPTURE(np_after);
    const std::string out = dir / ("split" + std::to_string(np_after) + ".safetensors");
    auto a = mpirun_cli(2, common + " --steps 10 --out " + out);
    REQUIRE_MESSAGE(a.status == 0, a.output);
    Metadata meta;
    load_model(out, &meta);
    CHECK(meta["step"] == "10");
    auto b = mpirun_cli(np_after, common + " --steps 20 --resume --out " + out);
    REQUIRE_MESSAGE(b.status == 0, b.output);
    CHECK(bytes_of(out) == bytes_of(dir / "ref.safetensors"));
    CHECK(bytes_of(optim_state_path(out)) == bytes_of(dir / "ref.optim.safetensors"));
  }
}

TEST_CASE("mpi: ranks that disagree on a flag or the data stop with one clear error on every rank, not a hang") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_mismatch");
  const std::string corpus = write_corpus(dir), other = write_corpus(dir, 6);
  const std::string bin = CHARGPT_BINARY;
  const std::string common = " train" + kTiny + " --steps 5 --eval-interval 0";
  const auto t0 = std::chrono::steady_clock::now();
  // MPMD: rank 0 and rank 1 run with different --seed.
  auto r = mpirun_cli(1, common + " --data " + corpus + " --seed 1 --out " + (dir / "a.safetensors") + " : -np 1 " +
                             bin + common + " --data " + corpus + " --seed 2 --out " + (dir / "b.safetensors"));
  CAPTURE(r.output);
  CHECK(r.status != 0);
  CHECK(r.status != 128 + 9);  // not the timeout's kill
  CHECK(count_of(r.output, "error: ranks disagree on --seed: rank(s) 1 differ from rank 0") == 2);
  CHECK(r.output.find("(this is rank 0 of 2)") != std::string::npos);
  CHECK(r.output.find("(this is rank 1 of 2)") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "a.safetensors"));
  // Different text on rank 1 (the same vocabulary).
  r = mpirun_cli(1, common + " --data " + corpus + " --out " + (dir / "a.safetensors") + " : -np 1 " + bin + common +
                        " --data " + other + " --out " + (dir / "a.safetensors"));
  CHECK(r.status != 0);
  CHECK(r.status != 128 + 9);
  CHECK(count_of(r.output, "error: ranks disagree on the training data (hash of the text)") == 2);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(50));
}

TEST_CASE("mpi: eval split across 3 ranks prints the same loss as one process") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_eval");
  const std::string corpus = write_corpus(dir);
  const std::string ckpt = dir / "m.safetensors";
  auto t = test::run_cli("train --data " + corpus + kTiny + " --steps 5 --eval-interval 0 --out " + ckpt);
  REQUIRE_MESSAGE(t.status == 0, t.output);
  for (const char* split : {"val", "train"}) {
    CAPTURE(split);
    const std::string args = "eval --json --threads 1 --checkpoint " + ckpt + " --data " + corpus + " --split " + split;
    auto one = test::run_cli(args);
    auto three = mpirun_cli(3, args);
    REQUIRE_MESSAGE(one.status == 0, one.output);
    REQUIRE_MESSAGE(three.status == 0, three.output);
    CHECK(one.output.find("\"loss\":") != std::string::npos);
    CHECK(three.output == one.output);  // one line, from rank 0, the same digits
  }
}

TEST_CASE("mpi: a killed rank ends the whole job with an error, and the last checkpoint stays intact") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_kill");
  const std::string corpus = write_corpus(dir);
  const std::string out = dir / "k.safetensors";
  // mpirun in the background; once a checkpoint exists, SIGKILL one of its ranks
  // (mpirun's children) and wait at most 30 s for mpirun to end.
  const std::string script =
      mpirun_chargpt(2) + " train --data " +
      corpus + kTiny + " --steps 1000000 --eval-interval 0 --save-interval 20 --out " + out + " > " +
      (dir / "log") + " 2>&1 & MP=$!\n"
      "for i in $(seq 300); do [ -f " + out + " ] && break; sleep 0.1; done\n"
      "sleep 0.3; RANK=$(pgrep -P $MP | tail -n 1); echo \"killing $RANK\"; kill -9 $RANK\n"
      "for i in $(seq 300); do kill -0 $MP 2>/dev/null || break; sleep 0.1; done\n"
      "if kill -0 $MP 2>/dev/null; then echo HUNG; kill -9 $MP; fi\n"
      "wait $MP; echo \"mpirun exit $?\"\n";
  auto r = run_shell(script);
  const std::string log = bytes_of(dir / "log");
  CAPTURE(r.output);
  CAPTURE(log);
  CHECK(r.output.find("killing ") != std::string::npos);
  CHECK(r.output.find("HUNG") == std::string::npos);
  CHECK(r.output.find("mpirun exit 0") == std::string::npos);
  CHECK(r.output.find("mpirun exit") != std::string::npos);
  CHECK(log.find("exited on signal 9") != std::string::npos);
  Metadata meta;
  const Model m = load_model(out, &meta);  // intact: it loads, at a multiple of the save interval
  CHECK(std::stoi(meta["step"]) % 20 == 0);
  CHECK(std::stoi(meta["step"]) > 0);
  CHECK(fs::exists(optim_state_path(out)));
}

TEST_CASE("mpi: Ctrl-C on mpirun stops every rank at the same step with one checkpoint") {
  if (!mpi_tests_run()) return;
  TempDir dir("mpi_sigint");
  const std::string corpus = write_corpus(dir);
  const std::string out = dir / "s.safetensors";
  // mpirun turns SIGINT into SIGTERM for the ranks (then SIGKILL 1 s later):
  // they agree to stop after the current step, and rank 0 saves.
  const std::string script =
      mpirun_chargpt(2) + " train --data " +
      corpus + kTiny + " --steps 1000000 --eval-interval 0 --log-interval 1000000 --out " + out + " > " +
      (dir / "log") + " 2>&1 & MP=$!\n"
      "sleep 2; kill -INT $MP\n"
      "for i in $(seq 300); do kill -0 $MP 2>/dev/null || break; sleep 0.1; done\n"
      "if kill -0 $MP 2>/dev/null; then echo HUNG; kill -9 $MP; fi\n"
      "wait $MP; echo \"mpirun exit $?\"\n";
  auto r = run_shell(script);
  const std::string log = bytes_of(dir / "log");
  CAPTURE(r.output);
  CAPTURE(log);
  CHECK(r.output.find("HUNG") == std::string::npos);
  CHECK(count_of(log, "interrupted: saved step ") == 1);
  Metadata meta;
  load_model(out, &meta);
  CHECK(std::stoi(meta["step"]) > 0);
  CHECK(log.find("interrupted: saved step " + meta["step"] + " to") != std::string::npos);
  CHECK(fs::exists(optim_state_path(out)));
}

TEST_CASE("dist: a build without MPI launched as several ranks refuses to train instead of training copies") {
  if (dist::compiled_in()) CHARGPT_SKIP("this build has MPI; the refusal is for builds without it");
  TempDir dir("nompi");
  const std::string corpus = write_corpus(dir);
  // What mpirun would set for rank 1 of 2.
  auto r = test::run_cli("train --data " + corpus + kTiny + " --steps 2 --eval-interval 0 --out " +
                         (dir / "x.safetensors"));
  CHECK(r.status == 0);  // without the variables: an ordinary run
  r = run_shell("OMPI_COMM_WORLD_SIZE=2 OMPI_COMM_WORLD_RANK=1 " + std::string(CHARGPT_BINARY) + " train --data " +
                corpus + kTiny + " --steps 2 --eval-interval 0 --out " + (dir / "y.safetensors"));
  CHECK(r.status == 1);
  CHECK(r.output.find("this build of chargpt has no MPI") != std::string::npos);
  CHECK(r.output.find("cannot run as 2 ranks under mpirun") != std::string::npos);
  CHECK_FALSE(fs::exists(dir / "y.safetensors"));
}
