// The files a training run owns (owned_files.h): its own temporary, backup and
// lock files are outputs to every check, paths are compared where they really
// are, and one run at a time owns a checkpoint (the lock). And nothing diverged
// is saved as the latest checkpoint.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "base/lock.h"
#include "io/checkpoint.h"
#include "train/owned_files.h"
#include "train/train.h"
#include "support.h"

using namespace chargpt;
using namespace chargpt::test;
namespace fs = std::filesystem;

TEST_CASE("owned files: a save's temporary and backup files are never an input or the log") {
  TempDir dir("owned");
  const std::string text = word_corpus();
  spit(dir / "corpus.txt", text);
  const std::string ck = dir / "ck.safetensors";
  REQUIRE(error_of([&] { train(tiny_run(dir / "corpus.txt", ck), std::cout); }) == "");
  const std::string weights = bytes_of(ck);
  // The training text where a save would write, rename or remove.
  for (const std::string name : {"ck.optim.safetensors.prev", "ck.safetensors.tmp", "ck.optim.safetensors.tmp",
                                 "ck.safetensors.lock"}) {
    spit(dir / name, text);
    TrainOptions o = tiny_run(dir / name, ck);
    o.force = true;
    const std::string err = error_of([&] { train(o, std::cout); });
    CAPTURE(name);
    CHECK(contains(err, "is the same file as the input '" + (dir / name) + "' (--data)"));
    CHECK(bytes_of(dir / name) == text);
    CHECK(bytes_of(ck) == weights);
    fs::remove(dir / name);
  }
  // The log where a save writes: it would end up inside the checkpoint, or vanish.
  for (const std::string name : {"t1.safetensors.tmp", "t1.optim.safetensors.tmp", "t1.optim.safetensors.prev",
                                 "t1.safetensors.lock"}) {
    TrainOptions o = tiny_run(dir / "corpus.txt", dir / "t1.safetensors");
    o.log_path = dir / name;
    const std::string err = error_of([&] { train(o, std::cout); });
    CAPTURE(name);
    CHECK(contains(err, "--log '" + (dir / name) + "' is the same file as "));
    CHECK(!fs::exists(dir / "t1.safetensors"));
  }
}

TEST_CASE("owned files: --out must name a file and ./X is X before either exists") {
  TempDir dir("owned_paths");
  spit(dir / "corpus.txt", word_corpus());
  auto err_for = [&](const std::string& out, const std::string& log = "") {
    TrainOptions o = tiny_run(dir / "corpus.txt", out);
    o.log_path = log;
    return error_of([&] { train(o, std::cout); });
  };
  CHECK(err_for("") == "--out is empty: give the path of a file");
  CHECK(err_for(dir / "sub/") == "--out '" + (dir / "sub/") + "' names a directory; give the path of a file");
  CHECK(err_for(dir / "sub/.") == "--out '" + (dir / "sub/.") + "' names a directory; give the path of a file");
  CHECK(!fs::exists(dir / "sub.lock"));
  // A relative and an absolute spelling of one file that does not exist yet.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir.path);
  const std::string e = err_for("X.safetensors", "./X.safetensors");
  fs::current_path(cwd);
  CHECK(e == "--log './X.safetensors' is the same file as --out 'X.safetensors'");
  CHECK(!fs::exists(dir / "X.safetensors"));
  CHECK(same_file(dir / "a/../b", dir / "b"));
  fs::create_symlink(dir / "corpus.txt", dir / "link.txt");
  CHECK(same_file(dir / "link.txt", dir / "corpus.txt"));
  CHECK(!same_file(dir / "link.txt", dir / "other.txt"));
}

