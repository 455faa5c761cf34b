// The failure path of KIN_ASSERT: one line on stderr, then abort().
#include "assert.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>

namespace kin::detail {

void assert_fail(const char* condition, const char* message, const char* file, int line) noexcept {
  std::fputs(
      fmt::format("kin: {} (assertion `{}` failed at {}:{})\n", message, condition, file, line)
          .c_str(),
      stderr);
  std::fflush(stderr);
  std::abort();
}

}  // namespace kin::detail
