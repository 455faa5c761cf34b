// A guard that checks, when a test ends without failing a REQUIRE, that it left no descriptor
// open and no child behind.
#pragma once

#include "catch.hpp"
#include "process_state.hpp"

#include <exception>
#include <set>

namespace kin_test {

// Checks, when the test ends without failing a REQUIRE, that it left no descriptor open and no
// child behind (main.cpp checks the whole run; this names the test that leaked). Declare it
// first, so that it runs after every other local (the loop included) is gone.
class leak_guard {
 public:
  leak_guard() : fds_(kin_test::open_fds()), children_(kin_test::child_pids()) {}
  leak_guard(const leak_guard&) = delete;
  leak_guard& operator=(const leak_guard&) = delete;
  ~leak_guard() {
    if (std::uncaught_exceptions() > 0) return;
    CHECK(kin_test::open_fds() == fds_);
    CHECK(kin_test::child_pids() == children_);
  }

 private:
  std::set<int> fds_;
  std::set<int> children_;
};

}  // namespace kin_test
