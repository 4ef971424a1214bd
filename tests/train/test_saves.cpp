// Saves: weights and optimizer state are saved as a pair that any kill leaves
// resumable; a resumed run must be the same run; a full disk loses nothing.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>

#include "io/checkpoint.h"
#include "train/train.h"
#include "support.h"

using namespace chargpt;
using namespace chargpt::test;
using json = nlohmann::json;
namespace fs = std::filesystem;

extern char** environ;

namespace {

// The step of a saved pair, after checking that the pair loads as --resume loads it.
int resumable_step(const std::string& weights) {
  Metadata wmeta;
  const Model m = load_model(weights, &wmeta);
  FloatBuffer mom(m.params.size()), var(m.params.size());
  const TrainState st = load_optimizer_state(weights, m, wmeta, mom.data(), var.data());
  return st.step;
}

std::vector<std::string> leftovers(const std::string& dir) {
  std::vector<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.ends_with(".tmp") || name.ends_with(".prev")) found.push_back(name);
  }
  return found;
}

}  // namespace

TEST_CASE("saves: resume takes the optimizer state an interrupted save kept as .prev") {
  TempDir dir("saves");
  spit(dir / "corpus.txt", word_corpus());
  // Reference: 5 steps straight.
  TrainOptions whole = tiny_run(dir / "corpus.txt", dir / "whole.safetensors");
  whole.steps = 5;
  train(whole, std::cout);

  // A run at step 3, and the optimizer file of the same run at step 4: what
  // the old saver left when killed between its two renames.
  TrainOptions o = tiny_run(dir / "corpus.txt", dir / "run.safetensors");
  o.steps = 4;
  train(o, std::cout);
  const std::string opt4 = bytes_of(optim_state_path(o.out_path));
  o.out_path = dir / "run3.safetensors";
  o.steps = 3;
  train(o, std::cout);
  const std::string w = o.out_path, opath = optim_state_path(w);
  CHECK(resumable_step(w) == 3);
  fs::rename(opath, opath + ".prev");  // step 2 of the save had happened,
  spit(opath, opt4);                   // and step 3: the new optimizer state is in place, the weights are not
  spit(w + ".tmp", "stale junk from a killed save");
  spit(opath + ".tmp", "more junk");
  CHECK(resumable_step(w) == 3);

  o.resume = true;
  o.steps = 5;
  train(o, std::cout);
  CHECK(bytes_of(w) == bytes_of(whole.out_path));  // the same bits as the run that was never interrupted
  CHECK(bytes_of(opath) == bytes_of(optim_state_path(whole.out_path)));
  CHECK(leftovers(dir.str()).empty());  // .prev and stale .tmp files are gone after a save

  // Neither file pairs with the weights: one message naming both.
  spit(opath, opt4);
  const std::string err = error_of([&] { resumable_step(w); });
  CHECK(contains(err, "cannot resume: no optimizer state for step 5 of '" + w + "': '" + opath +
                          "' is from step 4, and its backup '" + opath + ".prev' does not exist"));
  fs::remove(opath);
  CHECK(contains(error_of([&] { train(o, std::cout); }), "'" + opath + "' does not exist"));
}

TEST_CASE("saves: the weights file names its optimizer file's checksum, which resume checks") {
  TempDir dir("saves");
  spit(dir / "corpus.txt", word_corpus());
  TrainOptions o = tiny_run(dir / "corpus.txt", dir / "a.safetensors");
  train(o, std::cout);
  Metadata wmeta;
  load_model(o.out_path, &wmeta);
  const Metadata ometa = read_safetensors_metadata(optim_state_path(o.out_path));
  CHECK(wmeta["step"] == "3");
  CHECK(wmeta["optim_checksum"] == ometa.at(kChecksumKey));
  CHECK(ometa.at("version") == "2");
  CHECK(ometa.at("seed") == "1337");
  CHECK(ometa.at("batch_size") == "4");
  CHECK(ometa.at("data_bytes") == std::to_string(word_corpus().size()));
  // Another run's optimizer file at the same step does not pair with these weights.
  TrainOptions b = o;
  b.out_path = dir / "b.safetensors";
  b.seed = 7;
  train(b, std::cout);
  fs::copy_file(optim_state_path(b.out_path), optim_state_path(o.out_path), fs::copy_options::overwrite_existing);
  CHECK(contains(error_of([&] { resumable_step(o.out_path); }),
                 "is not the state that the weights file records (checksum differs)"));
}

