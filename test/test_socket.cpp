// Tests of the typed streams (kin::tcp_socket, kin::unix_socket, kin::pipe: connecting, options,
// addresses, credentials, open and release) and of kin::adopt.
#include "catch.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/handle.hpp>
#include <kin/loop.hpp>
#include <kin/server.hpp>
#include <kin/socket.hpp>

#include "helpers/handles.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <variant>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

using namespace std::chrono_literals;
using kin_test::bytes_of;
using kin_test::ip;
using kin_test::run_all;
using kin_test::run_until;
using kin_test::unix_path;

namespace {

bool is_open_fd(int fd) { return ::fcntl(fd, F_GETFD) != -1; }
bool is_nonblocking(int fd) { return (::fcntl(fd, F_GETFL) & O_NONBLOCK) != 0; }

// A raw socket of `type` bound to 127.0.0.1 on an ephemeral port.
kin::unique_fd bound_loopback(int type) {
  auto s = kin::sys::socket(AF_INET, type, 0);
  REQUIRE(s);
  const auto a = ip("127.0.0.1");
  REQUIRE(::bind(s->get(), static_cast<const sockaddr*>(a.data()), a.size()) == 0);
  return std::move(*s);
}

kin::unique_fd listening_loopback() {
  kin::unique_fd s = bound_loopback(SOCK_STREAM);
  REQUIRE(::listen(s.get(), 16) == 0);
  return s;
}

// The two ends of a TCP connection over 127.0.0.1, as raw blocking descriptors.
std::pair<kin::unique_fd, kin::unique_fd> tcp_pair() {
  kin::unique_fd listener = listening_loopback();
  auto address = kin::socket_address::local_of(listener.get());
  REQUIRE(address);
  kin::unique_fd client = kin_test::raw_connect(*address);
  REQUIRE(client);
  kin::unique_fd served(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(served);
  return {std::move(client), std::move(served)};
}

// An address on 127.0.0.1 that refuses connections: a port that is bound but not listening.
struct refusing_port {
  kin::unique_fd holder = bound_loopback(SOCK_STREAM);
  kin::socket_address address() const { return *kin::socket_address::local_of(holder.get()); }
};

// A TCP server on 127.0.0.1 that keeps what it accepts.
struct loopback_server {
  explicit loopback_server(kin::loop& l) : srv(l) {
    REQUIRE(srv.bind(ip("127.0.0.1")));
    REQUIRE(srv.listen(16, [this](std::error_code ec, kin::unique_fd c) {
      REQUIRE_FALSE(ec);
      accepted.push_back(std::move(c));
    }));
  }
  kin::socket_address address() const { return *srv.local_address(); }
  kin::tcp_server srv;
  std::vector<kin::unique_fd> accepted;
};

struct sigpipe_default {
  sigpipe_default() {
    struct sigaction dfl = {};
    dfl.sa_handler = SIG_DFL;
    REQUIRE(::sigaction(SIGPIPE, &dfl, &previous) == 0);  // SIGPIPE would kill the process
  }
  ~sigpipe_default() { ::sigaction(SIGPIPE, &previous, nullptr); }
  struct sigaction previous = {};
};

}  // namespace

// ---- tcp_socket ---------------------------------------------------------------------------

TEST_CASE("a connect to a closed port fails with ECONNREFUSED on a later iteration", "[socket]") {
  kin::loop l;
  refusing_port refused;
  const auto before = kin_test::open_fds();
  kin::tcp_socket s(l);
  std::optional<std::error_code> result;
  REQUIRE(s.connect(refused.address(), [&](std::error_code ec) { result = ec; }));
  CHECK_FALSE(result);  // never from inside connect()
  CHECK(s.is_open());
  CHECK(s.is_connecting());
  CHECK(l.is_alive());
  CHECK(run_all(l));
  REQUIRE(result);
  CHECK(*result == std::errc::connection_refused);
  CHECK_FALSE(s.is_open());
  CHECK_FALSE(s.is_connecting());
  CHECK(kin_test::open_fds() == before);
  auto r = s.release();
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::bad_file_descriptor);

