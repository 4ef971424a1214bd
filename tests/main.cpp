// doctest's runner, plus the skip bookkeeping (CHARGPT_SKIP in support.h): a case that
// skipped prints "SKIPPED: why"; a run whose cases all skipped exits with kSkipExitCode,
// which CTest counts as a skip; a case that skipped after passing assertions fails the run,
// since CTest would otherwise count either a skip that hides a pass or a pass that hides a skip.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <iostream>
#include <string>

#include "support.h"

namespace {

struct SkipCounts {
  int ran = 0, skipped = 0, skipped_after_asserts = 0;
};
SkipCounts counts;

// Sees every case's end, its assertion count and whether it marked itself skipped.
// A MESSAGE starting "SKIPPED:" marks a skip too, so that a case cannot hide one that way.
struct SkipListener : doctest::IReporter {
  std::string name;
  explicit SkipListener(const doctest::ContextOptions&) {}
  void test_case_start(const doctest::TestCaseData& tc) override {
    name = tc.m_name;
    chargpt::test::skip_reason().clear();
  }
  void log_message(const doctest::MessageData& m) override {
    const std::string text = m.m_string.c_str();
    if (!text.starts_with("SKIPPED:")) return;
    const size_t why = text.find_first_not_of(' ', 8);
    chargpt::test::mark_skipped(why == std::string::npos ? "" : text.substr(why));
  }
  void test_case_end(const doctest::CurrentTestCaseStats& st) override {
    const std::string& why = chargpt::test::skip_reason();
    if (why.empty()) {
      ++counts.ran;
    } else if (st.numAssertsCurrentTest > 0) {
      ++counts.skipped_after_asserts;
      std::cout << "ERROR: case '" << name << "' skipped (" << why << ") after " << st.numAssertsCurrentTest
                << " assertion(s): the part that runs here belongs in a case of its own\n";
    } else {
      ++counts.skipped;
      std::cout << "SKIPPED: " << why << "\n";
    }
    std::cout.flush();
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_run_end(const doctest::TestRunStats&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("chargpt_skips", 1, SkipListener);

}  // namespace

int main(int argc, char** argv) {
  doctest::Context context(argc, argv);
  const int rc = context.run();
  if (context.shouldExit() || rc != 0) return rc;
  if (counts.skipped_after_asserts > 0) return 1;
  if (counts.skipped > 0) {
    std::cout << "[chargpt] " << counts.ran << " case(s) ran, " << counts.skipped << " skipped\n";
    if (counts.ran == 0) return chargpt::test::kSkipExitCode;
  }
  return 0;
}
