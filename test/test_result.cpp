// Tests of result<T>, the kin::errc category and the opt-in fmt formatters.
#include "catch.hpp"

#include <kin/fd.hpp>
#include <kin/fmt.hpp>
#include <kin/result.hpp>

#include <string>
#include <system_error>

namespace {

kin::result<int> half(int x) {
  if (x % 2 != 0) return kin::fail(kin::errno_code(EINVAL));
  return x / 2;
}

}  // namespace

TEST_CASE("a result holds either a value or an error", "[result]") {
  auto ok = half(8);
  REQUIRE(ok);
  CHECK(ok.has_value());
  CHECK(*ok == 4);
  CHECK(ok.value() == 4);
  CHECK(ok.value_or(-1) == 4);

  auto bad = half(3);
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == std::errc::invalid_argument);
  CHECK(bad.value_or(-1) == -1);
}

TEST_CASE("value() throws std::system_error carrying the error code", "[result]") {
  auto bad = half(5);
  try {
    (void)bad.value();
    FAIL("value() did not throw");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::invalid_argument);
  }
  kin::result<void> v = kin::fail(kin::errno_code(EBADF));
  CHECK_THROWS_AS(v.value(), std::system_error);
  kin::result<void> fine;
  CHECK(fine);
  CHECK_NOTHROW(fine.value());
}

TEST_CASE("a result can hold a move-only value such as unique_fd", "[result]") {
  auto p = kin::make_pipe();
  REQUIRE(p);
  kin::result<kin::unique_fd> r = std::move(p->read);
  REQUIRE(r);
  kin::unique_fd taken = std::move(*r);
  CHECK(taken.is_open());
  CHECK_FALSE(r->is_open());
}

TEST_CASE("errors that are not error codes throw bad_result_access", "[result]") {
  kin::result<int, std::string> r = kin::fail(std::string("why"));
  REQUIRE_FALSE(r);
  CHECK(r.error() == "why");
  CHECK_THROWS_AS(r.value(), kin::bad_result_access<std::string>);
}

TEST_CASE("kin::errc codes belong to the kin category and say what went wrong", "[result]") {
  const std::error_code ec = kin::errc::frame_too_large;
  CHECK(std::string(ec.category().name()) == "kin");
  CHECK(ec == kin::errc::frame_too_large);
  CHECK(ec != kin::errc::message_truncated);
  CHECK(ec != std::errc::invalid_argument);
  for (int v = 1; v <= static_cast<int>(kin::errc::eof); ++v) {
    const std::string message = kin::make_error_code(static_cast<kin::errc>(v)).message();
    CHECK_FALSE(message.empty());
    CHECK(message.find("unknown kin error") == std::string::npos);
  }
  CHECK(kin::make_error_code(static_cast<kin::errc>(999)).message() == "unknown kin error 999");
}

TEST_CASE("the fmt formatters print the message, the category and the value", "[result]") {
  CHECK(fmt::format("{}", kin::errno_code(EBADF)) == "Bad file descriptor (system 9)");
  CHECK(fmt::format("{}", kin::errc::status_unknown) ==
        "exit status unknown: the child was reaped by someone else (kin 6)");
}