  SECTION("and the socket can connect again, to a server") {
    loopback_server server(l);
    std::optional<std::error_code> second;
    REQUIRE(s.connect(server.address(), [&](std::error_code ec) { second = ec; }));
    REQUIRE(run_until(l, [&] { return second && server.accepted.size() == 1; }));
    CHECK_FALSE(*second);
    CHECK(s.is_open());
  }
}

TEST_CASE("writes queued right after connect leave once the connection is made", "[socket]") {
  kin::loop l;
  loopback_server server(l);
  kin::tcp_socket client(l);
  std::vector<std::string> events;
  REQUIRE(client.connect(server.address(), [&](std::error_code ec) {
    CHECK_FALSE(ec);
    events.push_back("connected");
  }));
  client.write(std::string_view("queued "), [&](std::error_code ec) {
    CHECK_FALSE(ec);
    events.push_back("first write");
  });
  client.write(std::string_view("while connecting"), [&](std::error_code ec) {
    CHECK_FALSE(ec);
    events.push_back("second write");
  });
  CHECK(client.write_queue_size() == 23);
  CHECK(events.empty());
  client.shutdown();
  REQUIRE(run_until(l, [&] { return server.accepted.size() == 1 && events.size() == 3; }));
  CHECK(events == std::vector<std::string>{"connected", "first write", "second write"});
  kin::tcp_socket served(l);
  REQUIRE(served.open(std::move(server.accepted[0])));
  kin_test::stream_reader got;
  REQUIRE(served.read_start(got.callback()));
  REQUIRE(run_until(l, [&] { return bool(got.end); }));
  CHECK(got.data == "queued while connecting");
  CHECK(got.end == kin::errc::eof);
}

TEST_CASE("writes queued before a connect that fails get the connect's error", "[socket]") {
  kin::loop l;
  refusing_port refused;
  const auto before = kin_test::open_fds();
  kin::tcp_socket s(l);
  std::vector<std::string> events;
  REQUIRE(s.connect(refused.address(), [&](std::error_code ec) {
    CHECK(ec == std::errc::connection_refused);
    events.push_back("connect");
  }));
  for (const char* name : {"write 1", "write 2"}) {
    s.write(std::string_view("lost"), [&events, name](std::error_code ec) {
      CHECK(ec == std::errc::connection_refused);
      events.push_back(name);
    });
  }
  CHECK(run_all(l));
  // The writes fail first, then the connect callback, which may reopen or destroy the socket.
  CHECK(events == std::vector<std::string>{"write 1", "write 2", "connect"});
  CHECK(s.write_queue_size() == 0);
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("close during a connect cancels it and the queued writes", "[socket]") {
  kin::loop l;
  loopback_server server(l);
  kin::tcp_socket s(l);
  std::vector<std::string> events;
  REQUIRE(s.connect(server.address(), [&](std::error_code ec) {
    CHECK(ec == std::errc::operation_canceled);
    events.push_back("connect");
  }));
  s.write(std::string_view("never"), [&](std::error_code ec) {
    CHECK(ec == std::errc::operation_canceled);
    events.push_back("write");
  });
  s.close([&] { events.push_back("closed"); });
  CHECK(events.empty());
  server.srv.close();
  CHECK(run_all(l));
  // The same order as a failed connect's: the writes, then the connect, then close's own.
  CHECK(events == std::vector<std::string>{"write", "connect", "closed"});
}

TEST_CASE("connect refuses a Unix address and an open socket at once", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  const auto before = kin_test::open_fds();
  kin::tcp_socket s(l);
  bool called = false;
  auto r = s.connect(unix_path(dir.path() / "x.sock"), [&](std::error_code) { called = true; });
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::address_family_not_supported);
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);

  auto [a, b] = tcp_pair();
  REQUIRE(s.open(std::move(a)));
  loopback_server server(l);
  auto again = s.connect(server.address(), [&](std::error_code) { called = true; });
  REQUIRE_FALSE(again);
  CHECK(again.error() == std::errc::already_connected);
  s.close();
  server.srv.close();
  CHECK(run_all(l));
  CHECK_FALSE(called);
}