TEST_CASE("saves: resume refuses another --seed, --batch-size or --data, naming both values") {
  TempDir dir("saves");
  spit(dir / "corpus.txt", word_corpus());
  spit(dir / "other.txt", word_corpus(6));  // the same characters, another text
  TrainOptions o = tiny_run(dir / "corpus.txt", dir / "r.safetensors");
  train(o, std::cout);
  o.resume = true;
  o.steps = 4;
  TrainOptions x = o;
  x.seed = 42;
  CHECK(error_of([&] { train(x, std::cout); }) ==
        "cannot resume with --seed 42: the run saved in '" + o.out_path + "' was started with --seed 1337");
  x = o;
  x.batch_size = 6;
  CHECK(error_of([&] { train(x, std::cout); }) ==
        "cannot resume with --batch-size 6: the run saved in '" + o.out_path + "' was trained with --batch-size 4");
  x = o;
  x.data_path = dir / "other.txt";
  const std::string err = error_of([&] { train(x, std::cout); });
  CHECK(err.starts_with("cannot resume with --data '" + x.data_path + "' (" + std::to_string(word_corpus(6).size()) +
                        " bytes, fingerprint "));
  CHECK(contains(err, "was trained on '" + o.data_path + "' (" + std::to_string(word_corpus().size()) + " bytes"));
  // The same text under another name is the same run.
  fs::copy_file(o.data_path, dir / "moved.txt");
  x = o;
  x.data_path = dir / "moved.txt";
  CHECK(train(x, std::cout).steps == 4);
  // And the CLI says it on one line with exit 1.
  auto r = run_cli("train " + std::string(kTinyRunFlags) + " --resume --steps 6 --seed 9 --data " + o.data_path +
                   " --out " + o.out_path);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "cannot resume with --seed 9"));
}

TEST_CASE("saves: the optimizer file's version, step and moments are checked") {
  TempDir dir("saves");
  spit(dir / "corpus.txt", word_corpus());
  TrainOptions o = tiny_run(dir / "corpus.txt", dir / "v.safetensors");
  const std::string opath = optim_state_path(o.out_path);
  auto fresh = [&] {
    fs::remove(o.out_path);
    fs::remove(opath);
    train(tiny_run(dir / "corpus.txt", o.out_path), std::cout);
  };
  fresh();
  edit_header(opath, [](json& h) { h["__metadata__"]["version"] = "9"; });
  CHECK(error_of([&] { resumable_step(o.out_path); }) ==
        "'" + opath + "' has optimizer-state format version '9'; this chargpt reads versions 1 and 2");
  for (const char* bad : {"12x", "-3"}) {
    fresh();
    edit_header(o.out_path, [&](json& h) { h["__metadata__"]["step"] = bad; });
    edit_header(opath, [&](json& h) { h["__metadata__"]["step"] = bad; });
    CHECK(error_of([&] { resumable_step(o.out_path); }) ==
          "cannot resume: '" + o.out_path + "' has step '" + bad + "' is not a step count (an integer in 0..2147483647)");
  }
  fresh();
  edit_header(opath, [](json& h) { h["__metadata__"]["data_rng"] = "banana"; });
  CHECK(contains(error_of([&] { resumable_step(o.out_path); }), "data_rng 'banana' is not four 16-digit"));
  fresh();
  edit_header(opath, [](json& h) { h["__metadata__"].erase("seed"); });
  CHECK(error_of([&] { resumable_step(o.out_path); }) == "'" + opath + "': metadata 'seed' is missing");
  fresh();
  std::string bytes = bytes_of(opath);
  bytes[bytes.size() - 2] ^= 0x40;
  spit(opath, bytes);
  CHECK(contains(error_of([&] { resumable_step(o.out_path); }), "'" + opath + "' is corrupt"));
}

