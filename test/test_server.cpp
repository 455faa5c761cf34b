// Tests of kin::tcp_server and kin::unix_server: binding and its errors, the accept loop (to
// EAGAIN, paused when descriptors run out), stop/close/release, socket files of Unix servers.
#include "catch.hpp"

#include <kin/address.hpp>
#include <kin/fd.hpp>
#include <kin/loop.hpp>
#include <kin/server.hpp>
#include <kin/socket.hpp>

#include "helpers/handles.hpp"
#include "helpers/process_state.hpp"
#include "helpers/temp_dir.hpp"
#include "posix/sys.hpp"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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

// True when `r` failed because this host has no IPv6 loopback; says so with a warning.
bool ipv6_unavailable(const kin::result<void>& r) {
  if (r || (r.error() != std::errc::address_not_available &&
            r.error() != std::errc::address_family_not_supported)) {
    return false;
  }
  WARN("IPv6 loopback unavailable here (" << r.error().message() << "); skipping the ::1 case");
  return true;
}

bool is_open_fd(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

bool is_socket_file(const std::filesystem::path& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// A server callback that keeps every accepted connection and every error.
struct acceptor {
  std::vector<kin::unique_fd> accepted;
  std::vector<std::error_code> errors;

  kin::server::connection_callback callback() {
    return [this](std::error_code ec, kin::unique_fd connection) {
      if (ec) {
        CHECK_FALSE(connection.is_open());
        errors.push_back(ec);
      } else {
        CHECK(connection.is_open());
        accepted.push_back(std::move(connection));
      }
    };
  }
};

// Leaves a socket file at `path` as a server that died would: bound, closed, never unlinked.
void leave_stale_socket_file(const std::filesystem::path& path) {
  auto s = kin::sys::socket(AF_UNIX, SOCK_STREAM, 0);
  REQUIRE(s);
  const auto a = unix_path(path);
  REQUIRE(::bind(s->get(), static_cast<const sockaddr*>(a.data()), a.size()) == 0);
  REQUIRE(::listen(s->get(), 1) == 0);
  REQUIRE(is_socket_file(path));
}

// Connects a stream of type S to `to`, accepts it on `srv`, sends bytes both ways and checks
// that the two ends see each other's addresses. `srv` must be listening with `acc`.
template <class S>
void exchange_through(kin::loop& l, kin::server& srv, acceptor& acc, const kin::socket_address& to,
                      S& client, S& served) {
  std::optional<std::error_code> connected;
  REQUIRE(client.connect(to, [&](std::error_code ec) { connected = ec; }));
  const std::size_t before = acc.accepted.size();
  REQUIRE(run_until(l, [&] { return connected && acc.accepted.size() > before; }));
  REQUIRE_FALSE(*connected);
  REQUIRE(served.open(std::move(acc.accepted.back())));

  kin_test::stream_reader at_server, at_client;
  REQUIRE(served.read_start(at_server.callback()));
  REQUIRE(client.read_start(at_client.callback()));
  client.write(std::string_view("ping from the client"));
  served.write(std::string_view("pong from the server"));
  REQUIRE(run_until(l, [&] { return at_server.data.size() == 20 && at_client.data.size() == 20; }));
  CHECK(at_server.data == "ping from the client");
  CHECK(at_client.data == "pong from the server");

  auto server_local = served.local_address();
  auto server_peer = served.peer_address();
  auto client_local = client.local_address();
  auto client_peer = client.peer_address();
  REQUIRE(server_local);
  REQUIRE(server_peer);
  REQUIRE(client_local);
  REQUIRE(client_peer);
  CHECK(*client_peer == *srv.local_address());
  CHECK(*server_local == *srv.local_address());
  CHECK(*server_peer == *client_local);
  CHECK(*client_peer == *server_local);
}

}  // namespace

// ---- tcp_server ---------------------------------------------------------------------------

TEST_CASE("a TCP server on 127.0.0.1 port 0 gets a port and carries bytes both ways", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  auto local = srv.local_address();
  REQUIRE(local);
  CHECK(local->family() == kin::address_family::ipv4);
  CHECK(local->host() == "127.0.0.1");
  CHECK(local->port() != 0);
  CHECK_FALSE(srv.is_accepting());
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  CHECK(srv.is_accepting());
  CHECK_FALSE(srv.is_paused());

  kin::tcp_socket client(l), served(l);
  exchange_through(l, srv, acc, *local, client, served);
  CHECK(client.local_address()->host() == "127.0.0.1");
  // Accepted descriptors are non-blocking and close-on-exec from accept4.
  CHECK((::fcntl(served.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(served.fd(), F_GETFL) & O_NONBLOCK) != 0);
  CHECK(acc.errors.empty());
}

TEST_CASE("a TCP server on [::1] port 0 gets a port and carries bytes both ways", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  auto bound = srv.bind(ip("::1"));
  if (ipv6_unavailable(bound)) return;
  REQUIRE(bound);
  auto local = srv.local_address();
  REQUIRE(local);
  CHECK(local->family() == kin::address_family::ipv6);
  CHECK(local->host() == "::1");
  CHECK(local->port() != 0);
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  kin::tcp_socket client(l), served(l);
  exchange_through(l, srv, acc, *local, client, served);
  CHECK(client.local_address()->family() == kin::address_family::ipv6);
}

TEST_CASE("a TCP server always sets SO_REUSEADDR and is non-blocking and close-on-exec",
          "[server]") {
  kin::loop l;
  kin::tcp_server v4(l);
  REQUIRE(v4.bind(ip("127.0.0.1")));
  CHECK(kin_test::int_option(v4.fd(), SOL_SOCKET, SO_REUSEADDR) != 0);
  CHECK(kin_test::int_option(v4.fd(), SOL_SOCKET, SO_REUSEPORT) == 0);
  CHECK((::fcntl(v4.fd(), F_GETFD) & FD_CLOEXEC) != 0);
  CHECK((::fcntl(v4.fd(), F_GETFL) & O_NONBLOCK) != 0);

  kin::tcp_server v6(l);
  auto bound = v6.bind(ip("::1"));
  if (ipv6_unavailable(bound)) return;
  REQUIRE(bound);
  CHECK(kin_test::int_option(v6.fd(), SOL_SOCKET, SO_REUSEADDR) != 0);
}

TEST_CASE("ipv6_only decides whether an IPv6 server takes IPv4 connections", "[server]") {
  // An IPv4-mapped address (::ffff:127.0.0.1) stays on the loopback interface yet shows the
  // difference: a dual-stack socket binds it and accepts IPv4 clients, an IPv6-only one cannot
  // bind it at all. (Binding a plain IPv6 address such as ::1 makes Linux set IPV6_V6ONLY
  // itself, whatever was asked.)
  kin::loop l;
  kin::tcp_server probe(l);
  if (ipv6_unavailable(probe.bind(ip("::1")))) return;
  probe.close();

  kin::tcp_server srv(l);
  kin::tcp_server_options options;
  SECTION("ipv6_only false: a dual-stack socket") {
    options.ipv6_only = false;
    REQUIRE(srv.bind(ip("::ffff:127.0.0.1"), options));
    CHECK(kin_test::int_option(srv.fd(), IPPROTO_IPV6, IPV6_V6ONLY) == 0);
    acceptor acc;
    REQUIRE(srv.listen(4, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(ip("127.0.0.1", srv.local_address()->port()));
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    auto peer = kin::socket_address::peer_of(acc.accepted[0].get());
    REQUIRE(peer);
    CHECK(peer->host() == "::ffff:127.0.0.1");
  }
  SECTION("ipv6_only true: IPv6 only, so no IPv4-mapped address") {
    options.ipv6_only = true;
    const auto before = kin_test::open_fds();
    auto r = srv.bind(ip("::ffff:127.0.0.1"), options);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::invalid_argument);
    CHECK(kin_test::open_fds() == before);
    REQUIRE(srv.bind(ip("::1"), options));
    CHECK(kin_test::int_option(srv.fd(), IPPROTO_IPV6, IPV6_V6ONLY) == 1);
  }
}

TEST_CASE("reuse_port lets two servers listen on one port; without it the second gets EADDRINUSE",
          "[server]") {
  kin::loop l;
  kin::tcp_server first(l), second(l);
  kin::tcp_server_options shared;
  shared.reuse_port = true;
  acceptor acc;
  REQUIRE(first.bind(ip("127.0.0.1"), shared));
  CHECK(kin_test::int_option(first.fd(), SOL_SOCKET, SO_REUSEPORT) != 0);
  REQUIRE(first.listen(16, acc.callback()));
  const auto port = first.local_address()->port();

  SECTION("both set reuse_port") {
    REQUIRE(second.bind(ip("127.0.0.1", port), shared));
    REQUIRE(second.listen(16, acc.callback()));
    CHECK(second.local_address()->port() == port);
    // Both accept: whichever the kernel picks, every connection is accepted by one of them.
    std::vector<kin::unique_fd> clients;
    for (int i = 0; i < 8; ++i) {
      clients.push_back(kin_test::raw_connect(ip("127.0.0.1", port)));
      REQUIRE(clients.back());
    }
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == clients.size(); }));
  }
  SECTION("the second does not set it") {
    const auto before = kin_test::open_fds();
    auto r = second.bind(ip("127.0.0.1", port));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
    CHECK_FALSE(second.is_open());
    CHECK(kin_test::open_fds() == before);
  }
  CHECK(acc.errors.empty());
}