TEST_CASE("set_nodelay and set_keepalive show in the socket's options", "[socket]") {
  kin::loop l;
  auto [a, b] = tcp_pair();
  kin::tcp_socket s(l);
  REQUIRE(s.open(std::move(a)));
  const int fd = s.fd();

  REQUIRE(s.set_nodelay(true));
  CHECK(kin_test::int_option(fd, IPPROTO_TCP, TCP_NODELAY) != 0);
  REQUIRE(s.set_nodelay(false));
  CHECK(kin_test::int_option(fd, IPPROTO_TCP, TCP_NODELAY) == 0);

  REQUIRE(s.set_keepalive(true, 30s));
  CHECK(kin_test::int_option(fd, SOL_SOCKET, SO_KEEPALIVE) != 0);
  CHECK(kin_test::int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 30);
  REQUIRE(s.set_keepalive(true, 1h));
  CHECK(kin_test::int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 3600);
  REQUIRE(s.set_keepalive(false));
  CHECK(kin_test::int_option(fd, SOL_SOCKET, SO_KEEPALIVE) == 0);
  REQUIRE(s.set_keepalive(true));  // without an idle time: the system's
  CHECK(kin_test::int_option(fd, SOL_SOCKET, SO_KEEPALIVE) != 0);
  CHECK(kin_test::int_option(fd, IPPROTO_TCP, TCP_KEEPIDLE) == 3600);

  auto negative = s.set_keepalive(true, -1s);
  REQUIRE_FALSE(negative);
  CHECK(negative.error() == std::errc::invalid_argument);

  s.close();
  for (auto r : {s.set_nodelay(true), s.set_keepalive(true, 10s), s.set_keepalive(false)}) {
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::bad_file_descriptor);
  }
  auto local = s.local_address();
  REQUIRE_FALSE(local);
  CHECK(local.error() == std::errc::bad_file_descriptor);
  auto peer = s.peer_address();
  REQUIRE_FALSE(peer);
  CHECK(peer.error() == std::errc::bad_file_descriptor);
  CHECK(run_all(l));
}

TEST_CASE("tcp_socket::open refuses other kinds with EINVAL and closes what it was given",
          "[socket]") {
  kin::loop l;
  const auto before = kin_test::open_fds();
  kin::tcp_socket s(l);
  kin::unique_fd given;
  SECTION("a Unix stream socket") {
    auto sp = kin::make_socketpair();
    REQUIRE(sp);
    given = std::move(sp->first);
  }
  SECTION("a pipe end") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    given = std::move(p->write);
  }
  SECTION("a listening TCP socket") { given = listening_loopback(); }
  SECTION("a UDP socket") { given = bound_loopback(SOCK_DGRAM); }
  const int number = given.get();
  auto r = s.open(std::move(given));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  CHECK_FALSE(is_open_fd(number));
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("tcp_socket::open takes a connection, and refuses a closed descriptor and a second one",
          "[socket]") {
  kin::loop l;
  kin::tcp_socket s(l);
  auto bad = s.open(kin::unique_fd());
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == std::errc::bad_file_descriptor);
  auto [a, b] = tcp_pair();
  const int number = a.get();
  REQUIRE(s.open(std::move(a)));
  CHECK(s.fd() == number);
  CHECK(is_nonblocking(number));
  auto [c, d] = tcp_pair();
  auto twice = s.open(std::move(c));
  REQUIRE_FALSE(twice);
  CHECK(twice.error() == std::errc::already_connected);
  CHECK(s.fd() == number);
}