TEST_CASE("saves: kill -9 at random moments always leaves a resumable pair") {
  TempDir dir("kill");
  const std::string data = dir / "corpus.txt", out = dir / "k.safetensors";
  spit(data, word_corpus());
  const std::string flags = std::string(kTinyRunFlags) + " --save-interval 1 --data " + data + " --out " + out;
  Rng rng(20240611);
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  int kills = 0, resumed_checks = 0, last_step = 0;
  while (kills < 40 && (kills < 30 || elapsed() < 15)) {
    const bool have = fs::exists(out);
    std::vector<std::string> args = {CHARGPT_BINARY, "train"};
    std::istringstream fl(flags + " --steps 100000 --lr-decay-steps 1000" + (have ? " --resume" : ""));
    for (std::string a; fl >> a;) args.push_back(a);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    REQUIRE(posix_spawn(&pid, CHARGPT_BINARY, &fa, nullptr, argv.data(), environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    // Start-up takes some tens of ms; after it, every step ends in a save.
    std::this_thread::sleep_for(std::chrono::microseconds(20000 + rng.below(280000)));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    REQUIRE(WIFSIGNALED(st));  // it was still running: the kill interrupted it
    ++kills;
    if (!fs::exists(out)) {
      CHECK(last_step == 0);  // only a run killed before its first save leaves nothing
      continue;
    }
    int step = -1;
    const std::string err = error_of([&] { step = resumable_step(out); });
    CAPTURE(kills);
    CAPTURE(err);
    REQUIRE(err.empty());
    CHECK(step >= last_step);  // a kill never loses a completed save
    last_step = step;
    if (kills % 4 == 0) {  // and now and then the real thing: --resume through the command line
      const auto r = run_cli("train " + flags + " --resume --steps " + std::to_string(step) + " --lr-decay-steps 1000");
      CAPTURE(r.output);
      CHECK(r.status == 0);
      ++resumed_checks;
    }
  }
  MESSAGE("kills: " << kills << ", last saved step: " << last_step << ", CLI resumes: " << resumed_checks << ", "
                    << elapsed() << " s");
  CHECK(kills >= 30);
  CHECK(last_step > 0);
  // The interrupted run, finished, gives the bits of one that never was.
  const int final_step = last_step + 3;
  auto r = run_cli("train " + flags + " --resume --lr-decay-steps 1000 --steps " + std::to_string(final_step));
  CHECK(r.status == 0);
  const std::string ref = dir / "ref.safetensors";
  r = run_cli("train " + std::string(kTinyRunFlags) + " --data " + data + " --out " + ref +
              " --lr-decay-steps 1000 --steps " + std::to_string(final_step));
  CHECK(r.status == 0);
  CHECK(bytes_of(out) == bytes_of(ref));
  CHECK(bytes_of(optim_state_path(out)) == bytes_of(optim_state_path(ref)));
  CHECK(leftovers(dir.str()).empty());
}

TEST_CASE("saves: a full disk fails the save with a message and leaves the previous pair resumable") {
  TempDir dir("disk");
  const std::string mnt = dir / "mnt";
  fs::create_directories(mnt);
  if (::mount("chargpt-test", mnt.c_str(), "tmpfs", 0, "size=512k") != 0)
    CHARGPT_SKIP("cannot mount a tmpfs at " + mnt + " (" + std::strerror(errno) + "): needs root or CAP_SYS_ADMIN");
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  spit(dir / "corpus.txt", word_corpus());
  TrainOptions o = tiny_run(dir / "corpus.txt", mnt + "/ck.safetensors");
  o.steps = 2;
  train(o, std::cout);
  REQUIRE(resumable_step(o.out_path) == 2);
  const std::string before = bytes_of(o.out_path) + bytes_of(optim_state_path(o.out_path));
  // Fill the disk.
  {
    std::FILE* f = std::fopen((mnt + "/filler").c_str(), "wb");
    REQUIRE(f);
    std::string block(4096, 'x');
    while (std::fwrite(block.data(), 1, block.size(), f) == block.size()) {
    }
    std::fclose(f);
  }
  o.resume = true;
  o.steps = 4;
  o.save_interval = 1;
  const std::string err = error_of([&] { train(o, std::cout); });
  CHECK(contains(err, "saving step 3 failed: cannot write '"));
  CHECK(contains(err, "No space left on device"));
  CHECK(contains(err, "the checkpoint on disk, if any, is left as it was"));
  CHECK(bytes_of(o.out_path) + bytes_of(optim_state_path(o.out_path)) == before);
  CHECK(resumable_step(o.out_path) == 2);
  CHECK(leftovers(mnt).empty());
  // The command line: exit 1, one line.
  auto r = run_cli("train " + std::string(kTinyRunFlags) + " --resume --steps 4 --data " + o.data_path + " --out " +
                   o.out_path);
  CHECK(r.status == 1);
  CHECK(contains(r.output, "No space left on device"));
  // Space again: the run goes on from step 2.
  fs::remove(mnt + "/filler");
  CHECK(train(o, std::cout).steps == 4);
  CHECK(resumable_step(o.out_path) == 4);
}