TEST_CASE("a failed bind says why and leaves no descriptor open", "[server]") {
  kin::loop l;
  kin::tcp_server taken(l);
  REQUIRE(taken.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(taken.listen(4, acc.callback()));
  const auto port = taken.local_address()->port();
  const kin_test::temp_dir dir("kin-server");
  const auto before = kin_test::open_fds();
  kin::tcp_server s(l);

  SECTION("EADDRINUSE for a port another server listens on") {
    auto r = s.bind(ip("127.0.0.1", port));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
  }
  SECTION("EAFNOSUPPORT for a Unix address") {
    auto r = s.bind(unix_path(dir.path() / "tcp.sock"));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_family_not_supported);
    CHECK_FALSE(std::filesystem::exists(dir.path() / "tcp.sock"));
  }
  SECTION("EADDRNOTAVAIL for an address this host does not have") {
    auto r = s.bind(ip("192.0.2.1"));  // TEST-NET-1, never assigned
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_not_available);
  }
  SECTION("EISCONN for a server already bound, which stays bound") {
    kin::tcp_server twice(l);
    REQUIRE(twice.bind(ip("127.0.0.1")));
    const int fd = twice.fd();
    const auto first = *twice.local_address();
    auto r = twice.bind(ip("127.0.0.1"));
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::already_connected);
    CHECK(twice.fd() == fd);
    CHECK(*twice.local_address() == first);
    twice.close();
  }
  CHECK_FALSE(s.is_open());
  CHECK(kin_test::open_fds() == before);
}