TEST_CASE("lock: one run owns a checkpoint - the holder pid is named and a dead holder is no obstacle") {
  TempDir dir("lock");
  spit(dir / "corpus.txt", word_corpus());
  const std::string ck = dir / "ck.safetensors";
  const OwnedFiles owned = owned_files(ck, "");
  CHECK(owned.lock_path == (real_path(ck).string() + ".lock"));
  {
    FileLock held(owned.lock_path, "the checkpoint");  // another run, as far as the lock goes
    CHECK(lock_holder(owned.lock_path) == ::getpid());
    const std::string err = error_of([&] { train(tiny_run(dir / "corpus.txt", ck), std::cout); });
    CHECK(err == "the checkpoint '" + ck + "' is in use by another chargpt train (pid " + std::to_string(::getpid()) +
                     ", holding the lock '" + owned.lock_path + "'); wait for it to finish or stop it");
    CHECK(!fs::exists(ck));
  }
  CHECK(!fs::exists(owned.lock_path));  // the holder removes it when it lets go
  CHECK(lock_holder(owned.lock_path) == 0);
  // A holder killed with kill -9 leaves its file, but not its lock.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  if (child == 0) {
    try {
      FileLock l(owned.lock_path, "the checkpoint");
      (void)!::write(ready[1], "x", 1);
      ::pause();
    } catch (...) {
    }
    ::_exit(1);
  }
  char c;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  CHECK(lock_holder(owned.lock_path) == child);
  CHECK(contains(error_of([&] { train(tiny_run(dir / "corpus.txt", ck), std::cout); }),
                 "in use by another chargpt train (pid " + std::to_string(child) + ","));
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
  CHECK(fs::exists(owned.lock_path));
  CHECK(lock_holder(owned.lock_path) == 0);
  CHECK(error_of([&] { train(tiny_run(dir / "corpus.txt", ck), std::cout); }) == "");
  // A link to the checkpoint shares its lock.
  fs::create_symlink(ck, dir / "link.safetensors");
  CHECK(owned_files(dir / "link.safetensors", "").lock_path == owned.lock_path);
  {
    FileLock held(owned.lock_path, "the checkpoint");
    TrainOptions o = tiny_run(dir / "corpus.txt", dir / "link.safetensors");
    o.resume = true;
    o.steps = 5;
    CHECK(contains(error_of([&] { train(o, std::cout); }), "is in use by another chargpt train"));
    // Readers take no lock.
    CHECK(error_of([&] { load_model(ck); }) == "");
  }
}

TEST_CASE("divergence: a step whose weights overflow is never saved over the last good checkpoint") {
  TempDir dir("diverge");
  spit(dir / "corpus.txt", word_corpus());
  const std::string ck = dir / "ck.safetensors";
  REQUIRE(error_of([&] { train(tiny_run(dir / "corpus.txt", ck), std::cout); }) == "");
  const std::string weights = bytes_of(ck), optim = bytes_of(optim_state_path(ck));
  auto resumed = [&](float lr, float wd) {
    TrainOptions o = tiny_run(dir / "corpus.txt", ck);
    o.resume = true;
    o.steps = 4;  // one step
    o.lr = lr;
    o.adamw.weight_decay = wd;
    return error_of([&] { train(o, std::cout); });
  };
  for (auto [lr, wd] : {std::pair{1e38f, 0.1f}, std::pair{1e-3f, 1e38f}, std::pair{1e30f, 0.1f}}) {
    const std::string err = resumed(lr, wd);
    CAPTURE(lr);
    CAPTURE(wd);
    CHECK(contains(err, "step 4"));
    CHECK(contains(err, "diverged"));
    CHECK(contains(err, "'" + ck + "' is left as it was"));
    CHECK(bytes_of(ck) == weights);
    CHECK(bytes_of(optim_state_path(ck)) == optim);
  }
  // A negative second moment (AdamW never writes one) is refused when resuming.
  edit_header(optim_state_path(ck), [](nlohmann::json&) {});  // drops the header checksum, keeps the data
  std::string bytes = bytes_of(optim_state_path(ck));
  uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  const nlohmann::json h = nlohmann::json::parse(bytes.substr(8, hlen));
  const size_t v0 = 8 + hlen + h["adamw.v"]["data_offsets"][0].get<size_t>();
  const float neg = -1.f;
  std::memcpy(bytes.data() + v0, &neg, 4);
  // and the data checksum of ours goes too, as another tool would write it
  nlohmann::json h2 = h;
  h2["__metadata__"].erase(kChecksumKey);
  write_raw_safetensors(optim_state_path(ck), h2, bytes.substr(8 + hlen));
  edit_header(ck, [](nlohmann::json& w) { w["__metadata__"].erase("optim_checksum"); });
  const std::string err = resumed(1e-3f, 0.1f);
  CHECK(contains(err, "negative second moment (adamw.v[0] = -1"));
}
