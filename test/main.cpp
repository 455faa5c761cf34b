// The test runner: Catch2's session, wrapped in a check that the tests left no descriptor open
// and no child process behind.
#define CATCH_CONFIG_RUNNER
#include "catch.hpp"

#include "helpers/process_state.hpp"

#include <cstdio>

int main(int argc, char** argv) {
  const auto fds_before = kin_test::open_fds();
  const auto children_before = kin_test::child_pids();
  int rc = Catch::Session().run(argc, argv);
  const auto fds_after = kin_test::open_fds();
  const auto children_after = kin_test::child_pids();
  for (int fd : fds_after) {
    if (!fds_before.count(fd)) {
      std::fprintf(stderr, "leak check: fd %d (%s) was left open\n", fd,
                   kin_test::fd_target(fd).c_str());
      rc = rc != 0 ? rc : 1;
    }
  }
  for (int pid : children_after) {
    if (!children_before.count(pid)) {
      std::fprintf(stderr, "leak check: child process %d was left behind\n", pid);
      rc = rc != 0 ? rc : 1;
    }
  }
  return rc;
}