TEST_CASE("connections that queued before the loop ran are all accepted in one readiness",
          "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  int callbacks = 0;
  REQUIRE(srv.listen(128, [&, inner = acc.callback()](std::error_code ec, kin::unique_fd c) {
    ++callbacks;
    inner(ec, std::move(c));
  }));
  constexpr int clients_count = 50;
  std::vector<kin::unique_fd> clients;
  for (int i = 0; i < clients_count; ++i) {
    clients.push_back(kin_test::raw_connect(*srv.local_address()));
    REQUIRE(clients.back());
  }
  // Wait (outside the loop) until the kernel holds every connection in the accept queue.
  REQUIRE(kin_test::wait_until(
      [&] { return kin_test::accept_queue_length(srv.fd()) == clients_count; }));
  // One iteration: one readiness of the listening socket, drained until EAGAIN.
  l.run_once();
  CHECK(callbacks == clients_count);
  CHECK(acc.accepted.size() == static_cast<std::size_t>(clients_count));
  CHECK(kin_test::accept_queue_length(srv.fd()) == 0);
  CHECK(acc.errors.empty());
}

TEST_CASE("running out of descriptors pauses accepting without spinning, then accepting resumes",
          "[server]") {
  const auto fds_before = kin_test::open_fds();
  {
    kin::loop l;
    kin::tcp_server srv(l);
    REQUIRE(srv.bind(ip("127.0.0.1")));
    acceptor acc;
    REQUIRE(srv.listen(16, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
    REQUIRE(client);
    REQUIRE(kin_test::wait_until([&] { return kin_test::accept_queue_length(srv.fd()) == 1; }));

    int iterations = 0;
    {
      kin_test::fd_limit none(0);  // the next descriptor would be EMFILE
      // A loop that kept watching the readable socket would run thousands of iterations here;
      // the pause retries after 10, 20, 40, 80, 160 ms...
      const auto until = std::chrono::steady_clock::now() + 300ms;
      while (std::chrono::steady_clock::now() < until) {
        l.run_once();
        ++iterations;
      }
      CHECK(srv.is_paused());
      CHECK(srv.is_accepting());
      CHECK(acc.accepted.empty());
    }
    INFO("iterations while paused: " << iterations);
    CHECK(iterations < 50);
    REQUIRE(acc.errors.size() == 1);  // reported once, not at every retry
    CHECK(acc.errors[0] == std::errc::too_many_files_open);

    // Descriptors are back: the connection that waited in the backlog is accepted.
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    CHECK_FALSE(srv.is_paused());
    CHECK(srv.is_accepting());
    CHECK(acc.errors.size() == 1);
    auto peer = kin::socket_address::peer_of(acc.accepted[0].get());
    REQUIRE(peer);
    CHECK(*peer == *kin::socket_address::local_of(client.get()));
    REQUIRE(::write(acc.accepted[0].get(), "x", 1) == 1);
    char c = 0;
    REQUIRE(::read(client.get(), &c, 1) == 1);
    CHECK(c == 'x');

    // A later shortage is a new episode, reported again.
    kin::unique_fd second = kin_test::raw_connect(*srv.local_address());
    REQUIRE(second);
    REQUIRE(kin_test::wait_until([&] { return kin_test::accept_queue_length(srv.fd()) == 1; }));
    {
      kin_test::fd_limit none(0);
      l.run_once();
      CHECK(srv.is_paused());
    }
    CHECK(acc.errors.size() == 2);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 2; }));
    CHECK_FALSE(srv.is_paused());
  }
  CHECK(kin_test::open_fds() == fds_before);
}

