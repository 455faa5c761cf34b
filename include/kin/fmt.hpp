// Opt-in {fmt} formatters for kin's types. Including this makes the program depend on {fmt}.
#pragma once

#include <kin/result.hpp>

#include <fmt/format.h>

#include <string>
#include <system_error>

/// Formats an error_code as "message (category value)", e.g. "Bad file descriptor (system 9)".
template <>
struct fmt::formatter<std::error_code> : fmt::formatter<std::string> {
  template <class Context>
  auto format(const std::error_code& ec, Context& ctx) const {
    return fmt::formatter<std::string>::format(
        fmt::format("{} ({} {})", ec.message(), ec.category().name(), ec.value()), ctx);
  }
};

template <>
struct fmt::formatter<kin::errc> : fmt::formatter<std::error_code> {
  template <class Context>
  auto format(kin::errc e, Context& ctx) const {
    return fmt::formatter<std::error_code>::format(kin::make_error_code(e), ctx);
  }
};
