// Tests of unique_fd, the close-on-exec creation helpers and the EINTR-retrying wrappers.
#include "catch.hpp"

#include <kin/fd.hpp>

#include "helpers/process_state.hpp"
#include "posix/sys.hpp"

#include <atomic>
#include <csignal>
#include <cstring>
#include <optional>
#include <thread>

#include <fcntl.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }
bool is_cloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }
bool is_nonblocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }

}  // namespace

TEST_CASE("a unique_fd closes its descriptor when destroyed", "[fd]") {
  int raw;
  {
    kin::unique_fd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    raw = fd.get();
    REQUIRE(fd.is_open());
    REQUIRE(is_open(raw));
  }
  CHECK_FALSE(is_open(raw));
}

TEST_CASE("moving a unique_fd transfers ownership and empties the source", "[fd]") {
  kin::unique_fd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const int raw = a.get();
  kin::unique_fd b(std::move(a));
  CHECK_FALSE(a.is_open());  // NOLINT: checking the moved-from state is the point
  CHECK(a.get() == -1);
  CHECK(b.get() == raw);
  kin::unique_fd c;
  c = std::move(b);
  CHECK(c.get() == raw);
  CHECK(is_open(raw));
  SECTION("move-assigning over an open unique_fd closes the old descriptor") {
    kin::unique_fd d(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    const int old = d.get();
    d = std::move(c);
    CHECK_FALSE(is_open(old));
    CHECK(d.get() == raw);
  }
}

TEST_CASE("release gives the descriptor up without closing it; reset closes", "[fd]") {
  kin::unique_fd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const int raw = fd.release();
  CHECK_FALSE(fd.is_open());
  CHECK(is_open(raw));
  fd.reset(raw);
  CHECK(fd.get() == raw);
  fd.reset();
  CHECK_FALSE(is_open(raw));
}

TEST_CASE("make_pipe creates close-on-exec ends that carry data", "[fd]") {
  const bool nonblocking = GENERATE(false, true);
  auto p = kin::make_pipe(nonblocking ? kin::fd_mode::nonblocking : kin::fd_mode::blocking);
  REQUIRE(p);
  CHECK(is_cloexec(p->read.get()));
  CHECK(is_cloexec(p->write.get()));
  CHECK(is_nonblocking(p->read.get()) == nonblocking);
  CHECK(is_nonblocking(p->write.get()) == nonblocking);
  REQUIRE(::write(p->write.get(), "kin", 3) == 3);
  char buf[3];
  REQUIRE(::read(p->read.get(), buf, 3) == 3);
  CHECK(std::memcmp(buf, "kin", 3) == 0);
}

TEST_CASE("make_socketpair creates AF_UNIX sockets of the asked type, close-on-exec", "[fd]") {
  auto [type, sock_type] = GENERATE(table<kin::socket_type, int>({
      {kin::socket_type::stream, SOCK_STREAM},
      {kin::socket_type::seqpacket, SOCK_SEQPACKET},
      {kin::socket_type::datagram, SOCK_DGRAM},
  }));
  const bool nonblocking = GENERATE(false, true);
  auto sp =
      kin::make_socketpair(type, nonblocking ? kin::fd_mode::nonblocking : kin::fd_mode::blocking);
  REQUIRE(sp);
  for (int fd : {sp->first.get(), sp->second.get()}) {
    CHECK(is_cloexec(fd));
    CHECK(is_nonblocking(fd) == nonblocking);
    int value = 0;
    socklen_t len = sizeof value;
    REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_TYPE, &value, &len) == 0);
    CHECK(value == sock_type);
    REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &value, &len) == 0);
    CHECK(value == AF_UNIX);
  }
  REQUIRE(::send(sp->first.get(), "x", 1, MSG_NOSIGNAL) == 1);
  char c = 0;
  REQUIRE(::recv(sp->second.get(), &c, 1, 0) == 1);
  CHECK(c == 'x');
}

TEST_CASE("creating descriptors past RLIMIT_NOFILE fails with EMFILE and leaks nothing", "[fd]") {
  const auto before = kin_test::open_fds();
  std::optional<kin_test::fd_limit> full(std::in_place, 0);  // no new descriptor fits
  auto p = kin::make_pipe();
  auto sp = kin::make_socketpair();
  auto d = kin::sys::dup_cloexec(0);
  full.reset();
  REQUIRE_FALSE(p);
  CHECK(p.error() == std::errc::too_many_files_open);
  REQUIRE_FALSE(sp);
  CHECK(sp.error() == std::errc::too_many_files_open);
  REQUIRE_FALSE(d);
  CHECK(d.error() == std::errc::too_many_files_open);
  CHECK(kin_test::open_fds() == before);
}

namespace {
void ignore_signal(int) {}
}  // namespace

TEST_CASE("sys::read and sys::write retry when a signal interrupts them", "[fd]") {
  // A handler without SA_RESTART makes the blocked read fail with EINTR; the wrapper must retry.
  struct sigaction action = {}, previous = {};
  action.sa_handler = ignore_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;
  REQUIRE(::sigaction(SIGUSR2, &action, &previous) == 0);

  auto p = kin::make_pipe();
  REQUIRE(p);
  std::atomic<bool> started{false};
  kin::result<std::size_t> got = kin::fail(kin::errno_code(0));
  char buf[4] = {};
  std::thread reader([&] {
    started = true;
    got = kin::sys::read(p->read.get(), buf, sizeof buf);
  });
  REQUIRE(kin_test::wait_until([&] { return started.load(); }));
  // Interrupt the reader several times while it is blocked, then give it data.
  for (int i = 0; i < 20; ++i) {
    ::pthread_kill(reader.native_handle(), SIGUSR2);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  auto w = kin::sys::write(p->write.get(), "ok", 2);
  reader.join();
  REQUIRE(::sigaction(SIGUSR2, &previous, nullptr) == 0);
  REQUIRE(w);
  CHECK(*w == 2);
  REQUIRE(got);
  CHECK(*got == 2);
  CHECK(std::memcmp(buf, "ok", 2) == 0);
}

TEST_CASE("sys wrappers report errors as error codes", "[fd]") {
  char c;
  auto r = kin::sys::read(-1, &c, 1);
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::bad_file_descriptor);
  auto o = kin::sys::open("/nonexistent/kin", O_RDONLY);
  REQUIRE_FALSE(o);
  CHECK(o.error() == std::errc::no_such_file_or_directory);
  auto nb = kin::sys::set_nonblocking(-1, true);
  REQUIRE_FALSE(nb);
  CHECK(nb.error() == std::errc::bad_file_descriptor);
}

TEST_CASE("sys::open and sys::dup_cloexec create close-on-exec descriptors", "[fd]") {
  auto f = kin::sys::open("/dev/null", O_RDONLY);
  REQUIRE(f);
  CHECK(is_cloexec(f->get()));
  auto d = kin::sys::dup_cloexec(f->get(), 100);
  REQUIRE(d);
  CHECK(d->get() >= 100);
  CHECK(is_cloexec(d->get()));
  auto s = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(s);
  CHECK(is_cloexec(s->get()));
  REQUIRE(kin::sys::set_nonblocking(s->get(), true));
  CHECK(is_nonblocking(s->get()));
  REQUIRE(kin::sys::set_nonblocking(s->get(), false));
  CHECK_FALSE(is_nonblocking(s->get()));
}