TEST_CASE("a listening socket that breaks stops the server, which says why once", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  // shutdown(2) on a listening socket takes it out of the LISTEN state: accept4 says EINVAL.
  REQUIRE(::shutdown(srv.fd(), SHUT_RDWR) == 0);
  CHECK(run_all(l));  // returns: the server stopped accepting
  REQUIRE(acc.errors.size() == 1);
  CHECK(acc.errors[0] == std::errc::invalid_argument);
  CHECK(acc.accepted.empty());
  CHECK_FALSE(srv.is_accepting());
  CHECK_FALSE(srv.is_active());
  CHECK(srv.is_open());  // stopping is not closing: the owner decides
}

TEST_CASE("stop_accepting leaves connections in the backlog until listen is called again",
          "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  kin::unique_fd first = kin_test::raw_connect(*srv.local_address());
  REQUIRE(first);
  REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));

  srv.stop_accepting();
  CHECK_FALSE(srv.is_accepting());
  CHECK_FALSE(srv.is_active());
  CHECK_FALSE(l.is_alive());
  kin::unique_fd second = kin_test::raw_connect(*srv.local_address());
  REQUIRE(second);  // the socket still listens: the kernel queues the connection
  REQUIRE(kin_test::wait_until([&] { return kin_test::accept_queue_length(srv.fd()) == 1; }));
  for (int i = 0; i < 3; ++i) l.run_nowait();
  CHECK(acc.accepted.size() == 1);

  acceptor again;
  REQUIRE(srv.listen(16, again.callback()));
  REQUIRE(run_until(l, [&] { return again.accepted.size() == 1; }));
  CHECK(acc.accepted.size() == 1);
  CHECK(*kin::socket_address::peer_of(again.accepted[0].get()) ==
        *kin::socket_address::local_of(second.get()));
}

TEST_CASE("close runs its callback on a later iteration and closes the socket at once",
          "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  const int fd = srv.fd();
  const auto address = *srv.local_address();
  bool closed = false;
  srv.close([&] { closed = true; });
  CHECK_FALSE(closed);
  CHECK_FALSE(srv.is_open());
  CHECK_FALSE(srv.is_accepting());
  CHECK_FALSE(is_open_fd(fd));
  auto gone = srv.local_address();
  REQUIRE_FALSE(gone);
  CHECK(gone.error() == std::errc::bad_file_descriptor);
  CHECK(run_all(l));
  CHECK(closed);
  // Nobody listens on the port any more.
  CHECK_FALSE(kin_test::raw_connect(address));
  CHECK(errno == ECONNREFUSED);
  CHECK(acc.accepted.empty());
  CHECK(acc.errors.empty());

  SECTION("closing a closed server only runs the callback") {
    bool again = false;
    srv.close([&] { again = true; });
    CHECK(run_all(l));
    CHECK(again);
  }
  SECTION("and the server can bind again") {
    REQUIRE(srv.bind(ip("127.0.0.1")));
    REQUIRE(srv.listen(4, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
  }
}

TEST_CASE("a server can be destroyed from its own connection callback", "[server]") {
  kin::loop l;
  auto srv = std::make_unique<kin::tcp_server>(l);
  REQUIRE(srv->bind(ip("127.0.0.1")));
  const auto address = *srv->local_address();
  int calls = 0;
  std::vector<kin::unique_fd> accepted;
  std::string big_capture(500, 'x');  // a capture that lives on the heap with the callback
  REQUIRE(srv->listen(16, [&, big_capture](std::error_code ec, kin::unique_fd c) {
    ++calls;
    CHECK_FALSE(ec);
    accepted.push_back(std::move(c));
    srv.reset();
    CHECK(big_capture.size() == 500);  // the running callback is still alive
  }));
  std::vector<kin::unique_fd> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(kin_test::raw_connect(address));
    REQUIRE(clients.back());
  }
  REQUIRE(kin_test::wait_until([&] { return kin_test::accept_queue_length(srv->fd()) == 3; }));
  CHECK(run_all(l));
  CHECK(calls == 1);
  CHECK(srv == nullptr);
  CHECK(accepted.size() == 1);
}

TEST_CASE("a server can close itself or stop accepting from its connection callback", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  int calls = 0;
  bool closed = false;
  const bool close_it = GENERATE(true, false);
  REQUIRE(srv.listen(16, [&](std::error_code, kin::unique_fd) {
    ++calls;
    if (close_it) {
      srv.close([&] { closed = true; });
    } else {
      srv.stop_accepting();
    }
  }));
  std::vector<kin::unique_fd> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(kin_test::raw_connect(*srv.local_address()));
    REQUIRE(clients.back());
  }
  REQUIRE(kin_test::wait_until([&] { return kin_test::accept_queue_length(srv.fd()) == 3; }));
  CHECK(run_all(l));
  CHECK(calls == 1);
  CHECK(closed == close_it);
  CHECK(srv.is_open() == !close_it);
  CHECK_FALSE(srv.is_accepting());
}