TEST_CASE("release hands the descriptor back while idle; EBUSY while busy, EBADF when closed",
          "[socket]") {
  kin::loop l;
  auto [a, b] = tcp_pair();
  kin::tcp_socket s(l);
  REQUIRE(s.open(std::move(a)));
  const int number = s.fd();

  // Busy: a queued write would be lost.
  std::optional<std::error_code> written;
  s.write(std::string_view("queued"), [&](std::error_code ec) { written = ec; });
  auto busy = s.release();
  REQUIRE_FALSE(busy);
  CHECK(busy.error() == std::errc::device_or_resource_busy);
  CHECK(s.is_open());
  REQUIRE(run_until(l, [&] { return bool(written); }));
  CHECK_FALSE(*written);
  char buf[16];
  REQUIRE(::read(b.get(), buf, sizeof buf) == 6);

  // Idle: the descriptor comes back, still non-blocking, and works on its own.
  REQUIRE(s.read_start([](std::error_code, std::span<const std::byte>, std::span<kin::unique_fd>) {
    FAIL("a released socket must not be read by its old stream");
  }));
  auto fd = s.release();
  REQUIRE(fd);
  CHECK(fd->get() == number);
  CHECK_FALSE(s.is_open());
  CHECK_FALSE(s.is_reading());
  CHECK_FALSE(l.is_alive());
  CHECK(is_nonblocking(fd->get()));
  REQUIRE(::write(b.get(), "to raw", 6) == 6);
  for (int i = 0; i < 3; ++i) l.run_nowait();  // nothing may read it any more
  std::string got;
  REQUIRE(kin_test::wait_until([&] {
    const ssize_t n = ::read(fd->get(), buf, sizeof buf);
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
    return got.size() >= 6;
  }));
  CHECK(got == "to raw");
  REQUIRE(::write(fd->get(), "back", 4) == 4);
  REQUIRE(::read(b.get(), buf, sizeof buf) == 4);

  auto closed = s.release();
  REQUIRE_FALSE(closed);
  CHECK(closed.error() == std::errc::bad_file_descriptor);

  SECTION("release during a connect is EBUSY") {
    loopback_server server(l);
    kin::tcp_socket c(l);
    bool connected = false;
    REQUIRE(c.connect(server.address(), [&](std::error_code ec) { connected = !ec; }));
    auto connecting = c.release();
    REQUIRE_FALSE(connecting);
    CHECK(connecting.error() == std::errc::device_or_resource_busy);
    REQUIRE(run_until(l, [&] { return connected; }));
    REQUIRE(c.release());
  }
  SECTION("release after a shutdown is requested is EBUSY") {
    auto [e, f] = tcp_pair();
    kin::tcp_socket t(l);
    REQUIRE(t.open(std::move(e)));
    t.shutdown();
    auto shutting = t.release();
    REQUIRE_FALSE(shutting);
    CHECK(shutting.error() == std::errc::device_or_resource_busy);
    CHECK(run_all(l));
  }
}

// A write of 4 KiB or more made while the queue is empty goes straight out inside write(); its
// callback waits for the next flush. close() and release() must not lose it.
TEST_CASE("close right after a large write still runs the write's callback", "[socket]") {
  kin::loop l;
  auto [a, b] = tcp_pair();
  kin::tcp_socket s(l);
  REQUIRE(s.open(std::move(a)));
  int calls = 0;
  int ok = 0;
  s.write(bytes_of(std::string(8192, 'x')), [&](std::error_code ec) {
    ++calls;
    if (!ec) ++ok;
  });
  bool closed = false;
  s.close([&] { closed = true; });
  CHECK(run_all(l));
  CHECK(closed);
  CHECK(calls == 1);
  CHECK(ok == 1);  // the bytes did leave: success, not ECANCELED
}

// The same through release(), which is EBUSY until that callback has run.
TEST_CASE("release right after a large write does not lose the write's callback", "[socket]") {
  kin::loop l;
  auto [a, b] = tcp_pair();
  kin::tcp_socket s(l);
  REQUIRE(s.open(std::move(a)));
  int calls = 0;
  s.write(bytes_of(std::string(8192, 'x')), [&](std::error_code) { ++calls; });
  auto released = s.release();
  REQUIRE_FALSE(released);
  CHECK(released.error() == std::errc::device_or_resource_busy);
  CHECK(run_all(l));
  CHECK(calls == 1);
  auto later = s.release();  // the callback ran: nothing is pending any more
  CHECK(later);
}

// ---- unix_socket --------------------------------------------------------------------------

