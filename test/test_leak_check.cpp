// A deliberately leaky test, hidden from normal runs: Meson runs it expecting the leak check in
// main.cpp to fail it, which shows that check can fail.
#include "catch.hpp"

#include <spawn.h>
#include <cstdlib>

#include <fcntl.h>
#include <unistd.h>

extern char** environ;

TEST_CASE("a test that leaves a descriptor and a child process behind", "[.leak-demo]") {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const char* child = std::getenv("KIN_TEST_CHILD");
  REQUIRE(child != nullptr);
  char* argv[] = {const_cast<char*>(child), const_cast<char*>("exit"), nullptr};
  pid_t pid;
  REQUIRE(posix_spawn(&pid, child, nullptr, nullptr, argv, environ) == 0);
  // Neither is closed nor reaped: the runner must report both and fail.
}
