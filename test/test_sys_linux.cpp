// Tests of the Linux-only descriptor helpers (epoll, eventfd).
#include "catch.hpp"

#include "helpers/process_state.hpp"
#include "linux/sys_linux.hpp"

#include <cstdint>
#include <optional>

#include <fcntl.h>
#include <unistd.h>

TEST_CASE("make_epoll and make_eventfd create close-on-exec descriptors", "[sys_linux]") {
  auto ep = kin::sys::make_epoll();
  REQUIRE(ep);
  CHECK((::fcntl(ep->get(), F_GETFD) & FD_CLOEXEC) != 0);
  const bool nonblocking = GENERATE(false, true);
  auto ev =
      kin::sys::make_eventfd(3, nonblocking ? kin::fd_mode::nonblocking : kin::fd_mode::blocking);
  REQUIRE(ev);
  CHECK((::fcntl(ev->get(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(((::fcntl(ev->get(), F_GETFL) & O_NONBLOCK) != 0) == nonblocking);
  std::uint64_t value = 0;
  REQUIRE(::read(ev->get(), &value, sizeof value) == sizeof value);
  CHECK(value == 3);
}

TEST_CASE("make_epoll and make_eventfd report EMFILE and leak nothing", "[sys_linux]") {
  const auto before = kin_test::open_fds();
  std::optional<kin_test::fd_limit> full(std::in_place, 0);
  auto ep = kin::sys::make_epoll();
  auto ev = kin::sys::make_eventfd(0, kin::fd_mode::nonblocking);
  full.reset();
  REQUIRE_FALSE(ep);
  CHECK(ep.error() == std::errc::too_many_files_open);
  REQUIRE_FALSE(ev);
  CHECK(ev.error() == std::errc::too_many_files_open);
  CHECK(kin_test::open_fds() == before);
}