TEST_CASE("a Unix connect fails through its callback and leaves the socket closed", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  kin::unix_socket s(l);
  std::optional<std::error_code> result;
  std::errc expected{};
  kin::socket_address to;

  SECTION("ENOENT: no such path") {
    to = unix_path(dir.path() / "missing.sock");
    expected = std::errc::no_such_file_or_directory;
  }
  SECTION("ECONNREFUSED: a socket file nobody listens on") {
    const auto path = dir.path() / "stale.sock";
    to = unix_path(path);
    auto raw = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(raw);
    REQUIRE(::bind(raw->get(), static_cast<const sockaddr*>(to.data()), to.size()) == 0);
    raw->reset();  // closed without unlink: the file stays
    REQUIRE(std::filesystem::exists(path));
    expected = std::errc::connection_refused;
  }
#if defined(__linux__)
  SECTION("ECONNREFUSED: an abstract name nobody holds") {
    auto a = kin::socket_address::unix_abstract((dir.path() / "nobody").string());
    REQUIRE(a);
    to = *a;
    expected = std::errc::connection_refused;
  }
#endif
  const auto before = kin_test::open_fds();
  std::optional<std::error_code> written;
  REQUIRE(s.connect(to, [&](std::error_code ec) { result = ec; }));
  s.write(std::string_view("lost"), [&](std::error_code ec) { written = ec; });
  CHECK_FALSE(result);  // never from inside connect()
  CHECK(run_all(l));
  REQUIRE(result);
  CHECK(*result == expected);
  REQUIRE(written);
  CHECK(*written == expected);
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("a Unix connect to an IP or unnamed address fails at once with EAFNOSUPPORT",
          "[socket]") {
  kin::loop l;
  const auto before = kin_test::open_fds();
  kin::unix_socket s(l);
  bool called = false;
  for (const auto& to : {ip("127.0.0.1", 80), kin::socket_address()}) {
    auto r = s.connect(to, [&](std::error_code) { called = true; });
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_family_not_supported);
  }
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
  CHECK(run_all(l));
  CHECK_FALSE(called);
}

TEST_CASE("a unix_socket on a socketpair end reports credentials and unnamed addresses",
          "[socket]") {
  kin::loop l;
  auto sp = kin::make_socketpair();
  REQUIRE(sp);
  kin::unix_socket a(l), b(l);
  REQUIRE(a.open(std::move(sp->first)));
  REQUIRE(b.open(std::move(sp->second)));
  CHECK(a.can_pass_fds());
  for (kin::unix_socket* s : {&a, &b}) {
    auto cred = s->credentials();
    REQUIRE(cred);
    CHECK(cred->pid == ::getpid());
    CHECK(cred->uid == ::getuid());
    CHECK(cred->gid == ::getgid());
    CHECK(s->local_address()->family() == kin::address_family::unix_unnamed);
    CHECK(s->peer_address()->family() == kin::address_family::unix_unnamed);
  }
  kin_test::stream_reader got;
  REQUIRE(b.read_start(got.callback()));
  a.write(std::string_view("over the pair"));
  a.shutdown();
  REQUIRE(run_until(l, [&] { return bool(got.end); }));
  CHECK(got.data == "over the pair");

  a.close();
  auto cred = a.credentials();
  REQUIRE_FALSE(cred);
  CHECK(cred.error() == std::errc::bad_file_descriptor);
  CHECK(run_all(l));
}

TEST_CASE("an unconnected Unix socket has no credentials: ENOTCONN", "[socket]") {
  kin::loop l;
  auto raw = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(raw);
  kin::unix_socket s(l);
  REQUIRE(s.open(std::move(*raw)));
  auto cred = s.credentials();
  REQUIRE_FALSE(cred);
  CHECK(cred.error() == std::errc::not_connected);
}