TEST_CASE("listen refuses an unbound server, a missing callback and a second call", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  acceptor acc;
  auto unbound = srv.listen(4, acc.callback());
  REQUIRE_FALSE(unbound);
  CHECK(unbound.error() == std::errc::bad_file_descriptor);

  REQUIRE(srv.bind(ip("127.0.0.1")));
  auto no_callback = srv.listen(4, {});
  REQUIRE_FALSE(no_callback);
  CHECK(no_callback.error() == std::errc::invalid_argument);
  CHECK_FALSE(srv.is_accepting());

  REQUIRE(srv.listen(4, acc.callback()));
  acceptor other;
  auto twice = srv.listen(4, other.callback());
  REQUIRE_FALSE(twice);
  CHECK(twice.error() == std::errc::invalid_argument);
  CHECK(srv.is_accepting());
  // The first callback still gets the connections.
  kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
  REQUIRE(client);
  REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
  CHECK(other.accepted.empty());
}

TEST_CASE("an unref'd listening server does not keep the loop running, yet still accepts",
          "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(srv.listen(4, acc.callback()));
  CHECK(srv.is_active());
  CHECK(l.is_alive());
  srv.unref();
  CHECK_FALSE(l.is_alive());
  CHECK(run_all(l));  // returns at once: nothing referenced is left
  CHECK(srv.is_accepting());
  // While something else keeps the loop running, the unref'd server accepts.
  kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
  REQUIRE(client);
  REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
  srv.ref();
  CHECK(l.is_alive());
  srv.stop_accepting();
  CHECK_FALSE(l.is_alive());
}

TEST_CASE("release hands back the listening socket, which keeps its queue", "[server]") {
  kin::loop l;
  kin::tcp_server srv(l);
  REQUIRE(srv.bind(ip("127.0.0.1")));
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));
  kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
  REQUIRE(client);
  const int fd = srv.fd();
  auto released = srv.release();
  REQUIRE(released);
  CHECK(released->get() == fd);
  CHECK_FALSE(srv.is_open());
  CHECK_FALSE(srv.is_accepting());
  CHECK_FALSE(l.is_alive());
  CHECK(run_all(l));
  CHECK(acc.accepted.empty());
  auto again = srv.release();
  REQUIRE_FALSE(again);
  CHECK(again.error() == std::errc::bad_file_descriptor);

  // Another server takes the socket over and accepts the connection that waited.
  kin::tcp_server next(l);
  REQUIRE(next.open(std::move(*released)));
  REQUIRE(next.listen(16, acc.callback()));
  REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
}

