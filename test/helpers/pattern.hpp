// The byte pattern the helper child's "interleave" behaviour writes, so a test can tell a lost,
// duplicated or misplaced byte.
#pragma once

#include <cstddef>

namespace kin_test {

/// The byte at `offset` of stream `which` (1: stdout, 2: stderr).
inline char pattern_byte(int which, std::size_t offset) {
  return static_cast<char>((offset * 7 + static_cast<std::size_t>(which) * 13) % 251);
}

}  // namespace kin_test