TEST_CASE("unix_socket::open refuses other kinds with EINVAL and closes them", "[socket]") {
  kin::loop l;
  const auto before = kin_test::open_fds();
  kin::unix_socket s(l);
  kin::unique_fd given;
  SECTION("a TCP connection") {
    auto [a, b] = tcp_pair();
    given = std::move(a);
  }
  SECTION("a Unix datagram socket") {
    auto sp = kin::make_socketpair(kin::socket_type::datagram);
    REQUIRE(sp);
    given = std::move(sp->first);
  }
  SECTION("a pipe end") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    given = std::move(p->read);
  }
  const int number = given.get();
  auto r = s.open(std::move(given));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::invalid_argument);
  CHECK_FALSE(is_open_fd(number));
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("a Unix connect to a server whose backlog is full fails with EAGAIN", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  const auto path = dir.path() / "busy.sock";
  kin::unix_server srv(l);
  REQUIRE(srv.bind(unix_path(path)));
  // Listening with a backlog of 0, then not accepting: the kernel queues one connection.
  REQUIRE(srv.listen(0, [](std::error_code, kin::unique_fd) { FAIL("nothing is accepted"); }));
  srv.stop_accepting();
  kin::unix_socket first(l), second(l);
  std::optional<std::error_code> r1, r2;
  REQUIRE(first.connect(unix_path(path), [&](std::error_code ec) { r1 = ec; }));
  REQUIRE(second.connect(unix_path(path), [&](std::error_code ec) { r2 = ec; }));
  CHECK(run_all(l));
  REQUIRE(r1);
  REQUIRE(r2);
  CHECK_FALSE(*r1);
  CHECK(*r2 == std::errc::resource_unavailable_try_again);  // Linux does not wait
  CHECK(first.is_open());
  CHECK_FALSE(second.is_open());
}

TEST_CASE("a connect at the descriptor limit fails at once with EMFILE", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  loopback_server server(l);
  const auto before = kin_test::open_fds();
  kin::tcp_socket t(l);
  kin::unix_socket u(l);
  bool called = false;
  {
    kin_test::fd_limit none(0);
    auto rt = t.connect(server.address(), [&](std::error_code) { called = true; });
    REQUIRE_FALSE(rt);
    CHECK(rt.error() == std::errc::too_many_files_open);
    auto ru = u.connect(unix_path(dir.path() / "x.sock"), [&](std::error_code) { called = true; });
    REQUIRE_FALSE(ru);
    CHECK(ru.error() == std::errc::too_many_files_open);
  }
  CHECK_FALSE(t.is_open());
  CHECK_FALSE(u.is_open());
  CHECK(kin_test::open_fds() == before);
  server.srv.close();
  CHECK(run_all(l));
  CHECK_FALSE(called);
  CHECK(server.accepted.empty());
}

// ---- pipe ---------------------------------------------------------------------------------

TEST_CASE("a pipe carries bytes from its write end to its read end, then EOF", "[socket]") {
  kin::loop l;
  auto p = kin::make_pipe();
  REQUIRE(p);
  kin::pipe reader(l), writer(l);
  REQUIRE(reader.open(std::move(p->read)));
  REQUIRE(writer.open(std::move(p->write)));
  CHECK(is_nonblocking(reader.fd()));
  CHECK(is_nonblocking(writer.fd()));
  CHECK_FALSE(writer.can_pass_fds());
  kin_test::stream_reader got;
  REQUIRE(reader.read_start(got.callback()));
  std::string expected;
  for (int i = 0; i < 100; ++i) {
    const std::string chunk = "chunk " + std::to_string(i) + ";";
    expected += chunk;
    writer.write(bytes_of(chunk));
  }
  std::optional<std::error_code> shut;
  writer.shutdown([&](std::error_code ec) { shut = ec; });
  CHECK(run_all(l));
  CHECK(got.data == expected);
  CHECK(got.end == kin::errc::eof);
  REQUIRE(shut);
  CHECK_FALSE(*shut);
  CHECK_FALSE(writer.is_open());  // shutting down a pipe's write end closes it
}

