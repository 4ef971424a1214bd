// The skip guard's own test (CTest skip_guard): a case that passes an assertion and then
// skips. tests/main.cpp must fail this run; CMakeLists.txt expects its error line.
#include <doctest/doctest.h>

#include "support.h"

TEST_CASE("a case that skips after an assertion") {
  CHECK(1 + 1 == 2);
  CHARGPT_SKIP("no AMX");
}