TEST_CASE("open takes a listening socket and refuses every other kind, closing it", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  auto listening_tcp = [] {
    auto s = kin::sys::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(s);
    const auto a = ip("127.0.0.1");
    REQUIRE(::bind(s->get(), static_cast<const sockaddr*>(a.data()), a.size()) == 0);
    REQUIRE(::listen(s->get(), 4) == 0);
    return std::move(*s);
  };

  SECTION("a listening TCP socket opens in a tcp_server, which accepts and makes it non-blocking") {
    kin::tcp_server srv(l);
    auto s = listening_tcp();
    REQUIRE(srv.open(std::move(s)));
    CHECK((::fcntl(srv.fd(), F_GETFL) & O_NONBLOCK) != 0);
    acceptor acc;
    REQUIRE(srv.listen(8, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(*srv.local_address());
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    auto twice = srv.open(listening_tcp());
    REQUIRE_FALSE(twice);
    CHECK(twice.error() == std::errc::already_connected);
  }
  SECTION("wrong kinds are refused with EINVAL and closed") {
    const auto before = kin_test::open_fds();
    kin::tcp_server tcp(l);
    kin::unix_server unx(l);
    // A bound TCP socket that does not listen.
    auto bound = kin::sys::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(bound);
    const auto a = ip("127.0.0.1");
    REQUIRE(::bind(bound->get(), static_cast<const sockaddr*>(a.data()), a.size()) == 0);
    int number = bound->get();
    auto r1 = tcp.open(std::move(*bound));
    REQUIRE_FALSE(r1);
    CHECK(r1.error() == std::errc::invalid_argument);
    CHECK_FALSE(is_open_fd(number));
    // A listening TCP socket is no unix_server, and a listening Unix socket no tcp_server.
    auto r2 = unx.open(listening_tcp());
    REQUIRE_FALSE(r2);
    CHECK(r2.error() == std::errc::invalid_argument);
    kin::unix_server real(l);
    REQUIRE(real.bind(unix_path(dir.path() / "u.sock")));
    REQUIRE(real.listen(1, [](std::error_code, kin::unique_fd) {}));
    auto listening_unix = real.release();
    REQUIRE(listening_unix);
    auto r3 = tcp.open(std::move(*listening_unix));
    REQUIRE_FALSE(r3);
    CHECK(r3.error() == std::errc::invalid_argument);
    // A pipe.
    auto p = kin::make_pipe();
    REQUIRE(p);
    auto r4 = tcp.open(std::move(p->read));
    REQUIRE_FALSE(r4);
    CHECK(r4.error() == std::errc::invalid_argument);
    // A listening Unix seqpacket socket: its connections are not streams.
    auto seqpacket = kin::sys::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    REQUIRE(seqpacket);
    sockaddr_un un{};
    un.sun_family = AF_UNIX;  // autobind to an abstract name
    REQUIRE(::bind(seqpacket->get(), reinterpret_cast<sockaddr*>(&un), sizeof(sa_family_t)) == 0);
    REQUIRE(::listen(seqpacket->get(), 1) == 0);
    number = seqpacket->get();
    auto r6 = unx.open(std::move(*seqpacket));
    REQUIRE_FALSE(r6);
    CHECK(r6.error() == std::errc::invalid_argument);
    CHECK_FALSE(is_open_fd(number));
    // Nothing.
    auto r5 = unx.open(kin::unique_fd());
    REQUIRE_FALSE(r5);
    CHECK(r5.error() == std::errc::bad_file_descriptor);
    p->write.reset();
    CHECK_FALSE(tcp.is_open());
    CHECK_FALSE(unx.is_open());
    CHECK(kin_test::open_fds() == before);
  }
}

// ---- unix_server --------------------------------------------------------------------------

TEST_CASE("a Unix server on a path carries bytes both ways and reports credentials", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "server.sock";
  kin::unix_server srv(l);
  REQUIRE(srv.bind(unix_path(path)));
  CHECK(is_socket_file(path));
  auto local = srv.local_address();
  REQUIRE(local);
  CHECK(*local == unix_path(path));
  acceptor acc;
  REQUIRE(srv.listen(16, acc.callback()));

  kin::unix_socket client(l), served(l);
  std::optional<std::error_code> connected;
  REQUIRE(client.connect(unix_path(path), [&](std::error_code ec) { connected = ec; }));
  CHECK_FALSE(connected);  // never from inside connect()
  REQUIRE(run_until(l, [&] { return connected && acc.accepted.size() == 1; }));
  REQUIRE_FALSE(*connected);
  REQUIRE(served.open(std::move(acc.accepted[0])));
  CHECK(served.can_pass_fds());

  kin_test::stream_reader at_server, at_client;
  REQUIRE(served.read_start(at_server.callback()));
  REQUIRE(client.read_start(at_client.callback()));
  client.write(std::string_view("hello server"));
  served.write(std::string_view("hello client"));
  client.shutdown();
  served.shutdown();
  REQUIRE(run_until(l, [&] { return at_server.end && at_client.end; }));
  CHECK(at_server.data == "hello server");
  CHECK(at_client.data == "hello client");
  CHECK(at_server.end == kin::errc::eof);
  CHECK(at_client.end == kin::errc::eof);

  CHECK(*client.peer_address() == unix_path(path));
  CHECK(client.local_address()->family() == kin::address_family::unix_unnamed);
  CHECK(*served.local_address() == unix_path(path));
  CHECK(served.peer_address()->family() == kin::address_family::unix_unnamed);
  for (kin::unix_socket* end : {&client, &served}) {
    auto cred = end->credentials();
    REQUIRE(cred);
    CHECK(cred->pid == ::getpid());
    CHECK(cred->uid == ::getuid());
    CHECK(cred->gid == ::getgid());
  }
}

#if defined(__linux__)
TEST_CASE("a Unix server on an abstract name works and leaves no file behind", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  // A name that would be a path in the temporary directory, had it been a file.
  const auto name = (dir.path() / "abstract.sock").string();
  auto address = kin::socket_address::unix_abstract(name);
  REQUIRE(address);
  kin::unix_server srv(l);
  REQUIRE(srv.bind(*address));
  CHECK(srv.local_address()->family() == kin::address_family::unix_abstract);
  CHECK(srv.local_address()->path() == name);
  acceptor acc;
  REQUIRE(srv.listen(4, acc.callback()));

  // The name is taken while the server lives.
  kin::unix_server second(l);
  auto taken = second.bind(*address);
  REQUIRE_FALSE(taken);
  CHECK(taken.error() == std::errc::address_in_use);

  kin::unix_socket client(l), served(l);
  std::optional<std::error_code> connected;
  REQUIRE(client.connect(*address, [&](std::error_code ec) { connected = ec; }));
  REQUIRE(run_until(l, [&] { return connected && acc.accepted.size() == 1; }));
  REQUIRE_FALSE(*connected);
  REQUIRE(served.open(std::move(acc.accepted[0])));
  kin_test::stream_reader got;
  REQUIRE(served.read_start(got.callback()));
  client.write(std::string_view("abstract"));
  client.shutdown();
  REQUIRE(run_until(l, [&] { return bool(got.end); }));
  CHECK(got.data == "abstract");
  CHECK(std::filesystem::is_empty(dir.path()));

  srv.close();
  served.close();
  client.close();
  CHECK(run_all(l));
  // Closing frees the name at once.
  REQUIRE(second.bind(*address));
  CHECK(std::filesystem::is_empty(dir.path()));
}
#endif

TEST_CASE("a stale socket file is replaced, unless remove_stale is false", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "stale.sock";
  leave_stale_socket_file(path);
  const auto before = kin_test::open_fds();
  kin::unix_server srv(l);

  SECTION("by default the file is removed and bound again") {
    // A second link keeps the old inode alive, so the new file cannot reuse its number.
    const auto old_link = dir.path() / "old.sock";
    REQUIRE(::link(path.c_str(), old_link.c_str()) == 0);
    struct stat old {};
    REQUIRE(::lstat(path.c_str(), &old) == 0);
    REQUIRE(srv.bind(unix_path(path)));
    struct stat now {};
    REQUIRE(::lstat(path.c_str(), &now) == 0);
    CHECK(S_ISSOCK(now.st_mode));
    CHECK(now.st_ino != old.st_ino);
    acceptor acc;
    REQUIRE(srv.listen(4, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(unix_path(path));
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    srv.close();
    CHECK_FALSE(std::filesystem::exists(path));
  }
  SECTION("with remove_stale false the bind fails with EADDRINUSE and the file stays") {
    kin::unix_server_options options;
    options.remove_stale = false;
    auto r = srv.bind(unix_path(path), options);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::address_in_use);
    CHECK(is_socket_file(path));
    CHECK_FALSE(srv.is_open());
    CHECK(kin_test::open_fds() == before);
  }
}

TEST_CASE("a path that is a regular file is never removed: EADDRINUSE", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "precious.txt";
  {
    std::ofstream out(path);
    out << "do not delete";
  }
  const auto before = kin_test::open_fds();
  kin::unix_server srv(l);
  auto r = srv.bind(unix_path(path));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::address_in_use);
  CHECK_FALSE(srv.is_open());
  CHECK(kin_test::open_fds() == before);
  std::ifstream in(path);
  std::string content;
  std::getline(in, content);
  CHECK(content == "do not delete");
  CHECK(std::filesystem::is_regular_file(path));
}

TEST_CASE("a path a live server listens on is refused, and that server keeps working", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "live.sock";
  kin::unix_server live(l);
  REQUIRE(live.bind(unix_path(path)));
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  acceptor acc;
  REQUIRE(live.listen(16, acc.callback()));

  const auto before = kin_test::open_fds();
  kin::unix_server intruder(l);
  auto r = intruder.bind(unix_path(path));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::address_in_use);
  CHECK_FALSE(intruder.is_open());
  CHECK(kin_test::open_fds() == before);
  struct stat after {};
  REQUIRE(::lstat(path.c_str(), &after) == 0);
  CHECK(after.st_ino == st.st_ino);  // the same file, not removed and re-created

  // The live server still gets real connections. (The stale check connected to it to find it
  // alive, so it may also accept that probe, already closed: look for the client's bytes.)
  kin::unique_fd client = kin_test::raw_connect(unix_path(path));
  REQUIRE(client);
  REQUIRE(::write(client.get(), "still here", 10) == 10);
  std::string got;
  REQUIRE(run_until(l, [&] {
    for (auto& c : acc.accepted) {
      char buf[16];
      const ssize_t n = ::read(c.get(), buf, sizeof buf);
      if (n > 0) got.assign(buf, static_cast<std::size_t>(n));
    }
    return !got.empty();
  }));
  CHECK(got == "still here");
  CHECK(acc.errors.empty());
}

TEST_CASE("close removes the socket file the server created; release leaves it", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "mine.sock";
  kin::unix_server srv(l);
  REQUIRE(srv.bind(unix_path(path)));
  REQUIRE(is_socket_file(path));

  SECTION("close") {
    bool closed = false;
    srv.close([&] { closed = true; });
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK(run_all(l));
    CHECK(closed);
  }
  SECTION("destruction") {
    {
      kin::unix_server other(l);
      REQUIRE(other.bind(unix_path(dir.path() / "other.sock")));
    }
    CHECK_FALSE(std::filesystem::exists(dir.path() / "other.sock"));
  }
  SECTION("release, and a unix_server opened on the released socket leaves the file too") {
    acceptor acc;
    REQUIRE(srv.listen(4, acc.callback()));
    auto fd = srv.release();
    REQUIRE(fd);
    CHECK(is_socket_file(path));
    kin::unix_server next(l);
    REQUIRE(next.open(std::move(*fd)));
    REQUIRE(next.listen(4, acc.callback()));
    kin::unique_fd client = kin_test::raw_connect(unix_path(path));
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    next.close();
    CHECK(is_socket_file(path));
  }
}

TEST_CASE("a socket file replaced after bind is not removed by the first server's close",
          "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto path = dir.path() / "shared.sock";
  kin::unix_server first(l);
  REQUIRE(first.bind(unix_path(path)));
  REQUIRE(::unlink(path.c_str()) == 0);

  SECTION("by another server's socket") {
    kin::unix_server second(l);
    REQUIRE(second.bind(unix_path(path)));
    acceptor acc;
    REQUIRE(second.listen(4, acc.callback()));
    first.close();
    REQUIRE(is_socket_file(path));
    kin::unique_fd client = kin_test::raw_connect(unix_path(path));
    REQUIRE(client);
    REQUIRE(run_until(l, [&] { return acc.accepted.size() == 1; }));
    // The second server removes its own.
    second.close();
    CHECK_FALSE(std::filesystem::exists(path));
  }
  SECTION("by a plain file") {
    { std::ofstream(path) << "plain"; }
    first.close();
    CHECK(std::filesystem::is_regular_file(path));
  }
}

TEST_CASE("a Unix server refuses IP addresses and reports a missing directory", "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto before = kin_test::open_fds();
  kin::unix_server srv(l);
  auto by_ip = srv.bind(ip("127.0.0.1"));
  REQUIRE_FALSE(by_ip);
  CHECK(by_ip.error() == std::errc::address_family_not_supported);
  auto unnamed = srv.bind(kin::socket_address());
  REQUIRE_FALSE(unnamed);
  CHECK(unnamed.error() == std::errc::address_family_not_supported);
  auto missing = srv.bind(unix_path(dir.path() / "no-such-dir" / "s.sock"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error() == std::errc::no_such_file_or_directory);
  CHECK_FALSE(srv.is_open());
  CHECK(kin_test::open_fds() == before);

  REQUIRE(srv.bind(unix_path(dir.path() / "s.sock")));
  auto twice = srv.bind(unix_path(dir.path() / "t.sock"));
  REQUIRE_FALSE(twice);
  CHECK(twice.error() == std::errc::already_connected);
  CHECK_FALSE(std::filesystem::exists(dir.path() / "t.sock"));
  CHECK(is_socket_file(dir.path() / "s.sock"));
}

TEST_CASE("binding at the descriptor limit fails with EMFILE and leaves nothing behind",
          "[server]") {
  kin::loop l;
  const kin_test::temp_dir dir("kin-server");
  const auto stale = dir.path() / "stale.sock";
  leave_stale_socket_file(stale);
  const auto before = kin_test::open_fds();
  kin::tcp_server tcp(l);
  kin::unix_server unx(l);
  kin::result<void> r = kin::fail(std::error_code());
  SECTION("a TCP server") {
    kin_test::fd_limit none(0);
    r = tcp.bind(ip("127.0.0.1"));
  }
  SECTION("a Unix server on a new path") {
    {
      kin_test::fd_limit none(0);
      r = unx.bind(unix_path(dir.path() / "new.sock"));
    }
    CHECK_FALSE(std::filesystem::exists(dir.path() / "new.sock"));
  }
  SECTION("a Unix server on a stale file, with room for its socket but not for the check") {
    {
      kin_test::fd_limit one(1);
      r = unx.bind(unix_path(stale));
    }
    CHECK(is_socket_file(stale));  // not replaced, and the error says why: not EADDRINUSE
  }
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::too_many_files_open);
  CHECK_FALSE(tcp.is_open());
  CHECK_FALSE(unx.is_open());
  CHECK(kin_test::open_fds() == before);
}