TEST_CASE("pipe::open takes a FIFO and refuses sockets and files, closing them", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  SECTION("a FIFO") {
    const auto path = dir.path() / "fifo";
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    auto r = kin::sys::open(path.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(r);
    kin::pipe p(l);
    REQUIRE(p.open(std::move(*r)));
  }
  SECTION("other kinds") {
    const auto before = kin_test::open_fds();
    kin::pipe p(l);
    auto sp = kin::make_socketpair();
    REQUIRE(sp);
    auto file = kin::sys::open((dir.path() / "plain").c_str(), O_RDWR | O_CREAT, 0600);
    REQUIRE(file);
    for (kin::unique_fd* given : {&sp->first, &*file}) {
      const int number = given->get();
      auto r = p.open(std::move(*given));
      REQUIRE_FALSE(r);
      CHECK(r.error() == std::errc::invalid_argument);
      CHECK_FALSE(is_open_fd(number));
    }
    sp->second.reset();
    CHECK(kin_test::open_fds() == before);
  }
}

TEST_CASE("writing to a pipe whose reader is gone fails with EPIPE and raises no SIGPIPE",
          "[socket]") {
  sigpipe_default dfl;
  kin::loop l;
  auto p = kin::make_pipe();
  REQUIRE(p);
  kin::pipe writer(l);
  REQUIRE(writer.open(std::move(p->write)));
  p->read.reset();
  std::optional<std::error_code> result;
  writer.write(std::string_view("nobody reads this"), [&](std::error_code ec) { result = ec; });
  CHECK(run_all(l));
  REQUIRE(result);
  CHECK(*result == std::errc::broken_pipe);
  sigset_t pending;
  sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
}

// ---- adopt --------------------------------------------------------------------------------

namespace {

// Adopts `fd` and checks that the variant holds alternative H, open on the same number, with
// kind_of() saying `kind`.
template <class H>
std::unique_ptr<H> adopt_as(kin::loop& l, kin::unique_fd fd, kin::fd_kind kind) {
  const int number = fd.get();
  auto h = kin::adopt(l, std::move(fd));
  REQUIRE(h);
  CHECK(kin::kind_of(*h) == kind);
  REQUIRE(std::holds_alternative<std::unique_ptr<H>>(*h));
  auto handle = std::move(std::get<std::unique_ptr<H>>(*h));
  REQUIRE(handle);
  CHECK(handle->is_open());
  CHECK(handle->fd() == number);
  return handle;
}

}  // namespace

TEST_CASE("adopt rebuilds each kind of descriptor as its handle", "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");

  SECTION("a listening TCP socket: tcp_server") {
    kin::unique_fd s = listening_loopback();
    const auto address = *kin::socket_address::local_of(s.get());
    auto srv = adopt_as<kin::tcp_server>(l, std::move(s), kin::fd_kind::tcp_server);
    CHECK(is_nonblocking(srv->fd()));
    CHECK(*srv->local_address() == address);
    std::vector<kin::unique_fd> accepted;
    REQUIRE(srv->listen(
        4, [&](std::error_code, kin::unique_fd c) { accepted.push_back(std::move(c)); }));
    kin::unique_fd client = kin_test::raw_connect(address);
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return accepted.size() == 1; }));
  }
  SECTION("a connected TCP socket: tcp_socket") {
    auto [a, b] = tcp_pair();
    const auto peer = *kin::socket_address::local_of(b.get());
    auto s = adopt_as<kin::tcp_socket>(l, std::move(a), kin::fd_kind::tcp_socket);
    CHECK(is_nonblocking(s->fd()));
    CHECK(*s->peer_address() == peer);
    s->write(std::string_view("adopted"));
    REQUIRE(run_until(l, [&] { return s->write_queue_size() == 0; }));
    char buf[16];
    CHECK(::read(b.get(), buf, sizeof buf) == 7);
  }
  SECTION("a listening Unix socket: unix_server, whose file it leaves alone") {
    const auto path = dir.path() / "adopted.sock";
    kin::unique_fd raw;
    {
      kin::unix_server srv(l);
      REQUIRE(srv.bind(unix_path(path)));
      REQUIRE(srv.listen(4, [](std::error_code, kin::unique_fd) {}));
      raw = srv.release().value();
    }
    auto srv = adopt_as<kin::unix_server>(l, std::move(raw), kin::fd_kind::unix_server);
    CHECK(*srv->local_address() == unix_path(path));
    srv->close();
    CHECK(std::filesystem::exists(path));
  }
  SECTION("a Unix stream socketpair end: unix_socket") {
    auto sp = kin::make_socketpair();
    REQUIRE(sp);
    auto s = adopt_as<kin::unix_socket>(l, std::move(sp->first), kin::fd_kind::unix_stream_socket);
    CHECK(s->can_pass_fds());
    CHECK(s->credentials()->pid == ::getpid());
  }
  SECTION("a UDP socket: udp_socket") {
    kin::unique_fd s = bound_loopback(SOCK_DGRAM);
    const auto address = *kin::socket_address::local_of(s.get());
    auto u = adopt_as<kin::udp_socket>(l, std::move(s), kin::fd_kind::udp_socket);
    CHECK(is_nonblocking(u->fd()));
    CHECK(*u->local_address() == address);
  }
  SECTION("either end of a pipe, and a FIFO: pipe") {
    auto p = kin::make_pipe();
    REQUIRE(p);
    auto r = adopt_as<kin::pipe>(l, std::move(p->read), kin::fd_kind::pipe);
    auto w = adopt_as<kin::pipe>(l, std::move(p->write), kin::fd_kind::pipe);
    CHECK(is_nonblocking(r->fd()));
    const auto path = dir.path() / "fifo";
    REQUIRE(::mkfifo(path.c_str(), 0600) == 0);
    auto fifo = kin::sys::open(path.c_str(), O_RDONLY | O_NONBLOCK);
    REQUIRE(fifo);
    adopt_as<kin::pipe>(l, std::move(*fifo), kin::fd_kind::pipe);
  }
  SECTION("a regular file: file") {
    auto f = kin::sys::open((dir.path() / "data").c_str(), O_RDWR | O_CREAT, 0600);
    REQUIRE(f);
    REQUIRE(::write(f->get(), "12345", 5) == 5);
    auto file = adopt_as<kin::file>(l, std::move(*f), kin::fd_kind::file);
    CHECK(*file->size() == 5);
  }
  CHECK(run_all(l));
}

