// KIN_ASSERT: checks for bugs in the caller or in kin, on in every build type.
#pragma once

namespace kin::detail {
[[noreturn]] void assert_fail(const char* condition, const char* message, const char* file,
                              int line) noexcept;
}  // namespace kin::detail

/// Stops the process with a message when `cond` is false. For precondition violations only,
/// never for conditions the OS can cause.
#define KIN_ASSERT(cond, message)                                     \
  do {                                                                \
    if (!(cond)) [[unlikely]]                                         \
      ::kin::detail::assert_fail(#cond, message, __FILE__, __LINE__); \
  } while (false)