TEST_CASE("adopt hands back the kinds it has no handle for as raw descriptors, still open",
          "[socket]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-socket");
  kin::unique_fd fd;
  kin::fd_kind expected = kin::fd_kind::other;
  SECTION("a Unix datagram socket") {
    auto sp = kin::make_socketpair(kin::socket_type::datagram);
    REQUIRE(sp);
    fd = std::move(sp->first);
    expected = kin::fd_kind::unix_datagram_socket;
  }
  SECTION("a Unix seqpacket socket") {
    auto sp = kin::make_socketpair(kin::socket_type::seqpacket);
    REQUIRE(sp);
    fd = std::move(sp->first);
    expected = kin::fd_kind::unix_seqpacket_socket;
  }
  SECTION("a listening Unix seqpacket socket: a unix_server by kind, but no stream server") {
    fd = kin::sys::socket(AF_UNIX, SOCK_SEQPACKET, 0).value();
    sockaddr_un un{};
    un.sun_family = AF_UNIX;  // autobind to an abstract name
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&un), sizeof(sa_family_t)) == 0);
    REQUIRE(::listen(fd.get(), 1) == 0);
    expected = kin::fd_kind::unix_server;
  }
  SECTION("/dev/null") {
    fd = kin::sys::open("/dev/null", O_RDWR).value();
    expected = kin::fd_kind::character_device;
  }
  SECTION("a directory") {
    fd = kin::sys::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY).value();
    expected = kin::fd_kind::directory;
  }
#if defined(__linux__)
  SECTION("an eventfd") {
    fd = kin::unique_fd(::eventfd(0, EFD_CLOEXEC));
    REQUIRE(fd);
    expected = kin::fd_kind::other;
  }
#endif
  const int number = fd.get();
  const int flags = ::fcntl(number, F_GETFL);
  auto h = kin::adopt(l, std::move(fd));
  REQUIRE(h);
  REQUIRE(std::holds_alternative<kin::raw_descriptor>(*h));
  auto& raw = std::get<kin::raw_descriptor>(*h);
  CHECK(raw.kind == expected);
  CHECK(kin::kind_of(*h) == expected);
  CHECK(raw.fd.get() == number);
  CHECK(is_open_fd(number));
  CHECK(::fcntl(number, F_GETFL) == flags);  // unchanged: not made non-blocking
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("adopt of a descriptor that is not open fails with EBADF", "[socket]") {
  kin::loop l;
  int number;
  {
    auto f = kin::sys::open("/dev/null", O_RDONLY);
    REQUIRE(f);
    number = f->get();
  }
  for (int fd : {-1, number}) {
    auto h = kin::adopt(l, kin::unique_fd(fd));
    REQUIRE_FALSE(h);
    CHECK(h.error() == std::errc::bad_file_descriptor);
  }
}
